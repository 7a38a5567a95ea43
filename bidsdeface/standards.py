"""The standards as data: BIDS schema definitions (``bidsschematools``) and the DICOM dictionary (pydicom).

Scrubbing asks two questions of them: is a name a standard one (safe to name in a
report), and does a value have the type and shape the standard defines for its
key. Both are read on first use and cached; nothing is loaded at import.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from functools import lru_cache
from importlib import resources
from typing import Any

# DICOM value representations whose values are numbers (PS3.5 Table 6.2-1).
DICOM_NUMBER_VRS: frozenset[str] = frozenset({"DS", "IS", "FD", "FL", "SL", "SS", "UL", "US", "SV", "UV"})
# DICOM Code String (CS): upper-case letters, digits, space and underscore, at most 16 characters (PS3.5 6.2).
DICOM_CODE_STRING = re.compile(r"[A-Z0-9 _]{0,16}")


@lru_cache(maxsize=1)
def _schema() -> Any:
    from bidsschematools import schema

    return schema.load_schema()


def _by_name(objects: Any) -> dict[str, tuple[dict[str, Any], ...]]:
    """Group schema objects by their ``name`` (one name may have several definitions, e.g. per datatype)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for definition in objects.values():
        content = definition.to_dict()
        grouped.setdefault(content["name"], []).append(content)
    return {name: tuple(definitions) for name, definitions in grouped.items()}


@lru_cache(maxsize=1)
def metadata_definitions() -> dict[str, tuple[dict[str, Any], ...]]:
    """Return the BIDS schema's metadata field definitions by field name."""
    return _by_name(_schema().objects.metadata)


@lru_cache(maxsize=1)
def column_definitions() -> dict[str, tuple[dict[str, Any], ...]]:
    """Return the BIDS schema's tabular column definitions by column name."""
    return _by_name(_schema().objects.columns)


@lru_cache(maxsize=1)
def format_patterns() -> dict[str, re.Pattern[str]]:
    """Return the BIDS schema's value formats (``datetime``, ``rrid``, ``uri``...) as compiled patterns."""
    return {name: re.compile(entry.pattern) for name, entry in _schema().objects.formats.items()}


def schema_version() -> str:
    """Return the BIDS version of the schema the rules come from (for method records)."""
    return str(_schema().bids_version)


@lru_cache(maxsize=1)
def entity_order() -> tuple[str, ...]:
    """Return the BIDS entities' short names in the order file names carry them."""
    schema = _schema()
    return tuple(schema.objects.entities[entity]["name"] for entity in schema.rules.entities)


def dicom_definition(keyword: str) -> tuple[str, str] | None:
    """Return the DICOM dictionary's (VR, VM) for a keyword, or None when it is not a DICOM keyword.

    >>> dicom_definition("ImageType"), dicom_definition("NotAKeyword")
    (('CS', '2-n'), None)
    """
    from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    return dictionary_VR(tag), dictionary_VM(tag)


def is_standard_name(name: str) -> bool:
    """Return whether ``name`` is a BIDS metadata field, a BIDS column or a DICOM keyword.

    Only such names may be shown in records and logs; any other removed name may
    itself be identifying (``JohnSmith_MRN``) and is counted instead.

    >>> is_standard_name("PatientName"), is_standard_name("EchoTime"), is_standard_name("handedness")
    (True, True, True)
    >>> is_standard_name("JohnSmith_MRN")
    False
    """
    return name in metadata_definitions() or name in column_definitions() or dicom_definition(name) is not None


def _fits_number(value: Any, definition: dict[str, Any]) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return False
    if definition.get("type") == "integer" and not float(value).is_integer():
        return False
    bounds = (
        ("minimum", lambda v, b: v >= b),
        ("maximum", lambda v, b: v <= b),
        ("exclusiveMinimum", lambda v, b: v > b),
        ("exclusiveMaximum", lambda v, b: v < b),
    )
    return all(ok(value, definition[name]) for name, ok in bounds if isinstance(definition.get(name), int | float))


def _fits_string(value: Any, definition: dict[str, Any]) -> bool:
    if not isinstance(value, str):
        return False
    pattern = definition.get("pattern")
    if pattern is not None and re.search(pattern, value) is None:
        return False
    form = format_patterns().get(definition.get("format", ""))
    return form is None or form.fullmatch(value) is not None


def _fits_array(value: Any, definition: dict[str, Any]) -> bool:
    if not isinstance(value, list):
        return False
    if len(value) < definition.get("minItems", 0) or len(value) > definition.get("maxItems", len(value)):
        return False
    items = definition.get("items")
    return items is None or all(fits_definition(item, items) for item in value)


