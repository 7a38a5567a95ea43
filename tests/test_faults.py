"""Fail closed: bad headers next to good heads, through the real command line under a memory cap.

Each bad scan fails alone, at once, with one line naming it and the cause; the good heads
are defaced; nothing else reaches stderr; memory stays within one scan's normal budget.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from .conftest import NIFTI_HEADS, PARALLEL, SHARED, make_dataset, needs_shared, write_header_variant

# Measured on the IXI head with two workers: each process peaks at about 1.1-1.3 GiB of
# address space (VmPeak; antspyx reserves little) and 0.8 GiB resident. The cap leaves twice
# that; before the header checks, a sheared scan grew past 13 GB.
ADDRESS_SPACE_CAP = int(2.5 * 2**30)
RESIDENT_BUDGET_KIB = int(1.5 * 2**20)  # ru_maxrss is in KiB on Linux
# Two real registrations take about 30 s on an idle 2-core machine; this leaves room for a busy
# one. A sheared scan used to run for over 12 minutes.
WALL_SECONDS = 240
TIMEOUT_SECONDS = 900

IXI = SHARED / NIFTI_HEADS["ixi"]
GOOD = ["good", "niftitwo"]  # the NIfTI-2 copy of the IXI head is a good head: it is defaced, and stays NIfTI-2
BAD = {
    "sheared": "sheared or degenerate affine: voxel axes 88 degrees from perpendicular",
    "zeroscale": "voxel size (0, 2, 2) mm in the affine is outside",
    "hugevoxel": "voxel size (1e+06, 2, 2) mm in the affine is outside",
    "toomany": "header claims shape (30000, 30000, 30000)",
}
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) ")


def _scans(folder: Path) -> dict[str, Path]:
    """The IXI head as is, as NIfTI-2, and with each bad header (the last one without its voxels)."""
    folder.mkdir()
    affine = nib.load(IXI).affine
    shear = np.eye(4)
    shear[0, 1:3] = 5.0  # off-diagonal terms five times the voxel size
    return {
        "good": IXI,
        "niftitwo": write_header_variant(folder / "nifti2.nii.gz", IXI, nifti2=True),
        "sheared": write_header_variant(folder / "sheared.nii.gz", IXI, sform=affine @ shear),
        "zeroscale": write_header_variant(folder / "zero.nii.gz", IXI, sform=affine @ np.diag([0.0, 1, 1, 1])),
        "hugevoxel": write_header_variant(
            folder / "huge.nii.gz", IXI, sform=affine @ np.diag([5e5, 1, 1, 1]), zooms=(1e6, 2, 2)
        ),
        "toomany": write_header_variant(folder / "many.nii.gz", IXI, shape=(30000,) * 3, with_data=False),
    }


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))


def _run_capped(command: list[str], logs: Path) -> tuple[int, float, int]:
    """Run ``command`` under the address-space cap; return its exit code, wall seconds and peak RSS (KiB).

    ``os.wait4`` gives the peak of this child and the workers it reaped, not of every child
    the test session ever ran (as ``RUSAGE_CHILDREN`` would).
    """
    started = time.monotonic()
    with open(logs / "stdout", "w") as out, open(logs / "stderr", "w") as err:
        process = subprocess.Popen(
            command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, preexec_fn=_capped, start_new_session=True
        )
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, time.monotonic() - started, usage.ru_maxrss
        if time.monotonic() - started > TIMEOUT_SECONDS:
            os.killpg(process.pid, signal.SIGKILL)
            os.wait4(process.pid, 0)
            pytest.fail(f"the run did not finish in {TIMEOUT_SECONDS} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One participant run over the mixed dataset (module-wide)."""
    base = tmp_path_factory.mktemp("faults")
    bids = make_dataset(base / "bids", _scans(base / "sources"))
    out = base / "out"
    command = [sys.executable, "-m", "bidsdeface.cli", str(bids), str(out), "participant", "--skip-bids-validation"]
    code, seconds, peak_kib = _run_capped([*command, *PARALLEL], base)
    return {
        "code": code,
        "seconds": seconds,
        "peak_kib": peak_kib,
        "out": out,
        "stdout": (base / "stdout").read_text(),
        "stderr": (base / "stderr").read_text(),
    }


@needs_shared
def test_bad_scans_fail_alone_and_good_heads_are_defaced(fault_run: dict) -> None:
    assert fault_run["code"] == 65, fault_run["stderr"][-3000:]
    anat = fault_run["out"] / "sub-{0}" / "anat" / "sub-{0}_desc-defaced_T1w.nii.gz"
    for label in GOOD:
        assert Path(str(anat).format(label)).is_file(), label
    for label in BAD:
        assert not Path(str(anat).format(label)).exists(), label
    assert isinstance(nib.load(str(anat).format("niftitwo")), nib.Nifti2Image)  # the input's format is kept
    masks = [
        np.asanyarray(nib.load(fault_run["out"] / f"sub-{g}/anat/sub-{g}_mod-T1w_defacemask.nii.gz").dataobj) > 0
        for g in GOOD
    ]
    assert 2 * np.sum(masks[0] & masks[1]) / (masks[0].sum() + masks[1].sum()) > 0.99


@needs_shared
def test_each_failure_is_one_line_naming_the_scan_and_the_cause(fault_run: dict) -> None:
    failed = [line for line in fault_run["stderr"].splitlines() if "FAILED" in line]
    assert len(failed) == len(BAD), failed
    for label, cause in BAD.items():
        mine = [line for line in failed if f"sub-{label}_T1w.nii.gz: FAILED: " in line]
        assert len(mine) == 1 and cause in mine[0], (label, failed)


@needs_shared
def test_nothing_but_log_lines_reaches_stderr(fault_run: dict) -> None:
    """No traceback, no library warning or nibabel notice: every line is one of the run's log lines."""
    stderr = fault_run["stderr"]
    for stray in ("Traceback", "Warning", "sizeof_hdr", "ITK"):
        assert stray not in stderr, stray
    assert [line for line in stderr.splitlines() if not LOG_LINE.match(line)] == []
    assert fault_run["stdout"] == ""


@needs_shared
def test_the_run_is_fast_and_within_one_scans_memory(fault_run: dict) -> None:
    assert fault_run["seconds"] < WALL_SECONDS, fault_run["seconds"]
    assert fault_run["peak_kib"] < RESIDENT_BUDGET_KIB, fault_run["peak_kib"]


# A numpy RuntimeWarning, nibabel's own log (a header fix) and a multi-line warning, as libraries emit them.
LIBRARY_NOISE = """
import warnings
import nibabel as nib
import numpy as np
np.float64(0.0) / 0.0
nib.Nifti1Header.from_header(nib.Nifti2Header())
warnings.warn("first line\\nsecond line", UserWarning)
"""


@pytest.mark.parametrize(
    ("setup", "debug_lines"),
    [
        ("from bidsdeface.cli import _configure_logging; _configure_logging(0)", 0),
        ("from bidsdeface.cli import _configure_logging; _configure_logging(1)", 3),
        ("from bidsdeface.pipeline import _start_worker; _start_worker()", 0),  # a pool worker keeps no debug log
    ],
)
def test_library_warnings_and_notices_are_debug_lines_only(setup: str, debug_lines: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", setup + LIBRARY_NOISE], capture_output=True, text=True, timeout=120, check=True
    )
    lines = result.stderr.splitlines()
    assert len(lines) == debug_lines and all(LOG_LINE.match(line) and " DEBUG " in line for line in lines), lines
