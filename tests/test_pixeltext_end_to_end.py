"""Burned-in text end to end, on a real series with names, dates and IDs drawn into three slices.

``bidsdeface-convert`` skips the series with its reason, or with ``--clean-pixel-text`` fills
the text so that the detector finds none, leaving every other voxel bit-identical;
``bidsdeface-dicom --clean-pixel-text`` does the same in the DICOM it writes and says so
(113101, BurnedInAnnotation NO); the BIDS path fails a scan whose defaced slices still
carry text. Clean series give no detection on any instance.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from bidsdeface.convert_cli import main as convert_main
from bidsdeface.dicom import frame_planes, frame_voxels
from bidsdeface.errors import EXIT_DATA, EXIT_NO_FILES
from bidsdeface.pixeltext import find_series_text, text_boxes

from .conftest import DICOM_SERIES, SHARED, make_dataset, needs_shared
from .test_dicomout_end_to_end import dcm2niix, run_export
from .textdraw import draw_text, fonts

pytestmark = [needs_shared]

TEXT_SLICES = {5: (14, 1, "top-left", False), 17: (12, 0, "bottom-right", True), 30: (18, 2, "top-right", False)}


@pytest.fixture(scope="module")
def texted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Prisma HFS series with text drawn into three slices (fonts, sizes, corners, inverted)."""
    folder = tmp_path_factory.mktemp("texted") / "dicom"
    folder.mkdir()
    for index, path in enumerate(sorted((SHARED / DICOM_SERIES["prismaHFS"]).glob("*.dcm"))):
        dataset = pydicom.dcmread(path)
        if index in TEXT_SLICES:
            size, font, place, inverted = TEXT_SLICES[index]
            chosen = fonts(size)[min(font, len(fonts(size)) - 1)]
            dataset.PixelData = draw_text(dataset.pixel_array, chosen, place, inverted)[0].tobytes()
        dataset.save_as(folder / f"{index:03d}.dcm")
    return folder


def test_convert_skips_a_series_with_text(texted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert convert_main([str(texted), str(tmp_path / "bids"), "--participant-label", "01"]) == EXIT_NO_FILES
    err = capsys.readouterr().err
    assert "skipped: burned-in text found in 3 instance(s) (35 frame(s) checked, every instance)" in err
    assert "DOE" not in err and "4471823" not in err


def test_convert_fills_the_text_and_nothing_else(texted: Path, tmp_path: Path) -> None:
    bids = tmp_path / "bids"
    assert convert_main([str(texted), str(bids), "--participant-label", "01", "--clean-pixel-text"]) == 0
    cleaned = nib.load(next(bids.glob("sub-01/anat/*_T1w.nii.gz")))
    original = dcm2niix(SHARED / DICOM_SERIES["prismaHFS"], tmp_path / "original")
    a, b = np.asanyarray(original.dataobj), np.asanyarray(cleaned.dataobj)
    drawn = np.zeros(a.shape, bool)
    files = sorted(texted.glob("*.dcm"))
    for index in TEXT_SLICES:
        dataset = pydicom.dcmread(files[index])
        i, j, k = frame_voxels(frame_planes(dataset)[0], dataset.Rows, dataset.Columns, cleaned.affine)
        drawn[i, j, k] = True
        assert text_boxes(b[:, :, k[0, 0]].T) == []  # a second pass finds no text
    assert np.array_equal(a[~drawn], b[~drawn])  # other slices bit-identical
    changed = a != b
    assert changed.any() and np.all(b[changed] == b.min())
    report = next(bids.glob("sub-01/*_conversion.tsv")).read_text()
    assert "burned-in text found in 3 instance(s)" in report and "filled with background" in report


def test_dicom_out_fills_the_text_and_says_so(texted: Path, tmp_path: Path) -> None:
    skipped = run_export(str(texted), str(tmp_path / "skipped"), "--participant-label", "01", "--date-shift-key", "k")
    assert skipped.returncode == EXIT_NO_FILES and "burned-in text found in 3 instance(s)" in skipped.stderr
    out = tmp_path / "out"
    result = run_export(str(texted), str(out), "--participant-label", "01", "--date-shift-key", "k",
                        "--clean-pixel-text", "--private-dir", str(tmp_path / "private"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    outputs = sorted(out.glob("sub-*/*/*.dcm"))
    inputs = sorted(texted.glob("*.dcm"))
    for index, (source, output) in enumerate(zip(inputs, outputs, strict=True)):
        written = pydicom.dcmread(output)
        assert written.BurnedInAnnotation == "NO"
        assert "113101" in [item.CodeValue for item in written.DeidentificationMethodCodeSequence]
        if index in TEXT_SLICES:
            assert text_boxes(written.pixel_array) == []
            assert not np.array_equal(written.pixel_array, pydicom.dcmread(source).pixel_array)
    assert "pixel_text_cleaned" in next((out / "qc").glob("*_qc.json")).read_text()


def test_the_bids_path_fails_a_scan_that_still_carries_text(tmp_path: Path) -> None:
    image = dcm2niix(SHARED / DICOM_SERIES["prismaHFS"], tmp_path / "nifti")
    data = np.asanyarray(image.dataobj).copy()
    middle = data.shape[2] // 2
    data[:, :, middle] = draw_text(data[:, :, middle].T, fonts(16)[1], "bottom-left")[0].T
    bids = make_dataset(tmp_path / "bids", {"01": nib.Nifti1Image(data, image.affine, image.header)})
    code = subprocess.run(
        [sys.executable, "-m", "bidsdeface.cli", str(bids), str(tmp_path / "out"), "participant",
         "--skip-bids-validation"], capture_output=True, text=True, check=False,
    ).returncode  # fmt: skip
    assert code == EXIT_DATA
    record = next((tmp_path / "out").rglob("*_qc.json")).read_text()
    assert "burned-in text found on 1 of 3 slices checked" in record


@pytest.mark.slow
@pytest.mark.parametrize("name", ["prismaHFS", "ct"])  # every series, every instance: benchmarks/pixel_text.py
def test_clean_series_give_no_detection_on_any_instance(name: str) -> None:
    files = sorted((SHARED / DICOM_SERIES[name]).glob("*.dcm"))
    finding = find_series_text(files, every_instance=True)
    assert finding.checked == len(files) and not finding.found
