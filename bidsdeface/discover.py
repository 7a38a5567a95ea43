"""Find the scans to process in a BIDS dataset (pybids) and apply the label filters."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .errors import InputValidationError, NoFilesError, NoInputError, ScanError
from .files import read_json_object

log = logging.getLogger(__name__)

NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")


@dataclass(frozen=True)
class ScanJob:
    """One scan to deface.

    Attributes
    ----------
    subject, session : str
        Labels without prefix (session ``""`` when the dataset has none).
    path : Path
        The raw image.
    relpath : str
        Its path relative to the dataset root (POSIX), used for outputs and ``Sources``.
    suffix, datatype : str
        BIDS suffix (``T1w``...) and folder (``anat``...).
    anatomical : str
        For PET: the relative path of a T1w of the same subject and session to
        register through (``""`` when there is none).
    """

    subject: str
    session: str
    path: Path
    relpath: str
    suffix: str
    datatype: str
    anatomical: str = ""


def read_dataset_description(bids_dir: Path) -> dict[str, Any]:
    """Check that ``bids_dir`` is a readable BIDS dataset and return its description.

    Raises
    ------
    NoInputError
        The folder is missing or empty.
    InputValidationError
        ``dataset_description.json`` is missing or unreadable.
    """
    if not bids_dir.is_dir():
        raise NoInputError(f"{bids_dir}: input dataset folder does not exist")
    if not any(bids_dir.iterdir()):
        raise NoInputError(f"{bids_dir}: input dataset folder is empty")
    description = bids_dir / "dataset_description.json"
    if not description.is_file():
        raise InputValidationError(f"{description}: missing; {bids_dir} is not a BIDS dataset")
    return read_json_object(description, InputValidationError)


def find_scans(config: Config) -> list[ScanJob]:
    """Query the dataset for the scans selected by ``config``.

    Raises
    ------
    NoFilesError
        The label or modality filters select nothing.
    """
    from bids import BIDSLayout, BIDSLayoutIndexer

    indexer = BIDSLayoutIndexer(index_metadata=False, ignore=_unselected_folders(config.participant_labels))
    layout = BIDSLayout(str(config.bids_dir), validate=False, derivatives=False, indexer=indexer)
    subjects = layout.get_subjects()
    missing = sorted(set(config.participant_labels) - set(subjects))
    if missing:
        raise NoFilesError(f"participant label(s) not in the dataset: {', '.join(missing)}")
    if not subjects:
        raise NoFilesError(f"{config.bids_dir}: no sub-* folders found")
    query: dict[str, Any] = {
        "subject": list(config.participant_labels) or subjects,
        "suffix": list(config.suffixes),
        "extension": list(NIFTI_EXTENSIONS),
        "return_type": "object",
    }
    if config.session_labels:
        query["session"] = list(config.session_labels)
    files = layout.get(**query)
    jobs = []
    for bids_file in sorted(files, key=lambda f: f.path):
        path = Path(bids_file.path)
        entities = bids_file.get_entities()
        suffix = str(entities["suffix"])
        session = str(entities.get("session", ""))
        anatomical = _same_session_t1w(layout, str(entities["subject"]), session) if suffix == "pet" else None
        jobs.append(
            ScanJob(
                subject=str(entities["subject"]),
                session=session,
                path=path,
                relpath=path.relative_to(config.bids_dir).as_posix(),
                suffix=suffix,
                datatype=str(entities.get("datatype", path.parent.name)),
                anatomical="" if anatomical is None else anatomical.relative_to(config.bids_dir).as_posix(),
            )
        )
    if not jobs:
        raise NoFilesError(
            "no scans match the filters (participants: "
            f"{' '.join(config.participant_labels) or 'all'}; sessions: {' '.join(config.session_labels) or 'all'}; "
            f"suffixes: {' '.join(config.suffixes)})"
        )
    return jobs


def subject_labels(config: Config) -> list[str]:
    """Return the labels of the subjects a run covers: those named, else every ``sub-*`` folder.

    A release carries these subjects' files even when none of their scans is defaced.
    """
    if config.participant_labels:
        return sorted(config.participant_labels)
    return sorted(path.name[4:] for path in config.bids_dir.glob("sub-*") if path.is_dir())


def _unselected_folders(participant_labels: tuple[str, ...]) -> list[re.Pattern[str]] | None:
    """Folders pybids need not index: its defaults, and other subjects' when labels are given.

    A SLURM array task names one subject; indexing all the others would cost every task the
    whole dataset's walk.
    """
    if not participant_labels:
        return None
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    selected = "|".join(re.escape(label) for label in participant_labels)
    return [*DEFAULT_LOCATIONS_TO_IGNORE, re.compile(rf"^/sub-(?!(?:{selected})(?:/|$))")]


def _same_session_t1w(layout: Any, subject: str, session: str) -> Path | None:
    """Return the first T1w (by name) of ``subject`` in ``session``, or None."""
    from bids.layout import Query

    found = layout.get(
        subject=subject,
        session=session or Query.NONE,
        suffix="T1w",
        datatype="anat",
        extension=list(NIFTI_EXTENSIONS),
        return_type="filename",
    )
    return Path(sorted(found)[0]) if found else None


def read_metadata(image: Path) -> dict[str, Any]:
    """Sidecar of ``image`` merged over inherited sidecars (BIDS inheritance principle).

    A missing sidecar gives an empty dict.

    Raises
    ------
    ScanError
        A sidecar that applies to ``image`` is not valid JSON.
    """
    entities = image.name.split(".", 1)[0].split("_")  # BIDS names have no dot before the extension
    merged: dict[str, Any] = {}
    root = image
    levels = []
    while root.parent != root:
        root = root.parent
        levels.append(root)
        if (root / "dataset_description.json").is_file():
            break
    for folder in reversed(levels):
        for candidate in sorted(folder.glob("*.json")):
            parts = candidate.name[: -len(".json")].split("_")
            applies = parts[-1] == entities[-1] and set(parts[:-1]) <= set(entities[:-1])
            if applies and candidate.name != "dataset_description.json":
                merged.update(read_json_object(candidate, ScanError))
    return merged
