"""Finding the scans of a BIDS dataset: dataset checks, label and suffix filters, sidecar inheritance."""

from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsdeface.config import Config
from bidsdeface.discover import find_scans, read_dataset_description, read_metadata
from bidsdeface.errors import (
    EXIT_DATA,
    EXIT_INVALID_INPUT,
    EXIT_NO_FILES,
    EXIT_NO_INPUT,
    InputValidationError,
    NoFilesError,
    NoInputError,
    ScanError,
)

from .conftest import SHARED, needs_shared

DESCRIPTION = {"Name": "test", "BIDSVersion": "1.10.0", "DatasetType": "raw"}


@pytest.fixture(scope="module", autouse=True)
def _pybids_imported() -> None:
    """Import pybids once, outside the timed tests (its first import takes seconds)."""
    import bids  # noqa: F401


@functools.cache
def _tiny_nifti_bytes(extension: str) -> bytes:
    image = nib.Nifti1Image(np.arange(64, dtype=np.int16).reshape(4, 4, 4), np.eye(4))
    data = image.to_bytes()
    return gzip.compress(data, mtime=0) if extension == ".nii.gz" else data


def tiny_nifti(path: Path) -> Path:
    """Write a small real image (``.nii`` or ``.nii.gz``) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_tiny_nifti_bytes(".nii.gz" if path.name.endswith(".gz") else ".nii"))
    return path


def bids_dataset(root: Path, images: list[str], description: dict | None = None) -> Path:
    """A dataset holding a tiny real image at each relative path of ``images``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(description or DESCRIPTION))
    for relative in images:
        tiny_nifti(root / relative)
    return root


def copy_example(name: str, target: Path) -> Path:
    """Copy a shared ``bids_examples`` layout, filling its 0-byte NIfTI placeholders with a tiny real image."""
    source = SHARED / "bids_examples" / name
    if not source.is_dir():
        pytest.skip(f"shared real data not found: {source}")
    for folder, _, files in os.walk(source):
        out = target / Path(folder).relative_to(source)
        out.mkdir(parents=True, exist_ok=True)
        for file in files:
            data = (Path(folder) / file).read_bytes()
            if not data and file.endswith((".nii", ".nii.gz")):
                tiny_nifti(out / file)
            else:
                (out / file).write_bytes(data)
    return target


def config(bids: Path, **options: object) -> Config:
    return Config(bids_dir=bids, output_dir=bids.parent / "out", **options)


def relpaths(bids: Path, **options: object) -> list[str]:
    return [job.relpath for job in find_scans(config(bids, **options))]


# read_dataset_description


def test_description_returned(tmp_path: Path) -> None:
    bids = bids_dataset(tmp_path / "bids", [])
    assert read_dataset_description(bids) == DESCRIPTION


def test_missing_or_empty_folder_is_no_input(tmp_path: Path) -> None:
    with pytest.raises(NoInputError, match="does not exist") as missing:
        read_dataset_description(tmp_path / "absent")
    assert missing.value.exit_code == EXIT_NO_INPUT == 66
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoInputError, match="empty"):
        read_dataset_description(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NoInputError):
        read_dataset_description(tmp_path / "file")


