"""CPU benchmark: full-size SD 1.5 + IC-Light fc (random weights), reference recipe vs our default CPU path.

Compute cost does not depend on weight values, so a random-initialised model written to disk in the real layout
(and loaded through the real loader) measures real speed and memory. Each recipe runs in its own process so that
peak memory is its own.

    python -m bench.bench_cpu                  # full default relight (25 steps, 512x640, highres 1.5)
    python -m bench.bench_cpu --steps 4        # quicker, same sizes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RECIPES = ("reference", "ours")
MATMUL_N = 2048  # square matmul size for the peak-throughput probe
PROBE_REPEATS = 4  # matmuls per probe taken right before and right after each timed UNet step (best of them)
STEADY = 0.15  # a step ran in one steady phase of the host when its two probes differ by at most this fraction
GIB = 1024**3


class MatmulProbe:
    """Best observed TFLOP/s of a square matmul in one dtype, measured whenever asked (the host's speed drifts)."""

    def __init__(self, dtype) -> None:
        import torch

        self.a = torch.randn(MATMUL_N, MATMUL_N, dtype=dtype)
        self.b = torch.randn(MATMUL_N, MATMUL_N, dtype=dtype)
        self.a @ self.b  # oneDNN's first call sets up its kernels

    def __call__(self, repeats: int = PROBE_REPEATS) -> float:
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            self.a @ self.b
            best = min(best, time.perf_counter() - t)
        return 2 * MATMUL_N**3 / best / 1e12


def one_phase(before: float, after: float, tolerance: float = STEADY) -> bool:
    """Whether two probes agree within `tolerance` of the faster one, so what ran between them ran in one phase."""
    return abs(before - after) <= tolerance * max(before, after)


def steady_ratios(step_times, before, after, flops: float, tolerance: float = STEADY) -> list[tuple[float, float]]:
    """(ratio to the compute limit, probe) for each step whose probes before and after agree within `tolerance`.

    Such a step ran in one phase of a drifting host, so it can be held against its own probes (their mean); the
    others straddle a change of speed and are left out.
    """
    steady = []
    for seconds, a, b in zip(step_times, before, after, strict=True):
        if one_phase(a, b, tolerance):
            peak = (a + b) / 2
            steady.append((seconds * peak * 1e12 / flops, peak))
    return steady


def matmul_peak() -> dict[str, float]:
    """Best observed TFLOP/s of a square matmul in bf16 and fp32 on this CPU."""
    import torch

    return {name: MatmulProbe(dtype)(10) for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))}


