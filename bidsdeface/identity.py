"""Per-subject secrets: the date offset and the pseudonyms, and the private folder that keeps them.

With ``--date-shift-key`` both come from HMAC-SHA256 of the key and the label, so
any machine derives the same values; without a key they are random. Either way
they are recorded once per subject in the private folder (never inside the
output), so re-runs, new sessions and cluster array tasks agree. Offsets are whole
days (see :func:`whole_days` for records of older versions). Each subject has
its own file, created atomically, so concurrent runs on different subjects share
no file; runs adding sessions to one subject's file take turns (a lock in the
private folder).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from .bidsnames import join_bids_name, split_bids_name
from .config import Config, ConvertConfig, DicomOutConfig
from .errors import PrivateStateError
from .files import output_lock, read_json_object, write_bytes_atomic

log = logging.getLogger(__name__)

AnyConfig = Config | ConvertConfig | DicomOutConfig
UID_KEY_FILE = "dicom_uid_key.txt"
UID_ROOT = "2.25."  # UUID-derived UIDs (PS3.5 B.2): no registered root needed

# Shifts of 110 to 120 years land every date before 2035 in 1925 or earlier (BIDS advice).
MIN_SHIFT_DAYS = 40177
SHIFT_SPAN_DAYS = 3653
SECONDS_PER_DAY = 86400
SUBJECT_PSEUDONYM_CHARS = 10
SESSION_PSEUDONYM_CHARS = 6
PRIVATE_README = """This folder re-identifies the subjects of a bidsdeface output. Keep it private.

