"""Release layout (``--layout release``) end to end: whole datasets made safe as raw BIDS, on real heads.

The datasets keep the layout and metadata of ``bids_examples/ds001`` and ``pet002``; their
placeholder images are replaced by real heads (and small 4D series made from them).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsdeface.identity import keyed_identity

from .conftest import SHARED, needs_shared, run_validator, tree_digest
from .leakcheck import Markers, find_leaks, without_clock_stamps

pytestmark = [needs_shared]

DS001 = SHARED / "bids_examples" / "ds001"
PET002 = SHARED / "bids_examples" / "pet002"
IXI = SHARED / "mri_t1w_ixi012" / "IXI012-HH-1211_T1.nii.gz"
SPM_T1W = SHARED / "templates" / "spm12" / "single_subj_T1.nii.gz"
SPM_PET = SHARED / "templates" / "spm12" / "PET.nii.gz"
TASK = "task-balloonanalogrisktask"
KEY = "ReleaseTestKey-41c9"
# an identifying subject label (a name and a birth year), replaced under --pseudonymize
LABEL = "ZqxDoe1957"
OTHER = "ZqxRoe1960"  # a subject with functional runs only
STRAY_SESSION = "ZqxVisit0315"  # a session label in a file name outside any session folder
RUN_TIMES = ("14:02:11.500000", "14:09:40.250000", "14:17:05.000000")


def small_series(head: Path, volumes: int, step: int = 3) -> nib.Nifti1Image:
    """Return a small 4D series made from a real head: every ``step``-th voxel, ``volumes`` noisy copies (int16)."""
    image = nib.load(head)
    data = np.asanyarray(image.dataobj)[::step, ::step, ::step].astype(np.float32)
    rng = np.random.default_rng(1)
    frames = np.stack([data + rng.normal(0, 2.0, data.shape) for _ in range(volumes)], -1)
    affine = image.affine.copy()
    affine[:3, :3] *= step
    series = nib.Nifti1Image(np.clip(frames, 0, 32767).astype(np.int16), affine)
    series.header.set_xyzt_units("mm", "sec")
    series.header["pixdim"][4] = 2.0
    return series


def build_ds001(root: Path, subjects: tuple[str, ...]) -> Path:
    """Copy ds001's layout for ``subjects`` with real images: the IXI head as T1w, 4-volume BOLD runs from it.

    Everything else (events, sidecars, README, CHANGES, tables) is copied as it is; the
    in-plane T2 placeholders stay empty (head images this run does not deface).
    """
    root.mkdir(parents=True)
    for path in DS001.iterdir():
        if path.is_file():
            shutil.copyfile(path, root / path.name)
    bold = small_series(IXI, 4)
    for subject in subjects:
        for source in sorted((DS001 / f"sub-{subject}").rglob("*")):
            target = root / source.relative_to(DS001)
            if source.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif source.name.endswith("_T1w.nii.gz"):
                shutil.copyfile(IXI, target)
            elif source.name.endswith("_bold.nii.gz"):
                nib.save(bold, target)
            else:
                shutil.copyfile(source, target)
    rows = (DS001 / "participants.tsv").read_text().splitlines()
    kept = [rows[0], *(row for row in rows[1:] if row.split("\t")[0].removeprefix("sub-") in subjects)]
    (root / "participants.tsv").write_text("\n".join(kept) + "\n")
    return root


def release(bids: Path, out: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "bidsdeface.cli", str(bids), str(out), "participant", "--layout", "release"]
    command += ["--skip-bids-validation", *options]  # the in-plane T2 placeholders are empty files
    return subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)


def released_files(out: Path) -> set[str]:
    return {
        path.relative_to(out).as_posix()
        for path in out.rglob("*")
        if path.is_file() and path.relative_to(out).parts[0] != "derivatives"
    }


def manifest(out: Path) -> dict[str, tuple[str, str]]:
    lines = (out / "derivatives" / "bidsdeface" / "release_manifest.tsv").read_text().splitlines()
    assert lines[0] == "filename\taction\tsha256"
    return {name: (action, digest) for name, action, digest in (line.split("\t") for line in lines[1:])}


# ds001, two subjects, release layout


@pytest.fixture(scope="module")
def ds001_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ds001")
    bids = build_ds001(root / "ds001", ("01", "02"))
    before = tree_digest(bids)
    result = release(bids, root / "release")
    return {"bids": bids, "out": root / "release", "result": result, "before": before}


def test_release_and_its_derivative_are_valid_bids(ds001_run: dict) -> None:
    assert ds001_run["result"].returncode == 0, ds001_run["result"].stderr[-3000:]
    out = ds001_run["out"]
    for dataset in (out, out / "derivatives" / "bidsdeface"):
        result = run_validator(dataset)
        assert result.returncode == 0, result.stdout[-3000:]
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == "raw"
    derivative = json.loads((out / "derivatives" / "bidsdeface" / "dataset_description.json").read_text())
    assert derivative["DatasetType"] == "derivative"
    assert tree_digest(ds001_run["bids"]) == ds001_run["before"], "the input was modified"


def test_every_bold_run_and_events_file_is_released_voxels_untouched(ds001_run: dict) -> None:
    bids, out = ds001_run["bids"], ds001_run["out"]
    inputs = sorted(bids.glob("sub-*/func/*"))
    assert len(inputs) == 12
    for source in inputs:
        target = out / source.relative_to(bids)
        assert target.is_file(), target
        if source.name.endswith("_bold.nii.gz"):
            before, after = nib.load(source), nib.load(target)
            assert after.dataobj.dtype == before.dataobj.dtype
            assert np.array_equal(np.asanyarray(after.dataobj), np.asanyarray(before.dataobj))
            assert np.allclose(after.affine, before.affine)
            assert after.header["descrip"].tobytes().strip(b"\0") == b""
            sidecar = json.loads(target.with_name(target.name.replace(".nii.gz", ".json")).read_text())
            assert sidecar["RepetitionTime"] == 2.0 and sidecar["TaskName"]
    events = (out / "sub-01" / "func" / f"sub-01_{TASK}_run-01_events.tsv").read_text().splitlines()
    assert events[0].split("\t")[:3] == ["onset", "duration", "trial_type"]
    assert {line.split("\t")[2] for line in events[1:]} >= {"pumps_demean"}, "a repeated condition passes"


def test_t1w_defaced_under_its_raw_name_with_its_mask_in_the_derivative(ds001_run: dict) -> None:
    bids, out = ds001_run["bids"], ds001_run["out"]
    derivative = out / "derivatives" / "bidsdeface"
    for subject in ("01", "02"):
        before = np.asanyarray(nib.load(bids / f"sub-{subject}/anat/sub-{subject}_T1w.nii.gz").dataobj)
        after = np.asanyarray(nib.load(out / f"sub-{subject}/anat/sub-{subject}_T1w.nii.gz").dataobj)
        mask_path = derivative / f"sub-{subject}/anat/sub-{subject}_mod-T1w_defacemask.nii.gz"
        mask = np.asanyarray(nib.load(mask_path).dataobj)
        assert mask.sum() > 50_000
        assert np.count_nonzero(before[mask > 0] != after[mask > 0]) > 20_000, "face voxels changed"
        assert np.array_equal(before[mask == 0], after[mask == 0]), "every other voxel is the input's"
        assert not (out / f"sub-{subject}/anat/sub-{subject}_inplaneT2.nii.gz").exists()
        assert (derivative / f"sub-{subject}/figures").is_dir()
    left_out = (derivative / "release_left_out.tsv").read_text()
    assert "head image not selected for defacing\t2" in left_out
    assert "inherited sidecar" in left_out


def test_manifest_lists_every_released_file_with_its_hash(ds001_run: dict) -> None:
    out = ds001_run["out"]
    listed = manifest(out)
    assert set(listed) == released_files(out)
    for name, (_, digest) in listed.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
    actions = {action for action, _ in listed.values()}
    assert actions == {"defaced", "header-cleared", "scrubbed", "regenerated"}
    assert listed["sub-01/anat/sub-01_T1w.nii.gz"][0] == "defaced"
    assert listed["README.md"][0] == "regenerated"


def test_a_second_run_resumes_and_changes_nothing(ds001_run: dict) -> None:
    out = ds001_run["out"]
    first = tree_digest(out / "sub-01")
    bold = out / "sub-01" / "func" / f"sub-01_{TASK}_run-01_bold.nii.gz"
    copied_at = bold.stat().st_mtime_ns
    withdrawn = out / "sub-01" / "func" / f"sub-01_{TASK}_run-09_bold.nii.gz"  # as if released by an earlier run
    shutil.copyfile(bold, withdrawn)
    again = release(ds001_run["bids"], out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipped" in again.stderr and "1 file(s) of an earlier or interrupted run removed" in again.stderr
    assert tree_digest(out / "sub-01") == first
    assert bold.stat().st_mtime_ns == copied_at, "an unchanged input's copy is not made again"
    assert not list(out.rglob(".bidsdeface-tmp*"))
    assert set(manifest(out)) == released_files(out)


def test_group_level_rebuilds_the_manifest(ds001_run: dict) -> None:
    out = ds001_run["out"]
    listed = manifest(out)
    (out / "derivatives" / "bidsdeface" / "release_manifest.tsv").unlink()
    command = [sys.executable, "-m", "bidsdeface.cli", str(ds001_run["bids"]), str(out), "group", "--layout", "release"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert manifest(out) == listed


# planted identifiers, pseudonymised labels (on shared data)


def _plant(bids: Path, mark: Markers) -> None:
    """Rename sub-01 to an identifying label, add DWI, fieldmaps and scans.tsv, and plant markers everywhere."""
    shutil.move(bids / "sub-01", bids / f"sub-{LABEL}")
    for path in sorted((bids / f"sub-{LABEL}").rglob("*")):
        if path.is_file():
            path.rename(path.with_name(path.name.replace("sub-01", f"sub-{LABEL}")))
    subject = bids / f"sub-{LABEL}"
    (bids / "participants.tsv").write_text(f"participant_id\tage\tsex\nsub-{LABEL}\t31\tF\n")
    (bids / "README").write_text(f"Collected by Dr. Smith {mark('README')}\n")
    (bids / "CHANGES").write_text(f"1.0.1 2024-01-01\n  - fixed {mark('CHANGES')}\n")
    task = json.loads((bids / f"{TASK}_bold.json").read_text())
    task |= {"InstitutionName": mark("task sidecar InstitutionName"), mark("task sidecar key name"): 1}
    task["TaskDescription"] = f"task run by Dr Jones {mark('task sidecar TaskDescription')}"
    (bids / f"{TASK}_bold.json").write_text(json.dumps(task))
    (bids / f"{TASK}_events.json").write_text(
        json.dumps({"trial_type": {"Description": f"{mark('events.json description')} notes"}})
    )
    for run, clock in enumerate(RUN_TIMES, start=1):
        stem = subject / "func" / f"sub-{LABEL}_{TASK}_run-0{run}"
        sidecar = {"AcquisitionTime": clock, "DeviceSerialNumber": mark(f"run-{run} DeviceSerialNumber")}
        sidecar["B0FieldSource"] = f"fmap_sub-{LABEL}"
        sidecar |= {"SequenceName": f"{mark(f'run-{run} SequenceName')} John Smith", mark(f"run-{run} key"): 2}
        stem.with_name(stem.name + "_bold.json").write_text(json.dumps(sidecar))
        events = stem.with_name(stem.name + "_events.tsv")
        lines = events.read_text().splitlines()
        lines[0] += "\tcomment"
        lines[1:] = [f"{line}\tsaid {mark(f'run-{run} comment {i}')} to Dr Who" for i, line in enumerate(lines[1:])]
        cells = lines[1].split("\t")
        cells[2] = mark(f"run-{run} trial_type value")
        lines[1] = "\t".join(cells)
        events.write_text("\n".join(lines) + "\n")
    dwi = subject / "dwi"
    dwi.mkdir()
    nib.save(small_series(IXI, 3), dwi / f"sub-{LABEL}_dwi.nii.gz")
    (dwi / f"sub-{LABEL}_dwi.bval").write_text("0 1000 1000\n")
    (dwi / f"sub-{LABEL}_dwi.bvec").write_text("0 1 0\n0 0 1\n0 0 0\n")
    dwi_sidecar = {"PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.05, "AcquisitionTime": "14:25:00"}
    dwi_sidecar |= {"InstitutionAddress": mark("dwi InstitutionAddress"), mark("dwi key name"): "x"}
    (dwi / f"sub-{LABEL}_dwi.json").write_text(json.dumps(dwi_sidecar))
    fmap = subject / "fmap"
    fmap.mkdir()
    for suffix in ("phasediff", "magnitude1"):
        nib.save(small_series(IXI, 1).slicer[..., 0], fmap / f"sub-{LABEL}_{suffix}.nii.gz")
    intended = [
        f"func/sub-{LABEL}_{TASK}_run-01_bold.nii.gz",
        f"bids::sub-{LABEL}/func/sub-{LABEL}_{TASK}_run-02_bold.nii.gz",
        f"func/{mark('IntendedFor entry')}_bold.nii.gz",
    ]
    fieldmap = {"EchoTime1": 0.00492, "EchoTime2": 0.00738, "IntendedFor": intended}
    fieldmap["B0FieldIdentifier"] = f"fmap_sub-{LABEL}"  # built from the label: relabelled like file names
    fieldmap["StationName"] = mark("fmap StationName")
    (fmap / f"sub-{LABEL}_phasediff.json").write_text(json.dumps(fieldmap))
    scans = ["filename\tacq_time"]
    scans += [f"func/sub-{LABEL}_{TASK}_run-0{run}_bold.nii.gz\t2024-03-15T{clock[:8]}" for run, clock in
              enumerate(RUN_TIMES, start=1)]  # fmt: skip
    scans += [f"anat/sub-{LABEL}_T1w.nii.gz\t2024-03-15T13:55:00", f"dwi/sub-{LABEL}_dwi.nii.gz\t2024-03-15T14:25:00"]
    (subject / f"sub-{LABEL}_scans.tsv").write_text("\n".join(scans) + "\n")
    _plant_recordings(subject, mark)
    _plant_perfusion(subject, mark)
    stray = subject / "func" / f"sub-{LABEL}_ses-{STRAY_SESSION}_{TASK}_run-01_bold.nii.gz"  # not in a ses- folder
    shutil.copyfile(subject / "func" / f"sub-{LABEL}_{TASK}_run-01_bold.nii.gz", stray)
    functional_only = bids / f"sub-{OTHER}" / "func"
    shutil.copytree(subject / "func", functional_only)
    for path in sorted(functional_only.iterdir()):
        path.rename(path.with_name(path.name.replace(LABEL, OTHER)))
    with open(bids / "participants.tsv", "a") as table:
        table.write(f"sub-{OTHER}\t44\tM\n")


ASL_SIDECAR = {
    "ArterialSpinLabelingType": "PCASL", "PostLabelingDelay": 1.8, "BackgroundSuppression": False,
    "M0Type": "Estimate", "M0Estimate": 100.0, "TotalAcquiredPairs": 2, "MagneticFieldStrength": 3,
    "MRAcquisitionType": "3D", "EchoTime": 0.012, "RepetitionTimePreparation": 4.0, "LabelingDuration": 1.8,
    "PCASLType": "balanced", "LabelingEfficiency": 0.85, "AcquisitionVoxelSize": [6, 6, 6],
}  # fmt: skip


def _plant_perfusion(subject: Path, mark: Markers) -> None:
    """An ASL series with its volume types; its sidecar names the hospital."""
    perf = subject / "perf"
    perf.mkdir()
    nib.save(small_series(IXI, 4), perf / f"sub-{LABEL}_asl.nii.gz")
    (perf / f"sub-{LABEL}_aslcontext.tsv").write_text("volume_type\ncontrol\nlabel\ncontrol\nlabel\n")
    sidecar = ASL_SIDECAR | {"InstitutionName": mark("asl InstitutionName"), mark("asl key name"): 1}
    (perf / f"sub-{LABEL}_asl.json").write_text(json.dumps(sidecar))


def _plant_recordings(subject: Path, mark: Markers) -> None:
    """A numeric cardiac recording (carried) and one with a typed note in it (left out)."""
    for run, note in ((1, ""), (2, f"{mark('physio row text')} John")):
        stem = subject / "func" / f"sub-{LABEL}_{TASK}_run-0{run}_physio"
        rows = [f"{0.5 * i:.1f}\t{i % 7}" for i in range(200)] + ([f"{note}\t1"] if note else [])
        stem.with_suffix(".tsv.gz").write_bytes(gzip.compress(("\n".join(rows) + "\n").encode(), mtime=0))
        sidecar = {"SamplingFrequency": 50.0, "StartTime": -1.0, "Columns": ["cardiac", "respiratory"]}
        sidecar["Manufacturer"] = mark(f"physio run-{run} Manufacturer")
        stem.with_suffix(".json").write_text(json.dumps(sidecar))


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("planted")
    bids = build_ds001(root / "ds001", ("01",))
    mark = Markers("ZQXM")
    _plant(bids, mark)
    mark.add(LABEL, "subject label")
    mark.add(OTHER, "functional-only subject label")
    mark.add(STRAY_SESSION, "stray session label")
    result = release(bids, root / "release", "--pseudonymize", "--date-shift-key", KEY, "-v")
    return {"bids": bids, "out": root / "release", "result": result, "markers": mark.where}


def test_planted_identifiers_are_findable_in_the_input(planted_run: dict) -> None:
    markers = planted_run["markers"]
    places = {markers[marker] for _, marker in find_leaks(planted_run["bids"], markers)}
    assert places == set(markers.values())


def test_no_planted_identifier_or_input_label_leaves(planted_run: dict) -> None:
    result = planted_run["result"]
    assert result.returncode == 0, result.stderr[-3000:]
    log = without_clock_stamps(result.stdout + result.stderr)
    hits = find_leaks(planted_run["out"], planted_run["markers"], {"log": log})
    assert hits == [], [f"{where}: {marker} ({planted_run['markers'][marker]})" for where, marker in hits]


def test_pseudonymised_release_is_valid_and_complete(planted_run: dict) -> None:
    out = planted_run["out"]
    result = run_validator(out)
    assert result.returncode == 0, result.stdout[-3000:]
    label, other = (f"sub-{keyed_identity(KEY, name)[1]}" for name in (LABEL, OTHER))
    assert sorted(path.name for path in out.glob("sub-*")) == sorted([label, other])
    subject = out / label
    kinds = sorted(path.relative_to(subject).as_posix().replace(label, "S") for path in subject.rglob("*.*"))
    functional = [f"func/S_{TASK}_run-0{run}_{kind}" for run in (1, 2, 3) for kind in ("bold.json", "bold.nii.gz",
                  "events.tsv")]  # fmt: skip
    assert kinds == sorted(
        [
            "anat/S_T1w.json", "anat/S_T1w.nii.gz", "dwi/S_dwi.bval", "dwi/S_dwi.bvec", "dwi/S_dwi.json",
            "dwi/S_dwi.nii.gz", "fmap/S_magnitude1.nii.gz", "fmap/S_phasediff.json", "fmap/S_phasediff.nii.gz",
            "S_scans.tsv", "S_scans.json", f"func/S_{TASK}_run-01_physio.tsv.gz", f"func/S_{TASK}_run-01_physio.json",
            "perf/S_asl.json", "perf/S_asl.nii.gz", "perf/S_aslcontext.tsv",
            *functional,
        ]
    )  # fmt: skip
    others = sorted(path.relative_to(out / other).as_posix().replace(other, "S") for path in (out / other).rglob("*.*"))
    assert others == sorted([*functional, f"func/S_{TASK}_run-01_physio.tsv.gz", f"func/S_{TASK}_run-01_physio.json"])
    left_out = (out / "derivatives" / "bidsdeface" / "release_left_out.tsv").read_text()
    assert "recording whose column names are missing or fail screening\t0" not in left_out
    assert "recording holding more than numbers\t2" in left_out
    assert set(manifest(out)) == released_files(out)
    events = (subject / "func" / f"{label}_{TASK}_run-01_events.tsv").read_text().splitlines()
    assert "comment" not in events[0], "an undeclared free-text column is removed"
    assert events[1].split("\t")[2] == "n/a", "a one-off text value becomes n/a"


def test_field_map_references_point_at_released_files_under_new_labels(planted_run: dict) -> None:
    out = planted_run["out"]
    label = keyed_identity(KEY, LABEL)[1]
    (sidecar,) = out.glob("sub-*/fmap/*_phasediff.json")
    fieldmap = json.loads(sidecar.read_text())
    assert fieldmap["B0FieldIdentifier"] == f"fmap_sub-{label}"
    for bold in out.glob(f"sub-{label}/func/*_bold.json"):
        assert json.loads(bold.read_text())["B0FieldSource"] == f"fmap_sub-{label}"
    intended = fieldmap["IntendedFor"]
    assert len(intended) == 2, "the entry naming no input file is dropped"
    for entry in intended:
        assert entry.startswith("bids::")
        assert (out / entry.removeprefix("bids::")).is_file()


def test_shifted_times_keep_the_order_and_spacing_of_the_runs(planted_run: dict) -> None:
    out = planted_run["out"]
    (scans,) = out.glob("sub-*/*_scans.tsv")
    rows = dict(line.split("\t") for line in scans.read_text().splitlines()[1:])
    originals = {
        "T1w": "2024-03-15T13:55:00", "run-01": "2024-03-15T14:02:11", "run-02": "2024-03-15T14:09:40",
        "run-03": "2024-03-15T14:17:05", "dwi": "2024-03-15T14:25:00",
    }  # fmt: skip
    shifted = {kind: next(v for k, v in rows.items() if kind in k) for kind in originals}
    assert all(datetime.fromisoformat(value).year <= 1925 for value in shifted.values())
    deltas = {datetime.fromisoformat(shifted[k]) - datetime.fromisoformat(v) for k, v in originals.items()}
    assert len(deltas) == 1, "one offset for all of the subject's files"
    label = keyed_identity(KEY, LABEL)[1]
    clocks = [
        json.loads(path.read_text())["AcquisitionTime"] for path in sorted(out.glob(f"sub-{label}/func/*_bold.json"))
    ]
    assert clocks == list(RUN_TIMES), "whole-day shifts keep the time of day"


def test_released_gzip_headers_carry_no_name_or_time(planted_run: dict) -> None:
    for path in planted_run["out"].rglob("*.gz"):
        with open(path, "rb") as stream:
            header = stream.read(10)
        assert header[3] & 0x08 == 0 and header[4:8] == b"\0\0\0\0", path
        gzip.decompress(path.read_bytes())


# pet002: sessions, an uncompressed T1w, 4D PET


def build_pet002(root: Path) -> Path:
    """Copy pet002's layout for sub-01 with real images: the SPM T1w, and the SPM PET as scaled, noisy frames."""
    shutil.copytree(PET002 / "sub-01", root / "sub-01")
    for name in ("dataset_description.json", "participants.json", "README"):
        shutil.copyfile(PET002 / name, root / name)
    (root / "participants.tsv").write_text("\n".join((PET002 / "participants.tsv").read_text().splitlines()[:2]) + "\n")
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    pet = nib.load(SPM_PET)
    base = pet.get_fdata(dtype=np.float32) * 12000.0
    rng = np.random.default_rng(3)
    for sidecar in sorted(root.glob("sub-01/ses-*/pet/*_pet.json")):
        frames = len(json.loads(sidecar.read_text())["FrameDuration"])
        scales = np.interp(np.arange(frames), [0, 3, frames - 1], [0.2, 1.0, 0.5])
        data = np.stack([s * base + rng.normal(0, 150.0 * s, base.shape) for s in scales], -1).astype(np.float32)
        image = nib.Nifti1Image(data, pet.affine)
        image.set_data_dtype(np.int16)
        nib.save(image, sidecar.with_name(sidecar.name.replace(".json", ".nii.gz")))
    for anat in sorted(root.glob("sub-01/ses-*/anat/*_T1w.nii")):
        nib.save(nib.load(SPM_T1W), anat)
    return root