def worker(recipe: str, folder: Path, width: int, height: int, steps: int, unet_steps: int, e2e: bool) -> dict:
    """Run one recipe in this process and return its numbers."""
    import numpy as np
    import torch

    from core.accel.heap import kept_heap
    from core.models.devices import Placement, resolve_placement
    from core.models.manager import ModelManager, ModelSettings
    from core.params import RelightParams
    from core.recipe.pipeline import relight
    from core.recipe.prompt_encoding import encode_prompt_pair

    settings = ModelSettings(base_model=str(folder / "base"), models_dir=folder / "models", device="cpu",
                             dtype="fp32" if recipe == "reference" else "auto", download=False)  # fmt: skip
    # Reference: the official recipe on CPU — everything fp32, NCHW. Ours: the automatic CPU placement.
    placement = Placement("cpu", torch.float32, torch.float32, torch.float32) if recipe == "reference" else None
    placement = placement or resolve_placement("cpu", "auto")
    manager = ModelManager(settings, placement=placement)
    t = time.perf_counter()
    models = manager.get("fc")
    load_s = time.perf_counter() - t

    cond, uncond = encode_prompt_pair(models.tokenizer, models.text_encoder, "a cat, best quality", "bad", "cpu")
    dtype = placement.unet_dtype
    one = torch.randn(1, 4, height // 8, width // 8, dtype=dtype)
    latents = torch.cat([one, one])  # as classifier-free guidance runs it: the same latents, two prompts
    concat = torch.randn(1, 4, height // 8, width // 8, dtype=dtype)
    embeds = torch.cat([uncond, cond]).to(dtype)
    probe = MatmulProbe(torch.bfloat16)
    step_times, peaks, peaks_after = [], [], []
    # Timed as the pipeline samples: inside kept_heap (which keeps glibc's defaults for the reference recipe). The
    # bf16 matmul peak is probed right before and right after each step, so the run samples the speeds a drifting
    # shared VM goes through (print_table holds the fastest step against the highest probe, medians against each
    # other, and each step that ran in one steady phase against its own probes).
    with torch.inference_mode(), kept_heap(True) as allocator:
        models.unet(latents, torch.tensor(500), embeds, concat)  # warm-up
        for _ in range(unet_steps):
            peaks.append(probe())
            t = time.perf_counter()
            models.unet(latents, torch.tensor(500), embeds, concat)
            step_times.append(time.perf_counter() - t)
            peaks_after.append(probe())
    result = {"recipe": recipe, "placement": placement.describe(), "attention": models.attention, "load_s": load_s,
              "unet_ops": models.unet_ops, "allocator": allocator, "unet_step_s": statistics.median(step_times),
              "step_times": step_times, "peaks": peaks, "peaks_after": peaks_after}  # fmt: skip
    if e2e:
        fg = (np.random.RandomState(0).rand(height, width, 3) * 255).astype(np.uint8)
        params = RelightParams.for_mode("fc", prompt="a cat, sunset over sea", width=width, height=height, steps=steps)
        t = time.perf_counter()
        out = relight(models, fg, params)
        result["e2e_s"] = time.perf_counter() - t
        result["output_size"] = list(out.images[0].shape)
    result["peak_rss_gb"] = peak_rss_gb()
    return result


def unet_flop_counter(width: int, height: int, in_channels: int = 8):
    """torch's FLOP counter after one SD 1.5 + IC-Light UNet call with CFG (batch 2), run on meta tensors.

    Counted on diffusers' eager modules: our fused oneDNN ops and the C attention kernel do the same work but are
    invisible to torch's counter.
    """
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from core.models.synthetic import SD15_UNET_CONFIG

    with torch.device("meta"), torch.no_grad():
        unet = UNet2DConditionModel(**{**SD15_UNET_CONFIG, "in_channels": in_channels})
        latents = torch.empty(2, in_channels, height // 8, width // 8)
        counter = FlopCounterMode(display=False)
        with counter:
            unet(latents, torch.tensor(500), torch.empty(2, 77, 768))
    return counter


def count_unet_flops(width: int, height: int, in_channels: int = 8) -> int:
    """FLOPs of one SD 1.5 + IC-Light UNet call with CFG (batch 2)."""
    return unet_flop_counter(width, height, in_channels).get_total_flops()


def peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM: per address space, so not inherited from the parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=640)
    parser.add_argument("--steps", type=int, default=25, help="relight steps (official fc default 25)")
    parser.add_argument("--unet-steps", type=int, default=7, help="timed UNet steps per recipe (median)")
    parser.add_argument("--no-e2e", action="store_true", help="only time UNet steps")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "iclight_bench")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--worker", choices=RECIPES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        res = worker(args.worker, args.cache_dir, args.width, args.height, args.steps, args.unet_steps,
                     not args.no_e2e)  # fmt: skip
        print("RESULT " + json.dumps(res))
        return

    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    # Written in a child process so this parent stays small (children would otherwise inherit its footprint).
    subprocess.run([sys.executable, "-c", "from core.models.synthetic import write_full_size_model as w; "
                    f"from pathlib import Path; w(Path({str(args.cache_dir)!r}))"], check=True, cwd=ROOT)  # fmt: skip
    peak = matmul_peak()
    flops = count_unet_flops(args.width, args.height)
    print(f"matmul peak ({MATMUL_N}^3): bf16 {peak['bf16']:.2f} TFLOP/s, fp32 {peak['fp32']:.2f} TFLOP/s")
    results = {}
    for recipe in args.recipes.split(","):
        cmd = [sys.executable, "-m", "bench.bench_cpu", "--worker", recipe, "--width", str(args.width), "--height",
               str(args.height), "--steps", str(args.steps), "--unet-steps", str(args.unet_steps), "--cache-dir",
               str(args.cache_dir)] + (["--no-e2e"] if args.no_e2e else [])  # fmt: skip
        # The reference keeps glibc's allocator defaults, as the official demo runs; ours tunes it (core.accel).
        env = {**os.environ, "ICLIGHT_CPU_ALLOCATOR": "system" if recipe == "reference" else "tuned"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            sys.exit(f"{recipe} failed:\n{proc.stderr[-3000:]}")
        results[recipe] = json.loads(line.removeprefix("RESULT "))
    print_table(results, peak, flops, args)


def print_table(results: dict, peak: dict, flops: int, args) -> None:
    """Print the per-recipe numbers and the ratios."""
    print(f"\nIC-Light fc, {args.width}x{args.height}, {args.steps} steps, highres 1.5x / 0.5 (CFG on)")
    print(f"{'recipe':<10} {'placement':<48} {'load s':>7} {'UNet step s':>11} {'end-to-end s':>12} {'peak GB':>8}")
    for name, r in results.items():
        e2e = f"{r['e2e_s']:.1f}" if "e2e_s" in r else "-"
        print(f"{name:<10} {r['placement']:<48} {r['load_s']:>7.1f} {r['unet_step_s']:>11.2f} {e2e:>12} "
              f"{r['peak_rss_gb']:>8.2f}")  # fmt: skip
    for name, r in results.items():
        print(f"{name} attention: {r['attention']}; UNet layers: {r['unet_ops']}; allocator: {r['allocator']}")
    if "ours" in results:
        ours = results["ours"]
        print(f"\nUNet step: {flops / 1e12:.2f} TFLOP; the compute limit is that at the bf16 matmul peak")
        # Shared VMs switch between speeds faster than a step takes (the bf16 matmul probe was seen at 0.7 and 1.9
        # TFLOP/s seconds apart), so one probe does not describe a step. Held against each other: the run's fastest
        # step and its highest probe (the machine at its best), the medians of both, and each step whose probes
        # before and after agree (it ran in one phase) against those probes.
        peaks = sorted([peak["bf16"], *ours["peaks"], *ours["peaks_after"]])
        steps = sorted(ours["step_times"])
        probed = zip(ours["step_times"], ours["peaks"], ours["peaks_after"], strict=True)
        pairs = ", ".join(f"{p:.2f} > {s:.2f} s > {a:.2f}" for s, p, a in probed)
        print(f"per step (the bf16 TFLOP/s probed just before it > seconds > probed just after): {pairs}")
        best = steps[0] * peaks[-1] * 1e12 / flops
        typical = statistics.median(steps) * statistics.median(peaks) * 1e12 / flops
        print(f"fastest step {steps[0]:.2f} s against the highest peak {peaks[-1]:.2f} TFLOP/s: {best:.2f}x the "
              f"limit; median step {statistics.median(steps):.2f} s against the median peak "
              f"{statistics.median(peaks):.2f} TFLOP/s: {typical:.2f}x")  # fmt: skip
        steady = steady_ratios(ours["step_times"], ours["peaks"], ours["peaks_after"], flops)
        if steady:
            ratios = sorted(r for r, _ in steady)
            fast = max(steady, key=lambda rp: rp[1])
            print(f"steps in one steady phase (probes before and after within {STEADY:.0%}): {len(steady)} of "
                  f"{len(steps)}, each against its own probes: best {ratios[0]:.2f}x, median "
                  f"{statistics.median(ratios):.2f}x; at the fastest steady probe ({fast[1]:.2f} TFLOP/s) "
                  f"{fast[0]:.2f}x")  # fmt: skip
        else:
            print(f"no step ran in one steady phase (probes before and after within {STEADY:.0%})")
    if "ours" in results and "reference" in results:
        ref, ours = results["reference"], results["ours"]
        print(f"speed-up per UNet step: {ref['unet_step_s'] / ours['unet_step_s']:.2f}x")
        if "e2e_s" in ref and "e2e_s" in ours:
            print(f"speed-up end to end:    {ref['e2e_s'] / ours['e2e_s']:.2f}x")


if __name__ == "__main__":
    main()
