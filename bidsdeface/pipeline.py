"""Run the stages in order: one scan at a time, many scans in parallel."""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from . import __version__
from .config import Config
from .deface import DefaceResult, deface_image, real_values, stored_data
from .derivatives import (
    FAILED_FOLDER,
    StagedFiles,
    brain_mask_name,
    defaced_name,
    deidentification,
    described_name,
    figure_name,
    mask_name,
    output_lock,
    prepare_failed_folder,
    remove_stale_temporaries,
    staged_files,
    write_dataset_files,
)
from .discover import ScanJob, find_scans, read_dataset_description, read_metadata
from .errors import (
    EXIT_DATA,
    EXIT_OK,
    BidsDefaceError,
    InputValidationError,
    NoInputError,
    OutputError,
    UsageError,
    library_messages_to_debug,
)
from .identity import (
    SubjectIdentity,
    needs_private_folder,
    prepare_private_folder,
    private_folder,
    resolve_identity,
)
from .images import CtIntensities, Scan, brain_threshold, ct_intensities, foreground_threshold, load_scan
from .metadata import write_dataset_scrub_record, write_participants, write_scrub_record, write_subject_tables
from .qc import ScanQc, check_scan, limits_record
from .register import Registration, register_template, register_through_anatomical, scan_masks
from .report import QcSummary, refresh_subject_report, write_group_files, write_subject_report
from .scrub import (
    ScrubReport,
    screen_text,
    scrub_dataset_description,
    scrub_modality,
    scrub_nifti_header,
    scrub_sidecar,
)
from .skullstrip import (
    BrainExtraction,
    brain_only_image,
    extract_brain,
    learned_method_available,
    with_brain_protected,
)
from .templates import Template, load_template
from .tools import run

log = logging.getLogger(__name__)

DATASET_LOCK = "dataset"
MAX_CAUSE_CHARS = 200  # a failure's cause as shown in the log: one short line
# ITK puts the C++ source line first and the object's address before the message itself
ITK_SOURCE_LINE = re.compile(r"^\S+\.(h|hxx|txx|cxx|cpp)(:\d+)+:?$")
ITK_ERROR_PREFIX = re.compile(r"^(ITK ERROR|ITK WARNING|Description):\s*(\w+\(0x[0-9a-fA-F]+\):\s*)?")


@dataclass(frozen=True)
class ScanOutcome:
    """What happened to one scan.

    Attributes
    ----------
    relpath : str
        The scan's path relative to the dataset root, with output (possibly
        pseudonymised) labels: safe to log and report.
    status : str
        ``done``, ``skipped`` (already finished), ``failed``, or ``withheld``
        (processed, but its QC verdict is FAIL: no image of it in the output).
    message : str
        One line: the error for failures.
    metrics : dict
        QC metrics (see :func:`bidsdeface.qc.check_scan`) and ``scrub``: what
        scrubbing removed or changed (names only).
    seconds : dict
        Wall seconds per stage.
    qc_status : str
        ``PASS``, ``WARN`` or ``FAIL`` for written scans; empty otherwise.
    qc_reasons : tuple of str
        Why the scan is not PASS.
    kept : str
        For a withheld scan with ``--keep-failed``: where its defaced image was
        written in the private folder (for the log only); empty otherwise.
    """

    relpath: str
    status: str
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    qc_status: str = ""
    qc_reasons: tuple[str, ...] = ()
    kept: str = ""


@dataclass(frozen=True)
class BrainPaths:
    """The skull-strip outputs of one scan: brain-only image, brain mask, their sidecars, the figure."""

    image: Path
    sidecar: Path
    mask: Path
    mask_sidecar: Path
    figure: Path

    def files(self) -> tuple[Path, ...]:
        """Every file, figure included."""
        return (self.image, self.sidecar, self.mask, self.mask_sidecar, self.figure)


