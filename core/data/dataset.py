"""The synthetic dataset on disk: a Hugging Face `imagefolder` (images + metadata.jsonl) that `datasets` loads.

Each metadata.jsonl line names its images with the `<column>_file_name` convention of `imagefolder`, which
`datasets` turns into image columns of the same name without the suffix, so one row carries four images:

    {"input_image_file_name": "images/00000_cat_k0_input.png", "edit_prompt": "...",
     "edited_image_file_name": "images/00000_cat_photo.png", "albedo_file_name": "images/00000_cat_albedo.png",
     "matte_file_name": "images/00000_cat_matte.png", "light": "{...}", "source": "/photos/cat.jpg"}

`datasets.load_dataset("imagefolder", data_dir=DIR)` gives a `train` split with the columns input_image,
edit_prompt, edited_image, albedo, matte (images) and light, source (text).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

METADATA = "metadata.jsonl"
IMAGES_DIR = "images"
FILE_SUFFIX = "_file_name"
IMAGE_COLUMNS = ("input_image", "edited_image", "albedo", "matte")
COLUMN_ORDER = ("input_image", "edit_prompt", "edited_image", "albedo", "matte", "light", "source")


def write_png(path: Path, image: np.ndarray) -> Path:
    """Save uint8 RGB or grey `image` as PNG atomically (temp name in the same folder, then os.replace)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_bytes(buffer.getvalue())
    os.replace(temp, path)
    return path


def metadata_row(files: dict[str, str], edit_prompt: str, light: dict, source: str) -> dict:
    """One metadata.jsonl object: image columns as `<name>_file_name` (relative paths), light as JSON text."""
    row: dict = {}
    for column in COLUMN_ORDER:
        if column in IMAGE_COLUMNS:
            row[column + FILE_SUFFIX] = files[column]
        elif column == "edit_prompt":
            row[column] = edit_prompt
        elif column == "light":
            row[column] = json.dumps(light, sort_keys=True)
        else:
            row[column] = source
    return row


def write_metadata(out: Path, records: list[dict], rows: Sequence) -> int:
    """metadata.jsonl from the done records of `rows` (row order, then sample order); returns the line count."""
    by_key = {r["key"]: r for r in records if r.get("status") == "done"}
    lines = []
    for row in sorted(rows, key=lambda r: r.index):
        record = by_key.get(row.key)
        if record is not None:
            lines.extend(json.dumps(entry, ensure_ascii=False) + "\n" for entry in record.get("rows", []))
    temp = out / f".{METADATA}.{os.getpid()}.tmp"
    temp.write_text("".join(lines), encoding="utf-8")
    os.replace(temp, out / METADATA)
    return len(lines)
