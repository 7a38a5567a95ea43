"""Header de-identification by PS3.15 Table E.1-1, on pydicom's bundled real MR header."""

from __future__ import annotations

import copy
from datetime import timedelta

import pydicom
import pytest
from pydicom import examples
from pydicom.dataset import Dataset

from bidsdeface.config import ProfileOptions
from bidsdeface.deidentify import (
    DUMMY_TEXT,
    Replacements,
    deidentification_codes,
    deidentify_header,
    profile_rules,
    resolve_action,
)
from bidsdeface.identity import keyed_uid

WHO = Replacements("p5e7d", -timedelta(days=40000), "unit-key")


@pytest.fixture
def mr() -> Dataset:
    dataset = examples.mr
    dataset.InstitutionName, dataset.OperatorsName, dataset.ProtocolName = "St Elsewhere", "Doe^Jane", "brain t1"
    dataset.StudyDate, dataset.AcquisitionDateTime = "20240315", "20240315142207.25"
    dataset.TimezoneOffsetFromUTC, dataset.SeriesDescription = "+0100", "t1_mprage"
    return dataset


def test_every_table_row_resolves_to_one_action() -> None:
    for options in (ProfileOptions(), ProfileOptions(True, True, True, True, True)):
        actions = {resolve_action(rule, options) for rule in profile_rules().values()}
        assert actions <= {"X", "Z", "D", "U", "K", "C"}


def test_identity_attributes_become_pseudonyms_dummies_or_nothing(mr: Dataset) -> None:
    report = deidentify_header(mr, ProfileOptions(), WHO)
    assert mr.PatientName == mr.PatientID == "p5e7d"
    for removed in ("InstitutionName", "OperatorsName", "ProtocolName", "SeriesDescription"):  # type 3 in MR
        assert removed not in mr
    assert "TimezoneOffsetFromUTC" not in mr and report.not_cleaned["TimezoneOffsetFromUTC"] == 1
    assert report.actions["Z"] > 0 and report.actions["X"] > 0


def test_choices_follow_the_attribute_type_in_the_objects_iod(mr: Dataset) -> None:
    mr.SOPClassUID = pydicom.uid.EnhancedMRImageStorage  # DeviceSerialNumber is type 1 there, ContentDate type 1
    mr.DeviceSerialNumber, mr.AcquisitionContextSequence, mr.ContentDate = "SN 4711", [Dataset()], "20240315"
    deidentify_header(mr, ProfileOptions(modified_dates=False), WHO)
    assert mr.DeviceSerialNumber == DUMMY_TEXT and mr.ContentDate == "19000101"  # D where type 1
    assert len(mr.AcquisitionContextSequence) == 0  # Z where type 2
    assert "InstitutionName" not in mr  # X where type 3


def test_dates_move_by_the_offset_and_times_stay(mr: Dataset) -> None:
    deidentify_header(mr, ProfileOptions(), WHO)
    assert mr.StudyDate == "19140909" and mr.AcquisitionDateTime == "19140909142207.25"
    assert mr.LongitudinalTemporalInformationModified == "MODIFIED"


def test_without_modified_dates_dates_are_emptied_or_dummies(mr: Dataset) -> None:
    deidentify_header(mr, ProfileOptions(modified_dates=False), Replacements("p", None, "k"))
    assert mr.StudyDate == "" and "AcquisitionDateTime" not in mr  # Z (type 2) and X (type 3)
    assert [item.CodeValue for item in mr.DeidentificationMethodCodeSequence] == ["113100", "113102"]


def test_uids_are_keyed_and_references_follow(mr: Dataset) -> None:
    old_sop, old_study = str(mr.SOPInstanceUID), str(mr.StudyInstanceUID)
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = mr.SOPClassUID, old_sop
    reference.CodeMeaning = "free text in a reference item"
    mr.ReferencedImageSequence = [reference]
    report = deidentify_header(mr, ProfileOptions(), WHO)
    assert mr.SOPInstanceUID == keyed_uid("unit-key", old_sop) == mr.file_meta.MediaStorageSOPInstanceUID
    assert mr.StudyInstanceUID == keyed_uid("unit-key", old_study)
    item = mr.ReferencedImageSequence[0]
    assert item.ReferencedSOPInstanceUID == mr.SOPInstanceUID and "CodeMeaning" not in item
    assert item.ReferencedSOPClassUID == pydicom.uid.MRImageStorage  # a class, not an instance: kept
    assert report.uids[old_sop] == mr.SOPInstanceUID


