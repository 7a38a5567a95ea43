"""Run the stages in order: one scan at a time, many scans in parallel."""

from __future__ import annotations

import logging
import multiprocessing
import re
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, itk_single_threaded
from .deface import DefaceResult, deface_image
from .derivatives import (
    deidentification,
    write_dataset_files,
)
from .discover import ScanJob, find_scans, read_dataset_description, read_metadata, subject_labels
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
from .files import output_lock, read_json_object, remove_stale_temporaries, staged_files
from .identity import (
    SubjectIdentity,
    needs_private_folder,
    prepare_private_folder,
    private_folder,
    resolve_identity,
)
from .images import CtIntensities, Scan, brain_threshold, ct_intensities, foreground_threshold, load_scan
from .masks import ScanMasks, scan_masks, with_brain_protected
from .metadata import (
    participants_plan,
    write_dataset_scrub_record,
    write_participants,
    write_privacy_report,
    write_scrub_record,
    write_subject_tables,
)
from .outputs import (
    STAGES,
    BrainContent,
    OutputPaths,
    ScanContent,
    image_destination,
    stage_completion,
    stage_figures,
    stage_images,
)
from .pixeltext import volume_text_slices
from .privacy import AGE_LEVELS, PRIVACY_REPORT, PrivacyPlan
from .qc import ScanQc, check_scan, with_pixel_text
from .ratings import RATINGS_FILE, fold_ratings, read_ratings
from .register import Registration, register_template, register_through_anatomical
from .release import publish_dataset, publish_subject
from .report import QcSummary, read_qc_records, refresh_subject_report, write_group_files, write_subject_report
from .scrub import (
    ScrubReport,
    screen_text,
    scrub_dataset_description,
    scrub_modality,
    scrub_nifti_header,
    scrub_sidecar,
)
from .skullstrip import BrainExtraction, brain_only_image, extract_brain, learned_method_available
from .templates import Template, load_template
from .tools import run
from .volumes import mask_image_like, mean_volume, real_values, stored_data

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
        QC metrics (see :func:`bidsdeface.qc.check_scan`).
    method : dict
        How the scan was processed (the QC record's ``Method``).
    scrub : dict
        What scrubbing removed or changed, by output sidecar (names only).
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
    method: dict[str, Any] = field(default_factory=dict)
    scrub: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    qc_status: str = ""
    qc_reasons: tuple[str, ...] = ()
    kept: str = ""


class StageTimer:
    """Wall seconds of each stage (:data:`bidsdeface.outputs.STAGES`) of one scan, in the order they ran."""

    def __init__(self, stages: tuple[str, ...] = STAGES) -> None:
        self.stages = stages
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as stage ``name``."""
        if name not in self.stages:
            raise ValueError(f"{name}: not a stage")
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 2)


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


@dataclass(frozen=True)
class LoadedScan:
    """A scan and what processing it needs, read from the input.

    Attributes
    ----------
    metadata : dict
        The scan's sidecar metadata (BIDS inheritance applied), not yet scrubbed.
    scan : Scan
        The scan.
    template : Template
        The bundled template.
    ct : CtIntensities or None
        How a CT stores its intensities; None for other scans.
    anatomical : Scan or None
        The same-session T1w a PET is registered through.
    """

    metadata: dict[str, Any]
    scan: Scan
    template: Template
    ct: CtIntensities | None
    anatomical: Scan | None

    @property
    def background(self) -> float:
        """The value of air in real units: what removed voxels become."""
        return 0.0 if self.ct is None else self.ct.air


@dataclass(frozen=True)
class DefacedScan:
    """What the computing stages made of one scan (nothing written yet)."""

    loaded: LoadedScan
    registration: Registration
    brain: BrainExtraction | None
    result: DefaceResult
    quality: ScanQc
    masks: ScanMasks


def process_scan(job: ScanJob, config: Config, identity: SubjectIdentity) -> ScanOutcome:
    """Deface and scrub one scan and write its derivatives; never raises for bad data.

    The stages run in order (:data:`bidsdeface.outputs.STAGES`): load, register, masks,
    [skull-strip], deface, QC (:func:`deface_scan`); then the files are built
    (:func:`scan_content`), staged and committed together.

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
    timer = StageTimer()
    try:
        defaced = deface_scan(job, config, outputs.skull_stripped, timer)
        with staged_files() as staged:
            with timer.stage("write"):
                content, scrubbed = scan_content(job, config, identity, defaced)
                destination = image_destination(config, outputs, content.withheld)
                stage_figures(staged, outputs, content.quality)
                if destination is not None:
                    stage_images(staged, destination, content)
            stage_completion(staged, config, outputs, destination, content, timer.seconds)
    except BidsDefaceError as exc:
        message = _hide_input_names(" ".join(str(exc).split()), job, identity, shown)
        return ScanOutcome(shown, "failed", message, seconds=timer.seconds)
    except Exception as exc:  # one crashing scan must not stop a 1,000-subject run
        log.debug("%s: traceback:\n%s", shown, _hide_input_names(traceback.format_exc(), job, identity, shown))
        stage = next(reversed(timer.seconds), "load")  # the stage that raised has just been timed
        message = _hide_input_names(f"{job.path}: {stage} failed: {failure_cause(exc)}", job, identity, shown)
        return ScanOutcome(shown, "failed", message, seconds=timer.seconds)
    scrub = {outputs.sidecar.relative_to(config.output_dir).as_posix(): scrubbed}
    verdict = content.quality.verdict
    kept = "" if destination is None or not content.withheld else str(destination[0].image)
    status = "withheld" if content.withheld else "done"
    return ScanOutcome(
        shown, status, "", content.quality.metrics, content.method, scrub, timer.seconds, verdict.status,
        verdict.reasons, kept,
    )  # fmt: skip


def load_inputs(job: ScanJob, config: Config) -> LoadedScan:
    """Read the scan, its metadata, the template and, for PET, the same-session T1w."""
    metadata = read_metadata(job.path)
    scan = load_scan(job.path, metadata.get("FrameDuration") if job.suffix == "pet" else None)
    template = load_template()
    ct = ct_intensities(scan.reference, job.path) if job.suffix == "ct" else None
    anatomical = load_scan(config.bids_dir / job.anatomical) if job.anatomical else None
    return LoadedScan(metadata, scan, template, ct, anatomical)


def deface_scan(job: ScanJob, config: Config, skull_strip: bool, timer: StageTimer) -> DefacedScan:
    """Run the computing stages on one scan, each timed: load, register, masks, [skull-strip], deface, QC.

    The registration's transform files live in a scratch folder (``--work-dir``) for
    as long as the stages that use them run.
    """
    with timer.stage("load"):
        loaded = load_inputs(job, config)
    return deface_loaded(loaded, config, skull_strip, timer, brain_only=job.suffix == "pet")


def deface_loaded(
    loaded: LoadedScan, config: Config, skull_strip: bool, timer: StageTimer, brain_only: bool = False
) -> DefacedScan:
    """Run the computing stages after loading: register, masks, [skull-strip], deface, QC (``brain_only``: PET)."""
    scan, template, ct = loaded.scan, loaded.template, loaded.ct
    with tempfile.TemporaryDirectory(prefix="bidsdeface-", dir=config.work_dir) as scratch:
        with timer.stage("register"):
            registration = _register(loaded, config, Path(scratch), brain_only)
        with timer.stage("masks"):
            threshold = foreground_threshold(scan.reference) if ct is None else ct.head_threshold
            masks = scan_masks(scan, template, registration, config.brain_margin_mm, threshold, config.omp_nthreads)
        brain = None
        if skull_strip:
            with timer.stage("skullstrip"):
                brain = extract_brain(scan, template, registration, config, Path(scratch), ct)
                masks = with_brain_protected(masks, brain.mask, scan.zooms, config.brain_margin_mm)
        with timer.stage("deface"):
            result = deface_image(scan.image, masks, config, loaded.background, scan.stored_values())
        with timer.stage("qc"):
            after = real_values(stored_data(result.image), scan.image)
            quality = check_scan(
                real_values(scan.stored_values(), scan.image),
                after,
                masks,
                result.removed,
                scan.image.affine,
                template,
                registration,
                threshold,
                brain=None if brain is None else brain.mask,
                remove_ears=config.remove_ears,
                processes=config.omp_nthreads,
            )
            quality = with_pixel_text(quality, *volume_text_slices(mean_volume(after), config.omp_nthreads))
    return DefacedScan(loaded, registration, brain, result, quality, masks)


def scan_content(
    job: ScanJob, config: Config, identity: SubjectIdentity, defaced: DefacedScan
) -> tuple[ScanContent, dict[str, Any]]:
    """Build the files of one scan: images with scrubbed headers, scrubbed metadata, provenance.

    Returns
    -------
    ScanContent
        What is written.
    dict
        What scrubbing removed from the sidecar and the NIfTI header (names only).
    """
    loaded, result = defaced.loaded, defaced.result
    source = loaded.scan.image
    modality = scrub_modality(job.suffix, job.datatype)
    metadata, sidecar_report = scrub_sidecar(loaded.metadata, modality, config.scrub_policy, identity.date_offset)
    image, header_report = scrub_nifti_header(result.image)
    mask, _ = scrub_nifti_header(mask_image_like(result.removed, source))
    brain = None
    if defaced.brain is not None:
        brain_mask, _ = scrub_nifti_header(mask_image_like(defaced.brain.mask, source))
        only_brain = brain_only_image(source, stored_data(result.image), defaced.brain.mask, loaded.background)
        brain = BrainContent(brain_mask, scrub_nifti_header(only_brain)[0], defaced.brain.description)
    methods, codes = deidentification(config, identity.date_offset is not None)
    content = ScanContent(
        image=image,
        mask=mask,
        brain=brain,
        metadata=metadata,
        provenance={"DeidentificationMethod": methods, "DeidentificationMethodCodeSequence": codes},
        description=f"Defaced ({config.method}{' with ears' if config.remove_ears else ''})",
        sources=[f"bids:raw:{identity.output_relpath(job.relpath)}"],
        quality=defaced.quality,
        method=_method_record(job, config, identity, defaced),
    )
    return content, {"Sidecar": sidecar_report.as_record(), "NiftiHeader": header_report.as_record()}


def _method_record(job: ScanJob, config: Config, identity: SubjectIdentity, defaced: DefacedScan) -> dict[str, Any]:
    """Return how the scan was processed (registration path and start, reference volume, CT, skull strip)."""
    registration, ct = defaced.registration, defaced.loaded.ct
    return {
        "registration_path": _registration_path(registration, job, identity),
        "registration_start": registration.start,
        "registration_starts": registration.starts_tried,
        "reference_volume": defaced.loaded.scan.summary,
        **({"intensities": ct.describe(), "background_value": ct.air} if ct is not None else {}),
        **_skull_strip_record(config, defaced.brain),
    }


def _skull_strip_record(config: Config, brain: BrainExtraction | None) -> dict[str, str]:
    """Return the QC record's account of skull stripping (nothing when it was not asked for)."""
    if brain is not None:
        return {"skull_strip_method": brain.method, "skull_strip": brain.description}
    return {"skull_strip": "not done: PET is not skull-stripped"} if config.skull_strip else {}


def _register(loaded: LoadedScan, config: Config, work_dir: Path, brain_only: bool) -> Registration:
    """Register the template to the scan: through a same-session T1w when given, else directly."""
    scan, template, ct = loaded.scan, loaded.template, loaded.ct
    if loaded.anatomical is not None:
        through = register_through_anatomical(
            scan,
            loaded.anatomical,
            register_template(loaded.anatomical, template, config, work_dir),
            template,
            work_dir,
        )
        if through.score >= config.min_registration_score:
            return through
        log.debug("rigid fit to the same-session T1w scored %.2f; registering to the template instead", through.score)
    if brain_only:
        return register_template(scan, template, config, work_dir, brain_threshold(scan.reference), brain_only=True)
    return register_template(
        scan, template, config, work_dir, None if ct is None else ct.head_threshold, mri=ct is None
    )


def _registration_path(registration: Registration, job: ScanJob, identity: SubjectIdentity) -> str:
    """Say, with output names only, how the scan was placed on the template."""
    if registration.path == "anatomical":
        return f"rigid to {Path(identity.output_relpath(job.anatomical)).name}, then its template registration"
    if job.anatomical:
        return f"{registration.path} to template (the rigid fit to the same-session T1w was poor)"
    return f"{registration.path} to template"


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
    bids_dir, output_dir = config.bids_dir.resolve(), (config.release_dir or config.output_dir).resolve()
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


def _start_worker() -> None:
    """Set up a pool worker as the command line sets up itself: ITK on one thread, no stray library output."""
    itk_single_threaded()
    library_messages_to_debug()


def _map_scans(
    jobs: list[ScanJob], config: Config, identities: dict[str, SubjectIdentity]
) -> Iterator[tuple[ScanJob, ScanOutcome]]:
    if config.nprocs == 1 or len(jobs) == 1:
        itk_single_threaded()
        for job in jobs:
            yield job, process_scan(job, config, identities[job.subject])
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=config.nprocs, mp_context=context, initializer=_start_worker) as pool:
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
    participants_plan(config)  # a k or l the participants table cannot reach stops the run before any scan
    jobs = find_scans(config)
    subjects = sorted({job.subject for job in jobs})
    log.info("%d scan(s) of %d subject(s) to process", len(jobs), len(subjects))
    carried, description_report = scrub_dataset_description(source_description, config.scrub_policy)
    _log_scrub("dataset_description.json", description_report, "field")
    with output_lock(config.output_dir, DATASET_LOCK):
        write_dataset_files(config.output_dir, carried, config.container_image)
        remove_stale_temporaries(config.output_dir, recursive=False)
    identities = _resolve_identities(config, jobs)
    with ExitStack() as subject_locks:
        for identity in sorted(identities.values(), key=lambda identity: identity.output_label):
            subject_locks.enter_context(output_lock(config.output_dir, f"sub-{identity.output_label}"))
            stale = remove_stale_temporaries(config.output_dir / f"sub-{identity.output_label}")
            if stale:
                log.info("sub-%s: removed %d partial file(s) left by an interrupted run", identity.output_label, stale)
        outcomes = _process_scans(jobs, config, identities, on_outcome)
        _write_subject_files(config, identities, outcomes)
        if config.release_dir is not None:
            for subject, identity in identities.items():
                publish_subject(config, identity, [job for job in jobs if job.subject == subject])
    failed = sum(outcome.status in ("failed", "withheld") for _, outcome in outcomes)
    withheld = sum(outcome.status == "withheld" for _, outcome in outcomes)
    _write_dataset_summaries(config)
    why = f" ({withheld} of them failed QC: image not written to the output)" if withheld else ""
    log.info("finished: %d done or skipped, %d failed%s", len(jobs) - failed, failed, why)
    return EXIT_DATA if failed else EXIT_OK


