"""Burned-in text: find text drawn into image pixels, offline, and fill it with background.

The detector is rapidocr's text detection (the PP-OCR detection model that ships inside
the rapidocr wheel, Apache-2.0) on onnxruntime, on the CPU: detection only, so no text
is ever read, let alone logged. A box counts as burned-in text only when most of it lies
outside the head (scanners draw annotations over air, never into the brain), and when
it is not taller than a line of text could be on that image.

Which instances are looked at: every one of a series that says it may carry text
(BurnedInAnnotation present and not NO), and for ordinary acquisitions a sample: first,
middle, last and every Nth, N chosen so that about :data:`SAMPLED_INSTANCES` are checked.
When the sample finds text, every instance is checked.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from .dicom import frame_planes, frame_voxels
from .images import otsu_threshold
from .volumes import rebuild_like, stored_data

log = logging.getLogger(__name__)

DETECTOR = "rapidocr PP-OCR text detection (model inside the rapidocr wheel) on onnxruntime, CPU"
DETECTION_SIDE = 512
SAMPLED_INSTANCES = 7  # 0.15 s each on 2 cores (256 or 512 pixels square): about 1 s per ordinary series
LAST_CHECK_SLICES = 3  # the defaced image's slices at a quarter, half and three quarters
MAX_CLEANING_PASSES = 4  # detect, fill, and look again: a box can miss the end of a line
MAX_HEAD_SHARE = 0.5  # a box with more of its area in the head is anatomy, not an annotation
MAX_LINE_SHARE = 0.2  # a box taller than this share of the image is not a line of text
MIN_LINE_ASPECT = 2.0  # a line of a name, date or ID is at least twice as wide as it is tall
MIN_BOX_SIDE = 4  # pixels: smaller boxes are noise
WINDOW_PERCENTILES = (0.5, 99.9)
HEAD_SEAL_PX = 2  # the head mask is closed this much so that thin gaps at its edge are not air


@dataclass(frozen=True)
class TextBox:
    """A detected text box in pixel coordinates (rows ``top:bottom``, columns ``left:right``)."""

    top: int
    bottom: int
    left: int
    right: int


@dataclass
class TextFinding:
    """What the detector found in a series.

    Attributes
    ----------
    checked : int
        Frames looked at.
    boxes : dict
        ``(instance index, frame index)`` -> boxes, for frames with text only.
    every_instance : bool
        Every instance was looked at (not a sample).
    seconds : float
        Time the detector took.
    """

    checked: int = 0
    boxes: dict[tuple[int, int], list[TextBox]] = field(default_factory=dict)
    every_instance: bool = False
    seconds: float = 0.0

    @property
    def found(self) -> bool:
        """Text was found in at least one frame."""
        return bool(self.boxes)

    def describe(self) -> str:
        """Say what was found with counts only (never text, never where in the image)."""
        instances = len({instance for instance, _ in self.boxes})
        sample = "every instance" if self.every_instance else "a sample"
        return f"burned-in text found in {instances} instance(s) ({self.checked} frame(s) checked, {sample})"


@lru_cache(maxsize=1)
def _engine(threads: int) -> Any:
    from rapidocr import RapidOCR

    params = {
        "Global.use_cls": False,
        "Global.use_rec": False,
        "Global.log_level": "error",
        "EngineConfig.onnxruntime.intra_op_num_threads": threads,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        # Frames are scaled so that their short side is 512 (rapidocr's default, 736, costs twice as
        # much and finds no smaller text: 6-pixel text on a 256-pixel slice either way).
        "Det.limit_side_len": DETECTION_SIDE,
        "Det.limit_type": "min",
    }
    return RapidOCR(params=params)


def as_picture(pixels: np.ndarray) -> np.ndarray:
    """Return a frame as 8-bit grey (robust window), the form the detector reads."""
    values = np.asarray(pixels, dtype=np.float32)
    low, high = np.percentile(values, WINDOW_PERCENTILES)
    if high <= low:
        high = low + 1.0
    return np.clip((values - low) / (high - low) * 255.0, 0, 255).astype(np.uint8)


def head_region(picture: np.ndarray) -> np.ndarray:
    """Return the head on an 8-bit frame: the largest bright component, holes filled, sealed."""
    bright = picture > otsu_threshold(picture[picture > 0]) if picture.any() else np.zeros(picture.shape, bool)
    labels, count = ndimage.label(bright)
    if count == 0:
        return bright
    largest = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    sealed = ndimage.binary_closing(largest, iterations=HEAD_SEAL_PX)
    return ndimage.binary_fill_holes(sealed)


def detect_boxes(picture: np.ndarray, threads: int = 1) -> list[TextBox]:
    """Return every box the detector finds on an 8-bit frame (before the head rule)."""
    result = _engine(threads)(np.stack([picture] * 3, axis=-1), use_det=True, use_cls=False, use_rec=False)
    found = getattr(result, "boxes", None)
    if found is None:
        return []
    rows, columns = picture.shape
    boxes = []
    for corners in np.asarray(found):
        top, bottom = int(max(corners[:, 1].min(), 0)), int(min(math.ceil(corners[:, 1].max()), rows))
        left, right = int(max(corners[:, 0].min(), 0)), int(min(math.ceil(corners[:, 0].max()), columns))
        if bottom - top >= MIN_BOX_SIDE and right - left >= MIN_BOX_SIDE:
            boxes.append(TextBox(top, bottom, left, right))
    return boxes


def _line_shaped(box: TextBox, rows: int) -> bool:
    """Return whether a box can be a line of text: not too tall for the image, and wide.

    >>> _line_shaped(TextBox(0, 12, 0, 120), 256), _line_shaped(TextBox(0, 80, 0, 75), 256)
    (True, False)
    """
    height, width = box.bottom - box.top, box.right - box.left
    return height <= MAX_LINE_SHARE * rows and width >= MIN_LINE_ASPECT * height


def text_boxes(pixels: np.ndarray, threads: int = 1) -> list[TextBox]:
    """Return the boxes of burned-in text on one frame: detected, line-sized, mostly outside the head."""
    picture = as_picture(pixels)
    boxes = [b for b in detect_boxes(picture, threads) if _line_shaped(b, picture.shape[0])]
    if not boxes:
        return []
    # The head is found with the boxes blanked, so that a bright banner is not taken for (part of) it;
    # a box inside the head leaves a hole, which is filled back.
    head = head_region(filled(picture, boxes, 0))
    return [b for b in boxes if head[b.top : b.bottom, b.left : b.right].mean() <= MAX_HEAD_SHARE]


def sampled_indices(count: int, every_instance: bool, wanted: int = SAMPLED_INSTANCES) -> list[int]:
    """Return the instances to look at: all, or the first, middle and last and every Nth (about ``wanted``).

    >>> sampled_indices(176, False)
    [0, 36, 72, 88, 108, 144, 175]
    >>> sampled_indices(35, False, 3), sampled_indices(3, False), sampled_indices(4, True)
    ([0, 17, 34], [0, 1, 2], [0, 1, 2, 3])
    """
    if every_instance or count <= wanted:
        return list(range(count))
    step = math.ceil(count / max(wanted - 2, 1))
    return sorted({0, count // 2, count - 1, *range(0, count, step)})


def may_carry_text(burned_in_annotation: str) -> bool:
    """Return whether a series says it may carry text: BurnedInAnnotation present and not NO.

    >>> may_carry_text(""), may_carry_text("NO"), may_carry_text("UNKNOWN")
    (False, False, True)
    """
    flag = burned_in_annotation.strip().upper()
    return bool(flag) and flag != "NO"


def frames_of(dataset: Any) -> np.ndarray:
    """Return an instance's frames as (frames, rows, columns)."""
    pixels = dataset.pixel_array
    return pixels.reshape((-1, *pixels.shape[-2:]))


