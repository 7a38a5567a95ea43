"""The one run configuration, built once from the command line and passed explicitly."""

from __future__ import annotations

import os
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
# CT as named today (BIDS has no CT yet): anat/*_ct.nii.gz, listed in .bidsignore.
SUPPORTED_SUFFIXES: tuple[str, ...] = (*MRI_SUFFIXES, "ct", "pet")
DEFAULT_SUFFIXES: tuple[str, ...] = ("T1w", "T2w", "FLAIR", "PDw", "PD", "T2starw", "ct", "pet")
METHODS: tuple[str, ...] = ("zero", "blur")
SKULL_STRIP_METHODS: tuple[str, ...] = ("template", "deepbet")
LAYOUTS: tuple[str, ...] = ("derivative", "release")
# Where a release keeps its masks, QC and manifest (a derivative dataset inside it).
RELEASE_DERIVATIVE = Path("derivatives") / "bidsdeface"
# Environment variables the command line reads (the SLURM script passes the key on through the first).
DATE_SHIFT_KEY_ENV = "BIDSDEFACE_DATE_SHIFT_KEY"
CONTAINER_IMAGE_ENV = "BIDSDEFACE_CONTAINER_IMAGE"
ITK_THREADS_ENV = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"
ITK_THREADER_ENV = "ITK_GLOBAL_DEFAULT_THREADER"


def itk_single_threaded() -> None:
    """Make ITK (ANTs registration, resampling) run on one thread, with no thread pool, in this process.

    ITK's Mattes mutual information adds each thread's share into one joint histogram in
    whatever order the threads finish, so a registration on two threads differs from run
    to run (the bundled example removed 184,555 to 185,553 face voxels over four runs with
    two threads; one thread repeats bit for bit). Cores are used by processes instead:
    ``--nprocs`` scans at once, and forked processes within a scan (:mod:`bidsdeface.forks`).
    The ``Platform`` threader keeps no pool of threads that a forked process would inherit
    dead. ITK reads both variables once, when it first runs: the command line calls this
    before it imports the stages, and each pool worker when it starts.
    """
    os.environ[ITK_THREADS_ENV] = "1"
    os.environ[ITK_THREADER_ENV] = "Platform"


def itk_is_single_threaded() -> bool:
    """Return whether :func:`itk_single_threaded` was called (a forked process then inherits no ITK threads)."""
    return os.environ.get(ITK_THREADS_ENV) == "1" and os.environ.get(ITK_THREADER_ENV) == "Platform"


