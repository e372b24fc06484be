"""Batch rows: a folder, glob, CSV or JSONL manifest read into validated JobRows (before any model loads).

Flags give every row's defaults; a manifest's non-empty cell overrides them for its row. `--prompts FILE` crosses
every image with every prompt. A row without its own seed gets `--seed` + its row index.
"""

from __future__ import annotations

import argparse
import csv
import glob
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import InvalidParameterError
from core.jobs import JobRow, job_key
from core.jsonl import json_objects

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MANIFEST_SUFFIXES = (".csv", ".jsonl")
GLOB_CHARS = re.compile(r"[*?\[]")
FILE_COLUMNS = ("foreground", "background")  # paths, relative to the manifest's folder
# Relight flags a row may not change: the whole batch runs on one set of weights.
BATCH_WIDE = ("variant",)
TRUE_WORDS, FALSE_WORDS = frozenset({"1", "true", "yes", "y", "on"}), frozenset({"0", "false", "no", "n", "off"})
DEFAULT_SEED = 12345  # RelightParams' default seed: row i without its own seed gets DEFAULT_SEED + i
STEM_LEN = 48  # room for '_<variant>_NNNNN' inside the 64-character stem limit of result files
UNSAFE_STEM = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SourceRow:
    """One line of the input before validation: the files and the cells that override the flags."""

    foreground: str  # as written (absolute, or resolved against the manifest's folder)
    background: str | None = None
    cells: dict[str, Any] = field(default_factory=dict)  # column name -> raw value (str from CSV, JSON value)
    line: str = ""  # where it came from, for messages: 'manifest.csv line 4'


def read_sources(spec: str | Path) -> list[SourceRow]:
    """Rows of a folder, a glob, one image, or a .csv/.jsonl manifest; stops with one line when unreadable."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InvalidParameterError(f"--input {text} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return [SourceRow(str(p), line=p.name) for p in files]
    if path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
        return _read_manifest(path)
    if GLOB_CHARS.search(text):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise InvalidParameterError(f"--input {text} matches no files")
        return [SourceRow(str(p), line=p.name) for p in files]
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return [SourceRow(str(path), line=path.name)]
    if not path.exists():
        raise InvalidParameterError(f"--input {text} does not exist (give a folder, a glob or a .csv/.jsonl manifest)")
    raise InvalidParameterError(f"--input {text} is not a folder, an image, or a .csv/.jsonl manifest")


def _read_manifest(path: Path) -> list[SourceRow]:
    """A CSV with a header, or JSONL with one object per line; column `foreground` is required."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidParameterError(f"manifest {path} cannot be read: {exc}") from None
    records: list[tuple[str, dict[str, Any]]] = []
    if path.suffix.lower() == ".csv":
        try:
            reader = csv.DictReader(text.splitlines())
            for number, record in enumerate(reader, start=2):
                if None in record:
                    raise InvalidParameterError(f"manifest {path} line {number} has more cells than the header")
                if any(v not in (None, "") for v in record.values()):
                    records.append((f"{path.name} line {number}", dict(record)))
        except csv.Error as exc:
            raise InvalidParameterError(f"manifest {path} is not valid CSV: {exc}") from None
        columns = list(reader.fieldnames or [])
    else:
        columns = []
        for number, record in json_objects(text, f"manifest {path}"):
            records.append((f"{path.name} line {number}", record))
            columns += [k for k in record if k not in columns]
    if "foreground" not in columns:
        raise InvalidParameterError(f"manifest {path} has no 'foreground' column (columns: {', '.join(columns)})")
    check_columns(columns, path)
    base = path.parent
    rows = []
    for where, record in records:
        cells = {k.strip(): v for k, v in record.items() if k is not None and _given(v)}
        foreground = cells.pop("foreground", None)
        background = cells.pop("background", None)
        rows.append(SourceRow(_resolve(base, foreground), _resolve(base, background), cells, where))
    return rows


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _resolve(base: Path, value: Any) -> str | None:
    if value is None:
        return None
    path = Path(str(value).strip()).expanduser()
    return str(path if path.is_absolute() else base / path)


def relight_columns() -> dict[str, argparse.Action]:
    """Manifest columns that set a relight parameter: each relight flag's name with underscores."""
    from core.cli import add_relight_flags

    parser = argparse.ArgumentParser(add_help=False)
    add_relight_flags(parser)
    return {a.dest: a for a in parser._actions if a.dest not in BATCH_WIDE}


def check_columns(columns: Iterable[str], where: Path | str) -> None:
    """Stop on a column that is neither a file column nor a relight parameter."""
    known = set(FILE_COLUMNS) | set(relight_columns())
    for column in columns:
        name = (column or "").strip()
        if name in BATCH_WIDE:
            raise InvalidParameterError(f"manifest {where}: column {name!r} is batch-wide; use --{name} instead")
        if name not in known:
            raise InvalidParameterError(
                f"manifest {where} has an unknown column {name!r}; known: {', '.join(sorted(known))}"
            )


def read_prompts(path: Path) -> list[str]:
    """--prompts FILE: one prompt per non-empty line."""
    try:
        prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidParameterError(f"--prompts {path} cannot be read: {exc}") from None
    if not prompts:
        raise InvalidParameterError(f"--prompts {path} has no prompts (one per line)")
    return prompts