def find_series_text(files: list[Path], every_instance: bool, threads: int = 1) -> TextFinding:
    """Look for burned-in text in a series: a sample first, then every frame when the sample finds some."""
    import time

    started = time.perf_counter()
    finding = _look(files, sampled_indices(len(files), every_instance), every_instance, threads)
    if finding.found and not every_instance:
        finding = _look(files, list(range(len(files))), True, threads)
        every_instance = True
    finding.every_instance = every_instance
    finding.seconds = round(time.perf_counter() - started, 2)
    return finding


def _look(files: list[Path], indices: list[int], every_frame: bool, threads: int = 1) -> TextFinding:
    import pydicom

    finding = TextFinding()
    for index in indices:
        frames = frames_of(pydicom.dcmread(files[index]))
        for frame_index in sampled_indices(len(frames), every_frame):
            boxes = all_text_boxes(frames[frame_index], threads)
            finding.checked += 1
            if boxes:
                finding.boxes[(index, frame_index)] = boxes
    return finding


def all_text_boxes(pixels: np.ndarray, threads: int = 1) -> list[TextBox]:
    """Return the text boxes of a frame, looking again after filling them until nothing more is found.

    A box can miss the end of a line; once the rest is blanked, the detector sees what was left.
    """
    found: list[TextBox] = []
    frame = pixels
    for _ in range(MAX_CLEANING_PASSES):
        boxes = text_boxes(frame, threads)
        if not boxes:
            break
        found += boxes
        frame = filled(frame, boxes, pixels.min())
    return found


