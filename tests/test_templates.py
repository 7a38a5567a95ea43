"""Bundled templates: checksums, one grid, sensible masks, loadable from a built wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bidsdeface.templates import FACE_MODEL, TEMPLATE_FILES, TemplateError, load_template, verify_templates
from bidsdeface.volumes import dilate_mm

from .conftest import REPO


def test_load_and_masks_are_anatomical() -> None:
    template = load_template()
    zooms = tuple(float(z) for z in np.linalg.norm(template.affine[:3, :3], axis=0))
    assert template.face.sum() > 10000 and template.brain.sum() > 100000 and template.ears.sum() > 1000
    protected = dilate_mm(template.brain, zooms, 5.0)
    assert not np.any(template.face & protected)
    assert not np.any(template.ears & protected)
    # the face is in front of (anterior to) the brain's centre
    face_y = np.nonzero(template.face)[1].mean()
    brain_y = np.nonzero(template.brain)[1].mean()
    assert face_y > brain_y


def test_checksum_mismatch_detected(tmp_path: Path) -> None:
    source = REPO / "templates"
    for name in (*TEMPLATE_FILES, "SHA256SUMS"):
        (tmp_path / name).write_bytes((source / name).read_bytes())
    verify_templates(tmp_path)
    (tmp_path / "face_mask.nii.gz").write_bytes(b"tampered")
    with pytest.raises(TemplateError):
        verify_templates(tmp_path)


def test_templates_load_from_built_wheel(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("bidsdeface-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for name in TEMPLATE_FILES:
        assert f"bidsdeface/templates/{name}" in names
    assert f"bidsdeface/models/{FACE_MODEL}" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = (
        "import bidsdeface.templates as t; d = t.template_dir(); "
        f"assert str(d).startswith({str(target)!r}), d; t.load_template(); "
        f"assert str(t.face_model_path()).startswith({str(target)!r}); print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(target), "PATH": ""},
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.stdout.strip() == "ok", result.stderr
