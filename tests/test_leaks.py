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
from bidsdeface.policy import IDENTIFYING_KEYS

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


def _sidecar(real: dict, mark: Markers, subject: str, session: str) -> dict:
    place = f"sub-{subject} ses-{session} sidecar"
    sidecar = dict(real)
    for key in sorted(IDENTIFYING_KEYS):
        sidecar[key] = mark(f"{place} {key}")
    acquired = ACQUIRED[subject, session]
    sidecar["AcquisitionDateTime"] = acquired
    sidecar["AcquisitionTime"] = acquired.split("T")[1]
    sidecar["SeriesDescription"] = f"t1 mprage {mark(f'{place} SeriesDescription text')}"
    sidecar["SiteSecretNote"] = mark(f"{place} unknown key")
    sidecar["Custom"] = {"nested": [mark(f"{place} nested value")], "ok": 1}
    sidecar["PatientWeight"] = 71.5
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
        mark.add(acquired[11:19], "acquisition clock time")
    mark.add(KEY, "date-shift key")

    bids.mkdir()
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "leak test", "BIDSVersion": "1.10.0", "DatasetType": "raw", "Authors": ["A", "B"]})
    )
    (bids / "README").write_text("Real heads with planted identifiers.\n")
    (bids / "T1w.json").write_text(json.dumps({"InheritedSecret": mark("inherited T1w.json")}))
    _write_tsv(
        bids / "participants.tsv",
        [
            {"participant_id": f"sub-{SUBJECT_A}", "age": "93", "sex": "F", "name": mark("participants name"),
             "birth_date": "1931-02-03", "address": mark("participants address")},
            {"participant_id": f"sub-{SUBJECT_B}", "age": "41", "sex": "M", "name": mark("participants name"),
             "birth_date": "1983-07-09", "address": mark("participants address")},
        ],
    )  # fmt: skip
    mark.add("1931-02-03", "birth date")
    (bids / "participants.json").write_text(
        json.dumps(
            {
                "age": {"Description": "age in years", "Units": "year", "Note": mark("participants.json note")},
                "name": {"Description": mark("participants.json name description")},
            }
        )
    )
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
                    }
                ],
            )
    before = tree_digest(bids)
    command = [sys.executable, "-m", "bidsdeface.cli", str(bids), str(out), "participant", "-v"]
    command += ["--pseudonymize", "--date-shift-key", KEY, "--private-dir", str(private), "--skull-strip", *PARALLEL]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
    return {"bids": bids, "out": out, "private": private, "result": result, "markers": mark.where, "before": before}


def test_the_run_succeeds_and_leaves_the_input_alone(leak_run: dict) -> None:
    assert leak_run["result"].returncode == 0, leak_run["result"].stderr[-3000:]
    assert tree_digest(leak_run["bids"]) == leak_run["before"]
    assert len(list(leak_run["out"].glob("sub-*/ses-*/anat/*_desc-defaced_T1w.nii.gz"))) == 3
    assert len(list(leak_run["out"].glob("sub-*/ses-*/anat/*_desc-brain_T1w.nii.gz"))) == 3


def test_no_planted_identifier_survives_anywhere(leak_run: dict) -> None:
    markers = leak_run["markers"]
    assert len(markers) > len(IDENTIFYING_KEYS) * 3
    result = leak_run["result"]
    log = without_clock_stamps(result.stdout + result.stderr)
    hits = find_leaks(leak_run["out"], markers, {"log": log})
    assert hits == [], [f"{where}: {marker} (planted in {markers[marker]})" for where, marker in hits]


def test_planted_markers_are_findable(leak_run: dict) -> None:
    """The search itself works: it finds the markers in the input tree."""
    places = {leak_run["markers"][marker] for _, marker in find_leaks(leak_run["bids"], leak_run["markers"])}
    for planted in ("gzip file name", "afni ext", "descrip", "db_name", "nested value", "participants.json note"):
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


def test_tables_keep_only_allowed_columns(leak_run: dict) -> None:
    out = leak_run["out"]
    participants = (out / "participants.tsv").read_text().splitlines()
    assert participants[0].split("\t") == ["participant_id", "age", "sex"]
    ages = {row.split("\t")[0]: row.split("\t")[1] for row in participants[1:]}
    assert ages == {f"sub-{keyed_identity(KEY, SUBJECT_A)[1]}": "89", f"sub-{keyed_identity(KEY, SUBJECT_B)[1]}": "41"}
    assert json.loads((out / "participants.json").read_text()) == {
        "age": {"Description": "age in years", "Units": "year"}
    }
    for sessions in out.glob("sub-*/*_sessions.tsv"):
        assert sessions.read_text().splitlines()[0].split("\t") == ["session_id", "acq_time"]


def test_scrub_record_names_keys_not_values(leak_run: dict) -> None:
    pseudonym = keyed_identity(KEY, SUBJECT_A)[1]
    record = json.loads((leak_run["out"] / f"sub-{pseudonym}" / f"sub-{pseudonym}_scrub.json").read_text())
    sidecar_records = [entry["Sidecar"] for entry in record["Files"].values() if "Sidecar" in entry]
    assert len(sidecar_records) == 2
    for entry in sidecar_records:
        assert {"InstitutionName", "PatientName", "SiteSecretNote", "InheritedSecret"} <= set(entry["Removed"])
        assert {"AcquisitionDateTime", "AcquisitionTime"} <= set(entry["DatesShifted"])
    headers = [entry["NiftiHeader"]["Removed"] for entry in record["Files"].values() if "NiftiHeader" in entry]
    assert all(set(fields) == {"descrip", "aux_file", "intent_name", "db_name", "extensions"} for fields in headers)
    assert any(name.endswith("_scans.tsv") for name in record["Files"])


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