@dataclass(frozen=True)
class OutputPaths:
    """The final files of one scan; the sidecar is written last and marks completion.

    ``brain`` names the skull-strip outputs; ``skull_stripped`` says whether this run writes them.
    """

    image: Path
    sidecar: Path
    mask: Path
    mask_sidecar: Path
    qc: Path
    mosaic: Path
    render: Path
    brain: BrainPaths | None = None
    skull_stripped: bool = False

    @classmethod
    def for_job(cls, config: Config, job: ScanJob, identity: SubjectIdentity) -> OutputPaths:
        """Return the output paths of ``job`` (with the subject's output labels)."""
        relpath = Path(identity.output_relpath(job.relpath))
        folder = config.output_dir / relpath.parent
        # BIDS has defacemasks in anat/ only; mod-<suffix> names the scan they belong to
        mask_folder = folder.parent / "anat"
        name = relpath.name
        brain = BrainPaths(
            image=folder / described_name(name, "brain", ".nii.gz"),
            sidecar=folder / described_name(name, "brain", ".json"),
            mask=folder / brain_mask_name(name, ".nii.gz"),
            mask_sidecar=folder / brain_mask_name(name, ".json"),
            figure=figure_name(config.output_dir, relpath, "brain"),
        )
        return cls(
            image=folder / defaced_name(name, ".nii.gz"),
            sidecar=folder / defaced_name(name, ".json"),
            mask=mask_folder / mask_name(name, ".nii.gz"),
            mask_sidecar=mask_folder / mask_name(name, ".json"),
            qc=folder / defaced_name(name, "_qc.json"),
            mosaic=figure_name(config.output_dir, relpath, "mosaic"),
            render=figure_name(config.output_dir, relpath, "render"),
            brain=brain,
            skull_stripped=skull_strips(config, job),
        )

    def complete(self) -> bool:
        """Return whether every output exists (a finished scan).

        A scan that failed QC is never complete (its sidecar is not in the output),
        so every run processes it again.
        """
        brain = self.brain.files() if self.brain is not None and self.skull_stripped else ()
        return all(p.is_file() for p in (self.image, self.sidecar, self.mask, self.mask_sidecar, self.qc, *brain))

    def image_files(self) -> tuple[Path, ...]:
        """Return the images and their sidecars, completion marker first (not the QC record or figures)."""
        brain = self.brain
        extra = () if brain is None else (brain.sidecar, brain.image, brain.mask_sidecar, brain.mask)
        return (self.sidecar, self.image, self.mask_sidecar, self.mask, *extra)

    def relocated(self, output_dir: Path, root: Path) -> OutputPaths:
        """Return these paths with the images and sidecars moved from ``output_dir`` to the same place below ``root``.

        The QC record and figures stay where they are.
        """

        def moved(path: Path) -> Path:
            return root / path.relative_to(output_dir)

        brain = self.brain
        if brain is not None:
            brain = replace(
                brain,
                image=moved(brain.image),
                sidecar=moved(brain.sidecar),
                mask=moved(brain.mask),
                mask_sidecar=moved(brain.mask_sidecar),
            )
        return replace(
            self,
            image=moved(self.image),
            sidecar=moved(self.sidecar),
            mask=moved(self.mask),
            mask_sidecar=moved(self.mask_sidecar),
            brain=brain,
        )

    def stale_brain_files(self) -> list[Path]:
        """Skull-strip outputs of an earlier run that this run does not write (removed when it redoes the scan)."""
        if self.brain is None or self.skull_stripped:
            return []
        return [path for path in self.brain.files() if path.is_file()]


def skull_strips(config: Config, job: ScanJob) -> bool:
    """Return whether this run skull-strips ``job`` (asked for, and not PET)."""
    return config.skull_strip and job.suffix != "pet"


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 2)


def _mask_image(mask: np.ndarray, like: nib.Nifti1Image) -> nib.Nifti1Image:
    """Return ``mask`` as a uint8 image with ``like``'s affine and qform/sform codes."""
    image = nib.Nifti1Image(mask.astype(np.uint8), like.affine)
    image.set_qform(like.header.get_qform(), code=int(like.header["qform_code"]))
    image.set_sform(like.header.get_sform(), code=int(like.header["sform_code"]))
    image.header.set_xyzt_units(*like.header.get_xyzt_units())
    return image


