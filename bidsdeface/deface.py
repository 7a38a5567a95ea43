"""Remove the face (and optionally the ears) from a scan without touching the brain."""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from .config import Config
from .images import block_expanded

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
BLUR_NOISE_FRACTION = 0.08
BLUR_BLOCK_MM = 8.0


@dataclass(frozen=True)
class ScanMasks:
    """Binary masks on the scan's own voxel grid (3D).

    Attributes
    ----------
    face, ears : numpy.ndarray of bool
        Warped template face and ear regions.
    brain : numpy.ndarray of bool
        Warped template brain.
    protect : numpy.ndarray of bool
        Brain dilated by the safety margin: never modified.
    head : numpy.ndarray of bool
        The scan's own head (foreground) mask.
    """

    face: np.ndarray
    ears: np.ndarray
    brain: np.ndarray
    protect: np.ndarray
    head: np.ndarray


@dataclass(frozen=True)
class DefaceResult:
    """The defaced image and what was done to it.

    Attributes
    ----------
    image : nibabel.Nifti1Image
        Same grid, affine, qform/sform codes, dtype and scaling as the input.
    removed : numpy.ndarray of bool
        Voxels replaced (3D; every volume of a 4D image gets the same mask).
    """

    image: nib.Nifti1Image
    removed: np.ndarray


def _padded_box(mask: np.ndarray, pad: list[int]) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``pad`` voxels per axis, clipped to the array."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return tuple(slice(max(0, s.start - p), min(n, s.stop + p)) for s, p, n in zip(box, pad, mask.shape, strict=True))


def dilate_mm(mask: np.ndarray, zooms: tuple[float, float, float], margin_mm: float) -> np.ndarray:
    """Dilate ``mask`` by ``margin_mm`` in physical distance (anisotropic voxels allowed)."""
    if margin_mm <= 0 or not mask.any():
        return mask.copy()
    box = _padded_box(mask, [int(np.ceil(margin_mm / z)) + 1 for z in zooms])
    dilated = np.zeros_like(mask, dtype=bool)
    dilated[box] = ndimage.distance_transform_edt(~mask[box], sampling=zooms) <= margin_mm
    return dilated


def removal_mask(masks: ScanMasks, remove_ears: bool) -> np.ndarray:
    """Return the voxels to replace: face (+ ears) minus the protected brain."""
    target = masks.face | masks.ears if remove_ears else masks.face
    return target & ~masks.protect


def data_scaling(image: nib.Nifti1Image) -> tuple[float, float]:
    """Return the (slope, intercept) that map stored values to real values.

    nibabel moves a loaded file's scaling from the header to the data proxy.
    """
    slope = float(getattr(image.dataobj, "slope", 1.0))
    inter = float(getattr(image.dataobj, "inter", 0.0))
    return (1.0 if slope == 0 or np.isnan(slope) else slope), (0.0 if np.isnan(inter) else inter)


def stored_data(image: nib.Nifti1Image) -> np.ndarray:
    """Return the voxel values as stored on disk (before scaling)."""
    proxy = image.dataobj
    return np.asanyarray(proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else proxy)


def real_values(stored: np.ndarray, image: nib.Nifti1Image) -> np.ndarray:
    """Return ``stored`` values (as on disk) in real units, with ``image``'s scaling (float32)."""
    slope, inter = data_scaling(image)
    return stored.astype(np.float32) * np.float32(slope) + np.float32(inter)


def stored_value(image: nib.Nifti1Image, real_value: float) -> float:
    """Return the on-disk value that ``image``'s scaling maps to ``real_value``."""
    slope, inter = data_scaling(image)
    raw = (real_value - inter) / slope
    dtype = image.get_data_dtype()
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(np.clip(np.round(raw), info.min, info.max))
    return raw


def pixelated(volume: np.ndarray, block: list[int]) -> np.ndarray:
    """Return ``volume`` made of blocks of ``block`` voxels, each holding one local mean (same shape).

    >>> pixelated(np.arange(4.0)[:, None, None] * np.ones((4, 1, 1)), [2, 1, 1]).ravel().tolist()
    [0.0, 0.0, 1.5, 1.5]
    """
    coarse = ndimage.uniform_filter(volume, size=block, mode="nearest")[tuple(slice(0, None, b) for b in block)]
    return block_expanded(coarse, block, volume.shape)


def _blurred_replacement(
    volume: np.ndarray,
    region: np.ndarray,
    zooms: tuple[float, float, float],
    config: Config,
    noise_scale: float,
    background: float,
) -> np.ndarray:
    """Return smoothed, pixelated and noised values for ``region`` (real units, never below ``background``)."""
    box = _padded_box(region, [int(np.ceil(2 * config.blur_fwhm_mm / z)) for z in zooms])
    patch = volume[box].astype(np.float32)
    block = [max(1, round(BLUR_BLOCK_MM / z)) for z in zooms]
    sigma = [config.blur_fwhm_mm * FWHM_TO_SIGMA / z for z in zooms]
    smooth = ndimage.gaussian_filter(pixelated(patch, block), sigma=sigma, mode="nearest")
    rng = np.random.default_rng(config.random_seed)
    smooth += rng.normal(0.0, noise_scale, size=smooth.shape).astype(np.float32)
    out = np.zeros(volume.shape, dtype=np.float32)
    out[box] = np.maximum(smooth, background)
    return out[region]


def deface_image(
    image: nib.Nifti1Image,
    masks: ScanMasks,
    config: Config,
    background: float = 0.0,
) -> DefaceResult:
    """Replace facial voxels of every volume and return the new image.

    Parameters
    ----------
    image : nibabel.Nifti1Image
        3D or 4D scan, as stored.
    masks : ScanMasks
        Masks on the image grid.
    config : Config
        ``method``, ``remove_ears``, blur settings.
    background : float
        Value (real units) of the air around the head: what ``zero`` writes, and the
        floor of ``blur``'s values (0 for MRI and PET, the scan's air for CT).

    Returns
    -------
    DefaceResult
    """
    header = image.header
    stored = stored_data(image).copy()
    removed = removal_mask(masks, config.remove_ears)
    volumes = stored.reshape((*stored.shape[:3], -1))
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    slope, inter = data_scaling(image)
    if removed.any():
        for index in range(volumes.shape[3]):
            volume = volumes[..., index]
            if config.method == "zero":
                volume[removed] = stored_value(image, background)
            else:
                real = real_values(volume, image)
                noise_scale = (
                    BLUR_NOISE_FRACTION * (float(np.percentile(real[masks.head], 99)) - background)
                    if masks.head.any()
                    else 0.0
                )
                replaced = _blurred_replacement(real, removed, zooms, config, noise_scale, background)
                replacement = (replaced - inter) / slope
                if np.issubdtype(volume.dtype, np.integer):
                    info = np.iinfo(volume.dtype)
                    replacement = np.clip(np.round(replacement), info.min, info.max)
                volume[removed] = replacement.astype(volume.dtype)
    defaced = stored.reshape(image.shape)
    return DefaceResult(image=rebuild_like(image, defaced), removed=removed)


def rebuild_like(image: nib.Nifti1Image, stored: np.ndarray) -> nib.Nifti1Image:
    """Return a new image holding ``stored`` (on-disk values) with ``image``'s header.

    Grid, affine, qform/sform codes, dtype and scaling are kept exactly; free-text
    header fields are the caller's business (see :mod:`bidsdeface.scrub`).
    """
    header = image.header.copy()
    new = type(image)(stored, None, header=header)  # a NIfTI-2 input stays NIfTI-2
    new.header.set_slope_inter(*data_scaling(image))
    return new
