"""Plant identifiers everywhere a BIDS input can hold them, run the whole CLI, find none in the output.

Markers go into every DICOM PS3.15 Basic Profile attribute (as a sidecar key),
dcm2niix's real leftovers, unknown and nested sidecar keys, inherited sidecars,
participants/sessions/scans tables and their JSON, NIfTI header text fields and
extensions, the gzip header, and the subject and session labels. The search
covers every output byte (decompressed too), every output file name and the log.
Later outputs (figures, reports) fall under the same search because the whole
tree is walked.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import nibabel as nib
import pytest

from bidsdeface.identity import keyed_identity
from bidsdeface.policy import CLOCK_KEYS, NEUTRAL_DATASET_NAME, SITE_COLUMN_DESCRIPTION, identifying_keys
from bidsdeface.standards import column_description

from .conftest import NIFTI_HEADS, PARALLEL, SHARED, needs_shared, run_validator, tree_digest
from .leakcheck import Markers, find_leaks, readable_forms, without_clock_stamps

pytestmark = [needs_shared, pytest.mark.slow]

KEY = "LeakTestKey-7f3a"
SUBJECT_A, SUBJECT_B = "MRN4471923", "DoeJohn1957"
SESSIONS = {SUBJECT_A: ["20240315", "20240322"], SUBJECT_B: ["20240401"]}
ACQUIRED = {
    (SUBJECT_A, "20240315"): "2024-03-15T14:22:07.250000",
    (SUBJECT_A, "20240322"): "2024-03-22T09:05:33.000000",
    (SUBJECT_B, "20240401"): "2024-04-01T17:48:51.500000",
}
REAL_SITE_KEYS = ("InstitutionName", "InstitutionAddress", "StationName", "ProcedureStepDescription")
# Identifying text as people type it into allowed keys ({} is the marker).
FREE_TEXT = {
    "SequenceName": "{} John Smith",
    "ReceiveCoilName": "coil of Dr Jones {}",
    "Manufacturer": "{} Smith Imaging",
    "ManufacturersModelName": "Mary Jones {}",
    "BodyPart": "{} Smith",
    "PulseSequenceType": "{} MRN 4471923",
    "CoilCombinationMethod": "{} call 020 7946 0958",
}


def _sidecar(real: dict, mark: Markers, subject: str, session: str) -> dict:
    place = f"sub-{subject} ses-{session} sidecar"
    sidecar = dict(real)
    for key in sorted(identifying_keys()):
        sidecar[key] = mark(f"{place} {key}")
    acquired = ACQUIRED[subject, session]
    sidecar["AcquisitionDateTime"] = acquired
    sidecar["AcquisitionTime"] = acquired.split("T")[1]
    sidecar["StudyDate"] = acquired[:10]  # date-only values: same shifted day as the date-times
    sidecar["ContentDate"] = acquired[:10].replace("-", "")
    sidecar["SeriesDescription"] = f"t1 mprage {mark(f'{place} SeriesDescription text')}"
    sidecar["SiteSecretNote"] = mark(f"{place} unknown key")
    sidecar["Custom"] = {"nested": [mark(f"{place} nested value")], "ok": 1}
    sidecar["PatientWeight"] = 71.5
    sidecar[f"{mark(f'{place} unknown key name')}_MRN"] = 4471923  # the name itself identifies
    # allowed keys holding values of the wrong type or shape
    sidecar["EchoTime"] = {"value": 0.003, "note": mark(f"{place} EchoTime object")}
    sidecar["FlipAngle"] = [mark(f"{place} FlipAngle list")]
    sidecar["RepetitionTime"] = mark(f"{place} RepetitionTime string")
    sidecar["StudyTime"] = [mark(f"{place} StudyTime list"), "10:00:00"]
    # free text typed into allowed keys
    for key, text in FREE_TEXT.items():
        sidecar[key] = text.format(mark(f"{place} {key} text"))
    return sidecar


def _planted_image(source: Path, mark: Markers, place: str) -> bytes:
    image = nib.load(source)
    image = nib.Nifti1Image(image.dataobj, image.affine, image.header)
    for field in ("descrip", "aux_file", "intent_name", "db_name"):
        image.header[field] = mark(f"{place} {field}").encode()
    image.header.extensions.clear()
    image.header.extensions.append(nib.nifti1.Nifti1Extension(6, f"Patient {mark(f'{place} ext')}".encode()))
    image.header.extensions.append(
        nib.nifti1.Nifti1Extension(4, f"<AFNI_atr>{mark(f'{place} afni ext')}</AFNI_atr>".encode())
    )
    raw = io.BytesIO()
    gz_name = f"{mark(f'{place} gzip file name')}.nii"
    with gzip.GzipFile(filename=gz_name, mode="wb", fileobj=raw, mtime=1710512527) as stream:
        stream.write(image.to_bytes())
    return raw.getvalue()


def _write_tsv(path: Path, rows: list[dict[str, str]]) -> None:
    path.write_text("\t".join(rows[0]) + "\n" + "".join("\t".join(row.values()) + "\n" for row in rows))


def _dataset_description(mark: Markers) -> dict:
    """A dataset description with identifying text in every free-text field."""
    return {
        "Name": f"Study of {mark('dataset Name')} at St Mary's",
        "BIDSVersion": "1.10.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["Ann Lee", f"Bob Ray MRN 4471923 {mark('dataset Authors entry')}"],
        "Acknowledgements": f"Thanks to {mark('dataset Acknowledgements')}",
        "HowToAcknowledge": f"Cite {mark('dataset HowToAcknowledge')}",
        "Funding": [f"Grant {mark('dataset Funding')}"],
        "EthicsApprovals": [f"IRB {mark('dataset EthicsApprovals')}"],
        "ReferencesAndLinks": [f"https://example.org/{mark('dataset ReferencesAndLinks')}"],
        mark("dataset unknown field name"): "x",
    }


def _column_descriptions(mark: Markers, secret_column: str) -> dict:
    """Descriptions of the participants columns with identifying text in every field, keys and levels included."""
    return {
        "age": {"Description": "age in years", "Units": mark("participants.json Units"),
                "Note": mark("participants.json note"), "TermURL": f"https://example.org/{mark('TermURL')}"},
        "sex": {"LongName": mark("participants.json LongName"),
                "Levels": {mark("participants.json Levels key"): mark("participants.json Levels value")}},
        "group": {"Description": mark("participants.json group description")},
        "remarks": {"Description": mark("participants.json remarks description")},
        "name": {"Description": mark("participants.json name description")},
        secret_column: {"Description": mark("participants.json secret column description")},
    }  # fmt: skip


def _add_broken_scan(bids: Path, head: Path, mark: Markers) -> None:
    """A second run of subject B whose sidecar is not JSON: its error names a file of the input."""
    anat = bids / f"sub-{SUBJECT_B}" / f"ses-{SESSIONS[SUBJECT_B][0]}" / "anat"
    stem = f"sub-{SUBJECT_B}_ses-{SESSIONS[SUBJECT_B][0]}_run-2_T1w"
    (anat / f"{stem}.nii.gz").write_bytes(head.read_bytes())
    (anat / f"{stem}.json").write_text("{" + mark("broken sidecar content") + " Doe^John")


@pytest.fixture(scope="module")
def leak_run(tmp_path_factory: pytest.TempPathFactory, dicom_heads: dict[str, Path]) -> dict:
    root = tmp_path_factory.mktemp("leaks")
    bids, out, private = root / "bids", root / "out", root / "private"
    mark = Markers()
    real = json.loads(dicom_heads["trio"].with_name("scan.json").read_text())
    for key in REAL_SITE_KEYS:
        mark.add(str(real[key]), f"dcm2niix {key}")
    for subject, sessions in SESSIONS.items():
        mark.add(subject, "subject label")
        for session in sessions:
            mark.add(session, "session label")
    for acquired in ACQUIRED.values():
        mark.add(acquired[:10], "acquisition date")
        # times of day are kept: offsets are whole days, so that same-day values stay on one day
    mark.add(KEY, "date-shift key")

    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps(_dataset_description(mark)))
    (bids / "README").write_text("Real heads with planted identifiers.\n")
    (bids / "T1w.json").write_text(json.dumps({"InheritedSecret": mark("inherited T1w.json")}))
    secret_column = mark("participants column name")
    _write_tsv(
        bids / "participants.tsv",
        [
            {"participant_id": f"sub-{SUBJECT_A}", "age": "93", "sex": "F", "name": mark("participants name"),
             "birth_date": "1931-02-03", "address": mark("participants address"),
             "handedness": mark("participants handedness value"), "group": f"Dr Smith {mark('participants group')}",
             "species": f"{mark('participants species')} Jones", "remarks": f"call 020 7946 0958 {mark('remarks')}",
             secret_column: "x"},
            {"participant_id": f"sub-{SUBJECT_B}", "age": "41", "sex": mark("participants sex value"),
             "name": mark("participants name"), "birth_date": "1983-07-09", "address": mark("participants address"),
             "handedness": "R", "group": "control", "species": "homo sapiens", "remarks": "n/a", secret_column: "y"},
        ],
    )  # fmt: skip
    mark.add("1931-02-03", "birth date")
    (bids / "participants.json").write_text(json.dumps(_column_descriptions(mark, secret_column)))
    (bids / "scans.json").write_text(
        json.dumps({"operator": {"Description": mark("scans.json operator")}, "acq_time": {"Description": "start"}})
    )
    head = SHARED / NIFTI_HEADS["ixi"]
    for subject, sessions in SESSIONS.items():
        (bids / f"sub-{subject}").mkdir()
        _write_tsv(
            bids / f"sub-{subject}" / f"sub-{subject}_sessions.tsv",
            [
                {"session_id": f"ses-{s}", "acq_time": ACQUIRED[subject, s][:19], "notes": mark("sessions notes")}
                for s in sessions
            ],
        )
        for session in sessions:
            anat = bids / f"sub-{subject}" / f"ses-{session}" / "anat"
            anat.mkdir(parents=True)
            stem = f"sub-{subject}_ses-{session}_T1w"
            (anat / f"{stem}.nii.gz").write_bytes(_planted_image(head, mark, f"{subject} {session} image"))
            (anat / f"{stem}.json").write_text(json.dumps(_sidecar(real, mark, subject, session)))
            _write_tsv(
                anat.parent / f"sub-{subject}_ses-{session}_scans.tsv",
                [
                    {
                        "filename": f"anat/{stem}.nii.gz",
                        "acq_time": ACQUIRED[subject, session][:19],
                        "operator": mark("scans operator"),
                        "comments": mark("scans comments"),
                        mark("scans column name"): "1",
                    }
                ],
            )
    _add_broken_scan(bids, head, mark)
    before = tree_digest(bids)
    command = [sys.executable, "-m", "bidsdeface.cli", str(bids), str(out), "participant", "-v"]
    command += ["--pseudonymize", "--date-shift-key", KEY, "--private-dir", str(private), "--skull-strip", *PARALLEL]
    # the broken scan's sidecar is not JSON, which the input validator would refuse before any scan runs
    command += ["--keep-columns", "remarks", "--skip-bids-validation"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
    return {"bids": bids, "out": out, "private": private, "result": result, "markers": mark.where, "before": before}


def test_the_run_fails_only_the_broken_scan_and_leaves_the_input_alone(leak_run: dict) -> None:
    assert leak_run["result"].returncode == 65, leak_run["result"].stderr[-3000:]
    assert tree_digest(leak_run["bids"]) == leak_run["before"]
    assert len(list(leak_run["out"].glob("sub-*/ses-*/anat/*_desc-defaced_T1w.nii.gz"))) == 3
    assert len(list(leak_run["out"].glob("sub-*/ses-*/anat/*_desc-brain_T1w.nii.gz"))) == 3


def test_no_planted_identifier_survives_anywhere(leak_run: dict) -> None:
    markers = leak_run["markers"]
    assert len(markers) > len(identifying_keys()) * 3
    result = leak_run["result"]
    log = without_clock_stamps(result.stdout + result.stderr)
    hits = find_leaks(leak_run["out"], markers, {"log": log})
    assert hits == [], [f"{where}: {marker} (planted in {markers[marker]})" for where, marker in hits]


def test_planted_markers_are_findable(leak_run: dict) -> None:
    """The search itself works: it finds the markers in the input tree."""
    places = {leak_run["markers"][marker] for _, marker in find_leaks(leak_run["bids"], leak_run["markers"])}
    planted_places = (
        "gzip file name", "afni ext", "descrip", "db_name", "nested value", "participants.json note",
        "unknown key name", "participants column name", "scans column name", "participants handedness value",
        "participants group", "remarks", "participants.json Levels key", "participants.json Levels value", "TermURL",
        "EchoTime object", "FlipAngle list", "StudyTime list", "SequenceName text", "Manufacturer text",
        "BodyPart text", "dataset Name", "dataset Authors entry", "dataset Acknowledgements",
        "dataset unknown field name", "broken sidecar content",
    )  # fmt: skip
    for planted in planted_places:
        assert any(planted in place for place in places), planted


def test_gzip_headers_carry_no_name_or_time(leak_run: dict) -> None:
    for path in leak_run["out"].rglob("*.nii.gz"):
        header = path.read_bytes()[:10]
        assert header[3] & 0x08 == 0, path  # FNAME flag
        assert header[4:8] == b"\0\0\0\0", path  # mtime


def test_output_is_valid_bids(leak_run: dict) -> None:
    result = run_validator(leak_run["out"])
    assert result.returncode == 0, result.stdout[-3000:]


def _outputs_of(leak_run: dict, subject: str) -> tuple[str, dict[str, dict]]:
    pseudonym = keyed_identity(KEY, subject)[1]
    sidecars = {}
    for path in sorted((leak_run["out"] / f"sub-{pseudonym}").glob("ses-*/anat/*_desc-defaced_T1w.json")):
        sidecars[path.parent.parent.name] = json.loads(path.read_text())
    return pseudonym, sidecars


def test_dates_keep_their_intervals_and_differ_between_subjects(leak_run: dict) -> None:
    shifts = {}
    for subject, sessions in SESSIONS.items():
        pseudonym, sidecars = _outputs_of(leak_run, subject)
        assert len(sidecars) == len(sessions)
        for sidecar in sidecars.values():
            assert datetime.fromisoformat(sidecar["AcquisitionDateTime"]).year <= 1925
        originals = sorted(datetime.fromisoformat(ACQUIRED[subject, s]) for s in sessions)
        shifted = sorted(datetime.fromisoformat(s["AcquisitionDateTime"]) for s in sidecars.values())
        deltas = {after - before for after, before in zip(shifted, originals, strict=True)}
        assert len(deltas) == 1  # one offset per subject: intervals kept exactly
        shifts[subject] = deltas.pop()
        assert shifts[subject] == timedelta(seconds=keyed_identity(KEY, subject)[0])  # same key, same offset
        assert shifts[subject] % timedelta(days=1) == timedelta(0)  # whole days: times of day are kept
        for sidecar, original in zip(sidecars.values(), originals, strict=True):
            clock = datetime.strptime(sidecar["AcquisitionTime"], "%H:%M:%S.%f")
            assert clock.time() == (original + shifts[subject]).time()
        scans = [
            line.split("\t")
            for path in sorted((leak_run["out"] / f"sub-{pseudonym}").glob("ses-*/*_scans.tsv"))
            for line in path.read_text().splitlines()[1:]
        ]
        times = sorted(datetime.fromisoformat(row[1]) for row in scans)
        assert [t - o for t, o in zip(times, originals, strict=True)] == [
            shifts[subject] - timedelta(microseconds=o.microsecond) for o in originals
        ]
    assert shifts[SUBJECT_A] != shifts[SUBJECT_B]


def _participants(out: Path) -> dict[str, dict[str, str]]:
    header, *rows = (line.split("\t") for line in (out / "participants.tsv").read_text().splitlines())
    return {keyed_identity(KEY, subject)[1]: dict(zip(header, row, strict=True)) for subject in SESSIONS
            for row in rows if row[0] == f"sub-{keyed_identity(KEY, subject)[1]}"}  # fmt: skip


def test_tables_keep_allowed_columns_and_only_screened_values(leak_run: dict) -> None:
    """Leak 2: BIDS-vocabulary columns keep BIDS levels only; free text (kept columns too) fails to n/a."""
    out = leak_run["out"]
    rows = _participants(out)
    a, b = rows[keyed_identity(KEY, SUBJECT_A)[1]], rows[keyed_identity(KEY, SUBJECT_B)[1]]
    assert list(a) == ["participant_id", "age", "sex", "handedness", "group", "species", "remarks"]
    assert (a["age"], a["sex"], a["handedness"], a["group"], a["species"], a["remarks"]) == ("89", "F", *["n/a"] * 4)
    assert (b["age"], b["sex"], b["handedness"]) == ("41", "n/a", "R")
    assert (b["group"], b["species"]) == ("control", "homo sapiens")
    record = json.loads((out / "dataset_scrub.json").read_text())["Files"]["participants.tsv"]
    assert set(record["ValuesDropped"]) == {"sex", "handedness", "group", "species", "remarks"}
    assert record["Removed"] == ["name"] and record["UnknownRemoved"] == 3  # a BIDS column name; 3 others counted
    for sessions in out.glob("sub-*/*_sessions.tsv"):
        assert sessions.read_text().splitlines()[0].split("\t") == ["session_id", "acq_time"]


def test_column_descriptions_come_from_the_schema(leak_run: dict) -> None:
    """Leak 3: descriptions are the BIDS schema's (or bidsdeface's own); nothing of the input's text is kept."""
    described = json.loads((leak_run["out"] / "participants.json").read_text())
    assert set(described) == {"participant_id", "age", "sex", "handedness", "species", "group", "remarks"}
    for column in ("participant_id", "age", "sex", "handedness", "species"):
        assert described[column] == column_description(column), column
    assert described["remarks"] == SITE_COLUMN_DESCRIPTION
    scans_json = [json.loads(p.read_text()) for p in leak_run["out"].glob("sub-*/ses-*/*_scans.json")]
    assert scans_json and all(d == {c: column_description(c) for c in ("filename", "acq_time")} for d in scans_json)


