"""Locate, verify and load the head template, its masks and the face detector model shipped with the package."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import BidsDefaceError

TEMPLATE_FILES: tuple[str, ...] = (
    "head.nii.gz",
    "face_mask.nii.gz",
    "ear_mask.nii.gz",
    "brain_mask.nii.gz",
)
CHECKSUM_FILE = "SHA256SUMS"
FACE_MODEL = "mmod_human_face_detector.dat"
FACE_MODEL_SHA256 = "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6"


class TemplateError(BidsDefaceError):
    """The bundled templates are missing or do not match their checksums."""


@dataclass(frozen=True)
class Template:
    """The head template and its binary masks, all on one grid (RAS, 2 mm).

    Attributes
    ----------
    head : numpy.ndarray
        Template head intensities (float32).
    face, ears, brain : numpy.ndarray
        Boolean masks.
    affine : numpy.ndarray
        Voxel-to-RAS affine shared by all four.
    """

    head: np.ndarray
    face: np.ndarray
    ears: np.ndarray
    brain: np.ndarray
    affine: np.ndarray


def template_dir() -> Path:
    """Return the folder holding the templates.

    Installed wheels carry them inside the package (``bidsdeface/templates``);
    a source checkout (editable install) keeps them at the top level.
    """
    return _bundled_dir("templates")


def _bundled_dir(name: str) -> Path:
    packaged = resources.files("bidsdeface").joinpath(name)
    if packaged.is_dir():
        return Path(str(packaged))
    source_tree = Path(__file__).resolve().parent.parent / name
    if source_tree.is_dir():
        return source_tree
    raise TemplateError(f"bundled {name} not found: the installation is incomplete")


def face_model_path() -> Path:
    """Return the verified path of the bundled CNN face detector model (``models/README.md``).

    Raises
    ------
    TemplateError
        The file is missing or its checksum differs.
    """
    path = _bundled_dir("models") / FACE_MODEL
    if not path.is_file() or _sha256(path) != FACE_MODEL_SHA256:
        raise TemplateError(f"{path}: face detector model missing or damaged")
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verify_templates(folder: Path) -> None:
    """Check every template file against ``SHA256SUMS``.

    Raises
    ------
    TemplateError
        A file is missing or its checksum differs.
    """
    sums_file = folder / CHECKSUM_FILE
    if not sums_file.is_file():
        raise TemplateError(f"{sums_file}: checksum file missing")
    expected = {
        name.strip(): digest
        for digest, name in (line.split(maxsplit=1) for line in sums_file.read_text().splitlines() if line.strip())
    }
    for name in TEMPLATE_FILES:
        path = folder / name
        if not path.is_file():
            raise TemplateError(f"{path}: template file missing")
        if expected.get(name) != _sha256(path):
            raise TemplateError(f"{path}: checksum does not match {CHECKSUM_FILE}")


def load_template(folder: Path | None = None) -> Template:
    """Verify and load the bundled template.

    Parameters
    ----------
    folder : Path, optional
        Template folder; the bundled one by default.

    Returns
    -------
    Template
    """
    folder = template_dir() if folder is None else folder
    verify_templates(folder)
    images = {name: nib.load(folder / name) for name in TEMPLATE_FILES}
    head = images["head.nii.gz"]
    for name, img in images.items():
        if img.shape != head.shape or not np.allclose(img.affine, head.affine):
            raise TemplateError(f"{folder / name}: not on the head template grid")

    def mask(name: str) -> np.ndarray:
        return np.asanyarray(images[name].dataobj) > 0

    return Template(
        head=head.get_fdata(dtype=np.float32),
        face=mask("face_mask.nii.gz"),
        ears=mask("ear_mask.nii.gz"),
        brain=mask("brain_mask.nii.gz"),
        affine=head.affine.copy(),
    )
