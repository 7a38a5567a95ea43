"""Array helpers shared by the stages: boxes, components, distances in mm, value scaling."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

from bidsdeface.volumes import (
    bounding_box,
    box_closed,
    box_opened,
    dice,
    dilate_mm,
    largest_component,
    real_values,
    rebuild_like,
    stored_data,
    stored_value,
    voxels_for_mm,
)


def test_dilate_mm_anisotropic() -> None:
    mask = np.zeros((21, 21, 21), bool)
    mask[10, 10, 10] = True
    grown = dilate_mm(mask, (1.0, 1.0, 4.0), 4.0)
    assert grown[10, 14, 10] and not grown[10, 15, 10]
    assert grown[10, 10, 11] and not grown[10, 10, 12]


def test_dilate_mm_keeps_what_a_euclidean_distance_transform_keeps() -> None:
    """The separable dilation against scipy's exact distance transform, on scattered voxels and the grids in use."""
    rng = np.random.default_rng(0)
    mask = np.zeros((60, 60, 40), bool)
    mask[rng.integers(5, 55, 30), rng.integers(5, 55, 30), rng.integers(3, 37, 30)] = True
    mask[20:30, 25:40, 10:20] = True
    grids = [(1.0, 1.0, 1.0), (0.88, 0.88, 0.88), (0.9999973, 1.0000001, 0.99999), (1.0156, 1.0156, 4.8), (2.0,) * 3]
    for zooms in grids:
        for margin_mm in (2.0, 6.0, 6.87, 10.0, 15.0):
            expected = ndimage.distance_transform_edt(~mask, sampling=zooms) <= margin_mm
            assert np.array_equal(dilate_mm(mask, zooms, margin_mm), expected), (zooms, margin_mm)


def test_bounding_box_padded_clipped_and_whole_when_empty() -> None:
    mask = np.zeros((10, 10, 10), bool)
    mask[0, 4:6, 9] = True
    assert bounding_box(mask, (2, 1, 3)) == (slice(0, 3), slice(3, 7), slice(6, 10))
    assert bounding_box(np.zeros((3, 4, 5), bool)) == (slice(0, 3), slice(0, 4), slice(0, 5))
    assert voxels_for_mm(5.0, (1.0, 2.0, 3.0)) == [6, 4, 3]
    assert voxels_for_mm(5.0, (1.0, 2.0, 3.0), extra=0) == [5, 3, 2]


def test_largest_component_is_six_connected() -> None:
    mask = np.zeros((8, 8, 8), bool)
    mask[1:4, 1:4, 1:4] = True  # 27 voxels
    mask[4, 4, 4] = True  # touches only by a corner: a separate component
    mask[6:8, 6:8, 6:8] = True  # 8 voxels
    assert largest_component(mask).sum() == 27 and not largest_component(mask)[4, 4, 4]
    assert not largest_component(np.zeros((3, 3, 3), bool)).any()


def test_dice() -> None:
    a = np.zeros((4, 4, 4), bool)
    b = a.copy()
    a[:2] = True
    b[1:3] = True
    assert dice(a, b) == 0.5 and dice(a, a) == 1.0 and dice(~a & a, ~a & a) == 0.0


def test_stored_and_real_values_round_trip_through_scaling() -> None:
    image = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    image.header.set_slope_inter(2.0, -10.0)
    image = nib.Nifti1Image.from_bytes(image.to_bytes())  # as loaded: scaling on the data proxy
    stored = stored_data(image)
    assert stored.dtype == np.int16 and np.array_equal(stored, np.arange(24).reshape(2, 3, 4))
    assert np.array_equal(real_values(stored, image), stored * 2.0 - 10.0)
    assert stored_value(image, -10.0) == 0.0 and stored_value(image, 1e9) == np.iinfo(np.int16).max
    rebuilt = rebuild_like(image, stored)
    assert rebuilt.get_data_dtype() == np.int16 and rebuilt.header.get_slope_inter() == (2.0, -10.0)
    reloaded = nib.Nifti1Image.from_bytes(rebuilt.to_bytes())
    assert np.array_equal(stored_data(reloaded), stored)


def test_box_closing_and_opening_equal_scipys_with_the_whole_box() -> None:
    rng = np.random.default_rng(3)
    for _ in range(30):
        shape, radius = tuple(rng.integers(3, 20, 3)), tuple(int(r) for r in rng.integers(0, 4, 3))
        mask = rng.random(shape) > rng.uniform(0.2, 0.8)
        box = np.ones(tuple(2 * r + 1 for r in radius), bool)
        assert np.array_equal(box_closed(mask, radius), ndimage.binary_closing(mask, box))
        assert np.array_equal(box_opened(mask, radius), ndimage.binary_opening(mask, box))
