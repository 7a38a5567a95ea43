#!/usr/bin/env python
"""Build the head template and the face/ear/brain masks shipped with bidsdeface.

The outputs are derived from two MIT-licensed sources (see ``SOURCES``):

* pydeface's average head ``mean_reg2mean.nii.gz`` and its face mask
  ``facemask.nii.gz`` (1 mm, same space);
* mridefacer's 3 mm head template, its brain image and its combined
  face/teeth/ear mask.

Everything is written on one 2 mm isotropic RAS grid that covers the field of
view of the pydeface head.  The mridefacer images are brought onto that grid
with an antspyx registration (affine, then SyN) of ``head_tmpl.nii.gz`` to the
2 mm head template.

Usage (from the repository root)::

    python scripts/build_templates.py --shared ../shared/data/templates --out templates

The script also writes ``SHA256SUMS``, ``README.md`` (provenance, derivation,
checksums) and ``LICENSES.md`` into the output directory, and optionally a QC
figure (``--qc``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import os
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

LOGGER = logging.getLogger("build_templates")

#: Isotropic voxel size of the output grid (mm).
GRID_MM = 2.0
#: The face mask of pydeface stops half-way up the eyes; its upper (slanted)
#: boundary is raised by this much so that the eyes, eyelids and brows are
#: covered (8 and 16 mm left the upper eyelids of the Trio MPRAGE head in view).
EYE_EXTENSION_MM = 24.0
#: Face voxels closer than this to the brain mask are dropped (mm).
FACE_BRAIN_MARGIN_MM = 6.0
#: Ear voxels closer than this to the brain mask are dropped (mm).
EAR_BRAIN_MARGIN_MM = 6.0
#: Fixed seed handed to antsRegistration (``--random-seed``).
RANDOM_SEED = 20240601
#: Quantities reported by the QC step use a dilation of the brain by this (mm).
QC_BRAIN_DILATION_MM = 5.0
#: World (RAS mm) centre of the left eyeball in the head template, located by
#: eye on the template; only used to place the QC slices.
QC_EYE_RAS_MM = (-36.0, 78.0, -35.5)

OUTPUT_NAMES = ("head.nii.gz", "face_mask.nii.gz", "ear_mask.nii.gz", "brain_mask.nii.gz")


@dataclass(frozen=True)
class Source:
    """One input file, as documented in ``shared/data/SOURCES.md``.

    Attributes
    ----------
    relpath : str
        Path relative to the ``--shared`` directory.
    sha256 : str
        Expected sha256 of the file.
    origin : str
        Where the file comes from.
    licence : str
        Licence of the file.
    """

    relpath: str
    sha256: str
    origin: str
    licence: str


SOURCES: dict[str, Source] = {
    "pydeface_head": Source(
        "pydeface/mean_reg2mean.nii.gz",
        "fdc13571d66293f9919648cd8de9a7b3491b12175e09336353d2c9ce0466ecb6",
        "PyPI wheel pydeface-2.1.0-py3-none-any.whl : pydeface/data/mean_reg2mean.nii.gz",
        "MIT (pydeface LICENSE.txt)",
    ),
    "pydeface_facemask": Source(
        "pydeface/facemask.nii.gz",
        "8cba52c32c02e0cc28dd47606f6ef581b9c9804f1ae9d412da5a4addc57f0068",
        "github poldracklab/pydeface : pydeface/data/facemask.nii.gz @ 24919aa57efe77b6e140ab177a0d25a264e5b36c",
        "MIT (pydeface LICENSE.txt)",
    ),
    "mridefacer_head": Source(
        "mridefacer/head_tmpl.nii.gz",
        "50efa8ab043a87e85ca8673a15e6d5e26dbe78c2db5b8d78d7afa8aae3db0c36",
        "github mih/mridefacer : data/head_tmpl.nii.gz @ c4709b44324376a3e3885efe8106a84fb0d43d2f",
        "MIT (mridefacer COPYING, Copyright (c) 2013 Michael Hanke)",
    ),
    "mridefacer_brain": Source(
        "mridefacer/head_tmpl_brain.nii.gz",
        "0f14b42f0aed09933f3b3400d692ba2d6c1feef5d59fa3994a4952c1f938ba82",
        "github mih/mridefacer : data/head_tmpl_brain.nii.gz @ c4709b44324376a3e3885efe8106a84fb0d43d2f",
        "MIT (mridefacer COPYING, Copyright (c) 2013 Michael Hanke)",
    ),
    "mridefacer_mask": Source(
        "mridefacer/face_teeth_ear_mask.nii.gz",
        "a2d64c45170e5725291f594fb7d038ebe2b09cdf99d85376a4f8c94df984084f",
        "github mih/mridefacer : data/face_teeth_ear_mask.nii.gz @ c4709b44324376a3e3885efe8106a84fb0d43d2f",
        "MIT (mridefacer COPYING, Copyright (c) 2013 Michael Hanke)",
    ),
}

PYDEFACE_LICENCE = """\
The MIT License (MIT)

Copyright (c) 2015

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