subjects/sub-<original label>.json holds each subject's pseudonym, session pseudonyms
and date offset (seconds added to every date: a whole number of days, so times of day
are kept; of an older record with extra seconds only the whole days are used).
Never share this folder, and never put it inside the shared dataset. Deleting it
makes later runs use new offsets and pseudonyms (unless --date-shift-key is given,
which derives the same ones again).
"""


@dataclass(frozen=True)
class SubjectIdentity:
    """How one subject appears in the output.

    Attributes
    ----------
    label : str
        The input label (never written to the output when pseudonymised).
    output_label : str
        The label used in output names, tables and reports.
    date_offset : timedelta or None
        Added to every date and time of the subject; None when dates are dropped.
    sessions : dict
        Input session label -> output session label.
    """

    label: str
    output_label: str
    date_offset: timedelta | None
    sessions: dict[str, str] = field(default_factory=dict)

    def output_session(self, session: str) -> str:
        """Return the output label of input session ``session``."""
        return self.sessions.get(session, session)

    def output_text(self, text: str) -> str:
        """Replace the subject's and its sessions' input labels where they stand as words in free text.

        For identifiers users build from labels (``B0FieldIdentifier``: ``fmap_sub-01``).

        >>> SubjectIdentity("01", "x7", None, {"pre": "a1"}).output_text("pepolar_sub-01_ses-pre, 01b, 01")
        'pepolar_sub-x7_ses-a1, 01b, x7'
        """
        renames = {self.label: self.output_label, **self.sessions}
        for label, renamed in sorted(renames.items(), key=lambda item: -len(item[0])):
            if label != renamed:
                text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(label)}(?![A-Za-z0-9])", renamed, text)
        return text

    def output_relpath(self, relpath: str) -> str:
        """Rename the subject and session labels in a dataset-relative path.

        >>> who = SubjectIdentity("01", "x7", None, {"pre": "a1"})
        >>> who.output_relpath("sub-01/ses-pre/anat/sub-01_ses-pre_T1w.nii.gz")
        'sub-x7/ses-a1/anat/sub-x7_ses-a1_T1w.nii.gz'
        """
        parts = []
        for part in relpath.split("/"):
            if part == f"sub-{self.label}":
                part = f"sub-{self.output_label}"
            elif part.startswith("ses-") and "_" not in part:
                part = f"ses-{self.output_session(part[4:])}"
            elif part.startswith("sub-"):
                entities, suffix, extension = split_bids_name(part)
                renamed = [
                    (key, self.output_label if key == "sub" else self.output_session(value) if key == "ses" else value)
                    for key, value in entities
                ]
                part = join_bids_name(renamed, suffix, extension)
            parts.append(part)
        return "/".join(parts)


def private_folder(config: AnyConfig) -> Path:
    """Return the private folder: ``--private-dir``, or ``<OUTPUT_DIR>-private`` beside the output (or release)."""
    if config.private_dir is not None:
        return config.private_dir
    output = getattr(config, "release_dir", None) or config.output_dir
    return output.parent / f"{output.name}-private"


def needs_private_folder(config: AnyConfig) -> bool:
    """Return whether this run shifts dates or pseudonymises (and so keeps private state)."""
    return config.pseudonymize or not config.drop_dates


def _keyed_number(key: str, purpose: str, *labels: str) -> int:
    message = "\0".join((purpose, *labels)).encode()
    return int.from_bytes(hmac.new(key.encode(), message, hashlib.sha256).digest()[:16], "big")


def _offset_seconds(number: int) -> int:
    """Return a date offset of whole days (in seconds) drawn from ``number``.

    Whole days keep every time of day, so values that share a calendar day share one
    after shifting. The days are those older versions drew (which added a time of day).

    >>> _offset_seconds(7) == -(MIN_SHIFT_DAYS + 7) * SECONDS_PER_DAY
    True
    """
    return -(MIN_SHIFT_DAYS + number % SHIFT_SPAN_DAYS) * SECONDS_PER_DAY


def whole_days(offset_seconds: int) -> int:
    """Return the whole days of a recorded offset, dropping any part of a day (towards zero).

    Records made before offsets were whole days add up to a day of seconds to the days
    (further back); only their days are used, the days that key derives today.

    >>> whole_days(-(40177 * SECONDS_PER_DAY + 3600))
    -40177
    >>> whole_days(-40177 * SECONDS_PER_DAY)
    -40177
    """
    days = abs(offset_seconds) // SECONDS_PER_DAY
    return days if offset_seconds >= 0 else -days


def _pseudonym(number: int, length: int) -> str:
    return f"{number:032x}"[:length]


def keyed_identity(key: str, label: str) -> tuple[int, str]:
    """Return the date offset (seconds, whole days) and pseudonym that ``key`` gives subject ``label``.

    >>> keyed_identity("secret", "01") == keyed_identity("secret", "01")
    True
    >>> keyed_identity("secret", "01") != keyed_identity("secret", "02")
    True
    """
    return (
        _offset_seconds(_keyed_number(key, "date-offset", label)),
        _pseudonym(_keyed_number(key, "subject", label), SUBJECT_PSEUDONYM_CHARS),
    )


def keyed_uid(key: str, uid: str) -> str:
    """Return the new UID that ``key`` gives ``uid``: ``2.25.`` and 128 bits of HMAC-SHA256.

    Deterministic for one key, and not recomputable without it.

    >>> new = keyed_uid("secret", "1.2.3.4")
    >>> new.startswith("2.25."), new == keyed_uid("secret", "1.2.3.4"), new != keyed_uid("other", "1.2.3.4")
    (True, True, True)
    >>> len(new) <= 64
    True
    """
    return f"{UID_ROOT}{_keyed_number(key, 'dicom-uid', uid)}"


def uid_key(config: AnyConfig) -> str:
    """Return the secret new DICOM UIDs are keyed with: ``--date-shift-key``, or one kept in the private folder.

    Without a key, a random one is created once (atomically) in the private folder, so
    re-runs into the same private folder give the same UIDs.
    """
    if config.date_shift_key is not None:
        return config.date_shift_key
    path = prepare_private_folder(config) / UID_KEY_FILE
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        temp.write_text(secrets.token_hex(32) + "\n")
        os.link(temp, path)
    except FileExistsError:
        pass
    finally:
        temp.unlink(missing_ok=True)
    key = path.read_text().strip()
    if not key:
        raise PrivateStateError(f"{path}: the UID key is empty")
    return key


def _session_pseudonym(key: str | None, label: str, session: str, taken: set[str]) -> str:
    if key is not None:
        return _pseudonym(_keyed_number(key, "session", label, session), SESSION_PSEUDONYM_CHARS)
    while True:
        candidate = secrets.token_hex(SESSION_PSEUDONYM_CHARS // 2)
        if candidate not in taken:
            return candidate


def _reserve_pseudonym(folder: Path, pseudonym: str) -> bool:
    """Claim ``pseudonym`` for one subject; False if another subject has it."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(folder / f"sub-{pseudonym}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    return True