def _process_scans(
    jobs: list[ScanJob],
    config: Config,
    identities: dict[str, SubjectIdentity],
    on_outcome: Callable[[ScanOutcome], None] | None,
) -> list[tuple[ScanJob, ScanOutcome]]:
    """Process every scan (in parallel with ``--nprocs``), logging each outcome as it comes."""
    outcomes = []
    for index, (job, outcome) in enumerate(_map_scans(jobs, config, identities), start=1):
        progress = f"[{index}/{len(jobs)}] {outcome.relpath}"
        if outcome.status == "failed":
            log.error("%s: FAILED: %s", progress, outcome.message)
        elif outcome.status == "skipped":
            log.info("%s: skipped, %s", progress, outcome.message)
        else:
            _log_done(progress, outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        outcomes.append((job, outcome))
    return outcomes


def _write_subject_files(
    config: Config, identities: dict[str, SubjectIdentity], outcomes: list[tuple[ScanJob, ScanOutcome]]
) -> None:
    """Write each subject's tables, scrub record and report (under the subjects' locks)."""
    scrubbed: dict[str, dict[str, Any]] = {subject: {} for subject in identities}
    for job, outcome in outcomes:
        if outcome.status == "done":  # a withheld scan's sidecar is not in the output
            scrubbed[job.subject].update(outcome.scrub)
    for subject, identity in identities.items():
        if (config.output_dir / f"sub-{identity.output_label}").is_dir():
            records = scrubbed[subject]
            tables = write_subject_tables(config, identity)
            records.update({name: {"Table": report.as_record()} for name, report in tables.items()})
            write_scrub_record(config, identity, records)
            write_subject_report(config.output_dir, identity.output_label)


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
        plan = participants_plan(config)
        if plan is not None:
            write_privacy_report(config, plan)
        _refresh_subject_reports(config.output_dir)
        summary = write_group_files(config.output_dir)
        if config.release_dir is not None:
            publish_dataset(config, read_json_object(config.output_dir / "dataset_description.json", OutputError))
    if participants is not None:
        _log_scrub("participants.tsv", participants, "column")
    if plan is not None:
        _log_privacy(plan, enforced=config.k_anonymity is not None or config.l_diversity is not None)
    _log_qc_summary(summary)


def _log_privacy(plan: PrivacyPlan, enforced: bool) -> None:
    """Say in one line how identifiable the participants table is, and what generalising it did."""
    before, after = plan.before, plan.after
    measured = f"k={before.k}, {before.unique_rows} unique row(s) of {before.rows}"
    if not enforced:
        done = "measured only (--k-anonymity generalises)"
    elif after == before and not plan.suppressed_rows:
        done = "it meets the request as it is: nothing generalised"
    else:
        columns = ", ".join(plan.suppressed_columns) or "none"
        done = (
            f"as written k={after.k}, {after.unique_rows} unique: ages {AGE_LEVELS[plan.age_level]}, suppressed "
            f"columns: {columns}, {len(plan.suppressed_rows)} row(s) suppressed, information loss {plan.loss}"
        )
    diversity = f", l={before.diversity} -> {after.diversity}" if before.diversity is not None else ""
    log.info(
        "participants.tsv: quasi-identifiers %s: %s%s; %s; see %s",
        ", ".join(plan.quasi_identifiers) or "none",
        measured,
        diversity,
        done,
        PRIVACY_REPORT,
    )


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
    subjects = {job.subject for job in jobs} | set(subject_labels(config) if config.release_dir is not None else ())
    for subject in sorted(subjects):
        sessions = {job.session for job in jobs if job.subject == subject}
        if config.release_dir is not None:  # a release carries every session's files
            sessions |= {path.name[4:] for path in (config.bids_dir / f"sub-{subject}").glob("ses-*") if path.is_dir()}
        sessions = sorted(sessions)
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
    m, method, s = outcome.metrics, outcome.method, outcome.seconds
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
        method["registration_path"],
        method["reference_volume"] if method["reference_volume"] != "3D" else "3D image",
        f"; CT intensities: {method['intensities']}" if "intensities" in method else "",
        f"; brain mask ({method['skull_strip_method']}) {m['brain_volume_ml']:.0f} ml"
        if "brain_volume_ml" in m
        else "",
    )
    if outcome.qc_status != "PASS":
        level = logging.ERROR if outcome.qc_status == "FAIL" else logging.WARNING
        log.log(level, "%s: QC %s: %s", progress, outcome.qc_status, "; ".join(outcome.qc_reasons))
    if outcome.status == "withheld":
        _log_withheld(progress, outcome)
        return
    for name, record in outcome.scrub.items():
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
    if config.ratings is not None:
        _fold_ratings(config)
    for subject in sorted({path.relative_to(config.output_dir).parts[0] for path in defaced}):
        with output_lock(config.output_dir, subject):
            write_subject_report(config.output_dir, subject.removeprefix("sub-"))
    _write_dataset_summaries(config)
    return EXIT_OK


def _fold_ratings(config: Config) -> None:
    """Fold a reviewer's exported ratings into the output's ratings file (counts logged, never scan names)."""
    if config.ratings is None:
        return
    incoming, refused = read_ratings(config.ratings)
    scans = {record["Scan"] for record in read_qc_records(config.output_dir)}
    with output_lock(config.output_dir, DATASET_LOCK):
        kept, unknown = fold_ratings(config.output_dir, incoming, scans)
    log.info(
        "ratings: %d folded into %s; %d of scans not in this output and %d with no valid rating left out",
        kept, RATINGS_FILE, unknown, refused,
    )  # fmt: skip


def _log_qc_summary(summary: QcSummary) -> None:
    log.info(
        "QC of all scans in the output: %d FAIL, %d WARN, %d PASS; report %s (flagged scans first), table %s",
        summary.count("FAIL"),
        summary.count("WARN"),
        summary.count("PASS"),
        summary.report,
        summary.table,
    )
