"""Fast mode against the default recipe, end to end on this CPU: full-size SD 1.5 + IC-Light fc, random weights.

The LCM-LoRA is random too, with the real file's shapes (rank 64 on attention, feed-forward and convolutions,
134.5 MB in fp16): fused at load time, it costs nothing per step, so speed does not depend on its values. Each path
runs in its own process (its own peak memory), through the product's Relighter (matting off, nothing saved):

    python -m bench.fast_mode                        # 512x640, default 25 steps at cfg 2 vs fast 4 steps at cfg 1
    python -m bench.fast_mode --width 256 --height 320   # a reduced-size run on a busy machine
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("default", "fast")
ORDER = ("fast", "default", "fast")  # fast runs on both sides of the default run: a shared host's load drifts
GIB = 1024**3
PROMPT = "portrait, warm sunset light"


def worker(path: str, folder: Path, width: int, height: int, fast_mode: str) -> dict:
    """Load the models and relight once (after a small warm-up) on one path; return its numbers."""
    import numpy as np

    from core.models.manager import ModelManager, ModelSettings
    from core.params import Matting, RelightParams
    from core.recipe.fast import active_loras
    from core.service import Relighter

    settings = ModelSettings(base_model=str(folder / "base"), models_dir=folder / "models", device="cpu",
                             download=False)  # fmt: skip
    relighter = Relighter(ModelManager(settings))
    fast = {"fast": fast_mode} if path == "fast" else {}
    params = RelightParams.for_mode("fc", prompt=PROMPT, width=width, height=height, matting=Matting.NONE, **fast)
    fg = (np.random.RandomState(0).rand(height, width, 3) * 255).astype(np.uint8)
    started = time.perf_counter()
    relighter.relight(fg[:64, :64], params.replace(width=64, height=64, steps=1), save=False)  # load + warm-up
    load_s = time.perf_counter() - started
    steps = []
    cpu_before, started = _cpu_seconds(), time.perf_counter()
    outcome = relighter.relight(fg, params, save=False, callback=lambda info: steps.append(info.stage))
    e2e_s, cpu_s = time.perf_counter() - started, _cpu_seconds() - cpu_before
    models = relighter.manager.get("fc", loras=active_loras(params))
    return {
        "path": path,
        "steps": params.steps,
        "cfg": params.cfg,
        "unet_steps": {stage: steps.count(stage) for stage in ("lowres", "highres")},
        "load_s": load_s,
        "e2e_s": e2e_s,
        "cpu_s": cpu_s,
        "output": list(outcome.images[0].shape),
        "placement": models.describe(),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
    }


def _cpu_seconds() -> float:
    """CPU time this process has used (all threads): less sensitive than wall time to other jobs on the host."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=640)
    parser.add_argument("--fast", default="lcm", choices=("lcm", "tcd", "hyper"), help="fast mode to time")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "iclight_bench")
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, args.cache_dir, args.width, args.height, args.fast)
        print("RESULT " + json.dumps(result))
        return

    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    _write_models(args.cache_dir, args.fast)
    runs: dict[str, list[dict]] = {path: [] for path in PATHS}
    for path in ORDER:
        cmd = [sys.executable, "-m", "bench.fast_mode", "--worker", path, "--width", str(args.width), "--height",
               str(args.height), "--fast", args.fast, "--cache-dir", str(args.cache_dir)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            sys.exit(f"{path} failed:\n{proc.stderr[-3000:]}")
        runs[path].append(json.loads(line.removeprefix("RESULT ")))
        print(f"{path}: {runs[path][-1]['e2e_s']:.1f} s end to end, {runs[path][-1]['cpu_s']:.1f} CPU s", flush=True)
    print_table(runs, args)


def _write_models(folder: Path, fast_mode: str) -> None:
    """Full-size random SD 1.5, the fc offset and the fast LoRA (random, real shapes) where fast mode finds it."""
    code = (
        "from pathlib import Path; from core.models.synthetic import write_full_size_model as w; "
        f"w(Path({str(folder)!r}), lora=True)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)  # a child: this parent stays small
    if fast_mode != "lcm":  # the random LoRA stands in for the chosen preset's file (same cost once fused)
        from core.models.lora import local_name
        from core.models.synthetic import FULL_LORA_FILE
        from core.recipe.fast import FAST_PRESETS, FastMode

        preset = FAST_PRESETS[FastMode(fast_mode)]
        target = folder / "models" / "loras" / local_name(preset.repo_id, preset.filename)
        if not target.exists():
            target.symlink_to(folder / "models" / "loras" / FULL_LORA_FILE)


def print_table(runs: dict[str, list[dict]], args) -> None:
    """One row per run, then the ratios: default against the mean of the fast runs around it."""
    default = runs["default"][0]
    print(f"\nfc at {args.width}x{args.height} (high-res x1.5), fast mode {args.fast}; {default['placement']}")
    print("| path | steps | cfg | UNet steps (low-res + high-res) | load s | end to end s | CPU s | peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|")
    for path in ORDER[:2]:
        for r in runs[path] if path == "fast" else [default]:
            unet = r["unet_steps"]
            print(f"| {r['path']} | {r['steps']} | {r['cfg']:g} | {unet['lowres']} + {unet['highres']} | "
                  f"{r['load_s']:.1f} | {r['e2e_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_gb']:.2f} |")  # fmt: skip
    fast_e2e = sum(r["e2e_s"] for r in runs["fast"]) / len(runs["fast"])
    fast_cpu = sum(r["cpu_s"] for r in runs["fast"]) / len(runs["fast"])
    print(f"\nfast mode is {default['e2e_s'] / fast_e2e:.2f}x faster end to end in wall time and "
          f"{default['cpu_s'] / fast_cpu:.2f}x in CPU time (target >= 4x)")  # fmt: skip


if __name__ == "__main__":
    main()
