"""``bidsdeface-convert``'s command line: parser, configuration, usage errors and exit codes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bidsdeface.config import DATE_SHIFT_KEY_ENV
from bidsdeface.convert_cli import build_parser, config_from_args, main
from bidsdeface.errors import EXIT_USAGE, UsageError

from .conftest import SHARED, needs_shared, one_line_error


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("bidsdeface-convert ")
    text = build_parser().format_help()
    assert text.startswith("usage: bidsdeface-convert ") and "Exit codes" in text
    assert "--pseudonymize" not in text  # conversion keeps the labels it is given


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dicom"], "the following arguments are required: bids_dir"),
        (["dicom", "bids", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_parser_errors_exit_64(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == EXIT_USAGE
    assert capsys.readouterr().err.splitlines()[-1] == f"bidsdeface-convert: error: {message}"


def test_config_from_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATE_SHIFT_KEY_ENV, "from-env")
    args = build_parser().parse_args(["dicom", "bids", "--participant-label", "sub-01", "--session-label", "ses-a"])
    config = config_from_args(args)
    assert (config.dicom_dir, config.output_dir) == (tmp_path / "dicom", tmp_path / "bids")
    assert (config.participant_label, config.session_label, config.mapping) == ("01", "a", None)
    assert config.date_shift_key == "from-env" and not config.pseudonymize
    mapped = config_from_args(build_parser().parse_args(["dicom", "bids", "--map", "m.tsv"]))
    assert mapped.mapping == tmp_path / "m.tsv" and mapped.participant_label == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--participant-label", "0 1"], "letters and digits only"),
        ([], "--participant-label is required"),
        (["--participant-label", "01", "--map", "m.tsv"], "not both"),
        (["--session-label", "a", "--map", "m.tsv"], "not both"),
    ],
)
def test_usage_errors(tmp_path: Path, capfd: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    """Checked before the folders are read: one line, exit 64, nothing created."""
    with pytest.raises(UsageError):
        config_from_args(build_parser().parse_args(["dicom", "bids", *args]))
    assert main([str(tmp_path / "dicom"), str(tmp_path / "bids"), *args]) == EXIT_USAGE
    assert message in one_line_error(capfd)
    assert not list(tmp_path.iterdir())


@needs_shared
def test_work_dir_inside_its_folders_refused(tmp_path: Path) -> None:
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    source = sorted((SHARED / "dicom_mri_t1w_siemens_trio_mprage").glob("*.dcm"))[0]
    shutil.copyfile(source, dicom / source.name)
    bids = tmp_path / "bids"
    for work in (dicom / "scratch", dicom, bids / "scratch"):
        assert main([str(dicom), str(bids), "--participant-label", "01", "-w", str(work)]) == EXIT_USAGE, work
    assert sorted(p.relative_to(dicom).as_posix() for p in dicom.rglob("*")) == [source.name]
    assert not bids.exists()
