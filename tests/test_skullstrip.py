"""Skull stripping: unit checks on small volumes, then every real MRI head.

The real-data tests read the outputs of the session's :func:`heads_run`, which skull-strips
every MRI head with the default template method (one head also with deepbet). The
independent reference is deepbet's mask of the same input, computed here. CT and PET
skull stripping is checked in ``test_ct_pet.py`` (on that module's run).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bidsdeface.config import Config
from bidsdeface.images import CtIntensities, load_scan
from bidsdeface.outputs import OutputPaths
from bidsdeface.skullstrip import (
    brain_metrics,
    brain_only_image,
    ct_brain_window,
    hounsfield,
    learned_brain,
    refined_on_intensities,
)
from bidsdeface.volumes import dice, dilate_mm, single_solid_component

from .conftest import BRAIN_MARGIN_MM, HEADS, LEARNED_HEADS, SUFFIX, head_paths, holes, needs_shared

ADULT_BRAIN_ML = (900.0, 2200.0)
MIN_DICE_WITH_LEARNED = 0.90


def _ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


# ---- small volumes ---------------------------------------------------------------------------


def test_refinement_moves_a_shifted_prior_onto_the_brain() -> None:
    """A bright ball in a dark shell inside a bright scalp: a prior up to 2.5 mm off is pulled onto it."""
    shape = (64, 64, 64)
    brain = _ball(shape, (32, 32, 32), 20)
    volume = np.where(brain, 100.0, np.where(_ball(shape, (32, 32, 32), 26), 10.0, 60.0)).astype(np.float32)
    volume += np.random.default_rng(0).normal(0, 5, shape).astype(np.float32)
    prior = _ball(shape, (33, 32, 32), 18.5)
    refined = refined_on_intensities(volume, (1.0, 1.0, 1.0), prior)
    assert dice(prior, brain) < 0.9
    assert dice(refined, brain) > 0.95


def test_single_solid_component_and_metrics() -> None:
    mask = _ball((40, 40, 40), (20, 20, 20), 12) & ~_ball((40, 40, 40), (20, 20, 20), 4)
    mask[2:4, 2:4, 2:4] = True
    raw = brain_metrics(mask, mask, (1.0, 1.0, 1.0))
    assert (raw["brain_components"], raw["brain_holes"]) == (2, 1)
    cleaned = single_solid_component(mask)
    metrics = brain_metrics(cleaned, _ball((40, 40, 40), (20, 20, 20), 12), (2.0, 2.0, 2.0))
    assert (metrics["brain_components"], metrics["brain_holes"], metrics["brain_in_view"]) == (1, 0, True)
    assert metrics["brain_template_dice"] == 1.0
    assert metrics["brain_volume_ml"] == round(cleaned.sum() * 8 / 1000, 1)


def test_ct_window_keeps_the_inside_of_the_skull() -> None:
    """A skull phantom in HU: brain and ventricle inside bone; scalp outside; an orbit-like link through a hole."""
    shape, centre = (80, 80, 80), (40, 40, 40)
    hu = np.full(shape, -1000.0, np.float32)
    hu[_ball(shape, centre, 36)] = 40.0  # scalp
    hu[_ball(shape, centre, 33)] = 1200.0  # bone
    inside = _ball(shape, centre, 29)
    hu[inside] = 35.0
    hu[_ball(shape, centre, 6)] = 8.0  # ventricle
    hu[40, 40, 69:74] = 40.0  # a one-voxel canal through the bone to the scalp
    stored = hu / 2 + 3000  # a rescaled CT: the window follows air and soft tissue
    mask = ct_brain_window(hounsfield(stored, CtIntensities("rescaled", 2500.0, 3020.0)), (1.0, 1.0, 1.0), inside)
    assert dice(single_solid_component(mask), inside) > 0.98
    # the canal regrows by at most the opening radius (3 mm); the scalp stays out
    assert not mask[~_ball(shape, centre, 33)].any()


def test_brain_only_image_keeps_storage() -> None:
    data = np.arange(4 * 4 * 4 * 2, dtype=np.int16).reshape(4, 4, 4, 2) + 100
    image = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    image.header.set_slope_inter(2.0, -1000.0)
    image = nib.Nifti1Image.from_bytes(image.to_bytes())
    brain = np.zeros((4, 4, 4), bool)
    brain[1:3, 1:3, 1:3] = True
    stripped = nib.Nifti1Image.from_bytes(brain_only_image(image, data, brain, -1000.0).to_bytes())
    stored = np.asanyarray(stripped.dataobj.get_unscaled())
    assert stripped.get_data_dtype() == np.int16 and stripped.shape == image.shape
    assert (stripped.dataobj.slope, stripped.dataobj.inter) == (2.0, -1000.0)
    assert np.array_equal(stored[brain], data[brain])
    assert np.all(stored[~brain] == 0)  # 0 stored is -1000 real


def test_stale_brain_files_named_only_when_not_skull_stripping(tmp_path: Path) -> None:
    from bidsdeface.discover import ScanJob
    from bidsdeface.identity import SubjectIdentity

    job = ScanJob(
        subject="01", session="", path=tmp_path / "sub-01_T1w.nii.gz", relpath="sub-01/anat/sub-01_T1w.nii.gz",
        suffix="T1w", datatype="anat",
    )  # fmt: skip
    identity = SubjectIdentity(label="01", output_label="01", date_offset=None)
    stripping = OutputPaths.for_job(Config(tmp_path, tmp_path / "out", skull_strip=True), job, identity)
    plain = OutputPaths.for_job(Config(tmp_path, tmp_path / "out"), job, identity)
    assert stripping.brain is not None and stripping.skull_stripped and not plain.skull_stripped
    assert stripping.brain.mask.name == "sub-01_desc-brain_mask.nii.gz"
    assert stripping.brain.image.name == "sub-01_desc-brain_T1w.nii.gz"
    for path in stripping.brain.files():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert stripping.stale_brain_files() == []
    assert sorted(plain.stale_brain_files()) == sorted(stripping.brain.files())


# ---- real heads ------------------------------------------------------------------------------


def _brain_paths(run: dict, label: str, out_key: str = "out") -> tuple[Path, Path]:
    """Brain-only image and brain mask of ``label``."""
    suffix = SUFFIX.get(label, "T1w")
    anat = run[out_key] / f"sub-{label}" / "anat"
    space = "" if suffix == "T1w" else f"_space-{suffix}"
    return anat / f"sub-{label}_desc-brain_{suffix}.nii.gz", anat / f"sub-{label}{space}_desc-brain_mask.nii.gz"


@pytest.fixture(scope="module")
def learned_masks() -> dict[Path, np.ndarray]:
    """deepbet's masks of the input scans, by path (computed once per module)."""
    return {}


