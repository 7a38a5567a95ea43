"""Reading DICOM folders: series grouping, dates, tilt, and the checks for broken series."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom import examples

from bidsdeface.dicom import frame_planes, frame_voxels, missing_slice_gaps, scan_dicom_folder

from .conftest import DICOM_SERIES, SHARED, needs_shared, one_slice_volume


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


def test_every_pixel_finds_its_own_voxel() -> None:
    dataset = examples.mr
    _, affine = one_slice_volume(dataset)
    i, j, k = frame_voxels(frame_planes(dataset)[0], dataset.Rows, dataset.Columns, affine)
    rows, columns = np.meshgrid(np.arange(dataset.Rows), np.arange(dataset.Columns), indexing="ij")
    assert np.array_equal(i, columns) and np.array_equal(j, rows) and not k.any()


def test_a_frame_without_geometry_is_refused() -> None:
    dataset = examples.mr
    del dataset.ImagePositionPatient
    with pytest.raises(ValueError, match="no image position"):
        frame_planes(dataset)


@needs_shared
def test_a_real_series_maps_exactly_onto_its_dcm2niix_volume(tmp_path) -> None:
    from .test_dicomout_end_to_end import dcm2niix

    folder = SHARED / DICOM_SERIES["prismaHFS"]
    image = dcm2niix(folder, tmp_path / "nifti")
    volume = np.asanyarray(image.dataobj)
    for path in sorted(folder.glob("*.dcm"))[::7]:
        dataset = pydicom.dcmread(path)
        i, j, k = frame_voxels(frame_planes(dataset)[0], dataset.Rows, dataset.Columns, image.affine)
        assert np.array_equal(volume[i, j, k], dataset.pixel_array)
    assert isinstance(image, nib.Nifti1Image)
