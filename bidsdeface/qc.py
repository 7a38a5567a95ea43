"""Quality control of one defaced scan: metrics, figures, a face check, and a PASS / WARN / FAIL verdict.

Everything is measured on the data, comparing the written image with its input:
a scan whose output is its input, or whose mask was placed with a wrong
transform, is caught by the metrics and by the face check, not trusted from
the defacing step's own account.

Figures are drawn in the template's orientation (the scan resampled with its
registration), so every head is shown upright and facing the same way whatever
its header says. Surface renders are depth maps shaded in numpy: no display, no
GPU. "Before" views show the removed region pixelated: the face itself never
reaches a figure. The face check runs on the unobscured renders in memory.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import ants
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .deface import ScanMasks, pixelated
from .images import block_mean
from .register import Registration, to_ants
from .skullstrip import brain_metrics
from .templates import Template

VIEW_MM = 1.0
VIEW_MARGIN_MM = 8.0
TEMPLATE_HEAD_FRACTION = 0.05
SURFACE_SMOOTHING_MM = 0.7
DEPTH_SMOOTHING_PX = 1.0
# Shading fades to black this far behind the nearest surface point: a removed face
# leaves a deep, dark hole instead of a lit plane.
DEPTH_CUE_MM = {"front": 50.0, "side": 80.0}
LIGHT_DIRECTION = np.array([0.0, 0.3, 1.0]) / np.linalg.norm([0.0, 0.3, 1.0])
AMBIENT = 0.1
OBSCURE_BLOCK_MM = 8.0
MOSAIC_SAGITTAL_OFFSETS_MM = (-36.0, -18.0, 0.0, 18.0, 36.0)
MOSAIC_AXIAL_SLICES = 5
OUTLINE_RGB = (255, 48, 48)
PROTECT_RGB = (0, 200, 255)
BRAIN_VIEW_MARGIN_MM = 10.0
BRAIN_MOSAIC_SLICES = 5
LABEL_RGB = (255, 220, 0)
PNG_COLOURS = 64  # greys plus the outline and label colours
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
        Face detector score at or above which a face counts as found. dlib's own default is 0;
        on our renders real faces score 0.48-1.29 and blurred faces up to 0.08, so 0.3 splits them.
    brain_ml_low, brain_ml_high : float
        Plausible adult brain mask volume (brain and the fluid around it: 1.1-1.9 litres,
        with slack), checked when the whole brain is in the field of view.
    brain_template_ratio_low, brain_template_ratio_high : float
        Plausible ratio of the brain mask's volume to the template brain's placed in the field
        of view by the head registration. Loose: a tightly cropped field of view can leave that
        registration's scale off (the clinical T2w's placed brain measured 0.6x to 1.0x of the
        mask over repeated runs), while a mask that spills over the head or keeps half the brain
        is still caught.
    """

    registration_warn: float = 0.85
    face_removed_warn: float = 0.5
    face_removed_fail: float = 0.2
    face_signal_left_warn: float = 0.05
    face_signal_left_fail: float = 0.2
    head_removed_warn: float = 0.15
    face_score: float = 0.3
    brain_ml_low: float = 900.0
    brain_ml_high: float = 2200.0
    brain_template_ratio_low: float = 0.6
    brain_template_ratio_high: float = 2.0


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
class Figures:
    """The scan's QC figures as PNG bytes (no text chunks, no metadata); ``brain`` only when skull-stripped."""

    mosaic: bytes
    render: bytes
    brain: bytes | None = None


@dataclass(frozen=True)
class ScanQc:
    """Metrics, figures and verdict of one scan."""

    metrics: dict[str, Any]
    figures: Figures
    verdict: Verdict


