#!/usr/bin/env python
"""Write ``boutiques.json`` (the Boutiques descriptor of the BIDS-App CLI) from the argparse parser.

The descriptor is generated, never edited by hand, so it cannot drift from the
command line; ``tests/test_boutiques.py`` checks the two against each other in
both directions and runs ``bosh validate --bids``. Run it after changing an option::

    python scripts/write_boutiques.py            # writes ./boutiques.json
    python scripts/write_boutiques.py --check    # exit 1 if boutiques.json is out of date
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from bidsdeface import __version__
from bidsdeface.cli import build_parser
from bidsdeface.slurm import measured_resources

REPO = Path(__file__).resolve().parent.parent
DOCKER_IMAGE = f"bidsdeface/bidsdeface:{__version__}"
# BIDS-App value keys, in the order the BIDS-App command-line template wants them.
BIDS_APP_KEYS = ("bids_dir", "output_dir", "analysis_level", "participant_label", "session_label")
# Path options that name an existing file (Boutiques "File"); other paths are created by the run.
EXISTING_FILES = frozenset({"scrub_policy"})
NOT_DESCRIBED = frozenset({"help", "version"})


def _name(dest: str) -> str:
    return dest.replace("_", " ").capitalize()


def _help(action: argparse.Action) -> str:
    return (action.help or "").replace("%%", "%")


def _typed(action: argparse.Action) -> dict[str, Any]:
    """Boutiques type, integer flag and minimum of an argparse action."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._CountAction)):
        return {"type": "Flag"}
    kind = getattr(action.type, "__name__", "str")
    if kind in ("int", "_positive_int"):
        return {"type": "Number", "integer": True, **({"minimum": 1} if kind == "_positive_int" else {})}
    if kind in ("float", "_non_negative_float"):
        return {"type": "Number", **({"minimum": 0} if kind == "_non_negative_float" else {})}
    if kind == "_fraction":
        return {"type": "Number", "minimum": 0, "maximum": 1}
    return {"type": "File" if action.dest in EXISTING_FILES else "String"}


def _input(action: argparse.Action) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": action.dest,
        "name": _name(action.dest),
        "description": _help(action),
        "value-key": f"[{action.dest.upper()}]",
        "optional": bool(action.option_strings),
        **_typed(action),
    }
    if action.option_strings:
        entry["command-line-flag"] = next(o for o in action.option_strings if o.startswith("--"))
    if action.nargs == "+":
        entry["list"] = True
        entry["min-list-entries"] = 1
    if action.choices is not None:
        entry["value-choices"] = list(action.choices)
    if action.default not in (None, False, [], "") and not isinstance(action, argparse._CountAction):
        entry["default-value"] = action.default
    return entry


def descriptor() -> dict[str, Any]:
    """Return the descriptor of ``bidsdeface`` as built by :func:`bidsdeface.cli.build_parser`."""
    parser = build_parser()
    actions = [a for a in parser._actions if a.dest not in NOT_DESCRIBED]
    inputs: list[dict[str, Any]] = []
    for action in actions:
        if action.dest != "output_dir":
            inputs.append(_input(action))
            continue
        # The BIDS-App shape: OUTPUT_DIR as a new folder's name, or a participant level's output for group.
        inputs.append({**_input(action), "id": "output_dir_name", "name": "Output folder", "optional": True})
        inputs.append(
            {
                **_input(action),
                "id": "participant_level_analysis_dir",
                "name": "Participant-level output folder",
                "type": "File",
                "optional": True,
                "description": "for the group level: the OUTPUT_DIR of earlier participant-level runs",
            }
        )
    keys = [f"[{dest.upper()}]" for dest in BIDS_APP_KEYS]
    keys += [entry["value-key"] for entry in inputs if entry["value-key"] not in keys]
    per_scan = measured_resources()["PerScan"].values()
    return {
        "name": "bidsdeface",
        "tool-version": __version__,
        "schema-version": "0.5",
        "description": parser.description,
        "author": "bidsdeface developers",
        "url": "https://github.com/bidsdeface/bidsdeface",
        "command-line": "mkdir -p [OUTPUT_DIR]; bidsdeface " + " ".join(keys),
        "container-image": {"type": "docker", "image": DOCKER_IMAGE},
        "inputs": inputs,
        "groups": [
            {
                "id": "output_folder",
                "name": "Output folder",
                "description": "A new folder name for the participant level, or an existing participant-level "
                "output for the group level.",
                "members": ["output_dir_name", "participant_level_analysis_dir"],
                "mutually-exclusive": True,
                "one-is-required": True,
            }
        ],
        "output-files": [
            {
                "id": "output_dir",
                "name": "Output folder",
                "description": "The defaced BIDS derivative dataset, with QC figures and reports",
                "path-template": "[OUTPUT_DIR]",
                "optional": False,
            }
        ],
        "suggested-resources": {
            "cpu-cores": int(measured_resources()["OmpThreads"]),
            "ram": math.ceil(max(kind["PeakRssGB"] for kind in per_scan) * 1.5),
            "walltime-estimate": math.ceil(max(kind["WallSeconds"] for kind in per_scan) * 3),
        },
        "tags": {"domain": ["neuroinformatics", "mri", "ct", "pet", "bids", "de-identification"]},
    }


def main(argv: list[str] | None = None) -> int:
    """Write or check ``boutiques.json``; return 0, or 1 when ``--check`` finds it out of date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "boutiques.json", help="descriptor to write")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if out of date")
    args = parser.parse_args(argv)
    text = json.dumps(descriptor(), indent=2) + "\n"
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            sys.stderr.write(f"{args.out} is out of date: run python scripts/write_boutiques.py\n")
            return 1
        return 0
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
