"""DICOM folder -> de-identified BIDS dataset, with dcm2niix and the scrub rules.

Each series is classified from its headers, converted on its own by dcm2niix
(through links in a scratch folder, so dcm2niix never sees or writes the input
folder), checked, scrubbed and named. A subject's (or session's) folder is built
in a hidden staging folder and renamed into place, so a crash leaves nothing
half-written. Every series found is listed in a conversion report with its
decision and reason, and no identifying value.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib

from . import __version__
from .bidsnames import BIDS_VERSION, clean_label, join_bids_name
from .classify import Decision, classify_series, decide_with_guess
from .config import ConvertConfig, usable_cores
from .dicom import Inventory, Series, scan_dicom_folder
from .errors import NoFilesError, NoInputError, OutputError, ScanError, ToolError, UsageError
from .files import MISSING, TEMP_PREFIX, Table, read_json_object, write_bytes_atomic, write_json_atomic
from .identity import private_folder, resolve_identity
from .pixeltext import TextFinding, cleaned_volume, find_series_text, may_carry_text
from .scrub import scrub_modality, scrub_nifti_header, scrub_sidecar, shift_clock_text
from .tools import run

log = logging.getLogger(__name__)

REPORT_COLUMNS: tuple[str, ...] = ("series_number", "modality", "files", "decision", "output", "reason")
MAP_COLUMNS: tuple[str, ...] = ("study_instance_uid", "participant_label", "session_label")
MAP_INFO_COLUMNS: tuple[str, ...] = ("patient_id", "patient_name", "patient_birth_date", "study_date", "series")
RAW_BIDSIGNORE: tuple[str, ...] = ("*_ct.nii.gz", "*_ct.nii", "*_ct.json", "*_conversion.tsv")
RAW_README = """This dataset was converted from DICOM by bidsdeface-convert (dcm2niix), with
de-identified sidecars: only allow-listed keys are kept, and dates and clock times
are shifted by one offset per subject (or removed). Images are not defaced yet:
run `bidsdeface BIDS_DIR OUTPUT_DIR participant` before sharing them.
Each subject (or session) folder holds a *_conversion.tsv listing every DICOM
series found, what became of it and why.
"""
DCM2NIIX_TIMEOUT_S = 900


@dataclass(frozen=True)
class SeriesOutcome:
    """What became of one series (a conversion report row).

    Attributes
    ----------
    number : int
        SeriesNumber.
    modality : str
        DICOM Modality.
    files : int
        Number of files in the series.
    decision : str
        ``converted``, ``skipped`` (by rule) or ``failed`` (bad data or dcm2niix failure).
    output : str
        Dataset-relative path of the image, or ``""``.
    reason : str
        Why, without identifying values.
    """

    number: int
    modality: str
    files: int
    decision: str
    output: str
    reason: str

    def cells(self) -> tuple[str, ...]:
        """Return the report row."""
        cells = (str(self.number), self.modality or MISSING, str(self.files), self.decision, self.output, self.reason)
        return tuple(cell.replace("\t", " ") or MISSING for cell in cells)


@dataclass(frozen=True)
class Target:
    """Where a study goes: a participant label and an optional session label."""

    participant: str
    session: str = ""

    @property
    def relpath(self) -> str:
        """``sub-X`` or ``sub-X/ses-Y``."""
        return f"sub-{self.participant}" + (f"/ses-{self.session}" if self.session else "")

    @property
    def entities(self) -> list[tuple[str, str]]:
        """The ``sub`` and ``ses`` entities."""
        return [("sub", self.participant)] + ([("ses", self.session)] if self.session else [])


@dataclass(frozen=True)
class ConversionResult:
    """All decisions of a conversion, per target folder (``sub-X`` or ``sub-X/ses-Y``)."""

    outcomes: dict[str, list[SeriesOutcome]]

    def count(self, decision: str) -> int:
        """Return the number of series with ``decision``."""
        return sum(o.decision == decision for rows in self.outcomes.values() for o in rows)


def outcome_of(series: Series, decision: str, reason: str, output: str = "") -> SeriesOutcome:
    """Return the report row of ``series``."""
    return SeriesOutcome(series.number, series.header.modality, len(series.files), decision, output, reason)


@dataclass(frozen=True)
class ConvertedSeries:
    """A series dcm2niix converted, ready to be named, scrubbed and written.

    Attributes
    ----------
    series : Series
        The DICOM series.
    decision : Decision
        Its classification, refined by dcm2niix's BIDS guess.
    image : Path
        The NIfTI image dcm2niix wrote (in the scratch folder).
    sidecar : dict
        dcm2niix's sidecar, not yet scrubbed.
    note : str
        What dcm2niix corrected (gantry tilt, slice spacing), or ``""``.
    text : TextFinding or None
        Burned-in text found in the pixels (to be filled with background), or None.
    """

    series: Series
    decision: Decision
    image: Path
    sidecar: dict[str, Any]
    note: str
    text: TextFinding | None = None


class SeriesNotConverted(Exception):
    """A series is skipped or failed at conversion; ``outcome`` is its report row (never leaves this module)."""

    def __init__(self, outcome: SeriesOutcome) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


def inside_folder(path: Path, folder: Path) -> bool:
    """Return whether ``path`` is ``folder`` or inside it (both resolved)."""
    return path.resolve() == folder.resolve() or folder.resolve() in path.resolve().parents


def refuse_nested_folders(dicom: Path, output: Path, private: Path | None, work: Path | None, kind: str) -> None:
    """Refuse an output, private or scratch folder inside the DICOM folder, or inside each other.

    Raises
    ------
    UsageError
        Two of the folders nest; ``kind`` names the output (``BIDS``, ``output``) in the message.
    OutputError
        The output exists and is not a folder.
    """
    if inside_folder(output, dicom) or inside_folder(dicom, output):
        raise UsageError(f"the {kind} folder and the DICOM folder must not contain each other")
    if private is not None and (inside_folder(private, output) or inside_folder(private, dicom)):
        raise UsageError(f"{private}: the private folder must be outside the {kind} and DICOM folders")
    if work is not None and (inside_folder(work, output) or inside_folder(work, dicom)):
        raise UsageError(f"{work}: the scratch folder (-w) must be outside the {kind} and DICOM folders")
    if output.exists() and not output.is_dir():
        raise OutputError(f"{output}: exists and is not a folder")


def check_paths(config: ConvertConfig) -> None:
    """Refuse folders that would make the conversion write into its input or mix datasets.

    Raises
    ------
    NoInputError
        DICOM_DIR is missing or empty.
    UsageError
        The output or private folder is inside DICOM_DIR (or the reverse), or the
        scratch folder (``-w``, it holds unscrubbed conversions) is in or at either.
    OutputError
        BIDS_DIR exists, is not empty and is not a BIDS dataset; the scratch folder
        cannot be created.
    """
    dicom, output = config.dicom_dir, config.output_dir
    if not dicom.is_dir():
        raise NoInputError(f"{dicom}: DICOM folder does not exist")
    if not any(dicom.iterdir()):
        raise NoInputError(f"{dicom}: DICOM folder is empty")
    private = None if config.drop_dates else private_folder(config)
    refuse_nested_folders(dicom, output, private, config.work_dir, "BIDS")
    work = config.work_dir
    if output.is_dir() and any(output.iterdir()) and not (output / "dataset_description.json").is_file():
        raise OutputError(f"{output}: not empty and not a BIDS dataset; refusing to write into it")
    if work is not None:
        try:
            work.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{work}: cannot create the scratch folder (-w) ({exc.strerror})") from exc


def read_mapping(path: Path) -> dict[str, Target]:
    """Read a study mapping TSV: ``study_instance_uid``, ``participant_label`` (and ``session_label``).

    Rows with an empty participant label leave their study out.

    Raises
    ------
    UsageError
        The file is unreadable, lacks the columns, or holds an invalid label.
    """
    try:
        table = Table.parse(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the mapping ({type(exc).__name__})") from exc
    missing = [column for column in MAP_COLUMNS[:2] if column not in table.columns]
    if missing:
        raise UsageError(f"{path}: the mapping needs the column(s) {', '.join(missing)}")
    mapping: dict[str, Target] = {}
    for row in table.rows:
        cells = dict(zip(table.columns, row, strict=True))
        participant = cells["participant_label"].strip()
        if participant in ("", MISSING):
            continue
        session = cells.get("session_label", "").strip()
        mapping[cells["study_instance_uid"].strip()] = Target(
            clean_label(participant, "sub"),
            "" if session in ("", MISSING) else clean_label(session, "ses"),
        )
    if not mapping:
        raise UsageError(f"{path}: no study has a participant_label")
    return mapping


def write_mapping_template(inventory: Inventory, path: Path, config: ConvertConfig) -> int:
    """Write a mapping to fill in: one row per study, with the identifiers a person needs to tell them apart.

    Returns the number of studies. The file holds identifiers, so it may not be
    written inside the DICOM or BIDS folder.
    """
    if inside_folder(path, config.output_dir) or inside_folder(path, config.dicom_dir):
        raise UsageError(f"{path}: the mapping holds identifiers; write it outside the DICOM and BIDS folders")
    rows = []
    for study in inventory.studies:
        members = [s for s in inventory.series if s.study_uid == study]
        first = members[0]
        date = first.acquired.strftime("%Y-%m-%d") if first.acquired else MISSING
        numbers = ",".join(str(s.number) for s in members)
        patient = first.patient
        rows.append((study, "", "", patient.patient_id, patient.name, patient.birth_date, date, numbers))
    table = Table(MAP_COLUMNS + MAP_INFO_COLUMNS, tuple(tuple(c or MISSING for c in r) for r in rows))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, table.to_text().encode())
    return len(rows)


def assign_studies(config: ConvertConfig, inventory: Inventory) -> dict[str, Target]:
    """Return the target of each study to convert; refuse to merge patients or studies without a mapping.

    Raises
    ------
    UsageError
        Several patients or studies and no mapping, or a mapping that matches nothing.
    """
    if config.mapping is not None:
        mapping = read_mapping(config.mapping)
        targets = {study: mapping[study] for study in inventory.studies if study in mapping}
        unknown = len(set(mapping) - set(inventory.studies))
        if unknown:
            log.warning("%d study(ies) in the mapping are not in the DICOM folder", unknown)
        if not targets:
            raise UsageError(f"{config.mapping}: no study in the mapping is in the DICOM folder")
        return targets
    patients, studies = inventory.patients, inventory.studies
    numbers = ", ".join(str(s.number) for s in inventory.series)
    advice = (
        "List them with --write-map FILE (FILE holds identifiers: keep it private), fill in participant_label "
        "(and session_label), then convert with --map FILE"
    )
    if len(patients) > 1:
        raise UsageError(
            f"the DICOM folder holds {len(patients)} patients in {len(studies)} studies (series {numbers}); "
            f"refusing to merge different people into one subject. {advice}"
        )
    if len(studies) > 1:
        raise UsageError(
            f"the DICOM folder holds {len(studies)} studies of one patient (series {numbers}); "
            f"each study needs its own session. {advice}"
        )
    return {studies[0]: Target(config.participant_label, config.session_label)}


def _link_series(series: Series, folder: Path) -> None:
    folder.mkdir(parents=True)
    for index, path in enumerate(series.files):
        (folder / f"{index:05d}.dcm").symlink_to(path.resolve())


def _pick_image(images: list[Path], series: Series) -> tuple[Path | None, str]:
    """Choose dcm2niix's output: the tilt-corrected / equalised one if present, else the only one."""
    for marker, note in (
        ("_Tilt_Eq_", f"gantry tilt {series.gantry_tilt:g} deg corrected and slice spacing equalised by dcm2niix"),
        ("_Tilt_", f"gantry tilt {series.gantry_tilt:g} deg corrected by dcm2niix"),
        ("_Eq_", "unequal slice spacing equalised by dcm2niix"),
    ):
        chosen = [image for image in images if marker in image.name]
        if len(chosen) == 1:
            return chosen[0], note
    if len(images) == 1:
        return images[0], ""
    return None, f"dcm2niix split the series into {len(images)} images (echoes, phases or stacks)"


