"""Check an exported DICOM series against its input: the de-identification challenge's actions, verified.

Run on every series before it is moved into the output. Each check says whether it
passed and, in words with counts and no value, why not:

- ``identifiers_removed``: no text of an attribute the profile removes, empties or
  replaces (nor of a private attribute) appears anywhere in an output header;
- ``dates_shifted``: each date the profile shifts is the input's date plus the subject's offset;
- ``uids_replaced``: no input UID is left in an output header, and the study, series, frame of
  reference and instance UIDs are the keyed replacements of the input's, one study and one
  series UID for the whole series;
- ``patient_ids``: patient ID and name are the subject's pseudonym in every instance;
- ``face_hidden``: replaced pixels were written, as many as the face region covered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from .config import ProfileOptions
from .deidentify import (
    ALWAYS_NEW_UIDS,
    DUMMY_TEXT,
    TEXT_VRS,
    Replacements,
    deidentification_codes,
    method_description,
    profile_rules,
    resolve_action,
)
from .pixeltext import TextFinding, frames_of, text_boxes
from .scrub import shift_clock_text

MIN_IDENTIFIER_CHARS = 4  # shorter texts (codes such as "M", "1") are not searched for
MIN_NUMBER_DIGITS = 6  # a number is searched for only when it is long enough to be an ID (not a slice position)
SHIFTED_DATES = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")
TAKEN_ACTIONS = frozenset({"X", "Z", "D", "U"})
REPLACED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


@dataclass(frozen=True)
class ExportCheck:
    """The self-check of one exported series: check name -> (passed, detail)."""

    checks: dict[str, tuple[bool, str]]

    @property
    def passed(self) -> bool:
        """Every check passed."""
        return all(passed for passed, _ in self.checks.values())

    def as_record(self) -> dict[str, Any]:
        """Return the checks for a JSON record."""
        return {name: {"passed": passed, "detail": detail} for name, (passed, detail) in self.checks.items()}


def _searchable(text: str) -> bool:
    """Return whether a removed text is specific enough to search for: letters, or a long number.

    >>> _searchable("Smith"), _searchable("15.1"), _searchable("12345678"), _searchable("M")
    (True, False, True, False)
    """
    digits = sum(c.isdigit() for c in text)
    return len(text) >= MIN_IDENTIFIER_CHARS and (any(c.isalpha() for c in text) or digits >= MIN_NUMBER_DIGITS)


def _texts(dataset: Any, options: ProfileOptions, removed: set[str], kept: set[str]) -> None:
    """Collect the text values the profile takes away (``removed``) and those it keeps (``kept``)."""
    from pydicom.multival import MultiValue

    rules = profile_rules()
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                _texts(item, options, removed, kept)
            continue
        if element.tag.group == 0x7FE0 or isinstance(element.value, bytes | bytearray):
            continue
        values = list(element.value) if isinstance(element.value, MultiValue | list | tuple) else [element.value]
        texts = {text for text in (str(value).strip() for value in values) if _searchable(text)}
        if element.VR not in TEXT_VRS:  # numbers are not searched for; dates and UIDs have their own checks
            texts = {text for text in texts if element.tag.is_private and any(c.isalpha() for c in text)}
        rule = rules.get(int(element.tag))
        action = "" if rule is None else resolve_action(rule, options, element.keyword)
        if element.tag.is_private or action in TAKEN_ACTIONS:
            removed.update(texts)
        elif action != "C":  # cleaned values (shifted dates, screened descriptors) are checked elsewhere or kept
            kept.update(texts)


def _header_bytes(path: Path, pixel_bytes: int) -> bytes:
    data = path.read_bytes()
    return data[: len(data) - pixel_bytes].lower()


def check_export(
    pairs: list[tuple[Any, Path]],
    options: ProfileOptions,
    who: Replacements,
    replaced_uids: set[str],
    pixels: tuple[int, int],
    text: TextFinding | None = None,
) -> ExportCheck:
    """Check one exported series.

    Parameters
    ----------
    pairs : list of (pydicom.Dataset, Path)
        Each input instance (as read) and the output file written from it.
    options : ProfileOptions
        The profile options applied.
    who : Replacements
        The subject's pseudonym, date offset and UID key.
    replaced_uids : set of str
        The input UIDs that were replaced (none may be left).
    pixels : (int, int)
        Pixels given a new value in the output, and voxels the defacing replaced in the processed volume.
    text : TextFinding, optional
        Burned-in text that was filled: the detector must find none of it in the output frames.
    """
    import pydicom

    outputs = [pydicom.dcmread(path) for _, path in pairs]
    replaced_pixels, face_voxels = pixels
    checks = {
        "identifiers_removed": _identifiers_removed(pairs, outputs, options, who.pseudonym),
        "dates_shifted": _dates_shifted(pairs, outputs, who.date_offset),
        "uids_replaced": _uids_replaced(pairs, outputs, who, replaced_uids),
        "patient_ids": _patient_ids(outputs, who.pseudonym),
        "face_hidden": (
            replaced_pixels > 0 or face_voxels == 0,
            f"{replaced_pixels} pixels replaced for {face_voxels} face voxels",
        ),
    }
    if text is not None:
        checks["pixel_text_cleaned"] = _text_gone(pairs, text)
    return ExportCheck(checks)


def _text_gone(pairs: list[tuple[Any, Path]], text: TextFinding) -> tuple[bool, str]:
    """Run the detector again on every output frame that had text."""
    import pydicom

    left = 0
    for index, frame in text.boxes:
        frames = frames_of(pydicom.dcmread(pairs[index][1]))
        left += bool(text_boxes(frames[frame]))
    return not left, f"text found again in {left} of {len(text.boxes)} cleaned frame(s)"


def _own_text(options: ProfileOptions, pseudonym: str) -> str:
    """Return the text de-identification itself writes (method, code meanings, dummies), lower-cased."""
    meanings = [str(item.CodeMeaning) for item in deidentification_codes(options)]
    return " ".join([*method_description(options), *meanings, DUMMY_TEXT, "MODIFIED REMOVED", pseudonym]).lower()


def _identifiers_removed(
    pairs: list[tuple[Any, Path]], outputs: list[Any], options: ProfileOptions, pseudonym: str
) -> tuple[bool, str]:
    removed: set[str] = set()
    kept: set[str] = set()
    for source, _ in pairs:
        _texts(source, options, removed, kept)
    own = _own_text(options, pseudonym)  # an input value such as "REMOVED" is found in "face removed"
    needles = [text.lower().encode("utf-8", "ignore") for text in removed - kept if text.lower() not in own]
    found = set()
    for (_, path), output in zip(pairs, outputs, strict=True):
        header = _header_bytes(path, len(output.get("PixelData", b"") or b""))
        found |= {needle for needle in needles if needle in header}
    return not found, f"{len(found)} of {len(needles)} removed texts found in the output headers"


def _dates_shifted(pairs: list[tuple[Any, Path]], outputs: list[Any], offset: timedelta | None) -> tuple[bool, str]:
    """Each date is the input's plus the offset, or empty when it cannot be shifted (or dates are removed)."""
    wrong = checked = 0
    for (source, _), output in zip(pairs, outputs, strict=True):
        for keyword in SHIFTED_DATES:
            before, after = str(source.get(keyword, "") or ""), str(output.get(keyword, "") or "")
            if not before:
                continue
            checked += 1
            expected = None if offset is None else shift_clock_text(before, offset)
            wrong += after != (expected or "")
    return not wrong, f"{checked - wrong} of {checked} dates shifted (or emptied where they cannot be)"


