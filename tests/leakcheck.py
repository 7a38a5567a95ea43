"""Search every byte of an output tree for planted identifiers.

Every file is read raw and, where it is compressed, decompressed too (gzip
images, PNG text chunks), so identifiers hidden in NIfTI headers, gzip headers
or figure metadata are found. New kinds of output are covered as soon as they
are written, because the whole tree is walked.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from datetime import date, timedelta
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Planted in clock-time attributes that are shifted, not removed; shifts are whole days, so
# the time is kept, and no marker (with its fraction) can be found inside it.
KEPT_CLOCK_TIME = "120000"
RUN_CLOCK_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", re.MULTILINE)


class Markers:
    """Unique strings, each planted in one place (``where`` maps marker -> place)."""

    def __init__(self, prefix: str = "LEAK") -> None:
        self.prefix = prefix
        self.where: dict[str, str] = {}

    def __call__(self, place: str) -> str:
        marker = f"{self.prefix}{len(self.where):03d}Q"
        self.where[marker] = place
        return marker

    def add(self, text: str, place: str) -> None:
        self.where[text] = place


def without_clock_stamps(log: str) -> str:
    """Drop the log's own wall-clock stamps, which may equal a planted clock time by chance."""
    return RUN_CLOCK_STAMP.sub("", log)


def _png_text(data: bytes) -> Iterator[bytes]:
    """Yield the text of a PNG's tEXt, zTXt and iTXt chunks (decompressed)."""
    offset = len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"tEXt":
            yield body
        elif kind == b"zTXt":
            keyword, _, rest = body.partition(b"\0")
            yield keyword + zlib.decompress(rest[1:])
        elif kind == b"iTXt":
            keyword, _, rest = body.partition(b"\0")
            compressed, text = rest[0], rest[2:].split(b"\0", 2)[-1]
            yield keyword + (zlib.decompress(text) if compressed else text)


def readable_forms(path: Path) -> Iterator[bytes]:
    """Yield a file's bytes and every decompressed form of them."""
    data = path.read_bytes()
    yield data
    if data[:2] == b"\x1f\x8b":
        yield gzip.decompress(data)
    if data.startswith(PNG_SIGNATURE):
        yield from _png_text(data)


class _Needles:
    """Markers found by substring, searched only inside the runs of bytes that markers are made of.

    A marker lies whole within a maximal run of its own characters, so each form is scanned
    once for such runs (a regular expression in C) and the markers are looked for in those
    runs alone: an image's pixels hold few of them, however large it is.
    """

    def __init__(self, markers: Iterable[str]) -> None:
        self.by_needle = {marker.lower().encode(): marker for marker in markers}
        characters = sorted(set(b"".join(self.by_needle)))
        self.separator = next(bytes([c]) for c in range(256) if c not in characters)
        shortest = min((len(needle) for needle in self.by_needle), default=1)
        pattern = b"[" + b"".join(re.escape(bytes([c])) for c in characters) + b"]{%d,}" % shortest
        self.runs = re.compile(pattern) if characters else None

    def found(self, data: bytes) -> set[str]:
        """The markers in ``data`` (case-insensitive)."""
        if self.runs is None:
            return set()
        runs = self.separator.join(set(self.runs.findall(data.lower())))
        return {marker for needle, marker in self.by_needle.items() if needle in runs}


