"""CPU attention benchmark: PyTorch's SDPA vs our AMX kernel on SD 1.5's first-level self-attention.

The shapes are the ones a default fc relight runs, with CFG (batch 2) and 8 heads of 40:
5,120 tokens in the 512 x 640 pass and 11,520 tokens in the 1.5x high-res pass (768 x 960).

    python bench/attention_cpu.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = ((2, 8, 5120, 40), (2, 8, 11520, 40), (2, 8, 11520, 77, 40))  # (B, H, Nq[, Nk], D)


def best_time(fn, inputs: tuple, repeats: int) -> float:
    """Best of `repeats` timed calls of fn(*inputs) after one warm-up call."""
    fn(*inputs)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*inputs)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from core.cpu_attention import load_kernel

    kernel, status = load_kernel()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; kernel: {status.reason}")
    if kernel is None:
        sys.exit("the AMX kernel is not available on this machine, nothing to compare")
    print(f"{'shape (B, H, Nq, Nk, D)':<28} {'SDPA ms':>9} {'AMX ms':>9} {'speed-up':>9} {'G scores/s':>11} "
          f"{'max err':>8}")  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        b, h, nq, nk, d = shape if len(shape) == 5 else (*shape[:3], shape[2], shape[3])
        q, k, v = (torch.randn(b, n, h, d, generator=gen).bfloat16().transpose(1, 2) for n in (nq, nk, nk))
        sdpa = best_time(F.scaled_dot_product_attention, (q, k, v), args.repeats)
        ours = best_time(kernel, (q, k, v), args.repeats)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        err = (kernel(q, k, v).transpose(1, 2).float() - ref).abs().max().item()
        print(f"{str((b, h, nq, nk, d)):<28} {sdpa * 1e3:>9.1f} {ours * 1e3:>9.1f} {sdpa / ours:>8.2f}x "
              f"{b * h * nq * nk / ours / 1e9:>11.2f} {err:>8.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