@pytest.mark.parametrize(
    "content",
    [None, "{not json", "[1, 2]", b"\xff\xfe\x00garbage"],
    ids=["missing", "invalid-json", "not-an-object", "not-utf8"],
)
def test_bad_description_fails_validation(tmp_path: Path, content: str | bytes | None) -> None:
    bids = tmp_path / "bids"
    tiny_nifti(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    if isinstance(content, str):
        (bids / "dataset_description.json").write_text(content)
    elif isinstance(content, bytes):
        (bids / "dataset_description.json").write_bytes(content)
    with pytest.raises(InputValidationError, match=r"dataset_description\.json") as error:
        read_dataset_description(bids)
    assert error.value.exit_code == EXIT_INVALID_INPUT == 16
    assert "\n" not in str(error.value)


# find_scans

SYNTHETIC = [
    "sub-01/anat/sub-01_T1w.nii.gz",
    "sub-01/anat/sub-01_T2w.nii",
    "sub-01/anat/sub-01_acq-lowres_FLAIR.nii.gz",
    "sub-01/anat/sub-01_ct.nii.gz",
    "sub-01/anat/sub-01_inplaneT2.nii.gz",
    "sub-01/func/sub-01_task-rest_bold.nii.gz",
    "sub-01/dwi/sub-01_dwi.nii.gz",
    "sub-01/fmap/sub-01_phasediff.nii.gz",
    "sub-01/perf/sub-01_asl.nii.gz",
    "sub-02/anat/sub-02_T1w.nii.gz",
    "sub-02/pet/sub-02_trc-FDG_pet.nii.gz",
    "sub-03/ses-pre/anat/sub-03_ses-pre_T1w.nii.gz",
    "sub-03/ses-pre/pet/sub-03_ses-pre_pet.nii.gz",
    "sub-03/ses-post/anat/sub-03_ses-post_run-2_T1w.nii.gz",
    "sub-03/ses-post/anat/sub-03_ses-post_run-1_T1w.nii.gz",
    "sub-03/ses-post/pet/sub-03_ses-post_pet.nii.gz",
    "sub-03/ses-late/pet/sub-03_ses-late_pet.nii.gz",
]


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    bids = bids_dataset(tmp_path / "bids", SYNTHETIC)
    # Not images, or not in the raw dataset: never selected.
    (bids / "sub-01" / "anat" / "sub-01_T1w.json").write_text("{}")
    (bids / "sub-01" / "anat" / "sub-01_T1w.mgz").write_bytes(b"x")
    for other in ("sourcedata", "derivatives/tool", "code", ".git"):
        tiny_nifti(bids / other / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    return bids


def test_default_selection_is_supported_head_scans_only(synthetic: Path) -> None:
    jobs = find_scans(config(synthetic))
    assert [job.relpath for job in jobs] == [
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/anat/sub-01_T2w.nii",
        "sub-01/anat/sub-01_acq-lowres_FLAIR.nii.gz",
        "sub-01/anat/sub-01_ct.nii.gz",
        "sub-02/anat/sub-02_T1w.nii.gz",
        "sub-02/pet/sub-02_trc-FDG_pet.nii.gz",
        "sub-03/ses-late/pet/sub-03_ses-late_pet.nii.gz",
        "sub-03/ses-post/anat/sub-03_ses-post_run-1_T1w.nii.gz",
        "sub-03/ses-post/anat/sub-03_ses-post_run-2_T1w.nii.gz",
        "sub-03/ses-post/pet/sub-03_ses-post_pet.nii.gz",
        "sub-03/ses-pre/anat/sub-03_ses-pre_T1w.nii.gz",
        "sub-03/ses-pre/pet/sub-03_ses-pre_pet.nii.gz",
    ], "bold, dwi, fieldmaps, ASL, inplaneT2 (not a default), sidecars and non-raw folders are not selected"
    first = jobs[0]
    assert (first.subject, first.session, first.suffix, first.datatype) == ("01", "", "T1w", "anat")
    assert first.path == synthetic / first.relpath and first.path.is_file()
    by_path = {job.relpath: job for job in jobs}
    ct = by_path["sub-01/anat/sub-01_ct.nii.gz"]
    assert (ct.suffix, ct.datatype) == ("ct", "anat")
    pet = by_path["sub-03/ses-pre/pet/sub-03_ses-pre_pet.nii.gz"]
    assert (pet.subject, pet.session, pet.suffix, pet.datatype) == ("03", "pre", "pet", "pet")


def test_pet_paired_with_a_t1w_of_its_own_session(synthetic: Path) -> None:
    anatomical = {job.relpath: job.anatomical for job in find_scans(config(synthetic))}
    assert anatomical["sub-02/pet/sub-02_trc-FDG_pet.nii.gz"] == "sub-02/anat/sub-02_T1w.nii.gz"
    assert anatomical["sub-03/ses-pre/pet/sub-03_ses-pre_pet.nii.gz"] == "sub-03/ses-pre/anat/sub-03_ses-pre_T1w.nii.gz"
    assert (
        anatomical["sub-03/ses-post/pet/sub-03_ses-post_pet.nii.gz"]
        == "sub-03/ses-post/anat/sub-03_ses-post_run-1_T1w.nii.gz"
    ), "the first T1w by name"
    assert anatomical["sub-03/ses-late/pet/sub-03_ses-late_pet.nii.gz"] == "", "no T1w in that session"
    assert all(value == "" for path, value in anatomical.items() if not path.endswith("_pet.nii.gz"))


@pytest.mark.parametrize(
    ("options", "selected"),
    [
        ({"participant_labels": ("02",)}, ["sub-02/anat/sub-02_T1w.nii.gz", "sub-02/pet/sub-02_trc-FDG_pet.nii.gz"]),
        (
            {"session_labels": ("pre",)},
            ["sub-03/ses-pre/anat/sub-03_ses-pre_T1w.nii.gz", "sub-03/ses-pre/pet/sub-03_ses-pre_pet.nii.gz"],
        ),
        ({"suffixes": ("T2w", "inplaneT2")}, ["sub-01/anat/sub-01_T2w.nii", "sub-01/anat/sub-01_inplaneT2.nii.gz"]),
        (
            {"participant_labels": ("01", "03"), "session_labels": ("post",), "suffixes": ("pet",)},
            ["sub-03/ses-post/pet/sub-03_ses-post_pet.nii.gz"],
        ),
    ],
    ids=["participant", "session", "suffixes", "all-three"],
)
def test_filters_by_participant_session_and_suffix(synthetic: Path, options: dict, selected: list[str]) -> None:
    assert relpaths(synthetic, **options) == selected


def test_participant_labels_that_prefix_others(tmp_path: Path) -> None:
    bids = bids_dataset(
        tmp_path / "bids",
        ["sub-1/anat/sub-1_T1w.nii.gz", "sub-10/anat/sub-10_T1w.nii.gz", "sub-1a/anat/sub-1a_T1w.nii.gz"],
    )
    assert relpaths(bids, participant_labels=("1",)) == ["sub-1/anat/sub-1_T1w.nii.gz"]
    assert relpaths(bids, participant_labels=("10", "1a")) == [
        "sub-10/anat/sub-10_T1w.nii.gz",
        "sub-1a/anat/sub-1a_T1w.nii.gz",
    ]
    with pytest.raises(NoFilesError, match="not in the dataset: 100"):
        find_scans(config(bids, participant_labels=("10", "100")))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"participant_labels": ("09",)}, "not in the dataset: 09"),
        ({"participant_labels": ("01",), "session_labels": ("pre",)}, "no scans match"),
        ({"session_labels": ("absent",)}, "no scans match"),
        ({"participant_labels": ("02",), "suffixes": ("FLAIR",)}, "no scans match"),
        ({"suffixes": ("PDw",)}, "no scans match"),
    ],
)
def test_filters_selecting_nothing(synthetic: Path, options: dict, message: str) -> None:
    with pytest.raises(NoFilesError, match=message) as error:
        find_scans(config(synthetic, **options))
    assert error.value.exit_code == EXIT_NO_FILES == 18


