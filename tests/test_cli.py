"""The command line: exit codes for bad input, one failing scan not stopping others."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsdeface.cli import build_parser, config_from_args, main
from bidsdeface.config import CONTAINER_IMAGE_ENV, DATE_SHIFT_KEY_ENV

from .conftest import EXAMPLE, SHARED, make_dataset, needs_shared, run_validator, tree_digest

IXI = "mri_t1w_ixi012/IXI012-HH-1211_T1.nii.gz"


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "bidsdeface" in capsys.readouterr().out
    assert "Exit codes" in build_parser().format_help()


def test_label_prefixes_and_aliases() -> None:
    args = build_parser().parse_args(["in", "out", "participant", "--participant_label", "sub-01", "02"])
    assert config_from_args(args).participant_labels == ("01", "02")


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["in", "out", "sideways"], 17, "argument analysis_level: invalid choice: 'sideways' (choose from "),
        (["in", "out", "participant", "--nprocs", "0"], 64, "argument --nprocs: must be >= 1, not 0"),
        (["in", "out", "participant", "--method", "melt"], 64, "argument --method: invalid choice: 'melt'"),
        # the level decides 17 by its value, not by the words of argparse's message
        (["in", "out", "participant", "--method", "analysis_level"], 64, "invalid choice: 'analysis_level'"),
        (["in", "out"], 64, "the following arguments are required: analysis_level"),
        (["in", "out", "group", "extra"], 64, "unrecognized arguments: extra"),
    ],
)
def test_usage_errors(argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == code
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("bidsdeface: error: ") and message in error


def test_date_shift_key_and_container_image_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATE_SHIFT_KEY_ENV, "from-env")
    monkeypatch.setenv(CONTAINER_IMAGE_ENV, "bidsdeface/bidsdeface:test")
    config = config_from_args(build_parser().parse_args(["in", "out", "group"]))
    assert config.date_shift_key == "from-env" and config.container_image == "bidsdeface/bidsdeface:test"
    given = build_parser().parse_args(["in", "out", "group", "--date-shift-key", "given"])
    assert config_from_args(given).date_shift_key == "given"


def test_missing_and_empty_input(tmp_path: Path) -> None:
    assert main([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"]) == 66
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), str(tmp_path / "out"), "participant"]) == 66


def test_not_bids(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "file.txt").write_text("x")
    assert main([str(tmp_path / "in"), str(tmp_path / "out"), "participant"]) == 16


def test_output_inside_input_refused(tmp_path: Path) -> None:
    bids = tmp_path / "bids"
    shutil.copytree(EXAMPLE, bids)
    before = tree_digest(bids)
    assert main([str(bids), str(bids / "derivatives" / "x"), "participant"]) == 64
    assert main([str(bids), str(bids), "participant"]) == 64
    assert tree_digest(bids) == before


def _paths(root: Path) -> list[str]:
    """Every file and folder below ``root`` (to prove nothing was created there)."""
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*"))


def test_work_dir_inside_input_or_output_refused(tmp_path: Path) -> None:
    """-w in (or at) BIDS_DIR or OUTPUT_DIR exits 64 before anything is written, also for a SLURM script."""
    bids, out = tmp_path / "bids", tmp_path / "out"
    shutil.copytree(EXAMPLE, bids)
    before, listed = tree_digest(bids), _paths(bids)
    for work in (bids / "scratch", bids, bids / "sub-01" / "anat", out / "scratch", out):
        assert main([str(bids), str(out), "participant", "--skip-bids-validation", "-w", str(work)]) == 64, work
    slurm = ["--write-slurm-array", str(tmp_path / "hpc" / "deface.sbatch")]
    assert main([str(bids), str(out), "participant", "-w", str(bids / "scratch"), *slurm]) == 64
    assert tree_digest(bids) == before and _paths(bids) == listed
    assert not out.exists() and not (tmp_path / "hpc").exists()


def test_unwritable_output(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main([str(EXAMPLE), str(blocker / "out"), "participant", "--skip-bids-validation"]) == 73


def test_labels_matching_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main([str(EXAMPLE), str(out), "participant", "--participant-label", "99"]) == 18
    assert main([str(EXAMPLE), str(out), "participant", "--session-label", "X"]) == 18


def test_invalid_input_dataset(tmp_path: Path) -> None:
    bids = tmp_path / "bids"
    shutil.copytree(EXAMPLE, bids)
    (bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_bytes(b"")
    assert main([str(bids), str(tmp_path / "out"), "participant"]) == 16


@needs_shared
def test_bad_scans_fail_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each bad scan fails with one line naming its file; the good subject is written."""
    real = nib.load(SHARED / IXI)
    data = np.asanyarray(real.dataobj).astype(np.float32)
    flat = np.zeros((64, 64, 1), np.float32)
    flat[10:50, 10:50, 0] = 100
    with_nan = data.copy()
    with_nan[60, 60, 45] = np.nan
    noise = np.random.default_rng(0).normal(100, 30, size=(40, 40, 40)).astype(np.float32)
    cube = np.zeros((100, 100, 100), np.float32)
    cube[20:80, 20:80, 20:80] = 1000
    scans = {
        "good": SHARED / IXI,
        "twod": nib.Nifti1Image(flat, np.eye(4)),
        "nans": nib.Nifti1Image(with_nan, real.affine),
        "zeros": nib.Nifti1Image(np.zeros((60, 60, 45), np.float32), real.affine),
        "noise": nib.Nifti1Image(noise, np.diag([5.0, 5.0, 5.0, 1.0])),
        "cube": nib.Nifti1Image(cube, np.diag([2.0, 2.0, 2.0, 1.0])),
        "truncated": SHARED / IXI,
    }
    bids = make_dataset(tmp_path / "bids", scans)
    truncated = bids / "sub-truncated" / "anat" / "sub-truncated_T1w.nii.gz"
    truncated.write_bytes(truncated.read_bytes()[:20000])
    (bids / "sub-nans" / "anat" / "sub-nans_T1w.json").unlink()  # missing sidecar is fine
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--skip-bids-validation"])
    assert code == 65
    assert (out / "sub-good" / "anat" / "sub-good_desc-defaced_T1w.nii.gz").is_file()
    for label in ("twod", "nans", "zeros", "noise", "cube", "truncated"):
        assert not (out / f"sub-{label}").exists() or not list((out / f"sub-{label}").rglob("*.nii.gz"))
        lines = [r.getMessage() for r in caplog.records if f"sub-{label}_T1w" in r.getMessage()]
        assert any("FAILED" in line for line in lines), label
    assert "Traceback" not in caplog.text


