"""BIDS derivative names, dataset-level files and atomic writes."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from . import __version__
from .bidsnames import BIDS_VERSION, entity_rank, join_bids_name, split_bids_name
from .config import Config
from .files import json_bytes, write_bytes_atomic
from .policy import DEVICE_IDENTITY_KEYS, NEUTRAL_DATASET_NAME
from .standards import schema_version

log = logging.getLogger(__name__)

CODE_URL = "https://github.com/bidsdeface/bidsdeface"
MASK_ENTITIES: frozenset[str] = frozenset({"sub", "ses", "task", "acq", "ce", "rec", "run", "chunk"})
BRAIN_MASK_ENTITIES: frozenset[str] = frozenset({"sub", "ses", "acq", "ce", "rec", "run"})
BIDSIGNORE_LINES: tuple[str, ...] = (
    "figures",
    "logs",
    "*.html",
    "qc.tsv",
    "qc_ratings.tsv",
    "*_qc.json",
    "*_scrub.json",
    "*_release.json",
    "release_manifest.tsv",
    "release_left_out.tsv",
    "privacy_report.json",
    "*_ct.nii.gz",
    "*_ct.nii",
    "*_ct.json",
)
# --keep-failed: the images of scans that failed QC go here, inside the private folder
FAILED_FOLDER = "failed"
FAILED_README = """This folder holds the images of scans that FAILED bidsdeface's QC. Keep it private.

Each file has the path it would have had in the output dataset: defaced image,
defacing mask, brain outputs (--skull-strip) and their sidecars. Defacing did not
meet the QC limits, so a face may still be recognisable in these images. They are
not in the output dataset; its QC record and figures are (sub-<label>.html).
Never share this folder. Fix the scan (or accept it after review) and run again.
"""


def _dcm_code(value: str, meaning: str) -> dict[str, str]:
    return {"CodeValue": value, "CodingSchemeDesignator": "DCM", "CodeMeaning": meaning}


BASIC_PROFILE_CODES: tuple[dict[str, str], ...] = (
    _dcm_code("113100", "Basic Application Confidentiality Profile"),
    _dcm_code("113102", "Clean Recognizable Visual Features Option"),
)
SHIFTED_DATES_CODE = _dcm_code("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
DEVICE_IDENTITY_CODE = _dcm_code("113109", "Retain Device Identity Option")


def deidentification(config: Config, dates_shifted: bool) -> tuple[list[str], list[dict[str, str]]]:
    """Return ``DeidentificationMethod`` and ``DeidentificationMethodCodeSequence`` for a run.

    >>> methods, codes = deidentification(Config(Path("in"), Path("out")), dates_shifted=True)
    >>> [code["CodeValue"] for code in codes]
    ['113100', '113102', '113107']
    """
    removed = "face and ears" if config.remove_ears else "face"
    methods = [
        f"bidsdeface {__version__}: {removed} replaced ({config.method}); a dilated brain mask left bit-identical",
        "sidecar keys outside the bidsdeface allow-list removed; kept values checked against the BIDS "
        f"{schema_version()} schema and the DICOM dictionary and screened for identifiers; "
        "NIfTI header text fields and extensions removed",
        "dates and times shifted by one offset per subject" if dates_shifted else "dates and times removed",
    ]
    codes = list(BASIC_PROFILE_CODES)
    if dates_shifted:
        codes.append(SHIFTED_DATES_CODE)
    if config.pseudonymize:
        methods.append("subject and session labels replaced by pseudonyms")
    kept = config.scrub_policy.keep_sidecar_keys
    if kept:
        methods.append(f"kept at the data provider's request: {', '.join(kept)}")
    if set(kept) & DEVICE_IDENTITY_KEYS:
        codes.append(DEVICE_IDENTITY_CODE)
    return methods, codes


DERIVATIVE_README = """# Defaced derivative dataset

Written by bidsdeface. Each `*_desc-defaced_<suffix>.nii.gz` is the source scan with the
face (and, when requested, the ears) replaced, on the source grid with the source data type;
voxels of a dilated brain mask are bit-identical to the source. Each
`*_mod-<suffix>_defacemask.nii.gz` marks the replaced voxels (1). Sidecars list the source in
`Sources` and what was done in `DeidentificationMethod`.

