"""Scrubbing on real sidecars: dcm2niix output of the shared DICOM series and the PET example."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsdeface import policy
from bidsdeface.errors import ScrubError
from bidsdeface.files import Table
from bidsdeface.policy import NEUTRAL_DATASET_NAME, SITE_COLUMN_DESCRIPTION, SitePolicy, identifying_keys
from bidsdeface.scrub import (
    cell_problem,
    screen_text,
    scrub_column_descriptions,
    scrub_dataset_description,
    scrub_events,
    scrub_nifti_header,
    scrub_sidecar,
    scrub_table,
    shift_clock_text,
    text_problem,
)
from bidsdeface.standards import column_description

from .conftest import SHARED, convert_dicom, run_validator, shared_file

OFFSET = -timedelta(days=41234)  # offsets are whole days
# What dcm2niix leaves in the sidecar even with -ba y (see the shared BIDS notes).
DCM2NIIX_LEFTOVERS = (
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "ProcedureStepDescription",
    "SeriesDescription",
    "ProtocolName",
    "StudyDescription",
)
PHYSICS = ("EchoTime", "RepetitionTime", "FlipAngle", "MagneticFieldStrength", "Manufacturer", "InversionTime")
PET002 = "bids_examples/pet002"


@pytest.fixture(scope="module")
def dcm2niix_sidecars(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Sidecars written by dcm2niix for every DICOM series in the shared data (MRI and CT)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared real data not found at {SHARED}")
    out = tmp_path_factory.mktemp("sidecars")
    sidecars = {}
    for series in sorted(SHARED.glob("dicom_*")):
        image = convert_dicom(series, out / series.name)
        sidecars[series.name] = json.loads(image.with_name("scan.json").read_text())
    return sidecars


def _modality(series: str) -> str:
    return "ct" if "_ct_" in series else "mri"


def test_dcm2niix_sidecars_lose_every_identifying_key(dcm2niix_sidecars: dict[str, dict]) -> None:
    assert len(dcm2niix_sidecars) >= 4
    for series, sidecar in dcm2niix_sidecars.items():
        clean, report = scrub_sidecar(sidecar, _modality(series), SitePolicy(), OFFSET)
        assert not set(clean) & (identifying_keys() - {"AcquisitionTime"}), series
        assert not set(clean) & set(DCM2NIIX_LEFTOVERS), series
        assert set(clean) <= policy.MODALITY_SIDECAR_KEYS[_modality(series)] | policy.CLOCK_KEYS
        for key in DCM2NIIX_LEFTOVERS:
            if key in sidecar:
                assert key in report.removed
        for key in PHYSICS:
            if key in sidecar and key in policy.MODALITY_SIDECAR_KEYS[_modality(series)]:
                assert clean[key] == sidecar[key], (series, key)
        # every value that identified the site is gone from the whole text
        text = json.dumps(clean)
        for key in ("InstitutionName", "InstitutionAddress", "StationName", "DeviceSerialNumber"):
            if sidecar.get(key) not in (None, "", "None"):
                assert str(sidecar[key]) not in text, (series, key)


def test_dcm2niix_clock_times_shift_by_the_offset(dcm2niix_sidecars: dict[str, dict]) -> None:
    timed = {series: sidecar for series, sidecar in dcm2niix_sidecars.items() if "AcquisitionTime" in sidecar}
    assert len(timed) >= 3
    for series, sidecar in timed.items():
        clean, report = scrub_sidecar(sidecar, _modality(series), SitePolicy(), OFFSET)
        assert "AcquisitionTime" in report.shifted, series
        before = datetime.strptime(sidecar["AcquisitionTime"], "%H:%M:%S.%f")
        after = datetime.strptime(clean["AcquisitionTime"], "%H:%M:%S.%f")
        assert (after - before) % timedelta(days=1) == OFFSET % timedelta(days=1)
        dropped, report = scrub_sidecar(sidecar, _modality(series), SitePolicy(), None)
        assert "AcquisitionTime" not in dropped and "AcquisitionTime" in report.removed


def test_kept_free_text_failing_the_screen_is_dropped(dcm2niix_sidecars: dict[str, dict]) -> None:
    sidecar = dcm2niix_sidecars["dicom_mri_t1w_siemens_decubitus_HFS"]
    assert sidecar["ProcedureStepDescription"].count("^") == 1  # a DICOM person name, as sites type them
    site = SitePolicy(keep_sidecar_keys=("ProcedureStepDescription", "SeriesDescription"))
    clean, report = scrub_sidecar(sidecar, "mri", site, OFFSET)
    assert "ProcedureStepDescription" not in clean
    assert "ProcedureStepDescription" in report.dropped
    assert clean["SeriesDescription"] == sidecar["SeriesDescription"]


def test_site_policy_drops_allowed_keys(dcm2niix_sidecars: dict[str, dict]) -> None:
    sidecar = dcm2niix_sidecars["dicom_mri_t1w_siemens_trio_mprage"]
    clean, report = scrub_sidecar(sidecar, "mri", SitePolicy(drop_sidecar_keys=("ReceiveCoilName",)), OFFSET)
    assert "ReceiveCoilName" in sidecar and "ReceiveCoilName" not in clean
    assert "ReceiveCoilName" in report.removed


def test_unknown_and_nested_keys_are_removed() -> None:
    sidecar = {"EchoTime": 0.002, "SiteNotes": {"who": "Ann Smith"}, "Extra": ["x"], "RepetitionTime": 2.3}
    clean, report = scrub_sidecar(sidecar, "mri", SitePolicy(), OFFSET)
    assert clean == {"EchoTime": 0.002, "RepetitionTime": 2.3}
    assert report.removed == () and report.unknown_removed == 2  # non-standard names are counted, never shown


def test_fails_closed_when_an_identifying_key_would_survive(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = {**policy.MODALITY_SIDECAR_KEYS, "mri": policy.MODALITY_SIDECAR_KEYS["mri"] | {"StationName"}}
    monkeypatch.setattr("bidsdeface.scrub.MODALITY_SIDECAR_KEYS", broken)
    with pytest.raises(ScrubError, match="StationName"):
        scrub_sidecar({"StationName": "MRC35011"}, "mri", SitePolicy(), OFFSET)


def test_allow_lists_hold_no_identifying_key() -> None:
    for keys in policy.MODALITY_SIDECAR_KEYS.values():
        assert not keys & identifying_keys()
    assert not policy.DEVICE_IDENTITY_KEYS - identifying_keys()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-15T14:22:07", "1911-04-24T14:22:07"),
        ("2024-03-15T14:22:07.123456Z", "1911-04-24T14:22:07.123456Z"),
        ("2024-03-15", "1911-04-24"),
        ("14:22:07.5", "14:22:07.5"),
        ("00:30:00", "00:30:00"),
        ("20240315142207", "19110424142207"),
        ("20240315", "19110424"),
        ("142207", "142207"),
    ],
)
def test_clock_formats_are_kept(text: str, expected: str) -> None:
    assert shift_clock_text(text, OFFSET) == expected


@pytest.mark.parametrize("text", ["", "n/a", "14h22", "2024-13-40", "MRN-12345", "2024-03-15T25:00:00"])
def test_unreadable_clock_text_is_not_kept(text: str) -> None:
    assert shift_clock_text(text, OFFSET) is None


def test_dates_land_in_1925_or_earlier_and_keep_intervals_to_the_second() -> None:
    first, second = "2026-11-23T08:00:00", "2026-11-24T09:30:17"
    shifted = [datetime.fromisoformat(shift_clock_text(t, OFFSET) or "") for t in (first, second)]
    assert all(moment.year <= 1925 for moment in shifted)
    assert shifted[1] - shifted[0] == datetime.fromisoformat(second) - datetime.fromisoformat(first)
    assert shift_clock_text("2045-01-01", -timedelta(days=40177)) is None  # would land after 1925


@pytest.mark.parametrize("clock", ["00:00:00", "00:30:00", "14:22:07.25", "23:59:59.999999"])
def test_values_of_one_day_share_one_shifted_day(clock: str) -> None:
    """A date and any date-time of that day land on one shifted day, at the same time of day."""
    assert shift_clock_text("2024-03-15", OFFSET) == "1911-04-24"
    assert shift_clock_text("20240315", OFFSET) == "19110424"
    assert shift_clock_text(f"2024-03-15T{clock}", OFFSET) == f"1911-04-24T{clock}"
    assert shift_clock_text(f"20240315{clock.replace(':', '')}", OFFSET) == f"19110424{clock.replace(':', '')}"


def test_an_offset_with_a_part_of_a_day_is_refused() -> None:
    with pytest.raises(ValueError, match="whole days"):
        shift_clock_text("2024-03-15", -timedelta(days=40177, seconds=1))


def test_screen_patterns() -> None:
    assert screen_text("DOE^JOHN") == ("person name",)
    assert screen_text("call 555-201-3344") == ("phone number",)
    assert screen_text("scanned 03/15/2024") == ("date",)
    assert screen_text("ann.smith@example.org") == ("e-mail",)
    assert screen_text({"a": ["MRN 4471923"]}) == ("record number",)
    assert screen_text("t1_mpr_ns_sag_1mm_noring") == ()
    assert screen_text("10-min transmission scan") == ()


def _pet002(tmp_path: Path) -> Path:
    root = tmp_path / "pet002"
    shutil.copytree(shared_file(PET002), root)
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def test_pet_sidecars_keep_required_fields_and_stay_valid(tmp_path: Path) -> None:
    """Scrub the PET example's sidecars and tables in place of a copy; the validator still passes."""
    root = _pet002(tmp_path)
    for sidecar_path in sorted(root.glob("sub-*/ses-*/*/*.json")):
        sidecar = json.loads(sidecar_path.read_text())
        modality = "pet" if sidecar_path.parent.name == "pet" else "mri"
        clean, report = scrub_sidecar(sidecar, modality, SitePolicy(), OFFSET)
        if modality == "pet":
            assert "TimeZero" in report.shifted
            assert report.dropped == {} and report.replaced == ()  # its free text is technical: all kept
            assert {k: v for k, v in clean.items() if k != "TimeZero"} == {
                k: v for k, v in sidecar.items() if k != "TimeZero"
            }
        else:
            site_keys = {"InstitutionName", "InstitutionAddress", "StationName", "DeviceSerialNumber", "ImageComments"}
            assert {"InstitutionName", "StationName"} <= set(sidecar)
            assert site_keys & set(sidecar) <= set(report.removed)
        sidecar_path.write_text(json.dumps(clean))
    participants = Table.parse((root / "participants.tsv").read_text())
    clean_table, report = scrub_table(participants, "participants", SitePolicy(), None, lambda label: label)
    assert clean_table.columns == ("participant_id", "age")
    assert report.removed == () and report.unknown_removed == 3  # height, weight, gender: not BIDS columns
    (root / "participants.tsv").write_text(clean_table.to_text())
    descriptions = json.loads((root / "participants.json").read_text())
    described = scrub_column_descriptions(descriptions, clean_table.columns, SitePolicy())
    (root / "participants.json").write_text(json.dumps(described))
    config = tmp_path / "validator.json"
    config.write_text(json.dumps({"ignore": [{"code": "EMPTY_FILE"}]}))  # the example's images are placeholders
    result = run_validator(root, "--ignoreNiftiHeaders", "--config", str(config))
    assert result.returncode == 0, result.stdout[-3000:]


