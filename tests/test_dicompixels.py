"""Defaced voxels written back into DICOM pixels: geometry, stored units, syntaxes."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom import examples
from pydicom.data import get_testdata_file

from bidsdeface.dicompixels import defaced_frames, stored_range, write_pixels

from .conftest import one_slice_volume


def test_replaced_pixels_take_the_new_value_and_the_rest_stay_bit_identical() -> None:
    dataset = examples.mr
    removed, affine = one_slice_volume(dataset)
    removed[:10, :20, 0] = True  # columns 0-9 of rows 0-19
    replacement = np.full(removed.shape, 7.0, dtype=np.float32)
    before, after, count = defaced_frames(dataset, removed, replacement, affine)
    assert count == 200 and np.all(after[:20, :10] == 7)
    assert np.array_equal(after[20:], before[20:]) and np.array_equal(after[:, 10:], before[:, 10:])


def test_stored_values_undo_the_rescale_and_clip_to_bits_stored() -> None:
    dataset = examples.ct
    dataset.RescaleSlope, dataset.RescaleIntercept = 1, -1024
    removed, affine = one_slice_volume(dataset)
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