def failure_cause(exc: BaseException) -> str:
    r"""Say in one short line why a library call failed (ITK's many lines, numpy, nibabel).

    >>> failure_cause(RuntimeError("/itk/itkImageBase.hxx:77:\nITK ERROR: Image(0x5f): Zero-valued spacing."))
    'RuntimeError: Zero-valued spacing.'
    >>> failure_cause(MemoryError("std::bad_alloc"))
    'out of memory (std::bad_alloc)'
    """
    lines = [ITK_ERROR_PREFIX.sub("", line.strip()) for line in str(exc).splitlines()]
    lines = [line for line in lines if line and not ITK_SOURCE_LINE.match(line)]
    detail = lines[0] if lines else ""
    if len(detail) > MAX_CAUSE_CHARS:
        detail = detail[: MAX_CAUSE_CHARS - 3] + "..."
    if isinstance(exc, MemoryError) or "allocate memory" in detail:
        return f"out of memory ({detail})" if detail else "out of memory"
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _hide_input_names(message: str, job: ScanJob, identity: SubjectIdentity, shown: str) -> str:
    """Say ``message`` with names that are safe to show and that exist.

    The scan itself is named as in the output (``shown``). Without pseudonyms the
    input's paths carry the output's labels and are shown as they are. With
    pseudonyms every input path becomes its output-relative name, so no message
    joins the input folder with a pseudonym into a path that does not exist, and
    labels left in the text are replaced.
    """
    message = message.replace(str(job.path), shown).replace(job.relpath, shown)
    if identity.output_label == identity.label and all(old == new for old, new in identity.sessions.items()):
        return message
    root = str(job.path)[: -len(job.relpath)].rstrip("/")
    if root:
        inside = re.compile(re.escape(root) + r"/([^\s:;,'\"()]+)")
        message = inside.sub(lambda match: _output_name(identity, match.group(1)), message)
        message = message.replace(root, "<input dataset>")
    renames = {f"sub-{identity.label}": f"sub-{identity.output_label}"}
    renames.update({f"ses-{old}": f"ses-{new}" for old, new in identity.sessions.items() if old})
    for old in sorted(renames, key=len, reverse=True):
        message = message.replace(old, renames[old])
    return message


def _output_name(identity: SubjectIdentity, relpath: str) -> str:
    """Return an input-relative path with the subject's output labels (or a neutral word for a non-BIDS name)."""
    try:
        return identity.output_relpath(relpath)
    except ValueError:
        return "<input file>"


def process_scan(job: ScanJob, config: Config, identity: SubjectIdentity) -> ScanOutcome:
    """Deface and scrub one scan and write its derivatives; never raises for bad data.

    Parameters
    ----------
    job : ScanJob
        The scan.
    config : Config
        Run settings.
    identity : SubjectIdentity
        The subject's output labels and date offset.

    Returns
    -------
    ScanOutcome
    """
    shown = identity.output_relpath(job.relpath)
    outputs = OutputPaths.for_job(config, job, identity)
    if outputs.complete() and not config.overwrite:
        return ScanOutcome(shown, "skipped", "already defaced (use --overwrite to redo)")
    timer = _Timer()
    try:
        with timer.stage("load"):
            metadata = read_metadata(job.path)
            scan = load_scan(job.path, metadata.get("FrameDuration") if job.suffix == "pet" else None)
            template = load_template()
            ct = ct_intensities(scan.reference, job.path) if job.suffix == "ct" else None
            anatomical = load_scan(config.bids_dir / job.anatomical) if job.anatomical else None
        with tempfile.TemporaryDirectory(prefix="bidsdeface-", dir=config.work_dir) as scratch:
            with timer.stage("register"):
                registration = _register(scan, template, config, Path(scratch), ct, anatomical, job.suffix == "pet")
            with timer.stage("masks"):
                threshold = foreground_threshold(scan.reference) if ct is None else ct.head_threshold
                masks = scan_masks(scan, template, registration, config.brain_margin_mm, threshold)
            brain = None
            if outputs.skull_stripped:
                with timer.stage("skullstrip"):
                    brain = extract_brain(scan, template, registration, config, Path(scratch), ct)
                    masks = with_brain_protected(masks, brain.mask, scan.zooms, config.brain_margin_mm)
            with timer.stage("deface"):
                result = deface_image(scan.image, masks, config, 0.0 if ct is None else ct.air)
            with timer.stage("qc"):
                quality = check_scan(
                    real_values(stored_data(scan.image), scan.image),
                    real_values(stored_data(result.image), scan.image),
                    masks,
                    result.removed,
                    scan.image.affine,
                    template,
                    registration,
                    threshold,
                    brain=None if brain is None else brain.mask,
                    remove_ears=config.remove_ears,
                )
        method_record = {
            "registration_path": _registration_path(registration, job, identity),
            "registration_start": registration.start,
            "reference_volume": scan.summary,
            **({"intensities": ct.describe(), "background_value": ct.air} if ct is not None else {}),
            **_skull_strip_record(config, brain),
        }
        withheld = quality.verdict.status == "FAIL"
        destination = _image_destination(config, outputs, withheld)
        with staged_files() as staged:
            with timer.stage("write"):
                modality = scrub_modality(job.suffix, job.datatype)
                clean_metadata, sidecar_report = scrub_sidecar(
                    metadata, modality, config.scrub_policy, identity.date_offset
                )
                header_report = scrub_nifti_header(result.image)
                sources = [f"bids:raw:{shown}"]
                methods, codes = deidentification(config, identity.date_offset is not None)
                provenance = {"DeidentificationMethod": methods, "DeidentificationMethodCodeSequence": codes}
                staged.write_bytes(outputs.mosaic, quality.figures.mosaic)
                staged.write_bytes(outputs.render, quality.figures.render)
                if brain is not None and outputs.brain is not None and quality.figures.brain is not None:
                    staged.write_bytes(outputs.brain.figure, quality.figures.brain)
                if destination is not None:
                    background = 0.0 if ct is None else ct.air
                    image_metadata = {**clean_metadata, **provenance}
                    _stage_images(staged, destination, result, scan.image, brain, background, image_metadata, sources)
            # The QC record carries every stage's time; the sidecar, renamed into place last, marks the scan finished.
            record = qc_record(config.output_dir, outputs, quality, method_record, timer.seconds, withheld)
            staged.write_json(outputs.qc, record)
            if destination is not None:
                staged.write_json(
                    destination[0].sidecar,
                    {
                        **clean_metadata,
                        "Description": f"Defaced ({config.method}{' with ears' if config.remove_ears else ''})",
                        "SkullStripped": False,
                        "Sources": sources,
                        **provenance,
                    },
                )
            for stale in _superseded(config, outputs, withheld):
                staged.remove(stale)
    except BidsDefaceError as exc:
        message = _hide_input_names(" ".join(str(exc).split()), job, identity, shown)
        return ScanOutcome(shown, "failed", message, seconds=timer.seconds)
    except Exception as exc:  # one crashing scan must not stop a 1,000-subject run
        log.debug("%s: traceback:\n%s", shown, _hide_input_names(traceback.format_exc(), job, identity, shown))
        stage = next(reversed(timer.seconds), "load")  # the stage that raised has just been timed
        message = _hide_input_names(f"{job.path}: {stage} failed: {failure_cause(exc)}", job, identity, shown)
        return ScanOutcome(shown, "failed", message, seconds=timer.seconds)
    metrics: dict[str, Any] = {
        **quality.metrics,
        **method_record,
        "scrub": {
            outputs.sidecar.relative_to(config.output_dir).as_posix(): {
                "Sidecar": sidecar_report.as_record(),
                "NiftiHeader": header_report.as_record(),
            }
        },
    }
    kept = "" if destination is None or not withheld else str(destination[0].image)
    status = "withheld" if withheld else "done"
    return ScanOutcome(shown, status, "", metrics, timer.seconds, quality.verdict.status, quality.verdict.reasons, kept)


