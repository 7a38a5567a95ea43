"""De-identify a DICOM header by the confidentiality profile: PS3.15 Table E.1-1, as data, per attribute.

Pure: a pydicom dataset in, the same dataset changed in place and a count of what was
done out. The table (:func:`bidsdeface.standards.confidentiality_rules`) gives each
attribute's Basic Profile action and each option's; this module only resolves them:

- an option that is on wins (its ``C`` over its ``K`` when two apply);
- a composite Basic Profile action takes ``U`` if it has one, else ``D`` (a dummy value is
  valid whatever the attribute's type in the object), else ``Z``;
- ``C`` shifts dates (Modified Dates), caps ages (Patient Characteristics) and keeps a
  descriptor only if it passes the sidecar text screen (Clean Descriptors); anything else
  marked ``C`` cannot be cleaned safely here and is removed (a date that cannot be shifted
  into the past range is emptied), and counted as such;
- attributes outside the table are kept when the DICOM dictionary knows them (their
  sequences are de-identified item by item) and removed when it does not; private
  attributes, curves and overlays are removed (safe private numbers may be kept).

Counts name actions and standard keywords only, never a value or a private tag.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from typing import Any

from . import __version__
from .config import ProfileOptions
from .identity import keyed_uid
from .policy import DEVICE_IDENTITY_KEYS
from .scrub import OLDEST_AGE, shift_clock_text, value_problem
from .standards import attribute_types, confidentiality_rules

OPTION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("modified_dates", "rtnLongModifDatesOpt"),
    ("patient_characteristics", "rtnPatCharsOpt"),
    ("device_identity", "rtnDevIdOpt"),
    ("clean_descriptors", "cleanDescOpt"),
    ("retain_uids", "rtnUIDsOpt"),
)
# The pixels change, so these are new even with Retain UIDs.
ALWAYS_NEW_UIDS = frozenset({"SeriesInstanceUID", "SOPInstanceUID"})
PSEUDONYM_KEYWORDS = frozenset({"PatientName", "PatientID"})
# Type 1C attributes the table keeps (as a dummy) whose condition is an attribute it removes.
PRESENT_ONLY_WITH = {"ClinicalTrialProtocolEthicsCommitteeName": "ClinicalTrialProtocolEthicsCommitteeApprovalNumber"}
DUMMY_TEXT = "ANONYMIZED"
DUMMY_VALUES = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000D", "IS": "0", "DS": "0"}
TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
CLOCK_VRS = frozenset({"DA", "DT", "TM"})
NUMBER_VRS = frozenset({"DS", "FD", "FL", "IS", "SL", "SS", "SV", "UL", "US", "UV"})
REPEATING_GROUPS = (0x5000, 0x6000)  # curves and overlays: the table removes their data and text
# The code of each option (pydicom's CID 7050 names) by ProfileOptions field.
OPTION_CODES = {
    "modified_dates": "RetainLongitudinalTemporalInformationModifiedDatesOption",
    "patient_characteristics": "RetainPatientCharacteristicsOption",
    "device_identity": "RetainDeviceIdentityOption",
    "clean_descriptors": "CleanDescriptorsOption",
    "retain_uids": "RetainUidsOption",
    "safe_private": "RetainSafePrivateOption",
}
BASE_CODES = ("BasicApplicationConfidentialityProfile", "CleanRecognizableVisualFeaturesOption")
CLEAN_PIXEL_DATA = "CleanPixelDataOption"


@dataclass(frozen=True)
class Replacements:
    """What one subject's headers get: the pseudonym, the date offset, and the key of new UIDs."""

    pseudonym: str
    date_offset: timedelta | None
    uid_key: str = field(repr=False)

    def uid(self, old: str) -> str:
        """Return the new UID of ``old``."""
        return keyed_uid(self.uid_key, old)


@dataclass
class HeaderReport:
    """What de-identification did to one or more headers.

    Attributes
    ----------
    actions : Counter
        Attributes per action taken (``X``, ``Z``, ``D``, ``U``, ``K``, ``C``, ``private``,
        ``unknown``, ``curve or overlay``, ``C removed``).
    not_cleaned : Counter
        Standard keywords marked "clean" that were removed because no safe cleaning exists here.
    uids : dict
        Old UID -> new UID.
    """

    actions: Counter[str] = field(default_factory=Counter)
    not_cleaned: Counter[str] = field(default_factory=Counter)
    uids: dict[str, str] = field(default_factory=dict)

    def add(self, other: HeaderReport) -> None:
        """Add another header's counts and UIDs to these."""
        self.actions.update(other.actions)
        self.not_cleaned.update(other.not_cleaned)
        self.uids.update(other.uids)


