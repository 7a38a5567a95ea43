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
from .files import MISSING, Table
from .policy import (
    ACRONYM_LETTERS,
    AGE_COLUMNS,
    ANATOMY_KEYS,
    CLOCK_KEYS,
    COLUMN_DESCRIPTION_FIELDS,
    DATASET_FIELDS_CARRIED,
    DOI,
    MAX_TEXT_CHARS,
    MODALITY_SIDECAR_KEYS,
    NEUTRAL_DATASET_NAME,
    OWN_COLUMN_DESCRIPTIONS,
    REQUIRED_PLACEHOLDERS,
    SEQUENCE_CODE,
    SEQUENCE_CODE_KEYS,
    SITE_COLUMN_DESCRIPTION,
    TABLE_COLUMNS,
    TECHNICAL_TEXT,
    TIME_COLUMNS,
    VENDOR_FIRST_WORDS,
    VENDOR_KEYS,
    VERSION,
    VERSION_KEYS,
    SitePolicy,
    identifying_keys,
    listed_name,
)
from .standards import (
    anatomic_regions,
    column_definition,
    column_description,
    column_levels,
    fits_definition,
    is_standard_name,
    is_technical_word,
    standard_fit,
)
from .volumes import with_header

NIFTI_TEXT_FIELDS: tuple[str, ...] = ("descrip", "aux_file", "intent_name", "db_name", "data_type")
LATEST_SHIFTED_YEAR = 1925
OLDEST_AGE = 89
OLDEST_AGE_LABEL = "89"  # BIDS: "use 89 for all ages 89 and over" (HIPAA Safe Harbor)

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

    ``offset`` is a whole number of days: every date moves by it and every time of
    day is kept, so values that share a calendar day (a date, and date-times of that
    day) share one after shifting, and intervals between date-times are exact. Times
    without a date are only checked. Returns None for text in no known format, or
    for a shifted date later than ``LATEST_SHIFTED_YEAR``.

    Raises
    ------
    ValueError
        ``offset`` holds a part of a day (a bug: it would move some times to another day).

    >>> shift_clock_text("2024-03-15T14:22:07.25", -timedelta(days=40000))
    '1914-09-09T14:22:07.25'
    >>> shift_clock_text("20240315", -timedelta(days=40000))
    '19140909'
    >>> shift_clock_text("14:22:07", -timedelta(days=40000))
    '14:22:07'
    >>> shift_clock_text("yesterday", timedelta(0)) is None
    True
    """
    if offset % timedelta(days=1):
        raise ValueError("date offsets are whole days")
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
    """What scrubbing did to one file: standard names and counts only, never values.

    Attributes
    ----------
    removed : tuple of str
        Keys or columns removed whose names are standard (BIDS or DICOM) or the site's own.
    unknown_removed : int
        How many other keys or columns were removed: their names may identify, so they are counted.
    shifted : tuple of str
        Keys or columns whose dates and times were shifted.
    replaced : tuple of str
        Keys or columns whose values were generalised or replaced by placeholders.
    dropped : dict
        Allowed keys or columns whose values failed a check, with the reason (the value is not kept).
    """

    removed: tuple[str, ...] = ()
    unknown_removed: int = 0
    shifted: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    dropped: dict[str, str] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        """Return the report as JSON-ready content (empty parts left out)."""
        record: dict[str, Any] = {
            "Removed": list(self.removed),
            "UnknownRemoved": self.unknown_removed,
            "DatesShifted": list(self.shifted),
            "Replaced": list(self.replaced),
            "ValuesDropped": dict(self.dropped),
        }
        return {name: value for name, value in record.items() if value}

    def removed_count(self) -> int:
        """Return how many keys or columns were removed, named or not."""
        return len(self.removed) + self.unknown_removed


def split_names(names: list[str] | tuple[str, ...], own: tuple[str, ...] = ()) -> tuple[tuple[str, ...], int]:
    """Return the names that may be shown (standard or in ``own``) and how many others there are.

    >>> split_names(["PatientName", "JohnSmith_MRN", "SiteNote"], own=("SiteNote",))
    (('PatientName', 'SiteNote'), 1)
    """
    shown = tuple(name for name in names if name in own or listed_name(name) or is_standard_name(name))
    return shown, len(names) - len(shown)


def text_problem(key: str, text: str) -> str | None:
    """Return why free text under an allowed ``key`` may not leave, or None when it may.

    The check is conservative: a manufacturer must be a known vendor, a body part a
    DICOM anatomic region, a version a version number, a sequence-like key one code
    token. Any text must be short, use only the characters of technical
    descriptions, match no identifying pattern (:func:`screen_text`), and every
    word of four letters or more (acronyms aside) must be a word of the BIDS
    schema or the DICOM dictionary, which people's names are not.

    >>> text_problem("SequenceName", "*tfl3d1_16ns") is None, text_problem("SequenceName", "Dr Smith")
    (True, 'not a sequence-like code')
    >>> text_problem("Manufacturer", "SIEMENS") is None, text_problem("Manufacturer", "Smith Imaging")
    (True, 'not a known manufacturer')
    >>> text_problem("PulseSequenceType", "Spoiled Gradient Echo") is None, text_problem("TracerName", "MRN 4471923")
    (True, 'looks like a record number')
    >>> text_problem("AttenuationCorrection", "done by Mary Jones")
    'has a word that is not technical (a name?)'
    """
    if key in VERSION_KEYS:
        version = re.match(VERSION, text)
        if version is None:
            return "not a version number"
        text = text[version.end() :].strip()
        if not text:
            return None
    problem = _vocabulary_problem(key, text)
    if problem is not None:
        return problem
    if len(text) > MAX_TEXT_CHARS:
        return f"longer than {MAX_TEXT_CHARS} characters"
    if re.fullmatch(TECHNICAL_TEXT, text) is None:
        return "has characters technical text does not use"
    kinds = [kind for kind in screen_text(text) if kind != "person name"]
    if kinds:
        return f"looks like a {' / '.join(kinds)}"
    if key not in VENDOR_KEYS and not _technical_words(text):
        return "has a word that is not technical (a name?)"
    return None


def _vocabulary_problem(key: str, text: str) -> str | None:
    """Check the keys that have a vocabulary or a code form."""
    if key in VENDOR_KEYS:
        words = re.findall(r"[A-Za-z]+", text)
        if not words or words[0].upper() not in VENDOR_FIRST_WORDS:
            return "not a known manufacturer"
    if key in ANATOMY_KEYS and re.sub(r"[^A-Z0-9]", "", text.upper()) not in anatomic_regions():
        return "not a DICOM anatomic region (CID 4030)"
    if key in SEQUENCE_CODE_KEYS and re.fullmatch(SEQUENCE_CODE, text) is None:
        return "not a sequence-like code"
    return None


def _technical_words(text: str) -> bool:
    """Whether every plain word of 4+ letters is a word of the standards.

    Tokens with digits (``dcm2niix``, ``tfl3d1``), inner capitals (``HeadNeck``,
    ``TrioTim``) and short acronyms (``HRRT``) are codes, not words.
    """
    for token in re.findall(r"[A-Za-z0-9]+", text):
        code = any(c.isdigit() for c in token) or re.search(r"[a-z][A-Z]", token) is not None
        acronym = token.isupper() and len(token) <= ACRONYM_LETTERS
        if len(token) >= 4 and not (code or acronym) and token.upper() not in VENDOR_FIRST_WORDS:
            if not is_technical_word(token):
                return False
    return True


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def value_problem(key: str, value: Any) -> str | None:
    """Return why the value of an allowed sidecar ``key`` may not leave, or None when it may.

    The value must have the type and shape the BIDS schema (or, for keys BIDS does
    not define, the DICOM dictionary) gives the key; keys neither defines may hold
    numbers, booleans and code-like text only. Every string in it is then checked
    with :func:`text_problem`.

    >>> value_problem("EchoTime", 0.003), value_problem("EchoTime", {"nested": [1]})
    (None, 'not the type or shape the BIDS schema or DICOM dictionary defines')
    >>> value_problem("SequenceName", "LEAK001Q John Smith")
    'not a sequence-like code'
    """
    fit = standard_fit(key, value)
    if fit is False:
        return "not the type or shape the BIDS schema or DICOM dictionary defines"
    if fit is None and not _plain_value(value):
        return "neither standard defines this key, and the value is not a number, flag or code"
    coded = key not in VERSION_KEYS
    if fit is None and coded and any(re.fullmatch(SEQUENCE_CODE, text) is None for text in _texts(value)):
        return "neither standard defines this key, and the text is not code-like"
    for text in _texts(value):
        problem = text_problem(key, text)
        if problem:
            return problem
    return None


def _plain_value(value: Any) -> bool:
    """Numbers, booleans, strings and flat lists of them (what dcm2niix writes for its own keys)."""
    if isinstance(value, list):
        return all(isinstance(item, int | float | str) for item in value)
    return isinstance(value, int | float | str)


def scrub_modality(suffix: str, datatype: str) -> str:
    """Return the allow-list a scan uses: ``mri``, ``pet`` or ``ct``.

    >>> scrub_modality("pet", "pet"), scrub_modality("ct", "anat"), scrub_modality("T2w", "anat")
    ('pet', 'ct', 'mri')
    """
    if datatype == "pet" or suffix == "pet":
        return "pet"
    return "ct" if suffix == "ct" else "mri"


def scrub_sidecar(
    metadata: dict[str, Any],
    modality: str,
    site: SitePolicy,
    date_offset: timedelta | None,
    fields: frozenset[str] | None = None,
) -> tuple[dict[str, Any], ScrubReport]:
    """Return a sidecar holding only allowed keys with checked values, dates shifted or dropped.

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
    fields : frozenset of str, optional
        The allow-list to use instead of the modality's (a release's other datatypes:
        :func:`bidsdeface.policy.release_fields`).

    Returns
    -------
    dict, ScrubReport
        Removed keys are named only when their names are standard or the site's own.

    Raises
    ------
    ScrubError
        An identifying key survived that nobody asked to keep (a bug: fail closed).

    Examples
    --------
    >>> clean, report = scrub_sidecar(
    ...     {"EchoTime": 0.003, "InstitutionName": "x", "AcquisitionTime": "10:00:00", "JohnSmith_MRN": 1,
    ...      "FlipAngle": [{"a": 1}]}, "mri", SitePolicy(), -timedelta(days=40000))
    >>> clean, report.removed, report.unknown_removed, list(report.dropped)
    ({'EchoTime': 0.003, 'AcquisitionTime': '10:00:00'}, ('InstitutionName',), 1, ['FlipAngle'])
    """
    allowed = (MODALITY_SIDECAR_KEYS[modality] if fields is None else fields) | set(site.keep_sidecar_keys)
    placeholders = REQUIRED_PLACEHOLDERS.get(modality, {})
    scrubbed = _ScrubbedSidecar()
    for key, value in metadata.items():
        if key in site.drop_sidecar_keys or (key not in allowed and key not in CLOCK_KEYS):
            scrubbed.removed.append(key)
        else:
            _scrub_sidecar_key(scrubbed, key, value, allowed, placeholders, date_offset)
    for key, value in placeholders.items():
        if key not in scrubbed.clean and key in metadata:
            scrubbed.clean[key] = value
            scrubbed.replaced.append(key)
    _check_no_identifying_keys(
        scrubbed.clean, set(scrubbed.shifted) | set(scrubbed.replaced) | set(site.keep_sidecar_keys)
    )
    shown, unknown = split_names(scrubbed.removed, own=site.drop_sidecar_keys)
    report = ScrubReport(
        shown, unknown, tuple(scrubbed.shifted), tuple(dict.fromkeys(scrubbed.replaced)), scrubbed.dropped
    )
    return scrubbed.clean, report


@dataclass
class _ScrubbedSidecar:
    """A sidecar being scrubbed: the keys kept so far, and which keys were removed, shifted, replaced or dropped."""

    clean: dict[str, Any] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    shifted: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)


def _scrub_sidecar_key(
    scrubbed: _ScrubbedSidecar,
    key: str,
    value: Any,
    allowed: frozenset[str],
    placeholders: dict[str, Any],
    date_offset: timedelta | None,
) -> None:
    """Keep, shift, replace, remove or drop one sidecar key that is allowed or a date key (adds to ``scrubbed``).

    Parameters
    ----------
    scrubbed : _ScrubbedSidecar
        The sidecar scrubbed so far.
    key, value
        The key and its source value.
    allowed : frozenset of str
        The modality's allow-list with the site's kept keys.
    placeholders : dict
        Required keys of the modality and the value that stands in for a failing one.
    date_offset : timedelta or None
        The subject's date shift; None removes dates and clock times.
    """
    shifted, problem = _shifted_or_problem(key, value, allowed, date_offset)
    if shifted is not None:
        scrubbed.clean[key] = shifted
        scrubbed.shifted.append(key)
    elif problem is None:
        scrubbed.clean[key] = value
    elif key in placeholders:
        scrubbed.clean[key] = placeholders[key]
        scrubbed.replaced.append(key)
    elif date_offset is None and key in CLOCK_KEYS:
        scrubbed.removed.append(key)
    else:
        scrubbed.dropped[key] = problem


def _shifted_or_problem(
    key: str, value: Any, allowed: frozenset[str], date_offset: timedelta | None
) -> tuple[str | None, str | None]:
    """Return a date key's shifted text and None, or None and why the value may not leave (None when it may).

    >>> _shifted_or_problem("AcquisitionTime", "10:00:00", frozenset(), None)
    (None, 'dates are removed')
    >>> _shifted_or_problem("EchoTime", 0.003, frozenset({"EchoTime"}), None)
    (None, None)
    """
    if key in CLOCK_KEYS and isinstance(value, str):
        shifted = None if date_offset is None else shift_clock_text(value, date_offset)
        if shifted is not None:
            return shifted, None
        return None, "dates are removed" if date_offset is None else "not a date or time in a known form"
    return None, value_problem(key, value) if key in allowed else "a date key holding no date"


def _check_no_identifying_keys(clean: dict[str, Any], transformed: set[str]) -> None:
    """Fail closed when an identifying key is in ``clean`` with its value untransformed.

    Raises
    ------
    ScrubError
        An identifying key survived that is not in ``transformed`` (shifted, replaced or kept by the site).
    """
    leaked = sorted(key for key in clean if key in identifying_keys() and key not in transformed)
    if leaked:
        raise ScrubError(f"identifying sidecar key(s) survived scrubbing: {', '.join(leaked)}")


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


def cell_problem(column: str, value: str) -> str | None:
    """Return why a cell of an allowed free or BIDS-vocabulary column may not leave, or None.

    Columns with a BIDS vocabulary (``sex``, ``handedness``) keep only its levels;
    columns with a BIDS pattern or format (``strain_rrid``) must match it; any other
    text goes through :func:`text_problem`.

    >>> cell_problem("sex", "F"), cell_problem("sex", "Jane"), cell_problem("group", "control")
    (None, 'not in the BIDS levels', None)
    >>> cell_problem("group", "Dr Smith's patients")
    'has characters technical text does not use'
    """
    if value == MISSING:
        return None
    levels = column_levels(column)
    if levels is not None:
        return None if value in levels else "not in the BIDS levels"
    definition = column_definition(column)
    if definition is not None and ("pattern" in definition or "format" in definition):
        form = {key: definition[key] for key in ("type", "pattern", "format") if key in definition}
        return None if fits_definition(value, form) else "not of the BIDS format"
    return text_problem(column, value)


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
    removed when ``date_offset`` is None; other cells that fail
    :func:`cell_problem` become ``n/a``. ``relabel`` maps each row's first
    column (participant_id, session_id or filename) to its output value, or to
    None to leave the row out.

    >>> rows = (("sub-1", "93", "F", "Ann"), ("sub-2", "40", "x", "B"))
    >>> table = Table(("participant_id", "age", "sex", "name"), rows)
    >>> clean, report = scrub_table(table, "participants", SitePolicy(), None, lambda x: x)
    >>> clean.columns, clean.rows, report.removed, report.replaced, report.dropped
    (('participant_id', 'age', 'sex'), (('sub-1', '89', 'F'), ('sub-2', '40', 'n/a')), ('name',), ('age',), \
{'sex': '1 value(s) not in the BIDS levels; n/a written'})
    """
    allowed = set(TABLE_COLUMNS[kind]) | set(site.keep_columns)
    id_column = TABLE_COLUMNS[kind][0]
    kept = [
        index
        for index, name in enumerate(table.columns)
        if name in allowed and not (name in TIME_COLUMNS and date_offset is None)
    ]
    changes = _CellChanges()
    rows = []
    for row in table.rows:
        cells = dict(zip(table.columns, row, strict=True))
        label = relabel(cells[id_column]) if id_column in cells else None
        if label is not None:
            cleaned = (_clean_cell(table.columns[i], row[i], id_column, label, date_offset, changes) for i in kept)
            rows.append(tuple(cleaned))
    removed = [name for index, name in enumerate(table.columns) if index not in kept]
    shown, unknown = split_names(removed)
    report = ScrubReport(
        shown,
        unknown,
        tuple(sorted(changes.shifted)),
        tuple(sorted(changes.replaced)),
        {name: f"{count} value(s) {why}; n/a written" for name, (why, count) in sorted(changes.dropped.items())},
    )
    return Table(tuple(table.columns[index] for index in kept), tuple(rows)), report


