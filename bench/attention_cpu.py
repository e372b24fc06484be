"""CPU attention benchmark: PyTorch's SDPA vs our native kernel (AMX or AVX512-BF16, whichever this CPU runs).

The shapes are the ones a default fc relight runs, with CFG (batch 2) and 8 heads: the first level (head size 40)
at 5,120 tokens in the 512 x 640 pass and 11,520 tokens in the 1.5x high-res pass (768 x 960), its cross-attention,
and the second and third levels (head sizes 80 and 160) of the 512 x 640 pass where the kernel takes them.

    python -m bench.attention_cpu
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SHAPES = (
    (2, 8, 5120, 40),
    (2, 8, 11520, 40),
    (2, 8, 11520, 77, 40),
    (2, 8, 1280, 80),
    (2, 8, 1280, 77, 80),
    (2, 8, 320, 160),
)
# (B, H, Nq[, Nk], D)


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

    from core.accel.attention import load_kernel

    kernel, status = load_kernel()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; kernel: {status.reason}")
    # TFLOP/s counts both products (4 * scores * head size), as the UNet's FLOP count does.
    if kernel is None:
        sys.exit("no native attention kernel runs on this machine, nothing to compare")
    print(f"{'shape (B, H, Nq, Nk, D)':<28} {'SDPA ms':>9} {'ours ms':>9} {'speed-up':>9} {'G scores/s':>11} "
          f"{'TFLOP/s':>8} {'max err':>8}")  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        b, h, nq, nk, d = shape if len(shape) == 5 else (*shape[:3], shape[2], shape[3])
        if not kernel.head_dim_ok(d):
            continue
        q, k, v = (torch.randn(b, n, h, d, generator=gen).bfloat16().transpose(1, 2) for n in (nq, nk, nk))
        sdpa = best_time(F.scaled_dot_product_attention, (q, k, v), args.repeats)
        ours = best_time(kernel, (q, k, v), args.repeats)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        err = (kernel(q, k, v).transpose(1, 2).float() - ref).abs().max().item()
        scores = b * h * nq * nk
        print(f"{str((b, h, nq, nk, d)):<28} {sdpa * 1e3:>9.1f} {ours * 1e3:>9.1f} {sdpa / ours:>8.2f}x "
              f"{scores / ours / 1e9:>11.2f} {4 * scores * d / ours / 1e12:>8.3f} {err:>8.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
