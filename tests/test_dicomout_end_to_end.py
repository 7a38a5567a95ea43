"""DICOM in, de-identified defaced DICOM out, on real series with planted identifiers.

Each series is copied with a unique marker in every DICOM PS3.15 Table E.1-1 attribute
it can carry, in a private block, and inside sequence items (kept and UID-bearing
ones), then exported by ``bidsdeface-dicom`` in a subprocess with debug logging. The
tests assert that no marker is in any output byte, file name or log line (and that
the markers are findable in the input); that every UID is replaced by its keyed
replacement, the same in a second run with the same key; that dates moved by the
subject's offset; that dciodvfy finds no error the input did not have; and that
dcm2niix's conversion of the output has the face region (the export's own mask, written
into qc/) at background and the protected brain bit-identical to the conversion of the input.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel import orientations
from scipy import ndimage

from bidsdeface.dicom import frame_planes, frame_voxels
from bidsdeface.identity import keyed_identity, keyed_uid
from bidsdeface.images import ct_intensities, load_scan
from bidsdeface.scrub import shift_clock_text
from bidsdeface.tools import run

from .conftest import DICOM_SERIES, SHARED, needs_shared, tree_digest
from .leakcheck import Markers, find_leaks, plant_dicom_markers, plant_nested_markers, without_clock_stamps

pytestmark = [needs_shared]

KEY = "DicomOutKey-77a1"
DCIODVFY_SAMPLE = 12  # instances per series checked with dciodvfy (it takes 0.1 s each)
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


@dataclass
class Export:
    source: Path  # the original series (not planted)
    planted: Path
    out: Path
    private: Path
    label: str
    result: subprocess.CompletedProcess[str]
    mark: Markers
    before: dict[str, str]

    @property
    def outputs(self) -> list[Path]:
        return sorted(self.out.glob("sub-*/**/*.dcm"))

    @property
    def inputs(self) -> list[Path]:
        return sorted(self.planted.rglob("*.dcm"))


def run_export(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from bidsdeface.dicom_cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=1200, check=False
    )


def export(root: Path, source: Path, label: str, plant: bool = True) -> Export:
    mark = Markers(f"DO{label.upper()[:4]}")  # short enough for every VR's length
    planted = root / "in"
    if plant:
        plant_dicom_markers(source, planted, mark, times_kept=True)
        plant_nested_markers(planted, mark)
    else:
        planted.mkdir(parents=True)
        for path in sorted(source.glob("*.dcm")):
            (planted / path.name).write_bytes(path.read_bytes())
    before = tree_digest(planted)
    out, private = root / "out", root / "private"
    result = run_export(str(planted), str(out), "--participant-label", label, "--date-shift-key", KEY,
                        "--private-dir", str(private), "-v")  # fmt: skip
    return Export(source, planted, out, private, label, result, mark, before)


def dciodvfy_errors(path: Path) -> set[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return {line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")}


def dcm2niix(folder: Path, out: Path) -> nib.Nifti1Image:
    out.mkdir(parents=True)
    run(["dcm2niix", "-b", "y", "-z", "y", "-f", "v", "-o", out, folder])
    images = sorted(out.glob("v*.nii.gz"))
    tilted = [image for image in images if "_Tilt_Eq_" in image.name]
    return nib.load(tilted[0] if tilted else images[0])


def assert_exported(export: Export) -> None:
    assert export.result.returncode == 0, export.result.stderr[-3000:]
    assert tree_digest(export.planted) == export.before
    assert len(export.outputs) == len(export.inputs)


def assert_no_marker_leaks(export: Export) -> None:
    markers = export.mark.where
    assert len(find_leaks(export.planted, markers)) > 150  # the search finds them where they are
    logs = {"log": without_clock_stamps(export.result.stderr + export.result.stdout)}
    hits = find_leaks(export.out, markers, logs)
    assert hits == [], [f"{where}: {marker} ({markers[marker]})" for where, marker in hits]


def assert_uids_and_dates(export: Export) -> None:
    offset = timedelta(seconds=keyed_identity(KEY, export.label)[0])
    pseudonym = keyed_identity(KEY, export.label)[1]
    for source, output in zip(export.inputs, export.outputs, strict=True):
        before, after = pydicom.dcmread(source), pydicom.dcmread(output)
        for keyword in UID_KEYWORDS:
            if keyword in before:
                assert after[keyword].value == keyed_uid(KEY, str(before[keyword].value)) != before[keyword].value
        assert after.file_meta.MediaStorageSOPInstanceUID == after.SOPInstanceUID
        for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
            if before.get(keyword):  # a planted date too late to shift into the past range is emptied
                assert after[keyword].value == (shift_clock_text(before[keyword].value, offset) or "")
        assert after.PatientID == after.PatientName == pseudonym
        assert after.PatientIdentityRemoved == "YES" and after.RecognizableVisualFeatures == "NO"
        codes = [item.CodeValue for item in after.DeidentificationMethodCodeSequence]
        assert codes == ["113100", "113102", "113107"]
        assert not [element for element in after.iterall() if element.tag.is_private]


def assert_dciodvfy_clean(export: Export) -> None:
    """Instances spread over the series: no error the input did not have (so none where the input has none)."""
    pairs = list(zip(export.inputs, export.outputs, strict=True))
    for original, output in pairs[:: max(1, len(pairs) // DCIODVFY_SAMPLE)]:
        errors_before, errors_after = dciodvfy_errors(original), dciodvfy_errors(output)
        assert errors_after <= errors_before, (output.name, errors_after - errors_before)


def in_orientation_of(image: nib.Nifti1Image, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """Flip or permute ``image``'s axes to ``reference``'s orientation (same voxels in space).

    Without the vendor's private attributes (removed from the output), dcm2niix may store the
    slices of an enhanced object in the opposite order.
    """
    transform = orientations.ornt_transform(
        orientations.io_orientation(image.affine), orientations.io_orientation(reference.affine)
    )
    return image.as_reoriented(transform)


def assert_face_gone_brain_intact(export: Export, tmp: Path) -> None:
    """Check the pixels of every instance, then dcm2niix's conversion of the output against the input's.

    The masks are those the export computed and wrote into qc/ (the voxels replaced, the protected
    brain), in the grid of its conversion of the series, which must be the grid of the input's.
    For a gantry-tilted CT, dcm2niix's tilt correction interpolates across slices, so its
    conversions agree only 3 voxels (1.5 mm) inside the protected brain; the pixels agree exactly.
    """
    before = dcm2niix(export.source, tmp / "before")
    after = in_orientation_of(dcm2niix(export.outputs[0].parent, tmp / "after"), before)
    assert before.shape == after.shape and np.allclose(before.affine, after.affine, atol=1e-3)
    protect, removed = written_masks(export, before)
    assert_pixels_exact(export, protect, removed, before.affine)
    tilted = "_Tilt_" in Path(before.get_filename()).name
    inner = ndimage.binary_erosion(protect, iterations=3) if tilted else protect
    a, b = np.asanyarray(before.dataobj), np.asanyarray(after.dataobj)
    assert inner.sum() > 10000 and np.array_equal(a[inner], b[inner])
    is_ct = pydicom.dcmread(export.outputs[0], stop_before_pixels=True).Modality == "CT"
    air = ct_intensities(load_scan(Path(before.get_filename())).reference).air if is_ct else 0.0
    background = np.rint((air - before.dataobj.inter) / before.dataobj.slope)
    if removed.sum():
        assert np.mean(b[removed & ~protect] == background) > (0.8 if tilted else 0.99)


def written_masks(export: Export, reference: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """The protected brain and the voxels replaced, as the export wrote them into qc/ (one series)."""
    (record,) = (export.out / "qc").glob("*_qc.json")
    base = record.name.removesuffix("_qc.json")
    masks = [nib.load(record.with_name(f"{base}_{name}.nii.gz")) for name in ("protectmask", "defacemask")]
    for mask in masks:
        assert mask.shape == reference.shape[:3] and np.allclose(mask.affine, reference.affine, atol=1e-3)
    protect, removed = (np.asanyarray(mask.dataobj) > 0 for mask in masks)
    assert protect.sum() > 10000 and not (protect & removed).any()
    return protect, removed


def assert_pixels_exact(export: Export, protect: np.ndarray, removed: np.ndarray, affine: np.ndarray) -> None:
    """In every instance: pixels in the protected brain identical, pixels changed only in the removed region."""
    changed_total = 0
    for source, output in zip(export.inputs, export.outputs, strict=True):
        before, after = pydicom.dcmread(source), pydicom.dcmread(output)
        frames_before = before.pixel_array.reshape((-1, before.Rows, before.Columns))
        frames_after = after.pixel_array.reshape(frames_before.shape)
        for plane, was, now in zip(frame_planes(before), frames_before, frames_after, strict=True):
            i, j, k = frame_voxels(plane, before.Rows, before.Columns, affine)
            inside = (i >= 0) & (j >= 0) & (k >= 0) & (i < protect.shape[0]) & (j < protect.shape[1])
            inside &= k < protect.shape[2]
            brain = np.zeros(inside.shape, bool)
            brain[inside] = protect[i[inside], j[inside], k[inside]]
            face = np.zeros(inside.shape, bool)
            face[inside] = removed[i[inside], j[inside], k[inside]]
            assert np.array_equal(was[brain], now[brain])
            assert not np.any((was != now) & ~face)
            changed_total += int((was != now).sum())
    assert changed_total > 0 or not removed.any()


@pytest.fixture(scope="module")
def hfs(tmp_path_factory: pytest.TempPathFactory) -> Export:
    return export(tmp_path_factory.mktemp("hfs"), SHARED / DICOM_SERIES["prismaHFS"], "hfs")


def test_hfs_is_exported_without_touching_the_input(hfs: Export) -> None:
    assert_exported(hfs)


def test_hfs_leaks_no_planted_identifier(hfs: Export) -> None:
    assert_no_marker_leaks(hfs)


def test_hfs_uids_dates_and_identity_attributes(hfs: Export) -> None:
    assert_uids_and_dates(hfs)


@pytest.fixture(scope="module")
def hfs_again(tmp_path_factory: pytest.TempPathFactory) -> Export:
    """The original series (nothing planted), exported with the same key."""
    return export(tmp_path_factory.mktemp("hfs-again"), SHARED / DICOM_SERIES["prismaHFS"], "hfs", plant=False)


def needs_dciodvfy() -> None:
    if not shutil_which("dciodvfy"):
        pytest.skip("dciodvfy (Debian's dicom3tools) is not installed; .ci/run installs it")


def test_hfs_passes_dciodvfy_where_the_input_does(hfs: Export, hfs_again: Export) -> None:
    needs_dciodvfy()
    assert not any(dciodvfy_errors(path) for path in hfs_again.inputs)  # the original is clean...
    assert not any(dciodvfy_errors(path) for path in hfs_again.outputs)  # ...and so is its export
    assert_dciodvfy_clean(hfs)  # planted attributes add errors to the input, never to the output


def test_hfs_face_is_background_and_brain_identical_after_dcm2niix(hfs: Export, tmp_path: Path) -> None:
    assert_face_gone_brain_intact(hfs, tmp_path)


def test_a_rerun_resumes_and_changes_nothing(hfs: Export) -> None:
    before = tree_digest(hfs.out / hfs.outputs[0].parent.relative_to(hfs.out))
    result = run_export(str(hfs.planted), str(hfs.out), "--participant-label", hfs.label, "--date-shift-key", KEY,
                        "--private-dir", str(hfs.private))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped" in result.stderr and "already exported" in result.stderr
    assert tree_digest(hfs.out / hfs.outputs[0].parent.relative_to(hfs.out)) == before
    assert "already exported" in (hfs.out / "export_report.tsv").read_text()


def test_same_key_gives_the_same_uids_in_a_second_run(hfs: Export, hfs_again: Export) -> None:
    second = hfs_again
    assert_exported(second)
    first_uids = {str(pydicom.dcmread(p).SeriesInstanceUID) for p in hfs.outputs}
    second_uids = {str(pydicom.dcmread(p).SeriesInstanceUID) for p in second.outputs}
    original = {str(pydicom.dcmread(p).SeriesInstanceUID) for p in second.inputs}
    assert second_uids == {keyed_uid(KEY, uid) for uid in original} and len(second_uids) == 1
    assert first_uids != second_uids  # the planted copy has another series UID, hence another new one
    mapping = (second.private / "dicom" / "uid_mapping.csv").read_text().splitlines()
    assert mapping[0] == "old,new" and f"{original.pop()},{second_uids.pop()}" in mapping


def shutil_which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["trio", "prismaHFP", "ct"])
def test_more_real_series_end_to_end(name: str, tmp_path: Path) -> None:
    done = export(tmp_path / "run", SHARED / DICOM_SERIES[name], name.lower())
    assert_exported(done)
    assert_no_marker_leaks(done)
    assert_uids_and_dates(done)
    if shutil_which("dciodvfy"):
        assert_dciodvfy_clean(done)
    assert_face_gone_brain_intact(done, tmp_path / "check")


def build_enhanced(singles: list[Path], target: Path) -> None:
    """Build a Legacy Converted Enhanced MR Image (one multi-frame instance) from a real single-frame series."""
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    datasets = [pydicom.dcmread(path) for path in singles]
    first = datasets[0]
    enhanced = LegacyConvertedEnhancedMRImage(
        datasets, series_instance_uid=f"{first.SeriesInstanceUID}.9", series_number=int(first.SeriesNumber) + 100,
        sop_instance_uid=f"{first.SOPInstanceUID}.9", instance_number=1,
    )  # fmt: skip
    target.mkdir(parents=True)
    enhanced.save_as(target / "enhanced.dcm")


def keep_descriptions(folder: Path, mark: Markers) -> None:
    """Put the series' own descriptions back: with markers there, dcm2niix guesses this object is a localizer."""
    (path,) = folder.rglob("*.dcm")
    dataset = pydicom.dcmread(path)
    for keyword in ("SeriesDescription", "ProtocolName"):
        del mark.where[str(dataset[keyword].value)]
        dataset[keyword].value = "t1_fl2d_sag"
    dataset.save_as(path)


@pytest.mark.slow
def test_enhanced_multiframe_end_to_end(tmp_path: Path) -> None:
    built = tmp_path / "built"
    with pytest.warns(UserWarning):  # highdicom doubts the single-component patient name of the sample
        build_enhanced(sorted((SHARED / DICOM_SERIES["prismaHFS"]).glob("*.dcm")), built)
    mark = Markers("DOENH")
    planted = tmp_path / "in"
    plant_dicom_markers(built, planted, mark, times_kept=True)
    plant_nested_markers(planted, mark)
    keep_descriptions(planted, mark)
    before = tree_digest(planted)
    out, private = tmp_path / "out", tmp_path / "private"
    result = run_export(str(planted), str(out), "--participant-label", "enh", "--date-shift-key", KEY,
                        "--private-dir", str(private), "-v")  # fmt: skip
    done = Export(planted, planted, out, private, "enh", result, mark, before)
    assert_exported(done)
    assert pydicom.dcmread(done.outputs[0], stop_before_pixels=True).NumberOfFrames == 35
    assert_no_marker_leaks(done)
    assert_uids_and_dates(done)
    if shutil_which("dciodvfy"):
        assert_dciodvfy_clean(done)
    assert_face_gone_brain_intact(done, tmp_path / "check")