def cell_value(action: argparse.Action, value: Any, column: str) -> Any:
    """A manifest cell converted like its flag: type, choices, yes/no for switches."""
    if action.nargs == 0:  # store_true switches: a "no" cell switches off what a flag switched on
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise InvalidParameterError(f"column {column} should be yes/no (true/false, 1/0) but is {value!r}")
    if isinstance(value, str):
        value = value.strip()
    convert = action.type or str
    try:
        converted = convert(value if isinstance(value, str) else str(value) if convert is str else value)
    except (TypeError, ValueError):
        kind = getattr(convert, "__name__", "value")
        raise InvalidParameterError(f"column {column} should be a {kind} but is {value!r}") from None
    if action.choices is not None and converted not in action.choices:
        raise InvalidParameterError(f"column {column} should be one of {', '.join(action.choices)} but is {value!r}")
    return converted


def safe_stem(path: str) -> str:
    """A result-file stem from a foreground's name: letters, digits, '.', '_', '-'; at most STEM_LEN."""
    stem = UNSAFE_STEM.sub("_", Path(path).stem).lstrip("._-")[:STEM_LEN]
    return stem or "image"


def expand(sources: list[SourceRow], prompts: list[str] | None) -> list[tuple[SourceRow, dict[str, Any]]]:
    """(source, cells) per row: every source crossed with every prompt of --prompts, in that order."""
    if not prompts:
        return [(source, dict(source.cells)) for source in sources]
    return [(source, {**source.cells, "prompt": prompt}) for source in sources for prompt in prompts]


def build_rows(
    args: argparse.Namespace, sources: list[SourceRow], prompts: list[str] | None, fc_variant: str
) -> list[JobRow]:
    """Validated JobRows; a row that fails validation carries its error and is recorded failed without running."""
    columns = relight_columns()
    rows = []
    for index, (source, cells) in enumerate(expand(sources, prompts)):
        background = source.background or (str(args.bg) if getattr(args, "bg", None) else None)
        source = SourceRow(source.foreground, background, source.cells, source.line)
        stem = safe_stem(source.foreground)
        payload: dict[str, Any] = {"foreground": source.foreground, "background": background, "params": None,
                                   "seed": None, "stem": stem, "source": source.line}  # fmt: skip
        try:
            params = resolve_params(args, columns, source, cells, index)
            payload["params"], payload["seed"] = params.to_dict(), params.seed
            _check_files(source, params)
            key = job_key([source.foreground, source.background], {"params": payload["params"], "variant": fc_variant})
            rows.append(JobRow(index, key, payload))
        except InvalidParameterError as exc:
            where = "" if source.line == Path(source.foreground).name else f"{source.line}: "
            rows.append(JobRow(index, f"invalid:{index}", payload, error=f"{where}{exc}"))
    return rows


def resolve_params(
    args: argparse.Namespace, columns: Mapping[str, argparse.Action], source: SourceRow, cells: dict, index: int
):
    """RelightParams of one row: the flags, then its cells, then the per-row seed (flag seed + row index)."""
    from core.cli import params_from_args

    row_args = argparse.Namespace(**vars(args))
    for column, value in cells.items():
        setattr(row_args, column, cell_value(columns[column], value, column))
    if "seed" not in cells:
        row_args.seed = (args.seed if args.seed is not None else DEFAULT_SEED) + index
    row_args.bg = Path(source.background) if source.background else None
    row_args.from_png = None
    return params_from_args(row_args)


def _check_files(source: SourceRow, params) -> None:
    """Each input file exists and decodes (the worker decodes it again; this costs no model time)."""
    from core.imaging.inputs import load_image
    from core.params import BGSource, Mode

    wanted = [("foreground", source.foreground)]
    if source.background is not None:
        wanted.append(("background", source.background))
    for what, path in wanted:
        if not Path(path).is_file():
            raise InvalidParameterError(f"{what} {path} does not exist or is not a file")
        try:
            load_image(Path(path))
        except InvalidParameterError as exc:
            raise InvalidParameterError(f"{what}: {exc}") from None
    if params.mode is Mode.FBC and params.bg_source in (BGSource.UPLOAD, BGSource.FLIP) and not source.background:
        raise InvalidParameterError(f"bg_source {params.bg_source.value} needs a background for this row")


LIGHT_DESTS = {"elevation": "elevation", "light_color": "color", "light_intensity": "intensity", "ambient": "ambient"}


def namespace_from_params(params) -> argparse.Namespace:
    """The relight flags that reproduce `params` (the apps' form becomes a batch's defaults this way)."""
    values = params.to_dict()
    args = argparse.Namespace(**{dest: None for dest in relight_columns()}, variant=None, bg=None, from_png=None)
    for dest in vars(args):
        if dest in values and dest not in ("light", "extra"):
            setattr(args, dest, values[dest])
    light = values["light"]
    args.light = "none" if light is None else str(light["azimuth"])
    for dest, name in LIGHT_DESTS.items():
        setattr(args, dest, None if light is None else light[name])
    args.no_remove_bg = False
    args.lora = values["loras"] or None  # --lora is repeatable: the list of 'SOURCE:SCALE'
    return args