def _image_destination(config: Config, outputs: OutputPaths, withheld: bool) -> tuple[OutputPaths, Path] | None:
    """Return where the scan's images go and the root of that tree, or None when they are not written.

    A scan that passed (or only warned) goes into the output. A scan that failed QC
    goes into ``failed/`` in the private folder with ``--keep-failed``, else nowhere.
    """
    if not withheld:
        return outputs, config.output_dir
    if not config.keep_failed:
        return None
    root = prepare_failed_folder(private_folder(config))
    return outputs.relocated(config.output_dir, root), root


def _superseded(config: Config, outputs: OutputPaths, withheld: bool) -> list[Path]:
    """Return the files of earlier runs of this scan that this run replaces by nothing.

    Skull-strip outputs this run does not write; for a scan that failed QC every
    image of it in the output (an earlier run may have written one); for a scan
    written now, the copy an earlier ``--keep-failed`` run kept in the private folder.
    Completion markers (sidecars) come first.
    """
    if withheld:
        stale = list(outputs.image_files())
    else:
        stale = list(outputs.relocated(config.output_dir, private_folder(config) / FAILED_FOLDER).image_files())
    stale += outputs.stale_brain_files()
    return [path for path in dict.fromkeys(stale) if path.is_file()]


def _stage_images(
    staged: StagedFiles,
    destination: tuple[OutputPaths, Path],
    result: DefaceResult,
    source: nib.Nifti1Image,
    brain: BrainExtraction | None,
    background: float,
    image_metadata: dict[str, Any],
    sources: list[str],
) -> None:
    """Stage the defacing mask, the defaced image and the brain outputs in ``destination`` (paths, dataset root).

    The image sidecar, which marks the scan finished, is staged by the caller after the QC record.
    """
    images, root = destination
    mask = _mask_image(result.removed, source)
    scrub_nifti_header(mask)
    staged.write_nifti(images.mask, mask)
    staged.write_json(
        images.mask_sidecar,
        {
            "Description": "Voxels replaced by defacing (1) in the source scan's grid",
            "SkullStripped": False,
            "Sources": sources,
            "Type": "Deface",
        },
    )
    staged.write_nifti(images.image, result.image)
    if brain is not None and images.brain is not None:
        _stage_brain_outputs(
            staged, images.brain, images.image, brain, result.image, source, background, image_metadata, sources, root
        )


