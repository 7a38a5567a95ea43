"""Command line: ``bidsdeface BIDS_DIR OUTPUT_DIR {participant,group} [options]``.

Also the one home of what both commands share (``bidsdeface-convert`` is
:mod:`bidsdeface.convert_cli`): the parser class and help format, the scrub
options, logging set-up and the guard that turns failures into exit codes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .bidsnames import clean_label
from .config import (
    CONTAINER_IMAGE_ENV,
    DATE_SHIFT_KEY_ENV,
    DEFAULT_SUFFIXES,
    LAYOUTS,
    METHODS,
    RELEASE_DERIVATIVE,
    SKULL_STRIP_METHODS,
    SUPPORTED_SUFFIXES,
    Config,
    fitted_to_cores,
    itk_single_threaded,
    usable_cores,
)
from .errors import (
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_USAGE,
    BidsDefaceError,
    Terminated,
    UnknownLevelError,
    UsageError,
    library_messages_to_debug,
    sigterm_raises,
)
from .policy import SitePolicy, read_policy_file

log = logging.getLogger("bidsdeface")

ANALYSIS_LEVELS = ("participant", "group")


class _Parser(argparse.ArgumentParser):
    """argparse with BIDS-App exit codes: 17 for an unknown analysis level, 64 for every other usage error.

    The level is checked by its argument type (:func:`_analysis_level`), which raises
    :class:`UnknownLevelError`; argparse lets that through, and it is caught here.
    """

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        try:
            return super().parse_known_args(args, namespace)
        except UnknownLevelError as exc:
            self._fail(exc.exit_code, str(exc))

    def error(self, message: str) -> NoReturn:
        self._fail(EXIT_USAGE, message)

    def _fail(self, code: int, message: str) -> NoReturn:
        """Print the usage and one error line; exit with ``code``."""
        self.print_usage(sys.stderr)
        self.exit(code, f"{self.prog}: error: {message}\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults only where they say something (not for flags, empty lists or None)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], "") or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {value}")
    return value


def _analysis_level(text: str) -> str:
    """Return ``text`` if it is one of :data:`ANALYSIS_LEVELS`, else raise :class:`UnknownLevelError` (exit 17).

    >>> _analysis_level("group")
    'group'
    >>> _analysis_level("sideways")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    bidsdeface.errors.UnknownLevelError: argument analysis_level: invalid choice: 'sideways' (choose from ...)
    """
    if text not in ANALYSIS_LEVELS:
        choices = ", ".join(repr(level) for level in ANALYSIS_LEVELS)
        raise UnknownLevelError(f"argument analysis_level: invalid choice: {text!r} (choose from {choices})")
    return text


SCRUB_DESCRIPTION = (
    "Sidecars keep only keys on a built-in allow-list (acquisition physics, device type; "
    "see bidsdeface/policy.py), and only values of the type the BIDS schema or DICOM dictionary "
    "defines whose text passes a conservative screen; participants, sessions and scans tables keep "
    "only allowed columns, BIDS levels and screened text (failures become n/a); "
    "ages of 89 and over become 89; NIfTI header text and extensions are removed. Dates are shifted "
    "by one whole number of days per subject (to 1925 or earlier; times of day are kept) unless "
    "--drop-dates. Offsets "
    "and pseudonyms are kept in a private folder outside the dataset written."
)


def _add_pixel_text_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--clean-pixel-text`` (shared by ``bidsdeface-convert`` and ``bidsdeface-dicom``)."""
    parser.add_argument(
        "--clean-pixel-text",
        action="store_true",
        help="burned-in text is looked for in the pixels of every series (every instance of a series whose "
        "BurnedInAnnotation is set and not NO, else a sample; every instance once text is found); a series with "
        "text is skipped, or with this flag has every text box filled with background",
    )


