"""QC reports: ``qc.tsv``, ``sub-<label>.html`` and ``group_report.html``, rebuilt from the scans' ``_qc.json``.

Every report is made from what is on disk, so a resumed run, another subject's
run or the group level writes the same files. Reports link figures by relative
paths and need nothing but a browser; they hold output names, metrics and key
names only. They link only files that exist: a QC record whose image is gone is
left out, a missing figure is not shown, and the group report links a scan only
once its subject report holds it (a run killed before writing that report leaves
it to the next run or the group level). The exception is a scan that failed QC:
its record says ``"ImageWithheld": true`` (no image of it was written), and it is
listed, marked as withheld, with its figures, for review.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from . import __version__
from .figures import VIEW_MM
from .files import write_bytes_atomic
from .outputs import STAGES
from .privacy import PRIVACY_REPORT, WARN_BELOW_K
from .qc import LIMITS, STATUS_ORDER, Limits
from .ratings import Rating, final_status, stored_ratings

log = logging.getLogger(__name__)

QC_TABLE = "qc.tsv"
GROUP_REPORT = "group_report.html"
METRIC_COLUMNS: tuple[str, ...] = (
    "registration_score",
    "face_removed_fraction",
    "face_signal_left",
    "face_score_before",
    "face_score_after",
    "brain_voxels_touched",
    "face_voxels_removed",
    "head_voxels_removed",
    "head_removed_fraction",
    "skull_strip_method",
    "brain_volume_ml",
    "brain_template_dice",
)
FIGURE_CAPTIONS = {
    "Render": "Render: the head's surface before and after defacing (face region in blocks)",
    "Mosaic": "Mosaic: slices through the face before and after (face region in blocks); removed region in red",
    "Brain": "Brain: skull-strip mask in red, protected region (never changed) in blue, on the defaced image",
}
WITHHELD_NOTE = (
    "<p><strong>Image withheld:</strong> this scan failed QC, so none of its images is in this dataset; "
    "its QC record and figures are here for review.</p>\n"
)
STATUS_COLOURS = {"FAIL": "#c62828", "WARN": "#ef6c00", "PASS": "#2e7d32"}
STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-top: 1px solid #ccc; padding-top: 1em; }
.badge { color: #fff; padding: 0.1em 0.5em; border-radius: 0.3em; font-weight: bold; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
img { max-width: 100%; border: 1px solid #999; background: #000; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.note { color: #555; font-size: 0.9em; }
.flicker { overflow: hidden; border: 1px solid #999; }
.flicker img { display: block; border: 0; max-width: none; }
.flicker:hover img { transform: translateY(-50%); }
"""


@dataclass(frozen=True)
class QcSummary:
    """What the group files hold.

    Attributes
    ----------
    statuses : tuple of str
        The status of every scan with a QC record.
    table, report : Path
        ``qc.tsv`` and ``group_report.html``.
    """

    statuses: tuple[str, ...]
    table: Path
    report: Path

    def count(self, status: str) -> int:
        """Return how many scans have ``status``."""
        return self.statuses.count(status)


def withheld(record: dict[str, Any]) -> bool:
    """Return whether ``record`` is of a scan that failed QC and whose image was therefore not written.

    >>> withheld({"Status": "FAIL", "ImageWithheld": True}), withheld({"Status": "PASS", "ImageWithheld": True})
    (True, False)
    """
    return record.get("ImageWithheld") is True and record.get("Status") == "FAIL"


