"""Series classification rules (pure)."""

from __future__ import annotations

import pytest

from bidsdeface.classify import Decision, SeriesHeader, classify_series, decide_with_guess

ORIGINAL = ("ORIGINAL", "PRIMARY", "M", "ND")


def _mr(
    text: str = "", te: float | None = None, tr: float | None = None, ti: float | None = None, **kw
) -> SeriesHeader:
    kw.setdefault("image_type", ORIGINAL)
    return SeriesHeader("MR", echo_time=te, repetition_time=tr, inversion_time=ti, text=text, **kw)


@pytest.mark.parametrize(
    ("header", "suffix"),
    [
        (_mr("t1_mprage_sag_p2", 2.98, 2300, 900, scanning_sequence=("GR", "IR")), "T1w"),
        (_mr("Sag T1 FSPGR BRAVO", 3.2, 8.2, 450), "T1w"),
        (_mr("t2_tse_tra", 98, 5000), "T2w"),
        (_mr("AX T2 FLAIR", 120, 9000, 2500, scanning_sequence=("SE", "IR")), "FLAIR"),
        (_mr("pd_tse_tra", 11, 3000), "PDw"),
        (_mr("", 95, 4200), "T2w"),  # no description: timing decides
        (_mr("t1_fl2d_sag", 2.46, 300), "T1w"),
        (SeriesHeader(modality="CT", body_part="HEAD", image_type=("ORIGINAL", "PRIMARY", "AXIAL")), "ct"),
        (SeriesHeader(modality="PT", body_part="BRAIN"), "pet"),
    ],
)
def test_kept_series(header: SeriesHeader, suffix: str) -> None:
    decision = classify_series(header)
    assert decision.suffix == suffix, decision
    assert decision.kept and not decision.needs_guess
    assert decision.datatype == ("pet" if suffix == "pet" else "anat")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (_mr("AAHead_Scout_64ch", image_type=("ORIGINAL", "PRIMARY", "M", "LOCALIZER")), "localizer"),
        (_mr("3-plane loc"), "localizer"),
        (SeriesHeader(modality="CT", text="Topogram 0.6 T20s"), "localizer"),
        (SeriesHeader(modality="CT", text="Dose Report"), "dose report"),
        (SeriesHeader(modality="SR", sop_class="1.2.840.10008.5.1.4.1.1.88.67"), "structured or dose report"),
        (SeriesHeader(modality="OT", sop_class="1.2.840.10008.5.1.4.1.1.7"), "screen capture"),
        (SeriesHeader(modality="CT", burned_in_annotation="YES"), "burned-in"),
        (_mr("t1_mprage_MPR_cor", image_type=("DERIVED", "SECONDARY", "MPR")), "derived"),
        (SeriesHeader(modality="CT", body_part="CHEST"), "body part is not the head (BodyPartExamined CHEST)"),
        (SeriesHeader(modality="MR", body_part="Dr. Who's knee 555-1234"), "BodyPartExamined other"),
        (_mr("ep2d_diff_mddw_30", image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE")), "diffusion"),
        (_mr("ep2d_bold_rest", image_type=("ORIGINAL", "PRIMARY", "M", "MOSAIC")), "functional or diffusion"),
        (_mr("gre_field_mapping"), "field map"),
        (_mr("tof_fl3d_tra"), "angiography"),
        (_mr("t1_mprage", image_type=("ORIGINAL", "PRIMARY", "P", "ND")), "phase"),
        (_mr("swi_combined"), "susceptibility"),
        (SeriesHeader(modality="US"), "modality US is not MR, CT or PET"),
    ],
)
def test_skipped_series_say_why(header: SeriesHeader, reason: str) -> None:
    decision = classify_series(header)
    assert not decision.kept, decision
    assert reason in decision.reason


def test_reasons_never_repeat_the_series_text() -> None:
    marker = "t1 Smith^John MRN12345"
    for header in (_mr(marker, 3, 2000, 900), _mr(f"scout {marker}"), _mr(f"{marker} t2", 3, 500)):
        assert "Smith" not in classify_series(header).reason
        assert "MRN" not in classify_series(header).reason


def test_conflicts_and_unknowns_go_to_dcm2niix_guess() -> None:
    conflict = classify_series(_mr("t2_tse", 12, 600))  # named T2, timed T1
    unknown = classify_series(_mr("series 7"))
    for decision in (conflict, unknown):
        assert decision.needs_guess and decision.kept and not decision.suffix
    assert decide_with_guess(conflict, ["anat", "_acq-tse_T1w"]).suffix == "T1w"
    assert decide_with_guess(unknown, ["anat", "_PD"]).suffix == "PDw"
    assert not decide_with_guess(unknown, ["func", "_task-rest_bold"]).kept
    assert not decide_with_guess(unknown, None).kept
    settled = Decision("T1w", "T1w: series description")
    assert decide_with_guess(settled, ["dwi", "_dwi"]) is settled
