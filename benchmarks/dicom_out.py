"""Time ``bidsdeface-dicom`` (DICOM in, defaced DICOM out) beside the BIDS path on the same series.

For each real DICOM series under ``--shared``, one at a time, each command in a fresh process:

1. BIDS path: ``bidsdeface-convert SERIES BIDS --participant-label 01`` then
   ``bidsdeface BIDS OUT participant --skip-bids-validation``;
2. DICOM path: ``bidsdeface-dicom SERIES OUT --participant-label 01``.

Wall seconds include Python start-up; peak memory is that child's (``os.wait4``). The DICOM
path's per-stage seconds come from its QC record. Run it alone on an idle machine::

    python benchmarks/dicom_out.py [--series trio prismaHFS] [--output table.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from benchmark import DEFAULT_SHARED, print_report, run_child, simple_table

SERIES = {
    "trio": "dicom_mri_t1w_siemens_trio_mprage",
    "prismaHFS": "dicom_mri_t1w_siemens_decubitus_HFS",
    "prismaHFP": "dicom_mri_t1w_siemens_decubitus_HFP",
    "ct": "dicom_ct_head_ge_gantry_tilt",
}
STAGES = ("convert", "register", "masks", "deface", "qc", "write", "selfcheck")


def _command(module: str, *args: object) -> list[str]:
    code = f"import sys; from bidsdeface.{module} import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *map(str, args)]


def measure(name: str, source: Path, root: Path, threads: int) -> list[str]:
    """Return one table row: both paths' wall seconds and peak GB, and the DICOM path's stages."""
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    bids, out, dicom = root / "bids", root / "out", root / "dicom"
    c1, convert_s, convert_gb = run_child(_command("convert_cli", source, bids, "--participant-label", "01"),
                                          logs / f"{name}-convert.log")  # fmt: skip
    c2, deface_s, deface_gb = run_child(_command("cli", bids, out, "participant", "--skip-bids-validation",
                                                 "--omp-nthreads", threads), logs / f"{name}-deface.log")  # fmt: skip
    c3, dicom_s, dicom_gb = run_child(_command("dicom_cli", source, dicom, "--participant-label", "01",
                                               "--omp-nthreads", threads), logs / f"{name}-dicom.log")  # fmt: skip
    records = sorted((dicom / "qc").glob("*_qc.json"))
    seconds = json.loads(records[0].read_text())["Seconds"] if records else {}
    files = sum(1 for _ in dicom.glob("sub-*/**/*.dcm"))
    codes = "/".join(str(code) for code in (c1, c2, c3))
    return [name, str(files), f"{convert_s + deface_s:.1f}", f"{max(convert_gb, deface_gb):.2f}", f"{dicom_s:.1f}",
            f"{dicom_gb:.2f}", *(f"{seconds.get(stage, 0):.2f}" for stage in STAGES), codes]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="shared real data folder")
    parser.add_argument("--series", nargs="+", choices=list(SERIES), default=list(SERIES))
    parser.add_argument("--omp-nthreads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    header = ["series", "instances", "BIDS path s", "BIDS GB", "DICOM out s", "DICOM GB",
              *(f"{stage} s" for stage in STAGES), "exit codes"]  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="bidsdeface-bench-dicom-") as scratch:
        for name in args.series:
            rows.append(measure(name, args.shared / SERIES[name], Path(scratch) / name, args.omp_nthreads))
            print(" | ".join(rows[-1]), file=sys.stderr)
    lines = simple_table(header, rows)
    return print_report(lines, args.omp_nthreads, load, args.output)


if __name__ == "__main__":
    sys.exit(main())
