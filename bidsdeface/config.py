"""The one run configuration, built once from the command line and passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .policy import SitePolicy

MRI_SUFFIXES: tuple[str, ...] = (
    "T1w",
    "T2w",
    "FLAIR",
    "PDw",
    "PD",
    "T2starw",
    "T1map",
    "T2map",
    "PDT2",
    "inplaneT1",
    "inplaneT2",
    "angio",
    "UNIT1",
    "MP2RAGE",
)
DEFAULT_SUFFIXES: tuple[str, ...] = ("T1w", "T2w", "FLAIR", "PDw", "PD", "T2starw")
METHODS: tuple[str, ...] = ("zero", "blur")


@dataclass(frozen=True)
class Config:
    """Everything a run needs; immutable so that worker processes share it safely.

    Attributes
    ----------
    bids_dir, output_dir : Path
        Input BIDS dataset (never written to) and derivative output folder.
    analysis_level : str
        ``participant`` or ``group``.
    participant_labels, session_labels : tuple of str
        Labels without ``sub-``/``ses-``; empty means all.
    suffixes : tuple of str
        BIDS suffixes to deface (``T1w``, ``T2w``...).
    method : str
        ``zero`` (set to background) or ``blur`` (smooth + noise).
    remove_ears : bool
        Also remove the outer ears.
    brain_margin_mm : float
        Dilation of the template brain mask that is never modified.
    min_registration_score : float
        Scans whose registration score is below this fail instead of being written.
    nprocs, omp_nthreads : int
        Scans processed in parallel, and threads per scan for ANTs/ITK.
    work_dir : Path or None
        Scratch folder; a temporary folder when None.
    skip_bids_validation, overwrite : bool
        Skip validating the input; redo scans that are already finished.
    scrub_policy : SitePolicy
        A site's additions to the scrub allow-lists (see :mod:`bidsdeface.policy`).
    drop_dates : bool
        Remove dates and clock times instead of shifting them.
    date_shift_key : str or None
        Secret from which date offsets and pseudonyms are derived; random when None.
        Never shown in ``repr`` or logs.
    pseudonymize : bool
        Replace subject and session labels in every output.
    private_dir : Path or None
        Where offsets and pseudonyms are kept (never inside the output); beside
        the output when None.
    """

    bids_dir: Path
    output_dir: Path
    analysis_level: str = "participant"
    participant_labels: tuple[str, ...] = ()
    session_labels: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = DEFAULT_SUFFIXES
    method: str = "zero"
    remove_ears: bool = False
    brain_margin_mm: float = 6.0
    min_registration_score: float = 0.80
    blur_fwhm_mm: float = 12.0
    nprocs: int = 1
    omp_nthreads: int = 2
    work_dir: Path | None = None
    skip_bids_validation: bool = False
    overwrite: bool = False
    random_seed: int = 20261123
    scrub_policy: SitePolicy = field(default_factory=SitePolicy)
    drop_dates: bool = False
    date_shift_key: str | None = field(default=None, repr=False)
    pseudonymize: bool = False
    private_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        if self.nprocs < 1 or self.omp_nthreads < 1:
            raise ValueError("nprocs and omp_nthreads must be >= 1")
        if self.date_shift_key is not None and not self.date_shift_key:
            raise ValueError("date_shift_key must not be empty")
