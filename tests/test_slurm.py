"""SLURM job arrays: the script, its submission, and its tasks running at once into one output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bidsdeface.cli import build_parser, main
from bidsdeface.slurm import measured_resources, task_options

from .conftest import (
    ARRAY_PARALLEL,
    EXAMPLE,
    HEADS,
    KILLED_HEAD,
    concurrency,
    head_paths,
    needs_shared,
    run_validator,
    tree_digest,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture()
def three_subjects(tmp_path: Path) -> Path:
    """The bundled example with its head copied to two more subjects (listed out of order)."""
    bids = tmp_path / "bids"
    shutil.copytree(EXAMPLE, bids)
    for label in ("03", "02"):
        anat = bids / f"sub-{label}" / "anat"
        anat.mkdir(parents=True)
        for source in (EXAMPLE / "sub-01" / "anat").iterdir():
            shutil.copyfile(source, anat / source.name.replace("sub-01", f"sub-{label}"))
    (bids / "participants.tsv").write_text("participant_id\tage\nsub-03\t30\nsub-01\t40\nsub-02\t50\n")
    return bids


def _write(bids: Path, tmp_path: Path, *options: str) -> tuple[int, str]:
    script = tmp_path / "hpc" / "deface.sbatch"
    code = main(
        [
            str(bids),
            str(tmp_path / "out"),
            "participant",
            "--skip-bids-validation",
            *options,
            "--write-slurm-array",
            str(script),
        ]
    )
    return code, script.read_text() if script.is_file() else ""


def _fake(folder: Path, name: str, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(f"#!/bin/bash\n{body}\n")
    (folder / name).chmod(0o755)


def _bash(script: Path, env: dict[str, str], fakes: Path | None = None) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([*([str(fakes)] if fakes else []), os.environ["PATH"]])
    return subprocess.run(
        ["bash", str(script)], env={**os.environ, "PATH": path, **env}, capture_output=True, text=True, check=False
    )


def test_script_has_one_task_per_subject_and_measured_resources(three_subjects: Path, tmp_path: Path) -> None:
    before = tree_digest(three_subjects)
    code, text = _write(
        three_subjects, tmp_path, "--method", "blur", "--slurm-max-parallel", "7", "--slurm-partition", "short"
    )
    assert code == 0
    assert tree_digest(three_subjects) == before
    assert subprocess.run(["bash", "-n", str(tmp_path / "hpc" / "deface.sbatch")], check=False).returncode == 0
    assert "#SBATCH --array=1-3%7" in text and "#SBATCH --partition=short" in text
    assert text.index("    03\n") < text.index("    01\n") < text.index("    02\n"), "participants.tsv order"
    mri = measured_resources()["PerScan"]["mri"]
    memory_mb = int(text.split("#SBATCH --mem=")[1].split("M")[0])
    hours, minutes, _ = text.split("#SBATCH --time=")[1].split("\n")[0].split(":")
    assert memory_mb >= mri["PeakRssGB"] * 1024 * 1.5
    assert int(hours) * 3600 + int(minutes) * 60 >= mri["WallSeconds"] * 3
    assert f"#SBATCH --cpus-per-task={measured_resources()['OmpThreads']}" in text
    assert "--method blur" in text and "--skip-bids-validation --nprocs 1" in text


def test_submission_queues_array_then_group_after_it(three_subjects: Path, tmp_path: Path) -> None:
    _write(three_subjects, tmp_path)
    calls = tmp_path / "sbatch.calls"
    _fake(tmp_path / "fakes", "sbatch", f'echo "$@" >> {calls}; echo "4242;cluster"')
    result = _bash(tmp_path / "hpc" / "deface.sbatch", {}, tmp_path / "fakes")
    assert result.returncode == 0, result.stderr
    array, group = calls.read_text().splitlines()
    assert array == f"--parsable {tmp_path / 'hpc' / 'deface.sbatch'}"
    assert "--dependency=afterany:4242" in group and "--array=0" in group
    assert "submitted job array 4242" in result.stdout


def test_task_runs_the_right_subject_with_task_options(three_subjects: Path, tmp_path: Path) -> None:
    """A task's command line (a recording stand-in for the apptainer runtime, which is not installed here)."""
    _write(three_subjects, tmp_path, "--apptainer-image", str(tmp_path / "bidsdeface.sif"), "--remove-ears")
    _fake(tmp_path / "fakes", "apptainer", 'printf "%s\\n" "$@"')
    result = _bash(
        tmp_path / "hpc" / "deface.sbatch", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_CPUS_PER_TASK": "4"}, tmp_path / "fakes"
    )
    args = result.stdout.splitlines()
    assert args[:2] == ["run", "--cleanenv"]
    image = args.index(str(tmp_path / "bidsdeface.sif"))
    assert f"{three_subjects.absolute()}:{three_subjects.absolute()}:ro" in args[:image]
    assert args[image + 1 :] == [
        str(three_subjects.absolute()),
        str((tmp_path / "out").absolute()),
        "participant",
        "--participant-label",
        "01",
        "--skip-bids-validation",
        "--nprocs",
        "1",
        "--omp-nthreads",
        "4",
        "--remove-ears",
    ]
    group = _bash(tmp_path / "hpc" / "deface.sbatch", {"SLURM_ARRAY_TASK_ID": "0"}, tmp_path / "fakes")
    assert "group" in group.stdout.splitlines()
    beyond = _bash(tmp_path / "hpc" / "deface.sbatch", {"SLURM_ARRAY_TASK_ID": "4"}, tmp_path / "fakes")
    assert beyond.returncode == 64 and "tasks are 1-3" in beyond.stderr


