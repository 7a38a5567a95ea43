"""Masks on the scan's grid: pinnae found by thinness, removal = face (+ ears) minus the protected brain."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsdeface.images import Scan
from bidsdeface.masks import ScanMasks, ear_tissue, removal_mask, scan_masks, thin_tissue, with_brain_protected
from bidsdeface.register import Registration, warp_template_mask
from bidsdeface.templates import load_template
from bidsdeface.volumes import dice, dilate_mm

from .conftest import transform_file


def test_removal_is_face_and_ears_minus_protected_brain() -> None:
    shape = (10, 10, 10)
    face, ears, protect = (np.zeros(shape, bool) for _ in range(3))
    face[:5] = True
    ears[8:] = True
    protect[3:9] = True
    masks = ScanMasks(face=face, ears=ears, brain=protect, protect=protect, head=np.ones(shape, bool))
    assert np.array_equal(removal_mask(masks, remove_ears=False), face & ~protect)
    assert np.array_equal(removal_mask(masks, remove_ears=True), (face | ears) & ~protect)
    brain = np.zeros(shape, bool)
    brain[0, 0, 0] = True
    grown = with_brain_protected(masks, brain, (1.0, 1.0, 1.0), 1.0)
    assert grown.protect[0, 0, 1] and grown.protect[3:9].all() and not grown.protect[0, 0, 2]
    assert grown.face is masks.face


def _ball_head_with_fin(shape: tuple[int, int, int] = (60, 60, 60)) -> tuple[np.ndarray, np.ndarray]:
    """A 20 mm-radius ball (skull and scalp) with a 2 mm-thin fin beside it (a pinna), and the fin."""
    grid = np.indices(shape)
    head = ((grid - 30) ** 2).sum(axis=0) <= 20**2
    fin = np.zeros(shape, bool)
    fin[50:58, 28:30, 22:38] = True  # 8 mm out from the ball's side, 2 mm thick
    return head | fin, fin & ~head


def test_thin_tissue_is_the_fin_not_the_head() -> None:
    head, fin = _ball_head_with_fin()
    thin = thin_tissue(head, np.ones(head.shape, bool), (1.0, 1.0, 1.0))
    assert thin[fin].mean() > 0.9
    assert thin[head & ~fin].mean() < 0.01  # a few voxels of the ball's staircase surface


def test_ear_tissue_takes_a_pinna_next_to_the_ear_region_and_cut_by_the_field_of_view() -> None:
    head, fin = _ball_head_with_fin()
    ears = np.zeros(head.shape, bool)
    ears[50:, 20:24, 20:40] = True  # the template's region, just behind the fin
    protect = np.zeros(head.shape, bool)
    pinna = ear_tissue(head, ears, protect, (1.0, 1.0, 1.0))
    assert pinna[fin].all()  # the rim takes the few voxels next to the ball
    cut = ear_tissue(head[:54], ears[:54], protect[:54], (1.0, 1.0, 1.0))  # the field of view ends in the fin
    assert cut[fin[:54]].all()
    assert not ear_tissue(head, ears, np.ones(head.shape, bool), (1.0, 1.0, 1.0)).any()  # never the protected brain


@pytest.mark.parametrize("translation_mm", [(0.0, 0.0, 0.0), (23.5, -17.25, 31.0)])
def test_brain_is_placed_voxel_by_voxel_and_face_and_ears_on_2mm_blocks(
    tmp_path: Path, translation_mm: tuple[float, float, float]
) -> None:
    """A 1 mm grid over the template: the protected brain is exactly the voxel-by-voxel one, never removed.

    The brain is warped only inside the box where a coarse placement found it; moved by the
    registration, or cut by the grid's edge, it is still the whole grid's warp.
    """
    template = load_template()
    affine = template.affine @ np.diag([0.5, 0.5, 0.5, 1.0])
    shape = tuple(2 * n for n in template.head.shape)
    reference = np.zeros(shape, np.float32)
    scan = Scan(tmp_path / "grid.nii.gz", nib.Nifti1Image(reference, affine), reference)
    registration = Registration(transform_file(tmp_path / "moved.mat", translation_mm), 1.0, "upright", 1)
    masks = scan_masks(scan, template, registration, 6.0, 0.5, processes=2)
    brain = warp_template_mask(scan, template.brain, template, registration)
    assert brain.any()
    assert np.array_equal(masks.brain, brain)
    assert np.array_equal(masks.protect, dilate_mm(brain, scan.zooms, 6.0))
    face = warp_template_mask(scan, template.face, template, registration)
    assert dice(masks.face, face) > 0.97
    assert not np.any(removal_mask(masks, remove_ears=True) & masks.protect)