@dataclass
class _CellChanges:
    shifted: set[str] = field(default_factory=set)
    replaced: set[str] = field(default_factory=set)
    dropped: dict[str, tuple[str, int]] = field(default_factory=dict)

    def drop(self, column: str, why: str) -> None:
        count = self.dropped.get(column, (why, 0))[1]
        self.dropped[column] = (why, count + 1)


def _clean_cell(
    name: str, value: str, id_column: str, label: str, date_offset: timedelta | None, changes: _CellChanges
) -> str:
    """Return one cell as it leaves, recording what was changed in ``changes``."""
    if name == id_column:
        return label
    if name in AGE_COLUMNS:
        age = generalise_age(value)
        if age != value:
            changes.replaced.add(name)
        return age or MISSING
    if name in TIME_COLUMNS and value != MISSING:
        new = shift_clock_text(value, date_offset) if date_offset is not None else None
        (changes.shifted if new is not None else changes.replaced).add(name)
        return new or MISSING
    problem = cell_problem(name, value)
    if problem is not None:
        changes.drop(name, problem)
        return MISSING
    return value


def scrub_column_descriptions(
    descriptions: dict[str, Any], columns: tuple[str, ...], site: SitePolicy
) -> dict[str, Any]:
    """Return the descriptions (``participants.json``...) of the columns that leave.

    They come from the BIDS schema, or are bidsdeface's own; the input's text is
    carried only for columns the site lists in ``keep_column_descriptions``, field
    by field, each field screened (failures dropped).

    >>> scrub_column_descriptions({"age": {"Note": "x"}, "name": {}}, ("age",), SitePolicy())["age"]["Units"]
    'year'
    >>> kept = SitePolicy(keep_columns=("iq",), keep_column_descriptions=("iq",))
    >>> source = {"iq": {"Description": "IQ", "Note": "x"}}
    >>> described = scrub_column_descriptions(source, ("participant_id", "iq"), kept)
    >>> described["participant_id"]["LongName"], described["iq"]
    ('Participant ID', {'Description': 'IQ'})
    """
    clean: dict[str, Any] = {}
    for column in columns:
        source = descriptions.get(column)
        if column in site.keep_column_descriptions and isinstance(source, dict):
            clean[column] = _screened_fields(source)
        else:
            standard = column_description(column) or OWN_COLUMN_DESCRIPTIONS.get(column)
            own = SITE_COLUMN_DESCRIPTION if column in site.keep_columns else None
            if standard or own:
                clean[column] = dict(standard or own)
    return clean