def test_corrupt_sidecar_fails_that_scan(tmp_path: Path) -> None:
    bids = tmp_path / "bids"
    shutil.copytree(EXAMPLE, bids)
    (bids / "sub-01" / "anat" / "sub-01_T1w.json").write_text("{not json")
    assert main([str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation"]) == 65


def test_example_outputs(tmp_path: Path) -> None:
    """The README example: outputs, sidecars, dataset files, gzip headers."""
    out = tmp_path / "out"
    assert main([str(EXAMPLE), str(out), "group"]) == 66  # nothing to summarise yet
    assert main([str(EXAMPLE), str(out), "participant"]) == 0
    assert main([str(EXAMPLE), str(out), "group"]) == 0
    anat = out / "sub-01" / "anat"
    sidecar = json.loads((anat / "sub-01_desc-defaced_T1w.json").read_text())
    assert sidecar["SkullStripped"] is False
    assert sidecar["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"]
    codes = {c["CodeValue"] for c in sidecar["DeidentificationMethodCodeSequence"]}
    assert codes == {"113100", "113102", "113107"}  # dates shifted by default
    record = json.loads((out / "sub-01" / "sub-01_scrub.json").read_text())
    assert record["Files"]["sub-01/anat/sub-01_desc-defaced_T1w.json"]["NiftiHeader"]["Removed"] == ["extensions"]
    assert (tmp_path / "out-private" / "subjects" / "sub-01.json").is_file()
    assert json.loads((anat / "sub-01_mod-T1w_defacemask.json").read_text())["SkullStripped"] is False
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "bidsdeface"
    assert "figures" in (out / ".bidsignore").read_text().split()
    for image in anat.glob("*.nii.gz"):
        raw = image.read_bytes()
        flags, mtime = raw[3], int.from_bytes(raw[4:8], "little")
        assert not flags & 0x08, f"{image.name}: gzip header carries a file name"
        assert mtime == 0
        with gzip.open(image) as stream:
            stream.read(348)


# Files that hold stage times (seconds) besides what they report on the scans.
TIMED_FILES = ("qc.tsv", "sub-01.html", "group_report.html")  # seconds per scan are shown


def test_example_repeats_bit_for_bit_with_two_cores(tmp_path: Path) -> None:
    """The bundled example and one key give the same bytes (all but the stage times) in two runs with two cores.

    (That the pose search gives the same bytes in one process or several is
    ``test_register.py::test_pose_search_in_forked_processes_gives_the_same_bytes_as_in_one``.)
    """
    digests = []
    for run in ("first", "second"):
        out = tmp_path / run / "out"
        command = [sys.executable, "-m", "bidsdeface.cli", str(EXAMPLE), str(out), "participant", "--omp-nthreads", "2"]
        key = {DATE_SHIFT_KEY_ENV: "the same key for both runs"}
        completed = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, **key})
        assert completed.returncode == 0, completed.stderr[-2000:]
        digest = {name: value for name, value in tree_digest(out.parent).items() if Path(name).name not in TIMED_FILES}
        for record in out.rglob("*_qc.json"):
            content = json.loads(record.read_text())
            content.pop("Seconds")
            digest[record.relative_to(out.parent).as_posix()] = json.dumps(content, sort_keys=True)
        digests.append(digest)
    assert any(name.endswith("_defacemask.nii.gz") for name in digests[0])
    assert digests[0] == digests[1]


