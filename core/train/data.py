"""Training triplets (input_image, edit_prompt, edited_image) from a local imagefolder dataset or the Hub."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InvalidParameterError, WeightsNotFoundError
from core.jsonl import json_objects

logger = logging.getLogger(__name__)

INPUT, PROMPT, EDITED = "input_image", "edit_prompt", "edited_image"
COLUMNS = (INPUT, PROMPT, EDITED)
IMAGE_COLUMNS = (INPUT, EDITED)
METADATA = "metadata.jsonl"
FILE_SUFFIX = "_file_name"  # the imagefolder convention for an image column stored as a file name
MAX_NAMED_BAD = 5  # bad rows named in a message; the rest are counted


@dataclass(frozen=True)
class Row:
    """One triplet before decoding: images as a path or encoded bytes."""

    input_image: Path | bytes
    edit_prompt: str
    edited_image: Path | bytes
    label: str  # how the row is named in messages (file names or the row number)


@dataclass(frozen=True)
class Triplet:
    """One decoded triplet: uint8 RGB images (the input composited on grey where it has alpha)."""

    input_image: np.ndarray
    edit_prompt: str
    edited_image: np.ndarray


def load_rows(data: str) -> list[Row]:
    """The rows of a local imagefolder dataset (metadata.jsonl) or a Hub dataset id, columns checked."""
    path = Path(data).expanduser()
    if path.is_dir():
        return _local_rows(path)
    if path.exists():
        raise InvalidParameterError(f"--data {data} is a file; give the dataset folder (holding {METADATA})")
    if data.startswith((".", "/", "~")) or data.count("/") != 1:
        raise InvalidParameterError(f"--data {data!r} is neither an existing folder nor a Hub dataset id 'owner/name'")
    return _hub_rows(data)


def check_columns(found: list[str] | set[str], source: str) -> None:
    """Raise naming the missing columns and the ones found."""
    names = {name.removesuffix(FILE_SUFFIX) for name in found}
    missing = [column for column in COLUMNS if column not in names]
    if missing:
        raise InvalidParameterError(
            f"dataset {source} lacks the column(s) {', '.join(missing)}; it has {', '.join(sorted(found)) or 'none'}. "
            f"Training needs {', '.join(COLUMNS)} (image columns may be '<name>{FILE_SUFFIX}' file names)."
        )


def _metadata_file(folder: Path) -> Path:
    for candidate in (folder / METADATA, folder / "train" / METADATA):
        if candidate.is_file():
            return candidate
    raise InvalidParameterError(
        f"--data {folder} has no {METADATA} (nor train/{METADATA}); a training dataset is an imagefolder with the "
        f"columns {', '.join(COLUMNS)} in {METADATA}, as `python -m core data-synth` writes it"
    )


def _local_rows(folder: Path) -> list[Row]:
    metadata = _metadata_file(folder)
    records = [record for _, record in json_objects(metadata.read_text(encoding="utf-8"), str(metadata))]
    if not records:
        raise InvalidParameterError(f"{metadata} has no rows")
    found: set[str] = set().union(*records)
    check_columns(found, str(folder))
    rows = []
    for number, record in enumerate(records, start=1):
        images = {}
        for column in IMAGE_COLUMNS:
            name = record.get(column, record.get(column + FILE_SUFFIX))
            if not isinstance(name, str) or not name:
                raise InvalidParameterError(
                    f"{metadata} line {number}: {column} should be a file name but is {name!r}"
                )
            images[column] = metadata.parent / name
        prompt = record.get(PROMPT)
        rows.append(Row(images[INPUT], _prompt(prompt, f"{metadata} line {number}"), images[EDITED],
                        label=f"line {number} ({images[INPUT].name}, {images[EDITED].name})"))  # fmt: skip
    return rows


def _hub_rows(repo: str) -> list[Row]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is in requirements.txt
        raise InvalidParameterError(f"a Hub dataset needs the 'datasets' package ({exc})") from None
    try:
        table = datasets.load_dataset(repo, split="train")
    except Exception as exc:  # network, missing repo, cache and format errors all mean "cannot be had"
        raise WeightsNotFoundError(
            f"dataset {repo!r} could not be loaded from the Hub or its cache ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); pass a local imagefolder with --data"
        ) from exc
    return rows_from_table(table, repo)


def rows_from_table(table, source: str) -> list[Row]:
    """Rows of a `datasets.Dataset` with the three columns (images as Image features, paths or bytes)."""
    import datasets

    check_columns(list(table.column_names), source)
    for column in IMAGE_COLUMNS:
        table = table.cast_column(column, datasets.Image(decode=False))  # decoded by us, bad files counted
    rows = []
    for number, record in enumerate(table):
        images = [_hub_image(record[column]) for column in IMAGE_COLUMNS]
        rows.append(Row(images[0], _prompt(record[PROMPT], f"{source} row {number}"), images[1], f"row {number}"))
    return rows


def _hub_image(value: Any) -> Path | bytes:
    if isinstance(value, str):
        return Path(value)
    if isinstance(value, dict) and value.get("bytes"):
        return value["bytes"]
    if isinstance(value, dict) and value.get("path"):
        return Path(value["path"])
    return b""  # counted as undecodable


def _prompt(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidParameterError(f"{where}: {PROMPT} should be text but is {value!r}")
    return value


def decode_row(row: Row, resolution: int) -> Triplet:
    """Decode both images, put an input with alpha on neutral grey, resize to cover and centre-crop."""
    from core.finishing.matting import composite_on_grey
    from core.imaging.convert import resize_and_center_crop
    from core.imaging.inputs import ImageLimits, load_image

    limits = ImageLimits(max_upload_mb=1e6, max_pixels=10**9)  # training data is trusted; size is not the issue
    source = load_image(row.input_image, limits, name=f"{INPUT} of {row.label}")
    rgb = composite_on_grey(source.rgb, source.alpha) if source.alpha is not None else source.rgb
    edited = load_image(row.edited_image, limits, name=f"{EDITED} of {row.label}").rgb
    return Triplet(
        resize_and_center_crop(rgb, resolution, resolution),
        row.edit_prompt,
        resize_and_center_crop(edited, resolution, resolution),
    )


def check_rows(rows: list[Row], max_bad_share: float, source: str) -> tuple[list[Row], list[str]]:
    """(decodable rows, reasons for the skipped ones); fatal when more than `max_bad_share` do not decode."""
    from PIL import Image, UnidentifiedImageError

    good, bad = [], []
    for row in rows:
        try:
            for image in (row.input_image, row.edited_image):
                _open(image, Image)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            bad.append(f"{row.label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            continue
        good.append(row)
    share = len(bad) / len(rows)
    if not good or share > max_bad_share:
        raise InvalidParameterError(
            f"{len(bad)} of {len(rows)} rows of {source} have images that do not decode ({share:.0%}, more than "
            f"--max-bad-share {max_bad_share:.0%}): " + "; ".join(bad[:MAX_NAMED_BAD])
        )
    return good, bad


def _open(image: Path | bytes, pil) -> None:
    import io

    if isinstance(image, bytes) and not image:
        raise ValueError("no image data")
    with pil.open(io.BytesIO(image) if isinstance(image, bytes) else image) as opened:
        opened.load()  # a truncated file opens fine and fails here


class StreamDataset:
    """Position p of an endless stream of rows: epoch p // n, shuffled by (seed, epoch), so any run can resume."""

    def __init__(self, rows: list[Row], resolution: int, seed: int) -> None:
        self.rows, self.resolution, self.seed = rows, resolution, seed
        self._orders: dict[int, list[int]] = {}

    def index(self, position: int) -> int:
        """The row at `position` of the stream."""
        import torch

        epoch, offset = divmod(position, len(self.rows))
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._orders = {epoch: torch.randperm(len(self.rows), generator=generator).tolist()}
        return self._orders[epoch][offset]

    def __getitem__(self, position: int) -> dict[str, Any]:
        triplet = decode_row(self.rows[self.index(position)], self.resolution)
        return {"position": position, "input": triplet.input_image, "prompt": triplet.edit_prompt,
                "edited": triplet.edited_image}  # fmt: skip


class PositionSampler:
    """Stream positions start, start + 1, ... without end (the run stops at --max-steps)."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        position = self.start
        while True:
            yield position
            position += 1


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch: uint8 images as (B, H, W, 3) tensors, prompts and stream positions as lists."""
    import torch

    return {
        "position": [item["position"] for item in items],
        "input": torch.from_numpy(np.stack([item["input"] for item in items])),
        "prompt": [item["prompt"] for item in items],
        "edited": torch.from_numpy(np.stack([item["edited"] for item in items])),
    }