def test_pet_time_zero_has_a_placeholder_when_dates_are_dropped(tmp_path: Path) -> None:
    sidecar = json.loads(next(_pet002(tmp_path).glob("sub-01/ses-baseline/pet/*.json")).read_text())
    clean, report = scrub_sidecar(sidecar, "pet", SitePolicy(), None)
    assert clean["TimeZero"] == "00:00:00" and report.replaced == ("TimeZero",)
    assert clean["ScanStart"] == sidecar["ScanStart"] and clean["InjectionStart"] == sidecar["InjectionStart"]


def test_tables_generalise_ages_shift_times_and_drop_free_text() -> None:
    scans = Table(
        ("filename", "acq_time", "operator", "comments"),
        (
            ("anat/sub-1_T1w.nii.gz", "2024-03-15T14:22:07", "Ann", "MRN 4471923"),
            ("anat/sub-1_T2w.nii.gz", "2024-03-15T14:40:00", "Bob", "n/a"),
            ("func/sub-1_bold.nii.gz", "2024-03-15T15:00:00", "Bob", "n/a"),
        ),
    )
    keep_comments = SitePolicy(keep_columns=("comments",))
    clean, report = scrub_table(scans, "scans", keep_comments, OFFSET, lambda f: None if "func" in f else f)
    assert clean.columns == ("filename", "acq_time", "comments")
    assert [row[0] for row in clean.rows] == ["anat/sub-1_T1w.nii.gz", "anat/sub-1_T2w.nii.gz"]
    times = [datetime.fromisoformat(row[1]) for row in clean.rows]
    assert times[1] - times[0] == timedelta(minutes=17, seconds=53)
    assert report.removed == () and report.unknown_removed == 1 and report.shifted == ("acq_time",)
    assert report.dropped == {"comments": "1 value(s) looks like a record number; n/a written"}
    assert [row[2] for row in clean.rows] == ["n/a", "n/a"]
    dropped, report = scrub_table(scans, "scans", SitePolicy(), None, lambda f: f)
    assert dropped.columns == ("filename",) and "acq_time" in report.removed
    participants = Table(("participant_id", "age", "sex"), (("sub-1", "93.5", "F"), ("sub-2", "n/a", "M")))
    clean, report = scrub_table(participants, "participants", SitePolicy(), None, lambda s: s)
    assert clean.rows == (("sub-1", "89", "F"), ("sub-2", "n/a", "M")) and report.replaced == ("age",)


