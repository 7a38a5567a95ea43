"""What metadata may leave: allow-lists of sidecar keys and table columns, and site policy files.

Everything not listed here is removed, including keys never seen before. The lists
hold acquisition physics and device type, never people, places, free text or
device identity. :func:`identifying_keys` (the DICOM PS3.15 Basic Application
Confidentiality Profile attributes, by keyword) is the fail-closed check: none
of them may survive unless a user keeps it by name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

from .errors import UsageError
from .files import read_json_object

COMMON_SIDECAR_KEYS: frozenset[str] = frozenset(
    {
        "AcquisitionDuration", "AcquisitionNumber", "AcquisitionVoxelSize", "BodyPart", "ConversionSoftware",
        "ConversionSoftwareVersion", "ImageOrientationPatientDICOM", "ImageOrientationText", "ImageType",
        "ImageTypeText", "Manufacturer", "ManufacturersModelName", "Modality", "PatientPosition", "RawImage",
        "SeriesNumber", "SliceThickness", "SpacingBetweenSlices", "TablePosition",
    }
)  # fmt: skip
MRI_SIDECAR_KEYS: frozenset[str] = frozenset(
    {
        "AcquisitionMatrixPE", "BandwidthPerPixelPhaseEncode", "BaseResolution", "CoilCombinationMethod",
        "CompressedSensingFactor", "ContrastBolusIngredient", "DerivedVendorReportedEchoSpacing", "DwellTime",
        "EchoNumber", "EchoTime", "EchoTime1", "EchoTime2", "EchoTrainLength", "EffectiveEchoSpacing",
        "EstimatedEffectiveEchoSpacing", "EstimatedTotalReadoutTime", "FlipAngle", "FrequencyEncodingSteps",
        "GradientSetType", "ImagingFrequency", "InPlanePhaseEncodingDirectionDICOM", "InternalPulseSequenceName",
        "InversionTime", "MRAcquisitionType", "MRTransmitCoilSequence", "MTNumberOfPulses", "MTOffsetFrequency",
        "MTPulseBandwidth", "MTPulseDuration", "MTPulseShape", "MTState", "MagneticFieldStrength", "MatrixCoilMode",
        "MultiEchoShots", "MultibandAccelerationFactor", "NonlinearGradientCorrection", "NumberOfAverages",
        "NumberOfExcitations", "NumberOfVolumesDiscardedByScanner", "NumberOfVolumesDiscardedByUser",
        "NumberReceiveCoilActiveElements", "NumberShots", "NumberTransmitCoilActiveElements",
        "ParallelAcquisitionTechnique", "ParallelReductionFactorInPlane", "ParallelReductionFactorOutOfPlane",
        "PartialFourier", "PartialFourierDirection", "PartialFourierEnabled", "PercentPhaseFOV", "PercentSampling",
        "PhaseEncodingAxis", "PhaseEncodingDirection", "PhaseEncodingSteps", "PhaseEncodingStepsNoPartialFourier",
        "PhaseEncodingStepsOutOfPlane", "PhaseOversampling", "PhaseResolution", "PhilipsRWVIntercept",
        "PhilipsRWVSlope", "PhilipsRescaleIntercept", "PhilipsRescaleSlope", "PhilipsScaleSlope", "PixelBandwidth",
        "PostInversionDelay", "PulseSequenceDetails", "PulseSequenceName", "PulseSequenceType",
        "ReceiveCoilActiveElements", "ReceiveCoilName", "ReconMatrixPE", "RefLinesPE", "RepetitionTime",
        "RepetitionTimeExcitation", "RepetitionTimeInversion", "RepetitionTimePreparation", "ResonantNucleus", "SAR",
        "ScanOptions", "ScanningSequence", "SequenceName", "SequenceVariant", "ShimSetting",
        "SliceEncodingDirection", "SliceTiming", "SpoilingGradientDuration", "SpoilingGradientMoment",
        "SpoilingRFPhaseIncrement", "SpoilingState", "SpoilingType", "TotalReadoutTime", "TransmitCoilName",
        "TriggerDelayTime", "TxRefAmp", "UsePhilipsFloatNotDisplayScaling", "VariableFlipAngleFlag",
        "VendorReportedEchoSpacing", "WaterFatShift",
    }
)  # fmt: skip
PET_SIDECAR_KEYS: frozenset[str] = frozenset(
    {
        "AcquisitionMode", "AttenuationCorrection", "AttenuationCorrectionMethod",
        "AttenuationCorrectionMethodReference", "ConvolutionKernel", "DecayCorrection", "DecayCorrectionFactor",
        "DecayFactor", "DispersionCorrected", "DoseCalibrationFactor", "FrameDuration", "FrameReferenceTime",
        "FrameTimesStart", "ImageDecayCorrected", "ImageDecayCorrectionTime", "InfusionRadioactivity",
        "InfusionSpeed", "InfusionSpeedUnits", "InfusionStart", "InjectedMass", "InjectedMassPerWeight",
        "InjectedMassPerWeightUnits", "InjectedMassUnits", "InjectedRadioactivity", "InjectedRadioactivityUnits",
        "InjectedVolume", "InjectionEnd", "InjectionStart", "IsotopeHalfLife", "MetaboliteAvail",
        "MetaboliteRecoveryCorrectionApplied", "ModeOfAdministration", "MolarActivity", "MolarActivityUnits",
        "PharmaceuticalDoseAmount", "PharmaceuticalDoseRegimen", "PharmaceuticalDoseTime", "PharmaceuticalDoseUnits",
        "PharmaceuticalName", "PlasmaAvail", "PromptRate", "Purity", "RadionuclideHalfLife",
        "RadionuclidePositronFraction", "RandomRate", "RandomsCorrectionMethod", "ReconFilterSize",
        "ReconFilterType", "ReconMethodImplementationVersion", "ReconMethodName", "ReconMethodParameterLabels",
        "ReconMethodParameterUnits", "ReconMethodParameterValues", "ReconstructionMethod", "ScaleFactor",
        "ScanStart", "ScatterCorrectionMethod", "ScatterFraction", "SinglesRate", "SpecificRadioactivity",
        "SpecificRadioactivityUnits", "TracerMolecularWeight", "TracerMolecularWeightUnits", "TracerName",
        "TracerRadLex", "TracerRadionuclide", "TracerSNOMED", "Units", "WholeBloodAvail", "WithdrawalRate",
    }
)  # fmt: skip
CT_SIDECAR_KEYS: frozenset[str] = frozenset(
    {
        "CTDIvol", "ConvolutionKernel", "DataCollectionDiameter", "ExposureModulationType", "ExposureTime",
        "FilterType", "GantryDetectorTilt", "KVP", "ReconstructionDiameter", "RevolutionTime",
        "SingleCollimationWidth", "SpiralPitchFactor", "TableSpeed", "TotalCollimationWidth", "XRayExposure",
        "XRayTubeCurrent",
    }
)  # fmt: skip
MODALITY_SIDECAR_KEYS: dict[str, frozenset[str]] = {
    "mri": COMMON_SIDECAR_KEYS | MRI_SIDECAR_KEYS,
    "pet": COMMON_SIDECAR_KEYS | PET_SIDECAR_KEYS,
    "ct": COMMON_SIDECAR_KEYS | CT_SIDECAR_KEYS,
}

# Dates and clock times: shifted by the subject's offset, or removed with --drop-dates.
# Numbers under these keys (PET times relative to TimeZero) are kept as they are.
CLOCK_KEYS: frozenset[str] = frozenset(
    {
        "AcquisitionDate", "AcquisitionDateTime", "AcquisitionTime", "ContentDate", "ContentTime", "InjectionEnd",
        "InjectionStart", "MolarActivityMeasTime", "PharmaceuticalDoseTime", "RadiopharmaceuticalStartDateTime",
        "RadiopharmaceuticalStartTime", "RadiopharmaceuticalStopDateTime", "RadiopharmaceuticalStopTime", "ScanDate",
        "ScanStart", "SeriesDate", "SeriesTime", "SpecificRadioactivityMeasTime", "StudyDate", "StudyTime",
        "TimeZero",
    }
)  # fmt: skip
# Values BIDS requires: a dropped or unreadable value becomes this placeholder, so the dataset stays valid.
REQUIRED_PLACEHOLDERS: dict[str, dict[str, str]] = {
    "pet": {
        "TimeZero": "00:00:00", "AttenuationCorrection": "n/a", "ReconMethodName": "n/a", "TracerName": "n/a",
        "ManufacturersModelName": "n/a", "Manufacturer": "n/a", "ReconFilterType": "n/a", "AcquisitionMode": "n/a",
    },
}  # fmt: skip

# Free text in allowed keys leaves only when it looks like what the device or the standard writes there.
# The vendors dcm2niix tells apart (its kMANUFACTURER_* list), as the first word of Manufacturer.
VENDOR_FIRST_WORDS: frozenset[str] = frozenset(
    {"SIEMENS", "GE", "PHILIPS", "TOSHIBA", "CANON", "UIH", "UNITED", "BRUKER", "HITACHI", "MEDISO", "MRSOLUTIONS",
     "HYPERFINE", "FUJIFILM"}
)  # fmt: skip
VENDOR_KEYS: frozenset[str] = frozenset({"Manufacturer"})
# DICOM CID 4030 (CT, MR and PET Anatomy Imaged) is the vocabulary of these keys.
ANATOMY_KEYS: frozenset[str] = frozenset({"BodyPart", "BodyPartExamined"})
# Sequence-like codes: one token of the characters scanners use in them ("*tfl3d1_16ns", "HeadNeck_64").
SEQUENCE_CODE_KEYS: frozenset[str] = frozenset(
    {"SequenceName", "PulseSequenceName", "InternalPulseSequenceName", "ScanningSequence", "SequenceVariant",
     "ScanOptions", "PulseSequenceDetails", "ReceiveCoilName", "ReceiveCoilActiveElements", "TransmitCoilName",
     "CoilString", "ConvolutionKernel", "FilterType", "ImageTypeText", "ImageType", "MRAcquisitionType",
     "PhaseEncodingAxis", "InPlanePhaseEncodingDirectionDICOM", "ConversionSoftware"}
)  # fmt: skip
SEQUENCE_CODE = r"[A-Za-z0-9_*+\-.#/:;,%\\\[\]()]+"
# Versions of the converter: numbers and dots (a release date inside one is not a person's date).
VERSION_KEYS: frozenset[str] = frozenset({"ConversionSoftwareVersion"})
VERSION = r"v?\d+(?:\.\d+)+[a-z]?"
# All-capital words this short pass as acronyms (HRRT, OSEM) without being words of the standards.
ACRONYM_LETTERS = 4
# Any other kept text: short, and only the characters technical descriptions use.
MAX_TEXT_CHARS = 64
TECHNICAL_TEXT = r"[A-Za-z0-9 _*+\-.#/:;%\\\[\](),<>=]+"
# Keeping one of these means the dataset retains the device's identity (DICOM option 113109).
DEVICE_IDENTITY_KEYS: frozenset[str] = frozenset({"DeviceSerialNumber", "StationName", "SoftwareVersions"})

# Names dcm2niix writes for Table E.1-1 attributes that are not DICOM keywords.
DCM2NIIX_PROFILE_NAMES: dict[str, str] = {"ProcedureStepDescription": "PerformedProcedureStepDescription"}


@lru_cache(maxsize=1)
def identifying_keys() -> frozenset[str]:
    """Return the keys no sidecar may carry untransformed (the fail-closed check of every scrub).

    Every attribute of DICOM PS3.15 Table E.1-1 (Application Level Confidentiality
    Profile), by keyword, from the bundled machine-readable table
    (:func:`bidsdeface.standards.confidentiality_profile`); the names dcm2niix gives some
    of them; and the device's identity (:data:`DEVICE_IDENTITY_KEYS`).

    >>> keys = identifying_keys()
    >>> {"PatientName", "InstitutionName", "ProcedureStepDescription", "SoftwareVersions"} <= keys, "EchoTime" in keys
    (True, False)
    """
    from .standards import confidentiality_profile

    return frozenset(confidentiality_profile()) | frozenset(DCM2NIIX_PROFILE_NAMES) | DEVICE_IDENTITY_KEYS


# A schema field a release never carries, whatever its value, besides the identifying keys: the printer's software.
RELEASE_WITHHELD_FIELDS: frozenset[str] = frozenset({"HardcopyDeviceSoftwareVersion"})


def release_fields(datatype: str, suffix: str, extension: str, entities: tuple[str, ...]) -> frozenset[str]:
    """Return the allow-list of a released sidecar: the schema's fields for that file, less the identifying ones.

    >>> fields = release_fields("func", "bold", ".nii.gz", ("sub", "task"))
    >>> "RepetitionTime" in fields, "InstitutionName" in fields, "DeviceSerialNumber" in fields
    (True, False, False)
    """
    from .standards import sidecar_fields

    return sidecar_fields(datatype, suffix, extension, entities) - identifying_keys() - RELEASE_WITHHELD_FIELDS


# Table columns that may leave; any other column is dropped unless kept by name.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "participants": ("participant_id", "age", "sex", "handedness", "species", "strain", "strain_rrid", "group"),
    "sessions": ("session_id", "acq_time", "age"),
    "scans": ("filename", "acq_time"),
}
AGE_COLUMNS: frozenset[str] = frozenset({"age"})
TIME_COLUMNS: frozenset[str] = frozenset({"acq_time"})
# Column descriptions in participants.json and friends come from the BIDS schema; these are bidsdeface's own
# for allowed columns the schema does not define, and for columns a site keeps.
OWN_COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "group": {"LongName": "Group", "Description": "Group of the participant, as in the source (values screened)"},
}
SITE_COLUMN_DESCRIPTION: dict[str, str] = {
    "Description": "Kept at the data provider's request; values screened for identifiers (failures are n/a)"
}
# Fields of an input column description a site may keep (screened) with keep_column_descriptions.
COLUMN_DESCRIPTION_FIELDS: frozenset[str] = frozenset(
    {"LongName", "Description", "Levels", "Units", "TermURL", "Format", "Delimiter", "Minimum", "Maximum"}
)
# dataset_description.json fields carried by default; a site may keep more with keep_dataset_fields.
DATASET_FIELDS_CARRIED: tuple[str, ...] = ("License", "Authors")
NEUTRAL_DATASET_NAME = "De-identified dataset (bidsdeface)"
# A dataset DOI names the dataset, not a person: kept when it is a DOI (long digit runs are normal in DOIs).
DOI = r"(?:doi:|https?://(?:dx\.)?doi\.org/)?10\.\d{4,9}/[-._;()/:A-Za-z0-9]+"
POLICY_FILE_FIELDS: frozenset[str] = frozenset(
    {"keep_sidecar_keys", "drop_sidecar_keys", "keep_columns", "keep_column_descriptions", "keep_dataset_fields"}
)


@dataclass(frozen=True)
class SitePolicy:
    """A site's additions to the built-in lists, from ``--scrub-policy`` and command-line options.

    Attributes
    ----------
    keep_sidecar_keys : tuple of str
        Keys kept in addition to the allow-list (their values are checked and screened like any other).
    drop_sidecar_keys : tuple of str
        Keys removed even though the allow-list has them.
    keep_columns : tuple of str
        Table columns kept in addition to ``TABLE_COLUMNS`` (values screened; failures become ``n/a``).
    keep_column_descriptions : tuple of str
        Columns whose input description (``participants.json``...) is carried, screened, instead of the
        standard one.
    keep_dataset_fields : tuple of str
        ``dataset_description.json`` fields carried (screened) beyond ``License`` and ``Authors``.
    """

    keep_sidecar_keys: tuple[str, ...] = ()
    drop_sidecar_keys: tuple[str, ...] = ()
    keep_columns: tuple[str, ...] = ()
    keep_column_descriptions: tuple[str, ...] = ()
    keep_dataset_fields: tuple[str, ...] = ()

    def merged(self, other: SitePolicy) -> SitePolicy:
        """Return this policy with ``other``'s entries added (order kept, duplicates dropped)."""
        return SitePolicy(
            **{
                name: tuple(dict.fromkeys(getattr(self, name) + getattr(other, name)))
                for name in (f.name for f in fields(SitePolicy))
            }
        )