def _on_disk(output_dir: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    """Return ``record`` with only the figures that exist, or None when its image does not (unless withheld)."""
    scan, figures = record.get("Scan"), record.get("Figures", {})
    if not isinstance(scan, str) or not isinstance(figures, dict):
        return None
    if not withheld(record) and not (output_dir / scan).is_file():
        return None
    kept = {kind: path for kind, path in figures.items() if isinstance(path, str) and (output_dir / path).is_file()}
    return {**record, "Figures": kept}


def read_qc_records(output_dir: Path, subject: str | None = None) -> list[dict[str, Any]]:
    """Return the QC records below ``output_dir`` (one subject's, or all), flagged scans first.

    Only files that exist are named: a record whose image is gone (an interrupted or
    cleaned-up scan) is left out, and its missing figures are dropped. A record of a
    scan that failed QC and whose image was withheld (:func:`withheld`) is kept.
    """
    pattern = f"sub-{subject}/**/*_qc.json" if subject else "sub-*/**/*_qc.json"
    records = []
    for path in sorted(output_dir.glob(pattern)):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("%s: unreadable QC record; left out of the reports", path.relative_to(output_dir))
            continue
        if not isinstance(record, dict) or record.get("Status") not in STATUS_ORDER:
            continue
        present = _on_disk(output_dir, record)
        if present is None:
            log.info("%s: its scan is not in the output; left out of the reports", path.relative_to(output_dir))
        else:
            records.append(present)
    return sorted(records, key=lambda r: (STATUS_ORDER.index(r["Status"]), r.get("Scan", "")))


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "n/a"
    return str(value).replace("\t", " ").replace("\n", " ")


def qc_table(records: list[dict[str, Any]], ratings: dict[str, Rating] | None = None) -> str:
    """Return ``qc.tsv``: one row per scan with status, reasons, metrics and seconds per stage.

    ``image`` is ``written``, or ``withheld`` for a scan that failed QC (not in the output).
    ``final_status`` and ``decided_by`` follow reviewers' ratings (:func:`bidsdeface.ratings.final_status`).

    >>> table = qc_table([{"Scan": "sub-1/anat/x.nii.gz", "Status": "PASS", "Metrics": {}, "Seconds": {"qc": 2.0}}])
    >>> table.splitlines()[1].split(chr(9))[:5]
    ['sub-1/anat/x.nii.gz', '1', 'PASS', 'n/a', 'written']
    """
    header = ["scan", "subject", "status", "reasons", "image", *METRIC_COLUMNS, "seconds_total"]
    header += [f"seconds_{stage}" for stage in STAGES]
    header += ["review_rating", "reviewer", "review_comment", "reviewed_at", "final_status", "decided_by"]
    lines = ["\t".join(header)]
    for record in records:
        metrics, seconds = {**record.get("Method", {}), **record.get("Metrics", {})}, record.get("Seconds", {})
        row = [
            record["Scan"],
            record["Scan"].split("/")[0].removeprefix("sub-"),
            record["Status"],
            "; ".join(record.get("Reasons", [])),
            "withheld" if withheld(record) else "written",
            *(metrics.get(column) for column in METRIC_COLUMNS),
            round(sum(seconds.values()), 2),
            *(seconds.get(stage) for stage in STAGES),
            *_review_cells(record["Status"], (ratings or {}).get(record["Scan"])),
        ]
        lines.append("\t".join(_cell(value) for value in row))
    return "\n".join(lines) + "\n"


def _review_cells(status: str, rating: Rating | None) -> tuple[str | None, ...]:
    final, decided = final_status(status, rating)
    if rating is None:
        return None, None, None, None, final, decided
    return rating.rating, rating.reviewer, rating.comment, rating.time, final, decided


def _page(title: str, body: str) -> bytes:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n"
        f'<p class="note">Made by bidsdeface {html.escape(__version__)}. '
        "Every view shows the face region in coarse blocks, before and after: faces are never drawn.</p>\n"
        "</body>\n</html>\n"
    ).encode()


def _badge(status: str) -> str:
    return f'<span class="badge" style="background:{STATUS_COLOURS[status]}">{status}</span>'


def _counts(records: list[dict[str, Any]]) -> str:
    statuses = [r["Status"] for r in records]
    return ", ".join(f"{_badge(s)} {statuses.count(s)}" for s in STATUS_ORDER)


def _list(items: list[str], css: str = "") -> str:
    if not items:
        return ""
    return f"<ul{f' class={css!r}' if css else ''}>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>"


