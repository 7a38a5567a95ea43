"""Derivative names, dataset files and atomic writes."""

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

from bidsdeface import derivatives
from bidsdeface.config import Config
from bidsdeface.derivatives import (
    atomic_path,
    defaced_name,
    deidentification,
    mask_name,
    output_lock,
    remove_stale_temporaries,
    staged_files,
    write_bytes_atomic,
    write_dataset_files,
)
from bidsdeface.errors import Terminated, sigterm_raises
from bidsdeface.policy import SitePolicy


def test_names() -> None:
    assert (
        defaced_name("sub-01_ses-A_acq-fast_run-2_T1w.nii.gz") == "sub-01_ses-A_acq-fast_run-2_desc-defaced_T1w.nii.gz"
    )
    assert mask_name("sub-01_ses-A_run-2_FLAIR.nii") == "sub-01_ses-A_run-2_mod-FLAIR_defacemask.nii"
    with pytest.raises(ValueError):
        defaced_name("notbids.nii.gz")


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "a" / "x.json"
    with pytest.raises(RuntimeError), atomic_path(final) as temp:
        temp.write_text("half")
        raise RuntimeError("crash")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []


def test_stale_temporaries_removed(tmp_path: Path) -> None:
    (tmp_path / "sub-01").mkdir()
    (tmp_path / "sub-01" / f"{derivatives.TEMP_PREFIX}abc-x.nii.gz").write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path / "sub-01") == 1
    assert list((tmp_path / "sub-01").iterdir()) == []


def test_dataset_files_identical_for_every_writer(tmp_path: Path) -> None:
    source = {"Name": "S", "License": "CC0", "Authors": ["a", "b"], "DatasetDOI": "doi:10.1/x"}
    write_dataset_files(tmp_path, source)
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    write_dataset_files(tmp_path, source)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first
    description = json.loads(first["dataset_description.json"])
    assert description["SourceDatasets"] == [{"DOI": "doi:10.1/x"}]
    assert description["License"] == "CC0"


def test_deidentification_codes_follow_what_was_done(tmp_path: Path) -> None:
    kept_device = Config(tmp_path, tmp_path / "out", scrub_policy=SitePolicy(keep_sidecar_keys=("StationName",)))
    methods, codes = deidentification(kept_device, dates_shifted=False)
    assert [code["CodeValue"] for code in codes] == ["113100", "113102", "113109"]
    assert "dates and times removed" in methods and any("StationName" in method for method in methods)
    methods, codes = deidentification(Config(tmp_path, tmp_path / "out", pseudonymize=True), dates_shifted=True)
    assert [code["CodeValue"] for code in codes] == ["113100", "113102", "113107"]
    assert any("pseudonyms" in method for method in methods)


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
            assert list(tmp_path.rglob(f"{derivatives.TEMP_PREFIX}*")) == []


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
    assert [p.name for p in (tmp_path / derivatives.LOCK_FOLDER).iterdir()] == ["dataset.lock"]


def test_concurrent_writers_create_identical_dataset_files(tmp_path: Path) -> None:
    source = {"Name": "S", "Authors": ["a", "b"]}
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.starmap(write_dataset_files, [(tmp_path, source)] * 8)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([".bidsignore", "README.md", "dataset_description.json"])
    assert json.loads((tmp_path / "dataset_description.json").read_text())["DatasetType"] == "derivative"


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


def test_failed_folder_has_its_readme(tmp_path: Path) -> None:
    folder = derivatives.prepare_failed_folder(tmp_path / "private")
    assert folder == tmp_path / "private" / derivatives.FAILED_FOLDER
    assert "Keep it private" in (folder / "README.txt").read_text()
    derivatives.prepare_failed_folder(tmp_path / "private")  # again: unchanged, no temporaries
    assert [p.name for p in folder.iterdir()] == ["README.txt"]
