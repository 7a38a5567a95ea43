"""Staged and atomic writes, output locks, JSON and TSV tables."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from bidsdeface.errors import InputValidationError, Terminated, sigterm_raises
from bidsdeface.files import (
    LOCK_FOLDER,
    MISSING,
    TEMP_PREFIX,
    Table,
    atomic_path,
    json_bytes,
    output_lock,
    read_json_object,
    remove_stale_temporaries,
    staged_files,
    write_bytes_atomic,
)


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "a" / "x.json"
    with pytest.raises(RuntimeError), atomic_path(final) as temp:
        temp.write_text("half")
        raise RuntimeError("crash")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []


def test_stale_temporaries_removed(tmp_path: Path) -> None:
    (tmp_path / "sub-01").mkdir()
    (tmp_path / "sub-01" / f"{TEMP_PREFIX}abc-x.nii.gz").write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path / "sub-01") == 1
    assert list((tmp_path / "sub-01").iterdir()) == []


def test_staged_files_appear_together_or_not_at_all(tmp_path: Path) -> None:
    first, last = tmp_path / "a" / "image.bin", tmp_path / "b" / "sidecar.json"
    with pytest.raises(RuntimeError), staged_files() as staged:
        staged.write_bytes(first, b"1")
        staged.write_json(last, {"k": 1})
        raise RuntimeError("killed while writing")
    assert not first.exists() and not last.exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    with staged_files() as staged:
        staged.write_bytes(first, b"1")
        staged.write_json(last, {"k": 1})
        assert not first.exists(), "nothing under a final name before the commit"
    assert first.read_bytes() == b"1" and json.loads(last.read_text()) == {"k": 1}
    assert first.stat().st_mtime_ns <= last.stat().st_mtime_ns


def test_sigterm_at_any_moment_leaves_no_temporary(tmp_path: Path) -> None:
    """Real SIGTERMs land at random moments of staging and committing; none strands a hidden file."""
    pick = random.Random(8)
    finals = [tmp_path / "sub-01" / name for name in ("mask.nii.gz", "image.nii.gz", "figure.png", "sidecar.json")]
    with sigterm_raises():
        for _ in range(300):
            timer = threading.Timer(pick.uniform(0.0, 0.002), os.kill, (os.getpid(), signal.SIGTERM))
            with pytest.raises(Terminated):
                timer.start()
                while True:
                    with staged_files() as staged:
                        for final in finals:
                            staged.write_bytes(final, b"x" * 64)
            timer.join()
            assert list(tmp_path.rglob(f"{TEMP_PREFIX}*")) == []


def _count_under_lock(folder: Path) -> None:
    for _ in range(20):
        with output_lock(folder, "dataset"):
            counter = folder / "counter"
            value = int(counter.read_text()) if counter.exists() else 0
            time.sleep(0.002)  # widen the read-modify-write window
            write_bytes_atomic(counter, str(value + 1).encode())


def test_lock_serialises_concurrent_processes(tmp_path: Path) -> None:
    """Four processes rebuilding one shared file from what is on disk lose no update."""
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_count_under_lock, [tmp_path] * 4)
    assert (tmp_path / "counter").read_text() == "80"
    assert [p.name for p in (tmp_path / LOCK_FOLDER).iterdir()] == ["dataset.lock"]


def test_staged_removals_happen_at_the_commit_only(tmp_path: Path) -> None:
    """Files an earlier run left are deleted by the commit, before the new files appear; not at all on failure."""
    old, new = tmp_path / "sub-01" / "old.nii.gz", tmp_path / "sub-01" / "qc.json"
    old.parent.mkdir()
    old.write_bytes(b"earlier run")
    with pytest.raises(RuntimeError), staged_files() as staged:
        staged.remove(old)
        staged.write_json(new, {"k": 1})
        raise RuntimeError("killed while writing")
    assert old.is_file() and not new.exists()
    with staged_files() as staged:
        staged.remove(old)
        staged.remove(tmp_path / "never-written.json")  # absent: nothing to do
        staged.write_json(new, {"k": 1})
        assert old.is_file(), "nothing removed before the commit"
    assert not old.exists() and json.loads(new.read_text()) == {"k": 1}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["qc.json", "sub-01"]


def test_json_written_in_insertion_order_with_unicode() -> None:
    assert json_bytes({"b": 1, "a": "é"}) == '{\n  "b": 1,\n  "a": "é"\n}\n'.encode()


def test_read_json_object_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputValidationError, match="not a JSON object"):
        read_json_object(tmp_path / "list.json", InputValidationError)
    with pytest.raises(InputValidationError, match="unreadable JSON"):
        read_json_object(tmp_path / "broken.json", InputValidationError)
    with pytest.raises(InputValidationError, match="unreadable JSON"):
        read_json_object(tmp_path / "absent.json", InputValidationError)


def test_table_pads_short_rows_and_round_trips() -> None:
    table = Table.parse("participant_id\tage\r\nsub-01\t34\nsub-02\n\n")
    assert table.columns == ("participant_id", "age")
    assert table.rows == (("sub-01", "34"), ("sub-02", MISSING))
    assert Table.parse(table.to_text()) == table
    assert Table.parse("") == Table((), ())
