"""Search every byte of an output tree for planted identifiers.

Every file is read raw and, where it is compressed, decompressed too (gzip
images, PNG text chunks), so identifiers hidden in NIfTI headers, gzip headers
or figure metadata are found. New kinds of output are covered as soon as they
are written, because the whole tree is walked.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_text(data: bytes) -> Iterator[bytes]:
    """Yield the text of a PNG's tEXt, zTXt and iTXt chunks (decompressed)."""
    offset = len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"tEXt":
            yield body
        elif kind == b"zTXt":
            keyword, _, rest = body.partition(b"\0")
            yield keyword + zlib.decompress(rest[1:])
        elif kind == b"iTXt":
            keyword, _, rest = body.partition(b"\0")
            compressed, text = rest[0], rest[2:].split(b"\0", 2)[-1]
            yield keyword + (zlib.decompress(text) if compressed else text)


def readable_forms(path: Path) -> Iterator[bytes]:
    """Yield a file's bytes and every decompressed form of them."""
    data = path.read_bytes()
    yield data
    if data[:2] == b"\x1f\x8b":
        yield gzip.decompress(data)
    if data.startswith(PNG_SIGNATURE):
        yield from _png_text(data)


def find_leaks(root: Path, markers: Iterable[str], texts: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """Return ``(where, marker)`` for every marker found (case-insensitive) below ``root`` or in ``texts``.

    Parameters
    ----------
    root : Path
        The output tree: file names and every byte of every file are searched.
    markers : iterable of str
        Identifying strings that must not appear.
    texts : dict, optional
        Other text to search (name -> content), such as captured logs.
    """
    needles = {marker.lower(): marker for marker in markers}
    hits = set()
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        hits |= {(f"file name {name}", marker) for needle, marker in needles.items() if needle in name.lower()}
        if path.is_file():
            for form in readable_forms(path):
                lowered = form.lower()
                hits |= {(name, marker) for needle, marker in needles.items() if needle.encode() in lowered}
    for label, text in (texts or {}).items():
        hits |= {(label, marker) for needle, marker in needles.items() if needle in text.lower()}
    return sorted(hits)