@lru_cache(maxsize=1)
def profile_rules() -> dict[int, dict[str, str]]:
    """Return Table E.1-1 by tag, plus the device identity the BIDS path also removes (software versions).

    >>> profile_rules()[0x00181020]
    {'basicProfile': 'X/D', 'rtnDevIdOpt': 'K'}
    """
    from pydicom.datadict import tag_for_keyword

    rules = dict(confidentiality_rules())
    for keyword in sorted(DEVICE_IDENTITY_KEYS):
        rules.setdefault(tag_for_keyword(keyword), {"basicProfile": "X/D", "rtnDevIdOpt": "K"})
    return rules


def resolve_action(
    rule: dict[str, str], options: ProfileOptions, keyword: str = "", kind: str | None = None, sequence: bool = False
) -> str:
    """Return the one action (``X``, ``Z``, ``D``, ``U``, ``K`` or ``C``) to take on an attribute.

    ``kind`` is the attribute's type in the object's IOD (``"1"``, ``"2C"``, ``"3"``...) when known:
    a choice then follows the standard (D for type 1, Z for type 2, else X). Unknown (inside a
    sequence, or an IOD without a bundled table), the choice is one valid for any type: a dummy,
    else empty, and for a sequence removal before emptying (an empty one is valid only where required).

    >>> basic = ProfileOptions()
    >>> resolve_action({"basicProfile": "X/Z/D", "rtnDevIdOpt": "K"}, basic)
    'D'
    >>> [resolve_action({"basicProfile": "X/Z/D"}, basic, kind=kind) for kind in ("1", "2C", "3")]
    ['D', 'Z', 'X']
    >>> resolve_action({"basicProfile": "X/Z/D", "rtnDevIdOpt": "K"}, ProfileOptions(device_identity=True))
    'K'
    >>> resolve_action({"basicProfile": "X/Z/U*"}, basic), resolve_action({"basicProfile": "X/Z"}, basic)
    ('U', 'Z')
    >>> resolve_action({"basicProfile": "X/Z"}, basic, sequence=True)
    'X'
    >>> resolve_action({"basicProfile": "U", "rtnUIDsOpt": "K"}, ProfileOptions(retain_uids=True), "SOPInstanceUID")
    'U'
    """
    if keyword in ALWAYS_NEW_UIDS:
        return "U"
    chosen = {rule[column] for name, column in OPTION_COLUMNS if getattr(options, name) and column in rule}
    if chosen:
        return "C" if "C" in chosen else "K"
    basic = rule["basicProfile"].replace("*", "").split("/")
    if "U" in basic or len(basic) == 1:
        return "U" if "U" in basic else basic[0]
    if kind is not None:
        wanted = "D" if kind.startswith("1") else "Z" if kind.startswith("2") else "X"
        return wanted if wanted in basic else "D" if "D" in basic else "Z"
    return next(action for action in (("X", "Z", "D") if sequence else ("D", "Z", "X")) if action in basic)


def deidentify_header(
    dataset: Any, options: ProfileOptions, replacements: Replacements, pixels_cleaned: bool = False
) -> HeaderReport:
    """De-identify ``dataset`` in place (file meta rebuilt, identity attributes set); return what was done.

    ``pixels_cleaned``: burned-in text was looked for in every instance and filled (Clean Pixel
    Data, 113101; BurnedInAnnotation NO).
    """
    report = HeaderReport()
    kinds = attribute_types().get(str(dataset.get("SOPClassUID", "")))
    _deidentify(dataset, options, replacements, report, _safe_private(options.safe_private), kinds)
    _mark_deidentified(dataset, options, replacements, pixels_cleaned)
    _rebuild_file_meta(dataset)
    return report


def _safe_private(specs: tuple[str, ...]) -> frozenset[tuple[str, int, int]]:
    """Parse ``CREATOR:gggg,ee`` specifications into (creator, group, element byte).

    >>> sorted(_safe_private(("SIEMENS CSA HEADER:0029,08",)))
    [('SIEMENS CSA HEADER', 41, 8)]
    """
    parsed = set()
    for spec in specs:
        creator, _, where = spec.rpartition(":")
        group, _, element = where.partition(",")
        parsed.add((creator.strip(), int(group, 16), int(element, 16)))
    return frozenset(parsed)


