"""Command line: ``bidsdeface-dicom DICOM_DIR OUTPUT_DIR [options]`` (DICOM in, de-identified defaced DICOM out).

The parser pieces, logging set-up and error guard it shares with ``bidsdeface``
live in :mod:`bidsdeface.cli`; the who-is-who options in :mod:`bidsdeface.convert_cli`.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .cli import (
    _add_defacing_options,
    _add_pixel_text_option,
    _configure_logging,
    _guarded,
    _HelpFormatter,
    _Parser,
    _positive_int,
)
from .config import DATE_SHIFT_KEY_ENV, Config, DicomOutConfig, ProfileOptions, itk_single_threaded
from .convert_cli import _add_who_options, check_who, who_settings
from .errors import EXIT_DATA, EXIT_OK, sigterm_raises

log = logging.getLogger("bidsdeface")

DESCRIPTION = (
    "Export a DICOM folder as de-identified, defaced DICOM (for a PACS, XNAT or an imaging archive). "
    "Headers follow DICOM PS3.15 Annex E, Table E.1-1 (the Basic Application Level Confidentiality "
    "Profile, read from a machine-readable copy of the standard) with the options below; private "
    "attributes, curves and overlays are removed; UIDs are replaced by 2.25.<HMAC-SHA256> keyed with "
    "the project's secret (references stay consistent); patient ID and name become the subject's "
    "pseudonym; dates move by the subject's offset (the same as bidsdeface's BIDS output with the same "
    "key). The face is removed in the pixels of every instance (classic or enhanced multi-frame) by "
    "the same registration and masks as the BIDS path, and a dilated brain mask is never touched. "
    "Screen captures, dose and structured reports, localizers and broken series are not exported. "
    "Each series is checked (QC verdict, and a self-check of identifiers, dates, UIDs, patient IDs "
    "and face pixels) and written only if both pass. DICOM_DIR is never written to."
)
EPILOG = (
    "Output: OUTPUT_DIR/sub-<pseudonym>/[ses-<label>/]series-<number>-<tail>/*.dcm, qc/ (figures, "
    "records and masks), report.html and export_report.tsv (every series, its decision and reason). The "
    "old-to-new UID and patient ID mappings (old,new CSV) go to the private folder. "
    "Exit codes: 0 ok; 18 every series was skipped by rule; 64 usage error; 65 some series failed or "
    "were withheld (the others were written); 66 no DICOM found; 70 internal error; 73 cannot write. "
    "Example: bidsdeface-dicom /pacs/export/patient7 /export/deid --participant-label 07"
)
SAFE_PRIVATE = re.compile(r"^(?P<creator>[^:]{1,64}):(?P<group>[0-9A-Fa-f]{4}),(?P<element>[0-9A-Fa-f]{2})$")


def _safe_private(text: str) -> str:
    """Check a ``CREATOR:gggg,ee`` private attribute (odd group).

    >>> _safe_private("SIEMENS CSA HEADER:0029,08")
    'SIEMENS CSA HEADER:0029,08'
    """
    match = SAFE_PRIVATE.match(text)
    if match is None or int(match["group"], 16) % 2 == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected CREATOR:gggg,ee with an odd group, e.g. 'ACME 1.0:0019,10'"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    """Return the ``bidsdeface-dicom`` parser (pure: no I/O)."""
    parser = _Parser(prog="bidsdeface-dicom", description=DESCRIPTION, epilog=EPILOG, formatter_class=_HelpFormatter)
    parser.add_argument("dicom_dir", type=Path, help="folder searched recursively for DICOM files (read only)")
    parser.add_argument("output_dir", type=Path, help="folder the de-identified DICOM is written to")
    _add_who_options(parser, write_map=False)
    _add_profile_options(parser)
    _add_pixel_text_option(parser)
    _add_defacing_options(parser)
    parser.add_argument("--omp-nthreads", type=_positive_int, default=2, help="cores per series")
    parser.add_argument("-w", "--work-dir", type=Path, default=None, help="scratch folder (default: system temp)")
    parser.add_argument("--overwrite", action="store_true", help="redo series already exported")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug output and tracebacks")
    parser.add_argument("--version", action="version", version=f"bidsdeface-dicom {__version__}")
    return parser


def _add_profile_options(parser: argparse.ArgumentParser) -> None:
    """Add the confidentiality profile's options (PS3.15 E.3) and the secrets."""
    profile = parser.add_argument_group(
        "confidentiality profile options (DICOM PS3.15 E.3; each adds its code to DeidentificationMethodCodeSequence)",
        "The Basic Profile (113100) and Clean Recognizable Visual Features (113102: the face) always apply.",
    )
    profile.add_argument(
        "--no-modified-dates",
        action="store_true",
        help="do not apply Retain Longitudinal Temporal Information with Modified Dates (113107, on by default: "
        "dates move by the subject's offset, times of day are kept); dates are then emptied or removed",
    )
    profile.add_argument("--retain-patient-characteristics", action="store_true",
                         help="113108: keep sex, size, weight...; ages over 89 are written as 089Y")  # fmt: skip
    profile.add_argument("--retain-device-identity", action="store_true",
                         help="113109: keep station name, serial numbers and the like")  # fmt: skip
    profile.add_argument("--clean-descriptors", action="store_true",
                         help="113105: keep a description (series, protocol...) only if it passes the same text "
                         "screen as sidecar values; otherwise it is removed")  # fmt: skip
    profile.add_argument("--retain-uids", action="store_true",
                         help="113110: keep study and frame-of-reference UIDs (series and instance UIDs are new "
                         "anyway: the pixels changed)")  # fmt: skip
    profile.add_argument("--safe-private", nargs="+", type=_safe_private, default=[], metavar="CREATOR:gggg,ee",
                         help="113111: keep these private attributes when they hold numbers")  # fmt: skip
    profile.add_argument(
        "--date-shift-key",
        default=None,
        metavar="SECRET",
        help=f"secret for date offsets, pseudonyms and new UIDs; also read from ${DATE_SHIFT_KEY_ENV} (default: "
        "random values recorded in the private folder, so re-runs agree)",
    )
    profile.add_argument("--private-dir", type=Path, default=None, metavar="DIR",
                         help="private folder for offsets, pseudonyms and the UID and patient mappings; never share "
                         "it (default: OUTPUT_DIR's name + '-private', beside it)")  # fmt: skip


