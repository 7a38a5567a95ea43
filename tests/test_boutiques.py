"""The Boutiques descriptor (boutiques.json) against the real command-line parser and the real bosh."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bidsdeface import __version__
from bidsdeface.cli import build_parser

from .conftest import REPO

DESCRIPTOR = REPO / "boutiques.json"
NOT_DESCRIBED = {"help", "version"}


def _bosh(*args: str) -> subprocess.CompletedProcess[str]:
    bosh = Path(sys.executable).parent / "bosh"
    return subprocess.run([str(bosh), *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def descriptor() -> dict:
    return json.loads(DESCRIPTOR.read_text())


def _actions() -> list[argparse.Action]:
    return [action for action in build_parser()._actions if action.dest not in NOT_DESCRIBED]


def _expected_type(action: argparse.Action) -> set[str]:
    if isinstance(action, (argparse._StoreTrueAction, argparse._CountAction)):
        return {"Flag"}
    numeric = ("_positive_int", "_non_negative_float", "_fraction")
    if action.type in (int, float) or getattr(action.type, "__name__", "") in numeric:
        return {"Number"}
    return {"String", "File"}


def test_bosh_validates_the_bids_app_descriptor() -> None:
    result = _bosh("validate", "--bids", str(DESCRIPTOR))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BIDS validation OK" in result.stdout + result.stderr


def test_descriptor_is_generated_from_the_current_parser() -> None:
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "write_boutiques.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def test_every_cli_option_is_described_alike(descriptor: dict) -> None:
    by_flag = {entry.get("command-line-flag"): entry for entry in descriptor["inputs"]}
    by_key = {entry["value-key"]: entry for entry in descriptor["inputs"] if "command-line-flag" not in entry}
    for action in _actions():
        if action.option_strings:
            flags = [flag for flag in action.option_strings if flag in by_flag]
            assert len(flags) == 1, f"{action.option_strings} not in the descriptor"
            entries = [by_flag[flags[0]]]
        else:
            entries = [e for e in descriptor["inputs"] if e["value-key"] == f"[{action.dest.upper()}]"]
            assert entries and all(e["value-key"] in by_key for e in entries), action.dest
        for entry in entries:
            where = f"{action.dest} ({entry['id']})"
            assert entry["type"] in _expected_type(action), where
            assert entry.get("list", False) == (action.nargs == "+"), where
            assert entry.get("value-choices") == (None if action.choices is None else list(action.choices)), where
            unset = action.default in (None, False, [], "") or isinstance(action, argparse._CountAction)
            assert entry.get("default-value") == (None if unset else action.default), where
            assert entry["optional"] == (bool(action.option_strings) or action.dest == "output_dir"), where
            if entry["type"] == "Number":
                assert entry.get("integer", False) == (getattr(action.type, "__name__", "") in ("int", "_positive_int"))


def test_every_described_input_is_a_cli_option(descriptor: dict) -> None:
    parser = build_parser()
    options = {flag for action in parser._actions for flag in action.option_strings}
    positionals = {f"[{a.dest.upper()}]" for a in parser._actions if not a.option_strings}
    for entry in descriptor["inputs"]:
        if "command-line-flag" in entry:
            assert entry["command-line-flag"] in options, entry["id"]
        else:
            assert entry["value-key"] in positionals, entry["id"]
        assert entry["value-key"] in descriptor["command-line"], entry["id"]
    assert descriptor["tool-version"] == __version__
    assert descriptor["container-image"]["image"].endswith(f":{__version__}")


def test_simulated_invocation_is_the_expected_command(tmp_path: Path) -> None:
    invocation = {
        "bids_dir": "/data/ds",
        "output_dir_name": "/data/ds-defaced",
        "analysis_level": "participant",
        "participant_label": ["01", "02"],
        "modalities": ["T1w", "ct"],
        "method": "blur",
        "remove_ears": True,
        "brain_margin": 4.5,
        "nprocs": 2,
    }
    (tmp_path / "invocation.json").write_text(json.dumps(invocation))
    result = _bosh("exec", "simulate", str(DESCRIPTOR), "-i", str(tmp_path / "invocation.json"))
    assert result.returncode == 0, result.stderr
    command = result.stdout.split("Generated Command:")[1].strip()
    assert command == (
        "mkdir -p /data/ds-defaced; bidsdeface /data/ds /data/ds-defaced participant --participant-label 01 02 "
        "--layout derivative --modalities T1w ct --method blur --remove-ears --brain-margin 4.5 "
        "--min-registration-score 0.8 --nprocs 2 --omp-nthreads 2 --max-suppressed-rows 0.05 --slurm-max-parallel 20"
    )
    args = build_parser().parse_args(shlex.split(command.split(";", 1)[1])[1:])
    assert (args.participant_label, args.modalities, args.method, args.remove_ears) == (
        ["01", "02"],
        ["T1w", "ct"],
        "blur",
        True,
    )
    assert (args.brain_margin, args.nprocs, str(args.output_dir)) == (4.5, 2, "/data/ds-defaced")