def convert_series(series: Series, decision: Decision, work: Path) -> ConvertedSeries:
    """Convert one series with dcm2niix in ``work``.

    Raises
    ------
    SeriesNotConverted
        dcm2niix failed or wrote no usable image, or its guess says the series is not one to keep;
        the exception carries the report row.
    ScanError
        dcm2niix's sidecar is not a JSON object.
    """
    source, out = work / "dicom", work / "nifti"
    _link_series(series, source)
    out.mkdir()
    try:
        run(
            ["dcm2niix", "-b", "y", "-ba", "y", "-z", "y", "-c", "", "-f", "series", "-o", out, source],
            timeout=DCM2NIIX_TIMEOUT_S,
        )
    except ToolError as exc:
        shown = "unknown" if exc.returncode is None else exc.returncode
        raise _refused(series, "failed", f"dcm2niix could not convert it (exit code {shown})") from exc
    image, note = _pick_image(sorted(out.glob("series*.nii.gz")), series)
    sidecar_path = out / "series.json"
    if image is None:
        raise _refused(series, "failed", note or "dcm2niix wrote no image")
    if not sidecar_path.is_file():
        raise _refused(series, "failed", "dcm2niix wrote no sidecar")
    sidecar = read_json_object(sidecar_path, ScanError)
    decision = decide_with_guess(decision, sidecar.get("BidsGuess"))
    if not decision.suffix:
        raise _refused(series, "skipped", decision.reason)
    shape = nib.load(image).shape
    volumes = shape[3] if len(shape) > 3 else 1
    if volumes > 1 and decision.suffix != "pet":
        raise _refused(series, "failed", f"{volumes} volumes: not a single structural image")
    return ConvertedSeries(series, decision, image, sidecar, note)


