"""Which images a data stage reads: an image, a folder, a glob pattern, a CSV list (column `path`) or a text list."""

from __future__ import annotations

import csv
import glob
import hashlib
from pathlib import Path

from core.errors import InvalidParameterError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
PATH_COLUMN = "path"  # the CSV column that names the images (data-filter's train/val/test.csv use it)
GLOB_CHARS = "*?["


def list_images(spec: str | Path) -> list[Path]:
    """The images named by `spec`, in a stable order; listed files that are missing stay in (they fail later)."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        found = [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        found = [p for p in found if not any(part.startswith(".") for part in p.relative_to(path).parts)]
        if not found:
            raise InvalidParameterError(f"--images {text} holds no {', '.join(IMAGE_SUFFIXES)} files")
        return found
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return [path]
    if path.is_file() and path.suffix.lower() == ".csv":
        return _from_csv(path)
    if path.is_file() and path.suffix.lower() == ".txt":
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        return [_resolve(line, path.parent) for line in lines if line and not line.startswith("#")]
    if any(char in text for char in GLOB_CHARS):
        matches = [Path(p) for p in sorted(glob.glob(text, recursive=True)) if Path(p).is_file()]
        if not matches:
            raise InvalidParameterError(f"--images {text} matches no files")
        return matches
    if path.is_file():
        raise InvalidParameterError(
            f"--images {text} should be an image, a folder, a glob pattern, a .csv or a .txt list"
        )
    raise InvalidParameterError(f"--images {text} does not exist")


def _from_csv(path: Path) -> list[Path]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise InvalidParameterError(f"--images {path} is empty")
    header = [cell.strip().lower() for cell in rows[0]]
    column = header.index(PATH_COLUMN) if PATH_COLUMN in header else 0
    body = rows[1:] if PATH_COLUMN in header else rows
    paths = [_resolve(row[column].strip(), path.parent) for row in body if len(row) > column and row[column].strip()]
    if not paths:
        raise InvalidParameterError(f"--images {path} lists no images (expected a '{PATH_COLUMN}' column)")
    return paths


def _resolve(entry: str, base: Path) -> Path:
    """A listed path: absolute as given, relative to the list's folder otherwise."""
    path = Path(entry).expanduser()
    return path if path.is_absolute() else base / path


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (names cache entries and seeds by content, not by where the file lies)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