MRIDEFACER_LICENCE = """\
The MIT License

Copyright (c) 2013 Michael Hanke

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in
all copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN
THE SOFTWARE.
"""


@dataclass
class Grid:
    """A voxel grid: array shape and voxel-to-world (RAS mm) affine.

    Attributes
    ----------
    shape : tuple of int
        Number of voxels along i, j, k.
    affine : numpy.ndarray
        4x4 voxel-to-world affine.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray


@dataclass
class BuildReport:
    """Numbers collected while building, used for logging and the README.

    Attributes
    ----------
    info : dict
        Free-form key/value pairs (str -> str).
    """

    info: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file.

    Parameters
    ----------
    path : pathlib.Path
        File to hash.

    Returns
    -------
    str
        Hex digest.
    """
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sources(shared: Path) -> dict[str, Path]:
    """Check that every source file exists and has the documented sha256.

    Parameters
    ----------
    shared : pathlib.Path
        Directory holding ``pydeface/`` and ``mridefacer/``.

    Returns
    -------
    dict of str to pathlib.Path
        Resolved path of every source, keyed like ``SOURCES``.

    Raises
    ------
    FileNotFoundError
        If a source is missing.
    ValueError
        If a checksum differs from the documented one.
    """
    paths: dict[str, Path] = {}
    for key, src in SOURCES.items():
        path = shared / src.relpath
        if not path.is_file():
            raise FileNotFoundError(f"missing source file {path}")
        digest = sha256_file(path)
        if digest != src.sha256:
            raise ValueError(f"sha256 mismatch for {path}: {digest} != {src.sha256}")
        LOGGER.info("source ok: %s (sha256 %s)", src.relpath, digest)
        paths[key] = path
    return paths


def make_grid(img: nib.spatialimages.SpatialImage, spacing: float) -> Grid:
    """Build an axis-aligned RAS grid that covers the field of view of ``img``.

    The world bounding box of the outer voxel corners of ``img`` is covered by
    an isotropic grid.  The first voxel centre is put on a 0.5 mm lattice so
    that the affine is exactly representable in the NIfTI header.

    Parameters
    ----------
    img : nibabel image
        Image whose field of view is to be covered.
    spacing : float
        Voxel size of the new grid (mm).

    Returns
    -------
    Grid
        The new grid.
    """
    shape = np.asarray(img.shape[:3], dtype=float)
    corners = np.array(
        [[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5) for k in (-0.5, shape[2] - 0.5)]
    )
    world = nib.affines.apply_affine(img.affine, corners)
    low, high = world.min(axis=0), world.max(axis=0)
    first = np.floor((low + spacing / 2.0) * 2.0) / 2.0
    n_vox = np.ceil((high - (first - spacing / 2.0)) / spacing).astype(int)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = first
    return Grid(tuple(int(n) for n in n_vox), affine)


