"""Load a scan and refuse, with one clear line, what cannot be a head image."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .errors import ScanError

MIN_HEAD_EXTENT_MM = 60.0
MAX_HEAD_EXTENT_MM = 450.0
MIN_SLICES = 4
HEAD_CLOSING_MM = 6.0
HEAD_MASK_RESOLUTION_MM = 2.0
MIN_HEAD_VARIATION = 0.10
MIN_NEIGHBOUR_CORRELATION = 0.5

AIR_BIN_HU = 10.0
CT_HEAD_ABOVE_AIR_HU = 500.0


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
        3D float32 volume on the image grid (the mean over volumes for 4D).
    """

    path: Path
    image: nib.Nifti1Image
    reference: np.ndarray

    @property
    def zooms(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three spatial axes."""
        return tuple(float(z) for z in self.image.header.get_zooms()[:3])


def load_scan(path: Path) -> Scan:
    """Read a NIfTI scan fully and check that it can be a head image.

    Parameters
    ----------
    path : Path
        ``.nii`` or ``.nii.gz`` file.

    Returns
    -------
    Scan

    Raises
    ------
    ScanError
        Unreadable, truncated or corrupt file; fewer than 3 spatial dimensions
        or more than 4; non-finite values; no signal.
    """
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise ScanError(f"{path}: cannot read image (corrupt or truncated file: {exc})") from exc
    if not isinstance(image, nib.Nifti1Image):
        raise ScanError(f"{path}: not a NIfTI-1/2 image")
    shape = image.shape
    if len(shape) < 3 or min(shape[:3]) < MIN_SLICES:
        raise ScanError(
            f"{path}: image with shape {shape} has fewer than {MIN_SLICES} slices along an axis; "
            "a 3D head volume is required"
        )
    if len(shape) > 4 and any(n > 1 for n in shape[4:]):
        raise ScanError(f"{path}: image with shape {shape} has more than 4 dimensions")
    volumes = data.reshape((*shape[:3], -1)).astype(np.float32, copy=False)
    if not np.all(np.isfinite(volumes)):
        raise ScanError(f"{path}: image contains NaN or infinite values")
    if not np.any(volumes != volumes.flat[0]):
        raise ScanError(f"{path}: image is constant (no signal)")
    zooms = image.header.get_zooms()[:3]
    if min(zooms) <= 0:
        raise ScanError(f"{path}: invalid voxel size {zooms}")
    reference = volumes.mean(axis=3) if volumes.shape[3] > 1 else volumes[..., 0]
    smoothness = neighbour_correlation(reference)
    if smoothness < MIN_NEIGHBOUR_CORRELATION:
        raise ScanError(
            f"{path}: neighbouring voxels are unrelated (correlation {smoothness:.2f}); noise, not a head image"
        )
    return Scan(path=Path(path), image=image, reference=np.ascontiguousarray(reference, dtype=np.float32))


def neighbour_correlation(volume: np.ndarray) -> float:
    """Return the mean correlation of each voxel with its neighbour along each axis.

    Images of anatomy are spatially smooth (close to 1); noise is not (close to 0).

    >>> round(neighbour_correlation(np.add.outer(np.arange(8.0), np.arange(8.0))[..., None] * np.ones(8)), 2)
    1.0
    """
    values = []
    for axis in range(3):
        sparse = [slice(None, None, 3)] * 3  # every third line is plenty, and fast
        sparse[axis] = slice(None, -1)
        first = volume[tuple(sparse)].ravel()
        sparse[axis] = slice(1, None)
        second = volume[tuple(sparse)].ravel()
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
        nearest = [
            np.minimum(np.arange(n) // k, c - 1) for n, k, c in zip(volume.shape, step, coarse.shape, strict=True)
        ]
        return coarse[np.ix_(*nearest)]
    if threshold is None:
        low, high = np.percentile(volume, [0.5, 99.5])
        clipped = np.clip(volume, low, high)
        threshold = low + 0.3 * (otsu_threshold(clipped) - low)
    foreground = volume > threshold
    radius = np.maximum(1, np.round(HEAD_CLOSING_MM / np.asarray(zooms)).astype(int))
    structure = np.ones(tuple(2 * r + 1 for r in radius), dtype=bool)
    foreground = ndimage.binary_opening(foreground, structure=np.ones((3, 3, 3), bool))
    labels, count = ndimage.label(foreground)
    if count == 0:
        return foreground
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    largest = labels == int(np.argmax(sizes))
    closed = ndimage.binary_closing(np.pad(largest, radius[:, None]), structure=structure)
    closed = closed[tuple(slice(r, -r) for r in radius)]
    filled = ndimage.binary_fill_holes(closed)
    for axis in range(3):
        filled |= _fill_slices(closed, axis)
    return filled


def _fill_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    """Fill holes slice by slice along ``axis`` (heads are open at the neck)."""
    moved = np.moveaxis(mask, axis, 0)
    out = np.stack([ndimage.binary_fill_holes(s) for s in moved])
    return np.moveaxis(out, 0, axis)


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


def air_value(volume: np.ndarray) -> float:
    """Return the value of air around a CT head (about -1000 HU, whatever the storage offset).

    The most common value, after leaving out the volume's minimum: scanners and
    tilt correction pad outside the field of view with a value below air.

    >>> volume = np.full((6, 6, 6), -1000.0); volume[0] = -3024; volume[2:, 2:, 2:] = 40
    >>> air_value(volume)
    -1000.0
    """
    values = volume[volume > volume.min()]
    values = values if values.size else volume.ravel()
    low, high = float(values.min()), float(values.max())
    counts, edges = np.histogram(values, bins=max(1, int(np.ceil((high - low) / AIR_BIN_HU))), range=(low, high))
    peak = int(np.argmax(counts))
    in_peak = values[(values >= edges[peak]) & (values <= edges[peak + 1])]
    return float(np.round(np.median(in_peak)))


def ct_head_threshold(volume: np.ndarray) -> float:
    """Return the CT foreground threshold: air plus 500 HU (between air and fat)."""
    return air_value(volume) + CT_HEAD_ABOVE_AIR_HU
