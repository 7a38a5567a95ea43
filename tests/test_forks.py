"""Forked calls: values and exceptions come back; without a safe fork the call runs in the process."""

from __future__ import annotations

import os

import pytest

from bidsdeface.config import ITK_THREADER_ENV
from bidsdeface.errors import ScanError
from bidsdeface.forks import ForkedCall, can_fork


def _pid_and(value: int) -> tuple[int, int]:
    return os.getpid(), value * 2


def _fails() -> None:
    raise ScanError("scan.nii.gz: not a head image")


class _Unpicklable(Exception):
    def __init__(self, message: str, extra: object) -> None:
        super().__init__(message)
        self.extra = extra

    def __reduce__(self) -> tuple:
        raise TypeError("cannot pickle")


def _fails_oddly() -> None:
    raise _Unpicklable("odd", lambda: None)


def _dies() -> None:
    os._exit(3)


def test_a_forked_call_returns_its_value_from_another_process() -> None:
    assert can_fork(), "the tests run ITK as the command line does"
    call = ForkedCall(_pid_and, 21)
    pid, value = call.result()
    assert value == 42
    assert pid != os.getpid()
    assert call.result() == (pid, 42), "the value is kept"


def test_a_forked_call_raises_what_the_child_raised() -> None:
    with pytest.raises(ScanError, match="not a head image"):
        ForkedCall(_fails).result()
    with pytest.raises(RuntimeError, match="_Unpicklable: odd"):
        ForkedCall(_fails_oddly).result()
    with pytest.raises(RuntimeError, match="exit code 3"):
        ForkedCall(_dies).result()


def test_without_a_safe_fork_the_call_runs_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ITK_THREADER_ENV, "Pool")
    assert not can_fork()
    pid, value = ForkedCall(_pid_and, 1).result()
    assert (pid, value) == (os.getpid(), 2)
    with pytest.raises(ScanError):
        ForkedCall(_fails)
