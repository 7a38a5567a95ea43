"""Scan-level error messages: one line, and paths that exist and are safe to show."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bidsdeface.discover import ScanJob, read_metadata
from bidsdeface.errors import ScanError
from bidsdeface.identity import SubjectIdentity
from bidsdeface.pipeline import _hide_input_names, failure_cause


def _broken_scan(root: Path) -> ScanJob:
    """A real dataset layout whose scan sidecar is not JSON."""
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    anat = root / "sub-DoeJohn" / "ses-20240315" / "anat"
    anat.mkdir(parents=True)
    relpath = "sub-DoeJohn/ses-20240315/anat/sub-DoeJohn_ses-20240315_T1w.nii.gz"
    (root / relpath).write_bytes(b"")
    (anat / "sub-DoeJohn_ses-20240315_T1w.json").write_text("{ not json")
    return ScanJob("DoeJohn", "20240315", root / relpath, relpath, "T1w", "anat")


def _error(job: ScanJob) -> str:
    with pytest.raises(ScanError) as raised:
        read_metadata(job.path)
    return str(raised.value)


def test_pseudonymised_messages_name_output_paths_only(tmp_path: Path) -> None:
    job = _broken_scan(tmp_path / "bids")
    message = _error(job)
    assert str(tmp_path / "bids" / "sub-DoeJohn") in message  # the library names the input sidecar
    identity = SubjectIdentity("DoeJohn", "a1b2c3d4e5", None, {"20240315": "f6e5d4"})
    shown = identity.output_relpath(job.relpath)
    safe = _hide_input_names(message, job, identity, shown)
    assert safe.startswith("sub-a1b2c3d4e5/ses-f6e5d4/anat/sub-a1b2c3d4e5_ses-f6e5d4_T1w.json: unreadable JSON")
    assert "DoeJohn" not in safe and "20240315" not in safe and str(tmp_path) not in safe
    # no path joins the input folder with a pseudonym: no absolute path is left at all
    assert re.findall(r"(?:^|\s)(/[^\s:]+)", safe) == []


def test_plain_messages_name_the_input_file_as_it_is(tmp_path: Path) -> None:
    job = _broken_scan(tmp_path / "bids")
    message = _error(job)
    identity = SubjectIdentity("DoeJohn", "DoeJohn", None, {"20240315": "20240315"})
    safe = _hide_input_names(message, job, identity, job.relpath)
    sidecar = job.path.with_name("sub-DoeJohn_ses-20240315_T1w.json")
    assert safe == message and str(sidecar) in safe and sidecar.exists()


def test_library_failures_become_one_line() -> None:
    itk = RuntimeError("/src/itkImageBase.hxx:77:\nITK ERROR: Image(0x5f): Zero-valued spacing.\nmore detail")
    assert failure_cause(itk) == "RuntimeError: Zero-valued spacing."
    assert "\n" not in failure_cause(ValueError("a\nb" * 500)) and len(failure_cause(ValueError("x" * 999))) < 230
