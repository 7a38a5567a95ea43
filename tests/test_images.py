"""Loading scans: every kind of bad input is one clear ScanError naming the file."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bidsdeface.errors import ScanError
from bidsdeface.images import _fill_slices, ct_intensities, head_mask, load_scan

from .conftest import CT_WINDOWS, SHARED, needs_shared, windowed_ct, write_header_variant

IXI = SHARED / "mri_t1w_ixi012/IXI012-HH-1211_T1.nii.gz"


def _save(tmp_path: Path, data: np.ndarray, name: str = "x.nii.gz") -> Path:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.ones((64, 64, 1), np.float32), "slices"),
        (np.ones((8, 8, 8, 2, 3), np.float32), "more than 4 dimensions"),
        (np.full((20, 20, 20), np.nan, np.float32), "NaN"),
        (np.zeros((20, 20, 20), np.float32), "constant"),
        (np.random.default_rng(0).normal(100, 30, (40, 40, 40)).astype(np.float32), "noise"),
    ],
)
def test_bad_arrays(tmp_path: Path, data: np.ndarray, message: str) -> None:
    path = _save(tmp_path, data)
    with pytest.raises(ScanError, match=message) as exc:
        load_scan(path)
    assert str(path) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "x.nii.gz"
    path.write_bytes(b"definitely not gzip")
    with pytest.raises(ScanError, match="cannot read"):
        load_scan(path)


@needs_shared
def test_truncated_and_real(tmp_path: Path) -> None:
    truncated = tmp_path / "t.nii.gz"
    truncated.write_bytes(IXI.read_bytes()[:30000])
    with pytest.raises(ScanError, match="truncated"):
        load_scan(truncated)
    scan = load_scan(IXI)
    mask = head_mask(scan.reference, scan.zooms)
    volume_ml = mask.sum() * np.prod(scan.zooms) / 1000
    assert 2000 < volume_ml < 6000, volume_ml  # an adult head with neck, in mL


def test_4d_reference_is_mean(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = np.zeros((30, 30, 30), np.float32)
    base[5:25, 5:25, 5:25] = 100
    data = np.stack([base * (1 + 0.1 * k) for k in range(3)], axis=-1)
    data += rng.normal(0, 1, data.shape).astype(np.float32)
    scan = load_scan(_save(tmp_path, data))
    assert np.allclose(scan.reference, data.mean(axis=3))


def test_4d_reference_is_time_weighted_when_durations_fit(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(100, 10, (12, 12, 12, 3)).astype(np.float32)
    data += np.add.outer(np.arange(12.0), np.arange(12.0))[..., None, None].astype(np.float32) * 50
    path = _save(tmp_path, data)
    weighted = load_scan(path, [10, 30, 60])
    assert np.allclose(weighted.reference, np.tensordot(data, np.array([0.1, 0.3, 0.6], np.float32), axes=([3], [0])))
    assert weighted.summary == "time-weighted mean of 3 frames"
    for unusable in ([10, 30], [10, 0, 60], "60", None):
        plain = load_scan(path, unusable)
        assert plain.summary == "mean of 3 volumes" and np.allclose(plain.reference, data.mean(axis=3))


@needs_shared
def test_ct_table_and_head_holder_are_not_head(converted_dataset: Path) -> None:
    """A scanner table (100 HU) and a thin holder plate joining it to the head stay out of the head mask."""
    scan = load_scan(converted_dataset / "sub-ct/anat/sub-ct_ct.nii.gz")
    plain = ct_intensities(scan.reference)
    head = head_mask(scan.reference, scan.zooms, plain.head_threshold)
    with_table = scan.reference.copy()
    back = int(np.argwhere(head)[:, 1].min())  # posterior edge of the head (axis 1 points anterior)
    millimetres = scan.zooms[1]
    table = slice(max(0, back - round(30 / millimetres)), back - round(15 / millimetres))
    with_table[:, table, :] = 100.0
    centre = with_table.shape[0] // 2
    with_table[centre - 2 : centre + 2, table.stop : back + 2, :] = 50.0  # a 2 mm plate touching the head
    found = ct_intensities(with_table)
    assert found.storage == "HU" and abs(found.air - plain.air) < 5
    mask = head_mask(with_table, scan.zooms, found.head_threshold)
    dice = 2 * np.sum(mask & head) / (mask.sum() + head.sum())
    assert dice > 0.97, dice


@needs_shared
def test_ct_padding_below_the_air_is_set_aside(converted_dataset: Path) -> None:
    """The tilt padding (-1500 HU) lies apart from the air: in HU and in HU + 1024 (padding clamped to 0)."""
    hu = nib.load(converted_dataset / "sub-ct/anat/sub-ct_ct.nii.gz").get_fdata(dtype=np.float32)
    for volume, storage, air in ((hu, "HU", -1000.0), (np.clip(hu + 1024, 0, None), "HU+1024", 24.0)):
        found = ct_intensities(volume)
        assert found.storage == storage and abs(found.air - air) <= 5 and volume.min() < found.air, found
        assert abs(found.soft_tissue - found.air - 1035) <= 15, found  # brain about 35 HU


@needs_shared
@pytest.mark.parametrize("label", CT_WINDOWS)
def test_windowed_ct_air_is_its_clamped_minimum(converted_dataset: Path, label: str) -> None:
    """A display window clamps air and padding together at the lowest value: that value is the air."""
    level, width, top, _ = CT_WINDOWS[label]
    image = windowed_ct(converted_dataset / "sub-ct/anat/sub-ct_ct.nii.gz", CT_WINDOWS[label])
    volume = image.get_fdata(dtype=np.float32)
    found = ct_intensities(volume)
    assert found.storage == "windowed" and found.air == volume.min() == 0, found
    brain = np.round((np.array([20.0, 45.0]) - (level - width / 2)) / width * top)  # grey and white matter
    assert brain[0] <= found.soft_tissue <= brain[1], (found, brain)
    assert found.describe().startswith("windowed intensities, air clamped at the minimum (air 0,")


# Header faults, each on the real IXI head (2 mm, 120 x 120 x 90); the affine is the one on disk.
FAST_SECONDS = 2.0  # the header alone is read: milliseconds, with room for a busy machine


def _ixi_affine() -> np.ndarray:
    return nib.load(IXI).affine


def _sheared() -> np.ndarray:
    """Off-diagonal terms five times the voxel size: the second and third axes lean onto the first."""
    shear = np.eye(4)
    shear[0, 1:3] = 5.0
    return _ixi_affine() @ shear


def _scaled(factors: tuple[float, float, float]) -> np.ndarray:
    return _ixi_affine() @ np.diag([*factors, 1.0])


def _non_finite() -> np.ndarray:
    affine = _ixi_affine()
    affine[0, 0] = np.nan
    return affine


# Affines are made when a test runs (from the IXI file), never at collection: without the
# shared data the tests skip instead of failing to import.
HEADER_FAULTS = {
    "sheared": ({"sform": _sheared}, "sheared or degenerate affine: voxel axes 88 degrees"),
    "zero_scale": ({"sform": lambda: _scaled((0.0, 1.0, 1.0))}, r"voxel size \(0, 2, 2\) mm in the affine"),
    "non_finite": ({"sform": _non_finite}, "non-finite"),
    "huge_voxel": ({"sform": lambda: _scaled((5e5, 1, 1)), "zooms": (1e6, 2, 2)}, r"voxel size \(1e\+06, 2, 2\) mm"),
    "pixdim_only_tiny": ({"zooms": (1e-6, 2, 2)}, r"mm in the header \(pixdim\)"),
    "field_of_view": (
        {"sform": lambda: _scaled((7.5, 7.5, 7.5)), "zooms": (15, 15, 15)},
        "field of view 1800 x 1800 x 1350",
    ),
    "too_many_voxels": ({"shape": (30000, 30000, 30000)}, r"header claims shape \(30000, 30000, 30000\)"),
    "too_many_volumes": ({"shape": (120, 120, 90, 30000)}, "header claims shape"),
    "nifti2_1e5_voxels": ({"shape": (100000,) * 3, "nifti2": True}, "header claims shape"),
}


@needs_shared
@pytest.mark.parametrize("fault", HEADER_FAULTS)
def test_bad_header_fails_fast_without_reading_voxels(tmp_path: Path, fault: str) -> None:
    """The file ends after its header: reading any voxel would fail as truncated, not with the header's fault."""
    changes, message = HEADER_FAULTS[fault]
    changes = {key: value() if callable(value) else value for key, value in changes.items()}
    path = write_header_variant(tmp_path / f"{fault}.nii.gz", IXI, with_data=False, **changes)
    started = time.perf_counter()
    with pytest.raises(ScanError, match=message) as exc:
        load_scan(path)
    assert time.perf_counter() - started < FAST_SECONDS
    assert str(exc.value).startswith(f"{path}: ")
    assert "\n" not in str(exc.value) and "truncated" not in str(exc.value)


