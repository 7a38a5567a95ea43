"""Scrub the text that travels with the pixels: sidecars, tables, NIfTI headers and dates.

Every function here is pure: it takes content and returns clean content plus a
report that names what was removed or changed, never the values.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

import nibabel as nib

from .errors import ScrubError
from .policy import (
    AGE_COLUMNS,
    CLOCK_KEYS,
    COLUMN_DESCRIPTION_FIELDS,
    IDENTIFYING_KEYS,
    MODALITY_SIDECAR_KEYS,
    REQUIRED_CLOCK_PLACEHOLDERS,
    SCREENED_SIDECAR_KEYS,
    TABLE_COLUMNS,
    TIME_COLUMNS,
    SitePolicy,
)

NIFTI_TEXT_FIELDS: tuple[str, ...] = ("descrip", "aux_file", "intent_name", "db_name", "data_type")
LATEST_SHIFTED_YEAR = 1925
OLDEST_AGE = 89
OLDEST_AGE_LABEL = "89"  # BIDS: "use 89 for all ages 89 and over" (HIPAA Safe Harbor)
MISSING = "n/a"

_FRACTION = r"(?P<fraction>\.\d+)?"
_ZONE = r"(?P<zone>Z|[+-]\d{2}:?\d{2})?"
_ISO_DATE = r"(?P<Y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})"
_ISO_TIME = rf"(?P<H>\d{{2}}):(?P<M>\d{{2}}):(?P<S>\d{{2}}){_FRACTION}"
_DICOM_DATE = r"(?P<Y>\d{4})(?P<m>\d{2})(?P<d>\d{2})"
_DICOM_TIME = rf"(?P<H>\d{{2}})(?P<M>\d{{2}})(?P<S>\d{{2}}){_FRACTION}"
_CLOCK_FORMATS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        ("datetime", rf"{_ISO_DATE}(?P<sep>[T ]){_ISO_TIME}{_ZONE}"),
        ("date", _ISO_DATE),
        ("time", _ISO_TIME),
        ("dicom-datetime", rf"{_DICOM_DATE}{_DICOM_TIME}{_ZONE}"),
        ("dicom-date", _DICOM_DATE),
        ("dicom-time", _DICOM_TIME),
    )
)

# Patterns that flag kept free text for a person to review.
SCREEN_PATTERNS: dict[str, re.Pattern[str]] = {
    "person name": re.compile(
        r"[A-Za-z]+\^[A-Za-z]+|\b(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?\s+[A-Z][a-z]+|\b[A-Z][a-z]+,?\s+[A-Z][a-z]{2,}\b"
    ),
    "record number": re.compile(r"\b(?:MRN|PID|ID|No|Nr)\.?\s*[:#]?\s*\d{3,}|\d{6,}", re.IGNORECASE),
    "date": re.compile(
        r"\b(?:1[89]|20)\d{2}[-/.]?(?:0[1-9]|1[0-2])[-/.]?(?:0[1-9]|[12]\d|3[01])\b"
        r"|\b\d{1,2}[-/.]\d{1,2}[-/.](?:\d{4}|\d{2})\b"
        r"|\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.?\s+\d{1,4}\b",
        re.IGNORECASE,
    ),
    "phone number": re.compile(r"\+?\(?\d{2,4}\)?[ .-]\d{2,4}[ .-]\d{2,5}(?:[ .-]\d{2,5})?"),
    "e-mail": re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"),
}


def shift_clock_text(text: str, offset: timedelta) -> str | None:
    """Shift a date, time or date-time string by ``offset``, keeping its format.

    Times of day without a date wrap around midnight. Returns None for text in
    no known format, or for a shifted date later than ``LATEST_SHIFTED_YEAR``.

    >>> shift_clock_text("2024-03-15T14:22:07.25", -timedelta(days=40000, seconds=3600))
    '1914-09-09T13:22:07.25'
    >>> shift_clock_text("14:22:07", -timedelta(days=40000, seconds=3600))
    '13:22:07'
    >>> shift_clock_text("yesterday", timedelta(0)) is None
    True
    """
    text = text.strip()
    for kind, pattern in _CLOCK_FORMATS:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        parts = match.groupdict()
        fraction = parts.get("fraction") or ""
        microseconds = int((fraction[1:] + "000000")[:6]) if fraction else 0
        try:
            if "Y" in parts:
                moment = datetime(int(parts["Y"]), int(parts["m"]), int(parts["d"]))
            else:
                moment = datetime(2000, 1, 1)
            if "H" in parts:
                moment = moment.replace(
                    hour=int(parts["H"]), minute=int(parts["M"]), second=int(parts["S"]), microsecond=microseconds
                )
            shifted = moment + offset
        except (ValueError, OverflowError):
            return None
        if "Y" in parts and shifted.year > LATEST_SHIFTED_YEAR:
            return None
        return _format_clock(kind, shifted, fraction, parts.get("zone") or "", parts.get("sep") or "T")
    return None


def _format_clock(kind: str, moment: datetime, fraction: str, zone: str, separator: str) -> str:
    digits = min(len(fraction) - 1, 6) if fraction else 0
    fraction_text = f".{moment.microsecond:06d}"[: digits + 1] if digits else ""
    day: date = moment.date()
    clock: time = moment.time()
    if kind == "datetime":
        return f"{day.isoformat()}{separator}{clock:%H:%M:%S}{fraction_text}{zone}"
    if kind == "date":
        return day.isoformat()
    if kind == "time":
        return f"{clock:%H:%M:%S}{fraction_text}"
    if kind == "dicom-datetime":
        return f"{day:%Y%m%d}{clock:%H%M%S}{fraction_text}{zone}"
    if kind == "dicom-date":
        return f"{day:%Y%m%d}"
    return f"{clock:%H%M%S}{fraction_text}"


def screen_text(value: Any) -> tuple[str, ...]:
    """Return the kinds of identifying pattern found in ``value`` (strings, nested lists and dicts).

    >>> screen_text("Scan by Dr. Jones, MRN 4471923, call +44 20 7946 0958")
    ('person name', 'record number', 'phone number')
    >>> screen_text(["t1_mprage_sag", 3])
    ()
    """
    texts: list[str] = []

    def collect(item: Any) -> None:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict):
            for nested in item.values():
                collect(nested)
        elif isinstance(item, list):
            for nested in item:
                collect(nested)

    collect(value)
    return tuple(kind for kind, pattern in SCREEN_PATTERNS.items() if any(pattern.search(text) for text in texts))


@dataclass(frozen=True)
class ScrubReport:
    """What scrubbing did to one file: names only, never values.

    Attributes
    ----------
    removed : tuple of str
        Keys or columns removed.
    shifted : tuple of str
        Keys or columns whose dates and times were shifted.
    replaced : tuple of str
        Keys or columns whose values were generalised or replaced by placeholders.
    flagged : dict
        Kept keys or columns whose text matched identifying patterns, with the pattern kinds.
    """

    removed: tuple[str, ...] = ()
    shifted: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    flagged: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        """Return the report as JSON-ready content (empty parts left out)."""
        record: dict[str, Any] = {
            "Removed": list(self.removed),
            "DatesShifted": list(self.shifted),
            "Replaced": list(self.replaced),
            "Flagged": {name: list(kinds) for name, kinds in self.flagged.items()},
        }
        return {name: value for name, value in record.items() if value}


def scrub_modality(suffix: str, datatype: str) -> str:
    """Return the allow-list a scan uses: ``mri``, ``pet`` or ``ct``.

    >>> scrub_modality("pet", "pet"), scrub_modality("ct", "anat"), scrub_modality("T2w", "anat")
    ('pet', 'ct', 'mri')
    """
    if datatype == "pet" or suffix == "pet":
        return "pet"
    return "ct" if suffix == "ct" else "mri"


def scrub_sidecar(
    metadata: dict[str, Any], modality: str, site: SitePolicy, date_offset: timedelta | None
) -> tuple[dict[str, Any], ScrubReport]:
    """Return a sidecar holding only allowed keys, with dates shifted or dropped.

    Parameters
    ----------
    metadata : dict
        The source sidecar (after BIDS inheritance).
    modality : str
        ``mri``, ``pet`` or ``ct`` (see :func:`scrub_modality`).
    site : SitePolicy
        Keys a site keeps or drops beyond the built-in allow-list.
    date_offset : timedelta or None
        The subject's date shift; None removes dates and clock times.

    Returns
    -------
    dict, ScrubReport

    Raises
    ------
    ScrubError
        An identifying key survived that nobody asked to keep (a bug: fail closed).

    Examples
    --------
    >>> clean, report = scrub_sidecar(
    ...     {"EchoTime": 0.003, "InstitutionName": "x", "AcquisitionTime": "10:00:00"},
    ...     "mri", SitePolicy(), -timedelta(days=40000, seconds=60))
    >>> clean, report.removed, report.shifted
    ({'EchoTime': 0.003, 'AcquisitionTime': '09:59:00'}, ('InstitutionName',), ('AcquisitionTime',))
    """
    allowed = MODALITY_SIDECAR_KEYS[modality]
    placeholders = REQUIRED_CLOCK_PLACEHOLDERS.get(modality, {})
    clean: dict[str, Any] = {}
    removed: list[str] = []
    shifted: list[str] = []
    replaced: list[str] = []
    flagged: dict[str, tuple[str, ...]] = {}
    for key, value in metadata.items():
        if key in site.drop_sidecar_keys:
            removed.append(key)
        elif key in CLOCK_KEYS and isinstance(value, str):
            new = None if date_offset is None else shift_clock_text(value, date_offset)
            if new is not None:
                clean[key] = new
                shifted.append(key)
            elif key in placeholders:
                clean[key] = placeholders[key]
                replaced.append(key)
            else:
                removed.append(key)
        elif key in CLOCK_KEYS and key not in allowed:
            removed.append(key)
        elif key in allowed or key in site.keep_sidecar_keys:
            clean[key] = value
            if key in site.keep_sidecar_keys or key in SCREENED_SIDECAR_KEYS:
                kinds = screen_text(value)
                if kinds:
                    flagged[key] = kinds
        else:
            removed.append(key)
    for key, value in placeholders.items():
        if key not in clean and key in metadata:
            clean[key] = value
            replaced.append(key)
    transformed = set(shifted) | set(replaced) | set(site.keep_sidecar_keys)
    leaked = sorted(key for key in clean if key in IDENTIFYING_KEYS and key not in transformed)
    if leaked:
        raise ScrubError(f"identifying sidecar key(s) survived scrubbing: {', '.join(leaked)}")
    return clean, ScrubReport(tuple(removed), tuple(shifted), tuple(replaced), flagged)


def generalise_age(text: str) -> str | None:
    """Return an age for sharing: ages of 89 and over become ``89``; None if unreadable.

    >>> generalise_age("34.5"), generalise_age("93"), generalise_age("89+"), generalise_age("old")
    ('34.5', '89', '89', None)
    """
    text = text.strip()
    if text in (MISSING, ""):
        return MISSING
    if text.endswith("+") and text[:-1].replace(".", "", 1).isdigit():
        return OLDEST_AGE_LABEL if float(text[:-1]) >= OLDEST_AGE else None
    try:
        age = float(text)
    except ValueError:
        return None
    if age != age or age < 0:
        return None
    return OLDEST_AGE_LABEL if age >= OLDEST_AGE else text


@dataclass(frozen=True)
class Table:
    """A BIDS TSV table as text cells.

    Attributes
    ----------
    columns : tuple of str
    rows : tuple of tuple of str
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    @classmethod
    def parse(cls, text: str) -> Table:
        """Parse TSV text (header line first; short rows padded with ``n/a``)."""
        lines = [line.rstrip("\r") for line in text.splitlines() if line.strip()]
        if not lines:
            return cls((), ())
        columns = tuple(cell.strip() for cell in lines[0].split("\t"))
        rows = []
        for line in lines[1:]:
            cells = [cell.strip() for cell in line.split("\t")][: len(columns)]
            rows.append(tuple(cells + [MISSING] * (len(columns) - len(cells))))
        return cls(columns, tuple(rows))

    def to_text(self) -> str:
        """Return the table as TSV text."""
        return "".join("\t".join(cells) + "\n" for cells in (self.columns, *self.rows))


