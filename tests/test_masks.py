"""Masks on the scan's grid: pinnae found by thinness, removal = face (+ ears) minus the protected brain."""

from __future__ import annotations

import numpy as np

from bidsdeface.masks import ScanMasks, ear_tissue, removal_mask, thin_tissue, with_brain_protected


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
