"""Our CPU UNet step assembled from its parts, each timed between two matmul probes, per speed phase of the host.

Some shared VMs switch the speed of their matrix units every second or two (the bf16 matmul probe reads 0.5-0.7
TFLOP/s, then 1.4-2.0 for 0.2-3 s), so a whole UNet step rarely runs in one fast phase and `bench_cpu.py` cannot
hold a step against that phase's compute limit. Here each of the 49 parts of our default CPU UNet (every resnet,
transformer and resampler of its blocks, and its time embedding, conv_in, output norm and conv_out) runs on the
inputs it gets in a real step at 512 x 640 with CFG, between two probes. A sample whose probes agree within 15 % ran
in one phase; the probes' speeds are split into a slow and a fast group where they cluster (a host without phases
has one). The part with the fewest samples in the phase the last probe suggests runs next; once that phase has
enough of every part, the bench waits for the other one, timing a whole step now and then.

Per phase, the parts' step is the sum of each part's median time, and its limit the sum of each part's FLOPs at its
own probes. Whole steps that ran in one phase are the check: a step's time outside its parts (the skip
concatenations, the call's own work) is their median minus the parts' sum, and the most of it in any phase with
whole steps is added to every phase's assembled step.

    python -m bench.bench_blocks                 # 1,500 s of samples
    python -m bench.bench_blocks --seconds 600
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from bench.bench_cpu import MatmulProbe, one_phase, unet_flop_counter  # noqa: E402
from core.models.synthetic import write_full_size_model  # noqa: E402

PARTS = ("time_embedding", "conv_in", "down_blocks", "mid_block", "up_blocks", "conv_norm_out", "conv_act", "conv_out")
PHASE_GAP = 1.6  # two groups of probes this many times apart (geometric means) are two phases
PHASE_SHARE = 0.03  # when each group holds at least this share of the probes
MIN_SAMPLES = 3  # a phase's step is assembled only when every part has this many samples in it
STEP_EVERY = 12  # while a phase has enough samples of every part, one turn in this many times a whole step
ENOUGH = 9  # samples of each part per phase before the other phase is waited for


@dataclass(frozen=True)
class Phase:
    """One speed phase's assembled step: seconds, the compute limit at its probes, and the parts' own numbers."""

    name: str
    probe: float  # median TFLOP/s of the phase's samples
    step_s: float
    limit_s: float
    parts: dict[str, tuple[float, float, int]]  # part -> (median seconds, limit seconds, samples)

    @property
    def ratio(self) -> float:
        return self.step_s / self.limit_s


def phase_threshold(probes: list[float], gap: float = PHASE_GAP, share: float = PHASE_SHARE) -> float | None:
    """The speed between a host's slow and fast phases, None when it has one.

    The probes' log speeds are split in two where the spread within each side is least (Otsu's method); two phases
    when the sides' geometric means are `gap` times apart and each side holds `share` of the probes (a few stray
    readings are not a phase), split at the geometric middle of those means.
    """
    logs = sorted(math.log(p) for p in probes if p > 0)
    n, total, squares = len(logs), sum(logs), sum(x * x for x in logs)
    best, low, low_sq = None, 0.0, 0.0
    for i in range(1, n):  # logs[:i] against logs[i:], each side's spread from running sums
        low, low_sq = low + logs[i - 1], low_sq + logs[i - 1] ** 2
        high, high_sq = total - low, squares - low_sq
        spread = low_sq - low * low / i + high_sq - high * high / (n - i)
        if best is None or spread < best[0]:
            best = (spread, i, low / i, high / (n - i))
    if best is None or best[3] - best[2] < math.log(gap) or min(best[1], n - best[1]) < share * n:
        return None
    return math.exp((best[2] + best[3]) / 2)


def phase_of(before: float, after: float, threshold: float | None) -> str | None:
    """ "fast", "slow" ("steady" without phases) for a sample whose probes agree, None for one that straddles."""
    if not one_phase(before, after):
        return None
    if threshold is None:
        return "steady"
    if (before > threshold) != (after > threshold):
        return None
    return "fast" if before > threshold else "slow"


def assemble(
    samples: dict[str, list[tuple[float, float, float]]],
    flops: dict[str, float],
    threshold: float | None,
    min_samples: int = MIN_SAMPLES,
) -> tuple[list[Phase], dict[str, dict]]:
    """Per phase, the step as the sum of its parts' median times and the limit as the sum of their FLOPs at their
    probes; also, per phase, how many samples each part has (phases missing a part are not assembled)."""
    by_phase: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for part, rows in samples.items():
        for seconds, before, after in rows:
            phase = phase_of(before, after, threshold)
            if phase is not None:
                by_phase.setdefault(phase, {}).setdefault(part, []).append((seconds, (before + after) / 2))
    phases, counts = [], {}
    for name, parts in sorted(by_phase.items()):
        counts[name] = {part: len(parts.get(part, [])) for part in samples}
        if min(counts[name].values()) < min_samples:
            continue
        table = {}
        for part, rows in parts.items():
            seconds = statistics.median(s for s, _ in rows)
            probe = statistics.median(p for _, p in rows)
            table[part] = (seconds, flops[part] / (probe * 1e12), len(rows))
        probe = statistics.median(p for rows in parts.values() for _, p in rows)
        step_s, limit_s = (sum(row[k] for row in table.values()) for k in (0, 1))
        phases.append(Phase(name, probe, step_s, limit_s, table))
    return phases, counts


def in_phase(rows: list[tuple[float, float, float]], threshold: float | None, phase: str) -> int:
    """How many of a part's samples ran in `phase`."""
    return sum(phase_of(before, after, threshold) == phase for _, before, after in rows)