def _table(title: str, rows: dict[str, Any]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_cell(v))}</td></tr>" for k, v in rows.items())
    return f'<table><tr><th colspan="2">{html.escape(title)}</th></tr>{cells}</table>'


def _flicker(path: str, output_dir: Path, scan: str) -> str:
    """Return the render sheet (rows: before, after) as one view that flicks to "after" under the pointer."""
    size = png_size(output_dir / path)
    if size is None:
        return ""
    width, height = (round(side * VIEW_MM) for side in size)
    return (
        f'<figure><div class="flicker" style="width:{width}px;height:{height // 2}px">'
        f'<img src="{html.escape(path)}" width="{width}" height="{height}" alt="render of {html.escape(scan)}">'
        "</div><figcaption>Before; point at it for after (face region in blocks)</figcaption></figure>"
    )


def _thresholds(metrics: dict[str, Any], limits: Limits = LIMITS) -> str:
    """Return the registration and face scores against the thresholds the verdict used."""
    rows = {
        "registration score": f"{_cell(metrics.get('registration_score'))} (WARN below {limits.registration_warn})",
        "face score before": f"{_cell(metrics.get('face_score_before'))} (a face counts from {limits.face_score})",
        "face score after": f"{_cell(metrics.get('face_score_after'))} (FAIL from {limits.face_score})",
    }
    return _table("scores and thresholds", rows)


def _scan_section(record: dict[str, Any], output_dir: Path) -> str:
    scan = record["Scan"]
    seconds = {k: f"{v:.1f}" for k, v in record.get("Seconds", {}).items()}
    flicker = _flicker(record.get("Figures", {}).get("Render", ""), output_dir, scan)
    figures = "".join(
        f'<figure><img src="{html.escape(path)}"{shown_width(output_dir / path)} '
        f'alt="{html.escape(kind)} of {html.escape(scan)}">'
        f"<figcaption>{html.escape(FIGURE_CAPTIONS.get(kind, kind))}</figcaption></figure>"
        for kind, path in record.get("Figures", {}).items()
    )
    return (
        f'<h2 id="{html.escape(scan)}">{html.escape(Path(scan).name)} {_badge(record["Status"])}</h2>\n'
        f"{WITHHELD_NOTE if withheld(record) else ''}"
        f"{_list(record.get('Reasons', []))}{_list(record.get('Notes', []), 'note')}\n"
        f'<div class="figures">{flicker}{figures}</div>\n'
        f'<div class="figures">{_thresholds(record["Metrics"])}{_table("metrics", record["Metrics"])}'
        f"{_table('method', record.get('Method', {}))}"
        f"{_table('seconds', seconds)}</div>\n"
    )


def _names(keys: Any) -> str:
    """Show a scrub record entry: a list of names, names with why their values were dropped, or a count.

    >>> _names({"EchoTime": "not a number"}), _names(["PatientName"]), _names(3)
    ('EchoTime (not a number)', 'PatientName', '3')
    """
    if isinstance(keys, dict):
        return ", ".join(f"{key} ({why})" for key, why in keys.items())
    return ", ".join(map(str, keys)) if isinstance(keys, list) else str(keys)