@needs_shared
def test_header_checks_pass_the_real_head_and_a_tilted_ct_geometry(tmp_path: Path) -> None:
    """The bounds leave real scans alone: the IXI head, and a 30 degree gantry-tilt shear of it (CT)."""
    tilt = np.eye(4)
    tilt[1, 2] = np.tan(np.radians(30))  # slices displaced along y as z grows, as an uncorrected tilted CT
    path = write_header_variant(tmp_path / "tilted.nii.gz", IXI, sform=_ixi_affine() @ tilt)
    assert load_scan(path).reference.shape == (120, 120, 90)


@needs_shared
def test_nifti2_head_loads_as_its_nifti1_original(tmp_path: Path) -> None:
    path = write_header_variant(tmp_path / "nifti2.nii.gz", IXI, nifti2=True)
    scan, original = load_scan(path), load_scan(IXI)
    assert isinstance(scan.image, nib.Nifti2Image)
    assert np.array_equal(scan.reference, original.reference)
    assert np.allclose(scan.image.affine, original.image.affine) and scan.zooms == original.zooms


def test_slices_are_filled_as_each_slice_on_its_own() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        mask = ndimage.binary_closing(rng.random(tuple(rng.integers(3, 25, 3))) > 0.5)
        for axis in range(3):
            one_by_one = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, axis, 0)])
            assert np.array_equal(_fill_slices(mask, axis), np.moveaxis(one_by_one, 0, axis))
