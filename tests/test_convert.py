"""``bidsdeface-convert`` on the real DICOM series: classification, naming, scrubbing, validation, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsdeface import convert as convert_module
from bidsdeface.classify import Decision, SeriesHeader
from bidsdeface.convert import SeriesNotConverted, convert_series
from bidsdeface.convert_cli import main as convert_main
from bidsdeface.dicom import Patient, Series
from bidsdeface.errors import EXIT_DATA, EXIT_NO_INPUT, EXIT_OK, EXIT_USAGE, ToolError
from bidsdeface.files import Table
from bidsdeface.policy import CLOCK_KEYS, MODALITY_SIDECAR_KEYS, identifying_keys

from .conftest import DICOM_SERIES, SHARED, needs_shared, one_line_error, run_validator, tree_digest

EXPECTED = {
    "trio": ("anat/sub-trio_T1w.nii.gz", "T1w: series description and echo/repetition/inversion times agree"),
    "prismaHFS": ("anat/sub-prismaHFS_T1w.nii.gz", "T1w: series description and echo/repetition/inversion times"),
    "prismaHFP": ("anat/sub-prismaHFP_T1w.nii.gz", "T1w: series description and echo/repetition/inversion times"),
    "ct": ("anat/sub-ct_ct.nii.gz", "CT (Modality CT); gantry tilt 18.5 deg corrected and slice spacing equalised"),
}
PATIENT_NAMES = ("Rorden", "crlab", "QMNx85rKkkg", "Upgrade Test")


def _report(folder: Path) -> list[dict[str, str]]:
    table = Table.parse(next(folder.glob("*_conversion.tsv")).read_text())
    return [dict(zip(table.columns, row, strict=True)) for row in table.rows]


def _copy(series: str, target: Path) -> Path:
    shutil.copytree(SHARED / DICOM_SERIES[series], target)
    return target


@needs_shared
@pytest.mark.parametrize("label", list(DICOM_SERIES))
def test_real_series_convert_classify_and_validate(converted_dataset: Path, label: str) -> None:
    relpath, reason = EXPECTED[label]
    image = converted_dataset / f"sub-{label}" / relpath
    assert image.is_file()
    (row,) = _report(converted_dataset / f"sub-{label}")
    assert row["decision"] == "converted" and row["output"] == f"sub-{label}/{relpath}"
    assert row["reason"].startswith(reason), row["reason"]
    sidecar = json.loads(image.with_name(image.name.replace(".nii.gz", ".json")).read_text())
    modality = "ct" if label == "ct" else "mri"
    assert set(sidecar) <= MODALITY_SIDECAR_KEYS[modality] | CLOCK_KEYS
    assert not set(sidecar) & (identifying_keys() - {"AcquisitionTime"})
    header = nib.load(image).header
    assert header["descrip"].item() == b"" and not header.extensions
    scans = Table.parse(next((converted_dataset / f"sub-{label}").glob("*_scans.tsv")).read_text())
    assert scans.rows[0][0] == relpath
    if label != "ct":  # the CT series carries no acquisition date
        assert int(scans.rows[0][1][:4]) <= 1925
        assert scans.rows[0][1][11:] == sidecar["AcquisitionTime"][:8]  # dates move by whole days: times kept


@needs_shared
def test_converted_dataset_is_valid_bids(converted_dataset: Path) -> None:
    result = run_validator(converted_dataset)
    assert result.returncode == 0, result.stdout[-3000:]
    participants = Table.parse((converted_dataset / "participants.tsv").read_text())
    assert [row[0] for row in participants.rows] == [f"sub-{label}" for label in sorted(DICOM_SERIES)]
    for path in converted_dataset.rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            assert not any(name.encode() in text for name in PATIENT_NAMES), path


@needs_shared
def test_images_match_a_direct_dcm2niix_conversion(converted_dataset: Path, dicom_heads: dict[str, Path]) -> None:
    for label, direct in dicom_heads.items():
        ours = nib.load(converted_dataset / f"sub-{label}" / EXPECTED[label][0])
        theirs = nib.load(direct)
        assert np.allclose(ours.affine, theirs.affine)
        assert np.array_equal(np.asanyarray(ours.dataobj), np.asanyarray(theirs.dataobj))


@needs_shared
def test_ct_tilt_is_corrected(converted_dataset: Path) -> None:
    image = nib.load(converted_dataset / "sub-ct" / EXPECTED["ct"][0])
    # dcm2niix's tilt correction resamples onto an orthogonal grid: axes are perpendicular
    axes = image.affine[:3, :3] / np.linalg.norm(image.affine[:3, :3], axis=0)
    assert abs(float(axes[:, 1] @ axes[:, 2])) < 1e-3
    data = np.asanyarray(image.dataobj)
    assert data.min() < -1000 < np.median(data[data > -1100]) < 100


@needs_shared
def test_mixed_patients_refused_then_mapped(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    mixed = tmp_path / "export"
    _copy("trio", mixed / "a")
    _copy("prismaHFS", mixed / "b")
    before = tree_digest(mixed)
    bids = tmp_path / "bids"
    assert convert_main([str(mixed), str(bids), "--participant-label", "01"]) == EXIT_USAGE
    error = one_line_error(capfd)
    assert "2 patients" in error and "--write-map" in error and "--map" in error
    assert not any(name in error for name in PATIENT_NAMES)
    assert not bids.exists() or not any(bids.iterdir())

    assert convert_main([str(mixed), str(bids), "--write-map", str(bids / "map.tsv")]) == EXIT_USAGE
    mapping = tmp_path / "private" / "map.tsv"
    assert convert_main([str(mixed), str(bids), "--write-map", str(mapping)]) == EXIT_OK
    table = Table.parse(mapping.read_text())
    assert len(table.rows) == 2 and table.columns[:3] == ("study_instance_uid", "participant_label", "session_label")
    rows = [dict(zip(table.columns, row, strict=True)) for row in table.rows]
    labels = {"19": "a", "3": "b"}  # series numbers of the Trio and Prisma series
    filled = [(r["study_instance_uid"], labels[r["series"]], "1") for r in rows]
    mapping.write_text(Table(("study_instance_uid", "participant_label", "session_label"), tuple(filled)).to_text())

    assert convert_main([str(mixed), str(bids), "--map", str(mapping)]) == EXIT_OK
    assert (bids / "sub-a/ses-1/anat/sub-a_ses-1_T1w.nii.gz").is_file()
    assert (bids / "sub-b/ses-1/anat/sub-b_ses-1_T1w.nii.gz").is_file()
    assert (bids / "sub-a/ses-1/sub-a_ses-1_conversion.tsv").is_file()
    assert run_validator(bids).returncode == 0
    assert tree_digest(mixed) == before
    capfd.readouterr()
    # a re-run resumes (skips what exists); --overwrite replaces it
    assert convert_main([str(mixed), str(bids), "--map", str(mapping)]) == EXIT_OK
    assert "already converted" in capfd.readouterr().err
    assert convert_main([str(mixed), str(bids), "--map", str(mapping), "--overwrite"]) == EXIT_OK
    assert not list(bids.glob(".bidsdeface-tmp-*"))


@needs_shared
def test_compressed_transfer_syntax_converts_identically(tmp_path: Path, converted_dataset: Path) -> None:
    import pydicom
    from pydicom.uid import RLELossless

    compressed = tmp_path / "rle"
    compressed.mkdir()
    for path in sorted((SHARED / DICOM_SERIES["prismaHFS"]).glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        dataset.compress(RLELossless)
        dataset.save_as(compressed / path.name)
    bids = tmp_path / "bids"
    assert convert_main([str(compressed), str(bids), "--participant-label", "rle"]) == EXIT_OK
    ours = nib.load(bids / "sub-rle/anat/sub-rle_T1w.nii.gz")
    plain = nib.load(converted_dataset / "sub-prismaHFS" / EXPECTED["prismaHFS"][0])
    assert np.array_equal(np.asanyarray(ours.dataobj), np.asanyarray(plain.dataobj))


def _truncate_one(folder: Path) -> None:
    victim = sorted(folder.glob("*.dcm"))[10]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])


def _drop_middle_slice(folder: Path) -> None:
    import pydicom

    by_position = sorted(
        folder.glob("*.dcm"), key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[0])
    )
    by_position[len(by_position) // 2].unlink()


@needs_shared
@pytest.mark.parametrize(
    ("damage", "code", "message"),
    [
        (_truncate_one, EXIT_DATA, "1 file(s) with missing or truncated pixel data"),
        (_drop_middle_slice, EXIT_DATA, "missing slices (1 gap(s) in the slice positions)"),
    ],
)
def test_broken_series_fail_with_their_reason(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], damage, code: int, message: str
) -> None:
    broken = _copy("prismaHFS", tmp_path / "dicom")
    damage(broken)
    _copy("ct", tmp_path / "dicom" / "ct")  # the same export holds a good series of another study
    before = tree_digest(broken)
    mapping = tmp_path / "map.tsv"
    assert convert_main([str(broken), str(tmp_path / "bids"), "--write-map", str(mapping)]) == EXIT_OK
    table = Table.parse(mapping.read_text())
    mapping.write_text(Table(table.columns[:2], tuple((r[0], f"s{i}") for i, r in enumerate(table.rows))).to_text())
    capfd.readouterr()
    assert convert_main([str(broken), str(tmp_path / "bids"), "--map", str(mapping)]) == code
    log = capfd.readouterr().err
    assert message in log and "Traceback" not in log
    assert "1 series converted" in log and "1 failed" in log
    assert tree_digest(broken) == before


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "DICOM folder is empty"),
        (lambda d: (d / "notes.txt").write_text("not an image\n"), "no readable DICOM series found"),
        (lambda d: (d / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00"), "no readable DICOM series found"),
    ],
)
def test_unusable_folders_give_one_line_errors(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], make, message: str
) -> None:
    folder = tmp_path / "dicom"
    folder.mkdir()
    make(folder)
    assert convert_main([str(folder), str(tmp_path / "bids"), "--participant-label", "01"]) == EXIT_NO_INPUT
    assert message in one_line_error(capfd)


@needs_shared
def test_one_patient_two_studies_needs_a_mapping(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "export"
    _copy("prismaHFS", export / "supine")
    _copy("prismaHFP", export / "prone")
    assert convert_main([str(export), str(tmp_path / "bids"), "--participant-label", "01"]) == EXIT_USAGE
    assert "2 studies of one patient" in one_line_error(capfd)


def _variant(source: Path, target: Path, number: int, **attributes: object) -> None:
    """Copy a series as another series of the same study (new UIDs, SeriesNumber and attributes)."""
    import pydicom
    from pydicom.uid import generate_uid

    target.mkdir(parents=True)
    series_uid = generate_uid()
    for path in sorted(source.glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        dataset.SeriesInstanceUID, dataset.SeriesNumber = series_uid, number
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword, value in attributes.items():
            setattr(dataset, keyword, value)
        dataset.save_as(target / path.name)


@needs_shared
def test_runs_acquisitions_and_exclusions_in_one_study(tmp_path: Path) -> None:
    source = SHARED / DICOM_SERIES["prismaHFS"]
    export = tmp_path / "export"
    shutil.copytree(source, export / "s3")
    _variant(source, export / "s9", 9)
    _variant(source, export / "s7", 7, MRAcquisitionType="3D")
    _variant(source, export / "s5", 5)
    _variant(source, export / "s1", 1, ImageType=["ORIGINAL", "PRIMARY", "M", "LOCALIZER"])
    _variant(source, export / "s2", 2, ImageType=["DERIVED", "SECONDARY", "MPR"])
    _variant(source, export / "s4", 4, BodyPartExamined="KNEE")
    bids = tmp_path / "bids"
    assert convert_main([str(export), str(bids), "--participant-label", "01", "--session-label", "a"]) == EXIT_OK
    anat = "sub-01/ses-a/anat/sub-01_ses-a"
    expected = {
        "1": ("skipped", "", "localizer or scout (ImageType LOCALIZER)"),
        "2": ("skipped", "", "derived or secondary image (ImageType DERIVED MPR SECONDARY)"),
        "3": ("converted", f"{anat}_acq-2d_run-1_T1w.nii.gz", "T1w"),
        "4": ("skipped", "", "body part is not the head (BodyPartExamined KNEE)"),
        "5": ("converted", f"{anat}_acq-2d_run-2_T1w.nii.gz", "T1w"),
        "7": ("converted", f"{anat}_acq-3d_T1w.nii.gz", "T1w"),
        "9": ("converted", f"{anat}_acq-2d_run-3_T1w.nii.gz", "T1w"),
    }
    rows = {row["series_number"]: row for row in _report(bids / "sub-01/ses-a")}
    assert sorted(rows) == sorted(expected)
    for number, (decision, output, reason) in expected.items():
        row = rows[number]
        assert (row["decision"], row["output"] if output else "") == (decision, output), row
        assert row["reason"].startswith(reason), row
        assert output == "" or (bids / output).is_file()
    assert run_validator(bids).returncode == 0


def _junk_series(folder: Path) -> Series:
    folder.mkdir()
    (folder / "junk.dcm").write_text("not a DICOM file\n")
    return Series("1.2.3", "1.2.4", Patient("", "", ""), 7, SeriesHeader(modality="MR"), [folder / "junk.dcm"])


def test_dcm2niix_failure_is_a_failed_row_with_its_exit_code(tmp_path: Path) -> None:
    """dcm2niix really runs, finds no DICOM and exits 2: the row says so, from ToolError.returncode."""
    with pytest.raises(SeriesNotConverted) as caught:
        convert_series(_junk_series(tmp_path / "in"), Decision("T1w", "T1w"), tmp_path / "work")
    row = caught.value.outcome
    assert (row.number, row.decision, row.output) == (7, "failed", "")
    assert row.reason == "dcm2niix could not convert it (exit code 2)"


def test_dcm2niix_without_exit_code_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def timed_out(*args: object, **kwargs: object) -> None:
        raise ToolError("dcm2niix: timed out after 900 s")

    monkeypatch.setattr(convert_module, "run", timed_out)
    with pytest.raises(SeriesNotConverted) as caught:
        convert_series(_junk_series(tmp_path / "in"), Decision("T1w", "T1w"), tmp_path / "work")
    assert caught.value.outcome.reason == "dcm2niix could not convert it (exit code unknown)"
