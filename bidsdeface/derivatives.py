"""BIDS derivative names, dataset-level files and atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib

from . import __version__
from .config import Config
from .policy import DEVICE_IDENTITY_KEYS

CODE_URL = "https://github.com/bidsdeface/bidsdeface"
BIDS_VERSION = "1.10.0"
TEMP_PREFIX = ".bidsdeface-tmp-"
# BIDS entity order; a defacemask may carry only MASK_ENTITIES, so the others of its
# source (echo, part, inv...) are folded into its desc label to keep names unique.
ENTITY_ORDER: tuple[str, ...] = (
    "sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain", "rec", "dir", "run",
    "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space", "split", "recording", "chunk", "seg",
    "res", "den", "label", "desc",
)  # fmt: skip
MASK_ENTITIES: frozenset[str] = frozenset({"sub", "ses", "task", "acq", "ce", "rec", "run", "chunk"})
BIDSIGNORE_LINES: tuple[str, ...] = (
    "figures",
    "logs",
    "*.html",
    "qc.tsv",
    "*_qc.json",
    "*_scrub.json",
    "*_ct.nii.gz",
    "*_ct.nii",
    "*_ct.json",
)


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
        "sidecar keys outside the bidsdeface allow-list removed; NIfTI header text fields and extensions removed",
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
"""


def split_bids_name(name: str) -> tuple[list[tuple[str, str]], str, str]:
    """Split a BIDS file name into entities, suffix and extension.

    >>> split_bids_name("sub-01_ses-A_run-2_T1w.nii.gz")
    ([('sub', '01'), ('ses', 'A'), ('run', '2')], 'T1w', '.nii.gz')
    """
    stem, dot, extension = name.partition(".")
    *pairs, suffix = stem.split("_")
    entities = [tuple(pair.split("-", 1)) for pair in pairs]
    if not entities or entities[0][0] != "sub" or any(len(entity) != 2 for entity in entities):
        raise ValueError(f"{name}: not a BIDS file name")
    return [(key, value) for key, value in entities], suffix, dot + extension


def join_bids_name(entities: list[tuple[str, str]], suffix: str, extension: str) -> str:
    """Inverse of :func:`split_bids_name`.

    >>> join_bids_name([("sub", "01")], "T1w", ".json")
    'sub-01_T1w.json'
    """
    return "_".join([f"{key}-{value}" for key, value in entities] + [suffix]) + extension


def defaced_name(raw_name: str, extension: str | None = None) -> str:
    """Name of the defaced image (``desc-defaced`` added as the last entity).

    >>> defaced_name("sub-01_ses-A_T1w.nii.gz", ".json")
    'sub-01_ses-A_desc-defaced_T1w.json'
    """
    entities, suffix, ext = split_bids_name(raw_name)
    entities = [(k, v) for k, v in entities if k != "desc"] + [("desc", "defaced")]
    return join_bids_name(entities, suffix, ext if extension is None else extension)


def mask_name(raw_name: str, extension: str | None = None) -> str:
    """Name of the defacing mask derivative (``mod-<suffix>_defacemask``).

    >>> mask_name("sub-01_acq-mprage_run-1_T1w.nii.gz")
    'sub-01_acq-mprage_run-1_mod-T1w_defacemask.nii.gz'
    >>> mask_name("sub-01_echo-2_part-mag_T2starw.nii.gz")
    'sub-01_mod-T2starw_desc-echo2partmag_defacemask.nii.gz'
    """
    entities, suffix, ext = split_bids_name(raw_name)
    kept = [(k, v) for k, v in entities if k in MASK_ENTITIES] + [("mod", suffix)]
    folded = "".join(f"{k}{v}" for k, v in entities if k not in MASK_ENTITIES)
    if folded:
        kept.append(("desc", "".join(c for c in folded if c.isalnum())))
    kept.sort(key=lambda entity: ENTITY_ORDER.index(entity[0]) if entity[0] in ENTITY_ORDER else len(ENTITY_ORDER))
    return join_bids_name(kept, "defacemask", ext if extension is None else extension)


def figure_name(output_dir: Path, relpath: Path, kind: str) -> Path:
    """Return where a scan's ``kind`` figure goes: ``sub-<label>/figures/<defaced name>_<kind>.png``.

    >>> figure_name(Path("out"), Path("sub-01/ses-a/anat/sub-01_ses-a_T1w.nii.gz"), "mosaic").as_posix()
    'out/sub-01/figures/sub-01_ses-a_desc-defaced_T1w_mosaic.png'
    """
    return output_dir / relpath.parts[0] / "figures" / defaced_name(relpath.name, f"_{kind}.png")


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place on success.

    The temporary name keeps ``final``'s extensions (so writers pick the right
    format) and starts with a dot, so half-written files are never under a final
    name and are easy to sweep up (:func:`remove_stale_temporaries`).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=f"-{final.name}", dir=final.parent)
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        with open(temp, "rb+") as stream:
            os.fsync(stream.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as temp:
        temp.write_bytes(data)


def write_json_atomic(path: Path, content: dict[str, Any]) -> None:
    """Write a JSON file atomically (insertion order, 2-space indent)."""
    write_bytes_atomic(path, (json.dumps(content, indent=2, ensure_ascii=False) + "\n").encode())


def write_nifti_atomic(path: Path, image: nib.Nifti1Image) -> None:
    """Save a NIfTI image atomically (gzip header without name or time)."""
    with atomic_path(path) as temp:
        nib.save(image, temp)


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporary files left by a killed run below ``folder``; return how many."""
    removed = 0
    if folder.is_dir():
        for stale in folder.rglob(f"{TEMP_PREFIX}*"):
            stale.unlink(missing_ok=True)
            removed += 1
    return removed


def dataset_description(source: dict[str, Any]) -> dict[str, Any]:
    """Return the derivative ``dataset_description.json`` content.

    It depends only on the input's description and this version, so every
    concurrent participant run writes identical bytes.
    """
    description: dict[str, Any] = {
        "Name": f"{source.get('Name', 'BIDS dataset')} (defaced with bidsdeface)",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "bidsdeface",
                "Version": __version__,
                "CodeURL": CODE_URL,
                "Description": "Face (and optionally ear) removal with brain protection, and metadata scrubbing",
            }
        ],
    }
    for key in ("License", "Authors", "Acknowledgements", "HowToAcknowledge", "Funding"):
        if key in source:
            description[key] = source[key]
    if "DatasetDOI" in source:
        description["SourceDatasets"] = [{"DOI": source["DatasetDOI"]}]
    return description


def write_dataset_files(output_dir: Path, source_description: dict[str, Any]) -> None:
    """Write ``dataset_description.json`` and ``.bidsignore`` unless identical ones exist."""
    files = {
        output_dir / "dataset_description.json": (
            json.dumps(dataset_description(source_description), indent=2, ensure_ascii=False) + "\n"
        ).encode(),
        output_dir / ".bidsignore": ("\n".join(BIDSIGNORE_LINES) + "\n").encode(),
        output_dir / "README.md": DERIVATIVE_README.encode(),
    }
    for path, content in files.items():
        if not path.is_file() or path.read_bytes() != content:
            write_bytes_atomic(path, content)