@dataclass(frozen=True)
class ViewGrid:
    """A 1 mm grid over the template's head (plus a margin), in the template's RAS orientation.

    Attributes
    ----------
    shape : tuple of int
        Grid size.
    affine : numpy.ndarray
        Grid voxel-to-RAS affine (in template space).
    start : numpy.ndarray
        Template voxel index at grid voxel 0.
    zoom : numpy.ndarray
        Grid voxels per template voxel along each axis.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    start: np.ndarray
    zoom: np.ndarray

    def from_template(self, index: float, axis: int) -> float:
        """Return the grid index of template voxel ``index`` along ``axis``."""
        return float((index - self.start[axis]) * self.zoom[axis])

    def template_mask(self, mask: np.ndarray) -> np.ndarray:
        """Return a template mask on this grid (nearest neighbour)."""
        nearest = [
            np.clip(np.rint(self.start[axis] + np.arange(n) / self.zoom[axis]).astype(int), 0, mask.shape[axis] - 1)
            for axis, n in enumerate(self.shape)
        ]
        return mask[np.ix_(*nearest)]


def view_grid(template: Template) -> ViewGrid:
    """Return the grid on which QC views are drawn: the template head's box plus a margin, at 1 mm."""
    voxel = np.linalg.norm(template.affine[:3, :3], axis=0)
    head = template.head > TEMPLATE_HEAD_FRACTION * float(template.head.max())
    box = ndimage.find_objects(head.astype(np.uint8))[0]
    margin = np.ceil(VIEW_MARGIN_MM / voxel).astype(int)
    start = np.array([max(0, b.start - m) for b, m in zip(box, margin, strict=True)])
    stop = np.array([min(n, b.stop + m) for b, m, n in zip(box, margin, head.shape, strict=True)])
    zoom = voxel / VIEW_MM
    to_template = np.eye(4)
    to_template[:3, :3] = np.diag(1.0 / zoom)
    to_template[:3, 3] = start
    shape = tuple(int(v) for v in np.round((stop - start) * zoom))
    return ViewGrid(shape=shape, affine=template.affine @ to_template, start=start, zoom=zoom)