def part_flops(width: int, height: int, names: list[str]) -> dict[str, float]:
    """FLOPs of each named part of an SD 1.5 + IC-Light fc UNet call with CFG."""
    counts = unet_flop_counter(width, height).get_flop_counts()
    return {name: float(sum(counts.get(f"UNet2DConditionModel.{name}", {}).values())) for name in names}


def _copy(x):
    """A fresh copy of captured inputs (a stride-0 batch stays one item held once)."""
    import torch

    if isinstance(x, torch.Tensor):
        if x.dim() and x.shape[0] > 1 and x.stride(0) == 0:
            return x[:1].clone().expand_as(x)
        return x.clone()
    if isinstance(x, (list, tuple)):
        return type(x)(_copy(y) for y in x)
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    return x


def unet_parts(unet) -> dict:
    """The UNet's parts: each resnet, transformer and resampler of its blocks, and its own layers."""
    from torch import nn

    parts = {}
    for name in PARTS:
        child = getattr(unet, name, None)
        if child is None:
            continue
        blocks = {f"{name}.{i}": b for i, b in enumerate(child)} if isinstance(child, nn.ModuleList) else {name: child}
        for prefix, block in blocks.items():
            lists = {n: c for n, c in block.named_children() if isinstance(c, nn.ModuleList)}
            if not lists:
                parts[prefix] = block
            for list_name, items in lists.items():
                parts.update({f"{prefix}.{list_name}.{j}": m for j, m in enumerate(items)})
    return parts


