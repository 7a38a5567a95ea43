"""Dataset and subject tables, and the scrub records: what is written, and what never is."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from bidsdeface.config import Config
from bidsdeface.errors import UsageError
from bidsdeface.identity import SubjectIdentity, resolve_identity
from bidsdeface.metadata import (
    DATASET_SCRUB_RECORD,
    participants_plan,
    scrub_record_path,
    write_dataset_scrub_record,
    write_participants,
    write_privacy_report,
    write_scrub_record,
    write_subject_tables,
)

# A column no standard knows: its name may identify, so it is dropped and counted, never named.
SECRET_COLUMN = "zqx_referring_clinic"
SECRET_VALUE = "ZqxStMungoWard"
SECRET_DESCRIPTION = "ZqxClinicOfDrHibbert"
OFFSET = timedelta(days=-40177)


def tsv(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(line.split("|")) + "\n" for line in lines))
    return path


def read_tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def output_text(folder: Path) -> str:
    """Every file below ``folder`` (names and contents) as one text."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return "\n".join(f"{p.relative_to(folder)}\n{p.read_bytes().decode('utf-8', 'replace')}" for p in files)


@pytest.fixture
def bids(tmp_path: Path) -> Path:
    """Participants with an age over 89, bad cells in allowed columns, a DICOM-named and an unknown column."""
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    tsv(
        root / "participants.tsv",
        f"participant_id|age|sex|handedness|group|PatientName|{SECRET_COLUMN}",
        f"sub-01|93|F|R|control|Jane Doe|{SECRET_VALUE}1",
        f"sub-02|40|M|L|patient|John Roe|{SECRET_VALUE}2",
        f"sub-03|33|Jane|R|Dr Smith's patients|Ann Poe|{SECRET_VALUE}3",
    )
    (root / "participants.json").write_text(
        json.dumps(
            {
                "age": {"Description": "age at scan", "Units": "year"},
                SECRET_COLUMN: {"Description": SECRET_DESCRIPTION},
            }
        )
    )
    return root


