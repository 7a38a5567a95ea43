"""The one subprocess runner: no shell, checked exit code, checked outputs."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ToolError

log = logging.getLogger(__name__)

STDERR_TAIL_CHARS = 800


@dataclass(frozen=True)
class ToolResult:
    """What a finished program left behind."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def which(program: str) -> str:
    """Return the absolute path of ``program`` or raise a ToolError naming it.

    The environment's own ``bin`` folder is searched first, so tools installed
    with the package are found even when that folder is not on PATH.
    """
    found = shutil.which(program, path=str(Path(sys.executable).parent)) or shutil.which(program)
    if found is None:
        raise ToolError(f"{program}: not found on PATH (is it installed in this environment?)")
    return found


def run(
    args: Sequence[str | Path],
    *,
    ok_codes: Sequence[int] = (0,),
    expect: Sequence[Path] = (),
    timeout: float | None = None,
    cwd: Path | None = None,
) -> ToolResult:
    """Run one program without a shell and check that it did what it should.

    Parameters
    ----------
    args : sequence of str or Path
        Program and arguments; the program is resolved on PATH.
    ok_codes : sequence of int
        Exit codes that count as success.
    expect : sequence of Path
        Files that must exist afterwards.
    timeout : float, optional
        Seconds before the program is killed.
    cwd : Path, optional
        Working directory.

    Returns
    -------
    ToolResult

    Raises
    ------
    ToolError
        The program is missing, exits with another code, times out, or does not
        write an expected file. The message names the program and ends with the
        tail of its stderr; ``returncode`` holds the exit code when there was one.
    """
    argv = [str(a) for a in args]
    argv[0] = which(argv[0])
    log.debug("running %s", " ".join(argv))
    proc = _run_once(argv, timeout, cwd)
    name = Path(argv[0]).name
    if proc.returncode not in ok_codes:
        tail = (proc.stderr or proc.stdout).strip()[-STDERR_TAIL_CHARS:]
        raise ToolError(f"{name}: exit code {proc.returncode}: {tail}", returncode=proc.returncode)
    missing = [str(p) for p in expect if not Path(p).exists()]
    if missing:
        raise ToolError(f"{name}: finished but did not write {', '.join(missing)}")
    return ToolResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


def _run_once(argv: list[str], timeout: float | None, cwd: Path | None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (no shell, no stdin, output captured as text); raise ToolError if it cannot start or finish."""
    name = Path(argv[0]).name
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            cwd=cwd,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{name}: timed out after {timeout} s") from exc
    except OSError as exc:
        raise ToolError(f"{name}: could not start ({exc.strerror})") from exc