def _screened_fields(description: dict[str, Any]) -> dict[str, Any]:
    """Return the standard description fields whose text passes :func:`screen_text` (levels: keys and values)."""
    kept: dict[str, Any] = {}
    for name, value in description.items():
        texts = [*value.keys(), *value.values()] if isinstance(value, dict) else [value]
        if name in COLUMN_DESCRIPTION_FIELDS and all(_screened_free_text(text) for text in texts):
            kept[name] = value
    return kept


def _screened_free_text(text: Any, limit: int = 1000, kinds_allowed: tuple[str, ...] = ()) -> bool:
    """Whether a kept piece of free text passes the screen: short enough, no identifying pattern."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return True
    if not isinstance(text, str) or len(text) > limit or any(ord(c) < 32 for c in text):
        return False
    return not set(screen_text(text)) - set(kinds_allowed)


def scrub_dataset_description(source: dict[str, Any], site: SitePolicy) -> tuple[dict[str, Any], ScrubReport]:
    """Return the fields of the input's ``dataset_description.json`` that may be carried, and a report.

    By default only ``License`` and ``Authors`` (authors are names by design: they
    are screened for every other identifying pattern). A site may keep more fields
    with ``keep_dataset_fields``; every kept string is screened and a failing entry
    is dropped. ``Name`` becomes neutral unless kept.

    >>> carried, report = scrub_dataset_description(
    ...     {"Name": "MRN 4471923 study", "License": "CC0", "Authors": ["Ann Lee", "call 020 7946 0958"],
    ...      "Funding": ["x"], "SecretField": 1}, SitePolicy())
    >>> carried, report.removed, report.unknown_removed
    ({'Name': 'De-identified dataset (bidsdeface)', 'License': 'CC0', 'Authors': ['Ann Lee']}, ('Name', 'Funding'), 1)
    """
    wanted = (*DATASET_FIELDS_CARRIED, *site.keep_dataset_fields)
    carried: dict[str, Any] = {"Name": NEUTRAL_DATASET_NAME}
    dropped: dict[str, str] = {}
    for name in wanted:
        if name not in source:
            continue
        allowed_kinds = ("person name",) if name == "Authors" else ()
        value = source[name]
        entries = value if isinstance(value, list) else [value]
        if name == "DatasetDOI":
            kept = [entry for entry in entries if isinstance(entry, str) and re.fullmatch(DOI, entry)]
        else:
            kept = [entry for entry in entries if _screened_free_text(entry, kinds_allowed=allowed_kinds)]
        if len(kept) < len(entries):
            dropped[name] = f"{len(entries) - len(kept)} entr(y/ies) failed the identifier screen"
        if kept and (isinstance(value, list) or standard_fit(name, kept[0]) is not False):
            carried[name] = kept if isinstance(value, list) else kept[0]
    ignored = [name for name in source if name not in wanted and name not in ("BIDSVersion", "DatasetType")]
    shown, unknown = split_names(ignored)
    return carried, ScrubReport(removed=shown, unknown_removed=unknown, dropped=dropped)


def scrub_nifti_header(image: nib.Nifti1Image) -> tuple[nib.Nifti1Image, ScrubReport]:
    """Return a copy of ``image`` without the header's free-text fields and extensions.

    ``image`` itself is left as it is; the copy shares its data.

    Returns
    -------
    nibabel.Nifti1Image
        The image to write.
    ScrubReport
        The text fields that held something, and ``extensions`` when any were removed.
    """
    header, report = cleared_header(image.header)
    return with_header(image, header), report


def cleared_header(source: nib.Nifti1Header) -> tuple[nib.Nifti1Header, ScrubReport]:
    """Return a copy of a NIfTI header without its free-text fields and extensions, and what held something."""
    header = source.copy()
    fields = [name for name in NIFTI_TEXT_FIELDS if name in header]  # NIfTI-2 has no db_name, data_type
    cleared = [name for name in fields if bytes(header[name].tobytes()).strip(b"\x00 ")]
    for name in fields:
        header[name] = b""
    if header.extensions:
        cleared.append("extensions")
    header.extensions.clear()
    return header, ScrubReport(removed=tuple(cleared))


EVENT_TIMING_COLUMNS: tuple[str, ...] = ("onset", "duration")
# Column names and undeclared text values must be one code-like token (``pumps_demean``, ``go``).
EVENT_CODE = r"[A-Za-z0-9_.+\-]{1,32}"


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _numeric(values: list[str]) -> bool:
    return all(value == MISSING or _number(value) for value in values)


def _technical_only(text: str) -> bool:
    """Whether ``text`` is made of words of the standards only (no digits, no other letters).

    >>> _technical_only("left"), _technical_only("control_trial"), _technical_only("JS1984")
    (True, True, False)
    """
    runs = re.findall(r"[A-Za-z]+|\d+", text)
    return bool(runs) and all(run.isalpha() and is_technical_word(run) for run in runs)


def scrub_events(table: Table, descriptions: dict[str, Any]) -> tuple[Table, ScrubReport]:
    """Return an events-like table (events, ASL context) safe to share, and what was changed.

    ``descriptions`` is the table's ``events.json`` (inheritance resolved). Timing and
    numeric columns pass. A text column passes when BIDS defines it or ``descriptions``
    declares it; other text columns are removed. In a text column, values its ``Levels`` (or
    the schema's vocabulary for the column) declare pass; any other text passes when it is
    one code-like token that repeats in the file (a condition, not a note) or is made of
    words of the standards, and matches no identifying pattern. What fails becomes ``n/a``.

    >>> table = Table(("onset", "duration", "trial_type", "note"),
    ...               (("1", "2", "go", "Seen by Dr. Who"), ("3", "2", "go", "ok"), ("5", "2", "JS1984", "ok")))
    >>> clean, report = scrub_events(table, {})
    >>> clean.columns, [row[2] for row in clean.rows], report.dropped, report.unknown_removed
    (('onset', 'duration', 'trial_type'), ['go', 'go', 'n/a'], {'trial_type': '1 value(s) failed screening'}, 1)
    """
    kept, removed, dropped = [], [], {}
    for index, column in enumerate(table.columns):
        values = [row[index] for row in table.rows]
        declared = isinstance(descriptions.get(column), dict) or column_definition(column) is not None
        numeric = column in EVENT_TIMING_COLUMNS or _numeric(values)
        if re.fullmatch(EVENT_CODE, column) is None or screen_text(column) or not (numeric or declared):
            removed.append(column)
            continue
        cleaned = _screened_event_values(values, numeric, _declared_levels(column, descriptions))
        failed = sum(a != b for a, b in zip(values, cleaned, strict=True))
        if failed:
            dropped[column] = f"{failed} value(s) failed screening"
        kept.append((column, cleaned))
    shown, unknown = split_names(removed)
    clean = Table(tuple(name for name, _ in kept), tuple(zip(*(cells for _, cells in kept), strict=True)))
    return clean, ScrubReport(removed=shown, unknown_removed=unknown, dropped=dropped)


def _declared_levels(column: str, descriptions: dict[str, Any]) -> set[str] | None:
    """Return the values a column may hold: its ``Levels`` in ``descriptions``, else the schema's vocabulary."""
    levels = (descriptions.get(column) or {}).get("Levels") if isinstance(descriptions.get(column), dict) else None
    if isinstance(levels, dict):
        return {str(level) for level in levels}
    schema = column_definition(column) or {}
    vocabulary = schema.get("enum") or list(column_levels(column) or {})
    return {str(level) for level in vocabulary} if vocabulary else None


def _screened_event_values(values: list[str], numeric: bool, levels: set[str] | None) -> list[str]:
    """Return one events column with every value that may not leave set to ``n/a``."""
    if numeric:
        return [value if value == MISSING or _number(value) else MISSING for value in values]
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1

    def passes(value: str) -> bool:
        if value == MISSING or _number(value):
            return True
        if screen_text(value) or re.fullmatch(EVENT_CODE, value) is None:
            return False
        if levels is not None:
            return value in levels
        return counts[value] > 1 or _technical_only(value)

    return [value if passes(value) else MISSING for value in values]