def test_participants_rows_of_output_subjects_scrubbed(bids: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for label in ("01", "03"):
        (out / f"sub-{label}").mkdir(parents=True)
    config = Config(bids, out, drop_dates=True)
    report = write_participants(config)
    assert read_tsv(out / "participants.tsv") == [
        ["participant_id", "age", "sex", "handedness", "group"],
        ["sub-01", "89", "F", "R", "control"],
        ["sub-03", "33", "n/a", "R", "n/a"],
    ], "sub-02 has no output; ages over 89 generalised; cells failing their checks written as n/a"
    assert report is not None
    assert report.removed == ("PatientName",), "a standard name is shown"
    assert report.unknown_removed == 1, "an unknown column is counted, not named"
    assert report.replaced == ("age",)
    assert sorted(report.dropped) == ["group", "sex"]
    assert all(why.startswith("1 value(s)") for why in report.dropped.values())
    descriptions = json.loads((out / "participants.json").read_text())
    assert sorted(descriptions) == ["age", "group", "handedness", "participant_id", "sex"]
    assert descriptions["age"]["Description"] != "age at scan", "the input's description text is not carried"


def test_unknown_column_never_reaches_any_output(bids: Path, tmp_path: Path) -> None:
    inputs = output_text(bids)
    for marker in (SECRET_COLUMN, SECRET_VALUE, SECRET_DESCRIPTION, "Jane Doe"):
        assert marker in inputs, f"positive control: {marker} is planted in the input"
    out = tmp_path / "out"
    (out / "sub-01").mkdir(parents=True)
    config = Config(bids, out, drop_dates=True)
    report = write_participants(config)
    record = write_dataset_scrub_record(config, {"dataset_description.json": None, "participants.tsv": report})
    assert json.loads(record.read_text())["Files"] == {
        "participants.tsv": {"Removed": ["PatientName"], "UnknownRemoved": 1, "Replaced": ["age"]}
    }
    written = output_text(out)
    assert "participants.tsv" in written and "sub-01" in written, "positive control: the outputs were read"
    for marker in (SECRET_COLUMN, SECRET_VALUE, SECRET_DESCRIPTION, "Jane Doe", "Ann Poe"):
        assert marker not in written


def test_participants_not_written_without_rows_or_source(bids: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "participants.tsv").write_text("participant_id\nsub-09\n")
    assert write_participants(Config(bids, out, drop_dates=True)) is None, "no subject of the input in the output"
    assert (out / "participants.tsv").read_text() == "participant_id\nsub-09\n", "an existing table is left as it is"
    assert not (out / "participants.json").exists()
    (bids / "participants.tsv").unlink()
    (out / "sub-01").mkdir()
    assert write_participants(Config(bids, out, drop_dates=True)) is None


def test_unreadable_inputs_are_not_carried(bids: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "sub-01").mkdir(parents=True)
    (bids / "participants.json").write_text("{not json")
    assert write_participants(Config(bids, out, drop_dates=True)) is not None
    assert json.loads((out / "participants.json").read_text())["sex"]["Levels"]["F"] == "Female", "schema text only"
    (bids / "participants.tsv").write_bytes(b"participant_id\n\xff\xfe\n")
    (out / "participants.tsv").unlink()
    assert write_participants(Config(bids, out, drop_dates=True)) is None
    assert not (out / "participants.tsv").exists()


def test_participants_pseudonymised(bids: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = Config(bids, out, pseudonymize=True, date_shift_key="secret", private_dir=tmp_path / "private")
    identity = resolve_identity(config, "01", [])
    assert identity.output_label != "01"
    (out / f"sub-{identity.output_label}").mkdir(parents=True)
    (out / "sub-02").mkdir()  # named like an input subject, but no identity was made for it
    write_participants(config)
    assert read_tsv(out / "participants.tsv")[1:] == [[f"sub-{identity.output_label}", "89", "F", "R", "control"]]
    assert "sub-01" not in output_text(out) and "sub-02" not in (out / "participants.tsv").read_text()


def subject_dataset(bids: Path) -> None:
    """sub-01 with two sessions (sessions and scans tables); only ses-1's T1w has an output."""
    subject = bids / "sub-01"
    tsv(
        subject / "sub-01_sessions.tsv",
        f"session_id|acq_time|age|{SECRET_COLUMN}",
        f"ses-1|2021-03-04T10:11:12|93|{SECRET_VALUE}",
        f"ses-2|2021-06-01T08:00:00|40|{SECRET_VALUE}",
    )
    for session in ("1", "2"):
        tsv(
            subject / f"ses-{session}" / f"sub-01_ses-{session}_scans.tsv",
            f"filename|acq_time|{SECRET_COLUMN}",
            f"anat/sub-01_ses-{session}_T1w.nii.gz|2021-03-04T10:11:12|{SECRET_VALUE}",
            f"func/sub-01_ses-{session}_task-rest_bold.nii.gz|2021-03-04T10:30:00|{SECRET_VALUE}",
        )


def test_subject_tables_with_dates_shifted(bids: Path, tmp_path: Path) -> None:
    subject_dataset(bids)
    out = tmp_path / "out"
    touch(out / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_desc-defaced_T1w.nii.gz")
    identity = SubjectIdentity("01", "01", OFFSET)
    reports = write_subject_tables(Config(bids, out), identity)
    assert sorted(reports) == ["sub-01/ses-1/sub-01_ses-1_scans.tsv", "sub-01/sub-01_sessions.tsv"]
    shifted = (datetime(2021, 3, 4, 10, 11, 12) + OFFSET).isoformat()
    assert shifted.startswith("1911-") and shifted.endswith("T10:11:12"), "whole days: the time of day is kept"
    assert read_tsv(out / "sub-01" / "sub-01_sessions.tsv") == [
        ["session_id", "acq_time", "age"],
        ["ses-1", shifted, "89"],
    ], "ses-2 has no output"
    assert read_tsv(out / "sub-01" / "ses-1" / "sub-01_ses-1_scans.tsv") == [
        ["filename", "acq_time"],
        ["anat/sub-01_ses-1_desc-defaced_T1w.nii.gz", shifted],
    ], "rows name the defaced output; scans without one are left out"
    assert not (out / "sub-01" / "ses-2").exists()
    sessions = reports["sub-01/sub-01_sessions.tsv"]
    assert (sessions.shifted, sessions.replaced, sessions.removed, sessions.unknown_removed) == (
        ("acq_time",),
        ("age",),
        (),
        1,
    )
    assert sorted(json.loads((out / "sub-01" / "sub-01_sessions.json").read_text())) == [
        "acq_time",
        "age",
        "session_id",
    ]
    written = output_text(out)
    assert "2021" not in written
    assert SECRET_COLUMN not in written and SECRET_VALUE not in written


def test_subject_tables_pseudonymised_with_dates_dropped(bids: Path, tmp_path: Path) -> None:
    subject_dataset(bids)
    out = tmp_path / "out"
    touch(out / "sub-x7" / "ses-a1" / "anat" / "sub-x7_ses-a1_desc-defaced_T1w.nii.gz")
    touch(out / "sub-x7" / "ses-b2" / "anat" / "sub-x7_ses-b2_desc-defaced_T1w.nii.gz")
    identity = SubjectIdentity("01", "x7", None, {"1": "a1", "2": "b2"})
    reports = write_subject_tables(Config(bids, out, pseudonymize=True, drop_dates=True), identity)
    assert sorted(reports) == [
        "sub-x7/ses-a1/sub-x7_ses-a1_scans.tsv",
        "sub-x7/ses-b2/sub-x7_ses-b2_scans.tsv",
        "sub-x7/sub-x7_sessions.tsv",
    ]
    assert read_tsv(out / "sub-x7" / "sub-x7_sessions.tsv") == [
        ["session_id", "age"],
        ["ses-a1", "89"],
        ["ses-b2", "40"],
    ]
    assert read_tsv(out / "sub-x7" / "ses-b2" / "sub-x7_ses-b2_scans.tsv") == [
        ["filename"],
        ["anat/sub-x7_ses-b2_desc-defaced_T1w.nii.gz"],
    ]
    sessions = reports["sub-x7/sub-x7_sessions.tsv"]
    assert (sessions.removed, sessions.unknown_removed, sessions.shifted) == (("acq_time",), 1, ())
    written = output_text(out)
    for original in ("sub-01", "ses-1", "ses-2", "2021", SECRET_COLUMN, SECRET_VALUE):
        assert original not in written


def test_subject_without_tables_or_sessions(bids: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    touch(out / "sub-01" / "anat" / "sub-01_desc-defaced_T1w.nii.gz")
    identity = SubjectIdentity("01", "01", None)
    assert write_subject_tables(Config(bids, out, drop_dates=True), identity) == {}
    tsv(bids / "sub-01" / "sub-01_scans.tsv", "filename|acq_time", "anat/sub-01_T1w.nii.gz|2021-03-04T10:11:12")
    reports = write_subject_tables(Config(bids, out, drop_dates=True), identity)
    assert list(reports) == ["sub-01/sub-01_scans.tsv"]
    assert read_tsv(out / "sub-01" / "sub-01_scans.tsv") == [["filename"], ["anat/sub-01_desc-defaced_T1w.nii.gz"]]


def test_scans_row_of_uncompressed_input(bids: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    touch(out / "sub-01" / "anat" / "sub-01_desc-defaced_T2w.nii.gz")  # as the pipeline names it
    tsv(bids / "sub-01" / "sub-01_scans.tsv", "filename", "anat/sub-01_T2w.nii")
    identity = SubjectIdentity("01", "01", None)
    write_subject_tables(Config(bids, out, drop_dates=True), identity)
    assert read_tsv(out / "sub-01" / "sub-01_scans.tsv") == [["filename"], ["anat/sub-01_desc-defaced_T2w.nii.gz"]]


def test_scrub_record_merged_over_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    identity = SubjectIdentity("01", "x7", OFFSET)
    config = Config(tmp_path / "bids", out, pseudonymize=True)
    path = write_scrub_record(config, identity, {"b.json": {"Removed": ["PatientName"]}})
    assert path == scrub_record_path(out, identity) == out / "sub-x7" / "sub-x7_scrub.json"
    write_scrub_record(config, identity, {"a.json": {"UnknownRemoved": 2}, "b.json": {"Removed": ["StationName"]}})
    record = json.loads(path.read_text())
    assert record["Files"] == {"a.json": {"UnknownRemoved": 2}, "b.json": {"Removed": ["StationName"]}}
    assert list(record["Files"]) == ["a.json", "b.json"], "sorted"
    assert record["LabelsPseudonymised"] is True
    assert record["Dates"].startswith("shifted")
    assert record["GeneratedBy"].startswith("bidsdeface ")
    assert "never their values" in record["Description"]
    assert [p.name for p in path.parent.iterdir()] == ["sub-x7_scrub.json"], "no temporaries left"


@pytest.mark.parametrize(
    "earlier",
    [
        pytest.param("{half", id="truncated"),
        pytest.param("[1, 2]", id="list"),
        pytest.param('{"Files": "x"}', id="files-a-string"),
        pytest.param('{"Files": [1]}', id="files-a-list-of-numbers"),
        pytest.param('{"Files": [["b.json", {"Removed": []}]]}', id="files-a-list-of-pairs"),
        pytest.param('{"Files": null}', id="files-null"),
    ],
)
def test_scrub_record_replaces_an_unreadable_one(tmp_path: Path, earlier: str) -> None:
    out = tmp_path / "out"
    identity = SubjectIdentity("01", "01", None)
    path = scrub_record_path(out, identity)
    touch(path).write_text(earlier)
    write_scrub_record(Config(tmp_path / "bids", out, drop_dates=True), identity, {"a.json": {"UnknownRemoved": 1}})
    record = json.loads(path.read_text())
    assert record["Files"] == {"a.json": {"UnknownRemoved": 1}}
    assert (record["Dates"], record["LabelsPseudonymised"]) == ("removed", False)


def test_dataset_scrub_record(tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = Config(tmp_path / "bids", out)
    path = write_dataset_scrub_record(config, {"dataset_description.json": None, "participants.tsv": None})
    assert path == out / DATASET_SCRUB_RECORD
    record = json.loads(path.read_text())
    assert record["Files"] == {} and record["GeneratedBy"].startswith("bidsdeface ")
    assert "never their values" in record["Description"]


def test_k_anonymity_bands_participant_and_session_ages_alike(bids: Path, tmp_path: Path) -> None:
    subject_dataset(bids)
    out = tmp_path / "out"
    touch(out / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_desc-defaced_T1w.nii.gz")
    for label in ("02", "03"):
        (out / f"sub-{label}").mkdir(parents=True)
    tsv(bids / "participants.tsv", "participant_id|age|sex", "sub-01|93|F", "sub-02|41|M", "sub-03|47|F")
    config = Config(bids, out, drop_dates=True, quasi_identifiers=("age",), k_anonymity=2, max_suppressed_rows=0.4)
    plan = participants_plan(config)
    assert plan is not None and plan.age_level == 2, "41 and 47 meet in a 10-year band; 89 is alone: suppressed"
    write_participants(config)
    write_subject_tables(config, SubjectIdentity("01", "01", None))
    ages = {row[0]: row[1] for row in read_tsv(out / "participants.tsv")[1:]}
    assert ages == {"sub-01": "n/a", "sub-02": "40", "sub-03": "40"}
    sessions = read_tsv(out / "sub-01" / "sub-01_sessions.tsv")
    assert sessions[1][sessions[0].index("age")] == "n/a", "the subject's row is suppressed: so are its session ages"
    description = json.loads((out / "participants.json").read_text())["age"]["Description"]
    assert "lower bound" in description
    report = json.loads(write_privacy_report(config, plan).read_text())
    assert report["Before"]["K"] == 1 and report["After"]["K"] == 2 and report["SuppressedRows"] == 1
    assert report["SessionAges"]["Before"]["Rows"] == 2 and report["SessionAges"]["After"]["Rows"] == 0
    with pytest.raises(UsageError, match="not a participants column that leaves: PatientName"):
        participants_plan(Config(bids, out, quasi_identifiers=("PatientName",)))
