"""Scan-level error messages: one line, and paths that exist and are safe to show."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsdeface.cli import main
from bidsdeface.discover import ScanJob, read_metadata
from bidsdeface.errors import EXIT_DATA, ScanError
from bidsdeface.identity import SubjectIdentity
from bidsdeface.outputs import STAGES
from bidsdeface.pipeline import StageTimer, _hide_input_names, failure_cause

from .conftest import make_dataset, needs_shared, shared_file, tree_digest


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


# --- A scan whose QC verdict is FAIL: kept out of the output, reviewable, optionally kept privately ---

IXI = "mri_t1w_ixi012/IXI012-HH-1211_T1.nii.gz"
# A protected brain this wide covers the whole head: nothing is removed, and the real QC
# says FAIL for three reasons (nothing removed, 0% of the face region, a face still found).
FAILING_MARGIN = ["--brain-margin", "150"]
WITHHELD_LINE = "failed QC: image not written to the output"
QC_JSON = "sub-01/anat/sub-01_desc-defaced_T1w_qc.json"
DEFACED = "sub-01/anat/sub-01_desc-defaced_T1w.nii.gz"


class _Lines(logging.Handler):
    """Keeps the messages of the ``bidsdeface`` logger (main() keeps foreign handlers)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _images(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.name.endswith((".nii", ".nii.gz")))


def _snapshot(out: Path, private: Path) -> dict:
    return {
        "images": _images(out),
        "files": sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()),
        "private_images": _images(private) if private.is_dir() else [],
    }


