"""``bidsdeface-dicom``'s command line: parser, configuration, usage errors and exit codes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bidsdeface.config import DATE_SHIFT_KEY_ENV
from bidsdeface.dicom_cli import build_parser, config_from_args, main
from bidsdeface.errors import EXIT_CANT_CREATE, EXIT_NO_FILES, EXIT_NO_INPUT, EXIT_USAGE, UsageError

from .conftest import DICOM_SERIES, SHARED, needs_shared, one_line_error


def test_help_names_the_profile_options_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("bidsdeface-dicom ")
    text = build_parser().format_help()
    for expected in ("113107", "113108", "113109", "113105", "113110", "113111", "Exit codes", "--safe-private"):
        assert expected in text
    assert "--write-map" not in text


def test_config_from_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DATE_SHIFT_KEY_ENV, "from-env")
    argv = ["in", "out", "--participant-label", "sub-07", "--retain-device-identity", "--method", "blur",
            "--no-modified-dates", "--safe-private", "ACME 1.0:0019,10", "--clean-pixel-text"]  # fmt: skip
    config = config_from_args(build_parser().parse_args(argv))
    assert (config.dicom_dir, config.output_dir, config.participant_label) == (tmp_path / "in", tmp_path / "out", "07")
    assert config.date_shift_key == "from-env" and config.drop_dates and config.pseudonymize
    assert config.profile.device_identity and not config.profile.modified_dates
    assert config.profile.safe_private == ("ACME 1.0:0019,10",) and config.defacing.method == "blur"
    assert config.clean_pixel_text


def test_labels_or_a_mapping_are_required() -> None:
    with pytest.raises(UsageError, match="--participant-label is required"):
        config_from_args(build_parser().parse_args(["in", "out"]))
    with pytest.raises(UsageError, match="not both"):
        config_from_args(build_parser().parse_args(["in", "out", "--participant-label", "1", "--map", "m.tsv"]))


@pytest.mark.parametrize("spec", ["ACME:0018,10", "ACME:19,10", "no-colon"])
def test_bad_safe_private_specifications_exit_64(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["in", "out", "--participant-label", "1", "--safe-private", spec])
    assert exc.value.code == EXIT_USAGE and "odd group" in capsys.readouterr().err


def test_missing_input_is_one_line_and_exit_66(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "absent"), str(tmp_path / "out"), "--participant-label", "1"]) == EXIT_NO_INPUT
    assert "does not exist or is empty" in one_line_error(capsys)


def test_output_inside_the_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.dcm").write_bytes(b"not dicom")
    assert main([str(tmp_path / "in"), str(tmp_path / "in" / "out"), "--participant-label", "1"]) == EXIT_USAGE
    assert "must not contain each other" in one_line_error(capsys)


def test_a_foreign_output_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.dcm").write_bytes(b"not dicom")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.docx").write_bytes(b"precious")
    assert main([str(tmp_path / "in"), str(tmp_path / "out"), "--participant-label", "1"]) == EXIT_CANT_CREATE
    assert "not a bidsdeface-dicom output" in one_line_error(capsys)


@needs_shared
def test_a_folder_of_localizers_only_exits_18(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pydicom

    source = tmp_path / "in"
    source.mkdir()
    for path in sorted((SHARED / DICOM_SERIES["prismaHFS"]).glob("*.dcm"))[:3]:
        dataset = pydicom.dcmread(path)
        dataset.SeriesDescription = dataset.ProtocolName = "localizer"
        dataset.save_as(source / path.name)
    assert main([str(source), str(tmp_path / "out"), "--participant-label", "1"]) == EXIT_NO_FILES
    assert "skipped by rule" in one_line_error(capsys)
    report = (tmp_path / "out" / "export_report.tsv").read_text()
    assert "\tskipped\t" in report and "localizer or scout" in report
    assert not list((tmp_path / "out").glob("sub-*"))
    shutil.rmtree(source)