def test_allowed_keys_keep_only_values_the_standards_define(leak_run: dict) -> None:
    """Leak 4: wrong types, nested objects, date lists and typed-in free text in allowed keys are dropped."""
    _, sidecars = _outputs_of(leak_run, SUBJECT_A)
    pseudonym = keyed_identity(KEY, SUBJECT_A)[1]
    record = json.loads((leak_run["out"] / f"sub-{pseudonym}" / f"sub-{pseudonym}_scrub.json").read_text())
    dropped = [entry["Sidecar"]["ValuesDropped"] for entry in record["Files"].values() if "Sidecar" in entry]
    expected = {"EchoTime", "FlipAngle", "RepetitionTime", "StudyTime", *FREE_TEXT}
    assert len(dropped) == 2
    for entry in dropped:  # planted markers in date keys are no dates: those are dropped too
        assert expected <= set(entry) and set(entry) - expected <= CLOCK_KEYS, entry
    for sidecar in sidecars.values():
        assert not expected & set(sidecar)
        assert sidecar["MagneticFieldStrength"] == 3 and sidecar["InversionTime"] > 0  # physics stays


def test_dataset_description_carries_license_and_screened_authors(leak_run: dict) -> None:
    """Leak 5: a neutral Name, License and the authors that pass the screen; nothing else of the input's."""
    description = json.loads((leak_run["out"] / "dataset_description.json").read_text())
    assert description["Name"] == NEUTRAL_DATASET_NAME
    assert description["License"] == "CC0" and description["Authors"] == ["Ann Lee"]
    assert not {"Acknowledgements", "HowToAcknowledge", "Funding", "EthicsApprovals", "ReferencesAndLinks"} & set(
        description
    )
    record = json.loads((leak_run["out"] / "dataset_scrub.json").read_text())["Files"]["dataset_description.json"]
    assert record["UnknownRemoved"] == 1 and "Authors" in record["ValuesDropped"]


