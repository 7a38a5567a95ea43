"""Writing files safely: staged and atomic writes, output locks, JSON and TSV tables.

Every file bidsdeface writes goes through here: under a hidden temporary name first,
renamed into place when complete, so a killed run never leaves a truncated file under
a final name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib

from .errors import BidsDefaceError

log = logging.getLogger(__name__)


TEMP_PREFIX = ".bidsdeface-tmp-"


LOCK_FOLDER = ".bidsdeface-locks"


class StagedFiles:
    """Files written under hidden temporary names and renamed into place together by :meth:`commit`.

    Writing (compression, figures) takes seconds; the renames take microseconds and
    happen in the order the files were staged. A run killed while writing leaves
    only hidden temporaries (swept by :func:`remove_stale_temporaries`), never a
    truncated file under a final name.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []
        self._removals: list[Path] = []

    def path(self, final: Path) -> Path:
        """Return a new temporary path that :meth:`commit` renames to ``final``.

        It keeps ``final``'s extensions, so writers pick the right format. The path is
        recorded before the file is created, so a SIGTERM at any moment leaves
        nothing that :meth:`discard` does not delete.
        """
        final.parent.mkdir(parents=True, exist_ok=True)
        while True:
            temp = final.parent / f"{TEMP_PREFIX}{secrets.token_hex(6)}-{final.name}"
            self._pending.append((temp, final))
            try:
                os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except FileExistsError:
                self._pending.pop()
                continue
            return temp

    def write_bytes(self, final: Path, data: bytes) -> None:
        """Stage ``data`` for ``final``."""
        self.path(final).write_bytes(data)

    def write_json(self, final: Path, content: dict[str, Any]) -> None:
        """Stage a JSON file (insertion order, 2-space indent)."""
        self.write_bytes(final, json_bytes(content))

    def write_nifti(self, final: Path, image: nib.Nifti1Image) -> None:
        """Stage a NIfTI image."""
        nib.save(image, self.path(final))

    def remove(self, final: Path) -> None:
        """Have :meth:`commit` delete ``final`` (if it exists) before it renames the staged files.

        For files of an earlier run that this one replaces by nothing: a run killed
        during the commit leaves the old files gone rather than beside the new ones.
        """
        self._removals.append(final)

    def commit(self) -> None:
        """Flush every staged file to disk, delete the files to remove, then rename the staged ones in order."""
        for temp, _ in self._pending:
            with open(temp, "rb+") as stream:
                os.fsync(stream.fileno())
            os.chmod(temp, 0o644)
        while self._removals:
            self._removals.pop(0).unlink(missing_ok=True)
        while self._pending:
            temp, final = self._pending[0]
            os.replace(temp, final)
            self._pending.pop(0)

    def discard(self) -> None:
        """Delete the temporaries not yet committed (and forget the files to remove)."""
        for temp, _ in self._pending:
            temp.unlink(missing_ok=True)
        self._pending.clear()
        self._removals.clear()


@contextlib.contextmanager
def staged_files() -> Iterator[StagedFiles]:
    """Yield a :class:`StagedFiles`; commit it on success, delete its temporaries on any exit."""
    staged = StagedFiles()
    try:
        yield staged
        staged.commit()
    finally:
        staged.discard()


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place on success."""
    with staged_files() as staged:
        yield staged.path(final)


def json_bytes(content: dict[str, Any]) -> bytes:
    """Encode a JSON object as written everywhere (insertion order, 2-space indent, UTF-8)."""
    return (json.dumps(content, indent=2, ensure_ascii=False) + "\n").encode()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with staged_files() as staged:
        staged.write_bytes(path, data)


def write_json_atomic(path: Path, content: dict[str, Any]) -> None:
    """Write a JSON file atomically (insertion order, 2-space indent)."""
    write_bytes_atomic(path, json_bytes(content))


def remove_stale_temporaries(folder: Path, recursive: bool = True) -> int:
    """Delete temporary files left by a killed run in ``folder`` (and below); return how many.

    Call it only while holding the lock of whatever writes there (:func:`output_lock`).
    """
    removed = 0
    if folder.is_dir():
        for stale in (folder.rglob if recursive else folder.glob)(f"{TEMP_PREFIX}*"):
            if stale.is_file():
                stale.unlink(missing_ok=True)
                removed += 1
    return removed


@contextlib.contextmanager
def output_lock(output_dir: Path, name: str, wait: bool = True) -> Iterator[bool]:
    """Hold the exclusive lock ``name`` shared by every bidsdeface process writing into ``output_dir``.

    Participant runs hold ``sub-<label>`` while they write a subject, and ``dataset``
    while they write the files shared by all subjects. The lock files are empty and
    hidden (``.bidsdeface-locks/``, ignored by BIDS tools); the kernel releases a lock
    when its process dies, so a killed run never leaves a stale one. On a file
    system without locks (some Lustre mounts) this warns and goes on unlocked.
    With ``wait=False`` it yields False at once, holding nothing, when another
    process holds the lock; otherwise it yields True.
    """
    folder = output_dir / LOCK_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.lock", "a") as handle:
        try:
            locked = _acquire(handle.fileno(), name, wait)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            if locked:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _acquire(descriptor: int, name: str, wait: bool = True) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if not wait:
            raise
        log.info("waiting for another bidsdeface run to finish writing %s", name)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
    except OSError as exc:
        log.warning("the output folder's file system does not support locks (%s); writing %s unlocked", exc, name)
        return False
    return True


def read_json_object(path: Path, error: type[BidsDefaceError]) -> dict[str, Any]:
    """Return the JSON object in ``path``, or raise ``error`` with a one-line reason."""
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: unreadable JSON ({exc})") from exc
    if not isinstance(content, dict):
        raise error(f"{path}: not a JSON object")
    return content


MISSING = "n/a"


@dataclass(frozen=True)
class Table:
    """A BIDS TSV table as text cells.

    Attributes
    ----------
    columns : tuple of str
    rows : tuple of tuple of str
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    @classmethod
    def parse(cls, text: str) -> Table:
        """Parse TSV text (header line first; short rows padded with ``n/a``)."""
        lines = [line.rstrip("\r") for line in text.splitlines() if line.strip()]
        if not lines:
            return cls((), ())
        columns = tuple(cell.strip() for cell in lines[0].split("\t"))
        rows = []
        for line in lines[1:]:
            cells = [cell.strip() for cell in line.split("\t")][: len(columns)]
            rows.append(tuple(cells + [MISSING] * (len(columns) - len(cells))))
        return cls(columns, tuple(rows))

    def to_text(self) -> str:
        """Return the table as TSV text."""
        return "".join("\t".join(cells) + "\n" for cells in (self.columns, *self.rows))
