"""Quasi-identifiers: measure, and on request enforce, k-anonymity and l-diversity of the participants table.

Age, sex, handedness, site and group together can single a person out. Rows that share
every quasi-identifier value form an equivalence class; a table is k-anonymous when every
class holds at least k rows, and l-diverse when every class holds at least l different
values of a sensitive column.

The plan (how ages are banded, which columns and rows are suppressed) is made from the
whole input table as it leaves (scrubbed), so every run on the same input makes the same
one: participant runs in parallel, resumed runs and the group level. Each run applies it
to the rows it writes. Ages follow a hierarchy (:data:`AGE_LEVELS`) and are written as
the band's lower bound, a number as BIDS wants; other columns are kept or suppressed to
``n/a``. Rows still in too small a class are suppressed whole (every quasi-identifier
``n/a``): they carry none, so they belong to no class.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import EXIT_DATA, BidsDefaceError
from .files import MISSING, Table

AGE_COLUMN = "age"
ID_COLUMN = "participant_id"
AGE_LEVELS: tuple[str, ...] = ("exact", "5-year bands", "10-year bands", "10-year bands, under 20 and 80+ coded")
BOTTOM_CODED_BELOW = 20
TOP_CODED_FROM = 80
# Below this k the group report flags the participants table (WARN).
WARN_BELOW_K = 5
PRIVACY_REPORT = "privacy_report.json"


class PrivacyError(BidsDefaceError):
    """The requested k-anonymity or l-diversity cannot be reached within the suppression budget."""

    exit_code = EXIT_DATA


@dataclass(frozen=True)
class Measure:
    """The privacy of a table over its quasi-identifiers.

    Attributes
    ----------
    rows : int
        Rows measured: rows whose quasi-identifiers are all ``n/a`` carry none and are not.
    classes : int
        Equivalence classes (rows sharing every quasi-identifier value).
    k : int
        Size of the smallest class (0 when no row is measured).
    unique_rows : int
        Rows alone in their class.
    diversity : int or None
        Fewest distinct sensitive values in a class (the l of l-diversity), with a sensitive column.
    """

    rows: int
    classes: int
    k: int
    unique_rows: int
    diversity: int | None

    def as_record(self) -> dict[str, Any]:
        """Return the measure as JSON-ready content."""
        record = {"Rows": self.rows, "Classes": self.classes, "K": self.k, "UniqueRows": self.unique_rows}
        return record | ({} if self.diversity is None else {"L": self.diversity})


@dataclass(frozen=True)
class PrivacyPlan:
    """How the participants table is generalised, and what that achieves.

    Attributes
    ----------
    quasi_identifiers : tuple of str
        The columns measured and generalised.
    sensitive : str or None
        The sensitive column of l-diversity.
    age_level : int
        Index in :data:`AGE_LEVELS`.
    suppressed_columns : tuple of str
        Quasi-identifier columns written as ``n/a``.
    suppressed_rows : frozenset of str
        Input ``participant_id`` values of the rows suppressed whole.
    loss : float
        Information lost, 0-1 (:func:`information_loss`).
    before, after : Measure
        The whole table's privacy as scrubbed, and as generalised.
    """

    quasi_identifiers: tuple[str, ...]
    sensitive: str | None
    age_level: int
    suppressed_columns: tuple[str, ...]
    suppressed_rows: frozenset[str]
    loss: float
    before: Measure
    after: Measure

    def apply(self, table: Table, renamed: Callable[[str], str | None] = str) -> Table:
        """Return ``table`` (rows of the planned table, or some of them) generalised as planned.

        ``renamed`` gives a suppressed row's ``participant_id`` as ``table`` holds it (pseudonymised).
        """
        rows = frozenset(filter(None, (renamed(row) for row in self.suppressed_rows)))
        return generalised(table, self.quasi_identifiers, self.age_level, self.suppressed_columns, rows)

    def age_description(self) -> str | None:
        """Return how written ages read, when they are banded (for ``participants.json``)."""
        if AGE_COLUMN not in self.quasi_identifiers or AGE_COLUMN in self.suppressed_columns or not self.age_level:
            return None
        width = 5 if self.age_level == 1 else 10
        coded = (
            f"; 0 stands for every age under {BOTTOM_CODED_BELOW}, {TOP_CODED_FROM} for {TOP_CODED_FROM} and over"
            if self.age_level == 3
            else ""
        )
        return (
            f"Age in years at the first session, generalised for k-anonymity: the lower bound of a {width}-year band "
            f"(40 means {40}-{40 + width - 1}){coded}"
        )

    def as_record(self) -> dict[str, Any]:
        """Return the plan as JSON-ready content (column names and counts, no values)."""
        return {
            "QuasiIdentifiers": list(self.quasi_identifiers),
            **({"SensitiveColumn": self.sensitive} if self.sensitive else {}),
            "Before": self.before.as_record(),
            "After": self.after.as_record(),
            "AgeLevel": AGE_LEVELS[self.age_level],
            "SuppressedColumns": list(self.suppressed_columns),
            "SuppressedRows": len(self.suppressed_rows),
            "InformationLoss": self.loss,
        }

    def session_age(self, subject: str, age: str) -> str:
        """Return a session-level age of input subject ``subject`` (``sub-`` prefix) banded like the subject's row."""
        if AGE_COLUMN not in self.quasi_identifiers:
            return age
        if subject in self.suppressed_rows or AGE_COLUMN in self.suppressed_columns:
            return MISSING
        return banded_age(age, self.age_level)


