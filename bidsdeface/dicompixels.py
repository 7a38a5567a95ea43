"""Defaced voxels written back into DICOM pixels: each frame's pixels found in the defaced volume.

Every pixel of every frame (classic single-frame or enhanced multi-frame) has a position
in patient space from the frame's ImagePositionPatient, ImageOrientationPatient and
PixelSpacing. The pixels whose nearest voxel of the processed volume was replaced take
that voxel's new value, converted to the frame's stored units (its own rescale slope and
intercept) and clipped to what BitsStored can hold; every other pixel keeps its stored
value bit for bit. BitsAllocated, PixelRepresentation, rescale and geometry are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Transfer syntaxes pydicom can encode again after the pixels changed (lossless only).
REENCODABLE_SYNTAXES = frozenset({"1.2.840.10008.1.2.5"})  # RLE Lossless
NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class FramePlane:
    """Where one frame's pixels are, and how its stored values become real ones.

    Attributes
    ----------
    position : numpy.ndarray
        Patient-space (LPS, mm) centre of the first pixel.
    along_row, along_column : numpy.ndarray
        LPS mm moved by one column index and by one row index.
    slope, intercept : float
        Real value = stored * slope + intercept.
    """

    position: np.ndarray
    along_row: np.ndarray
    along_column: np.ndarray
    slope: float
    intercept: float


def _first(dataset: Any, *path: str) -> Any:
    """Return ``dataset.path[0]...`` or None when any step is missing."""
    node = dataset
    for step in path:
        value = getattr(node, step, None) if node is not None else None
        if value is None:
            return None
        node = value[0] if step.endswith("Sequence") and len(value) else value
    return node


def _frame_attribute(dataset: Any, frame: Any, sequence: str, keyword: str) -> Any:
    """Read a functional-group attribute: per-frame, else shared, else top level."""
    shared = _first(dataset, "SharedFunctionalGroupsSequence")
    for source in (frame, shared):
        value = _first(source, sequence, keyword) if source is not None else None
        if value is not None:
            return value
    return getattr(dataset, keyword, None)


def frame_planes(dataset: Any) -> list[FramePlane]:
    """Return the plane of each frame (one for a classic image).

    Raises
    ------
    ValueError
        A frame has no position, orientation or pixel spacing.
    """
    frames = getattr(dataset, "PerFrameFunctionalGroupsSequence", None) or [None]
    planes = []
    for frame in frames:
        position = _frame_attribute(dataset, frame, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _frame_attribute(dataset, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _frame_attribute(dataset, frame, "PixelMeasuresSequence", "PixelSpacing")
        slope = _frame_attribute(dataset, frame, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _frame_attribute(dataset, frame, "PixelValueTransformationSequence", "RescaleIntercept")
        if position is None or orientation is None or spacing is None:
            raise ValueError("a frame has no image position, orientation or pixel spacing")
        cosines = np.asarray(orientation, dtype=float)
        between_rows, between_columns = (float(s) for s in spacing)
        planes.append(
            FramePlane(
                position=np.asarray(position, dtype=float),
                along_row=cosines[:3] * between_columns,
                along_column=cosines[3:] * between_rows,
                slope=float(slope if slope not in (None, "") else 1.0),
                intercept=float(intercept if intercept not in (None, "") else 0.0),
            )
        )
    return planes


def frame_voxels(plane: FramePlane, rows: int, columns: int, affine: np.ndarray) -> tuple[np.ndarray, ...]:
    """Return the nearest voxel index (i, j, k arrays of shape rows x columns) of every pixel of a frame."""
    row_index, column_index = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    lps = plane.position + column_index[..., None] * plane.along_row + row_index[..., None] * plane.along_column
    ras = lps @ LPS_TO_RAS.T
    to_voxel = np.linalg.inv(affine)
    voxels = ras @ to_voxel[:3, :3].T + to_voxel[:3, 3]
    return tuple(np.rint(voxels[..., axis]).astype(np.int64) for axis in range(3))


def stored_range(dataset: Any) -> tuple[int, int]:
    """Return the smallest and largest value BitsStored holds with this PixelRepresentation.

    >>> from types import SimpleNamespace
    >>> stored_range(SimpleNamespace(BitsStored=12, PixelRepresentation=0))
    (0, 4095)
    >>> stored_range(SimpleNamespace(BitsStored=16, PixelRepresentation=1))
    (-32768, 32767)
    """
    bits = int(dataset.BitsStored)
    if int(dataset.PixelRepresentation):
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def defaced_frames(
    dataset: Any, removed: np.ndarray, replacement: np.ndarray, affine: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Return the instance's stored pixels before and after defacing, and how many pixels were replaced.

    Parameters
    ----------
    dataset : pydicom.Dataset
        One instance (its pixel data decodable by pydicom).
    removed : numpy.ndarray of bool
        Voxels of the processed volume that were replaced.
    replacement : numpy.ndarray
        The processed volume after defacing, in real units.
    affine : numpy.ndarray
        The processed volume's voxel-to-RAS affine.
    """
    original = dataset.pixel_array
    frames = original.reshape((-1, *original.shape[-2:]))
    changed = frames.copy()
    low, high = stored_range(dataset)
    replaced = 0
    for index, plane in enumerate(frame_planes(dataset)):
        i, j, k = frame_voxels(plane, frames.shape[1], frames.shape[2], affine)
        inside = (
            (i >= 0) & (j >= 0) & (k >= 0) & (i < removed.shape[0]) & (j < removed.shape[1]) & (k < removed.shape[2])
        )
        chosen = np.zeros(inside.shape, bool)
        chosen[inside] = removed[i[inside], j[inside], k[inside]]
        real = replacement[i[chosen], j[chosen], k[chosen]]
        stored = np.clip(np.rint((real - plane.intercept) / plane.slope), low, high)
        changed[index][chosen] = stored.astype(frames.dtype)
        replaced += int(chosen.sum())
    return frames.reshape(original.shape), changed.reshape(original.shape), replaced


def write_pixels(dataset: Any, pixels: np.ndarray) -> None:
    """Store ``pixels`` in ``dataset``: re-encoded in a lossless syntax pydicom encodes, else Explicit VR Little Endian.

    The pixel value range attributes, which the new pixels may contradict, are removed.
    """
    from pydicom.uid import ExplicitVRLittleEndian

    syntax = str(dataset.file_meta.TransferSyntaxUID)
    bits_stored = int(dataset.BitsStored)
    if syntax in NATIVE_SYNTAXES and syntax != "1.2.840.10008.1.2.2":
        dataset.PixelData = np.ascontiguousarray(pixels, dtype=pixels.dtype.newbyteorder("<")).tobytes()
    elif syntax in REENCODABLE_SYNTAXES:
        dataset.compress(syntax, pixels, encoding_plugin="pydicom")
    else:
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.set_pixel_data(pixels, dataset.PhotometricInterpretation, bits_stored, generate_instance_uid=False)
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in dataset:
            del dataset[keyword]
