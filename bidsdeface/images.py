"""Load a scan and refuse, with one clear line, what cannot be a head image."""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.volumeutils import apply_read_scaling
from scipy import ndimage

from .errors import ScanError
from .volumes import block_expanded, box_closed, box_opened, largest_component, stored_data

MIN_HEAD_EXTENT_MM = 60.0
MAX_HEAD_EXTENT_MM = 450.0
MIN_SLICES = 4
HEAD_CLOSING_MM = 6.0
HEAD_MASK_RESOLUTION_MM = 2.0
MIN_HEAD_VARIATION = 0.10
MIN_NEIGHBOUR_CORRELATION = 0.5
NEIGHBOUR_PAIRS = 2_000_000

# Header bounds, checked before any voxel is read or any grid is allocated, so that no
# header can make memory or time grow without bound. Every real head scan is well inside.
MAX_GRID_VOXELS = 2**27  # one volume: 512**3, a 0.5 mm head over 256 mm
MAX_VOXELS = 2**29  # all volumes: 2 GiB once made float32 (39 frames of an HRRT PET, 256x256x207)
MAX_DATA_BYTES = 2**31  # the stored array dataobj would read
MIN_VOXEL_MM = 0.05  # finer than any in-vivo or ex-vivo head scan
MAX_VOXEL_MM = 20.0  # twice the thickest clinical slices (10 mm)
# How far the voxel axes are from perpendicular: arccos |det| of the affine's unit columns
# (for a shear in one plane, the angle between the sheared axis and where it would be).
# Gantry tilt, the only real cause, is at most 30 degrees.
MAX_AXIS_SKEW_DEGREES = 45.0
MAX_FIELD_OF_VIEW_MM = 1000.0  # along any voxel axis; no head scanner sees a metre
# Later stages resample the whole field of view (registration, skull strip) at 2 mm or coarser:
# that grid, field of view / RESAMPLED_MM per axis, is bounded too (about 134 litres; a head is 5).
RESAMPLED_MM = 2.0
MAX_RESAMPLED_VOXELS = 2**24
# What nibabel raises for a corrupt, truncated or inconsistent file
READ_ERRORS = (
    OSError,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    ValueError,
    np.linalg.LinAlgError,
    nib.spatialimages.HeaderDataError,
)

HU_AIR = -1000.0
HU_SOFT_TISSUE = 40.0
HU_OFFSET = 1024.0
CT_HISTOGRAM_BINS = 300
CT_TISSUE_ABOVE_AIR = 0.3
CT_GAP_TOLERANCE = 0.15
CT_AIR_TOLERANCE_HU = 150.0
CT_CLAMP_SHARE = 0.001  # a value held by this share of the voxels is a clamp (padding, a window's floor or ceiling)
CT_PADDING_GAP = 0.5  # padding lies apart from air: the density just above it under half the air peak's
CT_TISSUE_TROUGH = 0.3  # air and soft tissue are two modes: the density between them drops under this share
CT_LEVELS = 4096  # grid for the density of stored levels: finer than any stored CT scale
CT_TISSUE_ABOVE_CLAMPED_AIR = 0.1  # only the clamp's noise tail lies lower (soft tissue can sit near a high floor)


