"""Derivative names, dataset files and atomic writes."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from bidsdeface import derivatives
from bidsdeface.config import Config
from bidsdeface.derivatives import defaced_name, deidentification, mask_name, write_dataset_files
from bidsdeface.policy import SitePolicy


def test_names() -> None:
    assert (
        defaced_name("sub-01_ses-A_acq-fast_run-2_T1w.nii.gz") == "sub-01_ses-A_acq-fast_run-2_desc-defaced_T1w.nii.gz"
    )
    assert mask_name("sub-01_ses-A_run-2_FLAIR.nii") == "sub-01_ses-A_run-2_mod-FLAIR_defacemask.nii"
    with pytest.raises(ValueError):
        defaced_name("notbids.nii.gz")


def test_dataset_files_identical_for_every_writer(tmp_path: Path) -> None:
    source = {"Name": "S", "License": "CC0", "Authors": ["a", "b"], "DatasetDOI": "doi:10.1/x"}
    write_dataset_files(tmp_path, source)
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    write_dataset_files(tmp_path, source)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first
    description = json.loads(first["dataset_description.json"])
    assert description["SourceDatasets"] == [{"DOI": "doi:10.1/x"}]
    assert description["License"] == "CC0"


def test_deidentification_codes_follow_what_was_done(tmp_path: Path) -> None:
    kept_device = Config(tmp_path, tmp_path / "out", scrub_policy=SitePolicy(keep_sidecar_keys=("StationName",)))
    methods, codes = deidentification(kept_device, dates_shifted=False)
    assert [code["CodeValue"] for code in codes] == ["113100", "113102", "113109"]
    assert "dates and times removed" in methods and any("StationName" in method for method in methods)
    methods, codes = deidentification(Config(tmp_path, tmp_path / "out", pseudonymize=True), dates_shifted=True)
    assert [code["CodeValue"] for code in codes] == ["113100", "113102", "113107"]
    assert any("pseudonyms" in method for method in methods)


def test_concurrent_writers_create_identical_dataset_files(tmp_path: Path) -> None:
    source = {"Name": "S", "Authors": ["a", "b"]}
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.starmap(write_dataset_files, [(tmp_path, source)] * 8)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([".bidsignore", "README.md", "dataset_description.json"])
    assert json.loads((tmp_path / "dataset_description.json").read_text())["DatasetType"] == "derivative"


def test_failed_folder_has_its_readme(tmp_path: Path) -> None:
    folder = derivatives.prepare_failed_folder(tmp_path / "private")
    assert folder == tmp_path / "private" / derivatives.FAILED_FOLDER
    assert "Keep it private" in (folder / "README.txt").read_text()
    derivatives.prepare_failed_folder(tmp_path / "private")  # again: unchanged, no temporaries
    assert [p.name for p in folder.iterdir()] == ["README.txt"]
