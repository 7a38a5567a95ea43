"""The frozen run configurations refuse values no run could use, and never show the date-shift key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bidsdeface.config import Config, ConvertConfig

IN, OUT = Path("/in"), Path("/out")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"method": "melt"}, "method must be one of"),
        ({"skull_strip_method": "hdbet"}, "skull_strip_method must be one of"),
        ({"nprocs": 0}, "nprocs and omp_nthreads must be >= 1"),
        ({"omp_nthreads": 0}, "nprocs and omp_nthreads must be >= 1"),
        ({"date_shift_key": ""}, "date_shift_key must not be empty"),
    ],
)
def test_config_refuses(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Config(IN, OUT, **fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"participant_label": "01", "pseudonymize": True}, "pseudonymise when defacing"),
        ({"participant_label": "01", "date_shift_key": ""}, "date_shift_key must not be empty"),
        ({}, "a participant label or a mapping is required"),
    ],
)
def test_convert_config_refuses(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ConvertConfig(IN, OUT, **fields)


def test_frozen_and_the_key_is_not_in_repr() -> None:
    config = Config(IN, OUT, date_shift_key="s3cr3t")
    convert = ConvertConfig(IN, OUT, participant_label="01", date_shift_key="s3cr3t")
    assert "s3cr3t" not in repr(config) and "s3cr3t" not in repr(convert)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.nprocs = 4  # type: ignore[misc]
    assert ConvertConfig(IN, OUT, mapping=Path("/m.tsv")).participant_label == ""
