"""Remove identifying text that travels with the pixels: sidecars and NIfTI headers."""

from __future__ import annotations

from typing import Any

import nibabel as nib

NIFTI_TEXT_FIELDS: tuple[str, ...] = ("descrip", "aux_file", "intent_name", "db_name")

# Keys that dcm2niix and other converters leave and that identify a person, a
# place or a time. (A full allow-list policy replaces this deny-list later.)
IDENTIFYING_SIDECAR_KEYS: frozenset[str] = frozenset(
    {
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "StationName",
        "DeviceSerialNumber",
        "StudyDescription",
        "SeriesDescription",
        "ProtocolName",
        "ProcedureStepDescription",
        "PerformedProcedureStepDescription",
        "ImageComments",
        "ConversionComments",
        "AcquisitionTime",
        "AcquisitionDateTime",
        "AcquisitionDate",
        "SeriesTime",
        "StudyTime",
        "ContentTime",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "AccessionNumber",
        "ReferringPhysicianName",
        "OperatorsName",
        "PerformingPhysicianName",
        "StudyID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
    }
)


def scrub_sidecar(metadata: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Return the sidecar without identifying keys, and the names of removed keys.

    >>> scrub_sidecar({"EchoTime": 0.003, "InstitutionName": "x"})
    ({'EchoTime': 0.003}, ['InstitutionName'])
    """
    removed = sorted(key for key in metadata if key in IDENTIFYING_SIDECAR_KEYS)
    clean = {key: value for key, value in metadata.items() if key not in IDENTIFYING_SIDECAR_KEYS}
    return clean, removed


def scrub_nifti_header(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """Clear free-text header fields and drop header extensions, in place; return ``image``."""
    header = image.header
    for field in NIFTI_TEXT_FIELDS:
        header[field] = b""
    header.extensions.clear()
    return image