def scrub_table(
    table: Table,
    kind: str,
    site: SitePolicy,
    date_offset: timedelta | None,
    relabel: Callable[[str], str | None],
) -> tuple[Table, ScrubReport]:
    """Return a ``participants``, ``sessions`` or ``scans`` table ready to share.

    Only allowed columns (``TABLE_COLUMNS`` and the site's ``keep_columns``)
    leave; ages of 89 and over become ``89``; ``acq_time`` is shifted, or
    removed when ``date_offset`` is None. ``relabel`` maps each row's first
    column (participant_id, session_id or filename) to its output value, or to
    None to leave the row out.

    >>> table = Table(("participant_id", "age", "name"), (("sub-1", "93", "Ann"), ("sub-2", "40", "Bob")))
    >>> clean, report = scrub_table(table, "participants", SitePolicy(), None, lambda x: x)
    >>> clean.columns, clean.rows, report.removed, report.replaced
    (('participant_id', 'age'), (('sub-1', '89'), ('sub-2', '40')), ('name',), ('age',))
    """
    allowed = set(TABLE_COLUMNS[kind]) | set(site.keep_columns)
    id_column = TABLE_COLUMNS[kind][0]
    kept = [
        index
        for index, name in enumerate(table.columns)
        if name in allowed and not (name in TIME_COLUMNS and date_offset is None)
    ]
    removed = tuple(name for index, name in enumerate(table.columns) if index not in kept)
    shifted: set[str] = set()
    replaced: set[str] = set()
    flagged: dict[str, set[str]] = {}
    rows = []
    for row in table.rows:
        cells = dict(zip(table.columns, row, strict=True))
        if id_column not in cells:
            continue
        label = relabel(cells[id_column])
        if label is None:
            continue
        out = []
        for index in kept:
            name, value = table.columns[index], row[index]
            if name == id_column:
                value = label
            elif name in AGE_COLUMNS:
                age = generalise_age(value)
                if age != value:
                    replaced.add(name)
                value = age or MISSING
            elif name in TIME_COLUMNS and value != MISSING:
                new = shift_clock_text(value, date_offset) if date_offset is not None else None
                if new is None:
                    replaced.add(name)
                else:
                    shifted.add(name)
                value = new or MISSING
            elif name in site.keep_columns:
                flagged.setdefault(name, set()).update(screen_text(value))
            out.append(value)
        rows.append(tuple(out))
    report = ScrubReport(
        removed,
        tuple(sorted(shifted)),
        tuple(sorted(replaced)),
        {name: tuple(sorted(kinds)) for name, kinds in flagged.items() if kinds},
    )
    return Table(tuple(table.columns[index] for index in kept), tuple(rows)), report


def scrub_column_descriptions(descriptions: dict[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    """Keep the descriptions (``participants.json``...) of shared columns, with standard fields only.

    >>> scrub_column_descriptions({"age": {"Units": "year", "Note": "x"}, "name": {}}, ("age",))
    {'age': {'Units': 'year'}}
    """
    clean = {}
    for column in columns:
        description = descriptions.get(column)
        if isinstance(description, dict):
            clean[column] = {k: v for k, v in description.items() if k in COLUMN_DESCRIPTION_FIELDS}
    return clean


def scrub_nifti_header(image: nib.Nifti1Image) -> ScrubReport:
    """Clear the header's free-text fields and drop its extensions, in place.

    Returns
    -------
    ScrubReport
        The text fields that held something, and ``extensions`` when any were removed.
    """
    header = image.header
    cleared = [name for name in NIFTI_TEXT_FIELDS if bytes(header[name].tobytes()).strip(b"\x00 ")]
    for name in NIFTI_TEXT_FIELDS:
        header[name] = b""
    if header.extensions:
        cleared.append("extensions")
    header.extensions.clear()
    return ScrubReport(removed=tuple(cleared))