def find_leaks(root: Path, markers: Iterable[str], texts: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """Return ``(where, marker)`` for every marker found (case-insensitive) below ``root`` or in ``texts``.

    Parameters
    ----------
    root : Path
        The output tree: file names and every byte of every file are searched.
    markers : iterable of str
        Identifying strings that must not appear.
    texts : dict, optional
        Other text to search (name -> content), such as captured logs.
    """
    needles = _Needles(markers)
    hits = set()
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        hits |= {(f"file name {name}", marker) for marker in needles.found(name.lower().encode())}
        if path.is_file():
            for form in readable_forms(path):
                hits |= {(name, marker) for marker in needles.found(form)}
    for label, text in (texts or {}).items():
        hits |= {(label, marker) for marker in needles.found(text.lower().encode())}
    return sorted(hits)


def _valid_forms(vr: str, n: int) -> list[str]:
    """Unique valid values of a date, time, UID, decimal or age VR: the planted form first, then other spellings."""
    if vr == "DA":
        day = date(1931, 1, 1) + timedelta(days=97 * n)
        return [day.strftime("%Y%m%d"), day.isoformat()]
    if vr == "TM":
        clock = f"{n % 24:02d}{(n * 7) % 60:02d}{(n * 13) % 60:02d}"
        return [f"{clock}.{n:04d}71", f"{clock[:2]}:{clock[2:4]}:{clock[4:]}.{n:04d}"]
    return {
        "DT": [f"{1931 + n}0{n % 9 + 1}1{n % 9}0{n % 9}{n % 6}{n % 9}{n % 6}3.{n:04d}29"],
        "UI": [f"2.25.{n + 100}{'8642097531' * 2}"],
        "DS": [f"{n}.97531"],
        "AS": [f"{n % 90 + 5:03d}Y"],
    }.get(vr, [])


def _dicom_value(vr: str, keyword: str, mark: Markers) -> str:
    """A unique, valid value of ``vr`` for ``keyword``; its searchable forms are recorded in ``mark``."""
    place = f"DICOM {keyword}"
    forms = _valid_forms(vr, len(mark.where) + 1)
    if not forms:
        return mark(place)
    for form in forms:
        mark.add(form, place)
    return forms[0]


def plant_dicom_markers(source: Path, target: Path, mark: Markers, times_kept: bool = False) -> int:
    """Copy a DICOM series with a unique marker in every PS3.15 Basic Profile attribute.

    Text attributes get ``LEAKnnnQ`` markers; dates, times, UIDs, ages and decimals get
    unique valid values; sequences get an item whose code meaning is a marker. File and
    folder names carry markers too. Returns the number of attributes planted. With
    ``times_kept`` (DICOM output, whose shifted dates keep every time of day) all times
    get :data:`KEPT_CLOCK_TIME`.
    """
    import pydicom
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.dataset import Dataset

    from bidsdeface.policy import CLOCK_KEYS, identifying_keys

    values: dict[int, tuple[str, object]] = {}
    for keyword in sorted(identifying_keys()):
        tag = tag_for_keyword(keyword)
        if tag is None or tag >> 16 in (0x0000, 0x0002):  # not a keyword; command set; file meta (set below)
            continue
        vr = dictionary_VR(tag)
        if vr == "SQ":
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator = "X1", "99LEAK"
            item.CodeMeaning = mark(f"DICOM {keyword} item")
            values[tag] = (vr, [item])
        elif vr == "TM" and (times_kept or keyword in CLOCK_KEYS):
            values[tag] = (vr, KEPT_CLOCK_TIME)  # dates move by whole days: times of day are kept
        elif vr in ("PN", "LO", "SH", "LT", "ST", "UT", "CS", "AE", "DA", "TM", "DT", "UI", "DS", "AS"):
            values[tag] = (vr, _dicom_value(vr, keyword, mark))
    folder = target / mark("DICOM folder name")
    folder.mkdir(parents=True)
    name_marker = mark("DICOM file name")
    for index, path in enumerate(sorted(source.glob("*.dcm"))):
        dataset = pydicom.dcmread(path)
        for tag, (vr, value) in values.items():
            if tag == tag_for_keyword("SOPInstanceUID"):
                value = f"{value}.{index + 1}"
                dataset.file_meta.MediaStorageSOPInstanceUID = value
            dataset.add_new(tag, vr, value)
        dataset.save_as(folder / f"{name_marker}_{index:04d}.dcm")
    return len(values)


def plant_nested_markers(folder: Path, mark: Markers) -> None:
    """Add markers where a header-only scrub would miss them, in every DICOM file below ``folder``.

    A private block (its creator name is a marker too) with text and numbers; an item of a
    sequence the profile keeps (AnatomicRegionSequence) holding identifying attributes, a
    UID and a private attribute; and identifiers inside the items of a sequence whose UIDs
    the profile replaces (ReferencedImageSequence).
    """
    import pydicom
    from pydicom.dataset import Dataset

    creator, text, nested = mark("DICOM private creator"), mark("DICOM private text"), mark("DICOM nested name")
    institution, nested_private = mark("DICOM nested institution"), mark("DICOM nested private")
    referenced = mark("DICOM referenced item name")
    nested_uid = _dicom_value("UI", "nested ReferencedSOPInstanceUID", mark)
    for path in sorted(folder.rglob("*.dcm")):
        dataset = pydicom.dcmread(path)
        block = dataset.private_block(0x0019, creator, create=True)
        block.add_new(0x10, "LO", text)
        block.add_new(0x11, "DS", "1.25")
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-A0100", "SRT", "Brain"
        item.PatientName, item.InstitutionName, item.ReferencedSOPInstanceUID = nested, institution, nested_uid
        item.private_block(0x0029, "NESTEDCREATOR", create=True).add_new(0x10, "LO", nested_private)
        dataset.AnatomicRegionSequence = [item]
        for reference in dataset.get("ReferencedImageSequence", []):
            reference.PatientID = referenced
        for frame in dataset.get("PerFrameFunctionalGroupsSequence", []):  # enhanced multi-frame objects
            frame.private_block(0x0021, creator, create=True).add_new(0x10, "LO", nested_private)
            frame.FrameContentSequence[0].FrameComments = institution
        dataset.save_as(path)
