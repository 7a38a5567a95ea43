"""Time the burned-in text check and measure what it finds on real series.

For each clean series under ``--shared``: seconds for the default check (a sample), seconds per
instance when every instance is checked, and detections over every instance (false positives,
as none of these series carries text). Then the smallest text it finds: Pillow's scalable font
at growing sizes, white on the air of the Trio's middle slice, each size at the four corners.

    python benchmarks/pixel_text.py [--output table.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pydicom
from benchmark import DEFAULT_SHARED, print_report, simple_table

from bidsdeface.pixeltext import find_series_text, text_boxes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.textdraw import PLACES, draw_text, fonts

SERIES = {
    "trio": "dicom_mri_t1w_siemens_trio_mprage",
    "prismaHFS": "dicom_mri_t1w_siemens_decubitus_HFS",
    "prismaHFP": "dicom_mri_t1w_siemens_decubitus_HFP",
    "ct": "dicom_ct_head_ge_gantry_tilt",
}
SIZES = (6, 7, 8, 9, 10, 11, 12, 14, 16)


def series_row(name: str, folder: Path, threads: int) -> list[str]:
    """Return default-check seconds, full-check seconds per instance and detections over every instance."""
    files = sorted(folder.glob("*.dcm"))
    find_series_text(files[:1], True, threads)  # the model loads once per process
    sampled = find_series_text(files, False, threads)
    started = time.perf_counter()
    full = find_series_text(files, True, threads)
    per_instance = (time.perf_counter() - started) / len(files)
    found = len({instance for instance, _ in full.boxes})
    return [name, str(len(files)), f"{sampled.seconds:.2f}", str(sampled.checked), f"{per_instance:.3f}", str(found)]


def smallest_found(folder: Path, threads: int) -> tuple[int | None, int]:
    """Return the smallest font size (pixels) found at all four corners, and the image's rows."""
    files = sorted(folder.glob("*.dcm"))
    pixels = pydicom.dcmread(files[len(files) // 2]).pixel_array
    for size in SIZES:
        if all(text_boxes(draw_text(pixels, fonts(size)[1], place)[0], threads) for place in PLACES):
            return size, pixels.shape[0]
    return None, pixels.shape[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--omp-nthreads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    header = ["series", "instances", "default check s", "frames sampled", "every instance: s each", "detections"]
    rows = [series_row(name, args.shared / folder, args.omp_nthreads) for name, folder in SERIES.items()]
    lines = simple_table(header, rows)
    for name in ("trio", "ct"):
        size, height = smallest_found(args.shared / SERIES[name], args.omp_nthreads)
        lines.append(
            f"\nSmallest text found at all four corners of the {name} middle slice ({height} rows): {size} px font"
        )
    return print_report(lines, args.omp_nthreads, load, args.output)


if __name__ == "__main__":
    sys.exit(main())
