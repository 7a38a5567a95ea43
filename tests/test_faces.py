"""The face check: dlib's detectors on surface renders, on a synthetic head and on every real head."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from bidsdeface import faces
from bidsdeface.figures import surface_renders
from bidsdeface.qc import LIMITS

from .conftest import FULL_FACE_HEADS, HEADS, head_paths, needs_shared
from .test_figures import ball_with_a_nose, synthetic_views


def no_face_after(metrics: dict) -> None:
    """Assert that the face check ran and neither detector found a face after defacing."""
    assert metrics["face_check"] == "run"
    for key, limit in (("face_score_after", LIMITS.face_score), ("face_cnn_score_after", LIMITS.face_cnn_score)):
        assert metrics[key] is None or metrics[key] < limit, f"face found after defacing ({key} {metrics[key]})"


def face_before(metrics: dict) -> None:
    """Assert that both detectors found a face before defacing."""
    for key, limit in (("face_score_before", LIMITS.face_score), ("face_cnn_score_before", LIMITS.face_cnn_score)):
        found = metrics[key] is not None and metrics[key] >= limit
        assert found, f"no face found before defacing ({key} {metrics[key]})"


@dataclass(frozen=True)
class Box:
    """A detection box as dlib gives it (inclusive pixel bounds)."""

    top_: int
    bottom_: int
    left_: int
    right_: int

    def top(self) -> int:
        return self.top_

    def bottom(self) -> int:
        return self.bottom_

    def left(self) -> int:
        return self.left_

    def right(self) -> int:
        return self.right_


def test_centred_in_reads_mirrored_boxes_back() -> None:
    where = np.zeros((10, 10), bool)
    where[:, :5] = True  # the left half of the picture
    box = Box(top_=2, bottom_=6, left_=0, right_=4)  # centred on row 4, column 2
    assert faces._centred_in(box, where, mirrored=False)
    assert not faces._centred_in(box, where, mirrored=True)  # column 2 of the mirror image is column 7


def test_face_metrics_without_dlib_say_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faces, "face_detector_available", lambda: False)
    template = ball_with_a_nose()
    views = synthetic_views(template)
    assert faces.face_check(surface_renders(views), template, views.grid) == {"face_check": "unavailable"}


def test_no_face_in_a_ball_with_a_nose() -> None:
    if not faces.face_detector_available():
        pytest.skip("dlib is not installed")
    template = ball_with_a_nose()
    views = synthetic_views(template)
    metrics = faces.face_check(surface_renders(views), template, views.grid)
    assert list(metrics) == [
        "face_check",
        "face_score_before",
        "face_cnn_score_before",
        "face_score_after",
        "face_cnn_score_after",
    ]
    no_face_after(metrics)
    for key, limit in (("face_score_before", LIMITS.face_score), ("face_cnn_score_before", LIMITS.face_cnn_score)):
        assert metrics[key] is None or metrics[key] < limit


def _metrics(run: dict, label: str) -> dict:
    image = head_paths(run, label)[1]
    return json.loads(image.with_name(image.name.replace(".nii.gz", "_qc.json")).read_text())["Metrics"]


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("label", HEADS)
def test_face_found_before_and_not_after(heads_run: dict, label: str) -> None:
    """Both detectors find every full face before (views front, yaw +-20, pitch +-10) and none after."""
    metrics = _metrics(heads_run, label)
    no_face_after(metrics)
    if label in FULL_FACE_HEADS:
        face_before(metrics)