def _skull_strip_record(config: Config, brain: BrainExtraction | None) -> dict[str, str]:
    """Return the QC record's account of skull stripping (nothing when it was not asked for)."""
    if brain is not None:
        return {"skull_strip_method": brain.method, "skull_strip": brain.description}
    return {"skull_strip": "not done: PET is not skull-stripped"} if config.skull_strip else {}


def _stage_brain_outputs(
    staged: StagedFiles,
    paths: BrainPaths,
    defaced_path: Path,
    brain: BrainExtraction,
    defaced: nib.Nifti1Image,
    source: nib.Nifti1Image,
    background: float,
    image_metadata: dict[str, Any],
    sources: list[str],
    root: Path,
) -> None:
    """Stage the brain mask, the brain-only image (cut from the defaced one) and their sidecars.

    ``root`` is the dataset the files go into (the output, or the private ``failed/``
    folder); ``bids::`` references are relative to it. The figure is staged by the caller.
    """

    def in_dataset(path: Path) -> str:
        return f"bids::{path.relative_to(root).as_posix()}"

    mask = _mask_image(brain.mask, source)
    scrub_nifti_header(mask)
    brain_image = brain_only_image(source, stored_data(defaced), brain.mask, background)
    scrub_nifti_header(brain_image)
    staged.write_nifti(paths.mask, mask)
    staged.write_json(
        paths.mask_sidecar,
        {
            "Description": "Brain mask (1) on the source scan's grid",
            "Type": "Brain",
            "SkullStripped": False,
            "Sources": sources,
            "SpatialReference": in_dataset(defaced_path),
            "SkullStrippingMethod": brain.description,
        },
    )
    staged.write_nifti(paths.image, brain_image)
    staged.write_json(
        paths.sidecar,
        {
            **image_metadata,
            "Description": "The defaced image with every voxel outside the brain mask set to the background",
            "SkullStripped": True,
            "SkullStrippingMethod": brain.description,
            "Sources": [in_dataset(defaced_path), in_dataset(paths.mask)],
        },
    )


def _register(
    scan: Scan,
    template: Template,
    config: Config,
    work_dir: Path,
    ct: CtIntensities | None,
    anatomical: Scan | None,
    brain_only: bool,
) -> Registration:
    """Register the template to ``scan``: through a same-session T1w when given, else directly."""
    if anatomical is not None:
        through = register_through_anatomical(
            scan, anatomical, register_template(anatomical, template, config, work_dir), template, work_dir
        )
        if through.score >= config.min_registration_score:
            return through
        log.debug("rigid fit to the same-session T1w scored %.2f; registering to the template instead", through.score)
    if brain_only:
        return register_template(scan, template, config, work_dir, brain_threshold(scan.reference), brain_only=True)
    return register_template(scan, template, config, work_dir, None if ct is None else ct.head_threshold)


def _registration_path(registration: Registration, job: ScanJob, identity: SubjectIdentity) -> str:
    """Say, with output names only, how the scan was placed on the template."""
    if registration.path == "anatomical":
        return f"rigid to {Path(identity.output_relpath(job.anatomical)).name}, then its template registration"
    if job.anatomical:
        return f"{registration.path} to template (the rigid fit to the same-session T1w was poor)"
    return f"{registration.path} to template"


def qc_record(
    output_dir: Path,
    outputs: OutputPaths,
    quality: ScanQc,
    method: dict[str, Any],
    seconds: dict[str, float],
    withheld: bool = False,
) -> dict[str, Any]:
    """Return the content of a scan's ``_qc.json`` (paths relative to the output folder).

    ``Scan`` names the defaced image's place in the output; ``ImageWithheld`` is true
    when the scan failed QC and so no image of it was written there (the reports
    still list it, for review).
    """

    def relative(path: Path) -> str:
        return path.relative_to(output_dir).as_posix()

    figures = {"Render": relative(outputs.render), "Mosaic": relative(outputs.mosaic)}
    if outputs.brain is not None and quality.figures.brain is not None:
        figures["Brain"] = relative(outputs.brain.figure)
    return {
        "Scan": relative(outputs.image),
        "Status": quality.verdict.status,
        "ImageWithheld": withheld,
        "Reasons": list(quality.verdict.reasons),
        "Notes": list(quality.verdict.notes),
        "Metrics": quality.metrics,
        "Method": method,
        "Seconds": seconds,
        "Figures": figures,
        "Limits": limits_record(),
        "GeneratedBy": f"bidsdeface {__version__}",
    }


