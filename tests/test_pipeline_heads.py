"""End to end through the CLI on every real MRI head in ../shared/data.

One participant run defaces all heads (one subject each, including a head whose
header orientation is wrong); the assertions then check each output against the
input and against an independent registration of the same template.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from bidsdeface.cli import main
from bidsdeface.config import Config
from bidsdeface.deface import dilate_mm
from bidsdeface.images import load_scan
from bidsdeface.register import register_template, warp_template_mask
from bidsdeface.templates import load_template

from .conftest import DICOM_HEADS, NIFTI_HEADS, SHARED, make_dataset, needs_shared, run_validator, tree_digest

pytestmark = [needs_shared, pytest.mark.slow]

BRAIN_MARGIN_MM = 6.0
REGISTRATION_TOLERANCE_MM = 4.0
HEADS = [*NIFTI_HEADS, "trio", "prismaHFS", "prismaHFP", "ixiYaw180"]
SUFFIX = {"clinicalT2": "T2w"}
BLUR_HEADS = ["ixi", "prismaHFP"]
# A second, independent registration is costly (~30 s): done for the hardest cases
# (weakest contrast, wrong header, prone, converted here from DICOM).
INDEPENDENT_CHECK_HEADS = ["clinicalT2", "ixiYaw180", "prismaHFP"]


def _yawed(path: Path) -> nib.Nifti1Image:
    """The IXI head with a header that turns it round (a wrong orientation)."""
    image = nib.load(path)
    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_euler("z", 180, degrees=True).as_matrix()
    return nib.Nifti1Image(np.asanyarray(image.dataobj), turn @ image.affine)


@pytest.fixture(scope="module")
def heads_run(tmp_path_factory: pytest.TempPathFactory, converted_dataset: Path) -> dict:
    base = tmp_path_factory.mktemp("heads")
    sources: dict[str, Path | nib.Nifti1Image] = {label: SHARED / relative for label, relative in NIFTI_HEADS.items()}
    sources.update({name: converted_dataset / f"sub-{name}/anat/sub-{name}_T1w.nii.gz" for name in DICOM_HEADS})
    sources["ixiYaw180"] = _yawed(SHARED / NIFTI_HEADS["ixi"])
    bids = make_dataset(base / "bids", {k: v for k, v in sources.items() if k not in SUFFIX})
    make_dataset(base / "bids", {k: v for k, v in sources.items() if k in SUFFIX}, suffix="T2w")
    (bids / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{h}\n" for h in HEADS))
    before = tree_digest(bids)
    out = base / "out"
    code = main([str(bids), str(out), "participant", "--brain-margin", str(BRAIN_MARGIN_MM)])
    blurred = base / "blurred"
    blur_code = main(
        [
            str(bids),
            str(blurred),
            "participant",
            "--method",
            "blur",
            "--remove-ears",
            "--participant-label",
            *BLUR_HEADS,
            "--skip-bids-validation",
        ]
    )
    return {"bids": bids, "out": out, "code": code, "before": before, "blurred": blurred, "blur_code": blur_code}


def _paths(run: dict, label: str, out_key: str = "out") -> tuple[Path, Path, Path]:
    suffix = SUFFIX.get(label, "T1w")
    anat = Path(f"sub-{label}") / "anat"
    return (
        run["bids"] / anat / f"sub-{label}_{suffix}.nii.gz",
        run[out_key] / anat / f"sub-{label}_desc-defaced_{suffix}.nii.gz",
        run[out_key] / anat / f"sub-{label}_mod-{suffix}_defacemask.nii.gz",
    )


def test_run_succeeds_and_input_untouched(heads_run: dict) -> None:
    assert heads_run["code"] == 0
    assert heads_run["blur_code"] == 0
    assert tree_digest(heads_run["bids"]) == heads_run["before"]


def test_output_is_valid_bids(heads_run: dict) -> None:
    result = run_validator(heads_run["out"])
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize("label", HEADS)
def test_face_removed_brain_identical(heads_run: dict, label: str) -> None:
    raw_path, out_path, mask_path = _paths(heads_run, label)
    raw, out, removed = nib.load(raw_path), nib.load(out_path), nib.load(mask_path)
    raw_data = np.asanyarray(raw.dataobj.get_unscaled())
    out_data = np.asanyarray(out.dataobj.get_unscaled())
    removed_mask = np.asanyarray(removed.dataobj) > 0
    # grid, dtype, affine, codes and scaling unchanged; free text cleared
    assert out.shape == raw.shape and out.get_data_dtype() == raw.get_data_dtype()
    assert np.allclose(out.affine, raw.affine)
    assert int(out.header["qform_code"]) == int(raw.header["qform_code"])
    assert int(out.header["sform_code"]) == int(raw.header["sform_code"])
    assert (out.dataobj.slope, out.dataobj.inter) == (raw.dataobj.slope, raw.dataobj.inter)
    assert out.header["descrip"].item() == b"" and out.header["aux_file"].item() == b""
    # removed voxels are background, every other voxel is bit-identical
    assert removed_mask.sum() > 1000
    assert np.all(out_data[removed_mask] == 0)
    assert np.array_equal(out_data[~removed_mask], raw_data[~removed_mask])


@pytest.mark.parametrize("label", INDEPENDENT_CHECK_HEADS)
def test_independent_registration_agrees(heads_run: dict, label: str) -> None:
    """A second registration of the same scan: its face region is gone, its brain region untouched."""
    raw_path, out_path, mask_path = _paths(heads_run, label)
    raw_data = np.asanyarray(nib.load(raw_path).dataobj.get_unscaled())
    out_data = np.asanyarray(nib.load(out_path).dataobj.get_unscaled())
    removed_mask = np.asanyarray(nib.load(mask_path).dataobj) > 0
    scan = load_scan(raw_path)
    template = load_template()
    config = Config(bids_dir=Path("."), output_dir=Path("."))
    registration = register_template(scan, template, config)
    brain = warp_template_mask(scan, template.brain, template, registration)
    face = warp_template_mask(scan, template.face, template, registration)
    # two registrations of one scan agree to within about 2 mm (T2w, the weakest case)
    brain_core = dilate_mm(brain, scan.zooms, BRAIN_MARGIN_MM - REGISTRATION_TOLERANCE_MM)
    assert not np.any(removed_mask & brain_core), "defacing touched the brain"
    assert np.array_equal(out_data[brain_core], raw_data[brain_core])
    face_outside_brain = face & ~dilate_mm(brain, scan.zooms, BRAIN_MARGIN_MM + REGISTRATION_TOLERANCE_MM)
    zeroed = float((out_data[face_outside_brain] == 0).mean())
    assert zeroed > 0.9, f"only {zeroed:.0%} of the face region is background"
    # the face had signal before (for heads whose face is in the field of view)
    head_signal = raw_data[face_outside_brain] > np.percentile(raw_data, 75)
    assert head_signal.sum() > 100


@pytest.mark.parametrize("label", BLUR_HEADS)
def test_blur_destroys_facial_detail(heads_run: dict, label: str) -> None:
    raw_path, out_path, mask_path = _paths(heads_run, label, "blurred")
    raw = nib.load(raw_path).get_fdata()
    out = nib.load(out_path).get_fdata()
    removed = np.asanyarray(nib.load(mask_path).dataobj) > 0
    assert np.array_equal(raw[~removed], out[~removed])
    tissue = removed & (raw > 0.2 * np.percentile(raw[raw > 0], 99))
    assert tissue.sum() > 1000
    assert np.mean(raw[tissue] != out[tissue]) > 0.9

    def detail(volume: np.ndarray) -> np.ndarray:
        return (volume - ndimage.gaussian_filter(volume, 2.0))[removed]

    original_detail = detail(raw)
    sharpened = out + 3.0 * (out - ndimage.gaussian_filter(out, 2.0))
    for candidate in (out, sharpened):
        correlation = np.corrcoef(original_detail, detail(candidate))[0, 1]
        assert abs(correlation) < 0.2, f"facial detail recoverable (r={correlation:.2f})"


def test_rerun_skips_and_overwrite_redoes(heads_run: dict, caplog: pytest.LogCaptureFixture) -> None:
    _, out_path, _ = _paths(heads_run, "ixi")
    stamp = out_path.stat().st_mtime_ns
    args = [
        str(heads_run["bids"]),
        str(heads_run["out"]),
        "participant",
        "--participant-label",
        "ixi",
        "--skip-bids-validation",
    ]
    assert main(args) == 0
    assert out_path.stat().st_mtime_ns == stamp
    assert "skipped" in caplog.text
    assert main([*args, "--overwrite"]) == 0
    assert out_path.stat().st_mtime_ns != stamp
    leftovers = [p for p in heads_run["out"].rglob(".*") if p.name != ".bidsignore"]
    assert leftovers == []


def test_no_partial_files(heads_run: dict) -> None:
    names = [p.name for p in heads_run["out"].rglob("*")]
    assert not [n for n in names if n.startswith(".bidsdeface-tmp-")]
    assert os.listdir(heads_run["out"])


def test_wrong_header_orientation_finds_the_same_face(heads_run: dict) -> None:
    """The yawed copy has the same voxels: its mask must land on the same voxels."""
    plain = np.asanyarray(nib.load(_paths(heads_run, "ixi")[2]).dataobj) > 0
    turned = np.asanyarray(nib.load(_paths(heads_run, "ixiYaw180")[2]).dataobj) > 0
    dice = 2 * (plain & turned).sum() / (plain.sum() + turned.sum())
    assert dice > 0.85, f"mask overlap {dice:.2f}"


@pytest.mark.parametrize("label", BLUR_HEADS)
def test_remove_ears_removes_more_than_the_face(heads_run: dict, label: str) -> None:
    face_only = np.asanyarray(nib.load(_paths(heads_run, label)[2]).dataobj) > 0
    with_ears = np.asanyarray(nib.load(_paths(heads_run, label, "blurred")[2]).dataobj) > 0
    ear_voxels_mm3 = (with_ears & ~face_only).sum() * np.prod(nib.load(_paths(heads_run, label)[2]).header.get_zooms())
    assert ear_voxels_mm3 > 20_000, f"only {ear_voxels_mm3:.0f} mm3 of ears removed"
