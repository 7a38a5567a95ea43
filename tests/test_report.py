"""QC table and HTML reports: per subject, group level (flagged first), and rendered in a real headless browser."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from bidsdeface.cli import main
from bidsdeface.figures import VIEW_MM, png_bytes
from bidsdeface.files import write_json_atomic
from bidsdeface.report import (
    GROUP_REPORT,
    QC_TABLE,
    read_qc_records,
    shown_width,
    write_group_files,
    write_subject_report,
)

from .conftest import HEADS, NIFTI_HEADS, SHARED, head_paths, make_dataset, needs_shared, tree_digest

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


class _Page(HTMLParser):
    """Collects image sources, link targets and the text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values["src"] or "")
        if tag == "a":
            self.links.append(values["href"] or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert path.read_text().startswith("<!DOCTYPE html>")
    return page


def _write_record(output_dir: Path, subject: str, status: str, reasons: list[str]) -> None:
    scan = f"sub-{subject}/anat/sub-{subject}_desc-defaced_T1w.nii.gz"
    record = {"Scan": scan, "Status": status, "Reasons": reasons, "Notes": [], "Metrics": {}, "Seconds": {}}
    write_json_atomic(output_dir / scan.replace(".nii.gz", "_qc.json"), record)
    (output_dir / scan).write_bytes(b"")  # reports leave out records whose scan is not there


def test_group_files_list_flagged_scans_first(tmp_path: Path) -> None:
    _write_record(tmp_path, "a", "PASS", [])
    _write_record(tmp_path, "b", "WARN", ["registration score 0.82 is low"])
    _write_record(tmp_path, "c", "FAIL", ["<script>alert(1)</script>"])
    (tmp_path / "sub-d").mkdir()
    (tmp_path / "sub-d" / "sub-d_desc-defaced_T1w_qc.json").write_text("{not json")
    assert [r["Status"] for r in read_qc_records(tmp_path)] == ["FAIL", "WARN", "PASS"]
    summary = write_group_files(tmp_path)
    assert (summary.count("FAIL"), summary.count("WARN"), summary.count("PASS")) == (1, 1, 1)
    rows = (tmp_path / QC_TABLE).read_text().splitlines()
    assert [row.split("\t")[2] for row in rows[1:]] == ["FAIL", "WARN", "PASS"]
    report = (tmp_path / GROUP_REPORT).read_text()
    assert report.index("sub-c") < report.index("sub-b") < report.index("sub-a")
    assert "<script>alert" not in report and "&lt;script&gt;" in report


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("label", HEADS)
def test_subject_report_shows_figures_metrics_and_scrubbed_keys(heads_run: dict, label: str) -> None:
    out = heads_run["out"]
    page = parse(out / f"sub-{label}.html")
    assert len(set(page.images)) == 3  # render (also in the before/after flicker), mosaic, skull-strip figure
    for source in page.images:
        assert not source.startswith(("/", "http")) and (out / source).is_file()
    text = " ".join(page.text)
    for words in ("PASS", "registration_score", "face_signal_left", "Metadata scrubbing", "seconds"):
        assert words in text
    assert head_paths(heads_run, label)[1].name in text


@needs_shared
@pytest.mark.slow
def test_group_level_puts_the_broken_scan_first(heads_run: dict, broken_cases: dict, tmp_path: Path) -> None:
    """A FAIL scan added to a copy of the real output comes first in the group report and table."""
    from bidsdeface.outputs import OutputPaths, qc_record

    out = tmp_path / "out"
    shutil.copytree(heads_run["out"], out, copy_function=os.link)
    anat = out / "sub-broken" / "anat"
    anat.mkdir(parents=True)
    os.link(head_paths(heads_run, "prismaHFP")[0], anat / "sub-broken_desc-defaced_T1w.nii.gz")
    figures = out / "sub-broken" / "figures"
    paths = OutputPaths(
        image=anat / "sub-broken_desc-defaced_T1w.nii.gz",
        sidecar=anat / "sub-broken_desc-defaced_T1w.json",
        mask=anat / "sub-broken_mod-T1w_defacemask.nii.gz",
        mask_sidecar=anat / "sub-broken_mod-T1w_defacemask.json",
        qc=anat / "sub-broken_desc-defaced_T1w_qc.json",
        mosaic=figures / "sub-broken_desc-defaced_T1w_mosaic.png",
        render=figures / "sub-broken_desc-defaced_T1w_render.png",
    )
    quality = broken_cases["undefaced"]
    figures.mkdir()
    paths.mosaic.write_bytes(quality.figures.mosaic)
    paths.render.write_bytes(quality.figures.render)
    write_json_atomic(paths.qc, qc_record(out, paths, quality, {"registration_path": "head to template"}, {"qc": 1.0}))
    for stale in (out / QC_TABLE, out / GROUP_REPORT):
        stale.unlink()
    assert main([str(heads_run["bids"]), str(out), "group"]) == 0
    rows = (out / QC_TABLE).read_text().splitlines()
    assert len(rows) == 1 + len(HEADS) + 1
    assert rows[1].split("\t")[:3] == ["sub-broken/anat/sub-broken_desc-defaced_T1w.nii.gz", "broken", "FAIL"]
    page = parse(out / GROUP_REPORT)
    images = [source for source in page.images if source]  # the review panel's images get theirs from its script
    assert images[0] == "sub-broken/figures/sub-broken_desc-defaced_T1w_render.png"
    assert len(images) == len(HEADS) + 1 and all((out / source).is_file() for source in images)
    scan_links = [link for link in page.links if link != QC_TABLE]
    assert scan_links[0] == "sub-broken.html#sub-broken/anat/sub-broken_desc-defaced_T1w.nii.gz"
    assert (out / "sub-broken.html").is_file()


@needs_shared
@pytest.mark.slow
def test_report_renders_in_a_headless_browser(heads_run: dict, tmp_path: Path) -> None:
    """Debian's chromium opens the subject report offline; the screenshot shows the figures."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
    report = heads_run["out"] / "sub-prismaHFP.html"
    screenshot = tmp_path / "sub-prismaHFP.png"
    command = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={screenshot}",
        "--window-size=1200,1400",
        report.as_uri(),
    ]
    subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert screenshot.is_file(), "chromium wrote no screenshot"
    if os.environ.get("BIDSDEFACE_KEEP_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["BIDSDEFACE_KEEP_SCREENSHOT"])
    grey = np.asarray(Image.open(screenshot).convert("L"))
    # The page is white; the figures are dark (black backgrounds, grey heads). A
    # missing image would leave a white page with a small broken-image icon.
    dark = grey < 40
    assert dark.mean() > 0.15, f"only {dark.mean():.0%} of the screenshot is figure"
    rows_with_figure = np.nonzero(dark.mean(axis=1) > 0.3)[0]
    assert rows_with_figure.size > 300


class _Targets(HTMLParser):
    """Collects every href and src of a page, and its element ids."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.targets += [values[name] or "" for name in ("href", "src") if name in values]
        if values.get("id"):
            self.ids.add(values["id"] or "")


def _targets(path: Path) -> _Targets:
    page = _Targets()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def broken_links(output_dir: Path) -> list[str]:
    """Every href and src, in every HTML page below ``output_dir``, whose file (or anchor) does not exist."""
    broken = []
    for page in sorted(output_dir.rglob("*.html")):
        for target in _targets(page).targets:
            name, _, anchor = target.partition("#")
            linked = (page.parent / name) if name else page
            if not linked.is_file() or (anchor and anchor not in _targets(linked).ids):
                broken.append(f"{page.relative_to(output_dir)} -> {target}")
    return broken


def _everything(root: Path) -> tuple[dict[str, str], list[str]]:
    return tree_digest(root), sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@needs_shared
def test_reports_after_a_kill_link_only_files_that_exist(tmp_path: Path) -> None:
    """SIGTERM after one subject is done; the next run, on another subject, repairs its report and links."""
    flat = nib.Nifti1Image(np.ones((64, 64, 1), np.float32), np.eye(4))  # fails at once: not a head
    head = SHARED / NIFTI_HEADS["ixi"]
    bids = make_dataset(tmp_path / "bids", {"01": head, "02": head, "03": flat})
    out, before = tmp_path / "out", _everything(bids)
    command = [sys.executable, "-m", "bidsdeface.cli", str(bids), str(out), "participant", "--skip-bids-validation"]
    process = subprocess.Popen([*command, "--participant-label", "01", "02"], stdout=subprocess.DEVNULL)
    finished = out / "sub-01" / "anat" / "sub-01_desc-defaced_T1w.json"  # sub-01 done, sub-02 under way
    deadline = time.monotonic() + 600
    while not finished.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) != 0
    assert finished.is_file() and not (out / "sub-01.html").exists()  # reports come at the end: none yet
    other = [str(bids), str(out), "participant", "--skip-bids-validation", "--participant-label", "03"]
    assert main(other) == 65  # sub-03 fails, and the run still rebuilds the reports
    assert broken_links(out) == []
    assert "sub-01.html#sub-01/anat/sub-01_desc-defaced_T1w.nii.gz" in _targets(out / GROUP_REPORT).targets

    # What an interrupted commit or a cleanup can leave: a QC record without its scan, a figure gone.
    record = json.loads((out / "sub-01" / "anat" / "sub-01_desc-defaced_T1w_qc.json").read_text())
    orphan = json.loads(json.dumps(record).replace("sub-01", "sub-02"))
    write_json_atomic(out / "sub-02" / "anat" / "sub-02_desc-defaced_T1w_qc.json", orphan)
    (out / record["Figures"]["Render"]).unlink()
    assert main(other) == 65
    assert broken_links(out) == []
    assert _targets(out / "sub-01.html").targets == [GROUP_REPORT, record["Figures"]["Mosaic"]]
    assert "sub-02" not in (out / GROUP_REPORT).read_text() and "sub-02" not in (out / QC_TABLE).read_text()
    assert _everything(bids) == before