def read_policy_file(path: Path) -> SitePolicy:
    """Read a site policy file.

    The file is a JSON object with any of ``keep_sidecar_keys``,
    ``drop_sidecar_keys`` and ``keep_columns``, each a list of names::

        {"keep_sidecar_keys": ["SeriesDescription"], "drop_sidecar_keys": ["ReceiveCoilName"]}

    Raises
    ------
    UsageError
        The file is missing, not JSON, or has unknown fields or non-list values.
    """
    content = read_json_object(path, UsageError)
    unknown = sorted(set(content) - POLICY_FILE_FIELDS)
    if unknown:
        raise UsageError(
            f"{path}: unknown scrub policy field(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(POLICY_FILE_FIELDS))}"
        )
    for name, value in content.items():
        if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
            raise UsageError(f"{path}: '{name}' must be a list of names")
    return SitePolicy(**{name: tuple(dict.fromkeys(value)) for name, value in content.items()})


def listed_name(name: str) -> bool:
    """Return whether ``name`` is on one of bidsdeface's own fixed lists (safe to show, like a standard name).

    >>> listed_name("ProcedureStepDescription"), listed_name("JohnSmith_MRN")
    (True, False)
    """
    return (
        name in identifying_keys()
        or name in CLOCK_KEYS
        or any(name in keys for keys in MODALITY_SIDECAR_KEYS.values())
        or any(name in columns for columns in TABLE_COLUMNS.values())
    )