def _within(path: Path, folder: Path) -> bool:
    """Return whether ``path`` is ``folder`` or inside it (both resolved)."""
    return path == folder or folder in path.parents


def check_folders(config: Config) -> None:
    """Refuse folders that would write into the input, or put private or unfinished files in the output.

    Nothing is created or written: the paths are only compared.

    Raises
    ------
    UsageError
        OUTPUT_DIR is BIDS_DIR or inside it; the scratch folder (``-w``) is in or at
        BIDS_DIR or OUTPUT_DIR (it holds undefaced images); the private folder is in either.
    """
    bids_dir, output_dir = config.bids_dir.resolve(), config.output_dir.resolve()
    if _within(output_dir, bids_dir):
        raise UsageError(f"{config.output_dir}: the output folder must be outside the input dataset {bids_dir}")
    shared = ((bids_dir, "input dataset"), (output_dir, "output folder"))
    if config.work_dir is not None:
        for folder, name in shared:
            if _within(config.work_dir.resolve(), folder):
                raise UsageError(
                    f"{config.work_dir}: the scratch folder (-w) must be outside the {name}; choose another --work-dir"
                )
    if needs_private_folder(config) or config.keep_failed:
        private = private_folder(config).resolve()
        for folder, name in shared:
            if _within(private, folder):
                raise UsageError(
                    f"{private}: the private folder (date offsets, pseudonyms, --keep-failed images) must be "
                    f"outside the {name}; choose another --private-dir"
                )


def check_paths(config: Config) -> None:
    """Refuse folders that would touch the input (:func:`check_folders`), and unwritable output folders.

    Raises
    ------
    UsageError
        See :func:`check_folders`.
    OutputError
        OUTPUT_DIR or the scratch folder cannot be created or written.
    """
    check_folders(config)
    writable = [(config.output_dir, "output folder")]
    writable += [(config.work_dir, "scratch folder (-w)")] if config.work_dir is not None else []
    for folder, name in writable:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".bidsdeface-write-test-"):
                pass
        except OSError as exc:
            raise OutputError(f"{folder}: cannot write to the {name} ({exc.strerror})") from exc


def validate_input(config: Config) -> None:
    """Run the official BIDS validator on the input unless asked not to.

    Raises
    ------
    InputValidationError
        The validator reports errors.
    """
    if config.skip_bids_validation:
        log.info("input validation skipped (--skip-bids-validation)")
        return
    started = time.perf_counter()
    result = run(["bids-validator-deno", str(config.bids_dir), "--no-color"], ok_codes=(0, 16), timeout=600)
    if result.returncode != 0:
        summary = "; ".join([line.strip() for line in result.stdout.splitlines() if "[ERROR]" in line][:3])
        raise InputValidationError(
            f"{config.bids_dir}: the BIDS validator reports errors ({summary or 'run bids-validator-deno'}); "
            "fix them or pass --skip-bids-validation"
        )
    log.info("input dataset is valid BIDS (%.1f s)", time.perf_counter() - started)


def _set_threads(threads: int) -> None:
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)


def _start_worker(threads: int) -> None:
    """Set up a pool worker as the command line sets up itself: bounded threads, no stray library output."""
    _set_threads(threads)
    library_messages_to_debug()


def _map_scans(
    jobs: list[ScanJob], config: Config, identities: dict[str, SubjectIdentity]
) -> Iterator[tuple[ScanJob, ScanOutcome]]:
    if config.nprocs == 1 or len(jobs) == 1:
        _set_threads(config.omp_nthreads)
        for job in jobs:
            yield job, process_scan(job, config, identities[job.subject])
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=config.nprocs, mp_context=context, initializer=_start_worker, initargs=(config.omp_nthreads,)
    ) as pool:
        futures = [(job, pool.submit(process_scan, job, config, identities[job.subject])) for job in jobs]
        try:
            for job, future in futures:
                yield job, future.result()
        except BaseException:
            _stop_workers(pool)
            raise


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """On SIGTERM or Ctrl-C: drop queued scans and stop running ones now.

    Workers die at once (the default SIGTERM action); the hidden temporaries of a
    scan they were writing are deleted by the next run on that subject.
    """
    workers = list((getattr(pool, "_processes", None) or {}).values())  # no public API before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        worker.terminate()


