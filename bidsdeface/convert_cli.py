"""Command line: ``bidsdeface-convert DICOM_DIR BIDS_DIR [options]`` (DICOM to a de-identified BIDS dataset).

The parser pieces, logging set-up and error guard it shares with ``bidsdeface``
live in :mod:`bidsdeface.cli`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .bidsnames import clean_label
from .cli import (
    _add_pixel_text_option,
    _add_scrub_options,
    _configure_logging,
    _guarded,
    _HelpFormatter,
    _Parser,
    _scrub_settings,
)
from .config import ConvertConfig
from .errors import EXIT_DATA, EXIT_OK, UsageError, sigterm_raises

log = logging.getLogger("bidsdeface")

DESCRIPTION = (
    "Convert a DICOM folder (a PACS export: any layout, any file names) into a BIDS dataset "
    "whose sidecars, tables and file names are already de-identified, ready for "
    "`bidsdeface BIDS_DIR OUTPUT_DIR participant`. Each series is classified (T1w, T2w, FLAIR, "
    "PDw, CT, PET) from its DICOM attributes and dcm2niix's guess; localizers, derived images, "
    "screen captures, dose reports, other body parts and broken series are skipped, and every "
    "decision is listed with its reason in sub-<label>[_ses-<label>]_conversion.tsv. A folder "
    "holding several patients or studies is refused unless --map says where each study goes. "
    "DICOM_DIR is never written to."
)
EPILOG = (
    "Exit codes: 0 ok; 18 every series was skipped by rule; 64 usage error (e.g. several patients "
    "without --map); 65 some series failed (the others were written); 66 no DICOM found; 70 "
    "internal error; 73 cannot write BIDS_DIR. "
    "Example: bidsdeface-convert /pacs/export/patient7 /data/ds --participant-label 07 --session-label pre"
)


def build_parser() -> argparse.ArgumentParser:
    """Return the ``bidsdeface-convert`` parser (pure: no I/O)."""
    parser = _Parser(prog="bidsdeface-convert", description=DESCRIPTION, epilog=EPILOG, formatter_class=_HelpFormatter)
    parser.add_argument("dicom_dir", type=Path, help="folder searched recursively for DICOM files (read only)")
    parser.add_argument("bids_dir", type=Path, help="BIDS dataset to write (created, or added to)")
    _add_who_options(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace subjects or sessions already converted")
    parser.add_argument("-w", "--work-dir", type=Path, default=None, help="scratch folder (default: system temp)")
    _add_scrub_options(parser, pseudonymize=False)
    _add_pixel_text_option(parser)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug output and tracebacks")
    parser.add_argument("--version", action="version", version=f"bidsdeface-convert {__version__}")
    return parser


def _add_who_options(parser: argparse.ArgumentParser, write_map: bool = True) -> None:
    """Add the labels of a single study, or the mapping of several studies to subjects and sessions."""
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
    if not write_map:
        return
    who.add_argument(
        "--write-map",
        type=Path,
        default=None,
        metavar="FILE",
        help="only list the studies found (with patient identifiers, so keep FILE private) as a mapping "
        "to fill in, then exit",
    )


def check_who(args: argparse.Namespace, listing_only: bool = False) -> None:
    """Refuse labels given with a mapping, or neither (unless the run only lists the studies).

    Raises
    ------
    UsageError
        Labels and mapping are both given, or neither is.
    """
    if args.map is not None and (args.participant_label or args.session_label):
        raise UsageError("give either --participant-label/--session-label or --map, not both")
    if args.map is None and not listing_only and not args.participant_label:
        raise UsageError("--participant-label is required (or --map for a folder with several studies)")


def who_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Return the labels (cleaned) and the mapping path given on the command line."""
    return {
        "participant_label": clean_label(args.participant_label, "sub") if args.participant_label else "",
        "session_label": clean_label(args.session_label, "ses") if args.session_label else "",
        "mapping": None if args.map is None else args.map.absolute(),
    }


def config_from_args(args: argparse.Namespace) -> ConvertConfig:
    """Build the frozen conversion configuration from parsed arguments.

    Raises
    ------
    UsageError
        Labels and mapping are missing, invalid or given together.
    """
    check_who(args, listing_only=args.write_map is not None)
    return ConvertConfig(
        dicom_dir=args.dicom_dir.absolute(),
        output_dir=args.bids_dir.absolute(),
        **who_settings(args),
        overwrite=args.overwrite,
        clean_pixel_text=args.clean_pixel_text,
        work_dir=None if args.work_dir is None else args.work_dir.absolute(),
        **_scrub_settings(args),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bidsdeface-convert``; return the exit code (never raises for bad input)."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    from .convert import convert

    log.info("bidsdeface-convert %s", __version__)

    def work() -> int:
        if args.write_map is not None:
            return _write_map(args)
        result = convert(config_from_args(args))
        converted, skipped, failed = (result.count(d) for d in ("converted", "skipped", "failed"))
        log.info("finished: %d series converted, %d skipped by rule, %d failed", converted, skipped, failed)
        return EXIT_DATA if failed else EXIT_OK

    with sigterm_raises():
        return _guarded(work)


def _write_map(args: argparse.Namespace) -> int:
    """List the studies found as a mapping to fill in (``--write-map``), instead of converting."""
    from .convert import check_paths, write_mapping_template
    from .dicom import scan_dicom_folder

    config = ConvertConfig(args.dicom_dir.absolute(), args.bids_dir.absolute(), participant_label="x")
    check_paths(config)
    studies = write_mapping_template(scan_dicom_folder(config.dicom_dir), args.write_map.absolute(), config)
    log.info("wrote %d study(ies) to the mapping %s: it holds identifiers, keep it private", studies, args.write_map)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