@dataclass(frozen=True)
class TemplateViews:
    """The scan before and after defacing, and the removed voxels, on a :class:`ViewGrid` (RAS)."""

    before: np.ndarray
    after: np.ndarray
    removed: np.ndarray
    surface_threshold: float
    grid: ViewGrid


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
        ``face_signal_left`` (None when no face tissue is in the field of view),
        ``ear_voxels_removed``, ``head_voxels_removed``, ``head_removed_fraction``,
        ``brain_voxels_touched`` (protected voxels whose value changed, any volume).
    """
    volumes = (before.reshape((*before.shape[:3], -1)), after.reshape((*after.shape[:3], -1)))
    changed = np.any(volumes[0] != volumes[1], axis=3)
    face_total = int(masks.face.sum())
    face_removed = int((removed & masks.face).sum())
    face_tissue = masks.face & ~masks.protect & (volumes[0].mean(axis=3) > signal_threshold)
    head_total = int(masks.head.sum())
    head_removed = int((removed & masks.head).sum())
    return {
        "face_voxels": face_total,
        "face_voxels_removed": face_removed,
        "face_removed_fraction": round(face_removed / face_total, 4) if face_total else 0.0,
        "face_signal_left": round(float(np.mean(~changed[face_tissue])), 4) if face_tissue.any() else None,
        "ear_voxels_removed": int((removed & masks.ears).sum()),
        "head_voxels_removed": head_removed,
        "head_removed_fraction": round(head_removed / head_total, 4) if head_total else 0.0,
        "brain_voxels_touched": int(changed[masks.protect].sum()),
    }


def _view_resampler(
    affine: np.ndarray, template: Template, registration: Registration
) -> tuple[ViewGrid, Callable[[np.ndarray, str, float], np.ndarray]]:
    """Return the view grid and a function resampling a 3D volume on the scan grid onto it."""
    geometry = view_grid(template)
    grid = to_ants(np.zeros(geometry.shape, np.float32), geometry.affine)
    inverse = [True] * len(registration.transforms)

    def resample(volume: np.ndarray, interpolator: str, outside: float = 0.0) -> np.ndarray:
        moving = to_ants(*block_mean(volume.astype(np.float32, copy=False), affine, VIEW_MM))
        warped = ants.apply_transforms(
            grid,
            moving,
            # template points to scan points: each transform inverted, the last one first
            list(reversed(registration.transforms)),
            interpolator=interpolator,
            whichtoinvert=inverse,
            defaultvalue=outside,
        )
        return warped.numpy()

    return geometry, resample


def template_views(
    before: np.ndarray,
    after: np.ndarray,
    removed: np.ndarray,
    affine: np.ndarray,
    template: Template,
    registration: Registration,
    surface_threshold: float,
) -> TemplateViews:
    """Resample 3D ``before``, ``after`` and ``removed`` (scan grid) onto the :func:`view_grid`."""
    geometry, resample = _view_resampler(affine, template, registration)
    outside = float(min(before.min(), after.min()))
    return TemplateViews(
        before=resample(before, "linear", outside),
        after=resample(after, "linear", outside),
        removed=resample(removed.astype(np.float32), "nearestNeighbor") > 0.5,
        surface_threshold=surface_threshold,
        grid=geometry,
    )


def smoothed(view: np.ndarray) -> np.ndarray:
    """Smooth a view before rendering (hides voxel steps; do it once for both directions)."""
    return ndimage.gaussian_filter(view, SURFACE_SMOOTHING_MM / VIEW_MM)


def depth_map(smooth: np.ndarray, threshold: float, direction: str) -> np.ndarray:
    """Return the distance (mm) from the view's edge to the head surface, seen from the front (+y) or right (+x).

    NaN where the line of sight misses the head. Rows run along the view's first
    remaining axis (x for the front view, y for the side view), columns along z.
    """
    axis = {"front": 1, "side": 0}[direction]
    inside = np.flip(np.moveaxis(smooth > threshold, axis, 0), axis=0)  # nearest slice first
    hit = inside.any(axis=0)
    return np.where(hit, inside.argmax(axis=0) * VIEW_MM, np.nan).astype(np.float32)


def surface_render(depth: np.ndarray, direction: str, nearest_mm: float) -> np.ndarray:
    """Shade a :func:`depth_map` as a lit surface that fades to black behind ``nearest_mm``.

    Fading from the input's nearest point (not each image's own) keeps the camera
    and light the same before and after defacing, so removed parts fall into shadow.

    Returns
    -------
    numpy.ndarray of uint8
        Grey image, top of the head up; the front view shows the subject's right
        on the left (as a camera would), the side view has the face pointing right.
    """
    hit = np.isfinite(depth)
    filled = ndimage.gaussian_filter(np.where(hit, depth, np.nanmax(depth, initial=0.0) + 1.0), DEPTH_SMOOTHING_PX)
    along_rows, along_columns = np.gradient(filled, VIEW_MM)
    normals = np.stack([-along_columns, -along_rows, np.ones_like(filled)], axis=-1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    shade = np.clip(normals @ LIGHT_DIRECTION, 0.0, 1.0)
    fade = np.clip(1.0 - (filled - nearest_mm) / DEPTH_CUE_MM[direction], 0.0, 1.0)
    image = np.where(hit, (AMBIENT + (1.0 - AMBIENT) * shade) * fade, 0.0)
    return as_picture(np.round(image * 255).astype(np.uint8), direction)


def as_picture(projection: np.ndarray, direction: str) -> np.ndarray:
    """Turn a projection along the view axis (rows x or y, columns z) into an upright picture."""
    picture = np.flipud(projection.T)  # superior at the top
    return np.ascontiguousarray(picture[:, ::-1] if direction == "front" else picture)


def face_silhouette(template: Template, grid: ViewGrid, direction: str) -> np.ndarray:
    """Return where the template's face region lies in a render of a view on ``grid`` (boolean picture)."""
    face = grid.template_mask(template.face)
    return as_picture(face.any(axis={"front": 1, "side": 0}[direction]), direction)


