"""Zero and blur replacement, header preservation, 4D, scaling."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from bidsdeface.config import Config
from bidsdeface.deface import deface_image
from bidsdeface.masks import ScanMasks, removal_mask
from bidsdeface.qc import measure
from bidsdeface.volumes import dilate_mm

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