def run_participant(config: Config, on_outcome: Callable[[ScanOutcome], None] | None = None) -> int:
    """Deface every selected scan; return the process exit code.

    Parameters
    ----------
    config : Config
        Run settings.
    on_outcome : callable, optional
        Called with each scan's outcome as it finishes.

    Returns
    -------
    int
        0 when every scan is done or skipped, 65 when any scan failed or failed QC
        (a scan that failed QC counts as failed: none of its images is in the output).
    """
    if config.skull_strip and config.skull_strip_method == "deepbet" and not learned_method_available():
        raise UsageError("--skull-strip-method deepbet needs the optional extra: pip install 'bidsdeface[deepbet]'")
    source_description = read_dataset_description(config.bids_dir)
    check_paths(config)
    validate_input(config)
    jobs = find_scans(config)
    subjects = sorted({job.subject for job in jobs})
    log.info("%d scan(s) of %d subject(s) to process", len(jobs), len(subjects))
    carried, description_report = scrub_dataset_description(source_description, config.scrub_policy)
    _log_scrub("dataset_description.json", description_report, "field")
    with output_lock(config.output_dir, DATASET_LOCK):
        write_dataset_files(config.output_dir, carried, config.container_image)
        remove_stale_temporaries(config.output_dir, recursive=False)
    identities = _resolve_identities(config, jobs)
    failed = withheld = 0
    with ExitStack() as subject_locks:
        for identity in sorted(identities.values(), key=lambda identity: identity.output_label):
            subject_locks.enter_context(output_lock(config.output_dir, f"sub-{identity.output_label}"))
            stale = remove_stale_temporaries(config.output_dir / f"sub-{identity.output_label}")
            if stale:
                log.info("sub-%s: removed %d partial file(s) left by an interrupted run", identity.output_label, stale)
        scrub_records: dict[str, dict[str, Any]] = {subject: {} for subject in subjects}
        for index, (job, outcome) in enumerate(_map_scans(jobs, config, identities), start=1):
            failed += outcome.status in ("failed", "withheld")
            withheld += outcome.status == "withheld"
            progress = f"[{index}/{len(jobs)}] {outcome.relpath}"
            if outcome.status == "failed":
                log.error("%s: FAILED: %s", progress, outcome.message)
            elif outcome.status == "skipped":
                log.info("%s: skipped, %s", progress, outcome.message)
            else:
                _log_done(progress, outcome)
            if outcome.status == "done":  # a withheld scan's sidecar is not in the output
                scrub_records[job.subject].update(outcome.metrics["scrub"])
            if on_outcome is not None:
                on_outcome(outcome)
        for subject, identity in identities.items():
            if (config.output_dir / f"sub-{identity.output_label}").is_dir():
                tables = write_subject_tables(config, identity)
                records = {**scrub_records[subject], **{name: {"Table": r.as_record()} for name, r in tables.items()}}
                write_scrub_record(config, identity, records)
                write_subject_report(config.output_dir, identity.output_label)
    _write_dataset_summaries(config)
    why = f" ({withheld} of them failed QC: image not written to the output)" if withheld else ""
    log.info("finished: %d done or skipped, %d failed%s", len(jobs) - failed, failed, why)
    return EXIT_DATA if failed else EXIT_OK


def _write_dataset_summaries(config: Config) -> None:
    """Rebuild ``participants.tsv``, ``qc.tsv`` and the group report from what is on disk.

    Under the dataset lock, so that of many runs finishing together the last one to
    write has seen every other's outputs. Subject reports that no run is writing now
    are brought up to date first (a killed run leaves finished subjects without one).
    """
    description = scrub_dataset_description(read_dataset_description(config.bids_dir), config.scrub_policy)[1]
    with output_lock(config.output_dir, DATASET_LOCK):
        participants = write_participants(config)
        write_dataset_scrub_record(config, {"dataset_description.json": description, "participants.tsv": participants})
        _refresh_subject_reports(config.output_dir)
        summary = write_group_files(config.output_dir)
    if participants is not None:
        _log_scrub("participants.tsv", participants, "column")
    _log_qc_summary(summary)


def _log_scrub(name: str, report: ScrubReport, what: str) -> None:
    """Log what scrubbing removed from one file: standard names, a count of the others, dropped values."""
    if report.removed_count():
        unknown = f"{report.unknown_removed} with non-standard names" if report.unknown_removed else ""
        named = ", ".join(report.removed)
        names = "; ".join(filter(None, (named, unknown)))
        log.info("%s: %d %s(s) not shared: %s", name, report.removed_count(), what, names)
    for key, why in report.dropped.items():
        log.info("%s: value of %s not shared (%s)", name, key, why)