def _scrub_section(output_dir: Path, label: str) -> str:
    path = output_dir / f"sub-{label}" / f"sub-{label}_scrub.json"
    try:
        files = json.loads(path.read_text()).get("Files", {})
    except (OSError, ValueError, AttributeError):
        return '<h2>Metadata scrubbing</h2><p class="note">No scrub record found.</p>'
    rows = [
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(part)}</td>"
        f"<td>{html.escape(action)}</td><td>{html.escape(_names(keys))}</td></tr>"
        for name, parts in sorted(files.items())
        for part, record in parts.items()
        for action, keys in record.items()
    ]
    return (
        '<h2>Metadata scrubbing</h2>\n<p class="note">Names of keys, columns and header fields only; '
        "never their values.</p>\n<table><tr><th>file</th><th>part</th><th>action</th><th>names</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def png_size(figure: Path) -> tuple[int, int] | None:
    """Return a PNG's width and height in pixels from its header, or None."""
    try:
        with figure.open("rb") as file:
            head = file.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def shown_width(figure: Path) -> str:
    """Return the width attribute that shows ``figure`` at one CSS pixel per millimetre, or nothing.

    Figures are drawn with pixels of VIEW_MM (1.5 mm); shown pixel for pixel they would be two
    thirds of the size they had with 1 mm pixels. The width comes from the PNG's header.
    """
    size = png_size(figure)
    return "" if size is None else f' width="{round(size[0] * VIEW_MM)}"'


def subject_report(output_dir: Path, label: str) -> bytes:
    """Return the page ``sub-<label>.html``, made from the subject's QC and scrub records on disk."""
    records = read_qc_records(output_dir, label)
    body = f'<p><a href="{GROUP_REPORT}">Group report</a> · {len(records)} scan(s): {_counts(records)}</p>\n'
    body += "".join(_scan_section(record, output_dir) for record in records)
    body += _scrub_section(output_dir, label)
    return _page(f"sub-{label}: defacing QC", body)


def write_subject_report(output_dir: Path, label: str) -> Path:
    """Write ``OUTPUT_DIR/sub-<label>.html`` from the subject's QC and scrub records."""
    path = output_dir / f"sub-{label}.html"
    write_bytes_atomic(path, subject_report(output_dir, label))
    return path


def refresh_subject_report(output_dir: Path, label: str) -> bool:
    """Rewrite ``sub-<label>.html`` if it is missing or out of date; return whether it was written.

    Call it holding the subject's lock. A run killed before it wrote the report
    leaves a subject whose finished scans no report shows; this repairs it.
    """
    path = output_dir / f"sub-{label}.html"
    try:
        if path.stat().st_mtime_ns > _newest_change(output_dir / f"sub-{label}"):
            return False  # nothing of the subject changed since: skip the rendering (1,000-subject runs)
        current = path.read_bytes()
    except OSError:
        current = b""
    page = subject_report(output_dir, label)
    if current == page:
        return False
    write_bytes_atomic(path, page)
    return True


def _newest_change(folder: Path) -> int:
    """Return the latest modification time (ns) of ``folder`` and everything below it.

    A removed file changes its folder's time, so removals count as changes too.
    """
    newest = 0
    for entry in (folder, *folder.rglob("*")):
        try:
            newest = max(newest, entry.stat().st_mtime_ns)
        except OSError:
            continue
    return newest


def _reported_scans(output_dir: Path, records: list[dict[str, Any]]) -> frozenset[str]:
    """Return the scans whose subject report exists and holds their section (the group report links those)."""
    reported = set()
    for subject in sorted({record["Scan"].split("/")[0] for record in records}):
        try:
            page = (output_dir / f"{subject}.html").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        reported |= {r["Scan"] for r in records if f'id="{html.escape(r["Scan"])}"' in page}
    return frozenset(reported)


def _linked(target: str | None, content: str) -> str:
    return f'<a href="{html.escape(target)}">{content}</a>' if target else content


def privacy_section(privacy: dict[str, Any] | None) -> str:
    """Return the group report's section on the participants table's quasi-identifiers (empty without a report).

    A k below :data:`bidsdeface.privacy.WARN_BELOW_K` as written is a WARN, with the counts.

    >>> section = privacy_section({"QuasiIdentifiers": ["age", "sex"], "Before": {"K": 1, "UniqueRows": 3, "Rows": 9},
    ...                            "After": {"K": 1, "UniqueRows": 3, "Rows": 9}, "AgeLevel": "exact"})
    >>> "WARN" in section and "3 of 9 rows" in section
    True
    """
    if not privacy:
        return ""
    before, after = privacy.get("Before", {}), privacy.get("After", {})
    status = "WARN" if int(after.get("K", 0)) < WARN_BELOW_K else "PASS"
    rows = {
        "quasi-identifiers": ", ".join(privacy.get("QuasiIdentifiers", [])) or "none",
        "k as scrubbed": f"{before.get('K')} ({before.get('UniqueRows')} of {before.get('Rows')} rows unique)",
        "k as written": f"{after.get('K')} ({after.get('UniqueRows')} of {after.get('Rows')} rows unique)",
        "ages": privacy.get("AgeLevel", "exact"),
        "suppressed columns": ", ".join(privacy.get("SuppressedColumns", [])) or "none",
        "rows suppressed whole": privacy.get("SuppressedRows", 0),
        "information loss": privacy.get("InformationLoss", 0),
    }
    if "L" in after:
        rows["l-diversity"] = f"{before.get('L')} as scrubbed, {after.get('L')} as written"
    note = (
        f"<p>{_badge(status)} The participants table is {after.get('K')}-anonymous over its quasi-identifiers"
        + (f": below {WARN_BELOW_K}, some rows can single a person out. --k-anonymity generalises it." if status ==
           "WARN" else ".")
        + f' See <a href="{PRIVACY_REPORT}">{PRIVACY_REPORT}</a>.</p>\n'
    )  # fmt: skip
    return "<h2>Participants: quasi-identifiers</h2>\n" + note + _table("participants.tsv", rows)


REVIEW_ASSETS = ("report_assets", "review.js", "review.css")
TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("registration_score", "registration score"),
    ("face_signal_left", "face tissue left"),
    ("head_removed_fraction", "head removed"),
    ("face_score_after", "face score after"),
    ("seconds_total", "seconds"),
)