def test_dataset_without_subjects_or_supported_scans(tmp_path: Path) -> None:
    empty = bids_dataset(tmp_path / "empty", [])
    with pytest.raises(NoFilesError, match="no sub-"):
        find_scans(config(empty))
    functional = bids_dataset(tmp_path / "func", ["sub-01/func/sub-01_task-rest_bold.nii.gz"])
    with pytest.raises(NoFilesError, match="suffixes: T1w") as error:
        find_scans(config(functional))
    assert error.value.exit_code == EXIT_NO_FILES


@pytest.fixture(scope="module")
def ds001(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bids-examples ds001 (16 subjects, each with T1w, inplaneT2 and three BOLD runs), never modified."""
    return copy_example("ds001", tmp_path_factory.mktemp("examples") / "ds001")


@needs_shared
def test_real_layout_ds001_defaults(ds001: Path) -> None:
    jobs = find_scans(config(ds001))
    assert [job.relpath for job in jobs] == [f"sub-{n:02d}/anat/sub-{n:02d}_T1w.nii.gz" for n in range(1, 17)]
    assert {(job.suffix, job.datatype, job.session, job.anatomical) for job in jobs} == {("T1w", "anat", "", "")}
    assert all(nib.load(job.path).shape == (4, 4, 4) for job in jobs)


@needs_shared
def test_real_layout_ds001_filters(ds001: Path) -> None:
    chosen = find_scans(config(ds001, participant_labels=("04", "11"), suffixes=("T1w", "inplaneT2")))
    assert [job.relpath for job in chosen] == [
        "sub-04/anat/sub-04_T1w.nii.gz",
        "sub-04/anat/sub-04_inplaneT2.nii.gz",
        "sub-11/anat/sub-11_T1w.nii.gz",
        "sub-11/anat/sub-11_inplaneT2.nii.gz",
    ]


@needs_shared
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"participant_labels": ("01", "17")}, r"not in the dataset: 17$"),
        ({"session_labels": ("01",)}, "sessions: 01;"),
    ],
    ids=["absent-participant", "absent-session"],
)
def test_real_layout_ds001_filters_selecting_nothing(ds001: Path, options: dict, message: str) -> None:
    with pytest.raises(NoFilesError, match=message) as error:
        find_scans(config(ds001, **options))
    assert error.value.exit_code == EXIT_NO_FILES


@needs_shared
def test_real_layout_pet002(tmp_path: Path) -> None:
    """bids-examples pet002: two subjects, two sessions, each with a PET and an uncompressed T1w."""
    bids = copy_example("pet002", tmp_path / "pet002")
    jobs = find_scans(config(bids, session_labels=("rescan",), suffixes=("pet",)))
    assert [(job.subject, job.session, job.relpath, job.anatomical) for job in jobs] == [
        (
            label,
            "rescan",
            f"sub-{label}/ses-rescan/pet/sub-{label}_ses-rescan_pet.nii.gz",
            f"sub-{label}/ses-rescan/anat/sub-{label}_ses-rescan_T1w.nii",
        )
        for label in ("01", "02")
    ]
    assert len(find_scans(config(bids))) == 8


# read_metadata


def test_sidecar_inheritance(tmp_path: Path) -> None:
    image = "sub-01/ses-1/anat/sub-01_ses-1_acq-fast_run-1_T1w.nii.gz"
    bids = bids_dataset(tmp_path / "bids", [image])
    sidecars = {
        "T1w.json": {"Manufacturer": "root", "RepetitionTime": 2.0, "EchoTime": 0.003},
        "acq-fast_T1w.json": {"FlipAngle": 8},
        "acq-slow_T1w.json": {"FlipAngle": 99},  # another acquisition
        "T2w.json": {"EchoTime": 0.1},  # another suffix
        "sub-01/sub-01_T1w.json": {"RepetitionTime": 2.3},
        "sub-02/sub-02_T1w.json": {"RepetitionTime": 9.9},
        "sub-01/ses-1/sub-01_ses-1_T1w.json": {"InversionTime": 0.9},
        "sub-01/ses-1/anat/sub-01_ses-1_acq-fast_run-1_T1w.json": {"Manufacturer": "own"},
        "sub-01/ses-1/anat/sub-01_ses-1_acq-fast_run-2_T1w.json": {"Manufacturer": "run 2"},
    }
    for relative, content in sidecars.items():
        (bids / relative).parent.mkdir(parents=True, exist_ok=True)
        (bids / relative).write_text(json.dumps(content))
    (bids / "participants.json").write_text(json.dumps({"age": {"Units": "year"}}))
    (bids / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_acq-fast_run-1_T1w_broken.json").write_text("{")
    assert read_metadata(bids / image) == {
        "Manufacturer": "own",
        "RepetitionTime": 2.3,
        "EchoTime": 0.003,
        "FlipAngle": 8,
        "InversionTime": 0.9,
    }


def test_metadata_of_uncompressed_image_and_missing_sidecar(tmp_path: Path) -> None:
    bids = bids_dataset(tmp_path / "bids", ["sub-01/anat/sub-01_T2w.nii", "sub-01/anat/sub-01_T1w.nii.gz"])
    (bids / "sub-01" / "anat" / "sub-01_T2w.json").write_text(json.dumps({"EchoTime": 0.1}))
    assert read_metadata(bids / "sub-01" / "anat" / "sub-01_T2w.nii") == {"EchoTime": 0.1}
    assert read_metadata(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz") == {}
    assert "Name" not in read_metadata(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"), "not dataset_description"


@pytest.mark.parametrize("content", ["{broken", "[1]"], ids=["invalid-json", "not-an-object"])
def test_unreadable_sidecar_is_a_scan_error(tmp_path: Path, content: str) -> None:
    bids = bids_dataset(tmp_path / "bids", ["sub-01/anat/sub-01_T1w.nii.gz"])
    (bids / "T1w.json").write_text(content)
    with pytest.raises(ScanError, match=r"T1w\.json") as error:
        read_metadata(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    assert error.value.exit_code == EXIT_DATA


@needs_shared
def test_real_layout_inherits_task_sidecar(tmp_path: Path) -> None:
    """ds001's BOLD runs take RepetitionTime and TaskName from the top-level task sidecar."""
    bids = copy_example("ds001", tmp_path / "ds001")  # a copy of its own: a sidecar is added
    func = bids / "sub-01" / "func"
    inherited = read_metadata(func / "sub-01_task-balloonanalogrisktask_run-01_bold.nii.gz")
    assert inherited == {"RepetitionTime": 2.0, "TaskName": "balloon analog risk task"}
    (func / "sub-01_task-balloonanalogrisktask_run-02_bold.json").write_text(json.dumps({"RepetitionTime": 2.5}))
    overridden = read_metadata(func / "sub-01_task-balloonanalogrisktask_run-02_bold.nii.gz")
    assert overridden == {"RepetitionTime": 2.5, "TaskName": "balloon analog risk task"}
    assert read_metadata(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz") == {}
