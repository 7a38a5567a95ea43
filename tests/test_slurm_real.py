"""The cluster path on a real SLURM (Debian's slurm-wlm, one node), not an emulation.

``bidsdeface --write-slurm-array`` writes the script, ``bash job.sh`` submits the array and
the dependent group job, and SLURM runs them; then a task of a second submission is
cancelled partway (``scancel``), resubmitted as the script's header says, and finishes its
subject with no partial file left. Skips with the reason when SLURM can't run here.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from bidsdeface.cli import main
from bidsdeface.files import TEMP_PREFIX

from .conftest import NIFTI_HEADS, SHARED, make_dataset, needs_shared, run_validator
from .slurmcluster import Cluster, start_cluster

pytestmark = [needs_shared, pytest.mark.slow]

SUBJECTS = {"01": "ixi", "02": "ixi", "03": "chris", "04": "ixi"}  # IXI's 2 mm head keeps the test short


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    started = start_cluster(tmp_path_factory.mktemp("slurm"))
    if isinstance(started, str):
        pytest.skip(started)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def bids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(
        tmp_path_factory.mktemp("bids") / "ds", {s: SHARED / NIFTI_HEADS[h] for s, h in SUBJECTS.items()}
    )


def write_script(bids: Path, out: Path, script: Path, *labels: str) -> None:
    chosen = ["--participant-label", *labels, "--skip-bids-validation"] if labels else []
    argv = [str(bids), str(out), "participant", "--drop-dates", *chosen, "--write-slurm-array", str(script)]
    assert main([*argv, "--slurm-log-dir", str(script.parent / "logs")]) == 0


def submit(cluster: Cluster, script: Path) -> tuple[str, str]:
    """``bash job.sh`` as a user types it; return the array and group job ids."""
    result = cluster.run("bash", str(script), cwd=script.parent)
    found = re.search(r"submitted job array (\d+) .* group job (\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    return found.group(1), found.group(2)


def job_states(cluster: Cluster, job: str) -> list[str]:
    """Return ``JobState ExitCode`` of every task of a job (finished jobs stay known for a few minutes)."""
    shown = cluster.run("scontrol", "show", "job", "-o", job).stdout
    return [" ".join(re.findall(r"(?:JobState|ExitCode)=(\S+)", line)) for line in shown.splitlines()]


def test_the_array_and_the_group_job_run_on_slurm(cluster: Cluster, bids: Path, tmp_path: Path) -> None:
    out, script = tmp_path / "out", tmp_path / "hpc" / "job.sh"
    write_script(bids, out, script)
    started = time.monotonic()
    array, group = submit(cluster, script)
    cluster.wait_until_empty()
    seconds = time.monotonic() - started
    assert job_states(cluster, array) == ["COMPLETED 0:0"] * len(SUBJECTS)
    assert job_states(cluster, group) == ["COMPLETED 0:0"]
    logs = sorted((script.parent / "logs").glob("*.log"))
    assert len(logs) == len(SUBJECTS) + 1, [log.name for log in logs]
    for log in logs:
        text = log.read_text()
        assert " ERROR " not in text and re.search(r"INFO +total [\d.]+ s\s*$", text), (log.name, text[-800:])
    assert len((out / "qc.tsv").read_text().splitlines()) == len(SUBJECTS) + 1
    assert run_validator(out).returncode == 0
    print(f"real SLURM ({cluster.version}): {len(SUBJECTS)} tasks and the group job in {seconds:.0f} s")


def test_a_cancelled_task_resubmitted_finishes_its_subject(cluster: Cluster, bids: Path, tmp_path: Path) -> None:
    out, script = tmp_path / "out", tmp_path / "hpc" / "job.sh"
    write_script(bids, out, script, "01", "02")
    array, _ = submit(cluster, script)
    deadline = time.monotonic() + 600
    while f"{array}_2 RUNNING" not in cluster.queue():
        assert time.monotonic() < deadline, cluster.queue()
        time.sleep(0.2)
    time.sleep(2)  # partway: registering
    cluster.run("scancel", f"{array}_2")
    cluster.wait_until_empty()
    finished = out / "sub-02" / "anat" / "sub-02_desc-defaced_T1w.json"
    assert not finished.exists() and (out / "sub-01" / "anat" / "sub-01_desc-defaced_T1w.json").is_file()
    assert "resubmit it (sbatch --array=K THIS_FILE)" in script.read_text()
    cluster.run("sbatch", "--array=2", str(script), cwd=script.parent)
    cluster.wait_until_empty()
    assert finished.is_file()
    assert not [path for path in out.rglob("*") if path.name.startswith(TEMP_PREFIX)]


def test_the_resources_the_script_asks_for_are_accepted(cluster: Cluster, bids: Path, tmp_path: Path) -> None:
    script = tmp_path / "hpc" / "job.sh"
    write_script(bids, tmp_path / "out", script, *SUBJECTS)
    result = cluster.run("sbatch", "--test-only", str(script), check=False)
    assert result.returncode == 0 and "to start at" in result.stderr, result.stderr
