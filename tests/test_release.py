"""Release layout: carrying images with their header text cleared, counting what is left out."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsdeface.release import LeftOut, carry_nifti, dataset_left_out


def _image_with_text(klass: type = nib.Nifti1Image) -> nib.Nifti1Image:
    data = np.arange(4 * 5 * 3 * 2, dtype=np.float32).reshape(4, 5, 3, 2)
    image = klass(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    image.set_data_dtype(np.int16)  # stored scaled: the scaling must survive too
    image.header["descrip"] = b"Time=142207.5 Ann Smith"
    image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"PatientName=Doe^John"))
    return image


@pytest.mark.parametrize(
    ("klass", "name"),
    [(nib.Nifti1Image, "x_bold.nii.gz"), (nib.Nifti1Image, "x_bold.nii"), (nib.Nifti2Image, "x_bold.nii.gz")],
)
def test_carried_images_lose_header_text_and_keep_every_voxel_byte(tmp_path: Path, klass: type, name: str) -> None:
    source, target = tmp_path / "in" / name, tmp_path / "out" / name
    source.parent.mkdir()
    nib.save(_image_with_text(klass), source)
    opener = gzip.open if name.endswith(".gz") else open
    with opener(source, "ab") as stream:
        stream.write(b"trailing bytes: MRN4471923")
    report = carry_nifti(source, target)
    assert set(report.removed) == {"descrip", "extensions"}
    before, after = nib.load(source), nib.load(target)
    assert type(after.header) is type(before.header) and after.dataobj.offset == after.header.single_vox_offset
    assert np.array_equal(np.asanyarray(after.dataobj), np.asanyarray(before.dataobj))
    assert after.dataobj.slope == before.dataobj.slope and np.allclose(after.affine, before.affine)
    with opener(target, "rb") as stream:
        written = stream.read()
    assert b"Ann Smith" not in written and b"Doe^John" not in written and b"MRN4471923" not in written
    assert not list(target.parent.glob(".bidsdeface-tmp*"))


def test_an_image_shorter_than_its_header_is_left_out(tmp_path: Path) -> None:
    source = tmp_path / "x_bold.nii"
    nib.save(_image_with_text(), source)
    source.write_bytes(source.read_bytes()[:-10])
    with pytest.raises(LeftOut, match="shorter"):
        carry_nifti(source, tmp_path / "out" / "x_bold.nii")
    assert not (tmp_path / "out" / "x_bold.nii").exists() and not list((tmp_path / "out").iterdir())


def test_top_level_files_left_out_are_counted_and_only_standard_names_shown(tmp_path: Path) -> None:
    for name in ("dataset_description.json", "README", "CHANGES", "participants.tsv", "task-rest_bold.json",
                 "CITATION.cff", "JohnSmith_notes.txt"):  # fmt: skip
        (tmp_path / name).write_text("x")
    for folder in ("sub-01", "sourcedata", "code", "JohnSmith_scans"):
        (tmp_path / folder).mkdir()
    counts = dataset_left_out(tmp_path)
    assert counts == {
        "inherited sidecar (scrubbed into each file's own sidecar)": 1,
        "other top-level file (free text or not BIDS)": 2,
        "folder sourcedata/": 1,
        "folder code/": 1,
        "other top-level folder": 1,
    }
