"""Reviewers' ratings of the defaced scans: read an exported ``qc_ratings.tsv``, keep it, and decide.

The group report's review mode exports ``scan, rating, reviewer, comment, time``
(rating ``pass``, ``fail`` or ``unsure``). ``bidsdeface BIDS OUT group --ratings FILE``
folds such a file into ``OUTPUT_DIR/qc_ratings.tsv`` (the newest rating of a scan wins), from
which ``qc.tsv`` and the reports are rebuilt. A human fail overrides an automatic pass; a human
pass never un-fails a scan whose image was withheld. Comments are screened like metadata: one
that looks like it names a person, a record number, a date or a contact is withheld. Scans the
output does not hold are counted, never named.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .files import MISSING, Table, write_bytes_atomic
from .scrub import screen_text

log = logging.getLogger(__name__)

RATINGS_FILE = "qc_ratings.tsv"
RATINGS_COLUMNS: tuple[str, ...] = ("scan", "rating", "reviewer", "comment", "time")
RATINGS: tuple[str, ...] = ("pass", "fail", "unsure")
MAX_FIELD_CHARS = 500
AUTOMATIC = "automatic"


@dataclass(frozen=True)
class Rating:
    """One reviewer's decision on one scan."""

    rating: str
    reviewer: str
    comment: str
    time: str

    def cells(self, scan: str) -> tuple[str, ...]:
        """Return the ratings file's row."""
        return tuple(cell or MISSING for cell in (scan, self.rating, self.reviewer, self.comment, self.time))


def _clean(text: str) -> str:
    return " ".join(text.split())[:MAX_FIELD_CHARS]


def screened_comment(comment: str) -> str:
    """Return the comment, or a note saying why it was withheld.

    >>> screened_comment("ear clipped, fine"), screened_comment("looks like Dr. Jones")
    ('ear clipped, fine', '(comment withheld: it looked like it held a person name)')
    """
    kinds = screen_text(comment)
    return f"(comment withheld: it looked like it held a {', '.join(kinds)})" if kinds else comment


def read_ratings(path: Path) -> tuple[dict[str, Rating], int]:
    """Read a ratings TSV; return the ratings by scan and the number of rows refused (bad rating).

    Raises
    ------
    UsageError
        The file is unreadable or lacks the columns.
    """
    try:
        table = Table.parse(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the ratings ({type(exc).__name__})") from exc
    missing = [column for column in RATINGS_COLUMNS if column not in table.columns]
    if missing:
        raise UsageError(f"{path}: not a ratings file: the column(s) {', '.join(missing)} are missing")
    ratings: dict[str, Rating] = {}
    refused = 0
    for row in table.rows:
        cells = {column: ("" if value == MISSING else value) for column, value in zip(table.columns, row, strict=True)}
        if cells["rating"].strip().lower() not in RATINGS:
            refused += 1
            continue
        rating = Rating(cells["rating"].strip().lower(), _clean(cells["reviewer"]),
                        screened_comment(_clean(cells["comment"])), _clean(cells["time"]))  # fmt: skip
        previous = ratings.get(cells["scan"])
        if previous is None or rating.time >= previous.time:
            ratings[cells["scan"]] = rating
    return ratings, refused


def stored_ratings(output_dir: Path) -> dict[str, Rating]:
    """Return the ratings kept in the output (none when there is no ratings file, or it is unreadable)."""
    path = output_dir / RATINGS_FILE
    if not path.is_file():
        return {}
    try:
        return read_ratings(path)[0]
    except UsageError:
        log.warning("%s: unreadable; the reports show no ratings", RATINGS_FILE)
        return {}


def fold_ratings(output_dir: Path, incoming: dict[str, Rating], scans: set[str]) -> tuple[int, int]:
    """Merge ratings of scans the output holds into its ratings file (newest wins); return (kept, unknown)."""
    known = {scan: rating for scan, rating in incoming.items() if scan in scans}
    merged = stored_ratings(output_dir)
    for scan, rating in known.items():
        if scan not in merged or rating.time >= merged[scan].time:
            merged[scan] = rating
    table = Table(RATINGS_COLUMNS, tuple(merged[scan].cells(scan) for scan in sorted(merged)))
    write_bytes_atomic(output_dir / RATINGS_FILE, table.to_text().encode())
    return len(known), len(incoming) - len(known)


def final_status(automatic: str, rating: Rating | None) -> tuple[str, str]:
    """Return the scan's status after review, and who decided it.

    >>> final_status("PASS", Rating("fail", "ana", "", "")), final_status("FAIL", Rating("pass", "ana", "", ""))
    (('FAIL', 'ana'), ('FAIL', 'automatic'))
    >>> final_status("WARN", None), final_status("PASS", Rating("unsure", "", "", ""))
    (('WARN', 'automatic'), ('PASS', 'automatic'))
    """
    if rating is not None and rating.rating == "fail":
        return "FAIL", rating.reviewer or "a reviewer"
    return automatic, AUTOMATIC
