"""Decide what a DICOM series becomes: a BIDS image (T1w, T2w, FLAIR, PDw, ct, pet) or a skip with its reason.

Pure rules on a few DICOM attributes. Reasons name attributes and rule keywords,
never the series' own text, so a conversion report holds no identifying values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

STRUCTURAL_SUFFIXES: tuple[str, ...] = ("T1w", "T2w", "FLAIR", "PDw")
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
STRUCTURED_REPORT_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
MR_SPECTROSCOPY_CLASS = "1.2.840.10008.5.1.4.1.1.4.2"
IMAGE_MODALITIES = {"MR": "mri", "CT": "ct", "PT": "pet"}
HEAD_BODY_PARTS = frozenset(
    {"", "HEAD", "BRAIN", "SKULL", "HEADNECK", "HEAD_NECK", "HEAD NECK", "FACE", "ORBIT", "IAC", "SINUS", "TMJ", "JAW"}
)
# Keyword rules on the series description and protocol name, after :func:`words`.
SKIP_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("dose report or screen capture", r"\bdose\b|\bscreen ?(shot|capture|save)|\bpatient protocol|\bexam summary"),
    ("localizer or scout", r"\blocali[sz]er|\bscout|\bsurvey|\b3 ?plane|\btri ?pilot|\bpilot|\btopogram|\bscanogram"),
    ("diffusion", r"\b(dwi|dti|diff|diffusion|tensor|adc|trace|fa)\b|\bep b\d"),
    ("functional", r"\b(bold|fmri|rsfmri|rest|resting|task|func)\b"),
    ("field map", r"\b(field ?map|fmap|b0 ?map|gre field)"),
    ("perfusion", r"\b(asl|pcasl|pasl|perf|perfusion|dsc|dce)\b"),
    ("angiography", r"\b(tof|angio|mra|angiography)\b"),
    ("susceptibility or T2*", r"\bswi\b|t2\*|\bt2 ?star\b|\bhemo|\bme ?gre\b"),
)
SUFFIX_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("FLAIR", r"\bflair|\bdark ?fluid"),
    ("PDw", r"\b(pd|pdw|proton)\b"),
    ("T2w", r"\bt2(?!\*| ?star)|\bspace\b|\bcube\b"),
    ("T1w", r"\bt1|\bmp ?rage|\bspgr|\bfspgr|\bbravo|\btfl|\bfl3d|\btfe\b|\bffe\b"),
)
DERIVED_IMAGE_TYPES = frozenset({"DERIVED", "SECONDARY", "MPR", "REFORMATTED", "PROJECTION IMAGE", "MIP", "MNIP"})
MULTIVOLUME_IMAGE_TYPES = {"MOSAIC": "functional or diffusion", "DIFFUSION": "diffusion", "ADC": "diffusion"}
PHASE_IMAGE_TYPES = frozenset({"P", "PHASE", "R", "REAL", "I", "IMAGINARY"})


@dataclass(frozen=True)
class SeriesHeader:
    """The attributes of one series that classification reads.

    ``text`` is the lower-cased series description and protocol name; it is only
    matched against keyword rules and never reported.
    """

    modality: str = ""
    sop_class: str = ""
    image_type: tuple[str, ...] = ()
    scanning_sequence: tuple[str, ...] = ()
    echo_time: float | None = None
    repetition_time: float | None = None
    inversion_time: float | None = None
    body_part: str = ""
    burned_in_annotation: str = ""
    text: str = ""


@dataclass(frozen=True)
class Decision:
    """What a series becomes.

    Attributes
    ----------
    suffix : str
        BIDS suffix (``T1w``, ``ct``, ``pet``...), or ``""`` when the series is skipped.
    reason : str
        Why: the rule that decided, in words without identifying values.
    needs_guess : bool
        The attributes were not enough; dcm2niix's BIDS guess decides after conversion.
    """

    suffix: str
    reason: str
    needs_guess: bool = False

    @property
    def kept(self) -> bool:
        """Whether the series is converted."""
        return bool(self.suffix) or self.needs_guess

    @property
    def datatype(self) -> str:
        """BIDS folder of the image."""
        return "pet" if self.suffix == "pet" else "anat"


def words(text: str) -> str:
    """Lower-case ``text`` with punctuation turned into spaces, so word boundaries split ``t1_mprage``.

    >>> words("Sag_T1-MPRAGE (1mm)")
    'sag t1 mprage 1mm '
    """
    return re.sub(r"[^a-z0-9*]+", " ", text.lower())


def _keyword_rule(text: str, rules: tuple[tuple[str, str], ...]) -> str:
    return next((name for name, pattern in rules if re.search(pattern, text)), "")


def weighting_from_timing(header: SeriesHeader) -> str:
    """Guess the MR contrast from echo, repetition and inversion times (ms); ``""`` if unsure.

    >>> weighting_from_timing(SeriesHeader(echo_time=3.98, repetition_time=2250, inversion_time=850,
    ...                                    scanning_sequence=("GR", "IR")))
    'T1w'
    >>> weighting_from_timing(SeriesHeader(echo_time=120, repetition_time=9000, inversion_time=2500,
    ...                                    scanning_sequence=("SE", "IR")))
    'FLAIR'
    >>> weighting_from_timing(SeriesHeader(echo_time=95, repetition_time=4000))
    'T2w'
    >>> weighting_from_timing(SeriesHeader(echo_time=12, repetition_time=3000))
    'PDw'
    >>> weighting_from_timing(SeriesHeader(echo_time=2.5, repetition_time=300))
    'T1w'
    """
    te, tr, ti = header.echo_time, header.repetition_time, header.inversion_time
    if te is None or tr is None:
        return ""
    inverted = "IR" in header.scanning_sequence or (ti is not None and ti > 0)
    if inverted and ti is not None and ti >= 1500 and te >= 50:
        return "FLAIR"
    if inverted and ti is not None and ti < 1500 and te < 20:
        return "T1w"
    if inverted:
        return ""
    if tr < 1000 and te < 30:
        return "T1w"
    if tr >= 1500 and te >= 60:
        return "T2w"
    if tr >= 1500 and te < 35:
        return "PDw"
    return ""


def classify_series(header: SeriesHeader) -> Decision:
    """Return what a series becomes, and why.

    >>> mprage = SeriesHeader(modality="MR", image_type=("ORIGINAL", "PRIMARY", "M"), echo_time=3.98,
    ...     repetition_time=2250, inversion_time=850, scanning_sequence=("GR", "IR"), text="t1_mprage")
    >>> classify_series(mprage).suffix, classify_series(mprage).reason
    ('T1w', 'T1w: series description and echo/repetition/inversion times agree')
    >>> classify_series(SeriesHeader(modality="MR", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")))
    Decision(suffix='', reason='localizer or scout (ImageType LOCALIZER)', needs_guess=False)
    >>> classify_series(SeriesHeader(modality="CT", body_part="CHEST")).reason
    'body part is not the head (BodyPartExamined CHEST)'
    >>> classify_series(SeriesHeader(modality="MR", text="t2_tse", echo_time=12, repetition_time=600)).needs_guess
    True
    """
    image_type = {part.upper() for part in header.image_type}
    modality = header.modality.upper()
    text = words(header.text)
    if header.sop_class.startswith(SECONDARY_CAPTURE_PREFIX):
        return Decision("", "screen capture (Secondary Capture): may carry burned-in text")
    if header.sop_class.startswith(STRUCTURED_REPORT_PREFIX) or modality == "SR":
        return Decision("", "structured or dose report, not an image")
    if modality not in IMAGE_MODALITIES:
        return Decision("", f"modality {modality or 'missing'} is not MR, CT or PET")
    if header.burned_in_annotation.strip().upper() == "YES":
        return Decision("", "burned-in annotation (BurnedInAnnotation YES)")
    if "LOCALIZER" in image_type:
        return Decision("", "localizer or scout (ImageType LOCALIZER)")
    keyword_skip = _keyword_rule(text, SKIP_KEYWORDS[:2])
    if keyword_skip:
        return Decision("", f"{keyword_skip} (series description)")
    derived = sorted(image_type & DERIVED_IMAGE_TYPES)
    if derived:
        return Decision("", f"derived or secondary image (ImageType {' '.join(derived)})")
    body_part = header.body_part.upper().strip()
    if body_part not in HEAD_BODY_PARTS:
        shown = body_part if re.fullmatch(r"[A-Z_ ]{2,16}", body_part) else "other"
        return Decision("", f"body part is not the head (BodyPartExamined {shown})")
    if modality == "CT":
        return Decision("ct", "CT (Modality CT)")
    if modality == "PT":
        return Decision("pet", "PET (Modality PT)")
    return _classify_mr(header, image_type, text)


def _classify_mr(header: SeriesHeader, image_type: set[str], text: str) -> Decision:
    if header.sop_class == MR_SPECTROSCOPY_CLASS:
        return Decision("", "MR spectroscopy, not an image")
    multivolume = next((kind for flag, kind in MULTIVOLUME_IMAGE_TYPES.items() if flag in image_type), "")
    if multivolume:
        return Decision("", f"not a structural scan: {multivolume} (ImageType)")
    if image_type & PHASE_IMAGE_TYPES:
        return Decision("", "phase, real or imaginary image (ImageType), not a magnitude image")
    kind = _keyword_rule(text, SKIP_KEYWORDS[2:])
    if kind:
        return Decision("", f"not a structural scan: {kind} (series description)")
    by_name = _keyword_rule(text, SUFFIX_KEYWORDS)
    by_timing = weighting_from_timing(header)
    if by_name and by_timing and by_name != by_timing:
        return Decision(
            "", f"series description suggests {by_name}, timing suggests {by_timing}: dcm2niix decides", True
        )
    if by_name and by_timing:
        return Decision(by_name, f"{by_name}: series description and echo/repetition/inversion times agree")
    if by_name:
        return Decision(by_name, f"{by_name}: series description (timing inconclusive)")
    if by_timing:
        return Decision(by_timing, f"{by_timing}: echo/repetition/inversion times")
    return Decision("", "contrast unclear from the attributes: dcm2niix decides", True)


def decide_with_guess(decision: Decision, bids_guess: object) -> Decision:
    """Settle an undecided series with dcm2niix's ``BidsGuess`` (``["anat", "_acq-x_T1w"]``).

    >>> undecided = Decision("", "contrast unclear from the attributes: dcm2niix decides", True)
    >>> decide_with_guess(undecided, ["anat", "_acq-tse_run-2_T2w"]).suffix
    'T2w'
    >>> decide_with_guess(undecided, ["dwi", "_dwi"]).reason
    'contrast unclear from the attributes: dcm2niix decides; its guess dwi is not a structural scan'
    """
    if not decision.needs_guess:
        return decision
    guessed = ""
    if isinstance(bids_guess, list) and len(bids_guess) == 2 and isinstance(bids_guess[1], str):
        guessed = bids_guess[1].rsplit("_", 1)[-1]
        guessed = "PDw" if guessed == "PD" else guessed
    if guessed in STRUCTURAL_SUFFIXES:
        return Decision(guessed, f"{guessed}: dcm2niix's BIDS guess ({decision.reason.split(':')[0]})")
    shown = guessed if re.fullmatch(r"[A-Za-z0-9]{1,16}", guessed) else "missing"
    return Decision("", f"{decision.reason}; its guess {shown} is not a structural scan")
