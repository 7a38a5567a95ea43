"""Burned-in text in real slices: found where a workstation draws it, never in clean anatomy."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from bidsdeface.pixeltext import (
    TextBox,
    as_picture,
    filled,
    find_series_text,
    head_region,
    sampled_indices,
    text_boxes,
    volume_text_slices,
)

from .conftest import DICOM_SERIES, SHARED, needs_shared
from .textdraw import PLACES, draw_text, fonts

pytestmark = [needs_shared]


def middle_slice(name: str) -> np.ndarray:
    files = sorted((SHARED / DICOM_SERIES[name]).glob("*.dcm"))
    return pydicom.dcmread(files[len(files) // 2]).pixel_array


def overlaps(found: list[TextBox], drawn: tuple[int, int, int, int]) -> bool:
    top, bottom, left, right = drawn
    return any(b.top < bottom and top < b.bottom and b.left < right and left < b.right for b in found)


def test_the_head_is_found_and_air_is_not_head() -> None:
    picture = as_picture(middle_slice("trio"))
    head = head_region(picture)
    assert 0.15 < head.mean() < 0.8
    assert not head[:5, :5].any() and not head[-5:, -5:].any()


@pytest.mark.parametrize("name", ["trio", "prismaHFS", "ct"])
def test_clean_middle_slices_hold_no_text(name: str) -> None:
    assert text_boxes(middle_slice(name)) == []


@pytest.mark.parametrize("inverted", [False, True])
def test_drawn_text_is_found_in_every_font_and_place(inverted: bool) -> None:
    pixels = middle_slice("trio")
    for index, font in enumerate(fonts(14)):
        place = PLACES[index % len(PLACES)]
        drawn, box = draw_text(pixels, font, place, inverted)
        assert overlaps(text_boxes(drawn), box), (font, place, inverted)


def test_filled_boxes_leave_no_text_and_nothing_else_changed() -> None:
    pixels = middle_slice("prismaHFS")
    drawn, _ = draw_text(pixels, fonts(14)[1], "bottom-left")
    found = text_boxes(drawn)
    cleaned = filled(drawn, found, pixels.min())
    assert text_boxes(cleaned) == []
    inside = np.zeros(pixels.shape, bool)
    for b in found:
        inside[b.top : b.bottom, b.left : b.right] = True
    assert np.array_equal(cleaned[~inside], drawn[~inside])


def test_a_series_is_sampled_then_checked_whole_once_text_is_found(tmp_path) -> None:
    files = sorted((SHARED / DICOM_SERIES["prismaHFS"]).glob("*.dcm"))
    clean = find_series_text(files, every_instance=False)
    assert not clean.found and clean.checked == len(sampled_indices(len(files), False)) == 7
    copies = []
    for index, path in enumerate(files):
        dataset = pydicom.dcmread(path)
        if index == 5:  # not in the sample: found only because the full pass follows a hit
            dataset.PixelData = draw_text(dataset.pixel_array, fonts(14)[1])[0].tobytes()
        if index == 17:  # the sample's middle
            dataset.PixelData = draw_text(dataset.pixel_array, fonts(14)[0], "top-right", True)[0].tobytes()
        copies.append(tmp_path / f"{index:03d}.dcm")
        dataset.save_as(copies[-1])
    found = find_series_text(copies, every_instance=False)
    assert found.every_instance and found.checked == len(files)
    assert sorted(instance for instance, _ in found.boxes) == [5, 17]
    assert found.describe() == f"burned-in text found in 2 instance(s) ({len(files)} frame(s) checked, every instance)"


def test_the_last_check_finds_text_on_a_volume_slice() -> None:
    files = sorted((SHARED / DICOM_SERIES["prismaHFS"]).glob("*.dcm"))
    volume = np.stack([pydicom.dcmread(path).pixel_array.T for path in files], axis=-1)
    assert volume_text_slices(volume) == (0, 3)
    volume[:, :, len(files) // 2] = draw_text(volume[:, :, len(files) // 2].T, fonts(16)[1])[0].T
    assert volume_text_slices(volume) == (1, 3)
