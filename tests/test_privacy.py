"""k-anonymity and l-diversity of participants tables: measured, and enforced by banding and suppression.

Every enforced table is checked independently: it is written as TSV, read back with pandas,
grouped by its quasi-identifiers and recounted.
"""

from __future__ import annotations

import io

import pandas as pd
import pytest

from bidsdeface.files import MISSING, Table
from bidsdeface.privacy import AGE_LEVELS, PrivacyError, banded_age, measure, plan_privacy


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Table:
    return Table(("participant_id", *columns), tuple((f"sub-{i:02d}", *row) for i, row in enumerate(rows, 1)))


def _recount(table: Table, quasi: list[str], sensitive: str | None = None) -> tuple[int, int | None]:
    """Smallest class and smallest sensitive spread, by pandas, leaving out rows whose quasi-identifiers are all n/a."""
    frame = pd.read_csv(io.StringIO(table.to_text()), sep="\t", dtype=str, keep_default_na=False)
    frame = frame[~(frame[quasi] == MISSING).all(axis=1)]
    groups = frame.groupby(quasi)
    spread = int(groups[sensitive].nunique().min()) if sensitive else None
    return int(groups.size().min()), spread


def _ages_sex_site(seed_rows: int = 40) -> Table:
    """Forty people at three sites: most ages close together, a few outliers that are unique."""
    rows = []
    for i in range(seed_rows):
        age = 30 + (i * 7) % 9  # 30-38
        rows.append((str(age), "F" if i % 2 else "M", ("alpha", "beta")[i % 2]))
    rows += [("93", "F", "gamma"), ("17", "M", "alpha")]  # unique: an old woman at a small site, a teenager
    return _table(("age", "sex", "site"), rows)


def test_measuring_finds_the_classes_and_unique_rows() -> None:
    table = _ages_sex_site()
    quasi = ["age", "sex", "site"]
    measured = measure(table, quasi)
    assert measured.k == 1 and measured.unique_rows >= 2
    assert measured.k == _recount(table, quasi)[0]
    assert measure(table, []).classes == 0, "no quasi-identifier: no class"


def test_k_anonymity_by_age_bands_sex_and_site() -> None:
    table = _ages_sex_site()
    quasi = ["age", "sex", "site"]
    plan = plan_privacy(table, quasi, k=5)
    written = plan.apply(table)
    assert _recount(written, quasi)[0] >= 5
    assert plan.after.k >= 5 and plan.before.k == 1
    assert len(plan.suppressed_rows) <= 2, "within the 5% budget of 42 rows"
    assert plan.age_level > 0 and plan.loss > 0


def test_a_table_that_needs_ten_year_bands() -> None:
    # ages spread over whole decades: 5-year bands still leave classes of 4, 10-year bands make 8
    rows = [(str(20 + decade * 10 + offset), "F") for decade in range(5) for offset in (0, 1, 2, 3, 5, 6, 7, 8)]
    table = _table(("age", "sex"), rows)
    plan = plan_privacy(table, ["age", "sex"], k=8, max_suppressed=0.0)
    assert AGE_LEVELS[plan.age_level] == "10-year bands"
    written = plan.apply(table)
    assert _recount(written, ["age", "sex"])[0] >= 8
    assert sorted({row[1] for row in written.rows}) == ["20", "30", "40", "50", "60"]


def test_an_unreachable_k_is_a_clear_error() -> None:
    table = _table(("age", "sex"), [("30", "F"), ("31", "M"), ("40", "F")])
    with pytest.raises(PrivacyError, match=r"k=5 cannot be reached.*at most 0 of 3 rows") as error:
        plan_privacy(table, ["age", "sex"], k=5)
    assert error.value.exit_code == 65 and "\n" not in str(error.value)


def test_l_diversity_of_a_declared_diagnosis_column() -> None:
    rows = [(str(30 + i % 4), "F" if i % 2 else "M", ("AD", "MCI", "HC")[i % 3]) for i in range(36)]
    rows += [(str(50 + i), "F", "AD") for i in range(6)]  # a class of one diagnosis only
    table = _table(("age", "sex", "diagnosis"), rows)
    quasi = ["age", "sex"]
    plan = plan_privacy(table, quasi, sensitive="diagnosis", k=3, l=2, max_suppressed=0.2)
    written = plan.apply(table)
    smallest, spread = _recount(written, quasi, "diagnosis")
    assert smallest >= 3 and spread >= 2
    assert plan.before.diversity == 1 and plan.after.diversity >= 2


def test_the_same_table_gives_the_same_plan_and_ties_go_to_less_banding() -> None:
    table = _ages_sex_site()
    plans = {plan_privacy(table, ["age", "sex", "site"], k=5) for _ in range(3)}
    assert len(plans) == 1
    unchanged = plan_privacy(_table(("age",), [("30",)] * 6), ["age"], k=5)
    assert unchanged.age_level == 0 and unchanged.loss == 0.0


def test_ages_are_written_as_band_lower_bounds() -> None:
    assert [banded_age("44.9", level) for level in range(4)] == ["44.9", "40", "40", "40"]
    assert banded_age("12", 3) == "0" and banded_age("85", 3) == "80" and banded_age(MISSING, 3) == MISSING
