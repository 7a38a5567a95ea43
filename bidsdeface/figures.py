"""QC figures of one defaced scan: views in the template's orientation, surface renders, mosaics, PNG bytes.

Figures are drawn in the template's orientation (the scan resampled with its
registration onto a :class:`ViewGrid`), so every head is shown upright and facing
the same way whatever its header says. Surface renders are depth maps shaded in
numpy: no display, no GPU. Every view, before and after, shows the face region (and
whatever was removed) in coarse blocks (:func:`obscured`, :func:`obscured_picture`):
no face reaches a figure, even when defacing failed. The unobscured renders stay in
memory for the face check (:mod:`bidsdeface.faces`).

What this module holds, in order: the view grid and resampling onto it; surface
renders (also the views the face check looks from, :data:`FACE_VIEWS`); obscuring;
drawing (slices, outlines, labels, sheets, palette PNGs); :func:`scan_figures`,
which draws a scan's :class:`Figures`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .register import Registration
from .templates import Template
from .volumes import block_expanded, block_mean, bounding_box, warp_volume

# QC views and renders are drawn on a grid of this pixel size. 1.5 mm instead of 1 mm: the
# face detectors, most of the QC's time, run on 2.25x fewer pixels (QC of a 1 mm head 5.0-5.3 s
# -> 2.1-2.2 s on an idle machine), and still find every full face of the shared heads while
# scoring no defaced or blurred one (see qc.Limits.face_score).
VIEW_MM = 1.5
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
class Figures:
    """The scan's QC figures as PNG bytes (no text chunks, no metadata); ``brain`` only when skull-stripped."""

    mosaic: bytes
    render: bytes
    brain: bytes | None = None


@dataclass(frozen=True)
class ViewGrid:
    """A VIEW_MM grid over the template's head (plus a margin), in the template's RAS orientation.

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
    """Return the grid on which QC views are drawn: the template head's box plus a margin, at VIEW_MM."""
    voxel = np.linalg.norm(template.affine[:3, :3], axis=0)
    head = template.head > TEMPLATE_HEAD_FRACTION * float(template.head.max())
    box = bounding_box(head, np.ceil(VIEW_MARGIN_MM / voxel).astype(int))
    start, stop = np.array([s.start for s in box]), np.array([s.stop for s in box])
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


def _view_resampler(
    affine: np.ndarray, template: Template, registration: Registration
) -> tuple[ViewGrid, Callable[[np.ndarray, str, float], np.ndarray]]:
    """Return the view grid and a function resampling a 3D volume on the scan grid onto it."""
    geometry = view_grid(template)

    def resample(volume: np.ndarray, interpolator: str, outside: float = 0.0) -> np.ndarray:
        coarse, coarse_affine = block_mean(volume.astype(np.float32, copy=False), affine, VIEW_MM)
        # grid (template) points to scan points: each transform inverted, the last one first
        return warp_volume(
            coarse,
            coarse_affine,
            geometry.shape,
            geometry.affine,
            registration.transforms,
            interpolator,
            outside,
            inverse=True,
        )

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
    outside = view_background(before, after)
    return TemplateViews(
        before=view_of(before, affine, template, registration, "linear", outside),
        after=view_of(after, affine, template, registration, "linear", outside),
        removed=view_of(removed.astype(np.float32), affine, template, registration, "nearestNeighbor") > 0.5,
        surface_threshold=surface_threshold,
        grid=view_grid(template),
    )


def view_background(before: np.ndarray, after: np.ndarray) -> float:
    """Return the value of view points outside the scan: the lowest of ``before`` and ``after``."""
    return float(min(before.min(), after.min()))


def view_of(
    volume: np.ndarray,
    affine: np.ndarray,
    template: Template,
    registration: Registration,
    interpolator: str,
    outside: float = 0.0,
) -> np.ndarray:
    """Resample one 3D ``volume`` (scan grid) onto the :func:`view_grid` (see :func:`template_views`)."""
    _, resample = _view_resampler(affine, template, registration)
    return resample(volume, interpolator, outside)


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
    return _turned_silhouette(face, _face_offsets(face), yaw, pitch)


def front_silhouettes(face: np.ndarray, views: Sequence[tuple[str, float, float]]) -> dict[str, np.ndarray]:
    """Return the :func:`face_silhouette` from the front, turned by each view's ``(name, yaw, pitch)``, by name.

    The face region's voxels are found once for all the turned views.
    """
    offsets = _face_offsets(face) if any(yaw or pitch for _, yaw, pitch in views) else None
    return {
        name: _turned_silhouette(face, offsets, yaw, pitch) if yaw or pitch else face_silhouette(face, "front")
        for name, yaw, pitch in views
    }


def _face_offsets(face: np.ndarray) -> np.ndarray:
    """Return the face region's voxels as offsets from the view grid's centre (3 x N)."""
    return (np.argwhere(face) - (np.array(face.shape) - 1) / 2).T


