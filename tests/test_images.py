"""Loading scans: every kind of bad input is one clear ScanError naming the file."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsdeface.errors import ScanError
from bidsdeface.images import ct_intensities, head_mask, load_scan

from .conftest import SHARED, needs_shared

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