@dataclass(frozen=True)
class Scan:
    """A loaded scan: the untouched image plus a 3D float volume to register.

    Attributes
    ----------
    path : Path
        Source file.
    image : nibabel.Nifti1Image
        The image as stored (grid, dtype, scaling are kept for writing).
    reference : numpy.ndarray
        3D float32 volume on the image grid (for 4D, the mean over volumes,
        weighted by frame durations when they are known).
    summary : str
        How ``reference`` was made from the volumes.
    stored : numpy.ndarray, optional
        The voxel values as stored in the file (before scaling), read with ``reference``;
        see :meth:`stored_values`.
    """

    path: Path
    image: nib.Nifti1Image
    reference: np.ndarray
    summary: str = "3D"
    stored: np.ndarray | None = None

    def stored_values(self) -> np.ndarray:
        """Return the voxel values as stored: those read at load, so the file is decompressed once."""
        return stored_data(self.image) if self.stored is None else self.stored

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three spatial axes."""
        return tuple(float(z) for z in self.image.header.get_zooms()[:3])


def load_scan(path: Path, frame_durations: object = None) -> Scan:
    """Read a NIfTI scan fully and check that it can be a head image.

    The header is checked first (:func:`check_header`): nothing it claims is
    allocated before it is known to be bounded.

    Parameters
    ----------
    path : Path
        ``.nii`` or ``.nii.gz`` file (NIfTI-1 or NIfTI-2).
    frame_durations : list of float, optional
        Duration of each volume (PET ``FrameDuration``): the reference volume is
        then the time-weighted mean, which favours the long late frames that show
        the anatomy best. Ignored (plain mean) unless it matches the volumes.

    Returns
    -------
    Scan

    Raises
    ------
    ScanError
        Unreadable, truncated or corrupt file; a header that fails
        :func:`check_header`; non-finite values; no signal.
    """
    try:
        image = nib.load(path)
    except (*READ_ERRORS, nib.filebasedimages.ImageFileError) as exc:
        raise ScanError(f"{path}: cannot read image header ({_first_line(exc)})") from exc
    if not isinstance(image, nib.Nifti1Image):  # NIfTI-2 images are a subclass
        raise ScanError(f"{path}: not a NIfTI-1/2 image")
    check_header(image, path)
    try:
        stored = stored_data(image)
    except READ_ERRORS as exc:
        raise ScanError(f"{path}: cannot read image (corrupt or truncated file: {_first_line(exc)})") from exc
    proxy = image.dataobj  # scaled as nibabel scales what it reads
    data = apply_read_scaling(stored, np.asanyarray(proxy.slope), np.asanyarray(proxy.inter))
    shape = image.shape
    volumes = data.reshape((*shape[:3], -1)).astype(np.float32, copy=False)
    if not np.all(np.isfinite(volumes)):
        raise ScanError(f"{path}: image contains NaN or infinite values")
    if not np.any(volumes != volumes.flat[0]):
        raise ScanError(f"{path}: image is constant (no signal)")
    reference, summary = _summary_volume(volumes, frame_durations)
    smoothness = neighbour_correlation(reference)
    if smoothness < MIN_NEIGHBOUR_CORRELATION:
        raise ScanError(
            f"{path}: neighbouring voxels are unrelated (correlation {smoothness:.2f}); noise, not a head image"
        )
    # in the file's (Fortran) memory order, like the masks: no 0.8 s reordering of a 512x512x196 CT
    return Scan(Path(path), image, np.asarray(reference, dtype=np.float32, order="K"), summary, stored)


def _first_line(exc: BaseException) -> str:
    """Return the first line of an exception's message (library messages may span many)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def check_header(image: nib.Nifti1Image, path: Path | str) -> None:
    """Refuse, from the header alone, a grid that cannot be a head or would not fit in memory.

    Raises
    ------
    ScanError
        Fewer than 3 spatial dimensions (or fewer than ``MIN_SLICES`` slices) or more
        than 4; more voxels or bytes than ``MAX_*``; a non-finite or degenerate affine;
        voxel sizes outside ``MIN_VOXEL_MM``..``MAX_VOXEL_MM``; voxel axes skewed by more
        than ``MAX_AXIS_SKEW_DEGREES``; a field of view wider than ``MAX_FIELD_OF_VIEW_MM``
        or whose ``RESAMPLED_MM`` grid exceeds ``MAX_RESAMPLED_VOXELS``.
    """
    shape = tuple(int(n) for n in image.shape)
    if len(shape) < 3 or min(shape[:3]) < MIN_SLICES:
        raise ScanError(
            f"{path}: image with shape {shape} has fewer than {MIN_SLICES} slices along an axis; "
            "a 3D head volume is required"
        )
    if len(shape) > 4 and any(n > 1 for n in shape[4:]):
        raise ScanError(f"{path}: image with shape {shape} has more than 4 dimensions")
    voxels, grid = math.prod(shape), math.prod(shape[:3])
    stored = voxels * image.get_data_dtype().itemsize
    if grid > MAX_GRID_VOXELS or voxels > MAX_VOXELS or stored > MAX_DATA_BYTES:
        raise ScanError(
            f"{path}: header claims shape {shape} ({voxels:.3g} voxels, {stored / 2**30:.3g} GiB); "
            f"more than a head scan holds (at most {MAX_GRID_VOXELS:.3g} voxels per volume, "
            f"{MAX_VOXELS:.3g} in all, {MAX_DATA_BYTES / 2**30:.3g} GiB)"
        )
    check_grid(shape[:3], image.affine, tuple(float(z) for z in image.header.get_zooms()[:3]), path)


