"""The standards as data: BIDS schema definitions and the DICOM dictionary decide names, types and vocabularies."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from bidsdeface import policy
from bidsdeface.standards import (
    column_description,
    column_levels,
    confidentiality_profile,
    dicom_definition,
    fits_definition,
    is_raw_bids_file,
    is_standard_name,
    is_technical_word,
    metadata_definitions,
    sidecar_fields,
    standard_fit,
)

from .conftest import REPO


def test_every_allowed_sidecar_key_with_a_bids_definition_is_checked_against_it() -> None:
    allowed = set().union(*policy.MODALITY_SIDECAR_KEYS.values())
    defined = {key for key in allowed if key in metadata_definitions()}
    assert len(defined) > 100  # most of the allow-list is BIDS metadata
    assert {"EchoTime", "SliceTiming", "InjectionStart", "ReceiveCoilName"} <= defined


@pytest.mark.parametrize(
    ("key", "value", "fits"),
    [
        ("EchoTime", 0.003, True),
        ("EchoTime", [0.003, 0.006], True),
        ("EchoTime", -1, False),
        ("EchoTime", "0.003", False),
        ("EchoTime", {"value": 0.003}, False),
        ("SliceTiming", [0.0, 0.5], True),
        ("SliceTiming", [[0.0]], False),
        ("PhaseEncodingDirection", "j-", True),
        ("PhaseEncodingDirection", "up", False),
        ("MRAcquisitionType", "3D", True),
        ("InjectionStart", 0, True),
        ("InjectionStart", ["10:00:00"], False),
        ("TimeZero", "10:33:47", True),
        ("TimeZero", "ten past ten", False),
        ("AcquisitionVoxelSize", [1, 1, 1], True),
        ("AcquisitionVoxelSize", [1, 1], False),
        ("ImageType", ["ORIGINAL", "PRIMARY", "M", "ND"], True),
        ("ImageType", ["Smith^John"], False),
        ("SeriesNumber", 7, True),
        ("SeriesNumber", "7", False),
        ("PhilipsRWVSlope", 1.5, None),
    ],
)
def test_values_fit_what_the_standards_define(key: str, value: object, fits: bool | None) -> None:
    assert standard_fit(key, value) is fits


def test_booleans_and_nan_are_not_numbers() -> None:
    number = {"type": "number"}
    assert not fits_definition(True, number) and not fits_definition(float("nan"), number)
    assert fits_definition(True, {"type": "boolean"})


def test_only_standard_names_may_be_shown() -> None:
    for name in ("PatientName", "InstitutionName", "EchoTime", "participant_id", "handedness", "acq_time"):
        assert is_standard_name(name), name
    for name in ("JohnSmith_MRN", "SiteSecretNote", "birth_date", "LEAK001Q"):
        assert not is_standard_name(name), name
    assert dicom_definition("PatientName") == ("PN", "1")


def test_column_vocabularies_and_descriptions_come_from_the_schema() -> None:
    assert set(column_levels("sex")) >= {"F", "M", "O", "female", "male", "other"}
    assert column_levels("species") is None
    described = column_description("handedness")
    assert described["Levels"]["L"] == "Left-handed" and "Description" in described
    assert column_description("no_such_column") is None


def test_technical_words_are_those_of_the_standards() -> None:
    for word in ("Spoiled", "Gradient", "Echo", "transmission", "Combine", "Research"):
        assert is_technical_word(word), word
    for name in ("Smith", "Jones", "Mary", "Rorden", "Hospital"):
        assert not is_technical_word(name), name


@pytest.mark.parametrize(
    ("datatype", "suffix", "extension", "entities", "defined"),
    [
        ("func", "bold", ".nii.gz", ("sub", "ses", "task", "run"), True),
        ("func", "events", ".tsv", ("sub", "task", "run"), True),
        ("func", "physio", ".tsv.gz", ("sub", "task", "recording"), True),
        ("dwi", "dwi", ".bval", ("sub",), True),
        ("fmap", "phasediff", ".nii.gz", ("sub", "run"), True),
        ("func", "bold", ".nii.gz", ("sub",), False),  # task is required
        ("anat", "T1w", ".nii.gz", ("sub", "patient"), False),
        ("anat", "notes", ".txt", ("sub",), False),
        ("secret", "bold", ".nii.gz", ("sub", "task"), False),
    ],
)
def test_raw_files_are_those_the_schema_defines(
    datatype: str, suffix: str, extension: str, entities: tuple[str, ...], defined: bool
) -> None:
    assert is_raw_bids_file(datatype, suffix, extension, entities) is defined


def test_sidecar_fields_follow_the_schema_rules_of_the_file() -> None:
    bold = sidecar_fields("func", "bold", ".nii.gz", ("sub", "task"))
    dwi = sidecar_fields("dwi", "dwi", ".nii.gz", ("sub",))
    phasediff = sidecar_fields("fmap", "phasediff", ".nii.gz", ("sub",))
    assert {"RepetitionTime", "TaskName", "SliceTiming", "EchoTime"} <= bold
    assert {"BigDelta", "SmallDelta", "PhaseEncodingDirection"} <= dwi and "TaskName" not in dwi
    assert {"EchoTime1", "EchoTime2", "IntendedFor"} <= phasediff and "IntendedFor" not in bold
    assert not {"TracerName", "Sources", "SkullStripped", "SamplingFrequency"} & (bold | dwi | phasediff)
    assert "SamplingFrequency" in sidecar_fields("func", "physio", ".tsv.gz", ("sub", "task"))
    assert "Units" not in bold and "Units" in sidecar_fields("func", "bold", ".nii.gz", ("sub", "task", "part"))


def test_the_confidentiality_profile_is_the_bundled_table_with_its_provenance() -> None:
    profile = confidentiality_profile()
    assert len(profile) > 600, "PS3.15 Table E.1-1, every row with a keyword"
    assert profile["PatientBirthDate"]["basicProfile"] == "Z" and profile["AcquisitionDate"]["basicProfile"] == "X/Z"
    assert profile["AcquisitionDate"]["rtnLongModifDatesOpt"] == "C" and profile["SOPInstanceUID"]["rtnUIDsOpt"] == "K"
    assert "OverlayComments" in profile, "repeating groups (60xx) are read as their first group"
    folder = resources.files("bidsdeface").joinpath("dicom_standard")
    source = folder.joinpath("SOURCE.md").read_text()
    assert "7f4749d09ed3ef2fa70637d376d423a4b13523cd" in source and "2024e" in source
    assert "Innolitics" in folder.joinpath("LICENSE.txt").read_text()


def test_bundled_attribute_types_are_what_the_build_script_derives() -> None:
    pytest.importorskip("highdicom")
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_dicom_types", REPO / "scripts" / "build_dicom_types.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bundled = json.loads((REPO / "bidsdeface" / "dicom_standard" / "attribute_types.json").read_text())
    assert module.build() == bundled
