"""A one-node SLURM cluster for the tests: Debian's munge and slurm-wlm, started in a temporary folder.

The node is this machine with its real CPUs and memory (``slurmd -C``); state, spool, logs,
sockets and PID files live under ``root``; every daemon started is stopped by its PID.
Process tracking is ``proctrack/linuxproc`` and tasks are not confined (``task/none``);
``cgroup.conf`` asks for cgroup v1 without systemd, as these machines mount cgroups in
hybrid mode, which the v2 plugin refuses.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")
MUNGE_KEY = Path("/etc/munge/munge.key")
START_SECONDS = 60


@dataclass
class Cluster:
    """A running one-node cluster: ``env`` points SLURM's commands at it."""

    root: Path
    env: dict[str, str]
    version: str
    pids: list[Path] = field(default_factory=list)

    def run(self, *argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
        """Run a command with the cluster's environment."""
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, check=check, **kwargs)

    def queue(self) -> list[str]:
        """Return ``JOBID STATE`` lines of every job still queued or running."""
        return self.run("squeue", "-h", "-r", "-o", "%i %T").stdout.split("\n")[:-1]

    def wait_until_empty(self, timeout: float = 900) -> None:
        """Wait until no job is queued or running."""
        deadline = time.monotonic() + timeout
        while self.queue():
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still queued after {timeout} s: {self.queue()}")
            time.sleep(1)

    def stop(self) -> None:
        """Stop every daemon this cluster started, by the PID it wrote."""
        for pid_file in reversed(self.pids):
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (OSError, ValueError):
                continue
        time.sleep(1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _node() -> str:
    """Return this machine's ``NodeName=... CPUs=... RealMemory=...`` line (``slurmd -C``)."""
    line = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    return line + " State=UNKNOWN"


def _config(root: Path, node: str) -> str:
    host = node.split()[0].removeprefix("NodeName=")
    run, state = root / "run", root / "state"
    settings = {
        "ClusterName": "bidsdefacetest", "SlurmctldHost": host, "SlurmUser": "root", "SlurmdUser": "root",
        "SlurmctldPort": _free_port(), "SlurmdPort": _free_port(), "AuthType": "auth/munge",
        "AuthInfo": f"socket={run}/munge.socket", "CredType": "cred/munge", "StateSaveLocation": state,
        "SlurmdSpoolDir": root / "spool", "SlurmctldPidFile": run / "slurmctld.pid",
        "SlurmdPidFile": run / "slurmd.pid", "SlurmctldLogFile": root / "log" / "slurmctld.log",
        "SlurmdLogFile": root / "log" / "slurmd.log", "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none", "SelectType": "select/cons_tres", "SelectTypeParameters": "CR_Core_Memory",
        "MpiDefault": "none", "ReturnToService": 2, "JobAcctGatherType": "jobacct_gather/none",
    }  # fmt: skip
    lines = [f"{key}={value}" for key, value in settings.items()]
    return "\n".join([*lines, node, "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""])


def start_cluster(root: Path) -> Cluster | str:
    """Start munged, slurmctld and slurmd under ``root``; return the cluster, or why it cannot run here."""
    missing = [program for program in PROGRAMS if shutil.which(program) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian packages slurm-wlm and munge; .ci/run installs them)"
    if os.geteuid() != 0 or not os.access(MUNGE_KEY, os.R_OK):
        return "a one-node SLURM needs root (slurmd) and a readable munge key"
    for folder in ("run", "state", "spool", "log"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(_config(root, _node()))
    (root / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nIgnoreSystemd=yes\n")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    version = subprocess.run(["sbatch", "--version"], capture_output=True, text=True, env=env).stdout.strip()
    cluster = Cluster(root, env, version)
    run = root / "run"
    daemons = [
        (["munged", f"--socket={run}/munge.socket", f"--key-file={MUNGE_KEY}", f"--pid-file={run}/munged.pid",
          f"--log-file={root}/log/munged.log", f"--seed-file={run}/munge.seed", "--force"], run / "munged.pid"),
        (["slurmctld", "-f", str(conf)], run / "slurmctld.pid"),
        (["slurmd", "-f", str(conf)], run / "slurmd.pid"),
    ]  # fmt: skip
    for argv, pid_file in daemons:
        started = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if started.returncode != 0:
            cluster.stop()
            return f"{argv[0]} did not start: {(started.stderr or started.stdout).strip()[-300:]}"
        cluster.pids.append(pid_file)
    deadline = time.monotonic() + START_SECONDS
    while cluster.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip() != "idle":
        if time.monotonic() > deadline:
            cluster.stop()
            return "the node did not become idle within a minute (see slurmd.log)"
        time.sleep(0.5)
    return cluster
