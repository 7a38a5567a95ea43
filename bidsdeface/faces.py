"""The face check: dlib's face detectors run on a scan's surface renders, before and after defacing.

A face found in the render after defacing fails the scan; a face found before
tells that the check could see one at all (and overrules a face region that
seems empty). The renders are the unobscured ones from
:func:`bidsdeface.figures.surface_renders`, looked at from every view in
:data:`bidsdeface.figures.FACE_VIEWS`; only faces centred in the template face
region's silhouette count. dlib is optional: without it the check is reported as
unavailable.

dlib runs only in forked children (:class:`bidsdeface.forks.ForkedCall`), never in the
process that forks them: dlib keeps a pool of threads that a fork does not copy, so a
child forked from a process that has run dlib hangs as soon as dlib signals that pool.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np

from .figures import FACE_VIEWS, ViewGrid, front_silhouettes
from .forks import ForkedCall
from .templates import Template, face_model_path


@dataclass(frozen=True)
class FaceDetectors:
    """dlib's two face detectors: HOG (compiled into dlib) and the CNN (MMOD, bundled model)."""

    hog: Any
    cnn: Any


def face_detector_available() -> bool:
    """Return whether the face detectors (dlib) are installed (found, not imported: see the module's description)."""
    return importlib.util.find_spec("dlib") is not None


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


def face_silhouettes(template: Template, grid: ViewGrid) -> dict[str, np.ndarray]:
    """Return, for each of FACE_VIEWS, where in its render a face must be centred to count."""
    face = grid.template_mask(template.face)
    return front_silhouettes(face, FACE_VIEWS)


def face_check(renders: dict[tuple[str, str], np.ndarray], template: Template, grid: ViewGrid) -> dict[str, Any]:
    """Run both face detectors on every face-check view, before and after defacing; return :func:`face_metrics`."""
    where = face_silhouettes(template, grid)
    before, after = (
        detected_faces({name: renders[stage, name] for name, _, _ in FACE_VIEWS}, where)
        for stage in ("before", "after")
    )
    return face_metrics(before.result(), after.result())


def detected_faces(renders: dict[str, np.ndarray], where: dict[str, np.ndarray]) -> ForkedCall[dict | None]:
    """Start looking for faces in one stage's renders (keyed by view name) in a forked child.

    Its result is each detector's best score (``hog``, ``cnn``) over FACE_VIEWS, None for a
    detector without a candidate centred in ``where`` (see :func:`face_silhouettes`); the
    whole result is None when dlib is not installed.
    """
    if not face_detector_available():
        return ForkedCall.finished(None)
    return ForkedCall(_best_scores, {name: renders[name] for name, _, _ in FACE_VIEWS}, where)


def _best_scores(renders: dict[str, np.ndarray], where: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Run both detectors on each render (in a forked child: see the module's description)."""
    detectors = face_detectors()
    found: dict[str, list[float]] = {"hog": [], "cnn": []}
    for name, picture in renders.items():
        for detector, score in face_scores(picture, detectors, where[name]).items():
            if score is not None:
                found[detector].append(score)
    return {detector: max(scores, default=None) for detector, scores in found.items()}


def face_metrics(before: dict[str, float | None] | None, after: dict[str, float | None] | None) -> dict[str, Any]:
    """Return the face check's metrics from the :func:`detected_faces` before and after defacing.

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