@pytest.mark.slow
def test_pet002_release_is_valid_with_pet_and_t1w_defaced(tmp_path: Path) -> None:
    bids = build_pet002(tmp_path / "pet002")
    out = tmp_path / "release"
    result = release(bids, out, "--nprocs", "2", "--omp-nthreads", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    for dataset in (out, out / "derivatives" / "bidsdeface"):
        validation = run_validator(dataset)
        assert validation.returncode == 0, validation.stdout[-3000:]
    listed = manifest(out)
    for session in ("baseline", "rescan"):
        stem = f"sub-01/ses-{session}"
        assert listed[f"{stem}/anat/sub-01_ses-{session}_T1w.nii.gz"][0] == "defaced", "written .nii.gz"
        assert listed[f"{stem}/pet/sub-01_ses-{session}_pet.nii.gz"][0] == "defaced"
        sidecar = json.loads((out / stem / "anat" / f"sub-01_ses-{session}_T1w.json").read_text())
        assert not {"InstitutionName", "DeviceSerialNumber", "StationName"} & set(sidecar)
        pet = json.loads((out / stem / "pet" / f"sub-01_ses-{session}_pet.json").read_text())
        assert pet["TracerName"] == "DASB" and re.fullmatch(r"\d\d:\d\d:\d\d", pet["TimeZero"])
    assert set(listed) == released_files(out)