@pytest.fixture(scope="module")
def qc_fail_runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real head, three real runs into one output.

    1. passes (default settings); 2. fails QC with --overwrite (the passing images
    must go); 3. fails again with --keep-failed and --skull-strip, without
    --overwrite (a failed scan is not finished): images and brain outputs go to
    the private folder only.
    """
    head = shared_file(IXI)
    root = tmp_path_factory.mktemp("qcfail")
    bids = make_dataset(root / "bids", {"01": head})
    out, private = root / "out", root / "out-private"
    before = tree_digest(bids)
    base = [str(bids), str(out), "participant", "--skip-bids-validation", "--drop-dates"]
    handler = _Lines()
    logger = logging.getLogger("bidsdeface")
    logger.addHandler(handler)
    runs = []
    try:
        for extra in ([], ["--overwrite", *FAILING_MARGIN], ["--keep-failed", "--skull-strip", *FAILING_MARGIN]):
            handler.lines = []
            started = time.perf_counter()
            code = main([*base, *extra])
            runs.append({"code": code, "log": handler.lines, "seconds": time.perf_counter() - started})
            runs[-1].update(_snapshot(out, private))
            runs[-1]["qc"] = json.loads((out / QC_JSON).read_text())
            runs[-1]["reports"] = {name: (out / name).read_text() for name in ("sub-01.html", "group_report.html")}
            runs[-1]["table"] = (out / "qc.tsv").read_text()
    finally:
        logger.removeHandler(handler)
    return {"bids": bids, "out": out, "private": private, "head": head, "before": before, "runs": runs}


@needs_shared
def test_a_passing_scan_is_written(qc_fail_runs: dict) -> None:
    first = qc_fail_runs["runs"][0]
    assert first["code"] == 0 and first["qc"]["Status"] in ("PASS", "WARN")
    assert first["qc"]["ImageWithheld"] is False
    assert first["images"] == [DEFACED, "sub-01/anat/sub-01_mod-T1w_defacemask.nii.gz"]


@needs_shared
def test_a_failed_scan_leaves_no_image_in_the_output(qc_fail_runs: dict) -> None:
    """PASS, then FAIL with --overwrite: the earlier images and sidecar are gone; QC record and figures stay."""
    second = qc_fail_runs["runs"][1]
    assert second["code"] == EXIT_DATA
    assert second["qc"]["Status"] == "FAIL" and second["qc"]["ImageWithheld"] is True
    assert second["images"] == [] and second["private_images"] == []
    files = second["files"]
    assert not any(name.endswith("_T1w.json") or "_defacemask" in name for name in files)
    figures = [name for name in files if name.endswith(".png")]
    assert figures == [f"sub-01/figures/sub-01_desc-defaced_T1w_{kind}.png" for kind in ("mosaic", "render")]
    assert QC_JSON in files
    withheld = [line for line in second["log"] if f": {WITHHELD_LINE}" in line]
    assert withheld == [
        f"[1/1] sub-01/anat/sub-01_T1w.nii.gz: {WITHHELD_LINE} (QC record and figures are, for review); "
        "--keep-failed keeps it privately"
    ]
    finished = "finished: 0 done or skipped, 1 failed (1 of them failed QC: image not written to the output)"
    assert finished in second["log"]


@needs_shared
def test_a_failed_scan_is_listed_in_the_reports(qc_fail_runs: dict) -> None:
    """The subject report and the group table and report list it, with figures, linking nothing missing."""
    from .test_report import broken_links

    for run in qc_fail_runs["runs"][1:]:
        subject, group = run["reports"]["sub-01.html"], run["reports"]["group_report.html"]
        assert f'id="{DEFACED}"' in subject and "Image withheld" in subject
        assert 'src="sub-01/figures/sub-01_desc-defaced_T1w_render.png"' in subject
        assert f"sub-01.html#{DEFACED}" in group and "image withheld" in group
        row = run["table"].splitlines()[1].split("\t")
        assert row[:3] == [DEFACED, "01", "FAIL"] and row[4] == "withheld"
    assert broken_links(qc_fail_runs["out"]) == []
    for page in qc_fail_runs["out"].glob("*.html"):
        files = [target.partition("#")[0] for target in re.findall(r'(?:href|src)="([^"]*)"', page.read_text())]
        assert not [name for name in files if ".nii" in name], page


@needs_shared
def test_keep_failed_writes_the_image_to_the_private_folder_only(qc_fail_runs: dict) -> None:
    """A re-run without --overwrite redoes the failed scan; --keep-failed puts its images in private/failed/."""
    third, out, private = qc_fail_runs["runs"][2], qc_fail_runs["out"], qc_fail_runs["private"]
    assert third["code"] == EXIT_DATA and not any(": skipped, " in line for line in third["log"])
    assert third["images"] == []  # with --skull-strip: no brain image or mask either
    assert not [name for name in third["files"] if "desc-brain" in name and not name.endswith(".png")]
    assert "sub-01/figures/sub-01_desc-defaced_T1w_brain.png" in third["files"]
    anat = private / "failed" / "sub-01" / "anat"
    assert third["private_images"] == [
        f"failed/sub-01/anat/sub-01_{name}.nii.gz"
        for name in ("desc-brain_T1w", "desc-brain_mask", "desc-defaced_T1w", "mod-T1w_defacemask")
    ]
    assert all((anat / f"sub-01_{name}.json").is_file() for name in ("desc-brain_T1w", "desc-defaced_T1w"))
    kept = private / "failed" / DEFACED
    assert nib.load(kept).shape == nib.load(qc_fail_runs["head"]).shape
    assert np.asarray(nib.load(kept).dataobj).any()
    assert (private / "failed" / "README.txt").is_file()
    brain_sidecar = json.loads((anat / "sub-01_desc-brain_T1w.json").read_text())
    assert brain_sidecar["Sources"] == [f"bids::{DEFACED}", "bids::sub-01/anat/sub-01_desc-brain_mask.nii.gz"]
    withheld = [line for line in third["log"] if f": {WITHHELD_LINE}" in line]
    assert len(withheld) == 1 and withheld[0].endswith(f"kept in the private folder: {kept}")
    for path in out.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert str(private).encode() not in content and private.name.encode() not in content, path
    assert tree_digest(qc_fail_runs["bids"]) == qc_fail_runs["before"]


@needs_shared
def test_stages_run_in_order_each_timed(qc_fail_runs: dict) -> None:
    """load, register, masks, [skull-strip], deface, QC, write: as the QC record's Seconds list them."""
    plain, _, skull_stripped = (run["qc"]["Seconds"] for run in qc_fail_runs["runs"])
    assert list(plain) == [stage for stage in STAGES if stage != "skullstrip"]
    assert list(skull_stripped) == list(STAGES)
    assert all(seconds >= 0 for seconds in (*plain.values(), *skull_stripped.values()))


def test_only_known_stages_are_timed() -> None:
    timer = StageTimer()
    with timer.stage("load"):
        pass
    with pytest.raises(ValueError, match="not a stage"), timer.stage("upload"):
        pass
    assert list(timer.seconds) == ["load"]
