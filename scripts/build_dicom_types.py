#!/usr/bin/env python
"""Write ``bidsdeface/dicom_standard/attribute_types.json``: the IOD type of each attribute the profile may empty.

Table E.1-1 gives some attributes a choice of actions (``X/Z``, ``X/D``, ``Z/D``, ``X/Z/D``)
that depends on the attribute's type in the object's IOD: D where it is type 1, Z where it
is type 2, X otherwise. The types come from highdicom's machine-readable module tables
(``highdicom/_standard/*.json``, MIT), which highdicom generates from the DICOM standard.
Only what bidsdeface needs is kept: the top-level attributes with such a choice, for the SOP
classes of the images it exports (MR, CT and PET, classic, enhanced and legacy converted).
Run it after updating highdicom or the bundled Table E.1-1 (the test extra installs highdicom)::

    python scripts/build_dicom_types.py           # writes the file
    python scripts/build_dicom_types.py --check   # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import json
import pkgutil
import sys
from importlib.metadata import version
from pathlib import Path

from pydicom.datadict import keyword_for_tag

from bidsdeface.deidentify import profile_rules

TARGET = Path(__file__).resolve().parents[1] / "bidsdeface" / "dicom_standard" / "attribute_types.json"
EXPORTED_IODS = (
    "mr-image", "enhanced-mr-image", "legacy-converted-enhanced-mr-image",
    "ct-image", "enhanced-ct-image", "legacy-converted-enhanced-ct-image",
    "positron-emission-tomography-image", "enhanced-pet-image", "legacy-converted-enhanced-pet-image",
)  # fmt: skip
STRICTNESS = ("1", "1C", "2", "2C", "3")


def _table(name: str) -> dict:
    return json.loads(pkgutil.get_data("highdicom", f"_standard/{name}.json").decode("utf-8"))


def build() -> dict:
    """Return the types by SOP Class UID, then keyword (the strictest where several modules hold one)."""
    choices = {keyword_for_tag(tag) for tag, rule in profile_rules().items() if "/" in rule["basicProfile"]}
    iods, modules = _table("iod_module_map"), _table("module_attribute_map")
    types: dict[str, dict[str, str]] = {}
    for sop_class, iod in sorted(_table("sop_class_iod_map").items()):
        if iod not in EXPORTED_IODS:
            continue
        found: dict[str, str] = {}
        for module in iods[iod]:
            for attribute in modules[module["key"]]:
                keyword, kind = attribute["keyword"], attribute["type"]
                if attribute["path"] or keyword not in choices:
                    continue
                if keyword not in found or STRICTNESS.index(kind) < STRICTNESS.index(found[keyword]):
                    found[keyword] = kind
        types[sop_class] = dict(sorted(found.items()))
    return {"source": f"highdicom {version('highdicom')} _standard module tables", "types": types}


def main() -> int:
    """Write (or check) the bundled table; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the file is up to date")
    text = json.dumps(build(), indent=1) + "\n"
    if parser.parse_args().check:
        return 0 if TARGET.read_text() == text else 1
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
