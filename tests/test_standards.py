"""The standards as data: BIDS schema definitions and the DICOM dictionary decide names, types and vocabularies."""

from __future__ import annotations

import pytest

from bidsdeface import policy
from bidsdeface.standards import (
    column_description,
    column_levels,
    dicom_definition,
    fits_definition,
    is_standard_name,
    is_technical_word,
    metadata_definitions,
    standard_fit,
)


def test_every_allowed_sidecar_key_with_a_bids_definition_is_checked_against_it() -> None:
    allowed = set().union(*policy.MODALITY_SIDECAR_KEYS.values())
    defined = {key for key in allowed if key in metadata_definitions()}
    assert len(defined) > 100  # most of the allow-list is BIDS metadata
    assert {"EchoTime", "SliceTiming", "InjectionStart", "ReceiveCoilName"} <= defined


@pytest.mark.parametrize(
    ("key", "value", "fits"),
    [
        ("EchoTime", 0.003, True),
        ("EchoTime", [0.003, 0.006], True),
        ("EchoTime", -1, False),
        ("EchoTime", "0.003", False),
        ("EchoTime", {"value": 0.003}, False),
        ("SliceTiming", [0.0, 0.5], True),
        ("SliceTiming", [[0.0]], False),
        ("PhaseEncodingDirection", "j-", True),
        ("PhaseEncodingDirection", "up", False),
        ("MRAcquisitionType", "3D", True),
        ("InjectionStart", 0, True),
        ("InjectionStart", ["10:00:00"], False),
        ("TimeZero", "10:33:47", True),
        ("TimeZero", "ten past ten", False),
        ("AcquisitionVoxelSize", [1, 1, 1], True),
        ("AcquisitionVoxelSize", [1, 1], False),
        ("ImageType", ["ORIGINAL", "PRIMARY", "M", "ND"], True),
        ("ImageType", ["Smith^John"], False),
        ("SeriesNumber", 7, True),
        ("SeriesNumber", "7", False),
        ("PhilipsRWVSlope", 1.5, None),
    ],
)
def test_values_fit_what_the_standards_define(key: str, value: object, fits: bool | None) -> None:
    assert standard_fit(key, value) is fits


def test_booleans_and_nan_are_not_numbers() -> None:
    number = {"type": "number"}
    assert not fits_definition(True, number) and not fits_definition(float("nan"), number)
    assert fits_definition(True, {"type": "boolean"})


def test_only_standard_names_may_be_shown() -> None:
    for name in ("PatientName", "InstitutionName", "EchoTime", "participant_id", "handedness", "acq_time"):
        assert is_standard_name(name), name
    for name in ("JohnSmith_MRN", "SiteSecretNote", "birth_date", "LEAK001Q"):
        assert not is_standard_name(name), name
    assert dicom_definition("PatientName") == ("PN", "1")


def test_column_vocabularies_and_descriptions_come_from_the_schema() -> None:
    assert set(column_levels("sex")) >= {"F", "M", "O", "female", "male", "other"}
    assert column_levels("species") is None
    described = column_description("handedness")
    assert described["Levels"]["L"] == "Left-handed" and "Description" in described
    assert column_description("no_such_column") is None


def test_technical_words_are_those_of_the_standards() -> None:
    for word in ("Spoiled", "Gradient", "Echo", "transmission", "Combine", "Research"):
        assert is_technical_word(word), word
    for name in ("Smith", "Jones", "Mary", "Rorden", "Hospital"):
        assert not is_technical_word(name), name
