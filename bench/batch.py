"""Batch relighting: N images in one `batch` run against N separate `relight` runs, and Ray against local.

Every run is a fresh `python -m core ...` process, as a user would start it, over random-weight SD 1.5 + IC-Light
models written in the real layouts (no downloads). Prints seconds per setup and the ratios:
- amortisation: N separate `relight` runs / one `batch` run of the same N images (process start + model load once);
- ray overhead: `batch --engine ray` / `batch --engine local` on the same rows (Ray start, actor start, transfer).
The images of the ray and local runs are compared pixel by pixel.

Run: python -m bench.batch [--images 6] [--size 256] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def write_models(root: Path) -> list[str]:
    """Random-weight models in the real layouts; the model flags that select them."""
    from diffusers import UNet2DConditionModel

    from core.models.synthetic import write_base_model, write_offsets

    base = write_base_model(root / "base")
    write_offsets(UNet2DConditionModel.from_pretrained(str(base), subfolder="unet"), root / "models")
    return ["--base-model", str(base), "--models-dir", str(root / "models"), "--device", "cpu", "--dtype", "fp32"]


def write_images(folder: Path, count: int, size: int) -> list[Path]:
    """`count` textured subjects on grey."""
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        rng = np.random.RandomState(i)
        yy, xx = np.mgrid[:size, :size]
        disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.35) ** 2
        rgb = np.full((size, size, 3), 127, np.uint8)
        rgb[disc] = (rng.rand(int(disc.sum()), 3) * 120 + 100).astype(np.uint8)
        paths.append(folder / f"item{i:03d}.png")
        Image.fromarray(rgb).save(paths[-1])
    return paths


def timed(argv: list[str]) -> float:
    """Seconds one CLI process takes, start to exit; stops the bench if it fails."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "ICLIGHT_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "core", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"bench: {' '.join(argv[:1])} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return seconds


def images_of(out: Path) -> dict[int, np.ndarray]:
    """Row index -> first image, from results.jsonl."""
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {r["row"]: np.asarray(Image.open(r["outputs"][0])) for r in records if r["status"] == "done"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6, help="images in the batch (default 6)")
    parser.add_argument("--size", type=int, default=256, help="width and height in px (default 256)")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps (default 4)")
    parser.add_argument("--workers", type=int, default=1, help="Ray actors (default 1)")
    parser.add_argument("--skip-ray", action="store_true", help="only the amortisation comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as temp:
        root = Path(temp)
        models = write_models(root)
        images = write_images(root / "in", args.images, args.size)
        size = str(args.size)
        look = ["--prompt", "a toy, warm window light", "--light", "left", "--width", size, "--height", size,
                "--steps", str(args.steps), "--highres-scale", "1", "--matting", "none", "--quiet"]  # fmt: skip
        look += models
        print(f"{args.images} images {args.size}x{args.size}, {args.steps} steps, tiny random-weight models, "
              f"{os.cpu_count()} CPU cores")  # fmt: skip

        # 1. Amortisation: one batch against one process per image (each with its own seed, as the batch gives them)
        batch_s = timed(["batch", "--input", str(root / "in"), "--out", str(root / "local"), *look])
        separate_s = 0.0
        for i, image in enumerate(images):
            seed = str(12345 + i)
            separate_s += timed(["relight", "--fg", str(image), "--out", str(root / "single"), "--seed", seed, *look])
        print(f"one batch:          {batch_s:7.1f} s  ({batch_s / args.images:5.1f} s per image)")
        print(f"separate relights:  {separate_s:7.1f} s  ({separate_s / args.images:5.1f} s per image)")
        print(f"amortisation: separate / batch = {separate_s / batch_s:.2f}x")
        if args.skip_ray:
            return

        # 2. Ray overhead on the same rows
        ray_s = timed(["batch", "--input", str(root / "in"), "--out", str(root / "ray"), "--engine", "ray",
                       "--workers", str(args.workers), *look])  # fmt: skip
        local, remote = images_of(root / "local"), images_of(root / "ray")
        same = sorted(local) == sorted(remote) and all(np.array_equal(local[i], remote[i]) for i in local)
        print(f"ray engine ({args.workers} actor{'s' if args.workers > 1 else ''}): {ray_s:7.1f} s")
        print(f"ray overhead: ray / local = {ray_s / batch_s:.2f}x (+{ray_s - batch_s:.1f} s); "
              f"images identical to local: {same}")  # fmt: skip


if __name__ == "__main__":
    main()