def test_nifti_header_text_and_extensions_are_removed() -> None:
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    image.header["descrip"] = b"TE=2.5;Time=142207.500"
    image.header["aux_file"] = b"Ann Smith"
    image.header["intent_name"] = b"MRN4471923"
    image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"PatientName=Doe^John"))
    original = image.to_bytes()
    scrubbed, report = scrub_nifti_header(image)
    assert set(report.removed) == {"descrip", "aux_file", "intent_name", "extensions"}
    assert image.to_bytes() == original, "the input image is left as it is"
    written = scrubbed.to_bytes()
    for text in (b"Time=142207", b"Ann Smith", b"MRN4471923", b"Doe^John"):
        assert text in original and text not in written


@pytest.mark.parametrize(
    ("key", "text", "leaves"),
    [
        ("SequenceName", "*tfl3d1_16ns", True),
        ("SequenceName", "LEAK001Q John Smith", False),
        ("ReceiveCoilName", "HeadNeck_20", True),
        ("ReceiveCoilName", "Smith", False),
        ("ReceiveCoilActiveElements", "HE1-4;NE1,2", True),
        ("Manufacturer", "GE MEDICAL SYSTEMS", True),
        ("Manufacturer", "Smith Imaging", False),
        ("BodyPart", "HEAD", True),
        ("BodyPart", "Brain", True),
        ("BodyPart", "Jones", False),
        ("PulseSequenceType", "Spoiled Gradient Echo", True),
        ("CoilCombinationMethod", "Adaptive Combine", True),
        ("AttenuationCorrection", "10-min transmission scan", True),
        ("AttenuationCorrection", "done by Mary Jones", False),
        ("TracerName", "[11C]PiB", True),
        ("TracerName", "ann.smith@example.org", False),
        ("ConversionSoftwareVersion", "v1.0.20260724", True),
        ("ConversionSoftwareVersion", "Dr Smith's build", False),
        ("ManufacturersModelName", "x" * 65, False),
        ("ManufacturersModelName", "Skyra\nMRN 4471923", False),
    ],
)
def test_free_text_in_allowed_keys_leaves_only_when_it_is_technical(key: str, text: str, leaves: bool) -> None:
    assert (text_problem(key, text) is None) is leaves, text_problem(key, text)


