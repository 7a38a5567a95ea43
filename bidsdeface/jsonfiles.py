"""Read JSON objects with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import BidsDefaceError


def read_json_object(path: Path, error: type[BidsDefaceError]) -> dict[str, Any]:
    """Return the JSON object in ``path``, or raise ``error`` with a one-line reason."""
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: unreadable JSON ({exc})") from exc
    if not isinstance(content, dict):
        raise error(f"{path}: not a JSON object")
    return content
