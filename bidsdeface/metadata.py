"""Dataset and subject tables (participants, sessions, scans) and the per-subject scrub record.

Tables are rebuilt from the input and from what exists in the output, so a
re-run, a resumed run or another subject's run writes consistent files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config
from .derivatives import defaced_name
from .errors import ScanError, UsageError
from .files import MISSING, Table, read_json_object, write_bytes_atomic, write_json_atomic
from .identity import SubjectIdentity, known_identity
from .privacy import AGE_COLUMN, PRIVACY_REPORT, PrivacyPlan, measure, plan_privacy
from .scrub import ScrubReport, generalise_age, scrub_column_descriptions, scrub_table

log = logging.getLogger(__name__)

SCRUB_RECORD_DESCRIPTION = (
    "What bidsdeface removed or changed in this subject's metadata. It names keys, columns "
    "and header fields only, never their values."
)


DATASET_SCRUB_RECORD = "dataset_scrub.json"
DATASET_SCRUB_DESCRIPTION = (
    "What bidsdeface removed or changed in the dataset-level files. It names keys and columns with "
    "standard names only (others are counted), never their values."
)


def write_dataset_scrub_record(config: Config, reports: dict[str, ScrubReport | None]) -> Path:
    """Write ``dataset_scrub.json``: what scrubbing did to the dataset description and ``participants.tsv``.

    Call it holding the dataset lock; it is rebuilt whole each time (listed in ``.bidsignore``).
    """
    path = config.output_dir / DATASET_SCRUB_RECORD
    files = {name: report.as_record() for name, report in reports.items() if report is not None}
    write_json_atomic(
        path,
        {"Description": DATASET_SCRUB_DESCRIPTION, "GeneratedBy": f"bidsdeface {__version__}", "Files": files},
    )
    return path


def scrub_record_path(output_dir: Path, identity: SubjectIdentity) -> Path:
    """Return the subject's scrub record path (listed in ``.bidsignore``)."""
    label = identity.output_label
    return output_dir / f"sub-{label}" / f"sub-{label}_scrub.json"


