"""The DICOM export's own parts: folder checks, mappings, the report, skips and resume.

The end-to-end runs on real series (defacing, leaks, UIDs, dates, dciodvfy, dcm2niix)
are in ``test_dicomout_end_to_end.py``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pydicom
import pytest

from bidsdeface.config import DicomOutConfig
from bidsdeface.convert import Target
from bidsdeface.deidentify import Replacements
from bidsdeface.dicom import scan_dicom_folder
from bidsdeface.dicomout import ExportJob, SeriesExport, _merge_csv, _series_folder, check_paths, export_series
from bidsdeface.errors import NoInputError, OutputError, UsageError
from bidsdeface.identity import SubjectIdentity

from .conftest import DICOM_SERIES, SHARED, needs_shared
from .textdraw import draw_text, fonts

WHO = Replacements("p5e7d", -timedelta(days=40000), "unit-key")


def config(tmp_path: Path, **more) -> DicomOutConfig:
    return DicomOutConfig(tmp_path / "in", tmp_path / "out", participant_label="01", **more)


def test_check_paths_refuses_what_would_mix_input_output_and_secrets(tmp_path: Path) -> None:
    with pytest.raises(NoInputError):
        check_paths(config(tmp_path))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.dcm").write_bytes(b"x")
    check_paths(config(tmp_path))
    with pytest.raises(UsageError, match="private folder"):
        check_paths(config(tmp_path, private_dir=tmp_path / "out" / "keys"))
    with pytest.raises(UsageError, match="scratch"):
        check_paths(config(tmp_path, work_dir=tmp_path / "in" / "tmp"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not a bidsdeface-dicom output"):
        check_paths(config(tmp_path))


def test_mappings_merge_rows_and_keep_the_old_ones(tmp_path: Path) -> None:
    path = tmp_path / "uid_mapping.csv"
    _merge_csv(path, {"1.2.3": "2.25.9"})
    _merge_csv(path, {"1.2.4": "2.25.8", "1.2.3": "2.25.9"})
    assert path.read_text().splitlines() == ["old,new", "1.2.3,2.25.9", "1.2.4,2.25.8"]


def test_report_rows_hold_no_empty_cells() -> None:
    row = SeriesExport("p5e7d", "", 3, "MR", 35, "skipped", "localizer or scout")
    assert row.cells() == ("p5e7d", "n/a", "3", "MR", "35", "skipped", "n/a", "n/a", "n/a", "localizer or scout")


@needs_shared
def test_a_screen_capture_with_text_is_skipped_by_rule_before_any_ocr(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for path in sorted((SHARED / DICOM_SERIES["prismaHFS"]).glob("*.dcm"))[:2]:
        dataset = pydicom.dcmread(path)
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
        dataset.PixelData = draw_text(dataset.pixel_array, fonts(14)[1])[0].tobytes()
        dataset.save_as(source / path.name)
    (series,) = scan_dicom_folder(source).series
    identity = SubjectIdentity("01", "p5e7d", WHO.date_offset)
    row, header = export_series(config(tmp_path), ExportJob(Target("01"), identity, WHO, series), tmp_path / "scratch")
    assert (row.decision, row.files, row.output) == ("skipped", 2, "")
    assert row.reason == "screen capture (Secondary Capture): may carry burned-in text"
    assert not header.uids and not (tmp_path / "out").exists() and "pixeltext" not in row.seconds


def test_series_folders_carry_labels_number_and_a_keyed_tail_only() -> None:
    class Numbered:
        number, uid = 7, "1.2.840.1234"

    identity = SubjectIdentity("01", "p5e7d", None, {"pre": "a1"})
    folder = _series_folder(identity, Target("01", "pre"), Numbered(), WHO)
    assert folder == f"sub-p5e7d/ses-a1/series-007-{WHO.uid('1.2.840.1234')[-8:]}"