def _learned(cache: dict[Path, np.ndarray], path: Path) -> np.ndarray:
    if path not in cache:
        cache[path] = learned_brain(load_scan(path), 2)
    return cache[path]


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("label", HEADS)
def test_brain_mask_is_one_plausible_piece_that_agrees_with_deepbet(
    heads_run: dict, learned_masks: dict, label: str
) -> None:
    raw_path = head_paths(heads_run, label)[0]
    mask_image = nib.load(_brain_paths(heads_run, label)[1])
    mask = np.asanyarray(mask_image.dataobj) > 0
    assert mask.shape == nib.load(raw_path).shape[:3]
    assert ndimage.label(mask)[1] == 1, "brain mask is not one 6-connected piece"
    assert holes(mask) == 0, "brain mask has holes"
    volume_ml = float(mask.sum() * np.prod(mask_image.header.get_zooms()[:3]) / 1000)
    assert ADULT_BRAIN_ML[0] <= volume_ml <= ADULT_BRAIN_ML[1], f"{volume_ml:.0f} ml"
    agreement = dice(mask, _learned(learned_masks, raw_path))
    assert agreement >= MIN_DICE_WITH_LEARNED, f"Dice with deepbet {agreement:.3f}"


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("label", HEADS)
def test_brain_outputs_match_the_defaced_image_and_protect_the_brain(heads_run: dict, label: str) -> None:
    raw_path, defaced_path, removed_path = head_paths(heads_run, label)
    brain_path, mask_path = _brain_paths(heads_run, label)
    raw = np.asanyarray(nib.load(raw_path).dataobj.get_unscaled())
    defaced = np.asanyarray(nib.load(defaced_path).dataobj.get_unscaled())
    brain_image = nib.load(brain_path)
    stripped = np.asanyarray(brain_image.dataobj.get_unscaled())
    mask = np.asanyarray(nib.load(mask_path).dataobj) > 0
    removed = np.asanyarray(nib.load(removed_path).dataobj) > 0
    assert brain_image.get_data_dtype() == nib.load(raw_path).get_data_dtype()
    assert np.array_equal(stripped[mask], defaced[mask]) and np.all(stripped[~mask] == 0)
    # the skull-strip mask, grown by the margin, is protected: defacing left it bit-identical
    zooms = nib.load(raw_path).header.get_zooms()[:3]
    protected = dilate_mm(mask, tuple(float(z) for z in zooms), BRAIN_MARGIN_MM)
    assert not (removed & protected).any()
    assert np.array_equal(raw[protected], defaced[protected])
    sidecar = json.loads(brain_path.with_name(brain_path.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["SkullStripped"] is True
    assert sidecar["SkullStrippingMethod"].startswith("template brain warped by ANTs SyN")
    mask_sidecar = json.loads(mask_path.with_name(mask_path.name.replace(".nii.gz", ".json")).read_text())
    assert (mask_sidecar["Type"], mask_sidecar["SkullStripped"]) == ("Brain", False)
    assert mask_sidecar["SpatialReference"] == f"bids::{defaced_path.relative_to(heads_run['out']).as_posix()}"
    qc_path = defaced_path.with_name(defaced_path.name.replace(".nii.gz", "_qc.json"))
    record = json.loads(qc_path.read_text())
    assert record["Method"]["skull_strip_method"] == "template"
    assert record["Metrics"]["brain_components"] == 1 and record["Metrics"]["brain_holes"] == 0
    figure = heads_run["out"] / record["Figures"]["Brain"]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (heads_run["out"] / f"sub-{label}.html").read_text()
    assert record["Figures"]["Brain"] in report and "skull_strip_method" in report


@pytest.fixture(scope="module")
def learned_run(heads_run: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """:data:`LEARNED_HEADS` skull-stripped by the learned method (deepbet) through the CLI."""
    from bidsdeface.cli import main

    out = tmp_path_factory.mktemp("learned") / "out"
    options = ["--skull-strip-method", "deepbet", "--skip-bids-validation", "--participant-label", *LEARNED_HEADS]
    assert main([str(heads_run["bids"]), str(out), "participant", *options]) == 0
    return {"out": out}


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("label", LEARNED_HEADS)
def test_learned_method_through_the_pipeline(heads_run: dict, learned_run: dict, label: str) -> None:
    """deepbet's run is recorded as such, and its mask agrees with the template method's."""
    brain_path, mask_path = _brain_paths(learned_run, label)
    sidecar = json.loads(brain_path.with_name(brain_path.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["SkullStrippingMethod"].startswith("deepbet ")
    learned = np.asanyarray(nib.load(mask_path).dataobj) > 0
    template = np.asanyarray(nib.load(_brain_paths(heads_run, label)[1]).dataobj) > 0
    assert ndimage.label(learned)[1] == 1 and holes(learned) == 0
    assert dice(learned, template) >= MIN_DICE_WITH_LEARNED
