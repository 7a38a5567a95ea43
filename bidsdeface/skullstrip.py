"""Optional brain extraction: a brain mask, and a brain-only image, for each MRI or CT scan.

Methods:
``template`` (default, no extra dependency)
    The template's brain is carried onto the scan by the affine registration, then by a
    short affine and deformable (SyN) registration focused on the brain, with mutual
    information, which works for any MRI contrast. Near the warped boundary each voxel is
    then decided on the scan's own intensities: the intensity histograms just inside and
    just outside the boundary give a likelihood ratio, and the distance to the boundary a
    prior.
``deepbet``
    The deepbet network (optional extra ``bidsdeface[deepbet]``; its weights are inside
    the package, it runs on the CPU), for MRI.
CT (either method)
    A brain window: voxels of cerebrospinal fluid to blood density (-15 to 100 HU) near
    the template brain, cut from the scalp and orbits by a morphological opening. The
    skull encloses them, so intensities alone find the boundary.

Every mask is made one connected component without holes. PET is not skull-stripped:
its uptake image shows little beyond the brain, and tracer uptake outside it is data.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import ants
import nibabel as nib
import numpy as np
from scipy import ndimage

from . import __version__
from .config import Config
from .errors import BidsDefaceError
from .images import HU_AIR, HU_SOFT_TISSUE, CtIntensities, Scan, level_density
from .masks import BRAIN_GRID_MM
from .register import Registration, warp_template_masks
from .templates import Template
from .volumes import (
    ants_grid_affine,
    block_expanded,
    block_factors,
    block_mean,
    bounding_box,
    dice,
    dilate_mm,
    opened_mm,
    rebuild_like,
    resampled_to_spacing,
    signed_distance_mm,
    single_solid_component,
    stored_value,
    to_ants,
    voxels_for_mm,
)

log = logging.getLogger(__name__)

DEFORMABLE_RESOLUTION_MM = 2.0
DEFORMABLE_REGION_MM = 40.0
BRAIN_AFFINE_ITERATIONS = (100, 50, 20)
BRAIN_AFFINE_SHRINK = (4, 2, 1)
BRAIN_AFFINE_SAMPLING = 0.25
DEFORMABLE_ITERATIONS = (40, 20, 0)
DEFORMABLE_GRADIENT_STEP = 0.2
DEFORMABLE_FLOW_SIGMA = 3.0
INTENSITY_PERCENTILE = 99.0
REFINE_BAND_MM = 3.0
REFERENCE_SHELL_MM = (3.0, 8.0)
PRIOR_SCALE_MM = 1.5
REFINE_SMOOTHING_MM = 0.7
HISTOGRAM_BINS = 64
HISTOGRAM_SMOOTHING_BINS = 1.5
CT_BRAIN_WINDOW_HU = (-15.0, 100.0)
CT_SEARCH_MARGIN_MM = 10.0
CT_OPENING_MM = 3.0
HU_SOFT_TISSUE_ABOVE_AIR = HU_SOFT_TISSUE - HU_AIR
HU_BRAIN_PEAK_WIDTH = 20.0  # grey and white matter peak, full width at half maximum (the GE head CT's)
PEAK_SMOOTHING = (0.25, 0.5, 0.25)
PEAK_SMOOTHING_FWHM = 2.355 * 0.5**0.5  # the kernel's own width, in levels
HU_WINDOW_TOP = 1000.0  # a windowed CT's top value stands for everything above its window: bone


class SkullStripError(BidsDefaceError):
    """Brain extraction could not be done (method unavailable, or no brain found)."""


@dataclass(frozen=True)
class BrainExtraction:
    """A scan's brain mask and how it was made.

    Attributes
    ----------
    mask : numpy.ndarray of bool
        Brain on the scan's voxel grid (3D), one connected component, no holes.
    method : str
        ``template``, ``deepbet`` or ``ct-window``.
    description : str
        One line for sidecars and reports (with software versions).
    """

    mask: np.ndarray
    method: str
    description: str


def learned_method_available() -> bool:
    """Return whether the optional learned method (deepbet) can be imported."""
    try:
        import deepbet  # noqa: F401
    except ImportError:
        return False
    return True


def extract_brain(
    scan: Scan,
    template: Template,
    registration: Registration,
    config: Config,
    work_dir: Path,
    ct: CtIntensities | None = None,
) -> BrainExtraction:
    """Return the brain mask of an MRI or CT scan with the configured method.

    Parameters
    ----------
    scan : Scan
        The loaded scan.
    template : Template
        Bundled template (its brain is the prior).
    registration : Registration
        Template-to-scan transform (its files must exist).
    config : Config
        ``skull_strip_method``, ``omp_nthreads``.
    work_dir : Path
        Scratch folder for ANTs transforms.
    ct : CtIntensities, optional
        Given for CT scans: the brain window is used.

    Returns
    -------
    BrainExtraction

    Raises
    ------
    SkullStripError
        The learned method is not installed, or no brain was found.
    """
    if ct is not None:
        mask = ct_brain(scan, ct, template, registration)
        low, high = CT_BRAIN_WINDOW_HU
        description = f"CT brain window ({low:g} to {high:g} HU) near the template brain; bidsdeface {__version__}"
        if ct.storage == "windowed":
            description += "; HU scale of the windowed CT from the width of its soft-tissue peak"
        return BrainExtraction(_checked(mask, scan), "ct-window", description)
    if config.skull_strip_method == "deepbet":
        mask = learned_brain(scan, config.omp_nthreads)
        return BrainExtraction(_checked(mask, scan), "deepbet", f"deepbet {_version('deepbet')} (CPU)")
    deformed = deformed_template_brain(scan, template, registration, work_dir)
    mask = refined_on_intensities(scan.reference, scan.zooms, deformed)
    description = (
        "template brain warped by ANTs SyN (mutual information) and refined on the image's intensities; "
        f"bidsdeface {__version__}, antspyx {_version('antspyx')}"
    )
    return BrainExtraction(_checked(mask, scan), "template", description)


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def _checked(mask: np.ndarray, scan: Scan) -> np.ndarray:
    mask = single_solid_component(mask)
    if not mask.any():
        raise SkullStripError(f"{scan.path}: no brain found by skull stripping; nothing was written")
    return mask


def hounsfield(volume: np.ndarray, ct: CtIntensities) -> np.ndarray:
    """Map CT intensities to Hounsfield units through the air and soft-tissue peaks (exact for HU storage).

    A windowed CT's air is clamped at the window's floor, which may lie far above
    -1000 HU (a brain window's is near 0 HU): the line through air is then only the
    steepest possible, and the width of the soft-tissue peak (HU_BRAIN_PEAK_WIDTH at
    half its height) gives the scale when it is gentler. The window's top value holds
    all that lay above it (bone, in a brain window): it maps to HU_WINDOW_TOP at least.
    """
    scale = HU_SOFT_TISSUE_ABOVE_AIR / max(ct.soft_tissue - ct.air, 1e-6)
    if ct.storage == "windowed":
        scale = min(scale, HU_BRAIN_PEAK_WIDTH / max(peak_width(volume, ct.soft_tissue), 1e-6))
    hu = (HU_SOFT_TISSUE + (volume - ct.soft_tissue) * scale).astype(np.float32)
    if ct.storage == "windowed":
        top = volume >= volume.max()
        hu[top] = np.maximum(hu[top], HU_WINDOW_TOP)
    return hu


def peak_width(volume: np.ndarray, centre: float) -> float:
    """Return the full width at half maximum of the histogram peak nearest ``centre``, clamped values left out.

    The density of the stored levels (:func:`bidsdeface.images.level_density`) is lightly
    smoothed, to even out levels that hold one HU or two; the smoothing's own width is
    taken back out (in quadrature).

    >>> stored = np.arange(0.0, 61.0, 3.0)  # a Gaussian peak 15 wide at half height, on every third value
    >>> values = np.repeat(stored, (1 + 40 * np.exp(-(((stored - 30) / 9) ** 2))).astype(int))
    >>> round(peak_width(values, 30.0))
    15
    """
    levels, density = level_density(volume, float(volume.min()), float(volume.max()))
    if levels.size < 3:
        return 0.0
    density = np.convolve(density, PEAK_SMOOTHING, mode="same")
    peak = int(np.argmin(np.abs(levels - centre)))
    half = density[peak] / 2
    left, right = peak, peak
    while left > 0 and density[left - 1] > half:
        left -= 1
    while right < levels.size - 1 and density[right + 1] > half:
        right += 1
    # the half-height crossings, between the last level above half and the next one
    below_left, below_right = max(left - 1, 0), min(right + 1, levels.size - 1)
    start = np.interp(half, density[[below_left, left]], levels[[below_left, left]])
    stop = np.interp(half, density[[below_right, right]], levels[[below_right, right]])
    smoothing = PEAK_SMOOTHING_FWHM * float(np.gradient(levels)[peak])
    return float(np.sqrt(max((stop - start) ** 2 - smoothing**2, 0.0)))


def _unit_scaled(volume: np.ndarray, region: np.ndarray) -> np.ndarray:
    top = float(np.percentile(volume[region], INTENSITY_PERCENTILE)) if region.any() else float(volume.max())
    return np.clip(volume / max(top, 1e-6), 0.0, 1.5).astype(np.float32)


def deformed_template_brain(scan: Scan, template: Template, registration: Registration, work_dir: Path) -> np.ndarray:
    """Return the template brain on the scan grid after refining ``registration`` on the brain.

    An affine stage, then SyN, both with mutual information, run at DEFORMABLE_RESOLUTION_MM,
    sampled only within DEFORMABLE_REGION_MM of the affinely placed brain (the face and
    neck would pull them). The affine stage repairs a head registration whose scale a
    cropped field of view left loose (the clinical T2w: 0.6x the brain's volume, then 0.97x).
    """
    fixed = to_ants(*block_mean(scan.reference, scan.image.affine, DEFORMABLE_RESOLUTION_MM / 2))
    fixed = resampled_to_spacing(fixed, DEFORMABLE_RESOLUTION_MM)
    fixed_affine = ants_grid_affine(fixed)
    placed = warp_template_masks(fixed.shape, fixed_affine, [template.brain], template, registration)[0]
    region = dilate_mm(placed, (DEFORMABLE_RESOLUTION_MM,) * 3, DEFORMABLE_REGION_MM)
    fixed = fixed.new_image_like(_unit_scaled(fixed.numpy(), region))
    moving = to_ants(_unit_scaled(template.head, template.brain), template.affine)
    result = ants.registration(
        fixed=fixed,
        moving=moving,
        type_of_transform="SyN",
        initial_transform=list(registration.transforms),
        outprefix=str(work_dir / "brain_syn_"),
        aff_metric="mattes",
        aff_iterations=BRAIN_AFFINE_ITERATIONS,
        aff_shrink_factors=BRAIN_AFFINE_SHRINK,
        aff_smoothing_sigmas=tuple(f // 2 for f in BRAIN_AFFINE_SHRINK),
        aff_random_sampling_rate=BRAIN_AFFINE_SAMPLING,
        syn_metric="mattes",
        syn_sampling=32,
        reg_iterations=DEFORMABLE_ITERATIONS,
        grad_step=DEFORMABLE_GRADIENT_STEP,
        flow_sigma=DEFORMABLE_FLOW_SIGMA,
        total_sigma=0,
        mask=fixed.new_image_like(region.astype(np.float32)),
    )
    deformed = replace(registration, transforms=tuple(result["fwdtransforms"]))
    return warp_template_masks(scan.reference.shape, scan.image.affine, [template.brain], template, deformed)[0]


def _density(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), edges)
    smooth = ndimage.gaussian_filter1d(counts.astype(np.float64), HISTOGRAM_SMOOTHING_BINS) + 1e-3
    return smooth / smooth.sum()


def refined_on_intensities(volume: np.ndarray, zooms: tuple[float, float, float], prior: np.ndarray) -> np.ndarray:
    """Move the boundary of ``prior`` by at most REFINE_BAND_MM to where the scan's intensities put it.

    Inside the band a voxel belongs to the brain when the log-likelihood ratio of its
    (lightly smoothed) intensity under the histograms of two reference shells, just
    inside and just outside the prior's boundary, beats a prior that falls off with
    the signed distance (scale PRIOR_SCALE_MM). No assumption about the contrast is made.
    """
    if not prior.any():
        return prior
    reach = REFERENCE_SHELL_MM[1] + 1.0
    box = bounding_box(prior, voxels_for_mm(reach, zooms, extra=0))
    signed = signed_distance_mm(prior[box], zooms)
    values = ndimage.gaussian_filter(volume[box].astype(np.float32), REFINE_SMOOTHING_MM / np.asarray(zooms))
    near, far = REFERENCE_SHELL_MM
    inner = (signed <= -near) & (signed >= -far)
    outer = (signed >= near) & (signed <= far)
    if not inner.any() or not outer.any():
        return prior
    edges = np.linspace(*np.percentile(values[inner | outer], [0.5, 99.5]), HISTOGRAM_BINS + 1)
    bins = np.clip(np.digitize(values, edges) - 1, 0, HISTOGRAM_BINS - 1)
    likelihood_ratio = np.log(_density(values[inner], edges)) - np.log(_density(values[outer], edges))
    brain_like = likelihood_ratio[bins] - signed / PRIOR_SCALE_MM > 0
    refined = prior.copy()
    band = np.abs(signed) <= REFINE_BAND_MM
    refined[box] = np.where(band, brain_like, prior[box])
    return refined


def ct_brain_window(hu: np.ndarray, zooms: tuple[float, float, float], prior: np.ndarray) -> np.ndarray:
    """Return the CT brain: the brain window within CT_SEARCH_MARGIN_MM of the placed template brain.

    An opening by CT_OPENING_MM cuts the window's thin links to the scalp, orbits and
    neck through the skull's openings; the largest piece is grown back inside the window.
    Ventricles and sulci fall inside the window too (fluid is in it).
    """
    low, high = CT_BRAIN_WINDOW_HU
    window = (hu > low) & (hu < high) & dilate_mm(prior, zooms, CT_SEARCH_MARGIN_MM)
    core = single_solid_component(opened_mm(window, zooms, CT_OPENING_MM))
    return (dilate_mm(core, zooms, CT_OPENING_MM) & window) | core


def ct_brain(scan: Scan, ct: CtIntensities, template: Template, registration: Registration) -> np.ndarray:
    """Return the CT brain window mask on the scan grid, worked out on blocks of about 1 mm.

    Thin-slice CT (0.5 mm in-plane) is reduced to block means first (distance transforms
    on 50 million voxels take minutes); the blocky mask is then trimmed to the window on
    the full grid.
    """
    hu = hounsfield(scan.reference, ct)
    coarse, coarse_affine = block_mean(hu, scan.image.affine, BRAIN_GRID_MM)
    block = block_factors(scan.zooms, BRAIN_GRID_MM)
    coarse_zooms = tuple(b * z for b, z in zip(block, scan.zooms, strict=True))
    placed = warp_template_masks(coarse.shape, coarse_affine, [template.brain], template, registration)[0]
    mask = ct_brain_window(coarse, coarse_zooms, placed)
    if block == [1, 1, 1]:
        return mask
    low, high = CT_BRAIN_WINDOW_HU
    return block_expanded(mask, block, hu.shape) & (hu > low) & (hu < high)


def learned_brain(scan: Scan, threads: int) -> np.ndarray:
    """Return deepbet's brain mask of an MRI scan (CPU; its output is captured, not printed).

    Raises
    ------
    SkullStripError
        deepbet is not installed.
    """
    try:
        import torch
        from deepbet import BrainExtraction as DeepBet
    except ImportError as exc:
        raise SkullStripError(
            "--skull-strip-method deepbet needs the optional extra: pip install 'bidsdeface[deepbet]'"
        ) from exc
    torch.set_num_threads(threads)
    image = nib.Nifti1Image(scan.reference.astype(np.float32), scan.image.affine)
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        _, mask, _ = DeepBet(no_gpu=True).run(image)
    if chatter.getvalue().strip():
        log.debug("deepbet said: %s", chatter.getvalue().strip())
    return np.asanyarray(mask.dataobj).reshape(scan.reference.shape) > 0


def brain_only_image(
    source: nib.Nifti1Image, stored: np.ndarray, brain: np.ndarray, background: float
) -> nib.Nifti1Image:
    """Return ``stored`` with every voxel outside ``brain`` set to ``background``, in every volume.

    ``stored`` holds values as on disk (e.g. the defaced ones); ``background`` is in real
    units; the image gets ``source``'s header and scaling.
    """
    stored = stored.copy()
    volumes = stored.reshape((*stored.shape[:3], -1))
    volumes[~brain] = stored_value(source, background)
    return rebuild_like(source, stored)


def brain_metrics(
    brain: np.ndarray, template_brain: np.ndarray, zooms: tuple[float, float, float]
) -> dict[str, object]:
    """Measure a brain mask: size, shape checks and agreement with the placed template brain.

    Returns
    -------
    dict
        ``brain_volume_ml``, ``brain_components`` (6-connected), ``brain_holes``
        (enclosed background pieces), ``brain_template_volume_ratio`` (over the
        template brain placed in the field of view), ``brain_template_dice`` and
        ``brain_in_view`` (the placed template brain does not touch the image's edge).
    """
    voxel_ml = float(np.prod(zooms)) / 1000.0
    faces = _faces(brain.shape)
    box = bounding_box(brain, (1, 1, 1))
    _, components = ndimage.label(brain[box])
    background, background_pieces = ndimage.label(~brain[box])
    edge_pieces = set(np.unique(background[_faces(background.shape)]).tolist()) - {0}
    return {
        "brain_volume_ml": round(float(brain.sum()) * voxel_ml, 1),
        "brain_components": int(components),
        "brain_holes": int(background_pieces - len(edge_pieces)),
        "brain_template_volume_ratio": round(float(brain.sum()) / max(int(template_brain.sum()), 1), 3),
        "brain_template_dice": round(dice(brain, template_brain), 4),
        "brain_in_view": not bool(template_brain[faces].any()),
    }


def _faces(shape: tuple[int, ...]) -> np.ndarray:
    faces = np.zeros(shape, bool)
    for axis in range(3):
        index = [slice(None)] * 3
        index[axis] = [0, shape[axis] - 1]
        faces[tuple(index)] = True
    return faces