def _asset(name: str) -> str:
    return resources.files("bidsdeface").joinpath(REVIEW_ASSETS[0], name).read_text(encoding="utf-8")


def _scan_entry(record: dict[str, Any], reported: frozenset[str] | None, rating: Rating | None) -> dict[str, Any]:
    """Return what the group page shows of one scan (output names, metrics, figures, the review)."""
    scan, metrics, figures = record["Scan"], record.get("Metrics", {}), record.get("Figures", {})
    parts = scan.split("/")
    status, decided = final_status(record["Status"], rating)
    chosen = {key: metrics.get(key) for key, _ in TABLE_METRICS if isinstance(metrics.get(key), int | float)}
    chosen["seconds_total"] = round(sum(record.get("Seconds", {}).values()), 2)
    return {
        "scan": scan,
        "subject": parts[0].removeprefix("sub-"),
        "session": parts[1].removeprefix("ses-") if parts[1].startswith("ses-") else "",
        "modality": parts[-1].split(".")[0].split("_")[-1],
        "status": status,
        "automatic": record["Status"],
        "decided_by": decided,
        "reasons": list(record.get("Reasons", [])),
        "withheld": withheld(record),
        "render": figures.get("Render", ""),
        "mosaic": figures.get("Mosaic", ""),
        "link": f"{parts[0]}.html#{scan}" if reported is None or scan in reported else "",
        "metrics": chosen,
        "review": None if rating is None else {"rating": rating.rating, "reviewer": rating.reviewer,
                                               "comment": rating.comment, "time": rating.time},
    }  # fmt: skip


def _static_row(entry: dict[str, Any]) -> str:
    """Return a scan's table row as HTML (what the page shows before, or without, its script)."""
    scan, render, link = html.escape(entry["scan"]), entry["render"], entry["link"]
    thumbnail = f'<img src="{html.escape(render)}" alt="render of {scan}" width="160" loading="lazy">' if render else ""
    review = entry["review"]
    decided = f"{review['rating']} ({review['reviewer'] or 'unnamed'})" if review else ""
    cells = "".join(f'<td class="num">{html.escape(_cell(entry["metrics"].get(key)))}</td>' for key, _ in TABLE_METRICS)
    return (
        f"<tr><td>{_linked(link, thumbnail)}</td><td>{_linked(link, scan)}</td>"
        f"<td>{_badge(entry['status'])}{'<br>image withheld' if entry['withheld'] else ''}</td>"
        f"<td>{_list(entry['reasons'])}</td>{cells}"
        f"<td>{html.escape(decided)}</td></tr>"
    )