def resample(
    data: np.ndarray,
    src_affine: np.ndarray,
    grid: Grid,
    order: int = 1,
    mode: str = "constant",
    cval: float = 0.0,
) -> np.ndarray:
    """Resample an array onto ``grid`` using the affines (world RAS mm).

    Parameters
    ----------
    data : numpy.ndarray
        Source voxel array.
    src_affine : numpy.ndarray
        Voxel-to-world affine of ``data``.
    grid : Grid
        Target grid.
    order : int, optional
        Spline order (1 = trilinear).
    mode : str, optional
        ``scipy.ndimage.map_coordinates`` boundary mode.
    cval : float, optional
        Value outside the source for ``mode='constant'``.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``grid.shape``.
    """
    vox2vox = np.linalg.inv(src_affine) @ grid.affine
    ijk = np.indices(grid.shape).reshape(3, -1)
    coords = vox2vox[:3, :3] @ ijk + vox2vox[:3, 3:4]
    out = ndi.map_coordinates(np.asarray(data, dtype=np.float64), coords, order=order, mode=mode, cval=cval)
    return out.reshape(grid.shape)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component of a binary mask.

    Parameters
    ----------
    mask : numpy.ndarray
        Binary mask.

    Returns
    -------
    numpy.ndarray
        Boolean mask with only the largest component.
    """
    labels, n_lab = ndi.label(mask, structure=np.ones((3, 3, 3)))
    if n_lab == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def distance_to(mask: np.ndarray, spacing: float) -> np.ndarray:
    """Euclidean distance (mm) of every voxel to the nearest voxel of ``mask``.

    Parameters
    ----------
    mask : numpy.ndarray
        Binary mask (must not be empty).
    spacing : float
        Isotropic voxel size (mm).

    Returns
    -------
    numpy.ndarray
        Distance map, 0 inside ``mask``.
    """
    return ndi.distance_transform_edt(~mask.astype(bool), sampling=spacing)


def write_nifti_gz(data: np.ndarray, grid: Grid, path: Path, dtype: type) -> None:
    """Write a NIfTI-1 file with a clean header and a reproducible gzip stream.

    qform and sform both hold ``grid.affine`` with code 1, ``descrip`` and the
    other free-text fields are empty, scl_slope/scl_inter are 1/0, and the
    gzip header carries no file name and mtime 0 so that identical voxel data
    give identical files.

    Parameters
    ----------
    data : numpy.ndarray
        Voxel data (already in the range of ``dtype``).
    grid : Grid
        Grid of the data.
    path : pathlib.Path
        Output ``.nii.gz`` path.
    dtype : type
        numpy dtype to store.
    """
    arr = np.asarray(data).astype(dtype)
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    img = nib.Nifti1Image(arr, grid.affine, header=header)
    img.set_qform(grid.affine, code=1)
    img.set_sform(grid.affine, code=1)
    hdr = img.header
    hdr["descrip"] = b""
    hdr["aux_file"] = b""
    hdr["intent_name"] = b""
    hdr["db_name"] = b""
    hdr.set_xyzt_units(xyz="mm", t="sec")
    raw = bytearray(img.to_bytes())
    # nibabel writes scl_slope/scl_inter = NaN ("no scaling") for unscaled
    # integer data; store an explicit identity scaling (1, 0) instead
    endian = "<" if hdr.endianness == "<" else ">"
    struct.pack_into(f"{endian}ff", raw, 112, 1.0, 0.0)
    with (
        path.open("wb") as handle,
        gzip.GzipFile(filename="", mode="wb", fileobj=handle, compresslevel=9, mtime=0) as gz_handle,
    ):
        gz_handle.write(raw)
    LOGGER.info("wrote %s (%d bytes)", path, path.stat().st_size)


# --------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------
def build_head(src_path: Path) -> tuple[Grid, np.ndarray]:
    """Resample the pydeface average head to the 2 mm grid.

    A Gaussian anti-aliasing filter (sigma = sqrt(2^2 - z^2) / 2.355 mm per
    axis, z the source voxel size) is applied before trilinear resampling.
    The result is linearly rescaled so that the maximum becomes 255 and stored
    as uint8 (compresses ~40 % better than int16).

    Parameters
    ----------
    src_path : pathlib.Path
        ``mean_reg2mean.nii.gz``.

    Returns
    -------
    grid : Grid
        The output grid.
    head : numpy.ndarray
        uint8 head template on ``grid``.
    """
    img = nib.load(src_path)
    grid = make_grid(img, GRID_MM)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    sigma_mm = np.sqrt(np.clip(GRID_MM**2 - zooms**2, 0.0, None)) / 2.3548
    data = ndi.gaussian_filter(img.get_fdata(dtype=np.float32), sigma_mm / zooms)
    head = np.clip(resample(data, img.affine, grid, order=1), 0.0, None)
    head = np.round(head * (255.0 / head.max())).astype(np.uint8)
    LOGGER.info(
        "grid %s, affine diag %s, origin %s",
        grid.shape,
        np.diag(grid.affine)[:3].tolist(),
        grid.affine[:3, 3].tolist(),
    )
    return grid, head


def pydeface_face(src_path: Path, grid: Grid) -> np.ndarray:
    """Bring the (inverted) pydeface face mask onto ``grid``.

    The mask (1 = keep, 0 = face) is resampled with trilinear interpolation
    using its own affine, extended to the grid edges by nearest-value
    extrapolation, thresholded at 0.5 and inverted; every antero-posterior
    row is then filled from its first face voxel to the anterior grid edge so
    that the air in front of the face is included.

    Parameters
    ----------
    src_path : pathlib.Path
        pydeface ``facemask.nii.gz``.
    grid : Grid
        Output grid.

    Returns
    -------
    numpy.ndarray
        Boolean face mask (True = face).
    """
    img = nib.load(src_path)
    keep = resample(img.get_fdata(), img.affine, grid, order=1, mode="nearest")
    face = keep < 0.5
    # pydeface keeps a thin strip at its anterior border in the upper part of
    # the wedge: close every antero-posterior row from its first face voxel up
    # to the anterior edge of the grid (+j is anterior on the RAS grid)
    idx = np.arange(grid.shape[1])[None, :, None]
    first = np.where(face, idx, grid.shape[1]).min(axis=1)
    return idx >= first[:, None, :]


def load_mridefacer_mask_on_template_grid(mask_path: Path, template_path: Path) -> nib.Nifti1Image:
    """Return the mridefacer 'remove' mask on the voxel grid of ``head_tmpl``.

    ``face_teeth_ear_mask.nii.gz`` has the same dimensions and voxel size as
    ``head_tmpl.nii.gz`` but a different sform (RAI, origin 0, versus LAS,
    origin 0, for the template).  Taken literally the two affines do not even
    overlap in world space (x and z are mirrored about 0), and the mask would
    be upside down.  mridefacer itself uses FSL ``flirt -applyxfm``, which maps
    both files through the same voxel grid because both sforms have a negative
    determinant (FSL radiological convention); its face region then lies
    anterior-inferior and its ear blocks lateral to the head of the template.
    The mask array is therefore put on the template grid voxel for voxel.
    The function checks the anatomical plausibility of that choice.

    Parameters
    ----------
    mask_path : pathlib.Path
        ``face_teeth_ear_mask.nii.gz`` (1 = keep).
    template_path : pathlib.Path
        ``head_tmpl.nii.gz``.

    Returns
    -------
    nibabel.Nifti1Image
        float32 image, 1 = voxel removed by mridefacer, on the template grid.

    Raises
    ------
    ValueError
        If the grids differ or the removal region is not anterior-inferior.
    """
    mask_img = nib.load(mask_path)
    tmpl_img = nib.load(template_path)
    if mask_img.shape != tmpl_img.shape or not np.allclose(
        mask_img.header.get_zooms()[:3], tmpl_img.header.get_zooms()[:3]
    ):
        raise ValueError("mridefacer mask and template grids differ")
    LOGGER.info(
        "mridefacer mask sform %s vs template %s: using template grid voxel-for-voxel",
        "".join(nib.aff2axcodes(mask_img.affine)),
        "".join(nib.aff2axcodes(tmpl_img.affine)),
    )
    remove = (np.asanyarray(mask_img.dataobj) == 0).astype(np.float32)
    head = np.asanyarray(tmpl_img.dataobj) > 0
    # sanity check in template world space: the big (face) removal region must
    # be anterior to and below the centre of the defined head
    lab, _ = ndi.label(remove > 0)
    face_lab = int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
    face_c = nib.affines.apply_affine(tmpl_img.affine, np.argwhere(lab == face_lab).mean(axis=0))
    head_c = nib.affines.apply_affine(tmpl_img.affine, np.argwhere(head).mean(axis=0))
    if not (face_c[1] > head_c[1] and face_c[2] < head_c[2]):
        raise ValueError("mridefacer face region is not anterior-inferior: orientation issue")
    return nib.Nifti1Image(remove, tmpl_img.affine)


def mridefacer_ear_components(remove_img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Keep the two lateral (ear) components of the mridefacer removal mask.

    Parameters
    ----------
    remove_img : nibabel.Nifti1Image
        mridefacer removal mask on its template grid.

    Returns
    -------
    nibabel.Nifti1Image
        float32 image with only the ear components.

    Raises
    ------
    ValueError
        If not exactly two lateral components are found.
    """
    remove = np.asarray(remove_img.dataobj) > 0
    labels, n_lab = ndi.label(remove)
    centre_x = (remove.shape[0] - 1) / 2.0
    face_lab = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    face_y = np.argwhere(labels == face_lab)[:, 1].mean()
    ears = np.zeros(remove.shape, dtype=np.float32)
    n_ears = 0
    for lab in range(1, n_lab + 1):
        idx = np.argwhere(labels == lab)
        lateral = abs(idx[:, 0].mean() - centre_x) > 0.3 * remove.shape[0]
        posterior = idx[:, 1].mean() < face_y
        LOGGER.info(
            "mridefacer component %d: %d voxels, lateral=%s posterior=%s",
            lab,
            len(idx),
            lateral,
            posterior,
        )
        if lateral and posterior and lab != face_lab:
            ears[labels == lab] = 1.0
            n_ears += 1
    if n_ears != 2:
        raise ValueError(f"expected 2 ear components in the mridefacer mask, got {n_ears}")
    return nib.Nifti1Image(ears, remove_img.affine)


