"""The face check: dlib's face detectors run on a scan's surface renders, before and after defacing.

A face found in the render after defacing fails the scan; a face found before
tells that the check could see one at all (and overrules a face region that
seems empty). The renders are the unobscured ones from
:func:`bidsdeface.figures.surface_renders`, looked at from every view in
:data:`bidsdeface.figures.FACE_VIEWS`; only faces centred in the template face
region's silhouette count. dlib is optional: without it the check is reported as
unavailable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .figures import FACE_VIEWS, ViewGrid, face_silhouette
from .templates import Template, face_model_path


@dataclass(frozen=True)
class FaceDetectors:
    """dlib's two face detectors: HOG (compiled into dlib) and the CNN (MMOD, bundled model)."""

    hog: Any
    cnn: Any


def face_detector_available() -> bool:
    """Return whether the face detectors (dlib) can be imported."""
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    return True


def face_detectors() -> FaceDetectors:
    """Load dlib's HOG frontal face detector and its CNN face detector (model shipped in the package)."""
    import dlib

    return FaceDetectors(dlib.get_frontal_face_detector(), dlib.cnn_face_detection_model_v1(str(face_model_path())))


def face_scores(picture: np.ndarray, detectors: FaceDetectors, where: np.ndarray) -> dict[str, float | None]:
    """Return each detector's best score for a face centred ``where`` in ``picture``.

    Only faces centred in the face region count: the ear and the back of the head
    can look like a face to a detector. HOG also looks at the mirror image and
    reports candidates above -1; the CNN reports confidences above 0, on the
    picture as it is (one pass, no upsampling: our faces are large). None means
    no candidate at all.
    """
    hog = []
    for mirrored in (False, True):
        candidate = np.ascontiguousarray(picture[:, ::-1] if mirrored else picture)
        boxes, box_scores, _ = detectors.hog.run(candidate, 1, -1.0)
        for box, score in zip(boxes, box_scores, strict=True):
            if _centred_in(box, where, mirrored):
                hog.append(float(score))
    cnn = [d.confidence for d in detectors.cnn(np.ascontiguousarray(picture), 0) if _centred_in(d.rect, where, False)]
    return {"hog": round(max(hog), 3) if hog else None, "cnn": round(max(cnn), 3) if cnn else None}


def _centred_in(box: Any, where: np.ndarray, mirrored: bool) -> bool:
    row = min(max((box.top() + box.bottom()) // 2, 0), where.shape[0] - 1)
    column = min(max((box.left() + box.right()) // 2, 0), where.shape[1] - 1)
    return bool(where[row, where.shape[1] - 1 - column if mirrored else column])


@dataclass(frozen=True)
class FaceSearch:
    """The two detectors, and for each face-check view where a face must be centred to count."""

    detectors: FaceDetectors
    where: dict[str, np.ndarray]


def face_search(template: Template, grid: ViewGrid) -> FaceSearch | None:
    """Load the detectors and draw the face region's silhouette in each of FACE_VIEWS; None without dlib."""
    if not face_detector_available():
        return None
    face = grid.template_mask(template.face)
    where = {name: face_silhouette(face, "front", yaw, pitch) for name, yaw, pitch in FACE_VIEWS}
    return FaceSearch(face_detectors(), where)


def face_check(renders: dict[tuple[str, str], np.ndarray], template: Template, grid: ViewGrid) -> dict[str, Any]:
    """Run both face detectors on every face-check view, before and after defacing; return :func:`face_metrics`."""
    search = face_search(template, grid)
    before, after = (
        stage_face_scores({name: renders[stage, name] for name, _, _ in FACE_VIEWS}, search)
        for stage in ("before", "after")
    )
    return face_metrics(before, after)


def stage_face_scores(renders: dict[str, np.ndarray], search: FaceSearch | None) -> dict[str, float | None] | None:
    """Return each detector's best score (``hog``, ``cnn``) over the FACE_VIEWS ``renders`` of one stage.

    A score is None when no candidate is centred in the face region's silhouette; the
    whole result is None without a ``search`` (dlib is not installed).
    """
    if search is None:
        return None
    found: dict[str, list[float]] = {"hog": [], "cnn": []}
    for name, _, _ in FACE_VIEWS:
        for detector, score in face_scores(renders[name], search.detectors, search.where[name]).items():
            if score is not None:
                found[detector].append(score)
    return {detector: max(scores, default=None) for detector, scores in found.items()}


def face_metrics(before: dict[str, float | None] | None, after: dict[str, float | None] | None) -> dict[str, Any]:
    """Return the face check's metrics from the :func:`stage_face_scores` before and after defacing.

    ``face_check`` is ``run`` or ``unavailable`` (no dlib); when run, ``face_score_before``/
    ``after`` (HOG) and ``face_cnn_score_before``/``after`` (CNN): each detector's best
    score over FACE_VIEWS, None when it found no candidate.
    """
    if before is None or after is None:
        return {"face_check": "unavailable"}
    metrics: dict[str, Any] = {"face_check": "run"}
    for stage, scores in (("before", before), ("after", after)):
        metrics |= {f"face_score_{stage}": scores["hog"], f"face_cnn_score_{stage}": scores["cnn"]}
    return metrics
