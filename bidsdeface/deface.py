"""Remove the face (and optionally the ears) from a scan without touching the brain."""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from .config import Config
from .masks import ScanMasks, removal_mask
from .volumes import (
    bounding_box,
    data_scaling,
    gaussian_mm,
    real_values,
    rebuild_like,
    stored_data,
    stored_value,
    voxels_for_mm,
)

BLUR_NOISE_FRACTION = 0.15
# The blurred region's surface: the head's outline smoothed wider than a nose (about 35
# mm at its base), then sunk deeper than a nose is high. Measured on the shared heads: a
# smooth surface that is not sunk, or sunk by 12 mm, still reads as a face to the HOG
# detector on the Trio head's turned views (score 0.3-1.2); sunk by 20 mm, at most 0.16.
SURFACE_FWHM_MM = 30.0
SURFACE_RECESS_MM = 20.0
NOISE_GRAIN_FWHM_MM = 3.0


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
    box = bounding_box(region, voxels_for_mm(SURFACE_FWHM_MM, zooms, extra=0))
    patch, inside_head = volume[box].astype(np.float32), head[box].astype(np.float32)
    smooth_outline = gaussian_mm(inside_head, SURFACE_FWHM_MM, zooms) > 0.5
    sunk_outline = ndimage.distance_transform_edt(smooth_outline, sampling=zooms) > SURFACE_RECESS_MM
    weight = gaussian_mm(inside_head, config.blur_fwhm_mm, zooms)
    level = gaussian_mm(patch * inside_head, config.blur_fwhm_mm, zooms) / np.maximum(weight, 1e-3)
    tissue = float(np.median(patch[inside_head > 0])) if inside_head.any() else background
    level = np.where(weight > 1e-3, level, tissue)
    rng = np.random.default_rng(config.random_seed)
    grain = gaussian_mm(rng.standard_normal(patch.shape).astype(np.float32), NOISE_GRAIN_FWHM_MM, zooms)
    grain /= max(float(grain.std()), 1e-6)
    tissue_values = np.maximum(background + (level - background) * (1.0 + BLUR_NOISE_FRACTION * grain), background)
    return np.where(sunk_outline, tissue_values, background)[region[box]]


def deface_image(
    image: nib.Nifti1Image,
    masks: ScanMasks,
    config: Config,
    background: float = 0.0,
    stored: np.ndarray | None = None,
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
    stored : numpy.ndarray, optional
        ``image``'s voxel values as stored, when already read (:meth:`bidsdeface.images.Scan.stored_values`);
        read from ``image`` otherwise.

    Returns
    -------
    DefaceResult
    """
    header = image.header
    stored = (stored_data(image) if stored is None else stored).copy()
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
