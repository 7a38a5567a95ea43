"""BIDS file names and labels: entities, their order, and the labels BIDS allows."""

from __future__ import annotations

import re

from .errors import UsageError
from .standards import entity_order

# The BIDS version every dataset written says it follows (BIDSVersion), raw or derivative.
BIDS_VERSION = "1.10.0"


def split_bids_name(name: str) -> tuple[list[tuple[str, str]], str, str]:
    """Split a BIDS file name into entities, suffix and extension.

    >>> split_bids_name("sub-01_ses-A_run-2_T1w.nii.gz")
    ([('sub', '01'), ('ses', 'A'), ('run', '2')], 'T1w', '.nii.gz')
    """
    stem, dot, extension = name.partition(".")
    *pairs, suffix = stem.split("_")
    entities = [tuple(pair.split("-", 1)) for pair in pairs]
    if not entities or entities[0][0] != "sub" or any(len(entity) != 2 for entity in entities):
        raise ValueError(f"{name}: not a BIDS file name")
    return [(key, value) for key, value in entities], suffix, dot + extension


def entity_rank(key: str) -> int:
    """Position of entity ``key`` in BIDS file names (unknown entities last)."""
    order = entity_order()
    return order.index(key) if key in order else len(order)


def join_bids_name(entities: list[tuple[str, str]], suffix: str, extension: str) -> str:
    """Inverse of :func:`split_bids_name`.

    >>> join_bids_name([("sub", "01")], "T1w", ".json")
    'sub-01_T1w.json'
    """
    return "_".join([f"{key}-{value}" for key, value in entities] + [suffix]) + extension


LABEL = re.compile(r"[A-Za-z0-9]+")


ENTITY_MEANING = {"sub": "participant", "ses": "session"}


def clean_label(label: str, entity: str) -> str:
    """Return a participant (``entity`` "sub") or session ("ses") label without its prefix.

    Raises UsageError if BIDS does not allow the label.

    >>> clean_label("sub-01", "sub")
    '01'
    >>> clean_label(" 01", "sub")
    '01'
    >>> clean_label("0 1", "sub")
    Traceback (most recent call last):
    bidsdeface.errors.UsageError: participant label '0 1' must be letters and digits only
    """
    cleaned = label.strip().removeprefix(f"{entity}-")
    if not LABEL.fullmatch(cleaned):
        raise UsageError(f"{ENTITY_MEANING[entity]} label {label!r} must be letters and digits only")
    return cleaned