def _refresh_subject_reports(output_dir: Path) -> None:
    """Rewrite missing or outdated subject reports, skipping subjects another run holds (it writes theirs)."""
    for folder in sorted(output_dir.glob("sub-*")):
        if folder.is_dir():
            with output_lock(output_dir, folder.name, wait=False) as held:
                if held and refresh_subject_report(output_dir, folder.name.removeprefix("sub-")):
                    log.info("%s.html: rebuilt (it was missing or out of date)", folder.name)


def _resolve_identities(config: Config, jobs: list[ScanJob]) -> dict[str, SubjectIdentity]:
    """Return each subject's output labels and date offset (creating private records as needed)."""
    if needs_private_folder(config):
        log.info("private mapping (date offsets, pseudonyms; never share it): %s", prepare_private_folder(config))
    identities = {}
    for subject in sorted({job.subject for job in jobs}):
        sessions = sorted({job.session for job in jobs if job.subject == subject})
        identity = resolve_identity(config, subject, sessions)
        if not config.pseudonymize:
            labels = [subject, *(session for session in sessions if session)]
            if any(screen_text(label) for label in labels):
                log.warning(
                    "sub-%s: subject or session labels look like names, dates or record numbers; "
                    "they appear in every output name unless you pass --pseudonymize",
                    subject,
                )
        identities[subject] = identity
    return identities


def _log_done(progress: str, outcome: ScanOutcome) -> None:
    m, s = outcome.metrics, outcome.seconds
    log.info(
        "%s: done in %.1f s (%s); registration score %.3f; face voxels removed %d (%.0f%%); "
        "brain voxels touched %d; QC %s",
        progress,
        sum(s.values()),
        ", ".join(f"{k} {v:.1f}" for k, v in s.items()),
        m["registration_score"],
        m["face_voxels_removed"],
        100 * m["face_removed_fraction"],
        m["brain_voxels_touched"],
        outcome.qc_status,
    )
    log.info(
        "%s: registered %s, from the %s%s%s",
        progress,
        m["registration_path"],
        m["reference_volume"] if m["reference_volume"] != "3D" else "3D image",
        f"; CT intensities: {m['intensities']}" if "intensities" in m else "",
        f"; brain mask ({m['skull_strip_method']}) {m['brain_volume_ml']:.0f} ml" if "brain_volume_ml" in m else "",
    )
    if outcome.qc_status != "PASS":
        level = logging.ERROR if outcome.qc_status == "FAIL" else logging.WARNING
        log.log(level, "%s: QC %s: %s", progress, outcome.qc_status, "; ".join(outcome.qc_reasons))
    if outcome.status == "withheld":
        _log_withheld(progress, outcome)
        return
    for name, record in m["scrub"].items():
        sidecar = record["Sidecar"]
        log.info(
            "%s: metadata: %d key(s) removed, %d value(s) failing their checks dropped, %d date(s) shifted; "
            "header text fields cleared: %s",
            name,
            len(sidecar.get("Removed", [])) + sidecar.get("UnknownRemoved", 0),
            len(sidecar.get("ValuesDropped", {})),
            len(sidecar.get("DatesShifted", [])),
            ", ".join(record["NiftiHeader"].get("Removed", [])) or "none",
        )


def _log_withheld(progress: str, outcome: ScanOutcome) -> None:
    """Say in one line that a scan failed QC, that its image is not in the output, and where it went."""
    where = f"kept in the private folder: {outcome.kept}" if outcome.kept else "--keep-failed keeps it privately"
    log.error(
        "%s: failed QC: image not written to the output (QC record and figures are, for review); %s",
        progress,
        where,
    )


def run_group(config: Config) -> int:
    """Summarise what participant runs produced (processes nothing again).

    Returns
    -------
    int
        0, or 66 when there is nothing to summarise.
    """
    defaced = sorted(config.output_dir.glob("sub-*/**/*_desc-defaced_*.nii.gz"))
    if not defaced:
        raise NoInputError(f"{config.output_dir}: no defaced scans found; run the participant level first")
    log.info("group level: %d defaced scan(s) in %s", len(defaced), config.output_dir)
    for subject in sorted({path.relative_to(config.output_dir).parts[0] for path in defaced}):
        with output_lock(config.output_dir, subject):
            write_subject_report(config.output_dir, subject.removeprefix("sub-"))
    _write_dataset_summaries(config)
    return EXIT_OK


def _log_qc_summary(summary: QcSummary) -> None:
    log.info(
        "QC of all scans in the output: %d FAIL, %d WARN, %d PASS; report %s (flagged scans first), table %s",
        summary.count("FAIL"),
        summary.count("WARN"),
        summary.count("PASS"),
        summary.report,
        summary.table,
    )
