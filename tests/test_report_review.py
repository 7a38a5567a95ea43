"""The group report at the scale of a release: 1,000 scans, driven in real headless Chromium.

The records are made from the real heads' QC records (their real figures linked 1,000 times,
their metrics varied, one in ten FAIL and one in seven WARN); the page is opened by Playwright
with Debian's chromium. Set ``BIDSDEFACE_WRITE_DOCS=1`` to also write the screenshots into
``docs/`` (as they are in the repository).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from bidsdeface.cli import main
from bidsdeface.files import write_json_atomic
from bidsdeface.ratings import RATINGS_FILE
from bidsdeface.report import GROUP_REPORT, QC_TABLE, write_group_files, write_subject_report

from .conftest import REPO, needs_shared

pytestmark = [needs_shared, pytest.mark.slow]

SCANS = 1000
LOAD_SECONDS = 5.0  # the 1,000-row page is ready (data parsed, table, plots) within this
PLANTED = "<script>window.pwned = 1</script>"  # in a scan's reasons
PLANTED_LABEL = "<img src=x onerror=window.pwned=1>"  # in a subject label (no slash: it is a folder name)


def _browser_or_skip():
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian package 'chromium'; .ci/run installs it)")
    return playwright, chromium


@pytest.fixture(scope="module")
def release(heads_run: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An output holding 1,000 scans' QC records, figures and subject reports, and a BIDS folder beside it."""
    real = [json.loads(p.read_text()) for p in sorted(heads_run["out"].glob("sub-*/anat/*_qc.json"))]
    root = tmp_path_factory.mktemp("release")
    out, bids = root / "out", root / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "r", "BIDSVersion": "1.10.0"}))
    (bids / "participants.tsv").write_text("participant_id\n")
    statuses = []
    for index in range(SCANS):
        source = real[index % len(real)]
        subject = f"{index:04d}" if index else f"0000{PLANTED_LABEL}"
        scan = f"sub-{subject}/anat/sub-{subject}_desc-defaced_T1w.nii.gz"
        status = "FAIL" if index % 10 == 3 else "WARN" if index % 7 == 2 else "PASS"
        figures = {}
        for kind, path in source["Figures"].items():
            target = out / f"sub-{subject}" / "figures" / f"sub-{subject}_{kind.lower()}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(heads_run["out"] / path, target)
            figures[kind] = target.relative_to(out).as_posix()
        metrics = {
            **source["Metrics"],
            "registration_score": round(0.80 + (index * 37 % 200) / 1000, 3),
            "face_signal_left": round((index * 13 % 25) / 100, 2),
            "head_removed_fraction": round(0.06 + (index * 7 % 12) / 100, 2),
        }
        reasons = [PLANTED] if index == 0 else (["synthetic flag"] if status != "PASS" else [])
        record = {**source, "Scan": scan, "Status": status, "Reasons": reasons, "Metrics": metrics, "Figures": figures}
        write_json_atomic(out / scan.replace(".nii.gz", "_qc.json"), record)
        (out / scan).write_bytes(b"")
        statuses.append(status)
    started = time.perf_counter()
    for index in range(SCANS):
        write_subject_report(out, f"{index:04d}" if index else f"0000{PLANTED_LABEL}")
    write_group_files(out)
    return {"out": out, "bids": bids, "statuses": statuses, "seconds": time.perf_counter() - started}


@pytest.fixture(scope="module")
def page(release: dict):
    playwright, chromium = _browser_or_skip()
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
        tab = context.new_page()
        started = time.perf_counter()
        tab.goto((release["out"] / GROUP_REPORT).as_uri())
        tab.wait_for_selector("body[data-ready=true]", timeout=60_000)
        tab.load_seconds = time.perf_counter() - started
        yield tab
        browser.close()


def _column(tab, index: int) -> list[str]:
    return tab.eval_on_selector_all(f"#rows tr td:nth-child({index})", "cells => cells.map(c => c.textContent)")


def test_a_thousand_scan_report_loads_quickly(page, release: dict) -> None:
    assert page.load_seconds < LOAD_SECONDS, page.load_seconds
    assert page.locator("#rows tr").count() == SCANS


def test_filtering_to_fail_shows_exactly_the_fail_rows(page, release: dict) -> None:
    page.select_option("#f-status", "FAIL")
    statuses = page.eval_on_selector_all("#rows tr", "rows => rows.map(r => r.dataset.status)")
    assert statuses == ["FAIL"] * release["statuses"].count("FAIL")
    page.select_option("#f-status", "*")


def test_sorting_by_registration_score_orders_the_rows(page) -> None:
    page.select_option("#sort", "registration_score")
    page.select_option("#direction", "asc")
    values = [float(v) for v in _column(page, 5) if v != "n/a"]
    assert len(values) == SCANS and values == sorted(values)
    page.select_option("#sort", "flagged")


def test_planted_markup_is_shown_as_text_and_never_run(page) -> None:
    assert page.evaluate("window.pwned") is None
    assert page.get_by_text(PLANTED).count() >= 1 and page.get_by_text(PLANTED_LABEL).count() >= 1


def test_keyboard_review_steps_through_flagged_scans_and_ratings_survive_a_reload(page, release: dict) -> None:
    scans = page.evaluate("JSON.parse(document.getElementById('qc-data').textContent).scans")
    first, second = sorted(s["scan"] for s in scans if s["status"] == "FAIL")[:2]
    page.fill("#reviewer", "ana")
    page.dispatch_event("#reviewer", "change")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("r")
    assert page.text_content("#r-name") == first
    page.keyboard.press("j")
    assert page.text_content("#r-name") == second
    page.keyboard.press("f")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.keyboard.press("r")
    page.keyboard.press("j")
    assert page.text_content("#r-name") == second and page.text_content("#r-rating") == "fail by ana"
    _screenshot(page, "review_mode.png")
    page.keyboard.press("Escape")


def test_exported_ratings_are_folded_into_qc_tsv_by_the_group_level(page, release: dict, tmp_path: Path) -> None:
    with page.expect_download() as download:
        page.click("#export")
    exported = tmp_path / "qc_ratings.tsv"
    download.value.save_as(exported)
    rows = exported.read_text().splitlines()
    assert rows[0] == "scan\trating\treviewer\tcomment\ttime" and len(rows) == 2 and "\tfail\tana\t" in rows[1]
    out, bids = release["out"], release["bids"]
    assert main([str(bids), str(out), "group", "--ratings", str(exported), "--drop-dates"]) == 0
    assert (out / RATINGS_FILE).is_file()
    table = (out / QC_TABLE).read_text().splitlines()
    header = table[0].split("\t")
    rated = [dict(zip(header, line.split("\t"), strict=True)) for line in table[1:]]
    decided = [row for row in rated if row["decided_by"] == "ana"]
    assert len(decided) == 1 and decided[0]["final_status"] == "FAIL" and decided[0]["review_rating"] == "fail"
    page.goto((out / GROUP_REPORT).as_uri())
    page.wait_for_selector("body[data-ready=true]")
    _screenshot(page, "group_report.png")
    page.goto((out / f"{decided[0]['scan'].split('/')[0]}.html").as_uri())
    _screenshot(page, "subject_report.png")


def _screenshot(page, name: str) -> None:
    """Take the screenshot; keep it in docs/ when asked to."""
    if os.environ.get("BIDSDEFACE_WRITE_DOCS") == "1":
        page.screenshot(path=str(REPO / "docs" / name))
    else:
        page.screenshot()
