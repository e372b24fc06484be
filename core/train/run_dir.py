"""The run folder: which run it holds, its checkpoints (complete ones only), pruning and the training log."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InvalidParameterError
from core.train.config import TrainConfig

CONFIG_FILE = "train_config.json"
LOG_FILE = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
VALIDATION = "validation"
CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "train_state.json"  # inside a checkpoint: step and stream position; written last, so it marks completion
PARTIAL_SUFFIX = ".partial"
STEP_DIGITS = 6
# What --overwrite removes: everything a run writes (the exported models included), nothing else in the folder.
RUN_OUTPUTS = (CONFIG_FILE, LOG_FILE, CHECKPOINTS, VALIDATION, "iclight_sd15_fc.safetensors", "model")


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint folder and where the run stood when it was written."""

    path: Path
    step: int  # optimizer steps done
    position: int  # next position in the data stream (samples consumed by all processes)


@dataclass(frozen=True)
class RunPlan:
    """What to do with --out: start fresh or continue from a checkpoint."""

    resume_from: Checkpoint | None
    notice: str | None = None


def read_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint folder's state; raises when it is not a complete checkpoint."""
    state_file = Path(path) / STATE_FILE
    if not state_file.is_file():
        raise InvalidParameterError(f"{path} is not a complete training checkpoint (no {STATE_FILE})")
    try:
        state = json.loads(state_file.read_text())
        return Checkpoint(Path(path), int(state["step"]), int(state["position"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidParameterError(f"{state_file} is damaged ({exc}); resume from another checkpoint") from None


def checkpoints(out: Path) -> list[Checkpoint]:
    """Complete checkpoints of the run in `out`, oldest first."""
    folder = Path(out) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        if entry.name.startswith(CHECKPOINT_PREFIX) and not entry.name.endswith(PARTIAL_SUFFIX):
            if (entry / STATE_FILE).is_file():
                found.append(read_checkpoint(entry))
    return sorted(found, key=lambda c: c.step)


def plan_run(config: TrainConfig) -> RunPlan:
    """Refuse a folder holding a different run; find the checkpoint to continue from (same run or --resume)."""
    out = config.out
    saved = _saved_identity(out)
    latest = (checkpoints(out) or [None])[-1]
    if config.resume is not None:
        if config.resume != "latest":
            return RunPlan(read_checkpoint(Path(config.resume).expanduser()))
        if latest is None:
            raise InvalidParameterError(f"--resume latest: {out / CHECKPOINTS} holds no complete checkpoint")
        return RunPlan(latest)
    if saved is None or config.overwrite:
        return RunPlan(None)
    differences = [f"{name} {saved.get(name)!r} there, {value!r} here" for name, value in config.identity.items()
                   if saved.get(name) != value]  # fmt: skip
    if differences:
        raise InvalidParameterError(
            f"--out {out} holds a different training run ({'; '.join(differences)}). Pass --resume latest to continue "
            f"it with these settings, --overwrite to replace it, or another --out"
        )
    if latest is None:
        return RunPlan(None)
    return RunPlan(latest, notice=f"{out} holds this run: continuing from step {latest.step} ({latest.path.name})")


def prepare_folder(config: TrainConfig, num_processes: int) -> None:
    """Main process: clear an overwritten run and stale partial checkpoints, record this run's settings."""
    out = config.out
    if config.overwrite:
        for name in RUN_OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    (out / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    for entry in (out / CHECKPOINTS).iterdir():
        if entry.name.endswith(PARTIAL_SUFFIX):  # a checkpoint cut short by a kill
            shutil.rmtree(entry, ignore_errors=True)
    record = {**config.to_dict(), "identity": config.identity, "num_processes": num_processes}
    _write_atomic(out / CONFIG_FILE, json.dumps(record, indent=2, sort_keys=True))


def partial_path(out: Path, step: int) -> Path:
    """Where a checkpoint is written before it is complete."""
    return Path(out) / CHECKPOINTS / f"{CHECKPOINT_PREFIX}{step:0{STEP_DIGITS}d}{PARTIAL_SUFFIX}"


def finish_checkpoint(out: Path, step: int, position: int, keep: int) -> Path:
    """Main process: mark the partial checkpoint complete, publish it under its name, prune past `keep`."""
    partial = partial_path(out, step)
    (partial / STATE_FILE).write_text(json.dumps({"step": step, "position": position}))
    final = partial.with_name(partial.name.removesuffix(PARTIAL_SUFFIX))
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    for old in checkpoints(out)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)
    return final


def trim_log(out: Path, step: int) -> None:
    """Drop log lines past `step` (steps that are redone after a resume)."""
    log = Path(out) / LOG_FILE
    if not log.is_file():
        return
    kept = []
    for line in log.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a kill
    _write_atomic(log, "".join(f"{line}\n" for line in kept))


def append_log(out: Path, record: dict[str, Any]) -> None:
    with open(Path(out) / LOG_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _saved_identity(out: Path) -> dict[str, Any] | None:
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("identity", {})
    except (ValueError, AttributeError):
        return {}  # damaged: treated as a different run


def _write_atomic(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text, encoding="utf-8")
    temp.replace(path)
