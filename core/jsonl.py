"""JSON Lines input files (batch manifests, dataset metadata): one JSON object per non-empty line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from core.errors import InvalidParameterError

SHOWN_CHARS = 80  # how much of a bad line an error message quotes


def json_objects(text: str, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line of `text`; a bad line is an error naming `name` and the line."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidParameterError(f"{name} line {number} is not JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise InvalidParameterError(f"{name} line {number} should be a JSON object but is {line[:SHOWN_CHARS]!r}")
        yield number, record