def run(folder: Path, width: int, height: int, seconds: float) -> tuple[dict, list, list, dict]:
    """Sample our default CPU UNet's parts and whole steps for `seconds`; returns samples, steps, probes, flops."""
    import torch

    from core.accel.heap import kept_heap
    from core.models.devices import resolve_placement
    from core.models.manager import ModelManager, ModelSettings
    from core.recipe.prompt_encoding import encode_prompt_pair

    settings = ModelSettings(base_model=str(folder / "base"), models_dir=folder / "models", device="cpu",
                             dtype="auto", download=False)  # fmt: skip
    placement = resolve_placement("cpu", "auto")
    models = ModelManager(settings, placement=placement).get("fc")
    print(f"placement: {placement.describe()}; attention: {models.attention}; UNet layers: {models.unet_ops}")
    modules = unet_parts(models.unet.unet)
    captured = {}

    def capture(name):
        def hook(module, args, kwargs):
            captured.setdefault(name, (args, kwargs))

        return hook

    hooks = [m.register_forward_pre_hook(capture(n), with_kwargs=True) for n, m in modules.items()]
    cond, uncond = encode_prompt_pair(models.tokenizer, models.text_encoder, "a cat, best quality", "bad", "cpu")
    dtype = placement.unet_dtype
    one = torch.randn(1, 4, height // 8, width // 8, dtype=dtype)
    latents, concat = torch.cat([one, one]), torch.randn(1, 4, height // 8, width // 8, dtype=dtype)
    embeds = torch.cat([uncond, cond]).to(dtype)
    step = lambda: models.unet(latents, torch.tensor(500), embeds, concat)  # noqa: E731
    probe = MatmulProbe(torch.bfloat16)
    steps, probes = [], []
    with torch.inference_mode(), kept_heap(True):
        step()
        for hook in hooks:
            hook.remove()
        names = [n for n in modules if n in captured]
        samples = {n: [] for n in names}
        for name in names:  # warm each part once on its own
            args, kwargs = _copy(captured[name])
            modules[name](*args, **kwargs)

        def between_probes(fn, *args, **kwargs) -> tuple[float, float, float]:
            before = probe(1)
            t = time.perf_counter()
            fn(*args, **kwargs)
            elapsed = time.perf_counter() - t
            after = probe(1)
            probes.extend((before, after))
            return elapsed, before, after

        start, turn, last, threshold = time.perf_counter(), 0, 0.0, None
        while time.perf_counter() - start < seconds:
            turn += 1
            if turn % 20 == 1 and len(probes) > 50:
                threshold = phase_threshold(probes)
            looks = phase_of(last, last, threshold)
            fewest = min(names, key=lambda n: in_phase(samples[n], threshold, looks))  # noqa: B023
            if in_phase(samples[fewest], threshold, looks) < ENOUGH or (threshold is None and turn % STEP_EVERY):
                args, kwargs = _copy(captured[fewest])
                samples[fewest].append(between_probes(modules[fewest], *args, **kwargs))
                last = samples[fewest][-1][2]
            elif turn % STEP_EVERY == 0:  # whole steps, to check the assembled ones against
                steps.append(between_probes(step))
                last = steps[-1][2]
            else:  # this phase has enough samples: wait for the other one
                last = probe(1)
                probes.append(last)
    return samples, steps, probes, part_flops(width, height, names)


def whole_steps(steps: list[tuple[float, float, float]], threshold: float | None, phase: str, flops: float):
    """Seconds and ratios to the limit of the whole steps that ran in `phase`."""
    inside = [(s, (b + a) / 2) for s, b, a in steps if phase_of(b, a, threshold) == phase]
    return [s for s, _ in inside], [s * p * 1e12 / flops for s, p in inside]


def outside_parts(phases: list[Phase], steps: list, threshold: float | None, min_steps: int = MIN_SAMPLES):
    """(seconds, phase): the most time a whole step spent outside its parts in any phase with `min_steps` whole
    steps (their median minus the assembled step: the skip concatenations and the call's own work), else None."""
    found = []
    for phase in phases:
        seconds, _ = whole_steps(steps, threshold, phase.name, 1.0)
        if len(seconds) >= min_steps:
            found.append((max(0.0, statistics.median(seconds) - phase.step_s), phase.name))
    return max(found) if found else None


def report(samples: dict, steps: list, probes: list, flops: dict, width: int, height: int, seconds: float) -> None:
    """Print each phase's assembled step against its limit, the whole steps that ran in it, and the parts."""
    threshold = phase_threshold(probes)
    total = sum(flops.values())
    count = sum(map(len, samples.values()))
    print(f"\nUNet step at {width}x{height} with CFG: {total / 1e12:.2f} TFLOP in {len(flops)} parts; {count} part "
          f"samples and {len(steps)} whole steps in {seconds:.0f} s")  # fmt: skip
    low, high = min(probes), max(probes)
    if threshold is None:
        print(f"probes {low:.2f}-{high:.2f} TFLOP/s: one phase")
    else:
        share = sum(p > threshold for p in probes) / len(probes)
        print(f"probes {low:.2f}-{high:.2f} TFLOP/s: two phases, split at {threshold:.2f} "
              f"(fast in {share:.0%} of the probes)")  # fmt: skip
    phases, counts = assemble(samples, flops, threshold)
    outside = outside_parts(phases, steps, threshold)
    for phase in phases:
        whole, ratios = whole_steps(steps, threshold, phase.name, total)
        check = "no whole step ran in this phase"
        if whole:
            check = (f"{len(whole)} whole steps ran in it: median {statistics.median(whole):.2f} s, "
                     f"{statistics.median(ratios):.2f}x the limit")  # fmt: skip
        print(f"\n{phase.name} phase (median probe {phase.probe:.2f} TFLOP/s): parts {phase.step_s:.2f} s against "
              f"their limit {phase.limit_s:.2f} s: {phase.ratio:.2f}x; {check}")  # fmt: skip
        if outside:
            step = phase.step_s + outside[0]
            print(f"  assembled step: parts + {outside[0]:.2f} s outside them (the most of any phase, here the "
                  f"{outside[1]}) = {step:.2f} s: {step / phase.limit_s:.2f}x the limit")  # fmt: skip
        print(f"  {'part':<28} {'GFLOP':>7} {'samples':>7} {'median ms':>9} {'limit ms':>8} {'ratio':>6}")
        for part, (t, limit, n) in phase.parts.items():
            ratio = f"{t / limit:.2f}" if limit else "-"
            print(f"  {part:<28} {flops[part] / 1e9:>7.1f} {n:>7} {t * 1e3:>9.1f} {limit * 1e3:>8.1f} {ratio:>6}")
    for name, count in counts.items():
        if name not in {p.name for p in phases}:
            short = ", ".join(f"{part} {n}" for part, n in count.items() if n < MIN_SAMPLES)
            print(f"\n{name} phase: not assembled, parts with under {MIN_SAMPLES} samples: {short}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=640)
    parser.add_argument("--seconds", type=float, default=1500, help="how long to sample")
    parser.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "iclight_bench")
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    write_full_size_model(args.cache_dir)
    samples, steps, probes, flops = run(args.cache_dir, args.width, args.height, args.seconds)
    report(samples, steps, probes, flops, args.width, args.height, args.seconds)


if __name__ == "__main__":
    main()