class Registration:
    """antspyx registration of the mridefacer template to the 2 mm head.

    Parameters
    ----------
    head : numpy.ndarray
        Fixed image (the 2 mm head template).
    grid : Grid
        Grid of ``head``.
    moving_path : pathlib.Path
        mridefacer ``head_tmpl.nii.gz``.
    workdir : pathlib.Path
        Scratch directory.
    """

    def __init__(self, head: np.ndarray, grid: Grid, moving_path: Path, workdir: Path) -> None:
        import ants

        self._ants = ants
        self.workdir = workdir
        self.grid = grid
        fixed_path = workdir / "fixed.nii.gz"
        nib.save(nib.Nifti1Image(head.astype(np.float32), grid.affine), fixed_path)
        self.fixed = ants.image_read(str(fixed_path))
        self.moving = ants.image_read(str(moving_path))
        moving_img = nib.load(moving_path)
        data = np.asanyarray(moving_img.dataobj)
        # the mridefacer template is blank (0) below some axial level: restrict
        # the metric to the slab where it is defined (minus its lowest slice)
        filled = np.nonzero(data.reshape(-1, data.shape[2]).max(axis=0) > 0)[0]
        defined = np.zeros(data.shape, dtype=np.float32)
        defined[:, :, filled.min() + 1 : filled.max() + 1] = 1.0
        LOGGER.info(
            "mridefacer template defined on slices k=%d..%d of %d",
            filled.min(),
            filled.max(),
            data.shape[2],
        )
        defined_path = workdir / "moving_defined.nii.gz"
        nib.save(nib.Nifti1Image(defined, moving_img.affine), defined_path)
        self.moving_mask = ants.image_read(str(defined_path))
        self.transforms: list[str] = []

    def run(self) -> dict[str, float]:
        """Run affine, then SyN initialised by the affine; keep SyN if better.

        Returns
        -------
        dict of str to float
            Correlation of the warped template with the head (inside the
            defined slab) for ``affine`` and ``syn``.
        """
        ants = self._ants
        # antspyx 0.6.3 has no random_seed argument: it reads this module
        # variable and passes --random-seed to antsRegistration.  We do not
        # call ants.set_ants_deterministic(), which would force 1 thread.
        ants.config._random_seed = RANDOM_SEED
        common = {
            "moving_mask": self.moving_mask,
            "mask_all_stages": True,
        }
        aff = ants.registration(
            self.fixed,
            self.moving,
            type_of_transform="Affine",
            outprefix=str(self.workdir / "aff_"),
            **common,
        )
        syn = ants.registration(
            self.fixed,
            self.moving,
            type_of_transform="SyNOnly",
            initial_transform=aff["fwdtransforms"],
            outprefix=str(self.workdir / "syn_"),
            **common,
        )
        scores = {
            "affine": self._score(aff["fwdtransforms"]),
            "syn": self._score(syn["fwdtransforms"]),
        }
        self.transforms = syn["fwdtransforms"] if scores["syn"] >= scores["affine"] else (aff["fwdtransforms"])
        LOGGER.info(
            "registration correlation: affine %.4f, affine+SyN %.4f -> using %s",
            scores["affine"],
            scores["syn"],
            "SyN" if self.transforms is syn["fwdtransforms"] else "affine",
        )
        return scores

    def _score(self, transforms: list[str]) -> float:
        """Pearson correlation of warped template and head inside the moving slab.

        Parameters
        ----------
        transforms : list of str
            Forward transforms (moving to fixed).

        Returns
        -------
        float
            Correlation coefficient.
        """
        ants = self._ants
        warped = ants.apply_transforms(self.fixed, self.moving, transforms).numpy()
        inside = (
            ants.apply_transforms(self.fixed, self.moving_mask, transforms, interpolator="nearestNeighbor").numpy() > 0
        )
        return float(np.corrcoef(warped[inside], self.fixed.numpy()[inside])[0, 1])

    def warp(self, img: nib.Nifti1Image, name: str) -> np.ndarray:
        """Warp an image given on the mridefacer grid to the 2 mm grid (trilinear).

        Parameters
        ----------
        img : nibabel.Nifti1Image
            Image on the mridefacer template grid.
        name : str
            Scratch file stem.

        Returns
        -------
        numpy.ndarray
            Warped float array of shape ``grid.shape``.
        """
        ants = self._ants
        path = self.workdir / f"{name}.nii.gz"
        nib.save(img, path)
        out = ants.apply_transforms(
            self.fixed, ants.image_read(str(path)), self.transforms, interpolator="linear"
        ).numpy()
        if out.shape != self.grid.shape:
            raise ValueError("unexpected warped shape")
        return np.asarray(out, dtype=np.float64)


