"""SLURM job arrays: one subject per array task, then the group level in a job that waits for them.

``bidsdeface BIDS_DIR OUTPUT_DIR participant --write-slurm-array FILE`` writes one
self-contained bash script. ``bash FILE`` on a login node submits the array and
the dependent group job; SLURM then runs the same file as each task, and the
task picks its subject from ``SLURM_ARRAY_TASK_ID``. Task resources come from the
measurements of ``benchmarks/benchmark.py`` (``measured_resources.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from . import __version__
from .config import DATE_SHIFT_KEY_ENV, Config
from .discover import ScanJob, find_scans
from .errors import OutputError, UsageError
from .files import Table, write_bytes_atomic
from .identity import needs_private_folder, private_folder
from .metadata import participants_plan

log = logging.getLogger(__name__)

MEASURED_RESOURCES = "measured_resources.json"
# Cluster nodes, shared file systems and busy neighbours are slower than the benchmark machine.
TIME_SAFETY = 3.0
TIME_MARGIN_MINUTES = 5
MEMORY_SAFETY = 1.5
MEMORY_STEP_GB = 0.5
GROUP_JOB = {"cpus": 1, "memory_gb": 2.0, "minutes": 30}
GROUP_TASK_ID = 0
# Options the script sets per task itself, or must not write down (the key is a secret).
NOT_PASSED_TO_TASKS = frozenset(
    {
        "participant_label",
        "skip_bids_validation",
        "nprocs",
        "omp_nthreads",
        "date_shift_key",
        "write_slurm_array",
        "slurm_max_parallel",
        "slurm_partition",
        "slurm_account",
        "slurm_log_dir",
        "apptainer_image",
    }
)


@dataclass(frozen=True)
class ArraySettings:
    """How the job array is written (the run itself is described by :class:`Config`).

    Attributes
    ----------
    script : Path
        The script to write.
    max_parallel : int
        At most this many tasks at a time (``--array=1-N%M``).
    partition, account : str
        ``--partition`` and ``--account`` lines (none when empty).
    apptainer_image : str
        Run each task in this image (a ``.sif`` file or ``docker://...``) with
        ``apptainer run``; empty to run the ``bidsdeface`` on the node's PATH.
    log_dir : Path or None
        Folder of the task logs; ``logs/`` beside the script when None.
    """

    script: Path
    max_parallel: int = 20
    partition: str = ""
    account: str = ""
    apptainer_image: str = ""
    log_dir: Path | None = None

    @property
    def logs(self) -> Path:
        """The task log folder."""
        return self.log_dir if self.log_dir is not None else self.script.parent / "logs"


@dataclass(frozen=True)
class TaskResources:
    """What each array task asks SLURM for, and where the numbers come from."""

    cpus: int
    memory_gb: float
    minutes: int
    basis: str

    @property
    def time(self) -> str:
        """The time limit as ``HH:MM:00``."""
        return f"{self.minutes // 60:02d}:{self.minutes % 60:02d}:00"


def scan_kind(suffix: str) -> str:
    """Return the benchmark class of a BIDS suffix: ``ct``, ``pet`` or ``mri``.

    >>> [scan_kind(s) for s in ("T1w", "ct", "pet", "FLAIR")]
    ['mri', 'ct', 'pet', 'mri']
    """
    return suffix if suffix in ("ct", "pet") else "mri"


def measured_resources() -> dict[str, Any]:
    """Return the benchmark's per-scan measurements shipped with the package."""
    return json.loads(resources.files("bidsdeface").joinpath(MEASURED_RESOURCES).read_text())


def task_resources(jobs: list[ScanJob], measured: dict[str, Any]) -> TaskResources:
    """Return the resources of the most demanding subject's task.

    Time: the subject's scans at the slowest measured wall time of their kind (start-up
    included), times :data:`TIME_SAFETY`, plus :data:`TIME_MARGIN_MINUTES`. Memory: the
    largest measured peak of the kinds present, times :data:`MEMORY_SAFETY` (one scan
    at a time, so peaks do not add up).
    """
    per_scan = measured["PerScan"]
    kinds: dict[str, Counter[str]] = {}
    for job in jobs:
        kinds.setdefault(job.subject, Counter())[scan_kind(job.suffix)] += 1
    seconds = max(sum(per_scan[kind]["WallSeconds"] * n for kind, n in counts.items()) for counts in kinds.values())
    peak = max(per_scan[kind]["PeakRssGB"] for counts in kinds.values() for kind in counts)
    present = sorted({kind for counts in kinds.values() for kind in counts})
    basis = "; ".join(
        f"{kind} {per_scan[kind]['WallSeconds']:.0f} s, {per_scan[kind]['PeakRssGB']:.2f} GB per scan"
        for kind in present
    )
    return TaskResources(
        cpus=int(measured["OmpThreads"]),
        memory_gb=max(MEMORY_STEP_GB, math.ceil(peak * MEMORY_SAFETY / MEMORY_STEP_GB) * MEMORY_STEP_GB),
        minutes=5 * math.ceil((seconds * TIME_SAFETY / 60 + TIME_MARGIN_MINUTES) / 5),
        basis=f"measured by benchmarks/benchmark.py on {measured['Machine']} ({measured['Measured']}): {basis}; "
        f"x{TIME_SAFETY:g} time and x{MEMORY_SAFETY:g} memory for slower nodes",
    )


def ordered_subjects(bids_dir: Path, jobs: list[ScanJob]) -> list[str]:
    """Return the subjects with scans to process, in ``participants.tsv`` order (others after, sorted)."""
    with_scans = {job.subject for job in jobs}
    listed: list[str] = []
    table_path = bids_dir / "participants.tsv"
    if table_path.is_file():
        table = Table.parse(table_path.read_text(encoding="utf-8-sig"))
        if "participant_id" in table.columns:
            column = table.columns.index("participant_id")
            listed = [row[column].removeprefix("sub-") for row in table.rows]
    ordered = [subject for subject in dict.fromkeys(listed) if subject in with_scans]
    unlisted = sorted(with_scans - set(ordered))
    if unlisted and listed:
        log.warning("%d subject(s) with scans are not in participants.tsv; they get tasks too", len(unlisted))
    return ordered + unlisted


def _output_root(config: Config) -> Path:
    """Return OUTPUT_DIR as the user gave it: the release root with ``--layout release``, else the derivative."""
    return config.release_dir or config.output_dir


def _bind_mounts(config: Config, task_options: list[str]) -> list[str]:
    """Folders the container must see, at the same paths: input read-only, outputs read-write."""
    output = _output_root(config)
    binds = [f"{config.bids_dir}:{config.bids_dir}:ro", f"{output}:{output}"]
    if needs_private_folder(config):
        private = private_folder(config)
        binds.append(f"{private}:{private}")
    if config.work_dir is not None:
        binds.append(f"{config.work_dir}:{config.work_dir}")
    if "--scrub-policy" in task_options:
        policy = Path(task_options[task_options.index("--scrub-policy") + 1]).parent
        binds.append(f"{policy}:{policy}:ro")
    return binds


def task_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Return the options a SLURM task needs to repeat this run: those given, paths made absolute.

    Options in :data:`NOT_PASSED_TO_TASKS` are left out: the script sets them per task, or
    (the date-shift key) must not write them down.

    >>> from bidsdeface.cli import build_parser
    >>> parser = build_parser()
    >>> args = parser.parse_args(["in", "out", "participant", "--method", "blur", "-vv", "--nprocs", "2"])
    >>> task_options(parser, args)
    ['--method', 'blur', '--verbose', '--verbose']
    """
    options: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in NOT_PASSED_TO_TASKS or action.default == argparse.SUPPRESS:
            continue
        value = getattr(args, action.dest)
        if value == action.default:
            continue
        flag = next(option for option in action.option_strings if option.startswith("--"))
        if isinstance(action, argparse._StoreTrueAction):
            options.append(flag)
        elif isinstance(action, argparse._CountAction):
            options += [flag] * value
        else:
            values = value if isinstance(value, list) else [value]
            options += [flag, *(str(v.absolute()) if isinstance(v, Path) else str(v) for v in values)]
    return options


def _directives(settings: ArraySettings, needs: TaskResources, count: int) -> list[str]:
    """Return the ``#SBATCH`` lines of the array."""
    directives = [
        "--job-name=bidsdeface",
        f"--array=1-{count}%{settings.max_parallel}",
        f"--cpus-per-task={needs.cpus}",
        f"--mem={math.ceil(needs.memory_gb * 1024)}M",
        f"--time={needs.time}",
        f"--output={settings.logs}/bidsdeface_%A_%a.log",
    ]
    directives += [f"--partition={settings.partition}"] if settings.partition else []
    directives += [f"--account={settings.account}"] if settings.account else []
    return [f"#SBATCH {directive}" for directive in directives]


def _group_options() -> str:
    """Return the ``sbatch`` options of the group-level job (task :data:`GROUP_TASK_ID` of the same script)."""
    return " ".join(
        [
            f"--array={GROUP_TASK_ID}",
            "--job-name=bidsdeface-group",
            f"--cpus-per-task={GROUP_JOB['cpus']}",
            f"--mem={math.ceil(GROUP_JOB['memory_gb'] * 1024)}M",
            f"--time={GROUP_JOB['minutes'] // 60:02d}:{GROUP_JOB['minutes'] % 60:02d}:00",
        ]
    )


def _runner(config: Config, settings: ArraySettings, task_options: list[str]) -> tuple[list[str], list[Path]]:
    """Return the ``run_bidsdeface`` shell function, and the folders to create before submitting (bind targets)."""
    if not settings.apptainer_image:
        return ["run_bidsdeface() {", '    exec bidsdeface "$@"', "}"], []
    q = shlex.quote
    binds = " ".join(f"--bind {q(bind)}" for bind in _bind_mounts(config, task_options))
    runner = [
        "run_bidsdeface() {",
        "    # The container sees the same paths as the host; the date-shift key passes through the environment.",
        f'    if [ -n "${{{DATE_SHIFT_KEY_ENV}:-}}" ]; then',
        f'        export APPTAINERENV_{DATE_SHIFT_KEY_ENV}="${DATE_SHIFT_KEY_ENV}"',
        "    fi",
        f'    exec apptainer run --cleanenv {binds} {q(settings.apptainer_image)} "$@"',
        "}",
    ]
    return runner, [_output_root(config), *([private_folder(config)] if needs_private_folder(config) else [])]


def _key_check(config: Config) -> list[str]:
    """Return the lines that refuse to submit without the date-shift key in the environment, when the run uses one."""
    if config.date_shift_key is None:
        return []
    return [
        f'if [ -z "${{{DATE_SHIFT_KEY_ENV}:-}}" ]; then',
        f'    echo "error: export {DATE_SHIFT_KEY_ENV} (the --date-shift-key secret) before submitting; '
        'it is never written into this script" >&2',
        "    exit 64",
        "fi",
    ]


def _header(config: Config, needs: TaskResources, count: int) -> list[str]:
    """Return the comment block: what wrote the script, how to submit it, why its tasks are safe together."""
    return [
        f"# Written by bidsdeface {__version__} on {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: "
        f"{count} subject(s) of {config.bids_dir}, one per array task.",
        "#",
        "# Submit:   bash THIS_FILE    submits the array, then a group job that waits for every task",
        "#                             (afterany) and rebuilds qc.tsv, participants.tsv and the reports.",
        "# Or:       sbatch THIS_FILE  the array alone; run the group level yourself afterwards.",
        "# One task by hand:  SLURM_ARRAY_TASK_ID=3 bash THIS_FILE   (0 runs the group level)",
        "# Resources per task: " + needs.basis + ".",
        "# Tasks never touch the input, write each file atomically and lock what subjects share, so",
        "# they can all write into OUTPUT_DIR at once. A task killed by its time limit leaves no",
        "# partial files; resubmit it (sbatch --array=K THIS_FILE) and it finishes the subject.",
        "# Labels here are the input's: keep this file and its logs with the input, not the output.",
    ]


def _submission(config: Config, settings: ArraySettings, count: int, folders: list[Path]) -> list[str]:
    """Return the lines run without a task id (``bash FILE``): submit the array and the group job after it."""
    q = shlex.quote
    return [
        'if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then',
        "    if ! command -v sbatch >/dev/null 2>&1; then",
        "        echo \"error: sbatch not found; run 'bash $0' on a SLURM login node, or one task with "
        'SLURM_ARRAY_TASK_ID=1 bash $0" >&2',
        "        exit 69",
        "    fi",
        *(f"    {line}" for line in _key_check(config)),
        '    mkdir -p "$LOG_DIR"' + "".join(f" {q(str(folder))}" for folder in folders),
        '    array_job=$(sbatch --parsable "$0")',
        '    array_job="${array_job%%;*}"',
        f'    group_job=$(sbatch --parsable --dependency=afterany:"$array_job" {_group_options()} "$0")',
        '    group_job="${group_job%%;*}"',
        f'    echo "submitted job array $array_job ({count} task(s), at most {settings.max_parallel} at a time) '
        'and group job $group_job (after all tasks); logs in $LOG_DIR"',
        "    exit 0",
        "fi",
    ]


def _task(count: int, needs: TaskResources, task_options: list[str]) -> list[str]:
    """Return the lines run with a task id: the group level (0) or the task's subject (1-N)."""
    task_line = " ".join(shlex.quote(option) for option in task_options)
    return [
        f'if [ "$SLURM_ARRAY_TASK_ID" -eq {GROUP_TASK_ID} ]; then',
        f'    exec_args=("$BIDS_DIR" "$OUTPUT_DIR" group {task_line})',
        f'elif [ "$SLURM_ARRAY_TASK_ID" -ge 1 ] && [ "$SLURM_ARRAY_TASK_ID" -le {count} ]; then',
        '    subject="${SUBJECTS[$((SLURM_ARRAY_TASK_ID - 1))]}"',
        '    exec_args=("$BIDS_DIR" "$OUTPUT_DIR" participant --participant-label "$subject" '
        f'--skip-bids-validation --nprocs 1 --omp-nthreads "${{SLURM_CPUS_PER_TASK:-{needs.cpus}}}" {task_line})',
        "else",
        f'    echo "error: SLURM_ARRAY_TASK_ID=$SLURM_ARRAY_TASK_ID: tasks are 1-{count} (0: group level)" >&2',
        "    exit 64",
        "fi",
        'run_bidsdeface "${exec_args[@]}"',
    ]


def array_script(
    config: Config, settings: ArraySettings, subjects: list[str], task_options: list[str], needs: TaskResources
) -> str:
    """Return the text of the job-array script (pure).

    ``task_options`` are the command-line options every task passes on (methods,
    filters, scrub rules), with absolute paths; the script adds the subject, the
    thread count and ``--skip-bids-validation`` (the input was validated once, when
    the script was written).
    """
    q = shlex.quote
    count = len(subjects)
    runner, folders = _runner(config, settings, task_options)
    lines = [
        "#!/bin/bash",
        *_directives(settings, needs, count),
        *_header(config, needs, count),
        "set -euo pipefail",
        "",
        f"BIDS_DIR={q(str(config.bids_dir))}",
        f"OUTPUT_DIR={q(str(_output_root(config)))}",
        "SUBJECTS=(",
        *(f"    {q(subject)}" for subject in subjects),
        ")",
        f"LOG_DIR={q(str(settings.logs))}",
        "",
        *runner,
        "",
        *_submission(config, settings, count, folders),
        "",
        *_task(count, needs, task_options),
        "",
    ]
    return "\n".join(lines)


def write_array_script(config: Config, settings: ArraySettings, task_options: list[str]) -> tuple[int, TaskResources]:
    """Write the job-array script for the subjects ``config`` selects; return the task count and resources.

    Raises
    ------
    UsageError
        The script or its logs would go inside the input or the output dataset.
    NoFilesError
        The filters select no scans.
    PrivacyError
        ``--k-anonymity`` or ``--l-diversity`` cannot be reached (see :func:`bidsdeface.metadata.participants_plan`).
    OutputError
        The script or the log folder cannot be written.
    """
    script = settings.script.absolute()
    for place, name in ((config.bids_dir, "input dataset"), (_output_root(config), "output dataset")):
        for path, what in ((script, "script"), (settings.logs.absolute(), "log folder")):
            if place.resolve() in path.resolve().parents:
                raise UsageError(f"{path}: the SLURM {what} lists input labels; put it outside the {name} ({place})")
    participants_plan(config)  # a k or l the participants table cannot reach fails here, not in every task
    jobs = find_scans(config)
    subjects = ordered_subjects(config.bids_dir, jobs)
    needs = task_resources(jobs, measured_resources())
    text = array_script(config, settings, subjects, task_options, needs)
    try:
        settings.logs.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(script, text.encode())
        script.chmod(0o755)
    except OSError as exc:
        raise OutputError(f"{exc.filename}: cannot write the SLURM script or its log folder ({exc.strerror})") from exc
    log.info(
        "wrote %s: %d task(s), at most %d at a time, each %d CPU(s), %.1f GB, %s (%s)",
        script,
        len(subjects),
        settings.max_parallel,
        needs.cpus,
        needs.memory_gb,
        needs.time,
        needs.basis,
    )
    log.info("submit it with: bash %s", script)
    return len(subjects), needs