def _page_data(entries: list[dict[str, Any]], limits: Limits) -> str:
    """Return the page's data as JSON safe inside a script element (no ``<``, ``>`` or ``&`` left)."""
    plots = [
        {"key": "registration_score", "label": "registration score", "thresholds": [limits.registration_warn]},
        {"key": "face_signal_left", "label": "face tissue left",
         "thresholds": [limits.face_signal_left_warn, limits.face_signal_left_fail]},
        {"key": "head_removed_fraction", "label": "head removed fraction", "thresholds": [limits.head_removed_warn]},
        {"key": "seconds_total", "label": "seconds per scan", "thresholds": []},
    ]  # fmt: skip
    content = {"scans": entries, "columns": [key for key, _ in TABLE_METRICS], "plots": plots}
    text = json.dumps(content, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _options(identifier: str, label: str, values: tuple[str, ...] = ()) -> str:
    choices = "".join(f'<option value="{v}">{v}</option>' for v in values)
    return f'<label>{label} <select id="{identifier}"><option value="*">all</option>{choices}</select></label>'


GROUP_CONTROLS = (
    '<div class="controls">'
    + _options("f-status", "verdict", STATUS_ORDER)
    + _options("f-subject", "subject") + _options("f-session", "session") + _options("f-modality", "modality")
    + '<label>sort by <select id="sort"><option value="flagged">flagged first</option>'
    + "".join(f'<option value="{key}">{label}</option>' for key, label in TABLE_METRICS)
    + '</select></label><select id="direction"><option value="asc">ascending</option>'
    '<option value="desc">descending</option></select>'
    '<button id="start-review" type="button">review (r)</button>'
    '<button id="export" type="button">export ratings (qc_ratings.tsv)</button>'
    '<label>reviewer <input id="reviewer" size="12"></label> <span id="shown"></span></div>'
)  # fmt: skip
REVIEW_PANEL = (
    '<section id="review" hidden><p><button id="r-close" type="button">close (Esc)</button> '
    '<span id="r-position"></span> <strong id="r-name"></strong> <span id="r-status"></span> '
    '<em id="r-rating"></em> <a id="r-link" href="#">subject report</a></p><ul id="r-reasons"></ul>'
    '<p class="keys">Keys: j or right arrow next, k or left arrow previous (flagged scans first); '
    "p pass, f fail, u unsure; c comment; Esc close.</p>"
    '<textarea id="r-comment" placeholder="comment"></textarea>'
    '<div class="figures"><img id="r-render" src="" alt="render (face obscured)">'
    '<img id="r-mosaic" src="" alt="mosaic (face obscured)"></div></section>'
)


def group_report(
    records: list[dict[str, Any]],
    reported: frozenset[str] | None = None,
    privacy: dict[str, Any] | None = None,
    ratings: dict[str, Rating] | None = None,
    limits: Limits = LIMITS,
) -> bytes:
    """Return the group report: one offline page that filters, sorts, plots and reviews every scan.

    The data are embedded as JSON and shown by the bundled script with ``textContent`` only;
    thumbnails load lazily. A scan links to its subject report only when it is in ``reported``
    (all, if None). ``ratings`` are reviewers' decisions (:mod:`bidsdeface.ratings`); ``privacy`` is
    the content of ``privacy_report.json`` (:func:`privacy_section`).
    """
    ratings = ratings or {}
    entries = [_scan_entry(record, reported, ratings.get(record["Scan"])) for record in records]
    pending = sum(1 for entry in entries if not entry["link"])
    reviewed = sum(1 for entry in entries if entry["review"])
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in TABLE_METRICS)
    body = (
        f"<p>{len(records)} scan(s): {_counts(records)} (automatic verdicts); {reviewed} reviewed. "
        f'The full table is <a href="{QC_TABLE}">{QC_TABLE}</a>. Every figure shows the face region in coarse '
        "blocks.</p>\n"
        + (f'<p class="note">{pending} scan(s) are not linked yet: their subject report is written by the next '
           "run on that subject or by the group level.</p>\n" if pending else "")
        + GROUP_CONTROLS + '<div id="plots"></div>'
        + f"<table><thead><tr><th>render</th><th>scan</th><th>QC</th><th>reasons</th>{head}<th>review</th></tr>"
        + '</thead><tbody id="rows">' + "".join(_static_row(entry) for entry in entries) + "</tbody></table>"
        + REVIEW_PANEL
        + f'<script type="application/json" id="qc-data">{_page_data(entries, limits)}</script>'
        + f"<style>{_asset('review.css')}</style><script>{_asset('review.js')}</script>"
    )  # fmt: skip
    return _page("bidsdeface: group QC", body + privacy_section(privacy))


