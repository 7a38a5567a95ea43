"""QC figures: views, surface renders, obscuring and PNG drawing, on a synthetic head and on every real head."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bidsdeface.figures import (
    FACE_VIEWS,
    FIGURE_FACE_BLOCK_PX,
    OBSCURE_BLOCK_MM,
    VIEW_MM,
    TemplateViews,
    depth_map,
    face_silhouette,
    obscured,
    obscured_picture,
    png_bytes,
    scan_figures,
    smoothed,
    surface_renders,
    view_grid,
)
from bidsdeface.forks import ForkedCall
from bidsdeface.qc import LIMITS
from bidsdeface.templates import Template

from .conftest import BLUR_HEADS, FACE_ABSENT_HEADS, HEADS, needs_shared

PNG_CHUNKS = {"IHDR", "PLTE", "IDAT", "IEND", "tRNS"}
NOSE = (slice(26, 31), slice(48, 53), slice(24, 31))  # x, y (anterior), z


def png_chunk_types(data: bytes) -> list[str]:
    """The chunk types of a PNG file, in order."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    types, offset = [], 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        types.append(kind.decode("ascii"))
        offset += 12 + length
    return types


def ball_with_a_nose(size: int = 56) -> Template:
    """A template of VIEW_MM voxels: a ball (the head) with a nose in front, a face region, a brain inside."""
    index = np.indices((size,) * 3)
    radius = np.sqrt(((index - (size - 1) / 2) ** 2).sum(axis=0))
    head = (radius < 20).astype(np.float32)
    head[NOSE] = 1.0
    face = np.zeros(head.shape, bool)
    face[14:42, 40:, 16:36] = True
    voxels = np.diag([VIEW_MM] * 3 + [1.0])
    return Template(head=head, face=face, ears=np.zeros_like(face), brain=radius < 12, affine=voxels)


def synthetic_views(template: Template) -> TemplateViews:
    """The template head before and after its face region was zeroed, on its own view grid."""
    grid = view_grid(template)
    assert np.allclose(grid.zoom, 1.0)  # the template's voxels are the grid's: cut out the grid's box
    box = tuple(slice(int(start), int(start) + count) for start, count in zip(grid.start, grid.shape, strict=True))
    head, face = template.head[box], template.face[box]
    removed = face & (head > 0)
    after = np.where(removed, 0.0, head).astype(np.float32)
    return TemplateViews(before=head, after=after, removed=removed, surface_threshold=0.5, grid=grid)


def test_png_has_no_text_or_metadata_chunks() -> None:
    data = png_bytes(Image.new("RGB", (20, 10), (200, 0, 0)))
    assert set(png_chunk_types(data)) <= {"IHDR", "PLTE", "IDAT", "IEND", "tRNS"}


def test_png_of_a_labelled_figure_has_no_text_chunks() -> None:
    """Labels are drawn into the pixels, never written as PNG text."""
    template = ball_with_a_nose()
    views = synthetic_views(template)
    figures = scan_figures(views, surface_renders(views), template)
    for data in (figures.mosaic, figures.render):
        assert set(png_chunk_types(data)) <= PNG_CHUNKS
        assert b"before" not in data and b"after" not in data


def test_obscured_blocks_only_the_region() -> None:
    block = max(1, round(OBSCURE_BLOCK_MM / VIEW_MM))
    volume = np.random.default_rng(0).normal(size=(4 * block,) * 3).astype(np.float32)
    region = np.zeros(volume.shape, bool)
    region[block : 3 * block, block : 3 * block, block : 3 * block] = True  # 2 x 2 x 2 blocks
    kept = volume.copy()
    shown = obscured(volume, region)
    assert np.array_equal(volume, kept)  # the input is not changed
    assert np.array_equal(shown[~region], volume[~region])
    assert len(np.unique(shown[region])) <= 8  # the blocks' means, not the voxels
    assert np.array_equal(obscured(volume, np.zeros_like(region)), volume)


