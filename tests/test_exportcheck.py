"""The self-check of an exported series: passes on a correct export, and catches each kind of slip."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import examples

from bidsdeface.config import ProfileOptions
from bidsdeface.deidentify import Replacements, deidentify_header
from bidsdeface.exportcheck import check_export

WHO = Replacements("p5e7d", -timedelta(days=40000), "check-key")


def exported(tmp_path: Path, tamper=None) -> tuple[list, set[str]]:
    source = examples.mr
    source.InstitutionName, source.StudyDate = "Hospital of Saint Leakage", "20240315"
    output = examples.mr
    output.InstitutionName, output.StudyDate = source.InstitutionName, source.StudyDate
    report = deidentify_header(output, ProfileOptions(), WHO)
    if tamper is not None:
        tamper(output, source)
    path = tmp_path / "out.dcm"
    output.save_as(path, enforce_file_format=True)
    return [(source, path)], set(report.uids)


def test_a_correct_export_passes(tmp_path: Path) -> None:
    pairs, uids = exported(tmp_path)
    check = check_export(pairs, ProfileOptions(), WHO, uids, (100, 100))
    assert check.passed, check.as_record()
    assert check.as_record()["dates_shifted"] == {
        "passed": True,
        "detail": "1 of 1 dates shifted (or emptied where they cannot be)",
    }


@pytest.mark.parametrize(
    ("failing", "tamper"),
    [
        ("identifiers_removed", lambda out, src: setattr(out, "ImageComments", f"from {src.InstitutionName}")),
        ("dates_shifted", lambda out, src: setattr(out, "StudyDate", src.StudyDate)),
        ("uids_replaced", lambda out, src: setattr(out, "SOPInstanceUID", src.SOPInstanceUID)),
        ("uids_replaced", lambda out, src: setattr(out, "ReferencedSOPInstanceUID", src.StudyInstanceUID)),
        ("patient_ids", lambda out, src: setattr(out, "PatientID", "someone-else")),
    ],
)
def test_each_slip_fails_its_check(tmp_path: Path, failing: str, tamper) -> None:
    pairs, uids = exported(tmp_path, tamper)
    check = check_export(pairs, ProfileOptions(), WHO, uids, (100, 100))
    assert not check.passed and not check.checks[failing][0]
    assert "Saint" not in str(check.as_record())  # details count, never show values


def test_face_not_written_fails(tmp_path: Path) -> None:
    pairs, uids = exported(tmp_path)
    check = check_export(pairs, ProfileOptions(), WHO, uids, (0, 5000))
    assert check.checks["face_hidden"] == (False, "0 pixels replaced for 5000 face voxels")