def config_from_args(args: argparse.Namespace) -> DicomOutConfig:
    """Build the frozen export configuration from parsed arguments.

    Raises
    ------
    UsageError
        Labels and mapping are missing, invalid or given together.
    """
    check_who(args)
    work_dir = None if args.work_dir is None else args.work_dir.absolute()
    deface = Config(args.dicom_dir.absolute(), args.output_dir.absolute(), method=args.method,
                    remove_ears=args.remove_ears, brain_margin_mm=args.brain_margin,
                    min_registration_score=args.min_registration_score, omp_nthreads=args.omp_nthreads,
                    work_dir=work_dir)  # fmt: skip
    profile = ProfileOptions(
        modified_dates=not args.no_modified_dates,
        patient_characteristics=args.retain_patient_characteristics,
        device_identity=args.retain_device_identity,
        clean_descriptors=args.clean_descriptors,
        retain_uids=args.retain_uids,
        safe_private=tuple(args.safe_private),
    )
    return DicomOutConfig(
        dicom_dir=args.dicom_dir.absolute(),
        output_dir=args.output_dir.absolute(),
        **who_settings(args),
        profile=profile,
        deface=deface,
        overwrite=args.overwrite,
        clean_pixel_text=args.clean_pixel_text,
        date_shift_key=args.date_shift_key or os.environ.get(DATE_SHIFT_KEY_ENV) or None,
        private_dir=None if args.private_dir is None else args.private_dir.absolute(),
        work_dir=work_dir,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bidsdeface-dicom``; return the exit code (never raises for bad input)."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    itk_single_threaded()
    from .dicomout import export_dicom

    log.info("bidsdeface-dicom %s", __version__)

    def work() -> int:
        rows = export_dicom(config_from_args(args))
        counts = {d: sum(r.decision == d for r in rows) for d in ("exported", "skipped", "withheld", "failed")}
        log.info("finished: %s", ", ".join(f"{n} {d}" for d, n in counts.items()))
        return EXIT_DATA if counts["failed"] or counts["withheld"] else EXIT_OK

    with sigterm_raises():
        return _guarded(work)


if __name__ == "__main__":
    sys.exit(main())
