"""Exceptions carry the BIDS-App exit codes; SIGTERM becomes exit 143."""

from __future__ import annotations

import os
import pickle
import signal
import time

import pytest

from bidsdeface import errors
from bidsdeface.errors import (
    BidsDefaceError,
    InputValidationError,
    NoFilesError,
    NoInputError,
    OutputError,
    PrivateStateError,
    RegistrationError,
    ScanError,
    ScrubError,
    Terminated,
    ToolError,
    UnknownLevelError,
    UsageError,
    sigterm_raises,
)


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        (BidsDefaceError, 70),
        (InputValidationError, 16),
        (UnknownLevelError, 17),
        (NoFilesError, 18),
        (UsageError, 64),
        (PrivateStateError, 64),
        (ScanError, 65),
        (RegistrationError, 65),
        (ScrubError, 65),
        (NoInputError, 66),
        (ToolError, 70),
        (OutputError, 73),
    ],
)
def test_exit_codes(kind: type[BidsDefaceError], code: int) -> None:
    assert kind("x").exit_code == code
    assert str(kind("one line")) == "one line"


def test_tool_error_keeps_its_return_code_across_processes() -> None:
    """Pool workers send errors back pickled: the code survives, and the message is unchanged."""
    error = pickle.loads(pickle.dumps(ToolError("dcm2niix: exit code 2: bad", returncode=2)))
    assert (str(error), error.returncode) == ("dcm2niix: exit code 2: bad", 2)
    assert pickle.loads(pickle.dumps(ToolError("dcm2niix: timed out"))).returncode is None


def test_sigterm_raises_terminated_then_restores_the_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as caught, sigterm_raises():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler raises first
    assert caught.value.code == errors.EXIT_TERMINATED == 143
    assert isinstance(caught.value, SystemExit)
    assert signal.getsignal(signal.SIGTERM) is before
