"""DICOM to defaced BIDS through both commands, on a real series with planted identifiers.

A copy of the Prisma head-first-prone series gets a unique marker in every DICOM
PS3.15 Basic Profile attribute (and in its folder and file names). It is converted
with ``bidsdeface-convert`` and defaced with ``bidsdeface``, both as subprocesses
with debug logging; no marker may appear in either dataset, in any file name, or in
any log line. (The converted CT is defaced in ``test_ct_pet.py``.)
"""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from bidsdeface.qc import LIMITS

from .conftest import DICOM_SERIES, SHARED, needs_shared, run_validator, tree_digest
from .leakcheck import Markers, find_leaks, plant_dicom_markers, without_clock_stamps

pytestmark = [needs_shared, pytest.mark.slow]

KEY = "EndToEndKey-51c2"


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    code = f"import sys; from bidsdeface.{module} import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", code, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("e2e")
    mark = Markers("DCMLEAK")
    planted = root / "export"
    assert plant_dicom_markers(SHARED / DICOM_SERIES["prismaHFP"], planted, mark) > 190
    before = tree_digest(planted)
    bids, out = root / "bids", root / "out"
    logs = {}
    options = ["--participant-label", "planted", "--date-shift-key", KEY, "-v"]
    result = _run("convert_cli", str(planted), str(bids), *options)
    assert result.returncode == 0, result.stderr[-2000:]
    logs["convert"] = result.stderr + result.stdout
    result = _run("cli", str(bids), str(out), "participant", "--date-shift-key", KEY, "-v")
    logs["deface"] = result.stderr + result.stdout
    return {"bids": bids, "out": out, "code": result.returncode, "logs": logs, "mark": mark, "planted": planted,
            "before": before}  # fmt: skip


def test_both_commands_succeed_and_leave_the_input_alone(e2e: dict) -> None:
    assert e2e["code"] == 0, e2e["logs"]["deface"][-3000:]
    assert tree_digest(e2e["planted"]) == e2e["before"]


@pytest.mark.parametrize("dataset", ["bids", "out"])
def test_both_datasets_are_valid_bids(e2e: dict, dataset: str) -> None:
    result = run_validator(e2e[dataset])
    assert result.returncode == 0, result.stdout[-3000:]


def test_no_planted_dicom_identifier_survives(e2e: dict) -> None:
    markers = e2e["mark"].where
    assert len(find_leaks(e2e["planted"], markers)) > 150  # the search finds them where they are
    logs = {name: without_clock_stamps(text) for name, text in e2e["logs"].items()}
    hits = find_leaks(e2e["bids"], markers, logs) + find_leaks(e2e["out"], markers)
    assert hits == [], [f"{where}: {marker} ({markers[marker]})" for where, marker in hits]


def test_planted_head_is_defaced(e2e: dict) -> None:
    anat = e2e["out"] / "sub-planted" / "anat"
    raw = np.asanyarray(nib.load(e2e["bids"] / "sub-planted/anat/sub-planted_T1w.nii.gz").dataobj)
    out = np.asanyarray(nib.load(anat / "sub-planted_desc-defaced_T1w.nii.gz").dataobj)
    removed = np.asanyarray(nib.load(anat / "sub-planted_mod-T1w_defacemask.nii.gz").dataobj) > 0
    assert removed.sum() > 1000 and np.all(out[removed] == 0)
    assert np.array_equal(out[~removed], raw[~removed])


def test_qc_of_the_converted_head(e2e: dict) -> None:
    """The DICOM head passes QC, with figures and a subject report; the prone face is found only before."""
    record = json.loads((e2e["out"] / "sub-planted/anat/sub-planted_desc-defaced_T1w_qc.json").read_text())
    assert record["Status"] == "PASS", record["Reasons"]
    assert record["Metrics"]["brain_voxels_touched"] == 0
    assert all((e2e["out"] / figure).is_file() for figure in record["Figures"].values())
    assert (e2e["out"] / "sub-planted.html").is_file()
    assert record["Metrics"]["face_score_after"] is None or record["Metrics"]["face_score_after"] < LIMITS.face_score
    assert record["Metrics"]["face_score_before"] >= LIMITS.face_score