def _refused(series: Series, decision: str, reason: str) -> SeriesNotConverted:
    return SeriesNotConverted(outcome_of(series, decision, reason))


def _names(converted: list[ConvertedSeries], target: Target) -> list[str]:
    """Dataset-relative image paths: ``acq-`` when one suffix mixes acquisition kinds, ``run-`` when repeated."""
    names = []
    for item in converted:
        same = [c for c in converted if c.decision.suffix == item.decision.suffix]
        entities = list(target.entities)
        kinds = {c.series.acquisition_kind for c in same}
        if len(kinds) > 1 and item.series.acquisition_kind:
            entities.append(("acq", item.series.acquisition_kind))
            same = [c for c in same if c.series.acquisition_kind == item.series.acquisition_kind]
        if len(same) > 1:
            entities.append(("run", str(same.index(item) + 1)))
        name = join_bids_name(entities, item.decision.suffix, ".nii.gz")
        names.append(f"{target.relpath}/{item.decision.datatype}/{name}")
    return names


def _write_image(item: ConvertedSeries, relpath: str, stage: Path, config: ConvertConfig, offset: Any) -> None:
    """Write one scrubbed image and sidecar below ``stage``."""
    modality = scrub_modality(item.decision.suffix, item.decision.datatype)
    clean, _ = scrub_sidecar(item.sidecar, modality, config.scrub_policy, offset)
    source = nib.load(item.image)
    if item.text is not None:
        source = cleaned_volume(source, item.series.files, item.text)
    image, _ = scrub_nifti_header(source)
    path = stage / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    write_json_atomic(path.with_name(path.name.replace(".nii.gz", ".json")), clean)