def test_obscured_picture_changes_pixels_only_near_the_region() -> None:
    picture = np.random.default_rng(1).integers(0, 256, size=(60, 60), dtype=np.uint8)
    where = np.zeros(picture.shape, bool)
    where[24:36, 24:36] = True
    shown = obscured_picture(picture, where)
    reach = FIGURE_FACE_BLOCK_PX // 2
    near = np.zeros_like(where)
    near[24 - reach : 36 + reach, 24 - reach : 36 + reach] = True
    assert shown.dtype == picture.dtype
    assert np.array_equal(shown[~near], picture[~near])
    assert not np.array_equal(shown[where], picture[where])


@pytest.mark.parametrize(("name", "yaw", "pitch"), FACE_VIEWS)
def test_face_silhouette_of_a_centred_region_is_centred(name: str, yaw: float, pitch: float) -> None:
    region = np.zeros((41, 41, 41), bool)
    region[14:27, 14:27, 14:27] = True
    for direction in ("front", "side") if yaw == pitch == 0 else ("front",):
        silhouette = face_silhouette(region, direction, yaw, pitch)
        assert silhouette.shape == (41, 41)
        assert np.allclose(np.argwhere(silhouette).mean(axis=0), (20.0, 20.0), atol=0.5)


def test_front_depth_map_meets_the_nose_first() -> None:
    template = ball_with_a_nose()
    depth = depth_map(smoothed(template.head), 0.5, "front")  # rows x, columns z
    nearest = np.unravel_index(np.nanargmin(depth), depth.shape)
    assert NOSE[0].start <= nearest[0] < NOSE[0].stop and NOSE[2].start <= nearest[1] < NOSE[2].stop
    assert np.isnan(depth[0, 0])  # a corner's line of sight misses the head


def test_scan_figures_of_a_synthetic_head() -> None:
    template = ball_with_a_nose()
    views = synthetic_views(template)
    renders = surface_renders(views)
    names = [name for name, _, _ in FACE_VIEWS] + ["side"]
    assert set(renders) == {(stage, name) for stage in ("before", "after") for name in names}
    figures = scan_figures(views, renders, template)
    assert figures.brain is None
    render = Image.open(io.BytesIO(figures.render))
    x, y, z = views.grid.shape
    assert render.size == (x + y, 2 * z)  # before and after; front (x by z) beside side (y by z)
    mosaic = Image.open(io.BytesIO(figures.mosaic))
    assert mosaic.mode == "P" and np.asarray(mosaic.convert("L")).std() > 10
    with_brain = scan_figures(views, renders, template, Image.new("RGB", (8, 8)))
    assert with_brain.brain is not None and set(png_chunk_types(with_brain.brain)) <= PNG_CHUNKS
    assert (with_brain.mosaic, with_brain.render) == (figures.mosaic, figures.render)


@needs_shared
@pytest.mark.slow
def test_rendered_figures_never_show_a_face(blurred_run: dict) -> None:
    """Every surface render of both runs, as written, is shown to both detectors: no face in any.

    The "before" renders show the face region in blocks: pixelated intensities alone
    would keep the face's surface, which a detector reads.
    """
    pictures = sorted([*blurred_run["out"].rglob("*_render.png"), *blurred_run["blurred"].rglob("*_render.png")])
    assert len(pictures) == len(HEADS) + len(BLUR_HEADS) + len(FACE_ABSENT_HEADS)
    # dlib runs in a forked child, as in bidsdeface (see bidsdeface.faces): this process forks later
    found = ForkedCall(_faces_in, pictures).result()
    assert found == {}, found


def _faces_in(pictures: list[Path]) -> dict[str, tuple[int, float]]:
    """Return, for each picture in which either detector finds a face, the HOG count and the best CNN score."""
    from bidsdeface.faces import face_detectors

    detectors = face_detectors()
    found = {}
    for path in pictures:
        grey = np.asarray(Image.open(path).convert("L"))
        _, hog_scores, _ = detectors.hog.run(grey, 1, LIMITS.face_score)
        cnn = max([d.confidence for d in detectors.cnn(grey, 0)], default=0.0)
        if len(hog_scores) or cnn >= LIMITS.face_cnn_score:
            found[path.name] = (len(hog_scores), cnn)
    return found
