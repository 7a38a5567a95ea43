"""Reviewers' ratings: read, screened, merged into the output, and never able to un-fail a scan."""

from __future__ import annotations

from pathlib import Path

import pytest

from bidsdeface.cli import main
from bidsdeface.errors import EXIT_USAGE, UsageError
from bidsdeface.ratings import RATINGS_FILE, Rating, final_status, fold_ratings, read_ratings, stored_ratings

HEADER = "scan\trating\treviewer\tcomment\ttime\n"


def ratings_file(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "exported.tsv"
    path.write_text(HEADER + "".join(row + "\n" for row in rows))
    return path


def test_ratings_are_read_screened_and_the_newest_of_a_scan_wins(tmp_path: Path) -> None:
    path = ratings_file(
        tmp_path,
        "sub-1/anat/a.nii.gz\tpass\tana\tfine\t2026-12-01T10:00:00Z",
        "sub-1/anat/a.nii.gz\tFAIL\tbo\tnose left\t2026-12-01T11:00:00Z",
        "sub-2/anat/b.nii.gz\tmaybe\tana\t\t2026-12-01T10:00:00Z",
        "sub-3/anat/c.nii.gz\tunsure\tana\tcall Dr. Jones on +44 20 7946 0958\t2026-12-01T10:00:00Z",
    )
    ratings, refused = read_ratings(path)
    assert refused == 1 and sorted(ratings) == ["sub-1/anat/a.nii.gz", "sub-3/anat/c.nii.gz"]
    assert ratings["sub-1/anat/a.nii.gz"] == Rating("fail", "bo", "nose left", "2026-12-01T11:00:00Z")
    assert ratings["sub-3/anat/c.nii.gz"].comment.startswith("(comment withheld")


def test_a_file_without_the_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.tsv").write_text("participant_id\tage\nsub-1\t40\n")
    with pytest.raises(UsageError, match="not a ratings file"):
        read_ratings(tmp_path / "x.tsv")


def test_folding_keeps_known_scans_and_counts_the_others(tmp_path: Path) -> None:
    incoming = {"sub-1/a": Rating("fail", "ana", "", "t2"), "sub-9/z": Rating("pass", "ana", "", "t2")}
    assert fold_ratings(tmp_path, incoming, {"sub-1/a"}) == (1, 1)
    assert fold_ratings(tmp_path, {"sub-1/a": Rating("pass", "bo", "", "t1")}, {"sub-1/a"}) == (1, 0)
    assert stored_ratings(tmp_path) == {"sub-1/a": Rating("fail", "ana", "", "t2")}  # the older one lost
    assert "sub-9" not in (tmp_path / RATINGS_FILE).read_text()


def test_a_human_fail_overrides_a_pass_but_a_pass_never_unfails() -> None:
    assert final_status("PASS", Rating("fail", "ana", "", "")) == ("FAIL", "ana")
    assert final_status("FAIL", Rating("pass", "ana", "", "")) == ("FAIL", "automatic")


def test_ratings_only_at_the_group_level(tmp_path: Path) -> None:
    code = main([str(tmp_path), str(tmp_path / "out"), "participant", "--ratings", str(tmp_path / "r.tsv")])
    assert code == EXIT_USAGE