def test_failure_names_the_scan_with_output_names_only(leak_run: dict) -> None:
    """Leak 7: the broken scan's one-line error names output paths, never the input folder joined to pseudonyms."""
    log = leak_run["result"].stderr
    failed = [line for line in log.splitlines() if "FAILED" in line]
    subject = keyed_identity(KEY, SUBJECT_B)[1]
    session = next((leak_run["out"] / f"sub-{subject}").glob("ses-*")).name.removeprefix("ses-")
    name = f"sub-{subject}/ses-{session}/anat/sub-{subject}_ses-{session}_run-2_T1w"
    assert len(failed) == 1 and f"{name}.json: unreadable JSON" in failed[0], failed
    assert str(leak_run["bids"]) not in log and "Traceback" not in log


def test_scrub_record_names_keys_not_values(leak_run: dict) -> None:
    """Leak 1: removed keys with standard names are named; the others are counted, never named."""
    pseudonym = keyed_identity(KEY, SUBJECT_A)[1]
    path = leak_run["out"] / f"sub-{pseudonym}" / f"sub-{pseudonym}_scrub.json"
    record = json.loads(path.read_text())
    sidecar_records = [entry["Sidecar"] for entry in record["Files"].values() if "Sidecar" in entry]
    assert len(sidecar_records) == 2
    for entry in sidecar_records:
        assert {"InstitutionName", "PatientName", "ProcedureStepDescription"} <= set(entry["Removed"])
        assert entry["UnknownRemoved"] >= 4  # SiteSecretNote, Custom, InheritedSecret and the *_MRN key
        assert {"AcquisitionDateTime", "AcquisitionTime"} <= set(entry["DatesShifted"])
    headers = [entry["NiftiHeader"]["Removed"] for entry in record["Files"].values() if "NiftiHeader" in entry]
    assert all(set(fields) == {"descrip", "aux_file", "intent_name", "db_name", "extensions"} for fields in headers)
    assert any(name.endswith("_scans.tsv") for name in record["Files"])
    shown = path.read_text() + (leak_run["out"] / f"sub-{pseudonym}.html").read_text() + leak_run["result"].stderr
    for unknown in ("SiteSecretNote", "InheritedSecret", "birth_date", "operator", "comments"):
        assert unknown not in shown, unknown