def write_group_files(output_dir: Path) -> QcSummary:
    """Rebuild ``qc.tsv`` and ``group_report.html`` from every QC record (and the reviewers' ratings) in the output."""
    records = read_qc_records(output_dir)
    ratings = stored_ratings(output_dir)
    table, report = output_dir / QC_TABLE, output_dir / GROUP_REPORT
    write_bytes_atomic(table, qc_table(records, ratings).encode())
    privacy = _read_privacy_report(output_dir / PRIVACY_REPORT)
    write_bytes_atomic(report, group_report(records, _reported_scans(output_dir, records), privacy, ratings))
    return QcSummary(tuple(r["Status"] for r in records), table, report)


def _read_privacy_report(path: Path) -> dict[str, Any] | None:
    """Return ``privacy_report.json``'s content, or None when there is none (or it is unreadable)."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


DICOM_REPORT = "report.html"


def _dicom_series_section(record: dict[str, Any], folder: str, output_dir: Path) -> str:
    name = record["Series"].replace("/", "_")
    figures = "".join(
        f'<figure><img src="{html.escape(path)}"{shown_width(output_dir / path)} alt="{kind} of {html.escape(name)}">'
        f"<figcaption>{html.escape(FIGURE_CAPTIONS[kind])}</figcaption></figure>"
        for kind, path in (("Render", f"{folder}/{name}_render.png"), ("Mosaic", f"{folder}/{name}_mosaic.png"))
        if (output_dir / path).is_file()
    )
    checks = {
        check: ("PASS" if r["passed"] else "FAIL") + f": {r['detail']}"
        for check, r in (record["SelfCheck"] or {}).items()
    }
    seconds = {k: f"{v:.1f}" for k, v in record.get("Seconds", {}).items()}
    return (
        f'<h2 id="{html.escape(name)}">{html.escape(record["Series"])} {_badge(record["Status"])} '
        f"{html.escape(record['Decision'])}</h2>\n{_list(record.get('Reasons', []))}\n"
        f'<div class="figures">{figures}</div>\n'
        f'<div class="figures">{_table("self-check", checks)}{_table("header actions", record["HeaderActions"])}'
        f"{_table('removed: no safe cleaning', record['RemovedNotCleanable'])}"
        f"{_table('metrics', record['Metrics'])}{_table('seconds', seconds)}</div>\n"
    )


def write_dicom_report(output_dir: Path, qc_folder: str, table: Any) -> Path:
    """Write the DICOM export's ``report.html``: every series found, then each exported or withheld one's QC."""
    records = []
    for path in sorted((output_dir / qc_folder).glob("*_qc.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    records.sort(key=lambda r: (STATUS_ORDER.index(r["Status"]), r["Series"]))
    header = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    body = (
        f"<p>{len(table.rows)} series found in this run; {len(records)} QC record(s): {_counts(records)}. "
        "Failed and flagged series come first.</p>\n"
        f"<table><tr>{header}</tr>{rows}</table>\n"
        + "".join(_dicom_series_section(record, qc_folder, output_dir) for record in records)
    )
    path = output_dir / DICOM_REPORT
    write_bytes_atomic(path, _page("bidsdeface-dicom: export report", body))
    return path