def _acq_time(series: Series, offset: Any) -> str:
    if series.acquired is None or offset is None:
        return MISSING
    return shift_clock_text(series.acquired.strftime("%Y-%m-%dT%H:%M:%S"), offset) or MISSING


def screen_pixel_text(series: Series, clean: bool, threads: int | None = None) -> TextFinding:
    """Look for burned-in text in a series' pixels (:mod:`bidsdeface.pixeltext`); return what was found.

    Raises
    ------
    SeriesNotConverted
        Text was found and ``clean`` is off: the series is skipped, with counts as the reason.
    """
    every = may_carry_text(series.header.burned_in_annotation)
    finding = find_series_text(series.files, every, threads or usable_cores())
    log.debug("series %d: pixel text check of %d frame(s) took %.1f s", series.number, finding.checked, finding.seconds)
    if finding.found and not clean:
        raise _refused(series, "skipped", f"{finding.describe()} (--clean-pixel-text fills it instead)")
    return finding


def convert_target(config: ConvertConfig, target: Target, members: list[Series], scratch: Path) -> list[SeriesOutcome]:
    """Convert the series of one participant (or session) into a staged folder, then move it into place."""
    outcomes: dict[str, SeriesOutcome] = {}
    converted: list[ConvertedSeries] = []
    for series in members:
        decision = classify_series(series.header)
        if not decision.kept:
            outcomes[series.uid] = outcome_of(series, "skipped", decision.reason)
        elif series.problems:
            outcomes[series.uid] = outcome_of(series, "failed", "; ".join(series.problems))
        else:
            try:
                text = screen_pixel_text(series, config.clean_pixel_text)
                item = convert_series(series, decision, scratch / uuid.uuid4().hex)
                converted.append(dataclasses.replace(item, text=text if text.found else None))
            except SeriesNotConverted as refused:
                outcomes[series.uid] = refused.outcome
    converted.sort(key=lambda c: (c.decision.suffix, c.series.number, c.series.uid))
    if converted:
        _write_target(config, target, converted, outcomes, [s.uid for s in members])
    rows = [outcomes[s.uid] for s in members]
    for row in rows:
        log.log(
            logging.WARNING if row.decision == "failed" else logging.INFO,
            "%s: series %d (%s, %d files): %s%s: %s",
            target.relpath,
            row.number,
            row.modality or "no modality",
            row.files,
            row.decision,
            f" as {row.output}" if row.output else "",
            row.reason,
        )
    return rows