def test_release_layout_tasks_write_the_release_root(three_subjects: Path, tmp_path: Path) -> None:
    code, text = _write(three_subjects, tmp_path, "--layout", "release")
    assert code == 0
    assert f"OUTPUT_DIR={(tmp_path / 'out').absolute()}" in text
    assert "--layout release" in text and "group --layout release" in text


def test_secret_key_is_never_written_down(three_subjects: Path, tmp_path: Path) -> None:
    code, text = _write(three_subjects, tmp_path, "--date-shift-key", "s3cr3t-k3y")
    assert code == 0 and "s3cr3t-k3y" not in text
    _fake(tmp_path / "fakes", "sbatch", "echo 1")
    env = {k: v for k, v in os.environ.items() if k != "BIDSDEFACE_DATE_SHIFT_KEY"}
    refused = subprocess.run(
        ["bash", str(tmp_path / "hpc" / "deface.sbatch")],
        env={**env, "PATH": f"{tmp_path / 'fakes'}{os.pathsep}{env['PATH']}"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 64 and "BIDSDEFACE_DATE_SHIFT_KEY" in refused.stderr


def test_script_refused_inside_a_dataset(three_subjects: Path, tmp_path: Path) -> None:
    options = [str(three_subjects), str(tmp_path / "out"), "participant", "--skip-bids-validation"]
    assert main([*options, "--write-slurm-array", str(tmp_path / "out" / "x.sbatch")]) == 64
    assert main([*options, "--write-slurm-array", str(three_subjects / "x.sbatch")]) == 64
    assert main([str(three_subjects), str(tmp_path / "out"), "group", "--write-slurm-array", str(tmp_path / "x")]) == 64
    assert main([*options, "--participant-label", "09", "--write-slurm-array", str(tmp_path / "x")]) == 18
    (tmp_path / "file").write_text("")
    assert main([*options, "--write-slurm-array", str(tmp_path / "file" / "x.sbatch")]) == 73


def test_task_options_repeat_the_run() -> None:
    parser = build_parser()
    given = parser.parse_args(
        ["in", "out", "participant", "--session-label", "a", "b", "--modalities", "T1w", "ct", "--brain-margin", "4",
         "--keep-columns", "age", "--pseudonymize", "-w", "scratch", "--nprocs", "3", "--participant-label", "01"]
    )  # fmt: skip
    again = parser.parse_args(["in", "out", "participant", *task_options(parser, given)])
    passed_on = {"nprocs", "participant_label", "work_dir"}
    assert {k: v for k, v in vars(again).items() if k not in passed_on} == {
        k: v for k, v in vars(given).items() if k not in passed_on
    }
    assert again.work_dir == Path("scratch").absolute()
    assert again.nprocs == 1 and again.participant_label == []


@needs_shared
@pytest.mark.slow
def test_array_tasks_write_one_valid_output_at_once(heads_run: dict) -> None:
    """The heads' tasks ran 4 at a time into one folder: it is valid and complete."""
    tasks = heads_run["tasks"]
    assert concurrency(tasks) == ARRAY_PARALLEL
    assert heads_run["code"] == 0, [run.log.read_text()[-2000:] for run in tasks if run.code]
    result = run_validator(heads_run["out"])
    assert result.returncode == 0, result.stdout[-3000:]
    out = heads_run["out"]
    for label in HEADS:
        _, defaced, mask = head_paths(heads_run, label)
        figures = sorted(p.name for p in (out / f"sub-{label}" / "figures").iterdir())
        # mosaic, render and the skull-strip figure
        assert defaced.is_file() and mask.is_file() and len(figures) == 3, label
        assert defaced.with_name(defaced.name.replace(".nii.gz", ".json")).is_file()
        assert (out / f"sub-{label}.html").is_file()
    qc_rows = (out / "qc.tsv").read_text().splitlines()[1:]
    participants = (out / "participants.tsv").read_text().splitlines()[1:]
    assert len(qc_rows) == len(participants) == len(HEADS)
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["Name"] == "bidsdeface"


@needs_shared
@pytest.mark.slow
def test_killed_task_leaves_no_truncated_file_and_rerun_finishes(heads_run: dict) -> None:
    kill = heads_run["kill"]
    killed = [run for run in heads_run["tasks"] if run.signals]
    assert killed, "the task was never caught writing"
    assert killed[0].signals[0] == "SIGTERM"
    assert kill.snapshot["code"] in (143, -9)
    assert kill.snapshot["truncated"] == []
    assert kill.snapshot["temporaries"] == [], "SIGTERM deletes the temporaries"
    # the sidecar marks a finished scan: it was not there after the kill, and is after the re-run
    _, defaced, _ = head_paths(heads_run, KILLED_HEAD)
    sidecar = defaced.with_name(defaced.name.replace(".nii.gz", ".json"))
    assert sidecar.relative_to(kill.watch).as_posix() not in kill.snapshot["finals"]
    rerun = [run for run in heads_run["tasks"] if run.task == killed[0].task][-1]
    assert rerun.code == 0 and sidecar.is_file()
