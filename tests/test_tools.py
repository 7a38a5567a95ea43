"""The one subprocess runner, on real subprocesses: exit codes, no shell, timeouts, expected files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bidsdeface.errors import EXIT_INTERNAL, ToolError
from bidsdeface.tools import STDERR_TAIL_CHARS, run, which

PYTHON = sys.executable


def _python(code: str, *args: str | Path) -> list[str | Path]:
    return [PYTHON, "-c", code, *args]


def test_success_returns_the_output() -> None:
    result = run(_python("import sys; print('out'); print('err', file=sys.stderr)"))
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\n", "err\n")
    assert result.args[0] == PYTHON


def test_exit_code_is_recorded_in_the_error() -> None:
    with pytest.raises(ToolError) as caught:
        run(_python("import sys; sys.stderr.write('x' * 5000 + 'the end'); sys.exit(3)"))
    error = caught.value
    assert error.returncode == 3 and error.exit_code == EXIT_INTERNAL
    name = Path(PYTHON).name
    assert str(error).startswith(f"{name}: exit code 3: ") and str(error).endswith("the end")
    assert len(str(error)) == len(f"{name}: exit code 3: ") + STDERR_TAIL_CHARS


def test_killed_program_has_a_negative_code() -> None:
    with pytest.raises(ToolError) as caught:
        run(_python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    assert caught.value.returncode == -9


def test_other_ok_codes() -> None:
    assert run(_python("import sys; sys.exit(2)"), ok_codes=(0, 2)).returncode == 2


def test_no_shell_and_no_stdin(tmp_path: Path) -> None:
    """Arguments reach the program as they are (no expansion), and reading stdin ends at once."""
    words = ["$HOME", "*", "a; touch pwned", "`id`"]
    result = run(_python("import sys; print(sys.argv[1:]); print(repr(sys.stdin.read()))", *words), cwd=tmp_path)
    assert result.stdout.splitlines() == [repr(words), "''"]
    assert not list(tmp_path.iterdir())


def test_timeout() -> None:
    with pytest.raises(ToolError, match=r"timed out after 0\.5 s") as caught:
        run(_python("import time; time.sleep(30)"), timeout=0.5)
    assert caught.value.returncode is None


def test_missing_program_and_missing_output(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="no-such-tool-x9: not found on PATH") as caught:
        run(["no-such-tool-x9"])
    assert caught.value.returncode is None
    with pytest.raises(ToolError, match="not found on PATH"):
        which("no-such-tool-x9")
    wanted = tmp_path / "made.txt"
    with pytest.raises(ToolError, match=f"finished but did not write {wanted}") as caught:
        run(_python("pass"), expect=[wanted])
    assert caught.value.returncode is None
    run(_python("import sys; open(sys.argv[1], 'w').close()", wanted), expect=[wanted])
