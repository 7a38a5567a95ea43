"""Reading DICOM folders: series grouping, dates, tilt, and the checks for broken series."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import pytest

from bidsdeface.dicom import missing_slice_gaps, scan_dicom_folder

from .conftest import DICOM_SERIES, SHARED, needs_shared


@needs_shared
def test_real_series_are_read_whole_and_clean() -> None:
    trio = scan_dicom_folder(SHARED / DICOM_SERIES["trio"])
    (series,) = trio.series
    assert (len(series.files), series.number, series.acquisition_kind) == (176, 19, "3d")
    assert series.acquired == datetime(2010, 7, 23, 8, 58, 17, 962500)
    assert series.problems == [] and trio.not_dicom == 1 and trio.unreadable == 0  # SHA256SUMS is not DICOM
    ct = scan_dicom_folder(SHARED / DICOM_SERIES["ct"])
    (series,) = ct.series
    assert series.header.modality == "CT" and series.gantry_tilt == 18.5 and series.acquisition_kind == "std"
    assert series.problems == []  # two slice spacings (4 and 7 mm) are not missing slices
    assert series.acquired is None


@needs_shared
def test_patients_and_studies_are_told_apart(tmp_path: Path) -> None:
    for name in ("prismaHFS", "prismaHFP"):
        shutil.copytree(SHARED / DICOM_SERIES[name], tmp_path / name)
    inventory = scan_dicom_folder(tmp_path)
    # one volunteer scanned supine, then prone, in two studies: two sessions to map, never merged silently
    assert len(inventory.series) == 2 and len(inventory.patients) == 1 and len(inventory.studies) == 2
    shutil.copytree(SHARED / DICOM_SERIES["trio"], tmp_path / "trio")
    assert len(scan_dicom_folder(tmp_path).patients) == 2


@pytest.mark.parametrize(
    ("positions", "gaps"),
    [
        ([0, 1, 2, 3, 4, 5], 0),
        ([0, 1, 2, 4, 5, 6], 1),
        ([0, 1, 2, 5, 6, 7, 9, 10], 2),
        ([0, 4, 8, 12, 13.08, 20.08, 27.08, 34.08], 0),
        ([5, 3, 4, 0, 1, 2], 0),
        ([0, 0, 1, 1, 2, 2, 4, 4, 5, 5], 1),
    ],
)
def test_missing_slice_gaps(positions: list[float], gaps: int) -> None:
    assert missing_slice_gaps(positions) == gaps
