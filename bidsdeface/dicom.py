"""Read a DICOM folder into series: who, which study, what kind, and what is wrong with it.

Headers are read with pydicom; nothing is written. Identifying attributes are
held in memory only to tell patients and studies apart; they never reach a log.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .classify import SeriesHeader

log = logging.getLogger(__name__)

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
# A gap of 2, 3... times both neighbouring spacings (give or take this much) is a missing slice.
MISSING_SLICE_TOLERANCE = 0.15
TRUNCATED = "missing or truncated pixel data"
UNCOMPRESSED_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"})


@dataclass(frozen=True)
class Patient:
    """The identity attributes that tell people apart (kept in memory only)."""

    patient_id: str
    name: str
    birth_date: str


@dataclass
class Series:
    """One DICOM series (all files sharing a SeriesInstanceUID).

    Attributes
    ----------
    uid, study_uid : str
        Series and study instance UIDs.
    patient : Patient
        Who the series belongs to.
    number : int
        SeriesNumber (0 when missing).
    header : SeriesHeader
        The attributes classification reads.
    files : list of Path
        The series' files, in reading order.
    acquired : datetime or None
        Earliest acquisition date and time of the series.
    problems : list of str
        What makes the series unsafe to convert (truncated files, missing slices).
    acquisition_kind : str
        MRAcquisitionType (MR) or reconstruction kernel (CT), to tell same-suffix series apart.
    gantry_tilt : float
        Gantry tilt in degrees (CT).
    """

    uid: str
    study_uid: str
    patient: Patient
    number: int
    header: SeriesHeader
    files: list[Path] = field(default_factory=list)
    acquired: datetime | None = None
    problems: list[str] = field(default_factory=list)
    acquisition_kind: str = ""
    gantry_tilt: float = 0.0
    _positions: list[tuple[float, ...]] = field(default_factory=list, repr=False)


@dataclass(frozen=True)
class Inventory:
    """Everything found in a DICOM folder.

    Attributes
    ----------
    series : list of Series
        Sorted by study, then series number.
    not_dicom : int
        Files that are not DICOM (ignored).
    unreadable : int
        DICOM files whose header could not be read (truncated or corrupt).
    """

    series: list[Series]
    not_dicom: int
    unreadable: int

    @property
    def patients(self) -> list[Patient]:
        """The distinct patients, in order of appearance."""
        return list(dict.fromkeys(s.patient for s in self.series))

    @property
    def studies(self) -> list[str]:
        """The distinct study UIDs, in order of appearance."""
        return list(dict.fromkeys(s.study_uid for s in self.series))


def _text(dataset: Any, keyword: str) -> str:
    value = dataset.get(keyword)
    return "" if value is None else str(value).strip()


def _number(dataset: Any, keyword: str) -> float | None:
    try:
        value = dataset.get(keyword)
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _multi(dataset: Any, keyword: str) -> tuple[str, ...]:
    value = dataset.get(keyword)
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(part.strip().upper() for part in value.split("\\"))
    return tuple(str(part).strip().upper() for part in value)


def parse_dicom_datetime(date: str, time: str = "") -> datetime | None:
    """Combine a DICOM DA (``YYYYMMDD``) and TM (``HHMMSS.ffffff``) value; None if unreadable.

    >>> parse_dicom_datetime("20100723", "085817.9625")
    datetime.datetime(2010, 7, 23, 8, 58, 17, 962500)
    >>> parse_dicom_datetime("", "0858") is None
    True
    """
    date = date.strip()
    time = time.strip().replace(":", "")
    if len(date) != 8 or not date.isdigit():
        return None
    whole, _, fraction = time.partition(".")
    whole = (whole + "000000")[:6] if whole.isdigit() and len(whole) in (2, 4, 6) else "000000"
    digits = (fraction + "000000")[:6] if fraction.isdigit() else "000000"
    try:
        return datetime.strptime(f"{date}{whole}{digits}", "%Y%m%d%H%M%S%f")
    except ValueError:
        return None


def _acquired(dataset: Any) -> datetime | None:
    stamp = _text(dataset, "AcquisitionDateTime")
    if len(stamp) >= 8:
        found = parse_dicom_datetime(stamp[:8], stamp[8:].split("+")[0].split("-")[0])
        if found is not None:
            return found
    for date_key, time_key in (
        ("AcquisitionDate", "AcquisitionTime"),
        ("SeriesDate", "SeriesTime"),
        ("ContentDate", "ContentTime"),
        ("StudyDate", "StudyTime"),
    ):
        found = parse_dicom_datetime(_text(dataset, date_key), _text(dataset, time_key))
        if found is not None:
            return found
    return None


def _pixel_problem(dataset: Any) -> str:
    """Return why the pixel data are unusable (missing, or shorter than the header says), or ``""``."""
    if "PixelData" not in dataset:
        return TRUNCATED
    syntax = str(getattr(dataset.file_meta, "TransferSyntaxUID", ""))
    if syntax not in UNCOMPRESSED_SYNTAXES:
        return "" if len(dataset.PixelData) > 0 else "empty pixel data"
    try:
        expected = (
            int(dataset.Rows)
            * int(dataset.Columns)
            * int(dataset.get("SamplesPerPixel", 1))
            * int(dataset.get("NumberOfFrames", 1) or 1)
            * int(dataset.BitsAllocated)
            // 8
        )
    except (AttributeError, TypeError, ValueError):
        return "image size attributes missing"
    return TRUNCATED if len(dataset.PixelData) < expected else ""


def _slice_position(dataset: Any) -> tuple[float, ...] | None:
    try:
        orientation = np.asarray(dataset.ImageOrientationPatient, dtype=float)
        position = np.asarray(dataset.ImagePositionPatient, dtype=float)
    except (AttributeError, TypeError, ValueError):
        return None
    if orientation.shape != (6,) or position.shape != (3,):
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    return (*np.round(orientation, 3), float(np.dot(normal, position)))


def missing_slice_gaps(positions: list[float]) -> int:
    """Count gaps in sorted slice positions that are a whole multiple (>= 2) of both neighbouring spacings.

    Unequal but regular spacing (a CT with two slice thicknesses) is not a gap.

    >>> missing_slice_gaps([0, 1, 2, 4, 5, 6])
    1
    >>> missing_slice_gaps([0, 4, 8, 12, 13.1, 20.1, 27.1])
    0
    """
    spacing = np.diff(np.unique(np.round(positions, 3)))
    gaps = 0
    for i in range(1, len(spacing) - 1):
        for neighbour in (spacing[i - 1], spacing[i + 1]):
            ratio = spacing[i] / neighbour if neighbour > 0 else 0.0
            if not (ratio > 1.5 and abs(ratio - round(ratio)) <= MISSING_SLICE_TOLERANCE):
                break
        else:
            gaps += 1
    return gaps


def _new_series(dataset: Any) -> Series:
    modality = _text(dataset, "Modality").upper()
    burned = _text(dataset, "BurnedInAnnotation").upper()
    kind = _text(dataset, "MRAcquisitionType") if modality == "MR" else _text(dataset, "ConvolutionKernel")
    return Series(
        uid=_text(dataset, "SeriesInstanceUID"),
        study_uid=_text(dataset, "StudyInstanceUID"),
        patient=Patient(_text(dataset, "PatientID"), _text(dataset, "PatientName"), _text(dataset, "PatientBirthDate")),
        number=int(_number(dataset, "SeriesNumber") or 0),
        header=SeriesHeader(
            modality=modality,
            sop_class=_text(dataset, "SOPClassUID"),
            image_type=_multi(dataset, "ImageType"),
            scanning_sequence=_multi(dataset, "ScanningSequence"),
            echo_time=_number(dataset, "EchoTime"),
            repetition_time=_number(dataset, "RepetitionTime"),
            inversion_time=_number(dataset, "InversionTime"),
            body_part=_text(dataset, "BodyPartExamined"),
            burned_in_annotation=burned,
            text=f"{_text(dataset, 'SeriesDescription')} {_text(dataset, 'ProtocolName')}",
        ),
        acquisition_kind="".join(c for c in kind.lower() if c.isalnum())[:12],
        gantry_tilt=_number(dataset, "GantryDetectorTilt") or 0.0,
    )


def _walk(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(Path(root) / name for name in sorted(files))
    return found


def scan_dicom_folder(folder: Path) -> Inventory:
    """Read every file below ``folder`` and group the DICOM ones into series.

    Returns
    -------
    Inventory
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    by_uid: dict[str, Series] = {}
    problems: dict[str, list[str]] = defaultdict(list)
    not_dicom = unreadable = 0
    for path in _walk(folder):
        try:
            dataset = pydicom.dcmread(path)
        except InvalidDicomError:
            not_dicom += 1
            continue
        except Exception as exc:  # pydicom raises many kinds on truncated or corrupt files
            log.debug("a DICOM file could not be read (%s)", type(exc).__name__)
            unreadable += 1
            continue
        if _text(dataset, "SOPClassUID") == DICOMDIR_CLASS or not _text(dataset, "SeriesInstanceUID"):
            not_dicom += 1
            continue
        uid = _text(dataset, "SeriesInstanceUID")
        series = by_uid.get(uid)
        if series is None:
            series = by_uid[uid] = _new_series(dataset)
        series.files.append(path)
        acquired = _acquired(dataset)
        if acquired is not None and (series.acquired is None or acquired < series.acquired):
            series.acquired = acquired
        problem = _pixel_problem(dataset) if series.header.sop_class.startswith("1.2.840.10008.5.1.4.1.1.") else ""
        if problem:
            problems[uid].append(problem)
        position = _slice_position(dataset)
        if position is not None and int(dataset.get("NumberOfFrames", 1) or 1) == 1:
            series._positions.append(position)
    for uid, series in by_uid.items():
        for problem in sorted(set(problems[uid])):
            count = problems[uid].count(problem)
            series.problems.append(f"{count} file(s) with {problem}")
        series.problems.extend(_geometry_problems(series))
    ordered = sorted(by_uid.values(), key=lambda s: (s.study_uid, s.number, s.uid))
    return Inventory(ordered, not_dicom, unreadable)


def _geometry_problems(series: Series) -> list[str]:
    stacks: dict[tuple[float, ...], list[float]] = defaultdict(list)
    for *orientation, distance in series._positions:
        stacks[tuple(orientation)].append(distance)
    problems = []
    for distances in stacks.values():
        gaps = missing_slice_gaps(distances)
        if gaps:
            problems.append(f"missing slices ({gaps} gap(s) in the slice positions)")
    return problems


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