def test_the_private_mapping_is_outside_the_output(leak_run: dict) -> None:
    private = leak_run["private"]
    assert sorted(p.name for p in (private / "subjects").iterdir()) == [
        f"sub-{SUBJECT_B}.json",
        f"sub-{SUBJECT_A}.json",
    ]
    record = json.loads((private / "subjects" / f"sub-{SUBJECT_A}.json").read_text())
    assert set(record["sessions"]) == set(SESSIONS[SUBJECT_A])
    assert not list(leak_run["out"].rglob("*private*"))


def test_finder_reads_compressed_forms(tmp_path: Path) -> None:
    path = tmp_path / "x.nii.gz"
    path.write_bytes(gzip.compress(b"header LEAK999Q"))
    assert any(b"LEAK999Q" in form for form in readable_forms(path))
    assert find_leaks(tmp_path, ["leak999q"]) == [("x.nii.gz", "leak999q")]


def _table_days(path: Path) -> dict[str, str]:
    """First column -> the day of ``acq_time`` in a scans or sessions table."""
    header, *rows = (line.split("\t") for line in path.read_text().splitlines())
    return {row[0]: row[header.index("acq_time")][:10] for row in rows}


def test_same_day_values_share_a_shifted_day(leak_run: dict) -> None:
    """StudyDate and ContentDate of the acquisition day land on the shifted acquisition day, as acq_time does."""
    for subject, sessions in SESSIONS.items():
        pseudonym, sidecars = _outputs_of(leak_run, subject)
        assert len(sidecars) == len(sessions)
        folder = leak_run["out"] / f"sub-{pseudonym}"
        session_days = _table_days(next(folder.glob("*_sessions.tsv")))
        for session, sidecar in sidecars.items():
            day = sidecar["AcquisitionDateTime"][:10]
            assert datetime.fromisoformat(day).year <= 1925
            assert (sidecar["StudyDate"], sidecar["ContentDate"]) == (day, day.replace("-", ""))
            assert set(_table_days(next((folder / session).glob("*_scans.tsv"))).values()) == {day}
            assert session_days[session] == day
