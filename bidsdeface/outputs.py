"""The files of one scan: where they go, what they hold, and staging them for one atomic commit.

Computing happens before: :class:`ScanContent` holds the scan's images (headers scrubbed),
metadata and QC; the functions here only name, assemble and stage files.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib

from . import __version__
from .config import Config
from .derivatives import (
    FAILED_FOLDER,
    brain_mask_name,
    defaced_name,
    described_name,
    figure_name,
    mask_name,
    prepare_failed_folder,
)
from .discover import ScanJob
from .files import StagedFiles
from .identity import SubjectIdentity, private_folder
from .qc import ScanQc, limits_record

# The stages of one scan, in the order they run; the QC record times each.
STAGES: tuple[str, ...] = ("load", "register", "masks", "skullstrip", "deface", "qc", "write")


@dataclass(frozen=True)
class BrainPaths:
    """The skull-strip outputs of one scan: brain-only image, brain mask, their sidecars, the figure."""

    image: Path
    sidecar: Path
    mask: Path
    mask_sidecar: Path
    figure: Path

    def files(self) -> tuple[Path, ...]:
        """Every file, figure included."""
        return (self.image, self.sidecar, self.mask, self.mask_sidecar, self.figure)


@dataclass(frozen=True)
class OutputPaths:
    """The final files of one scan; the sidecar is written last and marks completion.

    ``brain`` names the skull-strip outputs; ``skull_stripped`` says whether this run writes them.
    """

    image: Path
    sidecar: Path
    mask: Path
    mask_sidecar: Path
    qc: Path
    mosaic: Path
    render: Path
    brain: BrainPaths | None = None
    skull_stripped: bool = False

    @classmethod
    def for_job(cls, config: Config, job: ScanJob, identity: SubjectIdentity) -> OutputPaths:
        """Return the output paths of ``job`` (with the subject's output labels)."""
        relpath = Path(identity.output_relpath(job.relpath))
        folder = config.output_dir / relpath.parent
        # BIDS has defacemasks in anat/ only; mod-<suffix> names the scan they belong to
        mask_folder = folder.parent / "anat"
        name = relpath.name
        brain = BrainPaths(
            image=folder / described_name(name, "brain", ".nii.gz"),
            sidecar=folder / described_name(name, "brain", ".json"),
            mask=folder / brain_mask_name(name, ".nii.gz"),
            mask_sidecar=folder / brain_mask_name(name, ".json"),
            figure=figure_name(config.output_dir, relpath, "brain"),
        )
        return cls(
            image=folder / defaced_name(name, ".nii.gz"),
            sidecar=folder / defaced_name(name, ".json"),
            mask=mask_folder / mask_name(name, ".nii.gz"),
            mask_sidecar=mask_folder / mask_name(name, ".json"),
            qc=folder / defaced_name(name, "_qc.json"),
            mosaic=figure_name(config.output_dir, relpath, "mosaic"),
            render=figure_name(config.output_dir, relpath, "render"),
            brain=brain,
            skull_stripped=skull_strips(config, job),
        )

    def complete(self) -> bool:
        """Return whether every output exists (a finished scan).

        A scan that failed QC is never complete (its sidecar is not in the output),
        so every run processes it again.
        """
        brain = self.brain.files() if self.brain is not None and self.skull_stripped else ()
        return all(p.is_file() for p in (self.image, self.sidecar, self.mask, self.mask_sidecar, self.qc, *brain))

    def image_files(self) -> tuple[Path, ...]:
        """Return the images and their sidecars, completion marker first (not the QC record or figures)."""
        brain = self.brain
        extra = () if brain is None else (brain.sidecar, brain.image, brain.mask_sidecar, brain.mask)
        return (self.sidecar, self.image, self.mask_sidecar, self.mask, *extra)

    def relocated(self, output_dir: Path, root: Path) -> OutputPaths:
        """Return these paths with the images and sidecars moved from ``output_dir`` to the same place below ``root``.

        The QC record and figures stay where they are.
        """

        def moved(path: Path) -> Path:
            return root / path.relative_to(output_dir)

        brain = self.brain
        if brain is not None:
            brain = replace(
                brain,
                image=moved(brain.image),
                sidecar=moved(brain.sidecar),
                mask=moved(brain.mask),
                mask_sidecar=moved(brain.mask_sidecar),
            )
        return replace(
            self,
            image=moved(self.image),
            sidecar=moved(self.sidecar),
            mask=moved(self.mask),
            mask_sidecar=moved(self.mask_sidecar),
            brain=brain,
        )

    def stale_brain_files(self) -> list[Path]:
        """Skull-strip outputs of an earlier run that this run does not write (removed when it redoes the scan)."""
        if self.brain is None or self.skull_stripped:
            return []
        return [path for path in self.brain.files() if path.is_file()]


def skull_strips(config: Config, job: ScanJob) -> bool:
    """Return whether this run skull-strips ``job`` (asked for, and not PET)."""
    return config.skull_strip and job.suffix != "pet"


@dataclass(frozen=True)
class BrainContent:
    """The skull-strip outputs of one scan, ready to write.

    Attributes
    ----------
    mask : nibabel.Nifti1Image
        Brain mask (uint8) on the scan's grid, header scrubbed.
    image : nibabel.Nifti1Image
        The defaced image with everything outside the brain set to the background, header scrubbed.
    description : str
        How the mask was made (``SkullStrippingMethod``).
    """

    mask: nib.Nifti1Image
    image: nib.Nifti1Image
    description: str


@dataclass(frozen=True)
class ScanContent:
    """Everything written for one scan, computed and scrubbed: staging it only writes.

    Attributes
    ----------
    image : nibabel.Nifti1Image
        The defaced image, header scrubbed.
    mask : nibabel.Nifti1Image
        The defacing mask (uint8), header scrubbed.
    brain : BrainContent or None
        Skull-strip outputs, when this run skull-strips the scan.
    metadata : dict
        The scrubbed sidecar.
    provenance : dict
        ``DeidentificationMethod`` and its code sequence.
    description : str
        The defaced image's ``Description``.
    sources : list of str
        ``Sources`` of the defaced image and its mask.
    quality : ScanQc
        Metrics, figures and verdict.
    method : dict
        How the scan was processed, for the QC record.
    """

    image: nib.Nifti1Image
    mask: nib.Nifti1Image
    brain: BrainContent | None
    metadata: dict[str, Any]
    provenance: dict[str, Any]
    description: str
    sources: list[str]
    quality: ScanQc
    method: dict[str, Any]

    @property
    def withheld(self) -> bool:
        """The scan failed QC: none of its images goes into the output."""
        return self.quality.verdict.status == "FAIL"


def image_destination(config: Config, outputs: OutputPaths, withheld: bool) -> tuple[OutputPaths, Path] | None:
    """Return where the scan's images go and the root of that tree, or None when they are not written.

    A scan that passed (or only warned) goes into the output. A scan that failed QC
    goes into ``failed/`` in the private folder with ``--keep-failed``, else nowhere.
    """
    if not withheld:
        return outputs, config.output_dir
    if not config.keep_failed:
        return None
    root = prepare_failed_folder(private_folder(config))
    return outputs.relocated(config.output_dir, root), root


def superseded(config: Config, outputs: OutputPaths, withheld: bool) -> list[Path]:
    """Return the files of earlier runs of this scan that this run replaces by nothing.

    Skull-strip outputs this run does not write; for a scan that failed QC every
    image of it in the output (an earlier run may have written one); for a scan
    written now, the copy an earlier ``--keep-failed`` run kept in the private folder.
    Completion markers (sidecars) come first.
    """
    if withheld:
        stale = list(outputs.image_files())
    else:
        stale = list(outputs.relocated(config.output_dir, private_folder(config) / FAILED_FOLDER).image_files())
    stale += outputs.stale_brain_files()
    return [path for path in dict.fromkeys(stale) if path.is_file()]


def stage_figures(staged: StagedFiles, outputs: OutputPaths, quality: ScanQc) -> None:
    """Stage the scan's QC figures (they go into the output whatever the verdict)."""
    staged.write_bytes(outputs.mosaic, quality.figures.mosaic)
    staged.write_bytes(outputs.render, quality.figures.render)
    if outputs.brain is not None and quality.figures.brain is not None:
        staged.write_bytes(outputs.brain.figure, quality.figures.brain)


def stage_images(staged: StagedFiles, destination: tuple[OutputPaths, Path], content: ScanContent) -> None:
    """Stage the defacing mask, the defaced image and the brain outputs in ``destination`` (paths, dataset root).

    The image sidecar, which marks the scan finished, is staged last by :func:`stage_completion`.
    """
    images, root = destination
    staged.write_nifti(images.mask, content.mask)
    staged.write_json(images.mask_sidecar, defacemask_sidecar(content.sources))
    staged.write_nifti(images.image, content.image)
    if content.brain is not None and images.brain is not None:
        paths, brain = images.brain, content.brain

        def in_dataset(path: Path) -> str:
            return f"bids::{path.relative_to(root).as_posix()}"

        staged.write_nifti(paths.mask, brain.mask)
        staged.write_json(paths.mask_sidecar, brain_mask_sidecar(brain, content.sources, in_dataset(images.image)))
        staged.write_nifti(paths.image, brain.image)
        sources = [in_dataset(images.image), in_dataset(paths.mask)]
        staged.write_json(paths.sidecar, brain_sidecar(content, brain, sources))


def stage_completion(
    staged: StagedFiles,
    config: Config,
    outputs: OutputPaths,
    destination: tuple[OutputPaths, Path] | None,
    content: ScanContent,
    seconds: dict[str, float],
) -> None:
    """Stage the QC record, then the image sidecar (renamed into place last: the scan is finished), and the removals.

    The QC record carries every stage's time, so it is made after the others are staged.
    ``destination`` is where the images went (:func:`image_destination`), None when nowhere.
    """
    record = qc_record(config.output_dir, outputs, content.quality, content.method, seconds, content.withheld)
    staged.write_json(outputs.qc, record)
    if destination is not None:
        staged.write_json(destination[0].sidecar, defaced_sidecar(content))
    for stale in superseded(config, outputs, content.withheld):
        staged.remove(stale)


def defaced_sidecar(content: ScanContent) -> dict[str, Any]:
    """Return the defaced image's sidecar."""
    return {
        **content.metadata,
        "Description": content.description,
        "SkullStripped": False,
        "Sources": content.sources,
        **content.provenance,
    }


def defacemask_sidecar(sources: list[str]) -> dict[str, Any]:
    """Return the defacing mask's sidecar."""
    return {
        "Description": "Voxels replaced by defacing (1) in the source scan's grid",
        "SkullStripped": False,
        "Sources": sources,
        "Type": "Deface",
    }


def brain_mask_sidecar(brain: BrainContent, sources: list[str], defaced: str) -> dict[str, Any]:
    """Return the brain mask's sidecar (``defaced``: the defaced image as a ``bids::`` reference)."""
    return {
        "Description": "Brain mask (1) on the source scan's grid",
        "Type": "Brain",
        "SkullStripped": False,
        "Sources": sources,
        "SpatialReference": defaced,
        "SkullStrippingMethod": brain.description,
    }


def brain_sidecar(content: ScanContent, brain: BrainContent, sources: list[str]) -> dict[str, Any]:
    """Return the brain-only image's sidecar (``sources``: the defaced image and the brain mask)."""
    return {
        **content.metadata,
        **content.provenance,
        "Description": "The defaced image with every voxel outside the brain mask set to the background",
        "SkullStripped": True,
        "SkullStrippingMethod": brain.description,
        "Sources": sources,
    }


def qc_record(
    output_dir: Path,
    outputs: OutputPaths,
    quality: ScanQc,
    method: dict[str, Any],
    seconds: dict[str, float],
    withheld: bool = False,
) -> dict[str, Any]:
    """Return the content of a scan's ``_qc.json`` (paths relative to the output folder).

    ``Scan`` names the defaced image's place in the output; ``ImageWithheld`` is true
    when the scan failed QC and so no image of it was written there (the reports
    still list it, for review).
    """

    def relative(path: Path) -> str:
        return path.relative_to(output_dir).as_posix()

    figures = {"Render": relative(outputs.render), "Mosaic": relative(outputs.mosaic)}
    if outputs.brain is not None and quality.figures.brain is not None:
        figures["Brain"] = relative(outputs.brain.figure)
    return {
        "Scan": relative(outputs.image),
        "Status": quality.verdict.status,
        "ImageWithheld": withheld,
        "Reasons": list(quality.verdict.reasons),
        "Notes": list(quality.verdict.notes),
        "Metrics": quality.metrics,
        "Method": method,
        "Seconds": seconds,
        "Figures": figures,
        "Limits": limits_record(),
        "GeneratedBy": f"bidsdeface {__version__}",
    }
