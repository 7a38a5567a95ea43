"""End to end through the CLI on every real MRI head in ../shared/data.

One participant run defaces all heads (one subject each, including a head whose
header orientation is wrong); the assertions then check each output against the
input and against the same template registered again in the test process.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bidsdeface.cli import main
from bidsdeface.files import LOCK_FOLDER
from bidsdeface.register import warp_template_mask
from bidsdeface.volumes import dilate_mm

from .conftest import (
    BLUR_HEADS,
    BRAIN_MARGIN_MM,
    HEADS,
    head_paths,
    needs_shared,
    register_again,
    run_validator,
    tree_digest,
)

pytestmark = [needs_shared, pytest.mark.slow]

REGISTRATION_TOLERANCE_MM = 4.0
# Registering again is costly (~20 s): done for the hardest case (prone,
# thick slices, converted here from DICOM). The wrong header is checked against the plain
# head's mask instead.
RERUN_CHECK_HEADS = ["prismaHFP"]


def test_run_succeeds_and_input_untouched(heads_run: dict) -> None:
    assert heads_run["code"] == 0
    assert tree_digest(heads_run["bids"]) == heads_run["before"]


def test_blurred_run_succeeds(blurred_run: dict) -> None:
    assert blurred_run["blur_code"] == 0


def test_output_is_valid_bids(heads_run: dict) -> None:
    result = run_validator(heads_run["out"])
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize("label", HEADS)
def test_face_removed_brain_identical(heads_run: dict, label: str) -> None:
    raw_path, out_path, mask_path = head_paths(heads_run, label)
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


@pytest.mark.parametrize("label", RERUN_CHECK_HEADS)
def test_defacing_agrees_with_rerun_registration(heads_run: dict, rerun_registrations: dict, label: str) -> None:
    """The same scan registered again here (same code, same seed): its face region is gone, its brain untouched."""
    raw_path, out_path, mask_path = head_paths(heads_run, label)
    raw_data = np.asanyarray(nib.load(raw_path).dataobj.get_unscaled())
    out_data = np.asanyarray(nib.load(out_path).dataobj.get_unscaled())
    removed_mask = np.asanyarray(nib.load(mask_path).dataobj) > 0
    scan, template, registration = register_again(rerun_registrations, raw_path)
    brain = warp_template_mask(scan, template.brain, template, registration)
    face = warp_template_mask(scan, template.face, template, registration)
    # Repeated registrations of one scan put the brain's border up to 4.5 mm apart (the clinical
    # T2w, 4 runs); the protective margin absorbs that: the other registration's brain is untouched.
    assert not np.any(removed_mask & brain), "defacing touched the brain"
    assert np.array_equal(out_data[brain], raw_data[brain])
    # where both registrations agree: the face region minus a tolerance at its border
    # and around the protected brain
    face_core = face & ~dilate_mm(~face, scan.zooms, REGISTRATION_TOLERANCE_MM)
    face_outside_brain = face_core & ~dilate_mm(brain, scan.zooms, BRAIN_MARGIN_MM + REGISTRATION_TOLERANCE_MM)
    zeroed = float((out_data[face_outside_brain] == 0).mean())
    assert zeroed > 0.9, f"only {zeroed:.0%} of the face region is background"
    # the face had signal before (for heads whose face is in the field of view)
    head_signal = raw_data[face_outside_brain] > np.percentile(raw_data, 75)
    assert head_signal.sum() > 100


@pytest.mark.parametrize("label", BLUR_HEADS)
def test_blur_destroys_facial_detail(blurred_run: dict, label: str) -> None:
    raw_path, out_path, mask_path = head_paths(blurred_run, label, "blurred")
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
    _, out_path, _ = head_paths(heads_run, "ixi")
    stamp = out_path.stat().st_mtime_ns
    args = [
        str(heads_run["bids"]),
        str(heads_run["out"]),
        "participant",
        "--participant-label",
        "ixi",
        "--skull-strip",
        "--skip-bids-validation",
    ]
    assert main(args) == 0
    assert out_path.stat().st_mtime_ns == stamp
    assert "skipped" in caplog.text
    assert main([*args, "--overwrite"]) == 0
    assert out_path.stat().st_mtime_ns != stamp
    hidden = [p.relative_to(heads_run["out"]) for p in heads_run["out"].rglob(".*") if p.name != ".bidsignore"]
    assert [p for p in hidden if p.parts[0] != LOCK_FOLDER] == []


def test_no_partial_files(heads_run: dict) -> None:
    names = [p.name for p in heads_run["out"].rglob("*")]
    assert not [n for n in names if n.startswith(".bidsdeface-tmp-")]
    assert os.listdir(heads_run["out"])


def test_wrong_header_orientation_finds_the_same_face(heads_run: dict) -> None:
    """The yawed copy has the same voxels: its mask must land on the same voxels."""
    plain = np.asanyarray(nib.load(head_paths(heads_run, "ixi")[2]).dataobj) > 0
    turned = np.asanyarray(nib.load(head_paths(heads_run, "ixiYaw180")[2]).dataobj) > 0
    dice = 2 * (plain & turned).sum() / (plain.sum() + turned.sum())
    assert dice > 0.85, f"mask overlap {dice:.2f}"


@pytest.mark.parametrize("label", [head for head in HEADS if head in BLUR_HEADS])
def test_remove_ears_removes_more_than_the_face(blurred_run: dict, label: str) -> None:
    face_only = np.asanyarray(nib.load(head_paths(blurred_run, label)[2]).dataobj) > 0
    with_ears = np.asanyarray(nib.load(head_paths(blurred_run, label, "blurred")[2]).dataobj) > 0
    voxel_mm3 = np.prod(nib.load(head_paths(blurred_run, label)[2]).header.get_zooms())
    ear_voxels_mm3 = (with_ears & ~face_only).sum() * voxel_mm3
    assert ear_voxels_mm3 > 20_000, f"only {ear_voxels_mm3:.0f} mm3 of ears removed"
