"""QC metrics and verdicts: on every real head, and on deliberately broken defacing.

Figures are tested in test_figures.py, the face check in test_faces.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bidsdeface.masks import ScanMasks
from bidsdeface.qc import LIMITS, ScanQc, Verdict, judge, measure, with_pixel_text

from .conftest import BLUR_HEADS, CROPPED_HEADS, FACE_ABSENT_HEADS, FULL_FACE_HEADS, HEADS, head_paths, needs_shared
from .test_faces import face_before, no_face_after
from .test_figures import png_chunk_types

STAGES = {"load", "register", "masks", "skullstrip", "deface", "qc", "write"}  # the heads run skull-strips
PASSING = {
    "registration_score": 0.95,
    "face_removed_fraction": 0.99,
    "face_signal_left": 0.0,
    "brain_voxels_touched": 0,
    "head_voxels_removed": 50_000,
    "head_removed_fraction": 0.08,
    "face_check": "run",
    "face_score_before": 0.8,
    "face_score_after": None,
}


def test_passing_metrics_pass() -> None:
    assert judge(PASSING).status == "PASS"


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"brain_voxels_touched": 5}, "FAIL", "protected brain"),
        ({"face_score_after": 0.4}, "FAIL", "face is still found"),
        ({"face_signal_left": 0.6}, "FAIL", "unchanged"),
        ({"face_signal_left": 0.1}, "WARN", "unchanged"),
        ({"face_removed_fraction": 0.1}, "FAIL", "face region was removed"),
        ({"face_removed_fraction": 0.3}, "WARN", "face region was removed"),
        ({"head_voxels_removed": 0}, "FAIL", "nothing was removed"),
        ({"registration_score": 0.82}, "WARN", "registration score"),
        ({"head_removed_fraction": 0.3}, "WARN", "of the head was removed"),
        ({"face_check": "unavailable"}, "WARN", "face detector"),
    ],
)
def test_each_threshold_flags(change: dict, status: str, words: str) -> None:
    verdict = judge({**PASSING, **change})
    assert verdict.status == status
    assert any(words in reason for reason in verdict.reasons), verdict.reasons


def test_inconclusive_face_check_is_a_note_not_a_flag() -> None:
    verdict = judge({**PASSING, "face_score_before": None, "face_signal_left": None})
    assert verdict.status == "PASS"
    assert len(verdict.notes) == 2


# An input defaced elsewhere: its face region holds almost no tissue, no face is found
# before, and defacing it again may remove nothing from the head.
FACE_ABSENT = {
    **PASSING,
    "face_tissue_fraction": 0.01,
    "face_score_before": None,
    "face_signal_left": None,
    "head_voxels_removed": 0,
    "head_removed_fraction": 0.0,
}


def test_face_already_absent_passes_with_one_note() -> None:
    verdict = judge(FACE_ABSENT)
    assert verdict.status == "PASS", verdict.reasons
    assert verdict.notes == ("face already absent",)


def test_face_tissue_at_the_limit_is_not_absent() -> None:
    verdict = judge({**FACE_ABSENT, "face_tissue_fraction": LIMITS.face_absent_tissue})
    assert verdict.status == "FAIL"
    assert "nothing was removed from the head" in verdict.reasons
    assert "face already absent" not in verdict.notes


def test_a_face_found_before_overrules_the_tissue_measure() -> None:
    """Little tissue in a face region placed beside the face must not hide a face left whole."""
    verdict = judge({**FACE_ABSENT, "face_score_before": 0.8})
    assert verdict.status == "FAIL"
    assert "face already absent" not in verdict.notes


def test_face_already_absent_hides_no_other_failure() -> None:
    verdict = judge({**FACE_ABSENT, "brain_voxels_touched": 2, "face_signal_left": 0.5})
    assert verdict.status == "FAIL"
    assert len(verdict.reasons) == 2
    assert "face already absent" in verdict.notes


def test_measure_tells_how_much_face_the_input_has() -> None:
    before = np.full((10, 10, 10), 100.0)
    face = np.zeros(before.shape, bool)
    face[:, 7:, :] = True
    protect = np.zeros(before.shape, bool)
    protect[:, 7, :5] = True  # 50 face voxels protected: not counted
    before[:, 9, :] = 0.0  # one face row of the three holds no tissue
    masks = ScanMasks(face=face, ears=np.zeros_like(face), brain=protect, protect=protect, head=before > 50)
    metrics = measure(before, before, masks, face & ~protect, 50.0)
    assert metrics["face_tissue_fraction"] == pytest.approx(150 / 250)
    outside = ScanMasks(face=np.zeros_like(face), ears=face, brain=protect, protect=protect, head=before > 50)
    assert measure(before, before, outside, face, 50.0)["face_tissue_fraction"] is None


def test_measure_compares_output_with_input() -> None:
    before = np.full((10, 10, 10), 100.0)
    face = np.zeros(before.shape, bool)
    face[:, 7:, :] = True
    brain = np.zeros(before.shape, bool)
    brain[2:5, 2:5, 2:5] = True
    masks = ScanMasks(face=face, ears=np.zeros_like(face), brain=brain, protect=brain, head=np.ones_like(face))
    after = before.copy()
    after[:, 8:, :] = 0  # one face row of three left
    after[3, 3, 3] = 1  # a brain voxel touched
    metrics = measure(before, after, masks, face, 50.0)
    assert metrics["face_signal_left"] == pytest.approx(1 / 3, abs=1e-3)
    assert metrics["brain_voxels_touched"] == 1
    assert metrics["face_removed_fraction"] == 1.0
    assert metrics["head_removed_fraction"] == pytest.approx(0.3)


def _record(run: dict, label: str, out_key: str = "out") -> dict:
    image = head_paths(run, label, out_key)[1]
    return json.loads(image.with_name(image.name.replace(".nii.gz", "_qc.json")).read_text())


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("label", HEADS)
def test_every_head_passes_qc_with_valid_figures(heads_run: dict, label: str) -> None:
    record = _record(heads_run, label)
    metrics = record["Metrics"]
    assert record["Status"] == "PASS", record["Reasons"]
    assert metrics["brain_voxels_touched"] == 0
    assert metrics["face_signal_left"] is not None and metrics["face_signal_left"] <= LIMITS.face_signal_left_warn
    assert metrics["face_removed_fraction"] >= LIMITS.face_removed_warn
    assert metrics["registration_score"] >= LIMITS.registration_warn
    assert 0 < metrics["head_removed_fraction"] <= LIMITS.head_removed_warn
    assert set(record["Seconds"]) == STAGES
    for relative in record["Figures"].values():
        data = (heads_run["out"] / relative).read_bytes()
        assert Path(relative).parts[:2] == (f"sub-{label}", "figures")
        assert set(png_chunk_types(data)) <= {"IHDR", "PLTE", "IDAT", "IEND", "tRNS"}
        picture = Image.open(io.BytesIO(data))
        picture.load()
        assert min(picture.size) > 200 and len(data) < 600_000
        assert np.asarray(picture.convert("L")).std() > 10  # not blank


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("label", BLUR_HEADS)
def test_blurred_faces_pass_qc(blurred_run: dict, label: str) -> None:
    """Blur with ears: no face found from any view, no ear tissue left, also with the ears cut by the field of view."""
    record = _record(blurred_run, label, "blurred")
    metrics = record["Metrics"]
    assert record["Status"] == "PASS", record["Reasons"]
    assert metrics["face_signal_left"] <= LIMITS.face_signal_left_warn
    no_face_after(metrics)
    if label in FULL_FACE_HEADS or label in CROPPED_HEADS:
        face_before(metrics)
    assert metrics["ear_tissue_ml"] > 0
    assert metrics["ear_tissue_left"] is not None and metrics["ear_tissue_left"] <= LIMITS.ear_tissue_left_warn


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("label", FACE_ABSENT_HEADS)
def test_face_already_absent_passes_with_the_note(blurred_run: dict, label: str) -> None:
    """bidsdeface's own outputs and plane-cut heads are processed again, not refused."""
    record = _record(blurred_run, label, "blurred")
    assert record["Status"] == "PASS", record["Reasons"]
    assert "face already absent" in record["Notes"]
    assert record["Metrics"]["registration_score"] >= LIMITS.registration_warn
    no_face_after(record["Metrics"])