def check_grid(shape: tuple[int, ...], affine: np.ndarray | None, zooms: tuple[float, ...], path: Path | str) -> None:
    """Refuse a voxel-to-world affine that is not finite, degenerate, sheared, or too large a field of view.

    ``zooms`` are the header's voxel sizes (later stages scale by them), checked as the affine's are.

    >>> check_grid((120, 120, 90), np.diag([2.0, 2.0, 2.0, 1.0]), (2.0, 2.0, 2.0), "head.nii")
    >>> sheared = np.diag([2.0, 2.0, 2.0, 1.0]); sheared[0, 1] = 10.0
    >>> check_grid((120, 120, 90), sheared, (2.0, 2.0, 2.0), "head.nii")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bidsdeface.errors.ScanError: head.nii: sheared or degenerate affine: voxel axes 79 degrees from perpendicular ...
    """
    if affine is None or not np.all(np.isfinite(affine)):
        raise ScanError(f"{path}: the affine (voxel to world) holds non-finite values")
    sizes = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    for name, values in (("affine", sizes), ("header (pixdim)", zooms)):
        if not all(MIN_VOXEL_MM <= float(v) <= MAX_VOXEL_MM for v in values):
            shown = ", ".join(f"{float(v):.3g}" for v in values)
            raise ScanError(
                f"{path}: voxel size ({shown}) mm in the {name} is outside {MIN_VOXEL_MM:g}-{MAX_VOXEL_MM:g} mm"
            )
    unit_volume = abs(float(np.linalg.det(affine[:3, :3] / sizes)))
    skew = float(np.degrees(np.arccos(min(1.0, unit_volume))))
    if skew > MAX_AXIS_SKEW_DEGREES:
        raise ScanError(
            f"{path}: sheared or degenerate affine: voxel axes {skew:.0f} degrees from perpendicular "
            f"(at most {MAX_AXIS_SKEW_DEGREES:.0f})"
        )
    extents = [n * float(s) for n, s in zip(shape[:3], sizes, strict=True)]
    resampled = math.prod(math.ceil(e / RESAMPLED_MM) for e in extents)
    if max(extents) > MAX_FIELD_OF_VIEW_MM or resampled > MAX_RESAMPLED_VOXELS:
        raise ScanError(
            f"{path}: field of view {' x '.join(f'{e:.0f}' for e in extents)} mm is too large for a head scan "
            f"(at most {MAX_FIELD_OF_VIEW_MM:.0f} mm along an axis and {MAX_RESAMPLED_VOXELS:.3g} voxels "
            f"at {RESAMPLED_MM:g} mm)"
        )


