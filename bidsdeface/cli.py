"""Command line: ``bidsdeface BIDS_DIR OUTPUT_DIR {participant,group} [options]``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import DEFAULT_SUFFIXES, METHODS, SKULL_STRIP_METHODS, SUPPORTED_SUFFIXES, Config, ConvertConfig
from .discover import clean_label
from .errors import (
    EXIT_DATA,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_UNKNOWN_LEVEL,
    EXIT_USAGE,
    BidsDefaceError,
    Terminated,
    UsageError,
    library_messages_to_debug,
    sigterm_raises,
)
from .policy import SitePolicy, read_policy_file

log = logging.getLogger("bidsdeface")

ANALYSIS_LEVELS = ("participant", "group")
DATE_SHIFT_KEY_ENV = "BIDSDEFACE_DATE_SHIFT_KEY"
CONTAINER_IMAGE_ENV = "BIDSDEFACE_CONTAINER_IMAGE"


class _Parser(argparse.ArgumentParser):
    """argparse with BIDS-App exit codes: 64 for usage errors, 17 for an unknown level."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        code = EXIT_UNKNOWN_LEVEL if "analysis_level" in message else EXIT_USAGE
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


def _add_scrub_options(parser: argparse.ArgumentParser, pseudonymize: bool) -> None:
    """Add the metadata scrubbing options (shared by ``bidsdeface`` and ``bidsdeface-convert``)."""
    scrub = parser.add_argument_group(
        "metadata scrubbing",
        "Sidecars keep only keys on a built-in allow-list (acquisition physics, device type; "
        "see bidsdeface/policy.py), and only values of the type the BIDS schema or DICOM dictionary "
        "defines whose text passes a conservative screen; participants, sessions and scans tables keep "
        "only allowed columns, BIDS levels and screened text (failures become n/a); "
        "ages of 89 and over become 89; NIfTI header text and extensions are removed. Dates are shifted "
        "by one whole number of days per subject (to 1925 or earlier; times of day are kept) unless "
        "--drop-dates. Offsets "
        "and pseudonyms are kept in a private folder outside the dataset written.",
    )
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


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser (pure: no I/O)."""
    parser = _Parser(
        prog="bidsdeface",
        description=(
            "De-identify the head scans of a BIDS dataset: register a head template to every "
            "scan (ANTs, robust to orientation and field of view), remove the face (and "
            "optionally the ears) while a dilated brain mask is never touched, scrub identifying "
            "metadata, and write a BIDS-valid derivative dataset. The input is never modified. "
            "Every scan is checked: metrics, figures, a face detector on surface renders and a "
            "PASS / WARN / FAIL verdict (sub-<label>/..._qc.json, sub-<label>.html, qc.tsv)."
        ),
        epilog=(
            "Exit codes: 0 ok; 16 input is not valid BIDS; 17 unknown analysis level; 18 the filters "
            "select no scans; 64 usage error; 65 some scans failed or failed QC (those have no image in "
            "OUTPUT_DIR; the others were written); 66 no "
            "usable input; 70 internal error; 73 cannot write the output; 143 stopped by SIGTERM (finished scans "
            "are kept, partial ones removed: run again to complete). "
            "Examples: bidsdeface /data/ds /data/ds-defaced participant --participant-label 01 02; "
            "bidsdeface /data/ds /data/ds-defaced participant --write-slurm-array ~/deface.sbatch; "
            "bash ~/deface.sbatch"
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="input BIDS dataset (read only)")
    parser.add_argument("output_dir", type=Path, help="output derivative dataset (created; outside bids_dir)")
    parser.add_argument(
        "analysis_level",
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
        help="subjects to process, with or without 'sub-' (default: all)",
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
    parser.add_argument("--nprocs", type=_positive_int, default=1, help="scans processed in parallel")
    parser.add_argument(
        "--omp-nthreads", type=_positive_int, default=2, help="threads per scan for registration (ITK/ANTs)"
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
    _add_scrub_options(parser, pseudonymize=True)
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
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="debug output: registration poses, tracebacks"
    )
    parser.add_argument("--version", action="version", version=f"bidsdeface {__version__}")
    return parser


# Options the SLURM script sets per task itself, or must not write down (the key is a secret).
NOT_PASSED_TO_TASKS = frozenset(
    {
        "participant_label",
        "skip_bids_validation",
        "nprocs",
        "omp_nthreads",
        "date_shift_key",
        "write_slurm_array",
        "slurm_max_parallel",
        "slurm_partition",
        "slurm_account",
        "slurm_log_dir",
        "apptainer_image",
    }
)


def task_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Return the options a SLURM task needs to repeat this run: those given, paths made absolute.

    >>> parser = build_parser()
    >>> args = parser.parse_args(["in", "out", "participant", "--method", "blur", "-vv", "--nprocs", "2"])
    >>> task_options(parser, args)
    ['--method', 'blur', '--verbose', '--verbose']
    """
    options: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest in NOT_PASSED_TO_TASKS or action.default == argparse.SUPPRESS:
            continue
        value = getattr(args, action.dest)
        if value == action.default:
            continue
        flag = next(option for option in action.option_strings if option.startswith("--"))
        if isinstance(action, argparse._StoreTrueAction):
            options.append(flag)
        elif isinstance(action, argparse._CountAction):
            options += [flag] * value
        else:
            values = value if isinstance(value, list) else [value]
            options += [flag, *(str(v.absolute()) if isinstance(v, Path) else str(v) for v in values)]
    return options


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the frozen run configuration from parsed arguments.

    Raises
    ------
    UsageError
        The scrub policy file is unreadable or malformed.
    """
    return Config(
        bids_dir=args.bids_dir.absolute(),
        output_dir=args.output_dir.absolute(),
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
        nprocs=args.nprocs,
        omp_nthreads=args.omp_nthreads,
        work_dir=None if args.work_dir is None else args.work_dir.absolute(),
        skip_bids_validation=args.skip_bids_validation,
        overwrite=args.overwrite,
        pseudonymize=args.pseudonymize,
        keep_failed=args.keep_failed,
        container_image=os.environ.get(CONTAINER_IMAGE_ENV) or None,
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
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.omp_nthreads)
    from .pipeline import check_folders, run_group, run_participant, validate_input
    from .slurm import ArraySettings, write_array_script

    log.info("bidsdeface %s: %s level", __version__, args.analysis_level)

    def work() -> int:
        config = config_from_args(args)
        if args.write_slurm_array is not None:
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
        return run_participant(config) if config.analysis_level == "participant" else run_group(config)

    with sigterm_raises():
        return _guarded(work)


def build_convert_parser() -> argparse.ArgumentParser:
    """Return the ``bidsdeface-convert`` parser (pure: no I/O)."""
    parser = _Parser(
        prog="bidsdeface-convert",
        description=(
            "Convert a DICOM folder (a PACS export: any layout, any file names) into a BIDS dataset "
            "whose sidecars, tables and file names are already de-identified, ready for "
            "`bidsdeface BIDS_DIR OUTPUT_DIR participant`. Each series is classified (T1w, T2w, FLAIR, "
            "PDw, CT, PET) from its DICOM attributes and dcm2niix's guess; localizers, derived images, "
            "screen captures, dose reports, other body parts and broken series are skipped, and every "
            "decision is listed with its reason in sub-<label>[_ses-<label>]_conversion.tsv. A folder "
            "holding several patients or studies is refused unless --map says where each study goes. "
            "DICOM_DIR is never written to."
        ),
        epilog=(
            "Exit codes: 0 ok; 18 every series was skipped by rule; 64 usage error (e.g. several patients "
            "without --map); 65 some series failed (the others were written); 66 no DICOM found; 70 "
            "internal error; 73 cannot write BIDS_DIR. "
            "Example: bidsdeface-convert /pacs/export/patient7 /data/ds --participant-label 07 --session-label pre"
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("dicom_dir", type=Path, help="folder searched recursively for DICOM files (read only)")
    parser.add_argument("bids_dir", type=Path, help="BIDS dataset to write (created, or added to)")
    who = parser.add_argument_group(
        "who is who", "Give labels for a folder with one patient's single study, or a mapping for anything else."
    )
    who.add_argument("--participant-label", "--participant_label", default="", metavar="LABEL", help="subject label")
    who.add_argument("--session-label", "--session_label", default="", metavar="LABEL", help="session label")
    who.add_argument(
        "--map",
        type=Path,
        default=None,
        metavar="FILE",
        help="TSV with columns study_instance_uid, participant_label and optionally session_label; "
        "studies without a participant_label are left out",
    )
    who.add_argument(
        "--write-map",
        type=Path,
        default=None,
        metavar="FILE",
        help="only list the studies found (with patient identifiers, so keep FILE private) as a mapping "
        "to fill in, then exit",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace subjects or sessions already converted")
    parser.add_argument("-w", "--work-dir", type=Path, default=None, help="scratch folder (default: system temp)")
    _add_scrub_options(parser, pseudonymize=False)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug output and tracebacks")
    parser.add_argument("--version", action="version", version=f"bidsdeface-convert {__version__}")
    return parser


def convert_config_from_args(args: argparse.Namespace) -> ConvertConfig:
    """Build the frozen conversion configuration from parsed arguments.

    Raises
    ------
    UsageError
        Labels and mapping are missing, invalid or given together.
    """
    from .convert import check_label

    if args.map is not None and (args.participant_label or args.session_label):
        raise UsageError("give either --participant-label/--session-label or --map, not both")
    if args.map is None and args.write_map is None and not args.participant_label:
        raise UsageError("--participant-label is required (or --map for a folder with several studies)")
    return ConvertConfig(
        dicom_dir=args.dicom_dir.absolute(),
        output_dir=args.bids_dir.absolute(),
        participant_label=check_label(args.participant_label, "participant") if args.participant_label else "",
        session_label=check_label(args.session_label, "session") if args.session_label else "",
        mapping=None if args.map is None else args.map.absolute(),
        overwrite=args.overwrite,
        work_dir=None if args.work_dir is None else args.work_dir.absolute(),
        **_scrub_settings(args),
    )


def convert_main(argv: Sequence[str] | None = None) -> int:
    """Run ``bidsdeface-convert``; return the exit code (never raises for bad input)."""
    args = build_convert_parser().parse_args(argv)
    _configure_logging(args.verbose)
    from .convert import check_paths, convert, write_mapping_template
    from .dicom import scan_dicom_folder

    log.info("bidsdeface-convert %s", __version__)

    def work() -> int:
        if args.write_map is not None:
            config = ConvertConfig(args.dicom_dir.absolute(), args.bids_dir.absolute(), participant_label="x")
            check_paths(config)
            studies = write_mapping_template(scan_dicom_folder(config.dicom_dir), args.write_map.absolute(), config)
            log.info(
                "wrote %d study(ies) to the mapping %s: it holds identifiers, keep it private", studies, args.write_map
            )
            return EXIT_OK
        result = convert(convert_config_from_args(args))
        converted, skipped, failed = (result.count(d) for d in ("converted", "skipped", "failed"))
        log.info("finished: %d series converted, %d skipped by rule, %d failed", converted, skipped, failed)
        return EXIT_DATA if failed else EXIT_OK

    with sigterm_raises():
        return _guarded(work)


if __name__ == "__main__":
    sys.exit(main())