def _write_target(
    config: ConvertConfig,
    target: Target,
    converted: list[ConvertedSeries],
    outcomes: dict[str, SeriesOutcome],
    order: list[str],
) -> None:
    """Write the converted images, tables and report into a staged folder, then move it into place."""
    offset = resolve_identity(config, target.participant, [target.session] if target.session else []).date_offset
    stage = config.output_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    try:
        scans = []
        for item, relpath in zip(converted, _names(converted, target), strict=True):
            series = item.series
            try:
                _write_image(item, relpath, stage, config, offset)
            except ScanError as exc:
                outcomes[series.uid] = outcome_of(series, "failed", str(exc))
                continue
            reason = item.decision.reason + (f"; {item.note}" if item.note else "")
            reason += f"; {item.text.describe()}, filled with background" if item.text is not None else ""
            outcomes[series.uid] = outcome_of(series, "converted", reason, relpath)
            scans.append((relpath.removeprefix(f"{target.relpath}/"), _acq_time(series, offset)))
        if scans:
            _write_target_tables(stage / target.relpath, target, scans, [outcomes[uid] for uid in order])
            move_into_place(stage / target.relpath, config.output_dir / target.relpath)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _write_target_tables(folder: Path, target: Target, scans: list[tuple[str, str]], rows: list[SeriesOutcome]) -> None:
    prefix = join_bids_name(target.entities, "", "").rstrip("_")
    with_times = any(time != MISSING for _, time in scans)
    columns = ("filename", "acq_time") if with_times else ("filename",)
    table = Table(columns, tuple(row if with_times else row[:1] for row in sorted(scans)))
    write_bytes_atomic(folder / f"{prefix}_scans.tsv", table.to_text().encode())
    report = Table(REPORT_COLUMNS, tuple(row.cells() for row in rows))
    write_bytes_atomic(folder / f"{prefix}_conversion.tsv", report.to_text().encode())