def test_session_filter_selects_one_session(tmp_path: Path) -> None:
    """A dataset with sessions: only the chosen session is selected, and it is found by its ses- path.

    (Defaced outputs with ses- in their names, and their validation, are covered by the
    leak test's run, which has sessions.)
    """
    from bidsdeface.discover import find_scans

    bids = tmp_path / "bids"
    shutil.copytree(EXAMPLE, bids)
    anat = bids / "sub-01" / "anat"
    for session in ("A", "B"):
        target = bids / "sub-01" / f"ses-{session}" / "anat"
        target.mkdir(parents=True)
        for source in anat.iterdir():
            shutil.copyfile(source, target / source.name.replace("sub-01_", f"sub-01_ses-{session}_"))
    shutil.rmtree(anat)
    argv = [str(bids), str(tmp_path / "out"), "participant", "--session-label", "ses-B", "--participant-label", "01"]
    jobs = find_scans(config_from_args(build_parser().parse_args(argv)))
    assert [(job.session, job.relpath) for job in jobs] == [("B", "sub-01/ses-B/anat/sub-01_ses-B_T1w.nii.gz")]
    assert run_validator(bids).returncode == 0


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ('{"keep_sidecar_keys": "SeriesDescription"}', "must be a list"),
        ('{"keep": ["SeriesDescription"]}', "unknown scrub policy field"),
        ("{not json", "unreadable JSON"),
        ("[]", "not a JSON object"),
    ],
)
def test_bad_scrub_policy_is_a_usage_error(
    tmp_path: Path, policy: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(policy)
    code = main([str(EXAMPLE), str(tmp_path / "out"), "participant", "--scrub-policy", str(policy_file)])
    assert code == 64
    assert message in caplog.text


def test_private_folder_inside_the_output_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    code = main([str(EXAMPLE), str(out), "participant", "--private-dir", str(out / "keys")])
    assert code == 64
    assert "must be outside the output folder" in caplog.text
    assert not (out / "keys").exists()


def test_policy_file_and_options_merge(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.json"
    policy_file.write_text('{"keep_sidecar_keys": ["SeriesDescription"], "drop_sidecar_keys": ["SAR"]}')
    options = ["--keep-sidecar-keys", "StationName", "--keep-columns", "group2", "--date-shift-key", "s3cr3t-key"]
    args = build_parser().parse_args(
        [str(EXAMPLE), str(tmp_path / "out"), "participant", "--scrub-policy", str(policy_file), *options]
    )
    config = config_from_args(args)
    assert config.scrub_policy.keep_sidecar_keys == ("SeriesDescription", "StationName")
    assert config.scrub_policy.drop_sidecar_keys == ("SAR",)
    assert config.scrub_policy.keep_columns == ("group2",)
    assert config.date_shift_key == "s3cr3t-key"
    assert "s3cr3t" not in repr(config)  # the secret never reaches logs through the config


def test_keep_failed_needs_a_private_folder_outside_the_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--keep-failed writes into the private folder even when no dates or labels need it: never in the output."""
    out = tmp_path / "out"
    assert config_from_args(build_parser().parse_args(["in", "out", "participant", "--keep-failed"])).keep_failed
    assert not config_from_args(build_parser().parse_args(["in", "out", "participant"])).keep_failed
    keys = ["--private-dir", str(out / "keys")]
    code = main([str(EXAMPLE), str(out), "participant", "--drop-dates", "--keep-failed", *keys])
    assert code == 64
    assert "must be outside the output folder" in caplog.text
    assert not (out / "keys").exists()
    assert "--keep-failed" in build_parser().format_help()


def test_release_layout_puts_the_derivative_inside_and_the_private_folder_beside(tmp_path: Path) -> None:
    from bidsdeface.identity import private_folder

    config = config_from_args(
        build_parser().parse_args(["in", str(tmp_path / "rel"), "participant", "--layout", "release"])
    )
    assert config.release_dir == tmp_path / "rel"
    assert config.output_dir == tmp_path / "rel" / "derivatives" / "bidsdeface"
    assert private_folder(config) == tmp_path / "rel-private"
    default = config_from_args(build_parser().parse_args(["in", str(tmp_path / "out"), "participant"]))
    assert default.release_dir is None and default.output_dir == tmp_path / "out"