def _uids_replaced(
    pairs: list[tuple[Any, Path]], outputs: list[Any], who: Replacements, replaced: set[str]
) -> tuple[bool, str]:
    needles = [uid.lower().encode() for uid in replaced]
    problems = 0
    for (source, path), output in zip(pairs, outputs, strict=True):
        for keyword in REPLACED_UIDS:
            old, new = str(source.get(keyword, "") or ""), str(output.get(keyword, "") or "")
            if old and keyword in ALWAYS_NEW_UIDS and new != who.uid(old):
                problems += 1
        header = _header_bytes(path, len(output.get("PixelData", b"") or b""))
        problems += sum(needle in header for needle in needles)
    series = {str(output.get("SeriesInstanceUID", "")) for output in outputs}
    studies = {str(output.get("StudyInstanceUID", "")) for output in outputs}
    problems += (len(series) != 1) + (len(studies) != 1)
    return not problems, f"{problems} UID problem(s) in {len(outputs)} instances"


def _patient_ids(outputs: list[Any], pseudonym: str) -> tuple[bool, str]:
    wrong = sum(str(o.get("PatientID", "")) != pseudonym or str(o.get("PatientName", "")) != pseudonym for o in outputs)
    return not wrong, f"{len(outputs) - wrong} of {len(outputs)} instances carry the pseudonym"