def banded_age(text: str, level: int) -> str:
    """Return an age at a level of :data:`AGE_LEVELS`, written as the band's lower bound.

    >>> [banded_age("47.5", level) for level in range(4)], banded_age("15", 3), banded_age("89", 3)
    (['47.5', '45', '40', '40'], '0', '80')
    >>> banded_age("n/a", 2), banded_age("old", 1)
    ('n/a', 'n/a')
    """
    if level == 0 or text == MISSING:
        return text
    try:
        age = float(text)
    except ValueError:
        return MISSING
    if level == 3 and age < BOTTOM_CODED_BELOW:
        return "0"
    if level == 3 and age >= TOP_CODED_FROM:
        return str(TOP_CODED_FROM)
    width = 5 if level == 1 else 10
    return str(math.floor(age / width) * width)


def _classes(table: Table, quasi: Sequence[str]) -> dict[tuple[str, ...], list[int]]:
    """Row indices by quasi-identifier values (rows whose quasi-identifiers are all ``n/a`` left out)."""
    index = [table.columns.index(name) for name in quasi]
    classes: dict[tuple[str, ...], list[int]] = {}
    for number, row in enumerate(table.rows):
        values = tuple(row[i] for i in index)
        if values and any(value != MISSING for value in values):
            classes.setdefault(values, []).append(number)
    return classes


def measure(table: Table, quasi: Sequence[str], sensitive: str | None = None) -> Measure:
    """Return the equivalence-class statistics of ``table`` over the ``quasi`` columns.

    >>> table = Table(("participant_id", "age", "sex"),
    ...               (("sub-1", "30", "F"), ("sub-2", "30", "F"), ("sub-3", "41", "M"), ("sub-4", "n/a", "n/a")))
    >>> measure(table, ("age", "sex"))
    Measure(rows=3, classes=2, k=1, unique_rows=1, diversity=None)
    """
    classes = _classes(table, quasi)
    sizes = [len(members) for members in classes.values()]
    diversity = None
    if sensitive is not None:
        column = table.columns.index(sensitive)
        spreads = [len({table.rows[i][column] for i in members}) for members in classes.values()]
        diversity = min(spreads, default=0)
    return Measure(sum(sizes), len(classes), min(sizes, default=0), sizes.count(1), diversity)


def generalised(
    table: Table, quasi: Sequence[str], age_level: int, columns: Sequence[str], rows: frozenset[str]
) -> Table:
    """Return ``table`` with ages banded, ``columns`` suppressed, and every quasi-identifier of ``rows`` ``n/a``.

    ``rows`` holds ``participant_id`` values of the input.
    """
    out = []
    for row in table.rows:
        cells = dict(zip(table.columns, row, strict=True))
        suppressed_row = cells.get(ID_COLUMN) in rows
        for name in quasi:
            if name in columns or suppressed_row:
                cells[name] = MISSING
            elif name == AGE_COLUMN:
                cells[name] = banded_age(cells[name], age_level)
        out.append(tuple(cells[name] for name in table.columns))
    return Table(table.columns, tuple(out))


