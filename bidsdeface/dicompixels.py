"""Defaced voxels written back into DICOM pixels: each frame's pixels found in the defaced volume.

Every pixel of every frame (classic single-frame or enhanced multi-frame) has a position
in patient space from the frame's ImagePositionPatient, ImageOrientationPatient and
PixelSpacing. The pixels whose nearest voxel of the processed volume was replaced take
that voxel's new value, converted to the frame's stored units (its own rescale slope and
intercept) and clipped to what BitsStored can hold; every other pixel keeps its stored
value bit for bit. BitsAllocated, PixelRepresentation, rescale and geometry are kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .dicom import frame_planes, frame_voxels

# Transfer syntaxes pydicom can encode again after the pixels changed (lossless only).
REENCODABLE_SYNTAXES = frozenset({"1.2.840.10008.1.2.5"})  # RLE Lossless
NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})


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