def _summary_volume(volumes: np.ndarray, frame_durations: object) -> tuple[np.ndarray, str]:
    """Return one 3D volume standing for all of ``volumes`` (x, y, z, n) and how it was made."""
    count = volumes.shape[3]
    if count == 1:
        return volumes[..., 0], "3D"
    weights = np.asarray(frame_durations if isinstance(frame_durations, list) else [], dtype=object)
    usable = weights.size == count and all(isinstance(w, int | float) and w > 0 for w in weights)
    if not usable:
        return volumes.mean(axis=3), f"mean of {count} volumes"
    weights = weights.astype(np.float64) / float(np.sum(weights.astype(np.float64)))
    return np.tensordot(volumes, weights.astype(np.float32), axes=([3], [0])), f"time-weighted mean of {count} frames"


def neighbour_correlation(volume: np.ndarray) -> float:
    """Return the mean correlation of each voxel with its neighbour along each axis.

    Images of anatomy are spatially smooth (close to 1); noise is not (close to 0).

    >>> round(neighbour_correlation(np.add.outer(np.arange(8.0), np.arange(8.0))[..., None] * np.ones(8)), 2)
    1.0
    """
    values = []
    # every third line is plenty (sparser in big volumes: about NEIGHBOUR_PAIRS per axis)
    step = max(3, math.ceil(math.sqrt(volume.size / NEIGHBOUR_PAIRS)))
    for axis in range(3):
        sparse = [slice(None, None, step)] * 3
        sparse[axis] = slice(None, -1)
        first = volume[tuple(sparse)].ravel(order="K")  # memory order: the same pairs, half the time
        sparse[axis] = slice(1, None)
        second = volume[tuple(sparse)].ravel(order="K")
        if first.std() > 0 and second.std() > 0:
            values.append(float(np.corrcoef(first, second)[0, 1]))
    return float(np.mean(values)) if values else 0.0


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Return the Otsu threshold of ``values``.

    >>> float(otsu_threshold(np.r_[np.zeros(100), np.ones(100) * 10])) > 0
    True
    """
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(hist * centers) / np.maximum(weight_low, 1)
    total = (hist * centers).sum()
    mean_high = (total - np.cumsum(hist * centers)) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centers[int(np.argmax(between))])


def foreground_threshold(volume: np.ndarray) -> float:
    """Return the head/air threshold of an MRI volume: 30% of the way from background to Otsu's threshold."""
    values, low = _robust_range(volume)
    return float(low + 0.3 * (otsu_threshold(values) - low))


def brain_threshold(volume: np.ndarray) -> float:
    """Return the brain/background threshold of a PET volume: Otsu's, on the robust intensity range.

    Higher than :func:`foreground_threshold`: it leaves out faint scalp uptake and blur.
    """
    return otsu_threshold(_robust_range(volume)[0])


def _robust_range(volume: np.ndarray) -> tuple[np.ndarray, float]:
    """Return the values of ``volume`` clipped to their 0.5th-99.5th percentiles, and the lower bound.

    The values are taken in memory order (a view of a volume in nibabel's order, no reordering
    copy): these statistics do not depend on the order (a 1 mm head 0.5-0.9 -> 0.3 s).
    """
    values = volume.ravel(order="K")
    low, high = np.percentile(values, [0.5, 99.5])
    return np.clip(values, low, high), float(low)


