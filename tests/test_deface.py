"""Zero and blur replacement, header preservation, 4D, scaling."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from bidsdeface.config import Config
from bidsdeface.deface import ScanMasks, deface_image, dilate_mm, removal_mask
from bidsdeface.qc import measure

CONFIG = Config(bids_dir=Path("."), output_dir=Path("."))


def _masks(shape: tuple[int, int, int]) -> ScanMasks:
    face = np.zeros(shape, bool)
    face[:, -8:, :6] = True
    ears = np.zeros(shape, bool)
    ears[:3, 5:10, 5:10] = True
    brain = np.zeros(shape, bool)
    brain[5:15, 5:15, 5:15] = True
    return ScanMasks(
        face=face, ears=ears, brain=brain, protect=dilate_mm(brain, (1.0, 1.0, 1.0), 3.0), head=np.ones(shape, bool)
    )


def test_zero_keeps_header_scaling_and_protected_voxels() -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(100, 2000, size=(20, 20, 20)).astype(np.int16)
    image = nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0]))
    image.header.set_slope_inter(2.0, 10.0)
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=2)
    saved = nib.Nifti1Image.from_bytes(image.to_bytes())
    masks = _masks(data.shape)
    result = deface_image(saved, masks, CONFIG)
    out = nib.Nifti1Image.from_bytes(result.image.to_bytes())
    assert (out.dataobj.slope, out.dataobj.inter) == (2.0, 10.0)
    assert out.get_data_dtype() == np.int16
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 2
    stored = np.asanyarray(out.dataobj.get_unscaled())
    removed = removal_mask(masks, remove_ears=False)
    assert np.allclose(out.get_fdata()[removed], 0.0, atol=1.0)  # nearest stored value to 0 HU-style
    assert np.array_equal(stored[~removed], data[~removed])
    assert measure(data, stored, masks, removed, 0.0)["brain_voxels_touched"] == 0
    assert not np.any(removed & masks.protect)


def test_ears_only_when_asked() -> None:
    masks = _masks((20, 20, 20))
    assert not np.any(removal_mask(masks, remove_ears=False) & masks.ears & ~masks.face)
    assert np.any(removal_mask(masks, remove_ears=True) & masks.ears)


def test_4d_every_volume_same_mask() -> None:
    rng = np.random.default_rng(2)
    data = rng.uniform(10, 100, size=(20, 20, 20, 4)).astype(np.float32)
    image = nib.Nifti1Image(data, np.eye(4))
    masks = _masks(data.shape[:3])
    result = deface_image(image, masks, CONFIG)
    out = np.asanyarray(result.image.dataobj)
    removed = removal_mask(masks, remove_ears=False)
    for volume in range(4):
        assert np.all(out[..., volume][removed] == 0)
        assert np.array_equal(out[..., volume][~removed], data[..., volume][~removed])


def test_blur_changes_every_removed_voxel_and_nothing_else() -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(50, 250, size=(30, 30, 30)).astype(np.uint8)
    image = nib.Nifti1Image(data, np.eye(4))
    masks = _masks(data.shape)
    result = deface_image(image, masks, Config(bids_dir=Path("."), output_dir=Path("."), method="blur"))
    out = np.asanyarray(result.image.dataobj)
    removed = result.removed
    assert out.dtype == np.uint8
    assert np.array_equal(out[~removed], data[~removed])
    assert np.corrcoef(out[removed].astype(float), data[removed].astype(float))[0, 1] < 0.3


def test_dilate_mm_anisotropic() -> None:
    mask = np.zeros((21, 21, 21), bool)
    mask[10, 10, 10] = True
    grown = dilate_mm(mask, (1.0, 1.0, 4.0), 4.0)
    assert grown[10, 14, 10] and not grown[10, 15, 10]
    assert grown[10, 10, 11] and not grown[10, 10, 12]


def _ball_head_with_fin(shape: tuple[int, int, int] = (60, 60, 60)) -> tuple[np.ndarray, np.ndarray]:
    """A 20 mm-radius ball (skull and scalp) with a 2 mm-thin fin beside it (a pinna), and the fin."""
    grid = np.indices(shape)
    head = ((grid - 30) ** 2).sum(axis=0) <= 20**2
    fin = np.zeros(shape, bool)
    fin[50:58, 28:30, 22:38] = True  # 8 mm out from the ball's side, 2 mm thick
    return head | fin, fin & ~head


def test_thin_tissue_is_the_fin_not_the_head() -> None:
    from bidsdeface.deface import thin_tissue

    head, fin = _ball_head_with_fin()
    thin = thin_tissue(head, np.ones(head.shape, bool), (1.0, 1.0, 1.0))
    assert thin[fin].mean() > 0.9
    assert thin[head & ~fin].mean() < 0.01  # a few voxels of the ball's staircase surface


def test_ear_tissue_takes_a_pinna_next_to_the_ear_region_and_cut_by_the_field_of_view() -> None:
    from bidsdeface.deface import ear_tissue

    head, fin = _ball_head_with_fin()
    ears = np.zeros(head.shape, bool)
    ears[50:, 20:24, 20:40] = True  # the template's region, just behind the fin
    protect = np.zeros(head.shape, bool)
    pinna = ear_tissue(head, ears, protect, (1.0, 1.0, 1.0))
    assert pinna[fin].all()  # the rim takes the few voxels next to the ball
    cut = ear_tissue(head[:54], ears[:54], protect[:54], (1.0, 1.0, 1.0))  # the field of view ends in the fin
    assert cut[fin[:54]].all()
    assert not ear_tissue(head, ears, np.ones(head.shape, bool), (1.0, 1.0, 1.0)).any()  # never the protected brain
