"""Training bench: full-size SD 1.5 (random weights) at 512 px, batch 1, LoRA rank 16 through `python -m core train`.

Seconds per optimizer step and peak memory for fp32 and bf16 autocast, with and without gradient checkpointing; each
configuration runs in its own process (its peak is its own) and its first step (warm-up) is not timed. The baseline
is fp32 without checkpointing, measured in the same run. Full fine-tuning memory is computed on paper from the
parameter count (weights + gradients + Adam states), with the GPU sizes it fits.

    python -m bench.train                 # 3 steps per configuration (2 timed)
    python -m bench.train --steps 2       # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESOLUTION = 512
LORA_RANK = 16
ROWS = 2  # the data only has to exist: speed does not depend on it
GIB = 1024**3
BYTES_FP32, BYTES_FP16 = 4, 2
ADAM_STATES = 2  # exp_avg and exp_avg_sq, fp32 each
GPU_SIZES_GB = (12, 16, 24, 40, 48, 80)
# (name, extra flags): the baseline first
CONFIGS = (
    ("LoRA 16, fp32", ()),
    ("LoRA 16, fp32 + gradient checkpointing", ("--gradient-checkpointing",)),
    ("LoRA 16, bf16 autocast", ("--mixed-precision", "bf16")),
    ("LoRA 16, bf16 autocast + gradient checkpointing", ("--mixed-precision", "bf16", "--gradient-checkpointing")),
)


def write_data(folder: Path) -> Path:
    """A two-row triplet dataset at the training size."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(ROWS):
        for name in ("in", "out"):
            pixels = rng.integers(0, 255, (RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i}.png")
        lines.append(json.dumps({"input_image_file_name": f"in_{i}.png", "edit_prompt": "soft light from the left",
                                 "edited_image_file_name": f"out_{i}.png"}))  # fmt: skip
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def run_config(folder: Path, name: str, flags: tuple[str, ...], steps: int, timeout: int) -> dict:
    """Train `steps` steps in a fresh process; (seconds per timed step, peak RSS) from its train_log.jsonl."""
    out = folder / "runs" / name.replace(" ", "").replace(",", "_").replace("+", "_")
    command = [sys.executable, "-m", "core", "train", "--data", str(folder / "data"), "--out", str(out),
               "--base-model", str(folder / "base"), "--init", "base", "--offline", "--overwrite", "--quiet",
               "--resolution", str(RESOLUTION), "--batch-size", "1", "--lora-rank", str(LORA_RANK),
               "--max-steps", "1000", "--stop-after", str(steps), "--checkpoint-every", "1000", *flags]  # fmt: skip
    began = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    if done.returncode != 0:
        return {"name": name, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    timed = [row["seconds_per_step"] for row in log[1:]] or [log[0]["seconds_per_step"]]
    return {"name": name, "seconds_per_step": min(timed), "all_steps": [r["seconds_per_step"] for r in log],
            "peak_gb": log[-1]["peak_memory_mb"] / 1024, "wall_s": time.perf_counter() - began}  # fmt: skip


def full_finetune_on_paper() -> dict:
    """Bytes of full fine-tuning (fp32 weights, gradients, Adam) for the 8-channel UNet, counted on the meta device."""
    import torch
    from diffusers import UNet2DConditionModel

    from core.models.synthetic import SD15_UNET_CONFIG, build_full_size_components

    with torch.device("meta"):
        unet = UNet2DConditionModel(**{**SD15_UNET_CONFIG, "in_channels": 8})
        text_encoder, vae, _ = build_full_size_components()
    params = sum(p.numel() for p in unet.parameters())
    frozen = sum(p.numel() for module in (text_encoder, vae) for p in module.parameters())
    frozen_gb = frozen * BYTES_FP16 / GIB  # the text encoder and VAE run in the mixed precision on GPUs
    weights = params * BYTES_FP32 / GIB
    return {"unet_params": params, "weights_gb": weights, "grads_gb": weights, "adam_gb": weights * ADAM_STATES,
            "frozen_gb": frozen_gb, "total_gb": weights * (2 + ADAM_STATES) + frozen_gb}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per configuration (first untimed)")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/iclight-bench-train"), help="model and runs")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per configuration")
    args = parser.parse_args()

    from core.models.synthetic import write_full_size_model

    write_full_size_model(args.folder, variants=())
    if not (args.folder / "data" / "metadata.jsonl").is_file():
        write_data(args.folder / "data")
    print(f"full-size SD 1.5 (random weights), {RESOLUTION} px, batch 1, {args.steps} steps each, CPU threads "
          f"{os.cpu_count()}")  # fmt: skip
    results = []
    for name, flags in CONFIGS:
        result = run_config(args.folder, name, flags, args.steps, args.timeout)
        results.append(result)
        if "error" in result:
            print(f"{name:50s} error: {result['error']}")
            continue
        base = results[0].get("seconds_per_step")
        ratio = f"{result['seconds_per_step'] / base:.2f}x baseline" if base else ""
        print(f"{name:50s} {result['seconds_per_step']:8.1f} s/step  peak {result['peak_gb']:5.1f} GB  {ratio}  "
              f"(steps {', '.join(f'{s:.1f}' for s in result['all_steps'])})", flush=True)  # fmt: skip

    paper = full_finetune_on_paper()
    print(f"\nfull fine-tuning on paper: UNet {paper['unet_params'] / 1e6:.1f} M parameters -> weights "
          f"{paper['weights_gb']:.1f} + gradients {paper['grads_gb']:.1f} + Adam {paper['adam_gb']:.1f} GB, "
          f"+ fp16 text encoder and VAE {paper['frozen_gb']:.1f} GB = {paper['total_gb']:.1f} GB before "
          f"activations")  # fmt: skip
    fits = [size for size in GPU_SIZES_GB if size > paper["total_gb"]]
    print(f"fits (before activations) on GPUs of {', '.join(f'{s} GB' for s in fits)}; "
          f"not on {', '.join(f'{s} GB' for s in GPU_SIZES_GB if s not in fits)}")  # fmt: skip
    print(json.dumps({"configs": results, "full_finetune": paper}))


if __name__ == "__main__":
    main()
