"""Remove the face (and optionally the ears) from a scan without touching the brain."""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from .config import Config

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
    metrics : dict
        ``face_voxels``, ``face_voxels_removed``, ``face_removed_fraction``,
        ``ear_voxels_removed``, ``head_voxels_removed``, ``brain_voxels_touched``
        (measured by comparing output and input inside the protected region),
        ``background_value``.
    """

    image: nib.Nifti1Image
    removed: np.ndarray
    metrics: dict[str, float | int]


def dilate_mm(mask: np.ndarray, zooms: tuple[float, float, float], margin_mm: float) -> np.ndarray:
    """Dilate ``mask`` by ``margin_mm`` in physical distance (anisotropic voxels allowed)."""
    if margin_mm <= 0 or not mask.any():
        return mask.copy()
    distance = ndimage.distance_transform_edt(~mask, sampling=zooms)
    return distance <= margin_mm


def removal_mask(masks: ScanMasks, remove_ears: bool) -> np.ndarray:
    """Return the voxels to replace: face (+ ears) minus the protected brain."""
    target = masks.face | masks.ears if remove_ears else masks.face
    return target & ~masks.protect


def stored_value(header: nib.Nifti1Header, real_value: float) -> float:
    """Return the on-disk value that ``header``'s scaling maps to ``real_value``."""
    slope, inter = header.get_slope_inter()
    slope = 1.0 if slope is None else float(slope)
    inter = 0.0 if inter is None else float(inter)
    raw = (real_value - inter) / slope
    dtype = header.get_data_dtype()
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return float(np.clip(np.round(raw), info.min, info.max))
    return raw


def _blurred_replacement(
    volume: np.ndarray, region: np.ndarray, zooms: tuple[float, float, float], config: Config, noise_scale: float
) -> np.ndarray:
    """Return smoothed, pixelated and noised values for ``region`` (real units)."""
    box = ndimage.find_objects(region.astype(np.uint8))[0]
    pad = [int(np.ceil(2 * config.blur_fwhm_mm / z)) for z in zooms]
    box = tuple(
        slice(max(0, s.start - p), min(n, s.stop + p)) for s, p, n in zip(box, pad, volume.shape, strict=True)
    )
    patch = volume[box].astype(np.float32)
    block = [max(1, int(round(BLUR_BLOCK_MM / z))) for z in zooms]
    coarse = ndimage.uniform_filter(patch, size=block, mode="nearest")[tuple(slice(b // 2, None, b) for b in block)]
    pixelated = np.repeat(np.repeat(np.repeat(coarse, block[0], 0), block[1], 1), block[2], 2)
    pixelated = pixelated[: patch.shape[0], : patch.shape[1], : patch.shape[2]]
    sigma = [config.blur_fwhm_mm * FWHM_TO_SIGMA / z for z in zooms]
    smooth = ndimage.gaussian_filter(pixelated, sigma=sigma, mode="nearest")
    rng = np.random.default_rng(config.random_seed)
    smooth += rng.normal(0.0, noise_scale, size=smooth.shape).astype(np.float32)
    out = np.zeros(volume.shape, dtype=np.float32)
    out[box] = np.maximum(smooth, 0.0)
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
        Value (real units) for ``zero``: 0 for MRI.

    Returns
    -------
    DefaceResult
    """
    header = image.header
    stored = np.asanyarray(image.dataobj.get_unscaled()).copy()
    removed = removal_mask(masks, config.remove_ears)
    volumes = stored.reshape(stored.shape[:3] + (-1,))
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    slope, inter = header.get_slope_inter()
    slope = 1.0 if slope is None else float(slope)
    inter = 0.0 if inter is None else float(inter)
    if removed.any():
        for index in range(volumes.shape[3]):
            volume = volumes[..., index]
            if config.method == "zero":
                volume[removed] = stored_value(header, background)
            else:
                real = volume.astype(np.float32) * slope + inter
                noise_scale = BLUR_NOISE_FRACTION * float(np.percentile(real[masks.head], 99)) if masks.head.any() else 0.0
                replacement = (_blurred_replacement(real, removed, zooms, config, noise_scale) - inter) / slope
                if np.issubdtype(volume.dtype, np.integer):
                    info = np.iinfo(volume.dtype)
                    replacement = np.clip(np.round(replacement), info.min, info.max)
                volume[removed] = replacement.astype(volume.dtype)
    defaced = stored.reshape(image.shape)
    original = np.asanyarray(image.dataobj.get_unscaled()).reshape(volumes.shape)
    changed_protected = int(np.count_nonzero((volumes != original)[masks.protect]))
    face_total = int(masks.face.sum())
    metrics: dict[str, float | int] = {
        "face_voxels": face_total,
        "face_voxels_removed": int((removed & masks.face).sum()),
        "face_removed_fraction": float((removed & masks.face).sum() / face_total) if face_total else 0.0,
        "ear_voxels_removed": int((removed & masks.ears).sum()) if config.remove_ears else 0,
        "head_voxels_removed": int((removed & masks.head).sum()),
        "brain_voxels_touched": changed_protected,
        "background_value": float(background),
    }
    return DefaceResult(image=rebuild_like(image, defaced), removed=removed, metrics=metrics)


def rebuild_like(image: nib.Nifti1Image, stored: np.ndarray) -> nib.Nifti1Image:
    """Return a new image holding ``stored`` (on-disk values) with ``image``'s header.

    Grid, affine, qform/sform codes, dtype and scaling are kept exactly; free-text
    header fields are the caller's business (see :mod:`bidsdeface.scrub`).
    """
    header = image.header.copy()
    new = nib.Nifti1Image(stored, None, header=header)
    raw_slope, raw_inter = image.header["scl_slope"], image.header["scl_inter"]
    new.header["scl_slope"] = raw_slope
    new.header["scl_inter"] = raw_inter
    if np.all(np.isnan([raw_slope, raw_inter])) or raw_slope == 0:
        new.header.set_slope_inter(1.0, 0.0)
    return new
