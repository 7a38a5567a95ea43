"""Defaced voxels written back into DICOM pixels: geometry, stored units, syntaxes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom import examples
from pydicom.data import get_testdata_file

from bidsdeface.dicompixels import defaced_frames, frame_planes, frame_voxels, stored_range, write_pixels

from .conftest import DICOM_SERIES, SHARED, needs_shared


def volume_of(dataset: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """A one-slice volume on the instance's own grid (i = column, j = row), as dcm2niix would lay it out."""
    plane = frame_planes(dataset)[0]
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    normal = np.cross(plane.along_row, plane.along_column)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = (
        lps_to_ras @ plane.along_row,
        lps_to_ras @ plane.along_column,
        lps_to_ras @ normal,
    )
    affine[:3, 3] = lps_to_ras @ plane.position
    return np.zeros((dataset.Columns, dataset.Rows, 1), bool), affine


def test_every_pixel_finds_its_own_voxel() -> None:
    dataset = examples.mr
    _, affine = volume_of(dataset)
    i, j, k = frame_voxels(frame_planes(dataset)[0], dataset.Rows, dataset.Columns, affine)
    rows, columns = np.meshgrid(np.arange(dataset.Rows), np.arange(dataset.Columns), indexing="ij")
    assert np.array_equal(i, columns) and np.array_equal(j, rows) and not k.any()


def test_replaced_pixels_take_the_new_value_and_the_rest_stay_bit_identical() -> None:
    dataset = examples.mr
    removed, affine = volume_of(dataset)
    removed[:10, :20, 0] = True  # columns 0-9 of rows 0-19
    replacement = np.full(removed.shape, 7.0, dtype=np.float32)
    before, after, count = defaced_frames(dataset, removed, replacement, affine)
    assert count == 200 and np.all(after[:20, :10] == 7)
    assert np.array_equal(after[20:], before[20:]) and np.array_equal(after[:, 10:], before[:, 10:])


def test_stored_values_undo_the_rescale_and_clip_to_bits_stored() -> None:
    dataset = examples.ct
    dataset.RescaleSlope, dataset.RescaleIntercept = 1, -1024
    removed, affine = volume_of(dataset)
    removed[...] = True
    _, after, _ = defaced_frames(dataset, removed, np.full(removed.shape, -1000.0, np.float32), affine)
    assert np.all(after == 24)
    _, after, _ = defaced_frames(dataset, removed, np.full(removed.shape, -99999.0, np.float32), affine)
    assert after.min() == stored_range(dataset)[0]


def test_an_rle_instance_is_written_rle_again(tmp_path) -> None:
    dataset = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    pixels = dataset.pixel_array.copy()
    pixels[:5] = 0
    write_pixels(dataset, pixels)
    dataset.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    again = pydicom.dcmread(tmp_path / "x.dcm")
    assert again.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    assert np.array_equal(again.pixel_array, pixels)


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