def test_cells_keep_bids_levels_and_screened_text_only() -> None:
    assert cell_problem("sex", "female") is None and cell_problem("handedness", "Ambidextrous") is None
    assert cell_problem("sex", "LEAK001Q") == "not in the BIDS levels"
    assert cell_problem("strain_rrid", "RRID:IMSR_JAX:000664") is None
    assert cell_problem("strain_rrid", "Smith mice") == "not of the BIDS format"
    assert cell_problem("notes", "call 020 7946 0958") is not None
    assert cell_problem("group", "n/a") is None


def test_column_descriptions_keep_input_text_only_where_the_site_asks() -> None:
    source = {
        "sex": {"Levels": {"X": "Dr Smith's code"}, "Description": "self-reported"},
        "iq": {"Description": "IQ test score", "Units": "points", "Note": "x"},
        "pet": {"Description": "Mary Jones, MRN 4471923"},
    }
    described = scrub_column_descriptions(source, ("participant_id", "sex", "iq"), SitePolicy(keep_columns=("iq",)))
    assert described["sex"] == column_description("sex")
    assert described["iq"] == SITE_COLUMN_DESCRIPTION
    site = SitePolicy(keep_columns=("iq", "pet"), keep_column_descriptions=("iq", "pet"))
    described = scrub_column_descriptions(source, ("participant_id", "iq", "pet"), site)
    assert described["iq"] == {"Description": "IQ test score", "Units": "points"}
    assert described["pet"] == {}  # the only field failed the screen