def face_detector_available() -> bool:
    """Return whether the face detector (dlib) can be imported."""
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    return True


def face_detector() -> Any:
    """Return dlib's frontal face detector (HOG; compiled into the library, no model file to fetch)."""
    import dlib

    return dlib.get_frontal_face_detector()


def face_score(picture: np.ndarray, detector: Any, where: np.ndarray) -> float | None:
    """Return the detector's best score for a face centred ``where`` in ``picture`` or its mirror image.

    Only faces centred in the face region count: the ear and the back of the head
    can look like a face to a detector. Candidates scoring above -1 are looked
    at; None means none at all.
    """
    scores = []
    for mirrored in (False, True):
        candidate = np.ascontiguousarray(picture[:, ::-1] if mirrored else picture)
        boxes, box_scores, _ = detector.run(candidate, 1, -1.0)
        for box, score in zip(boxes, box_scores, strict=True):
            row = min(max((box.top() + box.bottom()) // 2, 0), picture.shape[0] - 1)
            column = min(max((box.left() + box.right()) // 2, 0), picture.shape[1] - 1)
            if where[row, picture.shape[1] - 1 - column if mirrored else column]:
                scores.append(float(score))
    return round(max(scores), 3) if scores else None


def _grey(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    return np.round(np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0) * 255).astype(np.uint8)


def _outlined(grey: np.ndarray, region: np.ndarray, *more: tuple[np.ndarray, tuple[int, int, int]]) -> Image.Image:
    """Draw each further (region, colour) outline, then ``region``'s in OUTLINE_RGB on top."""
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for outlined, colour in (*more, (region, OUTLINE_RGB)):
        rgb[outlined & ~ndimage.binary_erosion(outlined)] = colour
    return Image.fromarray(rgb)


def _labelled(tile: Image.Image, label: str) -> Image.Image:
    ImageDraw.Draw(tile).text((4, 2), label, fill=LABEL_RGB)
    return tile


def _sheet(rows: list[list[Image.Image]]) -> Image.Image:
    """Paste rows of tiles under each other on a black canvas."""
    width = max(sum(t.width for t in row) for row in rows)
    height = sum(max(t.height for t in row) for row in rows)
    sheet = Image.new("RGB", (width, height))
    top = 0
    for row in rows:
        left = 0
        for tile in row:
            sheet.paste(tile, (left, top))
            left += tile.width
        top += max(t.height for t in row)
    return sheet


def png_bytes(image: Image.Image) -> bytes:
    """Encode ``image`` as a small palette PNG with no text or metadata chunks."""
    buffer = io.BytesIO()
    image.quantize(PNG_COLOURS).save(buffer, format="PNG")
    return buffer.getvalue()


def _sagittal(volume: np.ndarray, index: int) -> np.ndarray:
    return np.flipud(volume[index].T)  # superior up, anterior right


def _axial(volume: np.ndarray, index: int) -> np.ndarray:
    return np.flipud(volume[:, :, index].T)[:, ::-1]  # anterior up, subject's right on the left


def mosaic(views: TemplateViews, shown_before: np.ndarray, template: Template) -> Image.Image:
    """Sagittal and axial slices through the face, before (obscured) and after, removed region outlined.

    Sagittal slices are placed around the template's midline, axial ones across
    the template face region's height; both are cropped to the head.
    """
    head = views.before > views.surface_threshold
    box = ndimage.find_objects(head.astype(np.uint8))[0] if head.any() else tuple(slice(0, n) for n in head.shape)
    window = (
        float(np.percentile(views.before, 0.5)),
        float(np.percentile(views.before[head], 99.5)) if head.any() else float(views.before.max()),
    )
    midline = views.grid.from_template(ndimage.center_of_mass(template.brain)[0], 0)
    sagittal = [int(np.clip(midline + mm / VIEW_MM, 0, head.shape[0] - 1)) for mm in MOSAIC_SAGITTAL_OFFSETS_MM]
    face_z = np.array([views.grid.from_template(z, 2) for z in np.nonzero(template.face.any(axis=(0, 1)))[0]])
    axial = [int(z) for z in np.linspace(face_z.min(), face_z.max(), MOSAIC_AXIAL_SLICES + 2)[1:-1]]
    planes = (
        ("sagittal", _sagittal, sagittal, (slice(None), box[1], box[2])),
        ("axial", _axial, axial, (box[0], box[1], slice(None))),
    )
    rows: list[list[Image.Image]] = []
    for plane, cut, indices, crop in planes:
        for label, volume in (("before", shown_before), ("after", views.after)):
            row = [_outlined(_grey(cut(volume[crop], i), window), cut(views.removed[crop], i)) for i in indices]
            rows.append([_labelled(row[0], f"{plane} {label}"), *row[1:]])
    return _sheet(rows)


def _coronal(volume: np.ndarray, index: int) -> np.ndarray:
    return np.flipud(volume[:, index, :].T)[:, ::-1]  # superior up, subject's right on the left


def brain_mosaic(
    after: np.ndarray,
    brain: np.ndarray,
    protect: np.ndarray,
    affine: np.ndarray,
    template: Template,
    registration: Registration,
) -> Image.Image:
    """Sagittal, coronal and axial slices across the brain mask, outlined on the defaced image.

    The brain mask is outlined in OUTLINE_RGB and the protected region (template brain
    and this mask, grown by the margin) in PROTECT_RGB. Slices are cropped to the mask
    plus BRAIN_VIEW_MARGIN_MM; the face is already removed from ``after``.
    """
    geometry, resample = _view_resampler(affine, template, registration)
    volume = resample(after, "linear", float(after.min()))
    brain_view = resample(brain.astype(np.float32), "nearestNeighbor") > 0.5
    protect_view = resample(protect.astype(np.float32), "nearestNeighbor") > 0.5
    shown = brain_view if brain_view.any() else np.ones(geometry.shape, bool)
    margin = round(BRAIN_VIEW_MARGIN_MM / VIEW_MM)
    box = tuple(
        slice(max(0, s.start - margin), min(n, s.stop + margin))
        for s, n in zip(ndimage.find_objects(shown.astype(np.uint8))[0], geometry.shape, strict=True)
    )
    volume, brain_view, protect_view = volume[box], brain_view[box], protect_view[box]
    inside = volume[brain_view] if brain_view.any() else volume.ravel()
    window = (float(np.percentile(volume, 0.5)), float(np.percentile(inside, 99.5)))
    rows = []
    for axis, (plane, cut) in enumerate((("sagittal", _sagittal), ("coronal", _coronal), ("axial", _axial))):
        positions = np.linspace(0, volume.shape[axis] - 1, BRAIN_MOSAIC_SLICES + 2)[1:-1].astype(int)
        row = [
            _outlined(_grey(cut(volume, i), window), cut(brain_view, i), (cut(protect_view, i), PROTECT_RGB))
            for i in positions
        ]
        rows.append([_labelled(row[0], plane), *row[1:]])
    return _sheet(rows)


def obscured(volume: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Return ``volume`` with ``region`` pixelated into coarse blocks (what "before" figures show)."""
    block = [max(1, round(OBSCURE_BLOCK_MM / VIEW_MM))] * 3
    shown = volume.copy()
    if region.any():
        shown[region] = pixelated(volume, block)[region]
    return shown


def judge(metrics: dict[str, Any], limits: Limits = LIMITS) -> Verdict:
    """Turn one scan's metrics into PASS / WARN / FAIL with one-line reasons.

    >>> judge({"brain_voxels_touched": 3, "head_voxels_removed": 10}).status
    'FAIL'
    """
    fail: list[str] = []
    warn: list[str] = []
    notes: list[str] = []
    touched = metrics.get("brain_voxels_touched", 0)
    if touched:
        fail.append(f"{touched} voxel(s) of the protected brain changed (must be 0)")
    if metrics.get("head_voxels_removed", 0) == 0:
        fail.append("nothing was removed from the head")
    after = metrics.get("face_score_after")
    if after is not None and after >= limits.face_score:
        fail.append(f"a face is still found in the render after defacing (score {after:.2f} >= {limits.face_score})")
    left = metrics.get("face_signal_left")
    if left is None:
        notes.append("no facial tissue in the field of view: face removal could not be measured")
    elif left > limits.face_signal_left_fail:
        fail.append(f"{left:.0%} of the face region's tissue is unchanged (> {limits.face_signal_left_fail:.0%})")
    elif left > limits.face_signal_left_warn:
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
    if metrics.get("face_check") == "unavailable":
        warn.append("face check not run: the face detector (dlib) is not installed")
    elif metrics.get("face_check") == "run":
        before = metrics.get("face_score_before")
        if before is None or before < limits.face_score:
            notes.append("face check inconclusive: no face found in the render before defacing")
    status = "FAIL" if fail else "WARN" if warn else "PASS"
    return Verdict(status, tuple(fail + warn), tuple(notes))


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
) -> ScanQc:
    """Measure, draw and judge one defaced scan.

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

    Returns
    -------
    ScanQc
    """
    metrics: dict[str, Any] = {"registration_score": round(registration.score, 4)}
    metrics.update(measure(before, after, masks, removed, signal_threshold))
    brain_figure = None
    if brain is not None:
        zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
        metrics.update(brain_metrics(brain, masks.brain, zooms))
        brain_figure = png_bytes(
            brain_mosaic(_mean_volume(after), brain, masks.protect, affine, template, registration)
        )
    views = template_views(
        _mean_volume(before), _mean_volume(after), removed, affine, template, registration, signal_threshold
    )
    shown_before = obscured(views.before, views.removed)
    depths = {}
    for stage, volume in (("before", views.before), ("after", views.after), ("shown before", shown_before)):
        smooth = smoothed(volume)
        for direction in ("front", "side"):
            depths[stage, direction] = depth_map(smooth, signal_threshold, direction)
    renders = {
        (stage, direction): surface_render(depth, direction, _nearest(depths["before", direction]))
        for (stage, direction), depth in depths.items()
    }
    if face_detector_available():
        metrics["face_check"] = "run"
        detector = face_detector()
        where = {d: face_silhouette(template, views.grid, d) for d in ("front", "side")}
        for stage in ("before", "after"):
            scores = [face_score(renders[stage, d], detector, where[d]) for d in ("front", "side")]
            found = [s for s in scores if s is not None]
            metrics[f"face_score_{stage}"] = max(found) if found else None
    else:
        metrics["face_check"] = "unavailable"
    render_tiles = [
        [_labelled(Image.fromarray(renders[stage, d]).convert("RGB"), f"{label} {d}") for d in ("front", "side")]
        for stage, label in (("shown before", "before"), ("after", "after"))
    ]
    figures = Figures(
        mosaic=png_bytes(mosaic(views, shown_before, template)),
        render=png_bytes(_sheet(render_tiles)),
        brain=brain_figure,
    )
    return ScanQc(metrics=metrics, figures=figures, verdict=judge(metrics, limits))


def _nearest(depth: np.ndarray) -> float:
    return float(np.nanmin(depth)) if np.isfinite(depth).any() else 0.0


def _mean_volume(data: np.ndarray) -> np.ndarray:
    return data.reshape((*data.shape[:3], -1)).mean(axis=3, dtype=np.float32) if data.ndim > 3 else data


def limits_record(limits: Limits = LIMITS) -> dict[str, float]:
    """Return the thresholds as a plain dict (written beside the metrics)."""
    return asdict(limits)