def _read_table(path: Path, shown: str) -> Table | None:
    try:
        return Table.parse(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("%s: the source table is unreadable and was not carried (%s)", shown, type(exc).__name__)
        return None


def _column_descriptions(bids_dir: Path, source: Path, kind: str, shown: str) -> dict[str, Any]:
    """Descriptions of ``source``'s columns: a dataset-level JSON overridden by one beside the table."""
    merged: dict[str, Any] = {}
    for candidate in (bids_dir / f"{kind}.json", source.with_suffix(".json")):
        if candidate.is_file():
            try:
                merged.update(read_json_object(candidate, ScanError))
            except ScanError:
                log.warning("%s: a source column description file is not valid JSON; not carried", shown)
    return merged


def carry_table(
    config: Config,
    kind: str,
    source: Path,
    target: Path,
    identity: SubjectIdentity | None,
    relabel: Callable[[str], str | None],
    generalise: Callable[[Table], Table] | None = None,
    age_description: str | None = None,
) -> ScrubReport | None:
    """Scrub the table ``source`` (and its column descriptions) into ``target``.

    ``generalise`` then applies the participants' privacy plan to the clean table, and
    ``age_description`` replaces the age column's description (banded ages).
    Returns None, and writes nothing, when the source is missing or no row remains
    (an existing output table is then left as it is).
    """
    if not source.is_file():
        return None
    root = config.release_dir if config.release_dir is not None and target.is_relative_to(config.release_dir) else None
    shown = target.relative_to(root or config.output_dir).as_posix()  # logs name output files only
    table = _read_table(source, shown)
    if table is None:
        return None
    offset = identity.date_offset if identity is not None else None
    clean, report = scrub_table(table, kind, config.scrub_policy, offset, relabel)
    if not clean.rows:
        return None
    clean = generalise(clean) if generalise is not None else clean
    write_bytes_atomic(target, clean.to_text().encode())
    descriptions = scrub_column_descriptions(
        _column_descriptions(config.bids_dir, source, kind, shown), clean.columns, config.scrub_policy
    )
    if age_description is not None and AGE_COLUMN in descriptions:
        descriptions[AGE_COLUMN] = {**descriptions[AGE_COLUMN], "Description": age_description}
    if descriptions:
        write_json_atomic(target.with_suffix(".json"), descriptions)
    return report


def write_subject_tables(config: Config, identity: SubjectIdentity, release: bool = False) -> dict[str, ScrubReport]:
    """Write the subject's sessions and scans tables; return their scrub reports by output path.

    With ``release``, into the release root, where the scans keep their raw names.
    """
    reports: dict[str, ScrubReport] = {}
    subject_in, subject_out = f"sub-{identity.label}", f"sub-{identity.output_label}"
    root = config.release_dir if release and config.release_dir is not None else config.output_dir
    in_dir, out_dir = config.bids_dir / subject_in, root / subject_out

    def session_row(value: str) -> str | None:
        session = value.removeprefix("ses-")
        renamed = f"ses-{identity.output_session(session)}"
        return renamed if (out_dir / renamed).is_dir() else None

    sessions_name = f"{subject_out}_sessions.tsv"
    plan = participants_plan(config)

    def banded(table: Table) -> Table:
        if plan is None or AGE_COLUMN not in table.columns:
            return table
        column = table.columns.index(AGE_COLUMN)
        rows = tuple(
            (*row[:column], plan.session_age(subject_in, row[column]), *row[column + 1 :]) for row in table.rows
        )
        return Table(table.columns, rows)

    report = carry_table(
        config,
        "sessions",
        in_dir / f"{subject_in}_sessions.tsv",
        out_dir / sessions_name,
        identity,
        session_row,
        banded,
        None if plan is None else plan.age_description(),
    )
    if report is not None:
        reports[f"{subject_out}/{sessions_name}"] = report
    for scans_in in sorted(in_dir.glob(f"**/{subject_in}*_scans.tsv")):
        folder_rel = scans_in.parent.relative_to(config.bids_dir).as_posix()
        folder_out = root / identity.output_relpath(folder_rel)

        def scan_row(filename: str, folder_rel: str = folder_rel, folder_out: Path = folder_out) -> str | None:
            renamed = Path(identity.output_relpath(f"{folder_rel}/{filename}"))
            try:
                # named as the pipeline writes it: every defaced image is .nii.gz
                names = (renamed.name, renamed.name + ".gz") if release else (defaced_name(renamed.name, ".nii.gz"),)
            except ValueError:
                return None
            folder = renamed.parent.relative_to(Path(identity.output_relpath(folder_rel)))
            found = [(folder / name).as_posix() for name in names if (folder_out / folder / name).is_file()]
            return found[0] if found else None

        target = root / identity.output_relpath(scans_in.relative_to(config.bids_dir).as_posix())
        report = carry_table(config, "scans", scans_in, target, identity, scan_row)
        if report is not None:
            reports[target.relative_to(root).as_posix()] = report
    return reports


def write_participants(config: Config, release: bool = False) -> ScrubReport | None:
    """Rebuild ``participants.tsv`` for the subjects present in the output (with ``release``, the release root)."""
    root = config.release_dir if release and config.release_dir is not None else config.output_dir

    def output_id(value: str) -> str | None:
        identity = known_identity(config, value.removeprefix("sub-"))
        return None if identity is None else f"sub-{identity.output_label}"

    def participant_row(value: str) -> str | None:
        renamed = output_id(value)
        return renamed if renamed is not None and (root / renamed).is_dir() else None

    plan = participants_plan(config)
    return carry_table(
        config,
        "participants",
        config.bids_dir / "participants.tsv",
        root / "participants.tsv",
        None,
        participant_row,
        None if plan is None else lambda table: plan.apply(table, output_id),
        None if plan is None else plan.age_description(),
    )


@lru_cache(maxsize=4)
def participants_plan(config: Config) -> PrivacyPlan | None:
    """Return the privacy plan of the input's participants table as it leaves, or None when it has none.

    Made from the whole table (every run on the same input makes the same plan) and kept
    for the run. The quasi-identifiers are ``--quasi-identifiers``, or every column that
    leaves but ``participant_id`` and the sensitive column.

    Raises
    ------
    UsageError
        A named quasi-identifier or sensitive column does not leave.
    PrivacyError
        ``--k-anonymity`` or ``--l-diversity`` cannot be reached within the suppression budget.
    """
    source = config.bids_dir / "participants.tsv"
    table = _read_table(source, "participants.tsv") if source.is_file() else None
    if table is None:
        return None
    clean, _ = scrub_table(table, "participants", config.scrub_policy, None, lambda value: value)
    named = [*config.quasi_identifiers, *([config.sensitive_column] if config.sensitive_column else [])]
    absent = [name for name in named if name not in clean.columns or name == "participant_id"]
    if absent:
        raise UsageError(
            f"--quasi-identifiers/--sensitive-column: not a participants column that leaves: {', '.join(absent)} "
            "(other columns are removed unless --keep-columns keeps them)"
        )
    quasi = config.quasi_identifiers or tuple(
        name for name in clean.columns if name not in ("participant_id", config.sensitive_column)
    )
    return plan_privacy(
        clean, quasi, config.sensitive_column, config.k_anonymity, config.l_diversity, config.max_suppressed_rows
    )


PRIVACY_REPORT_DESCRIPTION = (
    "k-anonymity of the participants table that leaves: equivalence classes over the quasi-identifiers, the "
    "smallest class (K), rows alone in their class, and l-diversity of the sensitive column (L). Before: as "
    "scrubbed; After: as written. Rows suppressed whole carry no quasi-identifier and are not counted."
)


def session_ages(config: Config, plan: PrivacyPlan) -> dict[str, Any] | None:
    """Measure the ages of every input ``sessions.tsv`` (k over age alone), as scrubbed and as banded by ``plan``.

    None when no sessions table has an age column.
    """
    before, after = [], []
    for path in sorted(config.bids_dir.glob("sub-*/sub-*_sessions.tsv")):
        table = _read_table(path, "sessions.tsv")
        if table is None or AGE_COLUMN not in table.columns:
            continue
        subject = path.parent.name
        column = table.columns.index(AGE_COLUMN)
        for row in table.rows:
            age = generalise_age(row[column]) or MISSING
            before.append((subject, age))
            after.append((subject, plan.session_age(subject, age)))
    if not before:
        return None
    columns = ("participant_id", AGE_COLUMN)
    measured = (measure(Table(columns, tuple(rows)), (AGE_COLUMN,)) for rows in (before, after))
    return dict(zip(("Before", "After"), (m.as_record() for m in measured), strict=True))


def write_privacy_report(config: Config, plan: PrivacyPlan) -> Path:
    """Write ``privacy_report.json``: the plan, what was asked, and the session ages measured with it."""
    requested = {"K": config.k_anonymity, "L": config.l_diversity, "MaxSuppressedRows": config.max_suppressed_rows}
    path = config.output_dir / PRIVACY_REPORT
    record = {
        "Description": PRIVACY_REPORT_DESCRIPTION,
        "GeneratedBy": f"bidsdeface {__version__}",
        "Requested": {name: value for name, value in requested.items() if value is not None},
        **plan.as_record(),
    }
    sessions = session_ages(config, plan)
    if sessions is not None:
        record["SessionAges"] = sessions
    write_json_atomic(path, record)
    return path


def _earlier_file_records(path: Path) -> dict[str, Any]:
    """Return the ``Files`` of the scrub record at ``path``: empty when there is none or it is corrupt (replaced)."""
    if not path.is_file():
        return {}
    try:
        files = json.loads(path.read_text()).get("Files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return dict(files) if isinstance(files, dict) else {}


def write_scrub_record(
    config: Config,
    identity: SubjectIdentity,
    file_records: dict[str, dict[str, Any]],
) -> Path:
    """Merge ``file_records`` (output name -> what was done) into the subject's scrub record."""
    path = scrub_record_path(config.output_dir, identity)
    files = _earlier_file_records(path)
    files.update(file_records)
    record = {
        "Description": SCRUB_RECORD_DESCRIPTION,
        "GeneratedBy": f"bidsdeface {__version__}",
        "Dates": "removed" if identity.date_offset is None else "shifted by one offset for all of this subject's files",
        "LabelsPseudonymised": config.pseudonymize,
        "Files": dict(sorted(files.items())),
    }
    write_json_atomic(path, record)
    return path