def _turned_silhouette(face: np.ndarray, offsets: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    """Project the face region's voxels (``offsets``: :func:`_face_offsets`) turned by yaw and pitch, from the front."""
    centre = (np.array(face.shape) - 1) / 2
    points = _view_rotation(yaw, pitch).T @ offsets + centre[:, None]
    columns = np.clip(np.rint(points[[0, 2]]).astype(int), 0, [[face.shape[0] - 1], [face.shape[2] - 1]])
    projection = np.zeros((face.shape[0], face.shape[2]), bool)
    projection[columns[0], columns[1]] = True
    return as_picture(ndimage.binary_closing(projection, iterations=2), "front")


def surface_renders(views: TemplateViews) -> dict[tuple[str, str], np.ndarray]:
    """Render the head's surface before and after, from every face-check view and from the side.

    Keys are (stage, view); each view's camera and light are the same before and after.
    """
    before, nearest = stage_renders(views.before, views.surface_threshold)
    after, _ = stage_renders(views.after, views.surface_threshold, nearest)
    return {**{("before", name): r for name, r in before.items()}, **{("after", name): r for name, r in after.items()}}


def stage_renders(
    view: np.ndarray, surface_threshold: float, nearest: dict[str, float] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Render one view volume's surface from every face-check view and from the side.

    Returns the renders by view name, and each view's nearest depth: ``nearest`` when
    given (the input's, so that the camera and light are those of the input), else this
    view's own.
    """
    smooth = smoothed(view)
    renders, nearest = {}, dict(nearest or {})
    for name, yaw, pitch in (*FACE_VIEWS, ("side", 0.0, 0.0)):
        direction = "side" if name == "side" else "front"
        depth = depth_map(turned(smooth, yaw, pitch) if yaw or pitch else smooth, surface_threshold, direction)
        nearest.setdefault(name, _nearest(depth))
        renders[name] = surface_render(depth, direction, nearest[name])
    return renders, nearest


def _nearest(depth: np.ndarray) -> float:
    return float(np.nanmin(depth)) if np.isfinite(depth).any() else 0.0


def pixelated(volume: np.ndarray, block: list[int]) -> np.ndarray:
    """Return ``volume`` made of blocks of ``block`` voxels, each holding one local mean (same shape).

    >>> pixelated(np.arange(4.0)[:, None, None] * np.ones((4, 1, 1)), [2, 1, 1]).ravel().tolist()
    [0.0, 0.0, 1.5, 1.5]
    """
    coarse = volume
    for axis, size in enumerate(block):  # the filter is separable: keep only every block's first value per pass
        filtered = ndimage.uniform_filter1d(coarse, size, axis=axis, mode="nearest")
        coarse = filtered[(slice(None),) * axis + (slice(0, None, size),)]
    return block_expanded(coarse, block, volume.shape)


def obscured(volume: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Return ``volume`` with ``region`` pixelated into coarse blocks (what "before" figures show)."""
    block = [max(1, round(OBSCURE_BLOCK_MM / VIEW_MM))] * 3
    shown = volume.copy()
    if region.any():
        np.copyto(shown, pixelated(volume, block), where=region)
    return shown


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


def _coronal(volume: np.ndarray, index: int) -> np.ndarray:
    return np.flipud(volume[:, index, :].T)[:, ::-1]  # superior up, subject's right on the left


def mosaic(views: TemplateViews, shown_before: np.ndarray, shown_after: np.ndarray, template: Template) -> Image.Image:
    """Sagittal and axial slices through the face, before and after (both obscured), removed region outlined.

    Sagittal slices are placed around the template's midline, axial ones across
    the template face region's height; both are cropped to the head.
    """
    head = views.before > views.surface_threshold
    box = bounding_box(head)
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
    box = bounding_box(shown, (margin,) * 3)
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


def render_sheet(renders: dict[tuple[str, str], np.ndarray], region: np.ndarray) -> Image.Image:
    """Front and side renders, before and after, with ``region`` (view grid) obscured in each.

    Parameters
    ----------
    renders : dict
        :func:`surface_renders` of the scan, keyed by (stage, view).
    region : numpy.ndarray of bool
        What no figure may show (the face region and whatever was removed), on the view grid.

    Returns
    -------
    PIL.Image.Image
        Two rows (before, after) of two labelled tiles (front, side).
    """
    tiles = [
        [
            _labelled(
                Image.fromarray(obscured_picture(renders[stage, d], face_silhouette(region, d))).convert("RGB"),
                f"{stage} {d}",
            )
            for d in ("front", "side")
        ]
        for stage in ("before", "after")
    ]
    return _sheet(tiles)


def scan_figures(
    views: TemplateViews,
    renders: dict[tuple[str, str], np.ndarray],
    template: Template,
    brain: Image.Image | None = None,
) -> Figures:
    """Draw the QC figures of one scan as PNG bytes.

    Every figure shows the template's face region and whatever was removed obscured.

    Parameters
    ----------
    views : TemplateViews
        The scan before and after defacing on the view grid (:func:`template_views`).
    renders : dict
        Their :func:`surface_renders`.
    template : Template
        The bundled template (face region, brain midline).
    brain : PIL.Image.Image, optional
        The skull-strip figure (:func:`brain_mosaic`), when the scan was skull-stripped.

    Returns
    -------
    Figures
    """
    shown = views.removed | views.grid.template_mask(template.face)
    return Figures(
        mosaic=png_bytes(mosaic(views, obscured(views.before, shown), obscured(views.after, shown), template)),
        render=png_bytes(render_sheet(renders, shown)),
        brain=None if brain is None else png_bytes(brain),
    )