def _deidentify(
    dataset: Any,
    options: ProfileOptions,
    who: Replacements,
    report: HeaderReport,
    safe: frozenset,
    kinds: dict[str, str] | None = None,
) -> None:
    """Apply the table to every attribute of ``dataset``; ``kinds``: IOD types of its attributes (top level only)."""
    from pydicom.datadict import keyword_for_tag

    rules = profile_rules()
    kept_private = _kept_private(dataset, safe)
    for element in list(dataset):
        tag = element.tag
        if tag.is_private:
            if int(tag) not in kept_private:
                del dataset[tag]
                report.actions["private"] += 1
        elif tag.group & 0xFF00 in REPEATING_GROUPS:
            del dataset[tag]
            report.actions["curve or overlay"] += 1
        elif int(tag) in rules:
            keyword = keyword_for_tag(tag)
            kind = None if kinds is None else kinds.get(keyword, "3")
            action = resolve_action(rules[int(tag)], options, keyword, kind, element.VR == "SQ")
            _act(dataset, element, action, keyword, options, who, report, safe)
        elif not keyword_for_tag(tag) or tag.element == 0:
            del dataset[tag]
            report.actions["unknown"] += 1
        elif element.VR == "SQ":
            for item in element.value:
                _deidentify(item, options, who, report, safe)
    for dependent, condition in PRESENT_ONLY_WITH.items():
        if dependent in dataset and condition not in dataset:
            del dataset[dependent]


def _kept_private(dataset: Any, safe: frozenset[tuple[str, int, int]]) -> set[int]:
    """Return the private tags to keep: listed numeric attributes and their creators."""
    if not safe:
        return set()
    creators = {
        (int(e.tag) >> 16, int(e.tag) & 0xFF): str(e.value).strip()
        for e in dataset
        if e.tag.is_private and 0x10 <= e.tag.element <= 0xFF
    }
    kept: set[int] = set()
    for element in dataset:
        group, block, low = element.tag.group, element.tag.element >> 8, element.tag.element & 0xFF
        creator = creators.get((group, block))
        if block and creator is not None and (creator, group, low) in safe and element.VR in NUMBER_VRS:
            kept |= {int(element.tag), (group << 16) | block}
    return kept


def _act(
    dataset: Any,
    element: Any,
    action: str,
    keyword: str,
    options: ProfileOptions,
    who: Replacements,
    report: HeaderReport,
    safe: frozenset,
) -> None:
    """Take ``action`` on one attribute of ``dataset``."""
    vr = element.VR
    report.actions[action] += 1
    if vr == "SQ" and action in ("K", "U", "C", "D"):  # a sequence's dummy: its items with references only
        for item in element.value:
            if action in ("U", "D"):
                _references_only(item, report)
            _deidentify(item, options, who, report, safe)
    elif action == "K":
        if vr == "AS":
            _cleaned(element, keyword, who, False)  # a kept age is still capped
    elif action == "C" and not _cleaned(element, keyword, who, options.clean_descriptors and _descriptor(element)):
        report.not_cleaned[keyword] += 1
        report.actions["C removed"] += 1
        if vr in CLOCK_VRS:
            element.value = ""  # emptied rather than removed: valid wherever the date may be empty
        else:
            del dataset[element.tag]
    elif action == "X":
        del dataset[element.tag]
    elif action == "U" or (action == "D" and vr == "UI"):
        element.value = _new_uids(element.value, who, report)
    elif action == "Z" or vr == "SQ":
        element.value = who.pseudonym if keyword in PSEUDONYM_KEYWORDS else ([] if vr == "SQ" else _empty(vr))
    elif action == "D":
        _dummy(dataset, element, who)


def _references_only(item: Any, report: HeaderReport) -> None:
    """Keep only UIDs, numbers and sequences (filtered alike) in an item of a sequence kept for its references."""
    for element in list(item):
        if element.VR == "SQ":
            for nested in element.value:
                _references_only(nested, report)
        elif element.VR != "UI" and element.VR not in NUMBER_VRS:
            del item[element.tag]
            report.actions["X"] += 1


def _empty(vr: str) -> Any:
    return b"" if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN") else ""


