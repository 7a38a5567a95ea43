"""The fixed lists and a site's additions to them (``--scrub-policy`` files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bidsdeface import policy
from bidsdeface.errors import EXIT_USAGE, UsageError
from bidsdeface.policy import MODALITY_SIDECAR_KEYS, SitePolicy, identifying_keys, listed_name


def test_policy_files_take_the_new_fields(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"keep_dataset_fields": ["Funding"], "keep_column_descriptions": ["iq"]}))
    site = policy.read_policy_file(path)
    assert site.keep_dataset_fields == ("Funding",) and site.keep_column_descriptions == ("iq",)
    assert site.merged(SitePolicy(keep_columns=("iq",))).keep_columns == ("iq",)


@pytest.mark.parametrize(
    "content",
    ['{"keep_sidecar_keys": "SeriesDescription"}', '{"keep_columns": [""]}', '{"keep_cookies": []}', "[1]", "{"],
)
def test_malformed_policy_files_are_usage_errors(tmp_path: Path, content: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(content)
    with pytest.raises(UsageError) as refused:
        policy.read_policy_file(path)
    assert refused.value.exit_code == EXIT_USAGE and "\n" not in str(refused.value)


def test_policy_entries_merge_in_order_without_duplicates() -> None:
    site = SitePolicy(keep_sidecar_keys=("B", "A")).merged(SitePolicy(keep_sidecar_keys=("A", "C")))
    assert site.keep_sidecar_keys == ("B", "A", "C") and site.drop_sidecar_keys == ()


def test_the_fixed_lists_keep_identifying_keys_out() -> None:
    assert not any(set(keys) & set(identifying_keys()) for keys in MODALITY_SIDECAR_KEYS.values())
    assert listed_name("PatientName") and listed_name("EchoTime") and not listed_name("SiteSecret42")


def test_identifying_keys_come_from_the_standard_table() -> None:
    keys = identifying_keys()
    assert len(keys) > 600
    assert {
        "PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName", "StationName",
        "StudyDescription", "SeriesDescription", "ProtocolName", "OperatorsName", "ReferringPhysicianName",
        "StudyDate", "AcquisitionDateTime", "ImageComments", "DeviceSerialNumber", "SOPInstanceUID",
        "FrameOfReferenceUID", "ProcedureStepDescription", "SoftwareVersions",
    } <= keys  # fmt: skip
    assert not {"EchoTime", "RepetitionTime", "Manufacturer", "SeriesNumber"} & keys
