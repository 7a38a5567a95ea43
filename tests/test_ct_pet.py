"""CT and PET end to end through the CLI, on real images and images derived from them.

One participant run defaces:

- ``cttilt``: the GE gantry-tilted head CT, converted by ``bidsdeface-convert``;
- ``ctoffset``: the same CT at half the in-plane resolution, stored as unsigned Hounsfield
  units + 1024 without header scaling;
- ``scct``: the clinical CT template (rescaled intensities, partial face) as a scan;
- ``ctbrain``, ``ctbone``, ``ct4095``: the converted CT through display windows (8-bit brain
  and bone windows, a 12-bit window from -1000 HU), air and padding clamped together at 0;
- ``pet3d``: the SPM PET template as a 3D PET (registered to the template brain);
- ``petmr`` (session ``01``): a T1w (the SPM single-subject T1, MNI space) and a 4D PET:
  six frames built from the SPM PET template, each scaled differently, with noise, under
  a header that is turned and moved (the rigid fit to the T1w must undo it).

The SPM and CT templates share one MNI grid with independent brain masks (SPM's
brain mask, the skull-stripped CT template): these check that the brain is untouched.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from bidsdeface.cli import main
from bidsdeface.images import ct_intensities
from bidsdeface.qc import LIMITS

from .conftest import (
    CT_WINDOWS,
    PARALLEL,
    SHARED,
    holes,
    make_dataset,
    needs_shared,
    run_validator,
    tree_digest,
    windowed_ct,
)

pytestmark = [needs_shared, pytest.mark.slow]

PET_REQUIRED = (
    "Manufacturer", "ManufacturersModelName", "Units", "TracerName", "TracerRadionuclide", "InjectedRadioactivity",
    "InjectedRadioactivityUnits", "InjectedMass", "InjectedMassUnits", "SpecificRadioactivity",
    "SpecificRadioactivityUnits", "ModeOfAdministration", "TimeZero", "ScanStart", "InjectionStart",
    "FrameTimesStart", "FrameDuration", "AcquisitionMode", "ImageDecayCorrected", "ImageDecayCorrectionTime",
    "ReconMethodName", "ReconMethodParameterLabels", "ReconFilterType", "AttenuationCorrection",
)  # fmt: skip
FRAME_SCALES = (0.2, 0.7, 1.0, 0.9, 0.8, 0.6)
FRAME_SECONDS = (30, 60, 120, 300, 300, 600)
PET_HEADER_TURN_DEG = (8.0, 0.0, 5.0)
PET_HEADER_SHIFT_MM = (4.0, 12.0, -10.0)
CT_AIR_TOLERANCE = 5.0


def _pet_sidecar(frames: int) -> dict:
    """A complete PET sidecar (the pet002 example's) for ``frames`` frames."""
    example = SHARED / "bids_examples/pet002/sub-01/ses-baseline/pet/sub-01_ses-baseline_pet.json"
    sidecar = json.loads(example.read_text())
    durations = list(FRAME_SECONDS[:frames]) if frames > 1 else [600]
    sidecar["FrameDuration"] = durations
    sidecar["FrameTimesStart"] = [int(t) for t in np.cumsum([0, *durations[:-1]])]
    sidecar.update({"InstitutionName": "St Example Hospital", "TracerName": "H2O"})
    return sidecar


def _write_pet(root: Path, label: str, image: nib.Nifti1Image, session: str = "") -> None:
    folder = root / f"sub-{label}" / (f"ses-{session}" if session else "") / "pet"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"sub-{label}{f'_ses-{session}' if session else ''}_trc-H2O_pet"
    nib.save(image, folder / f"{stem}.nii.gz")
    (folder / f"{stem}.json").write_text(json.dumps(_pet_sidecar(image.shape[3] if image.ndim == 4 else 1)))


def _offset_ct(converted: Path) -> nib.Nifti1Image:
    """The converted CT, every other voxel in-plane, as unsigned HU + 1024 without header scaling."""
    source = nib.load(converted)
    hu = np.asanyarray(source.dataobj)[::2, ::2, :].astype(np.float32)
    stored = np.clip(np.round(hu + 1024), 0, None).astype(np.uint16)
    image = nib.Nifti1Image(stored, source.affine @ np.diag([2.0, 2.0, 1.0, 1.0]))
    image.header.set_slope_inter(1.0, 0.0)
    return image


def _pet_frames(pet: nib.Nifti1Image) -> nib.Nifti1Image:
    """Six frames of the PET template, each scaled and with its own noise (Bq/mL, float32)."""
    rng = np.random.default_rng(7)
    base = pet.get_fdata(dtype=np.float32) * 12000.0
    frames = [scale * base + rng.normal(0, 150.0 * scale, base.shape) for scale in FRAME_SCALES]
    return nib.Nifti1Image(np.stack(frames, axis=-1).astype(np.float32), pet.affine)


def _moved(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """``image`` with a header turned and shifted (same voxels, other world position)."""
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("xyz", PET_HEADER_TURN_DEG, degrees=True).as_matrix()
    motion[:3, 3] = PET_HEADER_SHIFT_MM
    return nib.Nifti1Image(np.asanyarray(image.dataobj), motion @ image.affine, image.header)


@pytest.fixture(scope="module")
def ct_pet_run(tmp_path_factory: pytest.TempPathFactory, converted_dataset: Path) -> dict:
    root = tmp_path_factory.mktemp("ctpet")
    bids, out = root / "bids", root / "out"
    converted_ct = converted_dataset / "sub-ct/anat/sub-ct_ct.nii.gz"
    scans = {
        "cttilt": converted_ct,
        "ctoffset": _offset_ct(converted_ct),
        "scct": SHARED / "templates/clinical_ct/scct.nii.gz",
        **{label: windowed_ct(converted_ct, window) for label, window in CT_WINDOWS.items()},
    }
    make_dataset(bids, scans, "ct")
    shutil.copyfile(converted_ct.with_name("sub-ct_ct.json"), bids / "sub-cttilt/anat/sub-cttilt_ct.json")
    (bids / ".bidsignore").write_text("*_ct.nii.gz\n*_ct.json\n")
    pet = nib.load(SHARED / "templates/spm12/PET.nii.gz")
    _write_pet(bids, "pet3d", pet)
    anat = bids / "sub-petmr/ses-01/anat"
    anat.mkdir(parents=True)
    shutil.copyfile(SHARED / "templates/spm12/single_subj_T1.nii.gz", anat / "sub-petmr_ses-01_T1w.nii.gz")
    (anat / "sub-petmr_ses-01_T1w.json").write_text(json.dumps({"Manufacturer": "test"}))
    _write_pet(bids, "petmr", _moved(_pet_frames(pet)), session="01")
    participants = "participant_id\n" + "".join(f"sub-{s}\n" for s in [*scans, "pet3d", "petmr"])
    (bids / "participants.tsv").write_text(participants)
    before = tree_digest(bids)
    code = main([str(bids), str(out), "participant", "--skull-strip", *PARALLEL])
    return {"bids": bids, "out": out, "code": code, "before": before}


def _outputs(run: dict, relpath: str, mask_relpath: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Input and output data (real values), the removal mask and the QC record of one scan."""
    raw = nib.load(run["bids"] / relpath).get_fdata(dtype=np.float32)
    defaced = Path(relpath.replace("_ct.nii.gz", "_desc-defaced_ct.nii.gz").replace("_pet.", "_desc-defaced_pet."))
    out = nib.load(run["out"] / defaced).get_fdata(dtype=np.float32)
    removed = np.asanyarray(nib.load(run["out"] / mask_relpath).dataobj) > 0
    qc = json.loads((run["out"] / str(defaced).replace(".nii.gz", "_qc.json")).read_text())
    return raw, out, removed, qc


def test_run_succeeds_input_untouched_output_valid(ct_pet_run: dict) -> None:
    assert ct_pet_run["code"] == 0
    assert tree_digest(ct_pet_run["bids"]) == ct_pet_run["before"]
    result = run_validator(ct_pet_run["out"])
    assert result.returncode == 0, result.stdout[-3000:]


CT_CASES = {
    "cttilt": ("HU", -1000.0),
    "ctoffset": ("HU+1024", 24.0),
    "scct": ("rescaled", None),
    **dict.fromkeys(CT_WINDOWS, ("windowed", 0.0)),
}
INTENSITIES = {"HU": "Hounsfield units (", "HU+1024": "Hounsfield units + 1024", "rescaled": "rescaled",
               "windowed": "windowed intensities, air clamped at the minimum"}  # fmt: skip


@pytest.mark.parametrize("label", CT_CASES)
def test_ct_face_becomes_air_brain_untouched(ct_pet_run: dict, label: str) -> None:
    storage, expected_air = CT_CASES[label]
    raw, out, removed, qc = _outputs(
        ct_pet_run, f"sub-{label}/anat/sub-{label}_ct.nii.gz", f"sub-{label}/anat/sub-{label}_mod-ct_defacemask.nii.gz"
    )
    found = ct_intensities(raw)
    assert found.storage == storage
    if expected_air is not None:
        assert abs(found.air - expected_air) <= CT_AIR_TOLERANCE
    assert qc["Method"]["intensities"].startswith(INTENSITIES[storage])
    # every removed voxel holds the scan's own air; every other voxel is bit-identical
    assert removed.sum() > 2000
    assert np.all(np.abs(out[removed] - found.air) <= CT_AIR_TOLERANCE)
    assert np.array_equal(out[~removed], raw[~removed])
    assert qc["Metrics"]["brain_voxels_touched"] == 0
    # the face had tissue, and it is gone
    assert qc["Metrics"]["face_removed_fraction"] > 0.5
    assert np.sum(raw[removed] > found.head_threshold) > 2000
    assert qc["Status"] != "FAIL", qc["Reasons"]
    assert qc["Metrics"]["face_check"] == "run"
    after = qc["Metrics"]["face_score_after"]
    assert after is None or after < LIMITS.face_score, f"a face is found after defacing ({after})"


def test_tilted_ct_removal_is_in_front_and_below(ct_pet_run: dict) -> None:
    """The tilted field of view reaches the nose only in its lowest slices: the removal is there."""
    source = nib.load(ct_pet_run["bids"] / "sub-cttilt/anat/sub-cttilt_ct.nii.gz")
    raw, _, removed, _ = _outputs(
        ct_pet_run, "sub-cttilt/anat/sub-cttilt_ct.nii.gz", "sub-cttilt/anat/sub-cttilt_mod-ct_defacemask.nii.gz"
    )
    head = raw > -500
    removed_tissue = removed & head
    assert 10_000 < removed_tissue.sum() < 0.05 * head.sum()

    def centre_ras(mask: np.ndarray) -> np.ndarray:
        return nib.affines.apply_affine(source.affine, np.argwhere(mask).mean(axis=0))

    anterior, superior = centre_ras(removed_tissue)[1:] - centre_ras(head)[1:]
    assert anterior > 40 and superior < -20, (anterior, superior)


def _mni_brain(like: Path) -> np.ndarray:
    """SPM's MNI brain mask, on the grid of ``like`` (an image on the same 2 mm MNI grid)."""
    mask = nib.load(SHARED / "templates/spm12/brainmask.nii.gz")
    assert mask.shape == nib.load(like).shape[:3]
    return mask.get_fdata() > 0.5


def test_ct_template_brain_is_untouched(ct_pet_run: dict) -> None:
    """SPM's brain mask, on the CT template's MNI grid, marks the brain independently of our masks."""
    relpath = "sub-scct/anat/sub-scct_ct.nii.gz"
    raw, out, removed, _ = _outputs(ct_pet_run, relpath, "sub-scct/anat/sub-scct_mod-ct_defacemask.nii.gz")
    brain = _mni_brain(ct_pet_run["bids"] / relpath)
    assert not np.any(removed & brain)
    assert np.array_equal(out[brain], raw[brain])


@pytest.mark.parametrize("label", ["pet3d", "petmr"])
def test_pet_frames_masked_identically_brain_unchanged(ct_pet_run: dict, label: str) -> None:
    session = "ses-01/" if label == "petmr" else ""
    stem = f"sub-{label}{'_ses-01' if session else ''}"
    relpath = f"sub-{label}/{session}pet/{stem}_trc-H2O_pet.nii.gz"
    mask = f"sub-{label}/{session}anat/{stem}_mod-pet_desc-trcH2O_defacemask.nii.gz"
    raw, out, removed, qc = _outputs(ct_pet_run, relpath, mask)
    raw4, out4 = raw.reshape((*raw.shape[:3], -1)), out.reshape((*out.shape[:3], -1))
    assert removed.sum() > 2000
    for frame in range(raw4.shape[3]):
        assert np.all(out4[..., frame][removed] == 0)
        assert np.array_equal(out4[..., frame][~removed], raw4[..., frame][~removed])
    brain = _mni_brain(ct_pet_run["bids"] / relpath)
    assert not np.any(removed & brain)
    assert qc["Metrics"]["brain_voxels_touched"] == 0
    expected_summary = "time-weighted mean of 6 frames" if label == "petmr" else "3D"
    assert qc["Method"]["reference_volume"] == expected_summary
    sidecar = json.loads((ct_pet_run["out"] / relpath.replace("_pet.nii.gz", "_desc-defaced_pet.json")).read_text())
    assert all(key in sidecar for key in PET_REQUIRED), [k for k in PET_REQUIRED if k not in sidecar]
    assert "InstitutionName" not in sidecar
    frames = raw4.shape[3]
    assert sidecar["FrameDuration"] == (list(FRAME_SECONDS[:frames]) if frames > 1 else [600])
    assert qc["Status"] != "FAIL", qc["Reasons"]


def test_pet_with_t1w_goes_through_it(ct_pet_run: dict) -> None:
    """The PET is placed rigidly on the T1w despite its moved header.

    Both images hold MNI-space anatomy on the same voxel grid (only the PET header
    moved), so the two defacing masks must cover the same voxels.
    """
    out = ct_pet_run["out"] / "sub-petmr/ses-01"
    pet_qc = json.loads((out / "pet/sub-petmr_ses-01_trc-H2O_desc-defaced_pet_qc.json").read_text())
    assert pet_qc["Method"]["registration_path"].startswith("rigid to sub-petmr_ses-01_T1w.nii.gz")
    t1 = np.asanyarray(nib.load(out / "anat/sub-petmr_ses-01_mod-T1w_defacemask.nii.gz").dataobj) > 0
    pet = np.asanyarray(nib.load(out / "anat/sub-petmr_ses-01_mod-pet_desc-trcH2O_defacemask.nii.gz").dataobj) > 0
    dice = 2 * np.sum(pet & t1) / (pet.sum() + t1.sum())
    assert dice > 0.85, f"PET and T1w defacing masks overlap {dice:.2f}"


def test_ct_brain_only_image_is_air_outside_the_mask(ct_pet_run: dict) -> None:
    """The rescaled CT template: its brain-only image keeps the brain and sets the rest to its own air."""
    anat = ct_pet_run["out"] / "sub-scct" / "anat"
    mask = np.asanyarray(nib.load(anat / "sub-scct_space-ct_desc-brain_mask.nii.gz").dataobj) > 0
    assert ndimage.label(mask)[1] == 1 and holes(mask) == 0
    brain = nib.load(anat / "sub-scct_desc-brain_ct.nii.gz").get_fdata()
    defaced = nib.load(anat / "sub-scct_desc-defaced_ct.nii.gz").get_fdata()
    air = json.loads((anat / "sub-scct_desc-defaced_ct_qc.json").read_text())["Method"]["background_value"]
    assert np.allclose(brain[~mask], air, atol=0.5)
    assert np.array_equal(brain[mask], defaced[mask])


@pytest.mark.parametrize("label", ["cttilt", "ctoffset", *CT_WINDOWS])
def test_real_ct_brain_masks_are_whole(ct_pet_run: dict, label: str) -> None:
    anat = ct_pet_run["out"] / f"sub-{label}" / "anat"
    mask = np.asanyarray(nib.load(anat / f"sub-{label}_space-ct_desc-brain_mask.nii.gz").dataobj) > 0
    record = json.loads((anat / f"sub-{label}_desc-defaced_ct_qc.json").read_text())
    assert ndimage.label(mask)[1] == 1 and holes(mask) == 0
    # the upper cranium only is in view: the mask holds about what the template brain does there
    assert 0.8 <= record["Metrics"]["brain_template_volume_ratio"] <= 1.25
    assert record["Method"]["skull_strip_method"] == "ct-window"


def test_pet_is_not_skull_stripped(ct_pet_run: dict) -> None:
    out = ct_pet_run["out"]
    assert not list((out / "sub-pet3d").rglob("*desc-brain*"))
    record = json.loads(next((out / "sub-pet3d").rglob("*_qc.json")).read_text())
    assert record["Method"]["skull_strip"] == "not done: PET is not skull-stripped"
