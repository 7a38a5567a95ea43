"""Draw text into real image pixels, as a workstation burns in names, dates and IDs.

Fonts: Pillow's own bitmap font and its bundled scalable font (always there), and Debian's
DejaVu Sans and Liberation Mono when installed. Text is white on the black air, or black on
a white banner (inverted), at a corner or an edge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SYSTEM_FONTS = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf"),
)
LINES = ("DOE^JOHN  MRN 4471823", "DOB 1961-04-17  2024-03-15 09:41")
PLACES = ("top-left", "bottom-right", "top-right", "bottom-left")


def fonts(size: int) -> list[ImageFont.ImageFont]:
    """Pillow's bitmap font, its scalable font at ``size``, and the system fonts present."""
    found = [ImageFont.load_default(), ImageFont.load_default(size=size)]
    found += [ImageFont.truetype(str(path), size) for path in SYSTEM_FONTS if path.is_file()]
    return found


def draw_text(
    pixels: np.ndarray, font: ImageFont.ImageFont, place: str = "top-left", inverted: bool = False, bright: int = 0
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Return ``pixels`` with :data:`LINES` drawn at ``place``, and the drawn box (top, bottom, left, right).

    ``bright`` is the value of white (default: the frame's maximum).
    """
    white = int(bright or pixels.max())
    rows, columns = pixels.shape
    canvas = Image.new("L", (columns, rows), 0)
    ink = Image.new("L", (columns, rows), 0)
    pen, mark = ImageDraw.Draw(canvas), ImageDraw.Draw(ink)
    text = "\n".join(LINES)
    left, top, right, bottom = pen.multiline_textbbox((0, 0), text, font=font)
    width, height = right - left + 6, bottom - top + 6
    x = 3 if "left" in place else columns - width - 3
    y = 3 if "top" in place else rows - height - 3
    box = (y, y + height, x, x + width)
    mark.rectangle((x, y, x + width - 1, y + height - 1), fill=255)
    if inverted:
        pen.rectangle((x, y, x + width - 1, y + height - 1), fill=255)
        pen.multiline_text((x + 3 - left, y + 3 - top), text, font=font, fill=0)
    else:
        pen.multiline_text((x + 3 - left, y + 3 - top), text, font=font, fill=255)
    drawn = pixels.copy()
    region = np.asarray(ink) > 0
    values = (np.asarray(canvas, dtype=np.float64) / 255.0 * white).astype(pixels.dtype)
    if inverted:
        drawn[region] = values[region]
    else:
        drawn[region] = np.maximum(pixels[region], values[region])
    return drawn, box
