"""Work shared with forked processes, for the cores ITK leaves idle (it runs on one thread).

A forked child inherits the parent's memory, so large arguments (images, levels) are
not copied; only the result (or the exception) comes back, pickled, through a pipe.
A process forks only where that is safe: on a platform with ``fork``, with ITK keeping
no threads (:func:`bidsdeface.config.itk_single_threaded`). Elsewhere the call runs in
the process itself, with the same result.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

from .config import itk_is_single_threaded

Result = TypeVar("Result")


def can_fork() -> bool:
    """Return whether this process may fork a child that runs ITK (see the module's description)."""
    return "fork" in multiprocessing.get_all_start_methods() and itk_is_single_threaded()


class ForkedCall(Generic[Result]):
    """``function(*args)`` running in a forked child; :meth:`result` waits for its value.

    Without ``fork`` (the caller has no core to spare) or :func:`can_fork`, the call runs
    at once in this process.
    """

    def __init__(self, function: Callable[..., Result], *args: Any, fork: bool = True) -> None:
        self._value: Result | None = None
        self._child = None
        if not (fork and can_fork()):
            self._value = function(*args)
            return
        context = multiprocessing.get_context("fork")
        self._receiver, sender = context.Pipe(duplex=False)
        self._child = context.Process(target=_send_result, args=(function, args, sender), daemon=True)
        # SIGTERM is held while forking: its handler, run inside fork's hooks (logging releases its
        # locks there), would raise where the exception is ignored, and the signal would be lost.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            self._child.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        sender.close()

    @classmethod
    def finished(cls, value: Result) -> ForkedCall[Result]:
        """Return a call that is already done, with ``value`` as its result (no process)."""
        call = cls.__new__(cls)
        call._value, call._child = value, None
        return call

    def result(self) -> Result:
        """Return the call's value (kept for later calls).

        Raises the call's exception, or RuntimeError when the child ended without a result.
        """
        if self._child is None:
            return self._value  # type: ignore[return-value]
        self._value = self._received()
        self._child = None
        return self._value

    def _received(self) -> Result:
        """Wait for the child's value and reap it."""
        ended_without_result = False
        try:
            outcome = self._receiver.recv()
        except EOFError:
            ended_without_result = True
        finally:
            self._receiver.close()
            self._child.join()
        if ended_without_result:
            outcome = RuntimeError(f"a forked process ended without a result (exit code {self._child.exitcode})")
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def _send_result(function: Callable[..., Any], args: tuple[Any, ...], sender: Connection) -> None:
    """Run in the child: send ``function(*args)``, or the exception it raised, to the parent."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # held by the parent while it forked
    try:
        sender.send(function(*args))
    except Exception as error:  # the parent raises it
        try:
            sender.send(error)
        except Exception:  # an exception that does not pickle: its message, as a RuntimeError
            sender.send(RuntimeError(f"{type(error).__name__}: {error}"))
    finally:
        sender.close()