def _add_scrub_options(parser: argparse.ArgumentParser, pseudonymize: bool) -> None:
    """Add the metadata scrubbing options (shared by ``bidsdeface`` and ``bidsdeface-convert``)."""
    scrub = parser.add_argument_group("metadata scrubbing", SCRUB_DESCRIPTION)
    _add_keep_options(scrub)
    _add_private_state_options(scrub, pseudonymize)


def _add_privacy_options(parser: argparse.ArgumentParser) -> None:
    """Quasi-identifiers of the participants table: what is measured, and what is enforced."""
    privacy = parser.add_argument_group(
        "quasi-identifiers",
        "The participants table that leaves is always measured: its equivalence classes over the "
        "quasi-identifiers, the smallest class (k), unique rows and, with a sensitive column, l-diversity. "
        "The result goes to privacy_report.json, the group report and the log",
    )
    privacy.add_argument(
        "--quasi-identifiers",
        nargs="+",
        default=[],
        metavar="COLUMN",
        help="participants columns that could single a person out (default: every column that leaves but "
        "participant_id and the sensitive column)",
    )
    privacy.add_argument(
        "--sensitive-column", default=None, metavar="COLUMN", help="participants column measured for l-diversity"
    )
    privacy.add_argument(
        "--k-anonymity",
        type=_positive_int,
        default=None,
        metavar="K",
        help="generalise until every class has at least K rows: ages in 5-year, then 10-year bands, then coded "
        "under 20 and from 80 (written as the band's lower bound); other columns suppressed to n/a; rows still "
        "alone suppressed whole (their images are kept). The least information loss wins",
    )
    privacy.add_argument(
        "--l-diversity",
        type=_positive_int,
        default=None,
        metavar="L",
        help="also require L different values of --sensitive-column in every class",
    )
    privacy.add_argument(
        "--max-suppressed-rows",
        type=_fraction,
        default=0.05,
        metavar="SHARE",
        help="share of rows that may be suppressed whole (default 0.05); beyond it the run stops with an error "
        "and writes no tables",
    )


def _add_keep_options(scrub: argparse._ArgumentGroup) -> None:
    """Add what a site keeps beyond the built-in allow-lists."""
    scrub.add_argument(
        "--keep-sidecar-keys",
        nargs="+",
        default=[],
        metavar="KEY",
        help="also keep these sidecar keys (values are screened for names, record numbers, dates, "
        "phone numbers and e-mail; a value that fails is dropped)",
    )
    scrub.add_argument(
        "--keep-columns",
        nargs="+",
        default=[],
        metavar="COLUMN",
        help="also keep these participants/sessions/scans table columns (cells screened likewise; "
        "a cell that fails becomes n/a)",
    )
    scrub.add_argument(
        "--scrub-policy",
        type=Path,
        default=None,
        metavar="FILE",
        help='site rules as JSON: {"keep_sidecar_keys": [...], "drop_sidecar_keys": [...], "keep_columns": [...], '
        '"keep_column_descriptions": [...], "keep_dataset_fields": [...]} (see README, "Metadata scrubbing")',
    )