def volume_text_slices(volume: np.ndarray, threads: int = 1, wanted: int = LAST_CHECK_SLICES) -> tuple[int, int]:
    """Return how many sampled slices (along the third axis) of a 3D volume hold text, and how many were looked at.

    The last check of the BIDS path, on the defaced image: slices of dcm2niix's third axis are
    the acquired ones, where a workstation draws its text (on every slice); the slices at the
    quarters are looked at, not the first and last, which often cut through the top of the head.
    """
    count = volume.shape[2]
    indices = sorted({count * quarter // (wanted + 1) for quarter in range(1, wanted + 1)})
    found = sum(bool(text_boxes(np.asarray(volume[:, :, k]).T, threads)) for k in indices)
    return found, len(indices)


def filled(pixels: np.ndarray, boxes: list[TextBox], background: float) -> np.ndarray:
    """Return a frame with every box filled with ``background`` (stored units)."""
    cleaned = pixels.copy()
    for box in boxes:
        cleaned[box.top : box.bottom, box.left : box.right] = background
    return cleaned


def cleaned_volume(image: nib.Nifti1Image, files: list[Path], finding: TextFinding) -> nib.Nifti1Image:
    """Return ``image`` (the series' conversion) with the voxels of every text box set to its lowest value.

    Each box's pixels are placed in the volume through their frame's geometry (nearest voxel),
    as the defaced pixels are placed back into DICOM. Stored values, dtype and scaling are kept.
    """
    import pydicom

    stored = stored_data(image).copy()
    volume = stored.reshape((*stored.shape[:3], -1))
    background = volume.min()
    for (index, frame_index), boxes in finding.boxes.items():
        dataset = pydicom.dcmread(files[index], stop_before_pixels=True)
        plane = frame_planes(dataset)[frame_index]
        i, j, k = frame_voxels(plane, int(dataset.Rows), int(dataset.Columns), image.affine)
        inside = (i >= 0) & (j >= 0) & (k >= 0) & (i < volume.shape[0]) & (j < volume.shape[1])
        inside &= k < volume.shape[2]
        for box in boxes:
            region = np.zeros(inside.shape, bool)
            region[box.top : box.bottom, box.left : box.right] = True
            region &= inside
            volume[i[region], j[region], k[region]] = background
    return rebuild_like(image, stored)