def information_loss(quasi: Sequence[str], age_level: int, columns: Sequence[str], rows: int, total: int) -> float:
    """Return the share of quasi-identifier information a generalisation gives up (0 none, 1 all).

    Each quasi-identifier counts 1: a suppressed column loses all of it, banded ages lose
    ``level / 3`` of theirs; each suppressed row loses all of its own.

    >>> information_loss(("age", "sex"), 2, (), 0, 10), information_loss(("age", "sex"), 0, ("sex",), 1, 10)
    (0.3333, 0.55)
    """
    kept = [name for name in quasi if name not in columns]
    column_loss = len(columns) + (age_level / (len(AGE_LEVELS) - 1) if AGE_COLUMN in kept else 0.0)
    per_row = column_loss / len(quasi)
    return round(per_row + (1 - per_row) * rows / total, 4) if total else 0.0


def _failing_rows(table: Table, quasi: Sequence[str], sensitive: str | None, k: int, l: int) -> list[int]:  # noqa: E741
    """Row indices in classes smaller than ``k`` or with fewer than ``l`` sensitive values."""
    column = table.columns.index(sensitive) if sensitive is not None else None
    failing = []
    for members in _classes(table, quasi).values():
        spread = len({table.rows[i][column] for i in members}) if column is not None else l
        if len(members) < k or spread < l:
            failing += members
    return failing


def plan_privacy(
    table: Table,
    quasi: Sequence[str],
    sensitive: str | None = None,
    k: int | None = None,
    l: int | None = None,  # noqa: E741
    max_suppressed: float = 0.05,
) -> PrivacyPlan:
    """Return the generalisation of ``table`` with the least information loss that reaches ``k`` and ``l``.

    Without ``k`` and ``l`` the table is only measured. Otherwise every age level and every
    set of suppressed columns is tried (the tables are small); rows still failing are
    suppressed whole, up to ``max_suppressed`` of the rows. Ties go to the lower age level,
    then to fewer and earlier suppressed columns, so the same table gives the same plan.

    Raises
    ------
    PrivacyError
        No generalisation reaches ``k`` and ``l`` within the budget.
    """
    before = measure(table, quasi, sensitive)
    if k is None and l is None:
        return PrivacyPlan(tuple(quasi), sensitive, 0, (), frozenset(), 0.0, before, before)
    budget = math.floor(max_suppressed * len(table.rows))
    ids = [dict(zip(table.columns, row, strict=True)).get(ID_COLUMN, "") for row in table.rows]
    best: tuple[Any, ...] | None = None
    levels = range(len(AGE_LEVELS)) if AGE_COLUMN in quasi else range(1)
    others = [name for name in quasi if name != AGE_COLUMN]
    for level, count in itertools.product(levels, range(len(others) + 1)):
        for columns in itertools.combinations(others, count):
            trial = generalised(table, quasi, level, columns, frozenset())
            failing = _failing_rows(trial, quasi, sensitive, k or 1, l or 1)
            if len(failing) <= budget:
                loss = information_loss(quasi, level, columns, len(failing), len(table.rows))
                candidate = (loss, level, count, columns, frozenset(ids[i] for i in failing))
                best = candidate if best is None or candidate[:4] < best[:4] else best
    if best is None:
        wanted = " and ".join(f"{name}={value}" for name, value in (("k", k), ("l", l)) if value is not None)
        raise PrivacyError(
            f"participants.tsv: {wanted} cannot be reached by banding ages and suppressing columns with at most "
            f"{budget} of {len(table.rows)} rows suppressed (--max-suppressed-rows); no tables were written"
        )
    loss, level, _, columns, rows = best
    after = measure(generalised(table, quasi, level, columns, rows), quasi, sensitive)
    return PrivacyPlan(tuple(quasi), sensitive, level, tuple(columns), rows, loss, before, after)