def _dummy(dataset: Any, element: Any, who: Replacements) -> None:
    """Replace a value with a dummy of its VR, or remove it when its VR has no safe dummy."""
    from pydicom.valuerep import MAX_VALUE_LEN

    vr = element.VR
    if vr in DUMMY_VALUES:
        element.value = DUMMY_VALUES[vr]
    elif vr in TEXT_VRS:
        element.value = DUMMY_TEXT[: MAX_VALUE_LEN.get(vr, len(DUMMY_TEXT))]
    else:
        del dataset[element.tag]


def _new_uids(value: Any, who: Replacements, report: HeaderReport) -> Any:
    from pydicom.multival import MultiValue

    olds = [str(v) for v in value] if isinstance(value, MultiValue | list | tuple) else [str(value)]
    news = []
    for old in olds:
        if old.strip():
            report.uids[old.strip()] = who.uid(old.strip())
        news.append(report.uids.get(old.strip(), ""))
    return news if len(news) > 1 else news[0]


def _descriptor(element: Any) -> bool:
    """Return whether Table E.1-1 marks the attribute for the Clean Descriptors option."""
    return "cleanDescOpt" in profile_rules().get(int(element.tag), {})


def _cleaned(element: Any, keyword: str, who: Replacements, descriptor: bool) -> bool:
    """Clean a value in place (dates shifted, ages capped, descriptors screened); False if it cannot be."""
    vr, value = element.VR, element.value
    if vr in CLOCK_VRS and who.date_offset is not None:
        values = [value] if isinstance(value, str) else [str(v) for v in value]
        shifted = [shift_clock_text(v, who.date_offset) if v.strip() else "" for v in values]
        if any(s is None for s in shifted):
            return False
        element.value = shifted if len(shifted) > 1 else shifted[0]
        return True
    if vr == "AS":
        text = str(value)
        if text[-1:] == "Y" and text[:-1].isdigit() and int(text[:-1]) > OLDEST_AGE:
            element.value = f"{OLDEST_AGE:03d}Y"
        return True
    if descriptor and vr in TEXT_VRS and isinstance(value, str) and vr != "PN":
        return value_problem(keyword, value.strip()) is None
    return False


def deidentification_codes(options: ProfileOptions, pixels_cleaned: bool = False) -> list[Any]:
    """Return the DeidentificationMethodCodeSequence items (CID 7050, from pydicom's code dictionary).

    >>> [item.CodeValue for item in deidentification_codes(ProfileOptions())]
    ['113100', '113102', '113107']
    >>> [item.CodeValue for item in deidentification_codes(ProfileOptions(), pixels_cleaned=True)][1]
    '113101'
    """
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    cleaned = [CLEAN_PIXEL_DATA] if pixels_cleaned else []
    names = [BASE_CODES[0], *cleaned, *BASE_CODES[1:]] + [
        code for name, code in OPTION_CODES.items() if getattr(options, name)
    ]
    items = []
    for name in names:
        code = getattr(codes.DCM, name)
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
        items.append(item)
    return items


def method_description(options: ProfileOptions) -> list[str]:
    """Return DeidentificationMethod values (LO: 64 characters each)."""
    described = [f"bidsdeface {__version__}", "PS3.15 E.1-1 Basic Profile", "face removed, brain untouched"]
    described += [name.replace("_", " ") for name in OPTION_CODES if getattr(options, name)]
    return [text[:64] for text in described]


def _mark_deidentified(dataset: Any, options: ProfileOptions, who: Replacements, pixels_cleaned: bool) -> None:
    dataset.PatientName = who.pseudonym
    dataset.PatientID = who.pseudonym
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = method_description(options)
    dataset.DeidentificationMethodCodeSequence = deidentification_codes(options, pixels_cleaned)
    if pixels_cleaned:
        dataset.BurnedInAnnotation = "NO"
    dataset.LongitudinalTemporalInformationModified = "MODIFIED" if options.modified_dates else "REMOVED"
    dataset.RecognizableVisualFeatures = "NO"


def _rebuild_file_meta(dataset: Any) -> None:
    """Replace the file meta information with the elements a file needs (nothing of the sender's)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    old = getattr(dataset, "file_meta", None)
    syntax = getattr(old, "TransferSyntaxUID", None) or ExplicitVRLittleEndian
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"BIDSDEFACE_{__version__}"[:16]
    dataset.file_meta = meta