@needs_shared
@pytest.mark.slow
def test_undefaced_input_passed_off_as_output_fails(broken_cases: dict) -> None:
    quality = broken_cases["undefaced"]
    assert quality.verdict.status == "FAIL"
    assert quality.metrics["face_signal_left"] == 1.0
    assert quality.metrics["face_score_after"] >= LIMITS.face_score
    assert any("face is still found" in reason for reason in quality.verdict.reasons)


@needs_shared
@pytest.mark.slow
def test_mask_placed_with_a_wrong_transform_fails(broken_cases: dict) -> None:
    quality = broken_cases["wrong_transform"]
    assert quality.verdict.status == "FAIL"
    assert quality.metrics["brain_voxels_touched"] > 0
    assert quality.metrics["face_signal_left"] > LIMITS.face_signal_left_fail
    assert quality.metrics["face_score_after"] is not None
    assert quality.metrics["face_score_after"] >= LIMITS.face_score


def test_text_left_on_the_defaced_slices_fails_the_scan() -> None:
    quality = ScanQc(dict(PASSING), figures=None, verdict=judge(PASSING))
    assert quality.verdict.status == "PASS"
    checked = with_pixel_text(quality, 0, 3)
    assert checked.verdict.status == "PASS" and checked.metrics["pixel_text_slices_checked"] == 3
    found = with_pixel_text(quality, 1, 3)
    assert found.verdict == Verdict("FAIL", ("burned-in text found on 1 of 3 slices checked",), found.verdict.notes)