def fits_definition(value: Any, definition: dict[str, Any]) -> bool:
    """Return whether ``value`` has the type and shape of a BIDS schema definition.

    Covers what the schema uses for metadata: ``type``, ``enum``, ``anyOf``,
    ``items`` with ``minItems``/``maxItems``, numeric bounds, ``pattern`` and
    ``format``. Objects never fit: nothing from an input's nested objects leaves.

    >>> echo = {"anyOf": [{"type": "number", "exclusiveMinimum": 0},
    ...                   {"type": "array", "items": {"type": "number"}}]}
    >>> fits_definition(0.003, echo), fits_definition([0.01, 0.02], echo), fits_definition({"a": 1}, echo)
    (True, True, False)
    >>> fits_definition("j-", {"type": "string", "enum": ["j", "j-"]}), fits_definition("x", {"enum": ["j"]})
    (True, False)
    """
    if "anyOf" in definition:
        return any(fits_definition(value, option) for option in definition["anyOf"])
    if "enum" in definition and value not in definition["enum"]:
        return False
    kind = definition.get("type")
    if kind in ("number", "integer"):
        return _fits_number(value, definition)
    if kind == "string":
        return _fits_string(value, definition)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return _fits_array(value, definition)
    return "enum" in definition and not isinstance(value, dict | list)


def fits_dicom(value: Any, vr: str, vm: str) -> bool:
    """Return whether ``value`` (as dcm2niix writes it to JSON) fits a DICOM VR and VM.

    Numbers for numeric VRs, Code Strings for CS, plain strings for other text VRs;
    a list when the VM allows several values. Sequences, dates and names never fit.

    >>> fits_dicom(["ORIGINAL", "PRIMARY", "M", "ND"], "CS", "2-n"), fits_dicom("Smith^John", "CS", "1")
    (True, False)
    >>> fits_dicom(3, "IS", "1"), fits_dicom([3, 4], "IS", "1")
    (True, False)
    """
    if isinstance(value, list):
        return vm != "1" and bool(value) and all(fits_dicom(item, vr, "1") for item in value)
    if vr in DICOM_NUMBER_VRS:
        return _fits_number(value, {})
    if vr == "CS":
        return isinstance(value, str) and DICOM_CODE_STRING.fullmatch(value) is not None
    return vr in ("SH", "LO") and isinstance(value, str)


def standard_fit(key: str, value: Any) -> bool | None:
    """Return whether ``value`` fits what BIDS (first) or DICOM defines for ``key``; None when neither does.

    >>> standard_fit("InjectionStart", 0), standard_fit("InjectionStart", [0, "10:00:00"])
    (True, False)
    >>> standard_fit("SeriesNumber", 7), standard_fit("PhilipsRWVSlope", 1.5) is None
    (True, True)
    """
    definitions = metadata_definitions().get(key)
    if definitions:
        return any(fits_definition(value, definition) for definition in definitions)
    dicom = dicom_definition(key)
    return None if dicom is None else fits_dicom(value, *dicom)


def column_definition(name: str) -> dict[str, Any] | None:
    """Return the BIDS schema definition of a participants/sessions/scans column, or None.

    Columns defined for other tables (``group__channel``) are not these; the
    participants, sessions and scans columns are the first definition of a name.
    """
    definitions = column_definitions().get(name)
    return definitions[0] if definitions else None


def column_levels(name: str) -> dict[str, str] | None:
    """Return the BIDS-defined vocabulary (``Levels``) of a column such as ``sex``, or None.

    >>> sorted(column_levels("handedness"))[:3], column_levels("age")
    (['A', 'AMBIDEXTROUS', 'Ambidextrous'], None)
    """
    definition = column_definition(name)
    levels = (definition or {}).get("definition", {}).get("Levels")
    return dict(levels) if levels else None


def column_description(name: str) -> dict[str, Any] | None:
    """Return the BIDS schema's description of a column, as a ``participants.json`` entry, or None.

    >>> column_description("sex")["Levels"]["F"], column_description("acq_time")["Description"][:20]
    ('Female', 'The moment the acqui')
    """
    definition = column_definition(name)
    if definition is None:
        return None
    if "definition" in definition:
        return dict(definition["definition"])
    first_paragraph = definition.get("description", "").split("\n\n")[0]
    return {"LongName": definition["display_name"], "Description": " ".join(first_paragraph.split())}


@lru_cache(maxsize=1)
def anatomic_regions() -> frozenset[str]:
    """Return DICOM CID 4030 (CT, MR and PET Anatomy Imaged) as upper-case letters and digits.

    >>> {"HEAD", "BRAIN", "HEADNECK"} <= anatomic_regions()
    True
    """
    from pydicom.sr.codedict import codes

    names = {re.sub(r"[^A-Z0-9]", "", name.upper()) for name in codes.cid4030.dir()}
    return frozenset(names | {name.replace("AND", "") for name in names})


def _words(text: str) -> set[str]:
    return {word.lower() for word in re.findall(r"[A-Za-z]+", text)}


