"""Loading scans: every kind of bad input is one clear ScanError naming the file."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsdeface.errors import ScanError
from bidsdeface.images import head_mask, load_scan

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