def _new_record(key: str | None, label: str, private: Path) -> dict[str, Any]:
    if key is not None:
        offset, pseudonym = keyed_identity(key, label)
        _reserve_pseudonym(private / "pseudonyms", pseudonym)
    else:
        offset = _offset_seconds(secrets.randbits(128))
        pseudonym = _pseudonym(secrets.randbits(128), SUBJECT_PSEUDONYM_CHARS)
        while not _reserve_pseudonym(private / "pseudonyms", pseudonym):
            pseudonym = _pseudonym(secrets.randbits(128), SUBJECT_PSEUDONYM_CHARS)
    return {"participant_label": label, "pseudonym": pseudonym, "date_offset_seconds": offset, "sessions": {}}


def _create_once(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``record`` to ``path`` unless another process already did; return the winner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        temp.write_text(json.dumps(record, indent=2) + "\n")
        os.link(temp, path)
    except FileExistsError:
        return _read_record(path)
    finally:
        temp.unlink(missing_ok=True)
    return record


def _read_record(path: Path) -> dict[str, Any]:
    record = read_json_object(path, PrivateStateError)
    if not {"pseudonym", "date_offset_seconds", "sessions"} <= set(record):
        raise PrivateStateError(f"{path}: not a bidsdeface private mapping")
    return record


def prepare_private_folder(config: AnyConfig) -> Path:
    """Create the private folder with its README; return it."""
    private = private_folder(config)
    (private / "subjects").mkdir(parents=True, exist_ok=True)
    readme = private / "README.txt"
    if not readme.is_file():
        write_bytes_atomic(readme, PRIVATE_README.encode())
    return private


def resolve_identity(config: AnyConfig, label: str, sessions: list[str]) -> SubjectIdentity:
    """Return how subject ``label`` and its ``sessions`` appear in the output.

    Reads the subject's private record, creating it (or adding new sessions) when needed.

    Raises
    ------
    PrivateStateError
        The record is unreadable, or was made with a different ``--date-shift-key``.
    """
    if not needs_private_folder(config):
        return SubjectIdentity(label, label, None, {session: session for session in sessions})
    private = private_folder(config)
    path = private / "subjects" / f"sub-{label}.json"
    key = config.date_shift_key
    record = _read_record(path) if path.is_file() else _create_once(path, _new_record(key, label, private))
    recorded = (whole_days(record["date_offset_seconds"]) * SECONDS_PER_DAY, record["pseudonym"])
    if key is not None and recorded != keyed_identity(key, label):
        raise PrivateStateError(
            f"{path}: this subject's offsets and pseudonym were made with a different --date-shift-key "
            "(or without one); use the original key, or another --private-dir to start afresh"
        )
    if record["date_offset_seconds"] % SECONDS_PER_DAY and not config.drop_dates:
        log.warning(
            "sub-%s: the recorded date offset has a part of a day (an older bidsdeface); only its whole days are "
            "used, so this subject's earlier outputs may be shifted up to a day further back (--overwrite redoes them)",
            record["pseudonym"] if config.pseudonymize else label,
        )
    if any(session and session not in record["sessions"] for session in sessions):
        # Runs adding different sessions of one subject at once must not lose each other's.
        with output_lock(private, f"sub-{label}"):
            record = _read_record(path)
            session_map: dict[str, str] = dict(record["sessions"])
            for session in [session for session in sessions if session and session not in session_map]:
                session_map[session] = _session_pseudonym(key, label, session, set(session_map.values()))
            record = {**record, "sessions": session_map}
            write_bytes_atomic(path, (json.dumps(record, indent=2) + "\n").encode())
    return _identity(config, label, record)


def known_identity(config: AnyConfig, label: str) -> SubjectIdentity | None:
    """Return the identity of a subject already processed, without creating anything (None if unknown)."""
    if not needs_private_folder(config):
        return SubjectIdentity(label, label, None)
    path = private_folder(config) / "subjects" / f"sub-{label}.json"
    return _identity(config, label, _read_record(path)) if path.is_file() else None


def _identity(config: AnyConfig, label: str, record: dict[str, Any]) -> SubjectIdentity:
    return SubjectIdentity(
        label=label,
        output_label=record["pseudonym"] if config.pseudonymize else label,
        date_offset=None if config.drop_dates else timedelta(days=whole_days(record["date_offset_seconds"])),
        sessions={
            session: pseudonym if config.pseudonymize else session for session, pseudonym in record["sessions"].items()
        },
    )
