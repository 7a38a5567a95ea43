"""Where a scan's files go, what its sidecars hold, and the order they are committed in."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from bidsdeface.config import Config
from bidsdeface.discover import ScanJob
from bidsdeface.figures import Figures
from bidsdeface.files import staged_files
from bidsdeface.identity import SubjectIdentity
from bidsdeface.outputs import (
    BrainContent,
    OutputPaths,
    ScanContent,
    image_destination,
    stage_completion,
    stage_figures,
    stage_images,
    superseded,
)
from bidsdeface.qc import ScanQc, Verdict


def _job(tmp_path: Path) -> ScanJob:
    return ScanJob("01", "", tmp_path / "sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_T1w.nii.gz", "T1w", "anat")


def test_output_paths_move_images_only(tmp_path: Path) -> None:
    """Relocating keeps the QC record and figures in the output and moves every image and sidecar."""
    job = _job(tmp_path)
    config = Config(tmp_path, tmp_path / "out", skull_strip=True)
    outputs = OutputPaths.for_job(config, job, SubjectIdentity("01", "01", None))
    moved = outputs.relocated(config.output_dir, tmp_path / "private" / "failed")
    assert (moved.qc, moved.mosaic, moved.render) == (outputs.qc, outputs.mosaic, outputs.render)
    assert moved.brain is not None and outputs.brain is not None and moved.brain.figure == outputs.brain.figure
    assert len(moved.image_files()) == 8 and moved.image_files()[0] == moved.sidecar
    for path in moved.image_files():
        assert tmp_path / "private" / "failed" in path.parents
        assert path.relative_to(tmp_path / "private" / "failed") in {
            p.relative_to(config.output_dir) for p in outputs.image_files()
        }


def test_superseded_files_of_earlier_runs(tmp_path: Path) -> None:
    """A failed scan removes every earlier image in the output; a written one, the private failed copy."""
    job = _job(tmp_path)
    config = Config(tmp_path / "bids", tmp_path / "out", keep_failed=True)
    outputs = OutputPaths.for_job(config, job, SubjectIdentity("01", "01", None))
    private = outputs.relocated(config.output_dir, tmp_path / "out-private" / "failed")
    earlier = [*outputs.image_files(), outputs.qc, outputs.mosaic, *private.image_files()[:2]]
    assert outputs.brain is not None
    for path in [*earlier, outputs.brain.figure]:  # an earlier --skull-strip run that passed, one kept privately
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    withheld = superseded(config, outputs, withheld=True)
    assert withheld[0] == outputs.sidecar  # the completion marker goes first
    assert set(withheld) == {*outputs.image_files(), outputs.brain.figure}  # this run does not skull-strip
    # written now: the private copy goes, and the skull-strip outputs this run does not make (as before)
    assert set(superseded(config, outputs, withheld=False)) == {*private.image_files()[:2], *outputs.brain.files()}


def _content(shape: tuple[int, int, int], status: str, brain: bool) -> ScanContent:
    """A small scan's content: a defaced image with a scaled header, its mask, optional brain outputs."""
    image = nib.Nifti1Image(np.arange(np.prod(shape), dtype=np.int16).reshape(shape), np.diag([2.0, 2.0, 2.0, 1.0]))
    mask = nib.Nifti1Image(np.ones(shape, np.uint8), image.affine)
    figures = Figures(mosaic=b"mosaic", render=b"render", brain=b"brain" if brain else None)
    return ScanContent(
        image=image,
        mask=mask,
        brain=BrainContent(mask, image, "template brain") if brain else None,
        metadata={"EchoTime": 0.003, "DeidentificationMethod": ["from the input"]},
        provenance={"DeidentificationMethod": ["bidsdeface"], "DeidentificationMethodCodeSequence": []},
        description="Defaced (zero)",
        sources=["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"],
        quality=ScanQc({"registration_score": 0.97}, figures, Verdict(status, (), ())),
        method={"registration_path": "head to template"},
    )


def _stage_all(config: Config, outputs: OutputPaths, content: ScanContent) -> None:
    with staged_files() as staged:
        destination = image_destination(config, outputs, content.withheld)
        stage_figures(staged, outputs, content.quality)
        if destination is not None:
            stage_images(staged, destination, content)
        stage_completion(staged, config, outputs, destination, content, {"load": 0.1, "write": 0.2})


def test_scan_files_commit_with_the_image_sidecar_last(tmp_path: Path) -> None:
    """Every file appears at the commit; the sidecar that marks the scan finished is renamed last."""
    config = Config(tmp_path / "bids", tmp_path / "out", skull_strip=True)
    outputs = OutputPaths.for_job(config, _job(tmp_path), SubjectIdentity("01", "01", None))
    _stage_all(config, outputs, _content((4, 5, 6), "PASS", brain=True))
    assert outputs.brain is not None
    written = [*outputs.image_files(), outputs.qc, outputs.mosaic, outputs.render, outputs.brain.figure]
    assert all(path.is_file() for path in written) and outputs.complete()
    assert max(written, key=lambda path: path.stat().st_mtime_ns) == outputs.sidecar
    sidecar = json.loads(outputs.sidecar.read_text())
    assert list(sidecar) == [
        "EchoTime", "DeidentificationMethod", "Description", "SkullStripped", "Sources",
        "DeidentificationMethodCodeSequence",
    ]  # fmt: skip
    assert sidecar["DeidentificationMethod"] == ["bidsdeface"]  # the provenance, never the input's value
    brain = json.loads(outputs.brain.sidecar.read_text())
    assert brain["Sources"] == [
        "bids::sub-01/anat/sub-01_desc-defaced_T1w.nii.gz",
        "bids::sub-01/anat/sub-01_desc-brain_mask.nii.gz",
    ]
    assert json.loads(outputs.brain.mask_sidecar.read_text())["SpatialReference"] == brain["Sources"][0]
    record = json.loads(outputs.qc.read_text())
    assert record["Seconds"] == {"load": 0.1, "write": 0.2} and record["ImageWithheld"] is False
    assert record["Figures"]["Brain"] == "sub-01/figures/sub-01_desc-defaced_T1w_brain.png"
    assert np.array_equal(
        np.asanyarray(nib.load(outputs.image).dataobj), np.asanyarray(_content((4, 5, 6), "PASS", True).image.dataobj)
    )


def test_a_scan_that_fails_qc_leaves_only_its_record_and_figures(tmp_path: Path) -> None:
    config = Config(tmp_path / "bids", tmp_path / "out")
    outputs = OutputPaths.for_job(config, _job(tmp_path), SubjectIdentity("01", "01", None))
    _stage_all(config, outputs, _content((4, 5, 6), "PASS", brain=False))
    _stage_all(config, outputs, _content((4, 5, 6), "FAIL", brain=False))  # a later run fails QC
    files = sorted(p.relative_to(config.output_dir).as_posix() for p in config.output_dir.rglob("*") if p.is_file())
    assert files == [
        "sub-01/anat/sub-01_desc-defaced_T1w_qc.json",
        "sub-01/figures/sub-01_desc-defaced_T1w_mosaic.png",
        "sub-01/figures/sub-01_desc-defaced_T1w_render.png",
    ]
    assert json.loads(outputs.qc.read_text())["ImageWithheld"] is True and not outputs.complete()