def move_into_place(staged: Path, final: Path) -> None:
    """Rename a staged folder to ``final``, replacing an older one only after the new one is complete."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.parent / f"{TEMP_PREFIX}old-{uuid.uuid4().hex}"
    if final.exists():
        final.rename(old)
    staged.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def write_raw_dataset_files(config: ConvertConfig) -> None:
    """Create the raw dataset's description, README and ``.bidsignore`` if missing; add our ignore patterns."""
    output = config.output_dir
    description = output / "dataset_description.json"
    if not description.is_file():
        write_json_atomic(
            description,
            {
                "Name": "Converted from DICOM (de-identified metadata, not yet defaced)",
                "BIDSVersion": BIDS_VERSION,
                "DatasetType": "raw",
                "GeneratedBy": [
                    {"Name": "bidsdeface-convert", "Version": __version__, "Description": "DICOM to BIDS"},
                    {"Name": "dcm2niix", "Description": "DICOM to NIfTI conversion"},
                ],
            },
        )
    if not (output / "README").is_file() and not (output / "README.md").is_file():
        write_bytes_atomic(output / "README", RAW_README.encode())
    ignore = output / ".bidsignore"
    lines = ignore.read_text().splitlines() if ignore.is_file() else []
    wanted = lines + [line for line in RAW_BIDSIGNORE if line not in lines]
    if wanted != lines:
        write_bytes_atomic(ignore, ("\n".join(wanted) + "\n").encode())


def write_raw_participants(output: Path) -> None:
    """Rebuild the raw dataset's ``participants.tsv``: existing rows kept, a row added for every subject folder."""
    path = output / "participants.tsv"
    table = Table.parse(path.read_text(encoding="utf-8-sig")) if path.is_file() else Table(("participant_id",), ())
    present = {row[0] for row in table.rows}
    added = tuple(
        (folder.name, *[MISSING] * (len(table.columns) - 1))
        for folder in sorted(output.glob("sub-*"))
        if folder.is_dir() and folder.name not in present
    )
    if added or not path.is_file():
        rows = tuple(sorted(table.rows + added))
        write_bytes_atomic(path, Table(table.columns, rows).to_text().encode())


def convert(
    config: ConvertConfig, on_target: Callable[[str, list[SeriesOutcome]], None] | None = None
) -> ConversionResult:
    """Convert a DICOM folder into (or into more of) a BIDS dataset.

    Parameters
    ----------
    config : ConvertConfig
        Folders, labels or mapping, and scrub settings.
    on_target : callable, optional
        Called with each finished target folder and its outcomes (progress).

    Returns
    -------
    ConversionResult

    Raises
    ------
    NoInputError, UsageError, OutputError, NoFilesError
        The input holds no DICOM, the patients or studies cannot be told apart
        without a mapping, or the output folder cannot be used.
    """
    check_paths(config)
    by_target = series_by_target(config)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, list[SeriesOutcome]] = {}
    with tempfile.TemporaryDirectory(prefix="bidsdeface-convert-", dir=config.work_dir) as scratch:
        for target, members in by_target.items():
            if (config.output_dir / target.relpath).exists() and not config.overwrite:
                log.info("%s: already converted; skipped (use --overwrite to replace it)", target.relpath)
                continue
            rows = convert_target(config, target, members, Path(scratch))
            outcomes[target.relpath] = rows
            if on_target is not None:
                on_target(target.relpath, rows)
    result = ConversionResult(outcomes)
    if result.count("converted"):
        write_raw_dataset_files(config)
        write_raw_participants(config.output_dir)
    if outcomes and not result.count("converted"):
        failed = result.count("failed")
        if failed:
            raise ScanError(f"no series could be converted: {failed} failed (each reason is logged above)")
        raise NoFilesError("no series to convert: every series was skipped by rule (each reason is logged above)")
    return result


def series_by_target(config: ConvertConfig) -> dict[Target, list[Series]]:
    """Read DICOM_DIR and group its series by the folder each goes to (studies left out of a mapping dropped).

    Raises
    ------
    NoInputError
        No readable DICOM series.
    UsageError
        The patients or studies cannot be told apart without a mapping (see :func:`assign_studies`).
    """
    inventory = scan_dicom_folder(config.dicom_dir)
    if inventory.not_dicom:
        log.info("%d file(s) are not DICOM images and were ignored", inventory.not_dicom)
    if inventory.unreadable:
        log.warning("%d DICOM file(s) could not be read (truncated or corrupt) and were ignored", inventory.unreadable)
    if not inventory.series:
        raise NoInputError(f"{config.dicom_dir}: no readable DICOM series found")
    targets = assign_studies(config, inventory)
    by_target: dict[Target, list[Series]] = {}
    for series in inventory.series:
        if series.study_uid in targets:
            by_target.setdefault(targets[series.study_uid], []).append(series)
    return by_target