def test_dataset_description_fields_a_site_keeps_are_screened() -> None:
    source = {
        "Name": "Healthy ageing cohort",
        "License": "CC-BY-4.0",
        "Authors": ["Ann Lee", "ann.lee@example.org"],
        "Acknowledgements": "We thank Dr Smith of St Mary's",
        "Funding": ["Grant 12345", "call 020 7946 0958"],
        "DatasetDOI": "doi:10.18112/openneuro.ds000001.v1.0.0",
    }
    carried, report = scrub_dataset_description(source, SitePolicy())
    assert carried == {"Name": NEUTRAL_DATASET_NAME, "License": "CC-BY-4.0", "Authors": ["Ann Lee"]}
    assert set(report.removed) == {"Name", "Acknowledgements", "Funding", "DatasetDOI"}
    site = SitePolicy(keep_dataset_fields=("Name", "Acknowledgements", "Funding", "DatasetDOI"))
    carried, report = scrub_dataset_description(source, site)
    assert carried["Name"] == "Healthy ageing cohort" and carried["Funding"] == ["Grant 12345"]
    assert "Acknowledgements" not in carried and set(report.dropped) == {"Authors", "Acknowledgements", "Funding"}
    assert carried["DatasetDOI"] == source["DatasetDOI"]


def test_pet_date_keys_holding_lists_or_objects_are_dropped(tmp_path: Path) -> None:
    sidecar = json.loads(next(_pet002(tmp_path).glob("sub-01/ses-baseline/pet/*.json")).read_text())
    sidecar.update({"InjectionStart": ["2024-03-15T10:00:00", 0], "ScanStart": {"at": "10:05:00"}})
    sidecar["TimeZero"] = ["10:33:47"]
    clean, report = scrub_sidecar(sidecar, "pet", SitePolicy(), OFFSET)
    assert "InjectionStart" not in clean and "ScanStart" not in clean
    assert {"InjectionStart", "ScanStart"} <= set(report.dropped)
    assert clean["TimeZero"] == "00:00:00" and "TimeZero" in report.replaced  # required: a placeholder
    assert "2024-03-15" not in json.dumps(clean) and "10:05:00" not in json.dumps(clean)


def test_events_keep_timing_numbers_and_screened_conditions() -> None:
    table = Table(
        ("onset", "duration", "trial_type", "response", "rt", "comment", "LEAK9Q_notes", "stim_file"),
        (
            ("0.5", "1", "go", "left", "0.41", "Subject said hi", "1", "faces/f01.png"),
            ("2.5", "1", "go", "right", "n/a", "n/a", "2", "faces/f02.png"),
            ("4.5", "1", "JS1984", "MRN 4471923", "0.38", "ok", "3", "faces/f01.png"),
            ("6.5", "1", "stop", "up", "0.52", "ok", "x", "faces/f01.png"),
        ),
    )
    clean, report = scrub_events(table, {"response": {"Levels": {"left": "", "right": "", "MRN 4471923": ""}}})
    assert clean.columns == ("onset", "duration", "trial_type", "response", "rt", "stim_file")
    rows = list(zip(*clean.rows, strict=True))
    assert rows[0] == ("0.5", "2.5", "4.5", "6.5") and rows[4] == ("0.41", "n/a", "0.38", "0.52")
    assert rows[2] == ("go", "go", "n/a", "stop"), "repeated codes and standard words pass; a one-off code does not"
    assert rows[3] == ("left", "right", "n/a", "n/a"), "declared levels pass unless they look identifying"
    assert set(rows[5]) == {"n/a"}, "paths are not codes (stimuli are not carried, and file names can name people)"
    assert report.removed == () and report.unknown_removed == 2, "undeclared text columns: counted, not named"
    assert set(report.dropped) == {"trial_type", "response", "stim_file"}
