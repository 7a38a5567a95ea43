"""DICOM in, de-identified and defaced DICOM out (``bidsdeface-dicom``).

Each series is classified as in ``bidsdeface-convert`` (screen captures, dose and
structured reports, localizers and broken series are not exported, with a reason).
A kept series is converted by dcm2niix in a scratch folder and run through the same
stages as a BIDS scan (register, masks, deface, QC). The replaced voxels are then
written back into every instance's own pixels (:mod:`bidsdeface.dicompixels`), the
headers are de-identified by the confidentiality profile (:mod:`bidsdeface.deidentify`),
and the result is checked against the input (:mod:`bidsdeface.exportcheck`). Only a
series whose QC verdict is not FAIL and whose self-check passed is moved into the
output, whole (staged, then renamed). The old-to-new UID and patient mappings go to the
private folder, never into the output.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from . import __version__
from .classify import classify_series
from .config import DicomOutConfig
from .convert import (
    SeriesNotConverted,
    Target,
    convert_series,
    move_into_place,
    outcome_of,
    refuse_nested_folders,
    screen_pixel_text,
    series_by_target,
)
from .deidentify import HeaderReport, Replacements, deidentify_header
from .dicom import Series
from .dicompixels import defaced_frames, write_pixels
from .errors import BidsDefaceError, NoFilesError, NoInputError, OutputError, ScanError
from .exportcheck import ExportCheck, check_export
from .files import TEMP_PREFIX, Table, atomic_path, output_lock, write_bytes_atomic, write_json_atomic
from .identity import SubjectIdentity, prepare_private_folder, private_folder, resolve_identity, uid_key
from .images import ct_intensities, load_scan
from .pipeline import DefacedScan, LoadedScan, StageTimer, deface_loaded
from .pixeltext import TextFinding, cleaned_volume, filled
from .report import write_dicom_report
from .scrub import scrub_nifti_header
from .templates import load_template
from .volumes import mask_image_like, real_values, stored_data

log = logging.getLogger(__name__)

DICOM_STAGES: tuple[str, ...] = (
    "pixeltext",
    "convert",
    "load",
    "register",
    "masks",
    "deface",
    "qc",
    "write",
    "selfcheck",
)
EXPORT_REPORT = "export_report.tsv"
QC_FOLDER = "qc"
OUTPUT_README = "README.txt"
REPORT_COLUMNS = (
    "subject", "session", "series_number", "modality", "files", "decision", "qc", "self_check", "output", "reason",
)  # fmt: skip
MAPPINGS = {"uids": "uid_mapping.csv", "patients": "patient_mapping.csv"}
README_TEXT = """De-identified, defaced DICOM written by bidsdeface-dicom {version}.

