"""k-anonymity end to end: the 16 subjects of ds001's layout, real heads, planted quasi-identifiers.

The run uses the release layout, so both tables are checked: the release's
``participants.tsv`` and the derivative's inside it. Each is read back with pandas and
recounted independently of bidsdeface.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from .conftest import needs_shared, run_validator
from .test_release_datasets import build_ds001, release

pytestmark = [needs_shared, pytest.mark.slow]

SUBJECTS = tuple(f"{i:02d}" for i in range(1, 17))
# Mixed so that every row is unique: two decades of ages, two sites, and an outlier at each.
AGES = (21, 23, 24, 22, 26, 27, 25, 29, 31, 33, 34, 38, 36, 32, 67, 93)
SEXES = "FMFMFMFMFMFMFMFF"
HANDS = "RRRLRRRRRARRRRRL"
SITES = ("S01",) * 8 + ("S02",) * 7 + ("S03",)  # site codes pass the cell screening (plain words might not)
QUASI = ["age", "sex", "handedness", "site"]


def _plant_participants(bids: Path) -> None:
    rows = ["participant_id\tage\tsex\thandedness\tsite"]
    rows += [
        f"sub-{subject}\t{age}\t{sex}\t{hand}\t{site}"
        for subject, age, sex, hand, site in zip(SUBJECTS, AGES, SEXES, HANDS, SITES, strict=True)
    ]
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")


def _classes(table: Path) -> pd.Series:
    frame = pd.read_csv(io.StringIO(table.read_text()), sep="\t", dtype=str, keep_default_na=False)
    frame = frame[~(frame[QUASI] == "n/a").all(axis=1)]  # rows suppressed whole carry no quasi-identifier
    return frame.groupby(QUASI).size()


@pytest.fixture(scope="module")
def k5_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("k5")
    bids = build_ds001(root / "ds001", SUBJECTS)
    _plant_participants(bids)
    options = ["--k-anonymity", "5", "--max-suppressed-rows", "0.15", "--keep-columns", "site"]
    result = release(bids, root / "release", *options, "--nprocs", "2", "--omp-nthreads", "1")
    return {"bids": bids, "root": root, "out": root / "release", "result": result}


def test_every_class_of_the_written_tables_has_five_rows(k5_run: dict) -> None:
    assert k5_run["result"].returncode == 0, k5_run["result"].stderr[-3000:]
    out = k5_run["out"]
    for table in (out / "participants.tsv", out / "derivatives" / "bidsdeface" / "participants.tsv"):
        sizes = _classes(table)
        assert sizes.min() >= 5, sizes
        assert {index[3] for index in sizes.index} == {"S01", "S02"}, "the site is kept; the small site's row is not"
        assert len(table.read_text().splitlines()) == 17, "every subject keeps its row"
    for dataset in (out, out / "derivatives" / "bidsdeface"):
        validation = run_validator(dataset)
        assert validation.returncode == 0, validation.stdout[-3000:]


def test_privacy_report_lists_k_before_and_after_and_what_was_done(k5_run: dict) -> None:
    derivative = k5_run["out"] / "derivatives" / "bidsdeface"
    report = json.loads((derivative / "privacy_report.json").read_text())
    assert report["QuasiIdentifiers"] == QUASI and report["Requested"]["K"] == 5
    assert report["Before"]["K"] == 1 and report["Before"]["UniqueRows"] == 16
    assert report["After"]["K"] >= 5 and report["After"]["UniqueRows"] == 0
    assert report["AgeLevel"] == "10-year bands" and report["SuppressedColumns"] == ["sex", "handedness"]
    assert report["SuppressedRows"] == 2 and 0 < report["InformationLoss"] < 1
    age = json.loads((k5_run["out"] / "participants.json").read_text())["age"]
    assert "lower bound of a 10-year band" in age["Description"]
    group = (derivative / "group_report.html").read_text()
    assert "Participants: quasi-identifiers" in group and "k as written" in group
    assert "participants.tsv: quasi-identifiers age, sex, handedness, site: k=1" in k5_run["result"].stderr


def test_an_unreachable_k_stops_the_run_with_one_line_and_no_tables(k5_run: dict) -> None:
    out = k5_run["root"] / "unreachable"
    result = release(k5_run["bids"], out, "--k-anonymity", "5", "--keep-columns", "site")
    assert result.returncode == 65
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "k=5 cannot be reached" in errors[0] and "Traceback" not in result.stderr
    assert not list(out.rglob("*.tsv")) and not list(out.rglob("*.nii.gz"))