def _collect_words(content: Any, words: set[str]) -> None:
    if isinstance(content, str):
        words |= _words(content)
    elif isinstance(content, dict):
        for key, value in content.items():
            words |= _words(str(key))
            _collect_words(value, words)
    elif isinstance(content, list | tuple):
        for item in content:
            _collect_words(item, words)


@lru_cache(maxsize=1)
def technical_vocabulary() -> tuple[str, ...]:
    """Return the words of the BIDS schema's text and the DICOM dictionary's attribute names, sorted.

    Technical descriptions (``Spoiled Gradient Echo``, ``list mode``) use these
    words; people's names almost never do.

    >>> vocabulary = technical_vocabulary()
    >>> "gradient" in vocabulary, "smith" in vocabulary
    (True, False)
    """
    from pydicom.datadict import DicomDictionary

    words: set[str] = set()
    _collect_words(_schema().to_dict(), words)
    for entry in DicomDictionary.values():
        words |= _words(entry[2])
    return tuple(sorted(words))


def is_technical_word(word: str) -> bool:
    """Return whether ``word`` is a word of the standards, or (5 letters or more) the start of one.

    >>> is_technical_word("Echo"), is_technical_word("Combine"), is_technical_word("Smith")
    (True, True, False)
    """
    vocabulary = technical_vocabulary()
    lowered = word.lower()
    index = bisect_left(vocabulary, lowered)
    if index == len(vocabulary):
        return False
    return vocabulary[index] == lowered or (len(lowered) >= 5 and vocabulary[index].startswith(lowered))


def _rule_groups(node: Any) -> list[dict[str, Any]]:
    """Flatten a tree of schema rules into the rules themselves (the mappings that hold ``key``)."""
    content = node.to_dict() if hasattr(node, "to_dict") else node
    if not isinstance(content, dict):
        return []
    if "suffixes" in content or "selectors" in content:
        return [content]
    return [rule for child in content.values() for rule in _rule_groups(child)]


@lru_cache(maxsize=1)
def _raw_file_rules() -> tuple[dict[str, Any], ...]:
    return tuple(_rule_groups(_schema().rules.files.raw))


@lru_cache(maxsize=1)
def _entity_short_names() -> dict[str, str]:
    return {long: entity["name"] for long, entity in _schema().objects.entities.items()}


def is_raw_bids_file(datatype: str, suffix: str, extension: str, entities: tuple[str, ...]) -> bool:
    """Return whether the schema's raw file rules define a file of this datatype, suffix, extension and entities.

    ``entities`` are the short keys the file name carries (``sub``, ``task``...).

    >>> is_raw_bids_file("func", "bold", ".nii.gz", ("sub", "task", "run"))
    True
    >>> is_raw_bids_file("func", "events", ".tsv", ("sub", "task")), is_raw_bids_file("func", "bold", ".txt", ("sub",))
    (True, False)
    >>> is_raw_bids_file("anat", "T1w", ".nii.gz", ("sub", "secret"))
    False
    """
    short = _entity_short_names()
    for rule in _raw_file_rules():
        if datatype in rule.get("datatypes", ()) and suffix in rule["suffixes"] and extension in rule["extensions"]:
            allowed = {short[name]: level for name, level in rule.get("entities", {}).items()}
            levels = {name: level if isinstance(level, str) else level.get("level") for name, level in allowed.items()}
            required = {name for name, level in levels.items() if level == "required"}
            if required <= set(entities) <= set(allowed):
                return True
    return False


@lru_cache(maxsize=1)
def _modality_of_datatype() -> dict[str, str]:
    modalities = _schema().rules.modalities.to_dict()
    return {datatype: name for name, entry in modalities.items() for datatype in entry["datatypes"]}


_EQUALS = re.compile(r"""^(datatype|suffix|modality|extension) (==|!=) ["'](.+)["']$""")
_INTERSECTS = re.compile(r"""^intersects\(\[?(datatype|suffix|modality)\]?, \[(.*)\]\)$""")
_MATCH = re.compile(r"""^match\(extension, ["'](.+)["']\)$""")
_ENTITY = re.compile(r"""^(?:["'](\w+)["'] in entities|entities\.(\w+)(?: .*)?)$""")


def _selector_may_hold(selector: str, facts: dict[str, str], entities: tuple[str, ...]) -> bool:
    """Return False only when ``selector`` is surely false for a file with these ``facts`` and ``entities``.

    Conditions on other things (the sidecar's values, the dataset) may hold: they decide
    whether a field is required, not whether it belongs to the file.
    """
    equals, intersects = _EQUALS.match(selector), _INTERSECTS.match(selector)
    match, entity = _MATCH.match(selector), _ENTITY.match(selector)
    if selector == "false":
        return False
    if equals:
        return (facts[equals[1]] == equals[3]) == (equals[2] == "==")
    if intersects:
        return facts[intersects[1]] in re.findall(r"""["']([^"']+)["']""", intersects[2])
    if match:
        return re.search(match[1], facts["extension"]) is not None
    if entity:
        long = entity[1] or entity[2]
        return _entity_short_names().get(long, long) in entities
    return True


