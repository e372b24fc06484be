"""Helpers for the training and edit tests: a tiny learnable triplet dataset and the train command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
SIZE = 32  # training resolution: 4x4 latents, enough for the tiny UNet's one downsampling
SHIFT = 80  # the learnable edit: red channel + 80


def write_dataset(folder: Path, rows: int = 8, seed: int = 0, columns: tuple[str, ...] | None = None) -> Path:
    """An imagefolder of coloured squares on grey; the edit adds a red shift (what data-synth writes, smaller)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(rows):
        image = np.full((40, 40, 3), 127, np.uint8)
        x, y = rng.integers(2, 18, 2)
        image[y : y + 20, x : x + 20] = rng.integers(30, 200, 3)
        edited = image.copy()
        edited[..., 0] = np.clip(edited[..., 0].astype(int) + SHIFT, 0, 255)
        Image.fromarray(image).save(folder / f"in_{i}.png")
        Image.fromarray(edited).save(folder / f"out_{i}.png")
        row = {
            "input_image_file_name": f"in_{i}.png",
            "edit_prompt": "warm light",
            "edited_image_file_name": f"out_{i}.png",
        }
        if columns is not None:
            row = {k: v for k, v in row.items() if k.removesuffix("_file_name") in columns}
        lines.append(json.dumps(row))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def train_args(data: Path, out: Path, base: Path, *extra: str, steps: int = 4) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--base-model", str(base), "--resolution", str(SIZE),
            "--max-steps", str(steps), "--lr", "1e-3", "--seed", "3", "--offline", "--quiet", *extra]  # fmt: skip


def log_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    newest = sorted((out / "checkpoints").iterdir())[-1]
    return load_file(str(newest / "trainable.safetensors"))
