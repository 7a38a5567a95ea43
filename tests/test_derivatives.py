"""Derivative names, dataset files and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bidsdeface import derivatives
from bidsdeface.config import Config
from bidsdeface.derivatives import (
    atomic_path,
    defaced_name,
    deidentification,
    mask_name,
    remove_stale_temporaries,
    write_dataset_files,
)
from bidsdeface.policy import SitePolicy


def test_names() -> None:
    assert (
        defaced_name("sub-01_ses-A_acq-fast_run-2_T1w.nii.gz") == "sub-01_ses-A_acq-fast_run-2_desc-defaced_T1w.nii.gz"
    )
    assert mask_name("sub-01_ses-A_run-2_FLAIR.nii") == "sub-01_ses-A_run-2_mod-FLAIR_defacemask.nii"
    with pytest.raises(ValueError):
        defaced_name("notbids.nii.gz")


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "a" / "x.json"
    with pytest.raises(RuntimeError), atomic_path(final) as temp:
        temp.write_text("half")
        raise RuntimeError("crash")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []


def test_stale_temporaries_removed(tmp_path: Path) -> None:
    (tmp_path / "sub-01").mkdir()
    (tmp_path / "sub-01" / f"{derivatives.TEMP_PREFIX}abc-x.nii.gz").write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path / "sub-01") == 1
    assert list((tmp_path / "sub-01").iterdir()) == []


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