@lru_cache(maxsize=256)
def sidecar_fields(datatype: str, suffix: str, extension: str, entities: tuple[str, ...] = ()) -> frozenset[str]:
    """Return the metadata fields the schema's sidecar rules give a raw file of this kind.

    ``entities`` are the short keys its name carries (``task``, ``run``...). Rules for
    derivatives are not read: these are the fields of raw files.

    >>> fields = sidecar_fields("func", "bold", ".nii.gz", ("sub", "task"))
    >>> {"RepetitionTime", "TaskName", "EchoTime", "SliceTiming"} <= fields, "IntendedFor" in fields
    (True, False)
    >>> "IntendedFor" in sidecar_fields("fmap", "phasediff", ".nii.gz"), {"TracerName", "Sources"} & fields
    (True, set())
    """
    facts = {
        "datatype": datatype,
        "suffix": suffix,
        "extension": extension,
        "modality": _modality_of_datatype().get(datatype, ""),
    }
    metadata = _schema().objects.metadata
    names: set[str] = set()
    for group, rules in _schema().rules.sidecars.items():
        if group == "derivatives":
            continue
        for rule in _rule_groups(rules):
            if all(_selector_may_hold(selector, facts, entities) for selector in rule.get("selectors", ())):
                names |= {metadata[key]["name"] for key in rule.get("fields", {})}
    return frozenset(names)


CONFIDENTIALITY_PROFILE = ("dicom_standard", "confidentiality_profile_attributes.json")


@lru_cache(maxsize=1)
def confidentiality_profile() -> dict[str, dict[str, str]]:
    """Return DICOM PS3.15 Table E.1-1 by attribute keyword: the Basic Profile's action and each option's.

    Read from the bundled machine-readable copy (``bidsdeface/dicom_standard``, see its
    ``SOURCE.md`` for the edition). Repeating groups (``60xx``) are read as their first group;
    rows naming ranges of tags (curve data, private attributes) have no keyword and are
    left out.

    >>> profile = confidentiality_profile()
    >>> profile["PatientName"]["basicProfile"], profile["StudyInstanceUID"]["basicProfile"]
    ('Z', 'U')
    >>> profile["DeviceSerialNumber"]["rtnDevIdOpt"], "EchoTime" in profile
    ('K', False)
    """
    from pydicom.datadict import keyword_for_tag

    table: dict[str, dict[str, str]] = {}
    for row in _profile_rows():
        tag = row["id"].replace("xx", "00", 1)
        if not re.fullmatch(r"[0-9A-Fa-f]{8}", tag):
            continue
        keyword = keyword_for_tag(int(tag, 16))
        if keyword:
            table[keyword] = _actions(row)
    return table


def _profile_rows() -> list[dict[str, str]]:
    folder, name = CONFIDENTIALITY_PROFILE
    return json.loads(resources.files("bidsdeface").joinpath(folder, name).read_text(encoding="utf-8"))


def _actions(row: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in row.items() if key.endswith(("Profile", "Opt"))}


@lru_cache(maxsize=1)
def confidentiality_rules() -> dict[int, dict[str, str]]:
    """Return DICOM PS3.15 Table E.1-1 by tag: the Basic Profile's action and each option's.

    Only rows naming one tag; repeating groups (curves ``50xx``, overlays ``60xx``) and
    private attributes are rows of ranges, handled by whoever applies the table.

    >>> rules = confidentiality_rules()
    >>> rules[0x00100010]["basicProfile"], rules[0x00081140]["basicProfile"], len(rules) > 600
    ('Z', 'X/Z/U*', True)
    """
    return {int(row["id"], 16): _actions(row) for row in _profile_rows() if re.fullmatch(r"[0-9a-fA-F]{8}", row["id"])}


ATTRIBUTE_TYPES = ("dicom_standard", "attribute_types.json")


@lru_cache(maxsize=1)
def attribute_types() -> dict[str, dict[str, str]]:
    """Return, by SOP Class UID, the IOD type of each top-level attribute Table E.1-1 gives a choice of actions.

    Bundled for the images bidsdeface exports (``scripts/build_dicom_types.py`` writes it from
    highdicom's machine-readable module tables; see ``bidsdeface/dicom_standard/SOURCE.md``).

    >>> attribute_types()["1.2.840.10008.5.1.4.1.1.4"]["InstitutionName"]
    '3'
    """
    folder, name = ATTRIBUTE_TYPES
    return json.loads(resources.files("bidsdeface").joinpath(folder, name).read_text(encoding="utf-8"))["types"]
