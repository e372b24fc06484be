"""`data-filter` as a job: chunks of images scored by a worker, then scores.jsonl, kept.txt and the splits."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InvalidParameterError

CHUNK = 16  # images per job row: one CLIP batch, and one results.jsonl line
SCORES, KEPT, UNREADABLE = "scores.jsonl", "kept.txt", "unreadable.txt"
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_SPLITS = (0.8, 0.1, 0.1)
DEFAULT_KEEP_SHARE = 0.5  # without --keep or --threshold, the better half is kept
CACHE_DIR = "cache"  # under --out: CLIP image embeddings by content


class FilterWorker:
    """Scores a chunk of images with the configured scorer (CLIP loaded once per process)."""

    def __init__(self, config: dict) -> None:
        from core.data.filter import ClipScorer, PromptSets, resolve_clip

        self.scorer = config["scorer"]
        self.clip = None
        if self.scorer == "clip":
            prompts = PromptSets(tuple(config["prompts"]["good"]), tuple(config["prompts"]["poor"]))
            from core.models.devices import resolve_placement

            device = resolve_placement(config["device"]).device
            folder = resolve_clip(config["clip_source"])  # on a cluster, each node has its own Hub cache
            self.clip = ClipScorer(folder, prompts, Path(config["out"]) / CACHE_DIR, device)

    def __call__(self, row, progress) -> dict:
        from core.data.filter import classic_score
        from core.data.sources import file_digest
        from core.imaging.inputs import load_image

        images, digests, paths, unreadable = [], [], [], []
        for path in row.payload["paths"]:
            try:
                images.append(load_image(path).rgb)
                digests.append(file_digest(Path(path)))
                paths.append(path)
            except (OSError, ValueError) as exc:  # InvalidParameterError is a ValueError: undecodable, too big
                unreadable.append({"path": path, "reason": " ".join(str(exc).split()) or type(exc).__name__})
        scores = []
        if self.clip is not None:
            encoded_before = self.clip.encoded
            scored = self.clip.score(self.clip.embed(images, digests))
            encoded = self.clip.encoded - encoded_before
        else:
            scored, encoded = [], 0
            for done, image in enumerate(images, start=1):
                scored.append(classic_score(image))
                if progress is not None:
                    progress(done, len(images))
        for path, (score, parts) in zip(paths, scored, strict=True):
            scores.append({"path": path, "score": score, "parts": parts})
        return {"outputs": [], "scores": scores, "unreadable": unreadable, "encoded": encoded}


@dataclass(frozen=True)
class Selection:
    """What data-filter keeps and how it splits it."""

    keep: int | None  # keep the N best (exclusive with threshold)
    threshold: float | None  # keep scores >= this
    splits: tuple[float, float, float]  # train, val, test shares (sum 1)
    seed: int  # decides the split assignment


def parse_splits(text: str) -> tuple[float, float, float]:
    """'0.8,0.1,0.1' -> shares that sum to 1."""
    try:
        parts = tuple(float(p) for p in str(text).split(","))
    except ValueError:
        raise InvalidParameterError(f"--splits should be three numbers like 0.8,0.1,0.1 but is {text!r}") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or not 0.999 <= sum(parts) <= 1.001:
        raise InvalidParameterError(f"--splits should be three shares >= 0 that sum to 1 but is {text!r}")
    return parts  # type: ignore[return-value]


def build_rows(paths: Sequence[Path], params: dict[str, Any]) -> list:
    """Job rows of CHUNK images each, keyed by their bytes and the scoring parameters."""
    from core.jobs import JobRow, job_key

    rows = []
    for index, start in enumerate(range(0, len(paths), CHUNK)):
        chunk = [str(p) for p in paths[start : start + CHUNK]]
        readable = [p if os.access(p, os.R_OK) and Path(p).is_file() else None for p in chunk]
        rows.append(JobRow(index, job_key(readable, {**params, "paths": chunk}), {"paths": chunk}))
    return rows


def collect(records: list[dict], rows: Sequence) -> tuple[list[dict], list[dict], int]:
    """(scores, unreadable, failed rows) of this run's rows from results.jsonl records (the last done line wins)."""
    by_key = {}
    for record in records:
        if record.get("status") == "done":
            by_key[record["key"]] = record
    scores, unreadable, failed = [], [], 0
    for row in rows:
        record = by_key.get(row.key)
        if record is None:
            failed += 1
            continue
        scores.extend(record.get("scores", []))
        unreadable.extend(record.get("unreadable", []))
    return scores, unreadable, failed


def select(scores: list[dict], selection: Selection) -> list[dict]:
    """The kept entries, best first (ties by path, so the choice is stable)."""
    ranked = sorted(scores, key=lambda s: (-s["score"], s["path"]))
    if selection.threshold is not None:
        return [s for s in ranked if s["score"] >= selection.threshold]
    count = selection.keep if selection.keep is not None else round(len(ranked) * DEFAULT_KEEP_SHARE)
    return ranked[:count]


def split(kept: list[dict], selection: Selection) -> dict[str, list[dict]]:
    """Deterministic train/val/test: images ordered by a seeded hash of their path, then cut by the shares."""
    order = sorted(kept, key=lambda s: hashlib.sha256(f"{selection.seed}:{s['path']}".encode()).hexdigest())
    total = len(order)
    train_end = round(total * selection.splits[0])
    val_end = train_end + round(total * selection.splits[1])
    return {"train": order[:train_end], "val": order[train_end:val_end], "test": order[val_end:]}


def write_outputs(out: Path, scores: list[dict], unreadable: list[dict], selection: Selection) -> dict[str, int]:
    """scores.jsonl (input order), kept.txt (best first), unreadable.txt and the split CSVs; returns counts."""
    kept = select(scores, selection)
    _write_text(out / SCORES, "".join(json.dumps(s, sort_keys=True) + "\n" for s in scores))
    _write_text(out / KEPT, "".join(s["path"] + "\n" for s in kept))
    _write_text(out / UNREADABLE, "".join(f"{u['path']}\t{u['reason']}\n" for u in unreadable))
    counts = {"scored": len(scores), "kept": len(kept), "unreadable": len(unreadable)}
    for name, members in split(kept, selection).items():
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "score"])
        for entry in sorted(members, key=lambda s: s["path"]):
            writer.writerow([entry["path"], entry["score"]])
        _write_text(out / f"{name}.csv", buffer.getvalue())
        counts[name] = len(members)
    return counts


def _write_text(path: Path, text: str) -> None:
    """Write atomically: a temp file in the same folder, then os.replace."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)