def build_brain(warped_brain: np.ndarray) -> np.ndarray:
    """Binarise the warped mridefacer brain, fill holes, keep largest component.

    Parameters
    ----------
    warped_brain : numpy.ndarray
        Warped ``head_tmpl_brain > 0`` indicator (trilinear values in 0..1).

    Returns
    -------
    numpy.ndarray
        Boolean brain mask.
    """
    brain = warped_brain >= 0.5
    brain = ndi.binary_fill_holes(brain)
    brain = largest_component(brain)
    # also fill holes that are only closed within axial/coronal/sagittal planes
    for axis in range(3):
        brain = np.stack([ndi.binary_fill_holes(sl) for sl in np.moveaxis(brain, axis, 0)], axis=0)
        brain = np.moveaxis(brain, 0, axis)
    return brain


def build_face(face_src: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Derive the face mask from the pydeface face region.

    Steps: raise the slanted upper boundary by ``EYE_EXTENSION_MM`` (union
    with a copy shifted upwards) so the eyes, eyelids and brows are covered; drop
    voxels closer than ``FACE_BRAIN_MARGIN_MM`` to the brain; keep the largest
    component and fill holes.

    Parameters
    ----------
    face_src : numpy.ndarray
        Inverted pydeface mask on the grid (True = face).
    brain : numpy.ndarray
        Brain mask on the grid.

    Returns
    -------
    numpy.ndarray
        Boolean face mask.
    """
    shift = round(EYE_EXTENSION_MM / GRID_MM)
    face = face_src.copy()
    if shift > 0:
        face[:, :, shift:] |= face_src[:, :, :-shift]
    face &= distance_to(brain, GRID_MM) > FACE_BRAIN_MARGIN_MM
    face = largest_component(face)
    return ndi.binary_fill_holes(face)


def build_ears(warped_ears: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Clean the warped mridefacer ear blocks.

    Steps: threshold at 0.5; extend each block laterally to the edge of the
    grid (so air/noise beside the pinna is included); drop voxels closer than
    ``EAR_BRAIN_MARGIN_MM`` to the brain; keep the largest component on each
    side.

    Parameters
    ----------
    warped_ears : numpy.ndarray
        Warped ear-block indicator (trilinear values in 0..1).
    brain : numpy.ndarray
        Brain mask on the grid.

    Returns
    -------
    numpy.ndarray
        Boolean ear mask.

    Raises
    ------
    ValueError
        If one side has no ear voxels left.
    """
    ears = warped_ears >= 0.5
    n_i = ears.shape[0]
    mid = n_i // 2
    out = np.zeros_like(ears)
    # i < mid is the left side of the head, i >= mid the right side (RAS)
    for side in (slice(0, mid), slice(mid, n_i)):
        part = np.zeros_like(ears)
        part[side] = ears[side]
        has = part.any(axis=0)
        idx = np.arange(n_i)[:, None, None]
        if side.start == 0:
            inner = np.where(part, idx, -1).max(axis=0)
            part |= (idx <= inner[None]) & has[None]
        else:
            inner = np.where(part, idx, n_i).min(axis=0)
            part |= (idx >= inner[None]) & has[None]
        part &= distance_to(brain, GRID_MM) > EAR_BRAIN_MARGIN_MM
        part = largest_component(part)
        if not part.any():
            raise ValueError("no ear voxels left on one side")
        out |= part
    return out


# --------------------------------------------------------------------------
# QC and documentation
# --------------------------------------------------------------------------
def qc_numbers(grid: Grid, face: np.ndarray, ears: np.ndarray, brain: np.ndarray) -> dict:
    """Compute the QC numbers reported in the log and the README.

    Parameters
    ----------
    grid : Grid
        Output grid.
    face, ears, brain : numpy.ndarray
        Boolean masks.

    Returns
    -------
    dict
        Voxel counts, overlaps with the dilated brain and minimum distances.
    """
    dist = distance_to(brain, GRID_MM)
    dilated = dist <= QC_BRAIN_DILATION_MM
    return {
        "grid_shape": grid.shape,
        "origin_mm": tuple(float(v) for v in grid.affine[:3, 3]),
        "voxel_mm": GRID_MM,
        "n_face": int(face.sum()),
        "n_ear": int(ears.sum()),
        "n_brain": int(brain.sum()),
        "face_x_brain_dil5": int((face & dilated).sum()),
        "ear_x_brain_dil5": int((ears & dilated).sum()),
        "face_x_ear": int((face & ears).sum()),
        "min_dist_face_brain_mm": float(dist[face].min()),
        "min_dist_ear_brain_mm": float(dist[ears].min()),
    }


def write_qc_png(
    path: Path,
    grid: Grid,
    head: np.ndarray,
    face: np.ndarray,
    ears: np.ndarray,
    brain: np.ndarray,
) -> None:
    """Write a QC figure with mask contours over the head template.

    Panels: mid-sagittal, axial through the eyes, axial through the ears,
    coronal through the ears, coronal through the eyes.  Face = red,
    ears = blue, brain = green.

    Parameters
    ----------
    path : pathlib.Path
        Output PNG.
    grid : Grid
        Grid of the arrays.
    head, face, ears, brain : numpy.ndarray
        Arrays on the common grid.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mid_i = head.shape[0] // 2
    ear_j, ear_k = (round(float(v)) for v in np.argwhere(ears)[:, 1:].mean(axis=0))
    eye = nib.affines.apply_affine(np.linalg.inv(grid.affine), QC_EYE_RAS_MM)
    eye_j, eye_k = round(float(eye[1])), round(float(eye[2]))
    panels = [
        (f"mid-sagittal i={mid_i}", np.s_[mid_i, :, :]),
        (f"axial through eyes k={eye_k}", np.s_[:, :, eye_k]),
        (f"axial through ears k={ear_k}", np.s_[:, :, ear_k]),
        (f"coronal through ears j={ear_j}", np.s_[:, ear_j, :]),
        (f"coronal through eyes j={eye_j}", np.s_[:, eye_j, :]),
    ]
    vmax = float(np.percentile(head, 99.5))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 6.5))
    for ax, (title, sl) in zip(axes, panels, strict=True):
        ax.imshow(head[sl].T, origin="lower", cmap="gray", vmax=vmax, interpolation="nearest")
        for mask, colour in ((face, "red"), (ears, "blue"), (brain, "lime")):
            if mask[sl].any():
                ax.contour(mask[sl].T.astype(float), levels=[0.5], colors=colour, linewidths=1.2)
        ax.set_title(title)
        ax.set_aspect("equal")
    fig.suptitle(
        "bidsdeface templates: face (red), ears (blue), brain (green); RAS voxel "
        "indices, 2 mm; axial/coronal: image right = subject right"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    LOGGER.info("wrote QC figure %s", path)


def write_docs(out: Path, numbers: dict, reg_scores: dict[str, float]) -> None:
    """Write ``SHA256SUMS``, ``README.md`` and ``LICENSES.md``.

    Parameters
    ----------
    out : pathlib.Path
        Output directory (already holding the NIfTI files).
    numbers : dict
        QC numbers from :func:`qc_numbers`.
    reg_scores : dict of str to float
        Registration correlations.
    """
    sums = {name: sha256_file(out / name) for name in OUTPUT_NAMES}
    (out / "SHA256SUMS").write_text("".join(f"{sums[n]}  {n}\n" for n in OUTPUT_NAMES))

    src_rows = "\n".join(f"| `{s.relpath}` | {s.origin} | {s.licence} | `{s.sha256}` |" for s in SOURCES.values())
    out_rows = "\n".join(f"| `{n}` | {(out / n).stat().st_size} | `{sums[n]}` |" for n in OUTPUT_NAMES)
    shape = "x".join(str(v) for v in numbers["grid_shape"])
    origin = "(" + ", ".join(f"{v:g}" for v in numbers["origin_mm"]) + ")"
    readme = f"""# bidsdeface templates

Head template and masks used by bidsdeface to locate the face, the ears and
the brain.  All four images share one grid: {shape} voxels of
{GRID_MM:g} mm, RAS, first voxel centre at {origin} mm, identical qform/sform
(code 1), uint8, scl_slope 1 / scl_inter 0, empty descrip.

| file | content |
| --- | --- |
| `head.nii.gz` | T1w average head with face, intensities rescaled to 0..255 |
| `face_mask.nii.gz` | 1 = face (eyes, nose, cheeks, lips, chin) and the air in front of it |
| `ear_mask.nii.gz` | 1 = outer ears (pinnae) with a margin, extended laterally to the grid edge |
| `brain_mask.nii.gz` | 1 = brain (down to about the foramen magnum), no margin |

Rebuild (from the repository root, needs nibabel, numpy, scipy, antspyx;
matplotlib only for `--qc`):

    python scripts/build_templates.py --shared ../shared/data/templates --out templates

Add `--threads 1` for a bit-identical rebuild (see below) and `--qc FILE.png`
for a QC figure.

## Sources

Origins, licences and sha256 as recorded in `shared/data/SOURCES.md`; the
script refuses to run if a checksum differs.

| file (under `--shared`) | origin | licence | sha256 |
| --- | --- | --- | --- |
{src_rows}

`pydeface/mean_reg2mean.nii.gz` and `pydeface/facemask.nii.gz` are also
byte-identical to the copies in the pydeface 2.1.0 wheel on PyPI.  The licence
texts are in `LICENSES.md`.

## How each output was derived

1. **Grid.** The world bounding box of the outer voxel corners of
   `mean_reg2mean.nii.gz` (1 x 0.977 x 0.977 mm, slightly oblique) is covered
   by an axis-aligned {GRID_MM:g} mm RAS grid; the first voxel centre is put on
   a 0.5 mm lattice.
2. **head.nii.gz.** `mean_reg2mean.nii.gz` is smoothed with a Gaussian
   anti-aliasing filter (sigma = sqrt(2^2 - voxel^2)/2.355 mm per axis),
   resampled trilinearly with the affines, clipped at 0, scaled so that its
   maximum is 255 and stored as uint8.
3. **Registration.** mridefacer `head_tmpl.nii.gz` (3 mm) is registered to
   `head.nii.gz` with antspyx (`antsRegistration`, seed {RANDOM_SEED}):
   affine (Mattes MI, centre-of-mass initialisation), then SyN initialised
   by the affine.  The mridefacer template is blank below an axial level, so
   the metric is restricted (moving mask, all stages) to the slab where it is
   defined.  Correlation of warped template and head in that slab: affine
   {reg_scores["affine"]:.4f}, affine+SyN {reg_scores["syn"]:.4f}; the better
   one is used.
4. **brain_mask.nii.gz.** `head_tmpl_brain.nii.gz > 0` is warped (trilinear),
   thresholded at 0.5, holes are filled (3-D, then slice-wise along each
   axis), and the largest 26-connected component is kept.  The brain mask
   ends where the mridefacer template ends, which is about the level of the
   foramen magnum.
5. **face_mask.nii.gz.** pydeface `facemask.nii.gz` (1 = keep) is resampled
   trilinearly with its own affine (nearest-value extrapolation, so the
   region reaches the grid edge), thresholded at 0.5 and inverted; each
   antero-posterior row is filled from its first face voxel to the anterior
   edge of the grid (pydeface leaves a thin strip there).  pydeface's
   region stops half-way up the eyes, so its slanted upper boundary is raised
   by {EYE_EXTENSION_MM:g} mm (union with a copy shifted up) to cover the eyes,
   eyelids and brows, but not the forehead.  Voxels closer than
   {FACE_BRAIN_MARGIN_MM:g} mm to the brain mask are removed, the largest
   component is kept and holes are filled.
6. **ear_mask.nii.gz.** In mridefacer `face_teeth_ear_mask.nii.gz`
   (1 = keep) the removed region (0) has three connected components: the face
   and teeth, and one block over each ear; the two lateral components
   posterior to the face are kept.  Note: this file's sform (RAI) differs from
   that of `head_tmpl.nii.gz` (LAS), both with origin 0, so taken literally
   the two do not overlap and the mask would be upside down; mridefacer uses
   it through FSL `flirt`, which maps both through the same voxel grid (both
   determinants negative).  The mask array is therefore placed on the
   `head_tmpl` grid voxel for voxel (the script checks that the face
   component then lies anterior-inferior).  The ear blocks are warped with the
   transform above (trilinear, threshold 0.5), extended laterally to the grid
   edge, voxels closer than {EAR_BRAIN_MARGIN_MM:g} mm to the brain mask are
   removed, and the largest component on each side is kept.

## Checks (from the build)

| quantity | value |
| --- | --- |
| grid | {shape} x {GRID_MM:g} mm |
| face voxels | {numbers["n_face"]} |
| ear voxels | {numbers["n_ear"]} |
| brain voxels | {numbers["n_brain"]} |
| face within {QC_BRAIN_DILATION_MM:g} mm of brain | {numbers["face_x_brain_dil5"]} |
| ears within {QC_BRAIN_DILATION_MM:g} mm of brain | {numbers["ear_x_brain_dil5"]} |
| face and ears overlapping | {numbers["face_x_ear"]} |
| min distance face to brain | {numbers["min_dist_face_brain_mm"]:.2f} mm |
| min distance ears to brain | {numbers["min_dist_ear_brain_mm"]:.2f} mm |

## Output checksums

`head.nii.gz` and the gzip streams are deterministic.  The ANTs registration
is multi-threaded by default, so a default rebuild may differ in a few
brain/ear voxels (about 0.1 %); with `--threads 1` (same run time on a 2-core
machine) the build was bit-identical between runs with antspyx 0.6.3.  The
files here were built with `--threads 1`.  `SHA256SUMS` always matches the
files in this folder.

| file | bytes | sha256 |
| --- | --- | --- |
{out_rows}

## Licences

- pydeface: MIT.  The LICENSE.txt shipped in pydeface 2.1.0 reads
  "Copyright (c) 2015" without naming a holder; the package is maintained by
  Russ Poldrack (Poldrack Lab, poldracklab/pydeface).
- mridefacer: MIT, Copyright (c) 2013 Michael Hanke.

Both texts are reproduced in `LICENSES.md`; the files in this folder are
derived from both sources, so both notices apply to them.
"""
    (out / "README.md").write_text(readme)
    licences = (
        "# Licences of the template sources\n\n"
        "## pydeface (https://github.com/poldracklab/pydeface)\n\n"
        "Text of `LICENSE.txt` as shipped in the pydeface 2.1.0 wheel (the file names\n"
        "no copyright holder; pydeface is maintained by Russ Poldrack, Poldrack Lab).\n\n"
        f"```\n{PYDEFACE_LICENCE}```\n\n"
        "## mridefacer (https://github.com/mih/mridefacer)\n\n"
        "Text from mridefacer `COPYING`.\n\n"
        f"```\n{MRIDEFACER_LICENCE}```\n"
    )
    (out / "LICENSES.md").write_text(licences)
    LOGGER.info("wrote SHA256SUMS, README.md, LICENSES.md")


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace
        Parsed arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shared",
        type=Path,
        required=True,
        help="directory holding pydeface/ and mridefacer/ sources",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--qc", type=Path, default=None, help="optional QC PNG to write")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ITK threads for ANTs (default: ITK's own default)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Build all template files.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments.

    Returns
    -------
    int
        Exit code.
    """
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    if args.threads is not None:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    start = time.monotonic()
    paths = verify_sources(args.shared)
    args.out.mkdir(parents=True, exist_ok=True)

    grid, head = build_head(paths["pydeface_head"])
    face_src = pydeface_face(paths["pydeface_facemask"], grid)

    with tempfile.TemporaryDirectory(prefix="build_templates_") as tmp:
        reg = Registration(head, grid, paths["mridefacer_head"], Path(tmp))
        reg_scores = reg.run()
        brain_img = nib.load(paths["mridefacer_brain"])
        brain_ind = (np.asanyarray(brain_img.dataobj) > 0).astype(np.float32)
        warped_brain = reg.warp(nib.Nifti1Image(brain_ind, brain_img.affine), "brain")
        remove_img = load_mridefacer_mask_on_template_grid(paths["mridefacer_mask"], paths["mridefacer_head"])
        warped_ears = reg.warp(mridefacer_ear_components(remove_img), "ears")

    brain = build_brain(warped_brain)
    face = build_face(face_src, brain)
    ears = build_ears(warped_ears, brain)
    ears &= ~face

    write_nifti_gz(head, grid, args.out / "head.nii.gz", np.uint8)
    write_nifti_gz(face, grid, args.out / "face_mask.nii.gz", np.uint8)
    write_nifti_gz(ears, grid, args.out / "ear_mask.nii.gz", np.uint8)
    write_nifti_gz(brain, grid, args.out / "brain_mask.nii.gz", np.uint8)

    numbers = qc_numbers(grid, face, ears, brain)
    for key, value in numbers.items():
        LOGGER.info("QC %s = %s", key, value)
    write_docs(args.out, numbers, reg_scores)
    if args.qc is not None:
        write_qc_png(args.qc, grid, head, face, ears, brain)
    LOGGER.info("done in %.1f s", time.monotonic() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
