"""Per-subject date offsets and pseudonyms, and the private folder that keeps them."""

from __future__ import annotations

import json
import logging
import multiprocessing
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from bidsdeface.config import Config
from bidsdeface.errors import PrivateStateError
from bidsdeface.identity import (
    MIN_SHIFT_DAYS,
    SECONDS_PER_DAY,
    SHIFT_SPAN_DAYS,
    SubjectIdentity,
    _keyed_number,
    keyed_identity,
    known_identity,
    private_folder,
    resolve_identity,
)


def _config(tmp_path: Path, **options: object) -> Config:
    return Config(tmp_path / "bids", tmp_path / "out", **options)  # type: ignore[arg-type]


def test_the_same_key_gives_the_same_offsets_and_pseudonyms_on_any_run(tmp_path: Path) -> None:
    first = resolve_identity(_config(tmp_path, date_shift_key="s3cret", pseudonymize=True), "01", ["pre", "post"])
    elsewhere = _config(tmp_path, date_shift_key="s3cret", pseudonymize=True, private_dir=tmp_path / "other")
    again = resolve_identity(elsewhere, "01", ["post", "pre"])
    assert first == again
    other = resolve_identity(elsewhere, "02", ["pre"])
    assert other.date_offset != first.date_offset
    assert other.output_label != first.output_label
    assert other.sessions["pre"] != first.sessions["pre"]
    assert first.output_label.isalnum() and first.output_label != "01"


def test_offsets_land_every_recent_date_in_1925_or_earlier(tmp_path: Path) -> None:
    config = _config(tmp_path, date_shift_key="k")
    offsets = [resolve_identity(config, f"s{index}", []).date_offset for index in range(50)]
    assert len(set(offsets)) == 50
    for offset in offsets:
        assert offset is not None
        assert timedelta(days=MIN_SHIFT_DAYS) <= -offset < timedelta(days=MIN_SHIFT_DAYS + SHIFT_SPAN_DAYS)
        assert offset % timedelta(days=1) == timedelta(0)  # whole days: times of day are kept
        assert (datetime(2034, 12, 31, 23, 59, 59) + offset).year <= 1925


def _older_offset(number: int) -> int:
    """The offset older versions drew: the same days plus a time of day further back."""
    days = MIN_SHIFT_DAYS + number % SHIFT_SPAN_DAYS
    return -(days * SECONDS_PER_DAY + (number // SHIFT_SPAN_DAYS) % SECONDS_PER_DAY)


def test_older_records_with_a_time_of_day_use_their_whole_days(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A record written when offsets had seconds keeps working, with its days only, and says so."""
    config = _config(tmp_path, date_shift_key="k", pseudonymize=True)
    resolve_identity(config, "01", [])
    path = private_folder(config) / "subjects" / "sub-01.json"
    record = json.loads(path.read_text())
    older = _older_offset(_keyed_number("k", "date-offset", "01"))
    assert older % SECONDS_PER_DAY and older // SECONDS_PER_DAY != record["date_offset_seconds"] // SECONDS_PER_DAY
    path.write_text(json.dumps({**record, "date_offset_seconds": older}))
    with caplog.at_level(logging.WARNING):
        identity = resolve_identity(config, "01", [])  # the same key is still recognised
    assert identity.date_offset == timedelta(seconds=keyed_identity("k", "01")[0])
    assert identity.date_offset == -timedelta(days=-older // SECONDS_PER_DAY)
    assert "whole days" in caplog.text and "sub-01" not in caplog.text  # named by its pseudonym


def test_random_offsets_are_recorded_and_reused(tmp_path: Path) -> None:
    config = _config(tmp_path, pseudonymize=True)
    first = resolve_identity(config, "01", ["pre"])
    later = resolve_identity(config, "01", ["pre", "post"])  # a new session arrives later
    assert later.date_offset == first.date_offset and later.output_label == first.output_label
    assert later.sessions["pre"] == first.sessions["pre"] and later.sessions["post"] != later.sessions["pre"]
    assert known_identity(config, "01") == later
    assert known_identity(config, "unknown") is None
    record = private_folder(config) / "subjects" / "sub-01.json"
    assert record.is_file() and config.output_dir not in record.parents


def test_a_different_key_is_refused(tmp_path: Path) -> None:
    resolve_identity(_config(tmp_path, date_shift_key="one"), "01", [])
    with pytest.raises(PrivateStateError, match="different --date-shift-key"):
        resolve_identity(_config(tmp_path, date_shift_key="two"), "01", [])


def test_labels_are_kept_without_pseudonymize(tmp_path: Path) -> None:
    identity = resolve_identity(_config(tmp_path), "01", ["pre"])
    assert identity.output_label == "01" and identity.sessions == {"pre": "pre"}
    assert identity.date_offset is not None


def test_nothing_private_is_kept_when_dates_are_dropped_and_labels_kept(tmp_path: Path) -> None:
    config = _config(tmp_path, drop_dates=True)
    assert resolve_identity(config, "01", ["pre"]) == SubjectIdentity("01", "01", None, {"pre": "pre"})
    assert not private_folder(config).exists()


def _resolve(args: tuple[Path, str]) -> tuple[str, timedelta | None]:
    root, label = args
    identity = resolve_identity(_config(root, pseudonymize=True), label, [])
    return identity.output_label, identity.date_offset


def test_concurrent_runs_agree_on_each_subject(tmp_path: Path) -> None:
    (private_folder(_config(tmp_path)) / "subjects").mkdir(parents=True)
    labels = [f"{index:02d}" for index in range(12)] * 2
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_resolve, [(tmp_path, label) for label in labels], chunksize=1)
    by_label: dict[str, set] = {}
    for label, result in zip(labels, results, strict=True):
        by_label.setdefault(label, set()).add(result)
    assert all(len(seen) == 1 for seen in by_label.values())
    assert len({next(iter(seen))[0] for seen in by_label.values()}) == 12


def _add_session(args: tuple[Path, str]) -> None:
    root, session = args
    resolve_identity(_config(root, pseudonymize=True), "01", [session])


def test_concurrent_runs_adding_sessions_of_one_subject_keep_them_all(tmp_path: Path) -> None:
    sessions = [f"s{index}" for index in range(16)]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_add_session, [(tmp_path, session) for session in sessions], chunksize=1)
    identity = resolve_identity(_config(tmp_path, pseudonymize=True), "01", [])
    assert sorted(identity.sessions) == sorted(sessions)
    assert len(set(identity.sessions.values())) == len(sessions)


def test_output_paths_use_only_output_labels() -> None:
    identity = SubjectIdentity("MRN123", "a1b2c3", None, {"20240315": "f00d"})
    renamed = identity.output_relpath("sub-MRN123/ses-20240315/anat/sub-MRN123_ses-20240315_acq-fast_T1w.nii.gz")
    assert renamed == "sub-a1b2c3/ses-f00d/anat/sub-a1b2c3_ses-f00d_acq-fast_T1w.nii.gz"