def head_mask(volume: np.ndarray, zooms: tuple[float, float, float], threshold: float | None = None) -> np.ndarray:
    """Return a filled binary mask of the head (largest connected foreground).

    Parameters
    ----------
    volume : numpy.ndarray
        3D intensities.
    zooms : tuple of float
        Voxel size (mm), to scale the morphological operations.
    threshold : float, optional
        Foreground threshold; Otsu's on the robust intensity range by default.

    Returns
    -------
    numpy.ndarray of bool
    """
    step = [max(1, int(HEAD_MASK_RESOLUTION_MM // z)) for z in zooms]
    if max(step) > 1:
        coarse = head_mask(
            volume[tuple(slice(0, None, k) for k in step)],
            tuple(z * k for z, k in zip(zooms, step, strict=True)),
            threshold,
        )
        return block_expanded(coarse, step, volume.shape)
    foreground = volume > (foreground_threshold(volume) if threshold is None else threshold)
    radius = np.maximum(1, np.round(HEAD_CLOSING_MM / np.asarray(zooms)).astype(int))
    foreground = box_opened(foreground, (1, 1, 1))
    if not foreground.any():
        return foreground
    largest = largest_component(foreground)
    closed = box_closed(np.pad(largest, radius[:, None]), radius)
    closed = closed[tuple(slice(r, -r) for r in radius)]
    filled = ndimage.binary_fill_holes(closed)
    for axis in range(3):
        filled |= _fill_slices(closed, axis)
    return filled


def _fill_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    """Fill holes slice by slice along ``axis`` (heads are open at the neck): background joins only within a slice."""
    return ndimage.binary_fill_holes(mask, structure=np.expand_dims(ndimage.generate_binary_structure(2, 1), axis))


def check_head_plausible(volume: np.ndarray, mask: np.ndarray, zooms: tuple[float, float, float], path: Path) -> None:
    """Refuse images whose foreground cannot be a head: wrong size, or no anatomy inside.

    Raises
    ------
    ScanError
        The foreground bounding box is outside the plausible range of a head, or
        the foreground is nearly uniform (a phantom or a synthetic block).
    """
    if not mask.any():
        raise ScanError(f"{path}: no foreground found; not a head image")
    inside = volume[mask]
    variation = float(inside.std() / max(abs(float(inside.mean())), 1e-6))
    if variation < MIN_HEAD_VARIATION:
        raise ScanError(f"{path}: foreground is nearly uniform (variation {variation:.2f}); not a head image")
    idx = np.nonzero(mask)
    extents = [(int(i.max()) - int(i.min()) + 1) * z for i, z in zip(idx, zooms, strict=True)]
    if max(extents) < MIN_HEAD_EXTENT_MM or sorted(extents)[1] < MIN_HEAD_EXTENT_MM / 2:
        raise ScanError(f"{path}: foreground spans {[round(e) for e in extents]} mm; too small to be a head")
    if min(extents) > MAX_HEAD_EXTENT_MM:
        raise ScanError(f"{path}: foreground spans {[round(e) for e in extents]} mm; too large to be a head")


@dataclass(frozen=True)
class CtIntensities:
    """How a CT stores its intensities, and the two values defacing and registration need.

    Attributes
    ----------
    storage : str
        ``HU`` (Hounsfield units, possibly through the header scaling), ``HU+1024``
        (unsigned storage offset by 1024), ``rescaled`` (another linear scale, such
        as a template's) or ``windowed`` (a display window whose floor clamps the
        air to the lowest stored value: its scale in HU is unknown).
    air : float
        The air around the head, in the image's real units (after header scaling).
    soft_tissue : float
        The soft-tissue (brain) peak, in the same units.
    """

    storage: str
    air: float
    soft_tissue: float

    @property
    def head_threshold(self) -> float:
        """Foreground threshold halfway from air to soft tissue (about -480 HU): skin, not the pillow."""
        return self.air + 0.5 * (self.soft_tissue - self.air)

    def describe(self) -> str:
        """One line for the log: storage, air and soft-tissue values."""
        names = {
            "HU": "Hounsfield units",
            "HU+1024": "Hounsfield units + 1024",
            "rescaled": "rescaled intensities",
            "windowed": "windowed intensities, air clamped at the minimum",
        }
        return f"{names[self.storage]} (air {self.air:g}, soft tissue {self.soft_tissue:g})"


def _histogram_peak(values: np.ndarray, bins: int) -> float:
    """Return the median of the values in the fullest histogram bin."""
    counts, edges = np.histogram(values, bins=bins)
    peak = int(np.argmax(counts))
    return float(np.median(values[(values >= edges[peak]) & (values <= edges[peak + 1])]))


def _density(values: np.ndarray, low: float, high: float) -> float:
    """Return how many of ``values`` lie in (low, high], per unit of intensity."""
    return np.count_nonzero((values > low) & (values <= high)) / max(high - low, 1e-9)


def level_density(values: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the stored levels of ``values`` within (low, high) and the density at each, per unit.

    Values are put on a grid of CT_LEVELS steps first (float data). Each level counts for
    the span to its neighbours, so that a window spreading one HU over several levels (an
    8-bit brain window uses every third value or so) shows no false gaps.

    >>> level_density(np.array([0.0, 3.0, 3.0, 6.0, 6.0, 6.0]), -1.0, 7.0)
    (array([0., 3., 6.]), array([0.33333333, 0.66666667, 1.        ]))
    """
    step = max((high - low) / CT_LEVELS, 1e-12)
    inside = values[(values > low) & (values < high)]
    levels, counts = np.unique(np.round((inside - low) / step), return_counts=True)
    spans = np.gradient(levels) if levels.size > 1 else np.full(levels.size, float(CT_LEVELS))
    return low + levels * step, counts / (spans * step)


def _is_clamp(volume: np.ndarray, value: float) -> bool:
    """Whether ``value`` is held by a block of voxels (padding or a window's bound) rather than a few."""
    return np.count_nonzero(volume == value) > CT_CLAMP_SHARE * volume.size


def _above(values: np.ndarray, floor: float, ceiling: float | None) -> np.ndarray:
    """Values above ``floor``, and below ``ceiling`` when the ceiling is a clamp (bone at a window's top)."""
    return values[(values > floor) & (values < ceiling)] if ceiling is not None else values[values > floor]


def _padding_apart(values: np.ndarray, minimum: float, air: float, tissue: float) -> bool:
    """Whether the minimum is padding apart from the air: a gap below the air peak and soft tissue above it.

    The density just above the minimum must be low next to the air peak's (air cut by a
    window's floor fills it), and the density between air and soft tissue must drop well
    below the soft-tissue peak's (when the "air" peak is soft tissue, bone above it falls
    off without a second mode).
    """
    half, eighth = (air - minimum) / 2, (tissue - air) / 8
    if half <= 0 or eighth <= 0:
        return False
    gap = _density(values, minimum, minimum + half) / max(_density(values, air - half, air + half), 1e-9)
    _, between = level_density(values, air + eighth, tissue - eighth)  # the eighths next to the peaks left out
    trough = float(ndimage.uniform_filter1d(between, 3, mode="nearest").min()) if between.size else 0.0
    _, around = level_density(values, tissue - eighth, tissue + eighth)
    return gap < CT_PADDING_GAP and trough < CT_TISSUE_TROUGH * float(around.max(initial=0.0))


def ct_intensities(volume: np.ndarray, source: Path | str = "CT") -> CtIntensities:
    """Find air and soft tissue in a CT histogram and tell how the intensities are stored.

    A minimum held by many voxels is either padding (scanners and tilt correction pad
    outside the field of view with a value below air) or the air itself, clamped at a
    display window's floor. It is padding when it lies apart from the air: the density
    just above it is low next to the air peak above it, and a soft-tissue mode stands
    above that air peak. Then air is the most common value above the minimum; otherwise
    air is the minimum. Soft tissue is the most common value well above air, leaving out
    a maximum held by many voxels (bone clamped at a window's ceiling). Their gap tells
    the storage: about 1040 in Hounsfield units (air at -1000 when plain, about 24 when
    offset by +1024), anything else is a rescaled CT, or a windowed one when air is clamped.

    Parameters
    ----------
    volume : numpy.ndarray
        CT intensities after the header scaling.
    source : Path or str
        Named in the error message.

    Returns
    -------
    CtIntensities

    Raises
    ------
    ScanError
        No soft tissue above the air: not a CT head.

    >>> volume = np.full((20, 20, 20), -1000.0); volume[0] = -3024; volume[5:15, 5:15, 5:15] = 40
    >>> volume[5:15, 5:15, 15:17] = 1200  # bone
    >>> ct_intensities(volume)
    CtIntensities(storage='HU', air=-1000.0, soft_tissue=40.0)
    >>> ct_intensities(volume + 1024).storage, ct_intensities(volume / 10 + 100).storage
    ('HU+1024', 'rescaled')

    A brain window (0 to 80 HU stored as 0 to 255) clamps padding and air to 0, bone to 255:

    >>> ct_intensities(np.round(np.clip(volume, 0, 80) * 255 / 80))
    CtIntensities(storage='windowed', air=0.0, soft_tissue=128.0)
    """
    volume = volume.ravel(order="K")  # the statistics ignore voxel order: no copy of a Fortran-ordered volume
    minimum = float(volume.min())
    values = volume[volume > minimum]
    values = values if values.size else volume
    ceiling = _clamped_maximum(volume, values)
    low, top = (float(v) for v in np.percentile(values, [0.0, 99.9]))
    air = float(np.round(_histogram_peak(_above(values, -np.inf, ceiling), CT_HISTOGRAM_BINS), 3))
    tissue_values = _above(values, air + CT_TISSUE_ABOVE_AIR * (top - air), ceiling)
    tissue = _histogram_peak(tissue_values, CT_HISTOGRAM_BINS) if tissue_values.size else air
    storage = "rescaled"
    if _is_clamp(volume, minimum) and not _padding_apart(values, minimum, air, tissue):
        storage, air = "windowed", minimum
        tissue_values = _above(values, air + CT_TISSUE_ABOVE_CLAMPED_AIR * (top - air), ceiling)
    if tissue_values.size == 0 or top <= low:
        raise ScanError(f"{source}: no soft tissue above the air in the CT histogram; not a CT head image")
    soft_tissue = float(np.round(_histogram_peak(tissue_values, CT_HISTOGRAM_BINS), 3))
    return CtIntensities(_hounsfield_storage(storage, air, soft_tissue), air, soft_tissue)


def _clamped_maximum(volume: np.ndarray, values: np.ndarray) -> float | None:
    """Return the maximum of ``values`` when many voxels of ``volume`` hold it (bone clamped at a window's top).

    None when the maximum is held by a few voxels only, or all values are equal.

    >>> volume = np.zeros((10, 10, 10)); volume[:, :, 5:] = 40; volume[:, :, 8:] = 255
    >>> _clamped_maximum(volume, volume.ravel())
    255.0
    >>> volume[0, 0, 0] = 1200  # one voxel
    >>> _clamped_maximum(volume, volume.ravel()) is None
    True
    """
    if values.min() < values.max() and _is_clamp(volume, float(values.max())):
        return float(values.max())
    return None


def _hounsfield_storage(storage: str, air: float, soft_tissue: float) -> str:
    """Return ``HU`` or ``HU+1024`` when a rescaled CT's air and soft tissue are where Hounsfield units put them.

    Any other ``storage``, or a gap or air level that fits neither, gives ``storage`` back.

    >>> _hounsfield_storage("rescaled", -1000.0, 40.0), _hounsfield_storage("rescaled", 24.0, 1064.0)
    ('HU', 'HU+1024')
    >>> _hounsfield_storage("rescaled", 0.0, 100.0), _hounsfield_storage("windowed", -1000.0, 40.0)
    ('rescaled', 'windowed')
    """
    plain_gap = HU_SOFT_TISSUE - HU_AIR
    if storage == "rescaled" and abs((soft_tissue - air) - plain_gap) <= CT_GAP_TOLERANCE * plain_gap:
        if abs(air - HU_AIR) <= CT_AIR_TOLERANCE_HU:
            return "HU"
        if abs(air - (HU_AIR + HU_OFFSET)) <= CT_AIR_TOLERANCE_HU:
            return "HU+1024"
    return storage
