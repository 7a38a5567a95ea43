"""BIDS file names and labels."""

from __future__ import annotations

import pytest

from bidsdeface.bidsnames import clean_label, entity_rank, join_bids_name, split_bids_name
from bidsdeface.errors import EXIT_USAGE, UsageError


def test_names_split_and_join() -> None:
    name = "sub-01_ses-A_acq-fast_run-2_T1w.nii.gz"
    assert join_bids_name(*split_bids_name(name)) == name
    for bad in ("notbids.nii.gz", "ses-A_sub-01_T1w.nii.gz", "sub-01_x_T1w.nii.gz"):
        with pytest.raises(ValueError):
            split_bids_name(bad)


def test_entities_ranked_as_the_schema_orders_them() -> None:
    assert entity_rank("sub") < entity_rank("ses") < entity_rank("acq") < entity_rank("run") < entity_rank("desc")
    assert entity_rank("unknown") > entity_rank("desc")


@pytest.mark.parametrize("label", ["0 1", "01_a", "a-b", "", "sub-"])
def test_labels_bids_refuses_are_usage_errors(label: str) -> None:
    with pytest.raises(UsageError) as refused:
        clean_label(label, "sub")
    assert refused.value.exit_code == EXIT_USAGE


def test_labels_lose_their_prefix() -> None:
    assert clean_label("sub-01", "sub") == "01"
    assert clean_label(" ses-A1 ", "ses") == "A1"