When skull stripping was asked for, `*_desc-brain_<suffix>.nii.gz` is the defaced image with
everything outside the brain set to the background (`SkullStripped: true`), and
`*_desc-brain_mask.nii.gz` (`*_space-<suffix>_desc-brain_mask.nii.gz` for scans other than
T1w) is its brain mask on the scan's grid; `SkullStrippingMethod` says how it was made.
"""


def described_name(raw_name: str, description: str, extension: str | None = None) -> str:
    """Name of a derivative of ``raw_name`` with ``desc-<description>`` as the last entity.

    >>> described_name("sub-01_ses-A_T1w.nii.gz", "brain", ".json")
    'sub-01_ses-A_desc-brain_T1w.json'
    """
    entities, suffix, ext = split_bids_name(raw_name)
    entities = [(k, v) for k, v in entities if k != "desc"] + [("desc", description)]
    return join_bids_name(entities, suffix, ext if extension is None else extension)


def defaced_name(raw_name: str, extension: str | None = None) -> str:
    """Name of the defaced image (``desc-defaced`` added as the last entity).

    >>> defaced_name("sub-01_ses-A_T1w.nii.gz", ".json")
    'sub-01_ses-A_desc-defaced_T1w.json'
    """
    return described_name(raw_name, "defaced", extension)


def _folded_name(
    raw_name: str,
    kept_entities: frozenset[str],
    extra: list[tuple[str, str]],
    desc: str,
    suffix: str,
    extension: str | None,
) -> str:
    """Keep ``kept_entities`` of ``raw_name``, add ``extra``, fold the other entities into ``desc``."""
    entities, _, ext = split_bids_name(raw_name)
    kept = [(k, v) for k, v in entities if k in kept_entities] + extra
    folded = desc + "".join(f"{k}{v}" for k, v in entities if k not in kept_entities)
    if folded:
        kept.append(("desc", "".join(c for c in folded if c.isalnum())))
    kept.sort(key=lambda entity: entity_rank(entity[0]))
    return join_bids_name(kept, suffix, ext if extension is None else extension)


def mask_name(raw_name: str, extension: str | None = None) -> str:
    """Name of the defacing mask derivative (``mod-<suffix>_defacemask``).

    >>> mask_name("sub-01_acq-mprage_run-1_T1w.nii.gz")
    'sub-01_acq-mprage_run-1_mod-T1w_defacemask.nii.gz'
    >>> mask_name("sub-01_echo-2_part-mag_T2starw.nii.gz")
    'sub-01_mod-T2starw_desc-echo2partmag_defacemask.nii.gz'
    """
    suffix = split_bids_name(raw_name)[1]
    return _folded_name(raw_name, MASK_ENTITIES, [("mod", suffix)], "", "defacemask", extension)


def brain_mask_name(raw_name: str, extension: str | None = None) -> str:
    """Name of the brain mask derivative: ``desc-brain_mask``, in ``space-<suffix>`` unless the scan is a T1w.

    The T1w is the anatomical reference (no space entity, as fMRIPrep names it); the
    space entity keeps the masks of a subject's other scans apart.

    >>> brain_mask_name("sub-01_acq-mprage_run-1_T1w.nii.gz")
    'sub-01_acq-mprage_run-1_desc-brain_mask.nii.gz'
    >>> brain_mask_name("sub-01_ses-a_echo-2_T2w.nii.gz", ".json")
    'sub-01_ses-a_space-T2w_desc-brainecho2_mask.json'
    """
    suffix = split_bids_name(raw_name)[1]
    space = [] if suffix == "T1w" else [("space", suffix)]
    return _folded_name(raw_name, BRAIN_MASK_ENTITIES, space, "brain", "mask", extension)


def figure_name(output_dir: Path, relpath: Path, kind: str) -> Path:
    """Return where a scan's ``kind`` figure goes: ``sub-<label>/figures/<defaced name>_<kind>.png``.

    >>> figure_name(Path("out"), Path("sub-01/ses-a/anat/sub-01_ses-a_T1w.nii.gz"), "mosaic").as_posix()
    'out/sub-01/figures/sub-01_ses-a_desc-defaced_T1w_mosaic.png'
    """
    return output_dir / relpath.parts[0] / "figures" / defaced_name(relpath.name, f"_{kind}.png")


def prepare_failed_folder(private: Path) -> Path:
    """Create ``<private>/failed/`` with its README (see :data:`FAILED_README`); return it.

    Concurrent runs write identical bytes atomically, so none sees a partial README.
    """
    folder = private / FAILED_FOLDER
    readme = folder / "README.txt"
    if not readme.is_file() or readme.read_text() != FAILED_README:
        write_bytes_atomic(readme, FAILED_README.encode())
    return folder


def dataset_description(carried: dict[str, Any], container: str | None = None) -> dict[str, Any]:
    """Return the derivative ``dataset_description.json`` content.

    ``carried`` holds the input's fields that may leave, already screened
    (:func:`bidsdeface.scrub.scrub_dataset_description`). The content depends only
    on them, this version and the container image (``container``, a docker
    reference, when run inside it), so every concurrent participant run writes
    identical bytes.

    >>> dataset_description({}, "bidsdeface/bidsdeface:1.0")["GeneratedBy"][0]["Container"]
    {'Type': 'docker', 'Tag': 'bidsdeface/bidsdeface:1.0'}
    """
    generated_by: dict[str, Any] = {
        "Name": "bidsdeface",
        "Version": __version__,
        "CodeURL": CODE_URL,
        "Description": "Face (and optionally ear) removal with brain protection, and metadata scrubbing",
    }
    if container:
        generated_by["Container"] = {"Type": "docker", "Tag": container}
    description: dict[str, Any] = {
        "Name": carried.get("Name", NEUTRAL_DATASET_NAME),
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
    }
    description.update({key: value for key, value in carried.items() if key not in ("Name", "DatasetDOI")})
    if "DatasetDOI" in carried:
        description["SourceDatasets"] = [{"DOI": carried["DatasetDOI"]}]
    return description


def write_dataset_files(output_dir: Path, carried: dict[str, Any], container: str | None = None) -> None:
    """Write ``dataset_description.json``, ``.bidsignore`` and ``README.md`` unless identical ones exist.

    Call it holding the ``dataset`` :func:`output_lock`: the first run creates the
    files, later ones find them identical and leave them alone. Files from another
    version or another input description are replaced (and logged).
    """
    files = {
        output_dir / "dataset_description.json": json_bytes(dataset_description(carried, container)),
        output_dir / ".bidsignore": ("\n".join(BIDSIGNORE_LINES) + "\n").encode(),
        output_dir / "README.md": DERIVATIVE_README.encode(),
    }
    for path, content in files.items():
        if path.is_file() and path.read_bytes() == content:
            continue
        if path.is_file():
            log.info("%s: replaced (written by another bidsdeface version or for another input)", path.name)
        write_bytes_atomic(path, content)