def _add_private_state_options(scrub: argparse._ArgumentGroup, pseudonymize: bool) -> None:
    """Dates, pseudonyms and the private folder that keeps their offsets and mappings."""
    scrub.add_argument(
        "--drop-dates", action="store_true", help="remove dates and clock times instead of shifting them"
    )
    scrub.add_argument(
        "--date-shift-key",
        default=None,
        metavar="SECRET",
        help=f"derive each subject's date offset (and pseudonyms) from this secret and the label, so that "
        f"every run and machine agrees; also read from ${DATE_SHIFT_KEY_ENV} (default: random offsets, "
        "recorded in the private folder)",
    )
    if pseudonymize:
        scrub.add_argument(
            "--pseudonymize",
            action="store_true",
            help="replace subject and session labels by pseudonyms in every output name, table and report",
        )
    scrub.add_argument(
        "--private-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="private folder for date offsets and pseudonyms; never share it (default: the written dataset's "
        "folder name + '-private', beside it)",
    )


DESCRIPTION = (
    "De-identify the head scans of a BIDS dataset: register a head template to every "
    "scan (ANTs, robust to orientation and field of view), remove the face (and "
    "optionally the ears) while a dilated brain mask is never touched, scrub identifying "
    "metadata, and write a BIDS-valid derivative dataset. The input is never modified. "
    "Every scan is checked: metrics, figures, a face detector on surface renders and a "
    "PASS / WARN / FAIL verdict (sub-<label>/..._qc.json, sub-<label>.html, qc.tsv)."
)
EPILOG = (
    "Exit codes: 0 ok; 16 input is not valid BIDS; 17 unknown analysis level; 18 the filters "
    "select no scans; 64 usage error; 65 some scans failed or failed QC (those have no image in "
    "OUTPUT_DIR; the others were written); 66 no "
    "usable input; 70 internal error; 73 cannot write the output; 143 stopped by SIGTERM (finished scans "
    "are kept, partial ones removed: run again to complete). "
    "Examples: bidsdeface /data/ds /data/ds-defaced participant --participant-label 01 02; "
    "bidsdeface /data/ds /data/ds-defaced participant --write-slurm-array ~/deface.sbatch; "
    "bash ~/deface.sbatch"
)


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser (pure: no I/O)."""
    parser = _Parser(prog="bidsdeface", description=DESCRIPTION, epilog=EPILOG, formatter_class=_HelpFormatter)
    _add_inputs(parser)
    _add_defacing_options(parser)
    _add_skull_strip_options(parser)
    _add_run_options(parser)
    _add_scrub_options(parser, pseudonymize=True)
    _add_privacy_options(parser)
    _add_review_options(parser)
    _add_slurm_options(parser)
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="debug output: registration poses, tracebacks"
    )
    parser.add_argument("--version", action="version", version=f"bidsdeface {__version__}")
    return parser


def _add_inputs(parser: argparse.ArgumentParser) -> None:
    """Add the BIDS-App positionals and the filters that choose scans."""
    parser.add_argument("bids_dir", type=Path, help="input BIDS dataset (read only)")
    parser.add_argument(
        "output_dir",
        type=Path,
        help="output dataset (created; outside bids_dir): a derivative, or with --layout release a raw dataset",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=LAYOUTS[0],
        help="derivative: OUTPUT_DIR holds the defaced scans (desc-defaced), masks and QC. release: OUTPUT_DIR "
        "becomes a raw dataset to publish: defaced scans under their raw names, the subjects' other images "
        "(func, dwi, fmap, perf...) with NIfTI header text cleared, every sidecar scrubbed with the BIDS schema's "
        "fields for its datatype, events screened, README and CHANGES regenerated; masks, QC and "
        "release_manifest.tsv go to OUTPUT_DIR/derivatives/bidsdeface. Head images not defaced and files "
        "that are not BIDS are left out (counted by reason)",
    )
    parser.add_argument(
        "analysis_level",
        type=_analysis_level,
        choices=ANALYSIS_LEVELS,
        help="participant: deface and check scans; group: rebuild qc.tsv, group_report.html (FAIL and "
        "WARN first) and the subject reports from finished participant runs (processes nothing again)",
    )
    parser.add_argument(
        "--participant-label",
        "--participant_label",
        nargs="+",
        default=[],
        metavar="LABEL",
        help="subjects to process, with or without 'sub-' (default: all); other subjects' folders are not read",
    )
    parser.add_argument(
        "--session-label",
        "--session_label",
        nargs="+",
        default=[],
        metavar="LABEL",
        help="sessions to process, with or without 'ses-' (default: all)",
    )
    parser.add_argument(
        "--modalities",
        nargs="+",
        default=list(DEFAULT_SUFFIXES),
        choices=SUPPORTED_SUFFIXES,
        metavar="SUFFIX",
        help=f"BIDS suffixes to deface, from: {' '.join(SUPPORTED_SUFFIXES)}. ct: anat/*_ct.nii.gz in Hounsfield "
        "units, offset by 1024, windowed or rescaled (told apart by the histogram); removed voxels get the "
        "scan's own air value. pet: pet/*_pet.nii.gz, 3D or 4D; the time-weighted mean of the frames is "
        "registered rigidly to a T1w of the same session when there is one (and through it to the template), "
        "otherwise to the template's brain; every frame gets the same mask",
    )


def _add_defacing_options(parser: argparse.ArgumentParser) -> None:
    """How the face is removed, what is protected, and when registration is too poor to trust."""
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="zero",
        help="zero: set facial voxels to background; blur: replace the face by smooth, noisy tissue under a "
        "smoothed, sunken surface (no facial shape is left)",
    )
    parser.add_argument(
        "--remove-ears",
        action="store_true",
        help="also remove the outer ears: the template's ear region and the pinnae found on the scan, also where the "
        "field of view cuts through them (QC then checks that no ear tissue is left)",
    )
    parser.add_argument(
        "--brain-margin",
        type=_non_negative_float,
        default=6.0,
        metavar="MM",
        help="dilation (mm) of the brain mask that is never modified",
    )
    parser.add_argument(
        "--min-registration-score",
        type=float,
        default=0.80,
        metavar="SCORE",
        help="scans whose template registration scores lower (0-1) fail instead of being written",
    )


def _add_skull_strip_options(parser: argparse.ArgumentParser) -> None:
    """Add the optional brain masks and brain-only images."""
    strip = parser.add_argument_group(
        "skull stripping",
        "Also write, next to each defaced MRI or CT image, a brain-only image (desc-brain_<suffix>, "
        "SkullStripped: true) and its brain mask (desc-brain_mask; space-<suffix>_desc-brain_mask for scans "
        "other than T1w). The mask joins the template brain in the protected region that defacing never "
        "changes, and the QC report outlines both. CT uses a brain window (-15 to 100 HU) with either method. "
        "PET is not skull-stripped.",
    )
    strip.add_argument("--skull-strip", action="store_true", help="write brain masks and brain-only images")
    strip.add_argument(
        "--skull-strip-method",
        choices=SKULL_STRIP_METHODS,
        default=None,
        help="template (default; no extra dependency, about 10 s per scan): the template brain warped by "
        "deformable ANTs registration, refined on the scan's intensities. deepbet: a learned model (about 5 s, "
        "needs pip install 'bidsdeface[deepbet]'; weights ship with it, CPU only). Implies --skull-strip",
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """Parallelism, scratch space, validation, re-runs and failed scans."""
    parser.add_argument("--nprocs", type=_positive_int, default=1, help="scans processed in parallel")
    parser.add_argument(
        "--omp-nthreads",
        type=_positive_int,
        default=2,
        help="cores per scan: with 2 or more, parts of the registration (its pose search, when the header's "
        "pose is not clearly right), the masks and the QC run side by side in forked processes, and "
        "--skull-strip-method deepbet gets as many threads. ANTs runs on one thread in each process, so outputs "
        "repeat bit for bit at any setting. nprocs x omp-nthreads is lowered to fit the cores",
    )
    parser.add_argument("-w", "--work-dir", type=Path, default=None, help="scratch folder (default: system temp)")
    parser.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validation",
        "--skip_bids_validator",
        action="store_true",
        help="do not run the BIDS validator on the input",
    )
    parser.add_argument("--overwrite", action="store_true", help="redo scans that are already finished")
    parser.add_argument(
        "--keep-failed",
        action="store_true",
        help="a scan whose QC verdict is FAIL never has an image in OUTPUT_DIR (only its QC record and "
        "figures, for review); with this flag its defaced image, mask and brain outputs are written to "
        "failed/ in the private folder (see --private-dir), at the same relative path, instead of nowhere",
    )


def _add_review_options(parser: argparse.ArgumentParser) -> None:
    """Fold a reviewer's exported ratings into the group files."""
    parser.add_argument(
        "--ratings",
        type=Path,
        default=None,
        metavar="FILE",
        help="group level: fold a qc_ratings.tsv exported from the group report's review mode (scan, rating, "
        "reviewer, comment, time) into qc_ratings.tsv, qc.tsv and the reports; a human fail overrides an automatic "
        "pass, and the reports say who decided",
    )


def _add_slurm_options(parser: argparse.ArgumentParser) -> None:
    """Write a SLURM job-array script instead of processing."""
    hpc = parser.add_argument_group(
        "clusters (SLURM)",
        "Write a job-array script instead of processing: one subject per task (from participants.tsv and the "
        "label filters), every option above passed on, resources per task from the benchmark measurements, "
        "and a group-level job that runs after all tasks. `bash FILE` submits both. Tasks write into one "
        "OUTPUT_DIR at once safely; a killed task leaves no partial files and a resubmitted one finishes.",
    )
    hpc.add_argument(
        "--write-slurm-array",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the SLURM job-array script to FILE (outside both datasets) and exit; needs participant",
    )
    hpc.add_argument(
        "--slurm-max-parallel",
        type=_positive_int,
        default=20,
        metavar="M",
        help="at most M tasks at a time (--array=1-N%%M)",
    )
    hpc.add_argument("--slurm-partition", default="", metavar="NAME", help="SLURM partition for the tasks")
    hpc.add_argument("--slurm-account", default="", metavar="NAME", help="SLURM account to charge")
    hpc.add_argument(
        "--slurm-log-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="task logs (default: logs/ beside FILE; the logs name input labels, so keep them private)",
    )
    hpc.add_argument(
        "--apptainer-image",
        default="",
        metavar="IMAGE",
        help="run each task in this container (a .sif file or docker://...) with apptainer, binding the "
        "input read-only and the output and private folders at the same paths",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the frozen run configuration from parsed arguments.

    Raises
    ------
    UsageError
        The scrub policy file is unreadable or malformed; ``--ratings`` outside the group level.
    """
    cores = usable_cores()
    nprocs, omp_nthreads = fitted_to_cores(args.nprocs, args.omp_nthreads, cores)
    if (nprocs, omp_nthreads) != (args.nprocs, args.omp_nthreads):
        log.info(
            "--nprocs %d x --omp-nthreads %d is more than the %d core(s) available: using %d x %d",
            args.nprocs,
            args.omp_nthreads,
            cores,
            nprocs,
            omp_nthreads,
        )
    if args.ratings is not None and args.analysis_level != "group":
        raise UsageError("--ratings is for the group level: bidsdeface BIDS_DIR OUTPUT_DIR group --ratings FILE")
    output_dir, release_dir = args.output_dir.absolute(), None
    if args.layout == "release":
        output_dir, release_dir = output_dir / RELEASE_DERIVATIVE, output_dir
    return Config(
        bids_dir=args.bids_dir.absolute(),
        output_dir=output_dir,
        release_dir=release_dir,
        analysis_level=args.analysis_level,
        participant_labels=tuple(dict.fromkeys(clean_label(label, "sub") for label in args.participant_label)),
        session_labels=tuple(dict.fromkeys(clean_label(label, "ses") for label in args.session_label)),
        suffixes=tuple(dict.fromkeys(args.modalities)),
        method=args.method,
        remove_ears=args.remove_ears,
        brain_margin_mm=args.brain_margin,
        skull_strip=args.skull_strip or args.skull_strip_method is not None,
        skull_strip_method=args.skull_strip_method or SKULL_STRIP_METHODS[0],
        min_registration_score=args.min_registration_score,
        nprocs=nprocs,
        omp_nthreads=omp_nthreads,
        work_dir=None if args.work_dir is None else args.work_dir.absolute(),
        skip_bids_validation=args.skip_bids_validation,
        overwrite=args.overwrite,
        pseudonymize=args.pseudonymize,
        keep_failed=args.keep_failed,
        container_image=os.environ.get(CONTAINER_IMAGE_ENV) or None,
        quasi_identifiers=tuple(dict.fromkeys(args.quasi_identifiers)),
        sensitive_column=args.sensitive_column,
        k_anonymity=args.k_anonymity,
        l_diversity=args.l_diversity,
        max_suppressed_rows=args.max_suppressed_rows,
        ratings=None if args.ratings is None else args.ratings.absolute(),
        **_scrub_settings(args),
    )


def _scrub_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Return the scrub fields shared by :class:`Config` and :class:`ConvertConfig`."""
    site_policy = SitePolicy(tuple(args.keep_sidecar_keys), (), tuple(args.keep_columns))
    if args.scrub_policy is not None:
        site_policy = read_policy_file(args.scrub_policy).merged(site_policy)
    return {
        "scrub_policy": site_policy,
        "drop_dates": args.drop_dates,
        "date_shift_key": args.date_shift_key or os.environ.get(DATE_SHIFT_KEY_ENV) or None,
        "private_dir": None if args.private_dir is None else args.private_dir.absolute(),
    }


def _configure_logging(verbosity: int) -> None:
    level = logging.DEBUG if verbosity >= 1 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.set_name("bidsdeface-cli")
    log.handlers[:] = [h for h in log.handlers if h.get_name() != "bidsdeface-cli"] + [handler]
    log.setLevel(level)
    library_messages_to_debug()  # warnings and nibabel's notices: DEBUG lines, never stray stderr


def _guarded(work: Callable[[], int]) -> int:
    """Run ``work``; turn every failure into a one-line error and its exit code (traceback with -v)."""
    started = time.perf_counter()
    try:
        code = work()
    except BidsDefaceError as exc:
        log.debug("details", exc_info=True)
        log.error("%s: %s", type(exc).__name__, exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted: finished scans are kept, partial ones removed; run again to complete")
        return 130
    except Terminated as exc:
        log.error("terminated (SIGTERM): finished scans are kept, partial ones removed; run again to complete")
        return int(exc.code)
    except Exception as exc:
        log.debug("details", exc_info=True)
        log.error("internal error: %s: %s (run with -v for the traceback)", type(exc).__name__, exc)
        return EXIT_INTERNAL
    log.info("total %.1f s", time.perf_counter() - started)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (never raises for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    itk_single_threaded()
    from .pipeline import run_group, run_participant

    log.info("bidsdeface %s: %s level", __version__, args.analysis_level)

    def work() -> int:
        config = config_from_args(args)
        if args.write_slurm_array is not None:
            return _write_slurm_array(parser, args, config)
        return run_participant(config) if config.analysis_level == "participant" else run_group(config)

    with sigterm_raises():
        return _guarded(work)


def _write_slurm_array(parser: argparse.ArgumentParser, args: argparse.Namespace, config: Config) -> int:
    """Check the folders and the input once, then write the job-array script instead of processing.

    Raises
    ------
    UsageError
        The analysis level is not ``participant``, or a folder is refused.
    """
    from .pipeline import check_folders, validate_input
    from .slurm import ArraySettings, task_options, write_array_script

    if config.analysis_level != "participant":
        raise UsageError("--write-slurm-array writes participant-level tasks: give 'participant'")
    check_folders(config)  # refused now, not in every task
    validate_input(config)
    settings = ArraySettings(
        args.write_slurm_array.absolute(),
        args.slurm_max_parallel,
        args.slurm_partition,
        args.slurm_account,
        args.apptainer_image,
        None if args.slurm_log_dir is None else args.slurm_log_dir.absolute(),
    )
    write_array_script(config, settings, task_options(parser, args))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
