"""Remove the face (and optionally the ears) from a scan without touching the brain."""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from .config import Config

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
BLUR_NOISE_FRACTION = 0.15
# The blurred region's surface: the head's outline smoothed wider than a nose (about 35
# mm at its base), then sunk deeper than a nose is high. Measured on the shared heads: a
# smooth surface that is not sunk, or sunk by 12 mm, still reads as a face to the HOG
# detector on the Trio head's turned views (score 0.3-1.2); sunk by 20 mm, at most 0.16.
SURFACE_FWHM_MM = 30.0
SURFACE_RECESS_MM = 20.0
NOISE_GRAIN_FWHM_MM = 3.0
# Pinnae: head tissue thinner than twice this, within the window of the ear region.
EAR_THICKNESS_MM = 6.0
EAR_WINDOW_MM = 15.0
EAR_RIM_MM = 2.0


@dataclass(frozen=True)
class ScanMasks:
    """Binary masks on the scan's own voxel grid (3D).

    Attributes
    ----------
    face : numpy.ndarray of bool
        Warped template face region.
    ears : numpy.ndarray of bool
        Warped template ear region and the pinnae found on the scan near it (:func:`ear_tissue`).
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


def ear_tissue(
    head: np.ndarray, ears: np.ndarray, protect: np.ndarray, zooms: tuple[float, float, float]
) -> np.ndarray:
    """Return the pinnae found on the scan near the warped ear region.

    The template's ear region is placed by a registration and drawn for a whole head,
    so it can miss part of a pinna, above all when the field of view cuts through the
    ears. A pinna is the :func:`thin_tissue` within EAR_WINDOW_MM of the ear region,
    grown by EAR_RIM_MM (its partial-volume edge), never in ``protect``.
    """
    window = dilate_mm(ears, zooms, EAR_WINDOW_MM) & ~protect
    return dilate_mm(thin_tissue(head, window, zooms), zooms, EAR_RIM_MM) & window


def thin_tissue(head: np.ndarray, region: np.ndarray, zooms: tuple[float, float, float]) -> np.ndarray:
    """Return the voxels of ``head`` in ``region`` that an opening with a ball of EAR_THICKNESS_MM removes.

    Skull and scalp are thicker than a pinna. The field of view's edge counts as more
    head, so a pinna cut by it stays thin.
    """
    thin = np.zeros_like(head)
    if not region.any():
        return thin
    box = _padded_box(region, [int(np.ceil(2 * EAR_THICKNESS_MM / z)) + 1 for z in zooms])
    inside = head[box]
    core = ndimage.distance_transform_edt(inside, sampling=zooms) > EAR_THICKNESS_MM
    opened = ndimage.distance_transform_edt(~core, sampling=zooms) <= EAR_THICKNESS_MM
    thin[box] = inside & ~opened & region[box]
    return thin


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


def _gaussian_mm(volume: np.ndarray, fwhm_mm: float, zooms: tuple[float, float, float]) -> np.ndarray:
    """Smooth ``volume`` with a Gaussian of ``fwhm_mm`` (anisotropic voxels allowed)."""
    return ndimage.gaussian_filter(volume, [fwhm_mm * FWHM_TO_SIGMA / z for z in zooms], mode="nearest")


def _blurred_replacement(
    volume: np.ndarray,
    region: np.ndarray,
    head: np.ndarray,
    zooms: tuple[float, float, float],
    config: Config,
    background: float,
) -> np.ndarray:
    """Return values for ``region`` that keep no trace of the face's shape (real units).

    Smoothing intensities leaves the facial surface, and a face detector reads a face
    from the surface alone. So the head's outline is first smoothed until nose, lips
    and eye sockets melt into one surface (SURFACE_FWHM_MM), then sunk by
    SURFACE_RECESS_MM: the region keeps tissue only deeper than that, at the head's
    local mean intensity (``config.blur_fwhm_mm``) with smoothed noise; the rest is
    background.
    """
    box = _padded_box(region, [int(np.ceil(SURFACE_FWHM_MM / z)) for z in zooms])
    patch, inside_head = volume[box].astype(np.float32), head[box].astype(np.float32)
    smooth_outline = _gaussian_mm(inside_head, SURFACE_FWHM_MM, zooms) > 0.5
    sunk_outline = ndimage.distance_transform_edt(smooth_outline, sampling=zooms) > SURFACE_RECESS_MM
    weight = _gaussian_mm(inside_head, config.blur_fwhm_mm, zooms)
    level = _gaussian_mm(patch * inside_head, config.blur_fwhm_mm, zooms) / np.maximum(weight, 1e-3)
    tissue = float(np.median(patch[inside_head > 0])) if inside_head.any() else background
    level = np.where(weight > 1e-3, level, tissue)
    rng = np.random.default_rng(config.random_seed)
    grain = _gaussian_mm(rng.standard_normal(patch.shape).astype(np.float32), NOISE_GRAIN_FWHM_MM, zooms)
    grain /= max(float(grain.std()), 1e-6)
    tissue_values = np.maximum(background + (level - background) * (1.0 + BLUR_NOISE_FRACTION * grain), background)
    return np.where(sunk_outline, tissue_values, background)[region[box]]


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
                replaced = _blurred_replacement(real, removed, masks.head, zooms, config, background)
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