def test_retain_uids_keeps_the_study_but_never_the_instance(mr: Dataset) -> None:
    old_sop, old_study = str(mr.SOPInstanceUID), str(mr.StudyInstanceUID)
    deidentify_header(mr, ProfileOptions(retain_uids=True), WHO)
    assert mr.StudyInstanceUID == old_study and mr.SOPInstanceUID != old_sop


def test_private_attributes_go_unless_listed_as_safe_numbers(mr: Dataset) -> None:
    block = mr.private_block(0x0019, "ACME 1.0", create=True)
    block.add_new(0x10, "DS", "2.5")
    block.add_new(0x11, "LO", "Jane Doe")
    plain = copy.deepcopy(mr)
    deidentify_header(plain, ProfileOptions(), WHO)
    assert not [e for e in plain if e.tag.is_private]
    deidentify_header(mr, ProfileOptions(safe_private=("ACME 1.0:0019,10", "ACME 1.0:0019,11")), WHO)
    kept = {str(e.value) for e in mr if e.tag.is_private}
    assert kept == {"ACME 1.0", "2.5"}  # the text is not a number: removed even when listed


def test_nested_items_of_kept_sequences_are_deidentified(mr: Dataset) -> None:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-A0100", "SRT", "Brain"
    item.PatientName, item.InstitutionName = "Doe^John", "Hospital"
    item.private_block(0x0029, "NESTED", create=True).add_new(0x10, "LO", "secret")
    mr.AnatomicRegionSequence = [item]
    deidentify_header(mr, ProfileOptions(), WHO)
    nested = mr.AnatomicRegionSequence[0]
    assert nested.PatientName == "p5e7d" and nested.InstitutionName == DUMMY_TEXT and nested.CodeMeaning == "Brain"
    assert not [e for e in nested if e.tag.is_private]


def test_overlays_curves_and_unknown_public_tags_are_removed(mr: Dataset) -> None:
    mr.add_new(0x60004000, "LT", "overlay comment")
    mr.add_new(0x60000010, "US", 8)
    mr.add_new(0x00090000 + 0x0100 * 0, "UL", 4)  # a group length
    report = deidentify_header(mr, ProfileOptions(), WHO)
    assert not [e for e in mr if e.tag.group == 0x6000]
    assert report.actions["curve or overlay"] == 2


def test_clean_descriptors_keeps_technical_descriptions_only(mr: Dataset) -> None:
    deidentify_header(mr, ProfileOptions(clean_descriptors=True), WHO)
    assert mr.SeriesDescription == "t1_mprage"
    other = examples.mr
    other.SeriesDescription = "Jane Doe follow-up"
    report = deidentify_header(other, ProfileOptions(clean_descriptors=True), WHO)
    assert "SeriesDescription" not in other and report.not_cleaned["SeriesDescription"] == 1


def test_patient_characteristics_option_caps_ages(mr: Dataset) -> None:
    mr.PatientAge, mr.PatientSex = "093Y", "F"
    deidentify_header(mr, ProfileOptions(patient_characteristics=True), WHO)
    assert mr.PatientAge == "089Y" and mr.PatientSex == "F"
    other = examples.mr
    other.PatientAge, other.PatientSex = "093Y", "F"
    deidentify_header(other, ProfileOptions(), WHO)
    assert "PatientAge" not in other and other.PatientSex == ""


def test_codes_come_from_pydicom_and_name_every_option() -> None:
    options = ProfileOptions(True, True, True, True, True, ("A:0019,10",))
    values = [item.CodeValue for item in deidentification_codes(options)]
    assert values == ["113100", "113102", "113107", "113108", "113109", "113105", "113110", "113111"]


def test_written_file_is_readable_with_a_fresh_file_meta(mr: Dataset, tmp_path) -> None:
    deidentify_header(mr, ProfileOptions(), WHO)
    mr.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    again = pydicom.dcmread(tmp_path / "x.dcm")
    assert again.file_meta.ImplementationVersionName.startswith("BIDSDEFACE")
    assert "SourceApplicationEntityTitle" not in again.file_meta