def test_withheld_records_are_listed_without_an_image(tmp_path: Path) -> None:
    """A FAIL record saying its image was withheld is reported; other records without an image are not."""
    _write_record(tmp_path, "a", "PASS", [])
    scan = "sub-b/anat/sub-b_desc-defaced_T1w.nii.gz"
    figure = "sub-b/figures/sub-b_desc-defaced_T1w_render.png"
    (tmp_path / "sub-b" / "figures").mkdir(parents=True)
    (tmp_path / figure).write_bytes(b"")
    record = {
        "Scan": scan,
        "Status": "FAIL",
        "ImageWithheld": True,
        "Reasons": ["only 10% of the face removed"],
        "Metrics": {},
        "Figures": {"Render": figure, "Mosaic": figure.replace("render", "mosaic")},  # the mosaic is gone
    }
    write_json_atomic(tmp_path / scan.replace(".nii.gz", "_qc.json"), record)
    # image gone, but not withheld (an interrupted run), or "withheld" yet not a FAIL: left out as before
    for suffix, changes in (("T2w", {"ImageWithheld": False}), ("FLAIR", {"Status": "PASS"})):
        other = {**record, **changes, "Scan": scan.replace("T1w", suffix)}
        write_json_atomic(tmp_path / other["Scan"].replace(".nii.gz", "_qc.json"), other)
    assert [(r["Scan"], r["Status"]) for r in read_qc_records(tmp_path)] == [
        (scan, "FAIL"),
        ("sub-a/anat/sub-a_desc-defaced_T1w.nii.gz", "PASS"),
    ]
    write_group_files(tmp_path)
    row = (tmp_path / QC_TABLE).read_text().splitlines()[1].split("\t")
    assert row[:5] == [scan, "b", "FAIL", "only 10% of the face removed", "withheld"]
    assert (tmp_path / QC_TABLE).read_text().splitlines()[2].split("\t")[4] == "written"
    assert "image withheld" in (tmp_path / GROUP_REPORT).read_text()
    page = parse(write_subject_report(tmp_path, "b"))
    assert page.images == [figure] and "Image withheld:" in " ".join(page.text)
    assert broken_links(tmp_path) == [] and not (tmp_path / scan).exists()


def test_figures_are_shown_at_one_css_pixel_per_millimetre(tmp_path: Path) -> None:
    """A figure of VIEW_MM pixels is given the width it would have with 1 mm pixels; a broken file gets none."""
    figure = tmp_path / "figure.png"
    figure.write_bytes(png_bytes(Image.new("RGB", (200, 10))))
    assert shown_width(figure) == f' width="{round(200 * VIEW_MM)}"'
    (tmp_path / "broken.png").write_bytes(b"not a png")
    assert shown_width(tmp_path / "broken.png") == ""
    assert shown_width(tmp_path / "missing.png") == ""
