"""Exceptions that carry BIDS-App exit codes.

The codes follow the draft BIDS execution specification (sysexits-style):
0 ok, 16 input failed validation, 17 unknown analysis level, 18 filters selected
no files, 64 usage error, 65 some scans could not be processed (bad data),
66 no usable input, 70 internal error, 73 cannot create output.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

EXIT_OK = 0
EXIT_INVALID_INPUT = 16
EXIT_UNKNOWN_LEVEL = 17
EXIT_NO_FILES = 18
EXIT_USAGE = 64
EXIT_DATA = 65
EXIT_NO_INPUT = 66
EXIT_INTERNAL = 70
EXIT_CANT_CREATE = 73
EXIT_TERMINATED = 128 + signal.SIGTERM


class BidsDefaceError(Exception):
    """Base class: a one-line message and the process exit code it maps to."""

    exit_code = EXIT_INTERNAL


class UsageError(BidsDefaceError):
    """The command line is inconsistent (e.g. output inside the input)."""

    exit_code = EXIT_USAGE


class UnknownLevelError(BidsDefaceError):
    """The analysis level is not one this app has (``participant``, ``group``)."""

    exit_code = EXIT_UNKNOWN_LEVEL


class InputValidationError(BidsDefaceError):
    """The input dataset failed BIDS validation."""

    exit_code = EXIT_INVALID_INPUT


class NoFilesError(BidsDefaceError):
    """Label or modality filters selected nothing."""

    exit_code = EXIT_NO_FILES


class NoInputError(BidsDefaceError):
    """The input dataset is missing, empty or not BIDS."""

    exit_code = EXIT_NO_INPUT


class OutputError(BidsDefaceError):
    """The output folder cannot be created or written."""

    exit_code = EXIT_CANT_CREATE


class ScanError(BidsDefaceError):
    """One scan cannot be processed (corrupt, not a head, NaNs, ...); others go on."""

    exit_code = EXIT_DATA


class RegistrationError(ScanError):
    """Template-to-scan registration failed or scored too poorly to trust."""


class ScrubError(ScanError):
    """Scrubbing could not make a file safe; nothing of that scan is written (fail closed)."""


class PrivateStateError(BidsDefaceError):
    """The private mapping (date offsets, pseudonyms) is unreadable or disagrees with the key."""

    exit_code = EXIT_USAGE


class ToolError(BidsDefaceError):
    """An external program failed; the message names it, its version and stderr tail.

    Attributes
    ----------
    returncode : int or None
        The program's exit code when it ran and exited with a code it should not
        have; None when it was missing, could not start, timed out or did not
        write what it should.

    >>> ToolError("dcm2niix: exit code 2: bad", returncode=2).returncode
    2
    >>> print(ToolError("dcm2niix: not found on PATH").returncode)
    None
    """

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, *, returncode: int | None = None) -> None:
        super().__init__(message)
        self.returncode = returncode


class Terminated(SystemExit):
    """SIGTERM arrived: a cluster job was cancelled or hit its time limit, or a container was stopped.

    A ``SystemExit`` with code 143: per-scan error handling does not swallow it,
    ``finally`` blocks still delete temporaries on the way out, and a worker
    process ends with that code without printing a traceback.
    """

    def __init__(self) -> None:
        super().__init__(EXIT_TERMINATED)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while in the block (main thread only), then restore."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Libraries that write to stderr on their own: Python warnings (numpy's RuntimeWarning,
# nibabel, pydicom) and nibabel's logger (header fixes such as "sizeof_hdr should be 348").
LIBRARY_LOGGERS = ("py.warnings", "nibabel.global")


class _OneDebugLine(logging.Handler):
    """Pass a library's message on to the ``bidsdeface`` log as one DEBUG line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a malformed library record must not print a logging traceback
            text = str(record.msg)
        logging.getLogger("bidsdeface").debug("%s: %s", record.name, " ".join(text.split()))


def library_messages_to_debug() -> None:
    """Send Python warnings and nibabel's log to the ``bidsdeface`` log at DEBUG, one line each.

    Call it in every process that works on scans (the command line and each pool worker),
    so that stderr holds the project's own lines only.
    """
    import nibabel  # noqa: F401  # importing it adds a stderr handler to its logger: import first, then replace

    logging.captureWarnings(True)
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.handlers[:] = [_OneDebugLine()]
        library.propagate = False