sub-<pseudonym>/[ses-<label>/]series-<number>-<tail>/ holds one series per folder: headers
de-identified by DICOM PS3.15 Annex E (Basic Application Level Confidentiality Profile and
the options named in DeidentificationMethodCodeSequence), new UIDs, the face replaced in
the pixels. qc/ holds each series' figures, record and masks (the voxels replaced, the
protected brain) in the grid of its NIfTI conversion; report.html and export_report.tsv
list every series found and what became of it.
"""


@dataclass(frozen=True)
class SeriesExport:
    """What became of one series: a row of the export report.

    Attributes
    ----------
    subject, session : str
        Output labels (the subject's pseudonym).
    number, modality, files :
        SeriesNumber, Modality and number of instances.
    decision : str
        ``exported``, ``skipped`` (by rule, or already exported), ``withheld`` (QC FAIL) or ``failed``.
    reason : str
        Why, without identifying values.
    qc, self_check : str
        QC verdict and self-check result (``PASS``/``FAIL``), or ``""``.
    output : str
        The series folder relative to the output, or ``""``.
    seconds : dict
        Wall seconds per stage.
    """

    subject: str
    session: str
    number: int
    modality: str
    files: int
    decision: str
    reason: str
    qc: str = ""
    self_check: str = ""
    output: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    def cells(self) -> tuple[str, ...]:
        """Return the report row."""
        cells = (self.subject, self.session, str(self.number), self.modality, str(self.files), self.decision)
        more = (self.qc, self.self_check, self.output, self.reason.replace("\t", " "))
        return tuple(c or "n/a" for c in (*cells, *more))


def check_paths(config: DicomOutConfig) -> None:
    """Refuse folders that would make the export write into its input, or into something else.

    Raises
    ------
    NoInputError
        The DICOM folder is missing or empty.
    UsageError
        The output, private or scratch folder is inside the DICOM folder (or the reverse).
    OutputError
        The output exists and is neither empty nor an earlier export.
    """
    dicom, output = config.dicom_dir, config.output_dir
    if not dicom.is_dir() or not any(dicom.iterdir()):
        raise NoInputError(f"{dicom}: DICOM folder does not exist or is empty")
    refuse_nested_folders(dicom, output, private_folder(config), config.work_dir, "output")
    if output.is_dir() and any(output.iterdir()) and not (output / OUTPUT_README).is_file():
        raise OutputError(f"{output}: not empty and not a bidsdeface-dicom output; refusing to write into it")


def export_dicom(config: DicomOutConfig) -> list[SeriesExport]:
    """Export every series of the DICOM folder, de-identified and defaced; return what became of each.

    Raises
    ------
    NoInputError, UsageError, OutputError, NoFilesError
        No DICOM, patients or studies that cannot be told apart without a mapping, an unusable
        output folder, or nothing that can be exported.
    """
    check_paths(config)
    by_target = series_by_target(config)
    prepare_private_folder(config)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(config.output_dir / OUTPUT_README, README_TEXT.format(version=__version__).encode())
    _remove_stale_stages(config.output_dir)
    key = uid_key(config)
    rows: list[SeriesExport] = []
    total = sum(len(members) for members in by_target.values())
    with tempfile.TemporaryDirectory(prefix="bidsdeface-dicom-", dir=config.work_dir) as scratch:
        for target, members in by_target.items():
            identity = resolve_identity(config, target.participant, [target.session] if target.session else [])
            who = Replacements(identity.output_label, identity.date_offset, key)
            for series in members:
                row, header = export_series(config, ExportJob(target, identity, who, series), Path(scratch))
                rows.append(row)
                _log_row(f"[{len(rows)}/{total}]", row)
                _record_mappings(config, series, who, header)
    _write_reports(config, rows)
    if not any(row.decision in ("exported", "withheld", "failed") or row.output for row in rows):
        raise NoFilesError("no series to export: every series was skipped by rule (each reason is logged above)")
    return rows


def _remove_stale_stages(output: Path) -> None:
    for stale in output.rglob(f"{TEMP_PREFIX}*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def _log_row(progress: str, row: SeriesExport) -> None:
    where = f" as {row.output}" if row.output and row.decision == "exported" else ""
    verdicts = f" (QC {row.qc}, self-check {row.self_check or 'not run'})" if row.qc else ""
    seconds = f" in {sum(row.seconds.values()):.1f} s" if row.seconds else ""
    level = logging.WARNING if row.decision in ("failed", "withheld") else logging.INFO
    log.log(
        level,
        "%s sub-%s series %d (%s, %d files): %s%s%s%s: %s",
        progress, row.subject, row.number, row.modality or "no modality", row.files, row.decision, where, verdicts,
        seconds, row.reason,
    )  # fmt: skip


def _series_folder(identity: SubjectIdentity, target: Target, series: Series, who: Replacements) -> str:
    """Return the output folder of a series: labels, SeriesNumber and the tail of its new UID (unique)."""
    session = f"/ses-{identity.output_session(target.session)}" if target.session else ""
    return f"sub-{identity.output_label}{session}/series-{series.number:03d}-{who.uid(series.uid)[-8:]}"


@dataclass(frozen=True)
class ExportJob:
    """One series to export, and who it belongs to (output labels, replacements, output folder)."""

    target: Target
    identity: SubjectIdentity
    who: Replacements
    series: Series

    @property
    def folder(self) -> str:
        """The series' output folder (see :func:`_series_folder`)."""
        return _series_folder(self.identity, self.target, self.series, self.who)

    def row(self, decision: str, reason: str, **more: Any) -> SeriesExport:
        """Return the series' report row."""
        session = self.identity.output_session(self.target.session) if self.target.session else ""
        series = self.series
        return SeriesExport(self.identity.output_label, session, series.number, series.header.modality,
                            len(series.files), decision, reason, **more)  # fmt: skip


def export_series(config: DicomOutConfig, job: ExportJob, scratch: Path) -> tuple[SeriesExport, HeaderReport]:
    """Classify, look for pixel text, deface, de-identify, check and write one series; never raises for bad data."""
    series = job.series
    decision = classify_series(series.header)
    if not decision.kept:
        return job.row("skipped", decision.reason), HeaderReport()
    if series.problems:
        return job.row("failed", "; ".join(series.problems)), HeaderReport()
    if (config.output_dir / job.folder).is_dir() and not config.overwrite:
        return job.row("skipped", "already exported (use --overwrite to redo)", output=job.folder), HeaderReport()
    timer = StageTimer(DICOM_STAGES)
    try:
        with timer.stage("pixeltext"):
            text = screen_pixel_text(series, config.clean_pixel_text, config.defacing.omp_nthreads)
        text = text if text.found else None
        defaced = _defaced_series(config, series, decision, scratch / uuid.uuid4().hex, timer, text)
    except SeriesNotConverted as refused:
        return job.row(refused.outcome.decision, refused.outcome.reason, seconds=timer.seconds), HeaderReport()
    except Exception as exc:  # one broken series must not stop the others
        log.debug("series %d: traceback", series.number, exc_info=True)
        reason = str(exc) if isinstance(exc, BidsDefaceError) else f"defacing failed: {type(exc).__name__}"
        return job.row("failed", reason, seconds=timer.seconds), HeaderReport()
    verdict = defaced.quality.verdict
    if verdict.status == "FAIL":
        _write_qc(config, job.folder, defaced, None, timer, "withheld")
        reason = "QC FAIL: " + "; ".join(verdict.reasons)
        return job.row("withheld", reason, qc="FAIL", seconds=timer.seconds), HeaderReport()
    return _written_series(config, job, defaced, timer, text)


def _written_series(
    config: DicomOutConfig, job: ExportJob, defaced: DefacedScan, timer: StageTimer, text: TextFinding | None
) -> tuple[SeriesExport, HeaderReport]:
    """Write the instances into a staged folder, check them, and move them into place if the check passed."""
    stage = config.output_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    qc, header, folder = defaced.quality.verdict.status, HeaderReport(), job.folder
    try:
        with timer.stage("write"):
            pairs, header, replaced = _write_instances(job, defaced, config, stage, text)
        with timer.stage("selfcheck"):
            face_voxels = int(defaced.result.removed.sum())
            check = check_export(pairs, config.profile, job.who, set(header.uids), (replaced, face_voxels), text)
        if not check.passed:
            failed = [name for name, (passed, _) in check.checks.items() if not passed]
            _write_qc(config, folder, defaced, check, timer, "failed", header)
            reason = f"self-check failed: {', '.join(failed)}; not written"
            return job.row("failed", reason, qc=qc, self_check="FAIL", seconds=timer.seconds), header
        move_into_place(stage, config.output_dir / folder)
        _write_qc(config, folder, defaced, check, timer, "exported", header)
    except Exception as exc:  # one broken series must not stop the others
        log.debug("series %d: traceback", job.series.number, exc_info=True)
        reason = str(exc) if isinstance(exc, ScanError) else f"writing failed: {type(exc).__name__}"
        return job.row("failed", reason, qc=qc, seconds=timer.seconds), header
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    reason = f"{len(pairs)} instances; {replaced} pixels replaced" + (f"; {text.describe()}, filled" if text else "")
    return job.row("exported", reason, qc=qc, self_check="PASS", output=folder, seconds=timer.seconds), header


def _defaced_series(
    config: DicomOutConfig, series: Series, decision: Any, work: Path, timer: StageTimer, text: TextFinding | None
) -> DefacedScan:
    """Convert the series with dcm2niix (its text filled, if any) and run the defacing stages on it."""
    with timer.stage("convert"):
        converted = convert_series(series, decision, work)
        image = converted.image
        if text is not None:
            image = work / "text_filled.nii.gz"
            nib.save(cleaned_volume(nib.load(converted.image), series.files, text), image)
    suffix = converted.decision.suffix
    with timer.stage("load"):
        durations = converted.sidecar.get("FrameDuration") if suffix == "pet" else None
        scan = load_scan(image, durations)
        ct = ct_intensities(scan.reference, "CT") if suffix == "ct" else None
        loaded = LoadedScan(converted.sidecar, scan, load_template(), ct, None)
    deface = config.defacing
    if deface.method == "blur" and len(scan.image.shape) > 3:
        raise SeriesNotConverted(outcome_of(series, "failed", "blur is not available for dynamic (4D) series"))
    return deface_loaded(loaded, deface, False, timer, brain_only=suffix == "pet")


def _replacement(defaced: DefacedScan) -> np.ndarray:
    """Return the defaced volume in real units (for a 4D series, the background: only zeroing is allowed)."""
    source, image = defaced.loaded.scan.image, defaced.result.image
    if len(image.shape) > 3:
        return np.full(image.shape[:3], defaced.loaded.background, dtype=np.float32)
    return real_values(stored_data(image), source)


def _write_instances(
    job: ExportJob, defaced: DefacedScan, config: DicomOutConfig, stage: Path, text: TextFinding | None
) -> tuple[list[tuple[Any, Path]], HeaderReport, int]:
    """Write every instance with defaced pixels (text boxes filled) and a de-identified header into ``stage``."""
    import pydicom

    removed = np.asarray(defaced.result.removed, dtype=bool)
    removed = removed if removed.ndim == 3 else removed[..., 0]
    replacement, affine = _replacement(defaced), defaced.loaded.scan.image.affine
    stage.mkdir(parents=True)
    report, pairs, replaced = HeaderReport(), [], 0
    for index, path in enumerate(job.series.files):
        dataset = pydicom.dcmread(path)
        source = pydicom.dcmread(path, stop_before_pixels=True)
        try:
            original, pixels, count = defaced_frames(dataset, removed, replacement, affine)
        except (RuntimeError, NotImplementedError, ValueError, AttributeError) as exc:
            syntax = getattr(dataset.file_meta, "TransferSyntaxUID", None)
            name = getattr(syntax, "name", "unknown transfer syntax")
            raise ScanError(f"pixels could not be read or placed ({name}: {type(exc).__name__})") from exc
        write_pixels(dataset, _text_filled(pixels, original, index, text))
        report.add(deidentify_header(dataset, config.profile, job.who, pixels_cleaned=text is not None))
        written = stage / f"{index + 1:05d}.dcm"
        dataset.save_as(written, enforce_file_format=True)
        pairs.append((source, written))
        replaced += count
    return pairs, report, replaced


def _text_filled(pixels: np.ndarray, original: np.ndarray, index: int, text: TextFinding | None) -> np.ndarray:
    """Fill this instance's text boxes with its lowest stored value (the background)."""
    if text is None:
        return pixels
    frames = pixels.reshape((-1, *pixels.shape[-2:]))
    for (instance, frame), boxes in text.boxes.items():
        if instance == index:
            frames[frame] = filled(frames[frame], boxes, original.min())
    return frames.reshape(pixels.shape)


def _write_qc(
    config: DicomOutConfig,
    folder: str,
    defaced: DefacedScan,
    check: ExportCheck | None,
    timer: StageTimer,
    decision: str,
    header: HeaderReport | None = None,
) -> None:
    """Write a series' figures and QC record (whatever became of it)."""
    base = config.output_dir / QC_FOLDER / folder.replace("/", "_")
    base.parent.mkdir(parents=True, exist_ok=True)
    figures, verdict = defaced.quality.figures, defaced.quality.verdict
    write_bytes_atomic(base.with_name(base.name + "_mosaic.png"), figures.mosaic)
    write_bytes_atomic(base.with_name(base.name + "_render.png"), figures.render)
    record = {
        "Series": folder,
        "Decision": decision,
        "Status": verdict.status,
        "Reasons": list(verdict.reasons),
        "Metrics": defaced.quality.metrics,
        "SelfCheck": None if check is None else check.as_record(),
        "HeaderActions": {} if header is None else dict(sorted(header.actions.items())),
        "RemovedNotCleanable": {} if header is None else dict(sorted(header.not_cleaned.items())),
        "Seconds": timer.seconds,
    }
    write_json_atomic(base.with_name(base.name + "_qc.json"), record)
    _write_masks(base, defaced)


def _write_masks(base: Path, defaced: DefacedScan) -> None:
    """Write the voxels replaced and the protected brain, in the grid of the series' NIfTI conversion."""
    source = defaced.loaded.scan.image
    removed = np.asarray(defaced.result.removed, dtype=bool)
    for name, mask in (
        ("defacemask", removed if removed.ndim == 3 else removed[..., 0]),
        ("protectmask", defaced.masks.protect),
    ):
        image, _ = scrub_nifti_header(mask_image_like(mask, source))
        with atomic_path(base.with_name(f"{base.name}_{name}.nii.gz")) as staged:
            nib.save(image, staged)


def _record_mappings(config: DicomOutConfig, series: Series, who: Replacements, header: HeaderReport) -> None:
    """Add this series' old -> new UIDs and patient ID to the mappings in the private folder."""
    if not header.uids:
        return
    folder = private_folder(config) / "dicom"
    folder.mkdir(parents=True, exist_ok=True)
    with output_lock(folder, "mappings"):
        _merge_csv(folder / MAPPINGS["uids"], header.uids)
        if series.patient.patient_id:
            _merge_csv(folder / MAPPINGS["patients"], {series.patient.patient_id: who.pseudonym})


def _merge_csv(path: Path, pairs: dict[str, str]) -> None:
    """Add ``old,new`` rows to a mapping CSV (existing rows kept, sorted)."""
    rows: dict[str, str] = {}
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as handle:
            rows = {line["old"]: line["new"] for line in csv.DictReader(handle)}
    if set(pairs.items()) <= set(rows.items()):
        return
    rows.update(pairs)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("old", "new"))
    writer.writerows(sorted(rows.items()))
    write_bytes_atomic(path, text.getvalue().encode())


def _write_reports(config: DicomOutConfig, rows: list[SeriesExport]) -> None:
    table = Table(REPORT_COLUMNS, tuple(row.cells() for row in rows))
    write_bytes_atomic(config.output_dir / EXPORT_REPORT, table.to_text().encode())
    write_dicom_report(config.output_dir, QC_FOLDER, table)