def fitted_to_cores(nprocs: int, omp_nthreads: int, cores: int) -> tuple[int, int]:
    """Return ``nprocs`` and ``omp_nthreads`` lowered so that their product stays within ``cores``.

    >>> fitted_to_cores(2, 2, 2)
    (2, 1)
    >>> fitted_to_cores(4, 1, 2)
    (2, 1)
    """
    nprocs = max(1, min(nprocs, cores))
    return nprocs, max(1, min(omp_nthreads, cores // nprocs))


def usable_cores() -> int:
    """Return how many cores this process may run on (its CPU affinity, which SLURM and containers set)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
        ``zero`` (set to background) or ``blur`` (smooth tissue under a smoothed, sunken surface).
    remove_ears : bool
        Also remove the outer ears.
    brain_margin_mm : float
        Dilation of the template brain mask that is never modified.
    skull_strip : bool
        Also write a brain mask and a brain-only image per MRI and CT scan; the
        mask joins the template brain in the protected region.
    skull_strip_method : str
        ``template`` (deformable template brain refined on intensities) or
        ``deepbet`` (learned; optional extra).
    min_registration_score : float
        Scans whose registration score is below this fail instead of being written.
    nprocs, omp_nthreads : int
        Scans processed in parallel, and cores per scan: forked processes for parts of the
        registration, masks and QC, threads for the learned skull stripping (see
        :func:`itk_single_threaded`; :func:`fitted_to_cores` keeps their product within the cores).
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
    keep_failed : bool
        Write the images of a scan whose QC verdict is FAIL (defaced image, mask,
        brain outputs, sidecars) into ``failed/`` in the private folder, at the
        path they would have had in the output. Without it they are not written
        at all. Either way no image of such a scan goes into the output; its QC
        record and figures do.
    container_image : str or None
        The docker image this run is in (from ``$BIDSDEFACE_CONTAINER_IMAGE``, set by
        the image), recorded in ``GeneratedBy``.
    release_dir : Path or None
        ``--layout release``: the raw dataset to publish, whose ``derivatives/bidsdeface``
        is then ``output_dir``. None in the derivative layout.
    quasi_identifiers : tuple of str
        Participants columns measured for k-anonymity; every column that leaves but
        ``participant_id`` (and the sensitive column) when empty.
    sensitive_column : str or None
        The participants column whose values l-diversity spreads.
    k_anonymity, l_diversity : int or None
        Generalise the participants table until every class has k rows and l sensitive
        values (see :mod:`bidsdeface.privacy`); None only measures.
    max_suppressed_rows : float
        Share of participants rows that may be suppressed whole to reach k and l.
    ratings : Path or None
        Group level: a reviewer's exported ``qc_ratings.tsv`` to fold into the group files.
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
    skull_strip: bool = False
    skull_strip_method: str = "template"
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
    keep_failed: bool = False
    container_image: str | None = None
    release_dir: Path | None = None
    quasi_identifiers: tuple[str, ...] = ()
    sensitive_column: str | None = None
    k_anonymity: int | None = None
    l_diversity: int | None = None
    max_suppressed_rows: float = 0.05
    ratings: Path | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        if self.skull_strip_method not in SKULL_STRIP_METHODS:
            raise ValueError(
                f"skull_strip_method must be one of {SKULL_STRIP_METHODS}, not {self.skull_strip_method!r}"
            )
        if self.nprocs < 1 or self.omp_nthreads < 1:
            raise ValueError("nprocs and omp_nthreads must be >= 1")
        if self.date_shift_key is not None and not self.date_shift_key:
            raise ValueError("date_shift_key must not be empty")


@dataclass(frozen=True)
class ConvertConfig:
    """Everything a DICOM conversion needs (``bidsdeface-convert``).

    Attributes
    ----------
    dicom_dir : Path
        Folder searched recursively for DICOM files (never written to).
    output_dir : Path
        The BIDS dataset written (created when missing; other subjects in it are kept).
    participant_label, session_label : str
        Labels for a folder holding one patient's single study (without mapping).
    mapping : Path or None
        TSV assigning each study (StudyInstanceUID) a participant and session label.
    overwrite : bool
        Replace a subject/session already converted.
    scrub_policy, drop_dates, date_shift_key, private_dir :
        As in :class:`Config`: the same scrub rules and per-subject date offsets.
    work_dir : Path or None
        Scratch folder; a temporary folder when None.
    clean_pixel_text : bool
        Fill burned-in text found in the pixels with background instead of skipping the series.
    """

    dicom_dir: Path
    output_dir: Path
    participant_label: str = ""
    session_label: str = ""
    mapping: Path | None = None
    overwrite: bool = False
    scrub_policy: SitePolicy = field(default_factory=SitePolicy)
    drop_dates: bool = False
    date_shift_key: str | None = field(default=None, repr=False)
    private_dir: Path | None = None
    work_dir: Path | None = None
    pseudonymize: bool = False
    clean_pixel_text: bool = False

    def __post_init__(self) -> None:
        if self.pseudonymize:
            raise ValueError("conversion uses the labels it is given; pseudonymise when defacing")
        if self.date_shift_key is not None and not self.date_shift_key:
            raise ValueError("date_shift_key must not be empty")
        if self.mapping is None and not self.participant_label:
            raise ValueError("a participant label or a mapping is required")


@dataclass(frozen=True)
class ProfileOptions:
    """Which options of the DICOM Application Level Confidentiality Profile (PS3.15 E.3) apply.

    Each name follows the option it turns on; the Basic Profile always applies.

    Attributes
    ----------
    modified_dates : bool
        Retain Longitudinal Temporal Information with Modified Dates: dates shifted by the
        subject's offset (the BIDS path's), times of day kept. Off: dates are removed or emptied.
    patient_characteristics : bool
        Retain Patient Characteristics (sex, age, size, weight...; ages over 89 generalised).
    device_identity : bool
        Retain Device Identity (station name, serial numbers...).
    clean_descriptors : bool
        Clean Descriptors: keep a description only when it passes the sidecar text screen.
    retain_uids : bool
        Retain UIDs (study and frame of reference); series and instance UIDs are new anyway,
        because the pixels changed.
    safe_private : tuple of str
        Private attributes kept, as ``CREATOR:gggg,ee`` (creator, group, element byte); numbers only.
    """

    modified_dates: bool = True
    patient_characteristics: bool = False
    device_identity: bool = False
    clean_descriptors: bool = False
    retain_uids: bool = False
    safe_private: tuple[str, ...] = ()


@dataclass(frozen=True)
class DicomOutConfig:
    """Everything ``bidsdeface-dicom`` needs: DICOM in, de-identified and defaced DICOM out.

    Attributes
    ----------
    dicom_dir, output_dir : Path
        Folder searched for DICOM (never written to) and the folder written.
    participant_label, session_label, mapping :
        Who the studies are, as for ``bidsdeface-convert`` (patient IDs and names become
        the subject's pseudonym).
    profile : ProfileOptions
        The confidentiality profile's options.
    deface : Config
        The defacing settings (method, ears, brain margin, registration score, threads).
    overwrite : bool
        Redo series already exported.
    date_shift_key, private_dir, work_dir :
        As in :class:`Config`; the key also keys the new UIDs.
    clean_pixel_text : bool
        Fill burned-in text found in the pixels with background (Clean Pixel Data, 113101)
        instead of not exporting the series.
    """

    dicom_dir: Path
    output_dir: Path
    participant_label: str = ""
    session_label: str = ""
    mapping: Path | None = None
    profile: ProfileOptions = field(default_factory=ProfileOptions)
    deface: Config | None = None
    overwrite: bool = False
    date_shift_key: str | None = field(default=None, repr=False)
    private_dir: Path | None = None
    work_dir: Path | None = None
    clean_pixel_text: bool = False

    pseudonymize = True  # patient IDs and names always become pseudonyms

    @property
    def drop_dates(self) -> bool:
        """Dates are removed, not shifted, without the modified-dates option."""
        return not self.profile.modified_dates

    @property
    def defacing(self) -> Config:
        """The defacing settings (defaults when none were given)."""
        return self.deface or Config(self.dicom_dir, self.output_dir, work_dir=self.work_dir)

    def __post_init__(self) -> None:
        if self.date_shift_key is not None and not self.date_shift_key:
            raise ValueError("date_shift_key must not be empty")
        if self.mapping is None and not self.participant_label:
            raise ValueError("a participant label or a mapping is required")
