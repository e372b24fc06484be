"""Fused bf16 GroupNorm(+SiLU) and LayerNorm for the fused CPU UNet: a small C library built on first use.

PyTorch runs these in bf16 well below the memory bandwidth (its in-place SiLU on a first-level activation takes 2.4x
as long as a copy) and rounds to bf16 between GroupNorm and SiLU. `native/bf16_ops.c` does each in two passes over
memory, in fp32, rounded to bf16 once:

- `group_norm`: GroupNorm on channels-last activations, with the resnets' SiLU in the same pass;
- `layer_norm`: LayerNorm over the last dimension (the transformer blocks' three norms).

Like the attention kernels (`core/accel/attention.py`) it is compiled with the system C compiler into the cache
folder, checked against PyTorch before use, runs on PyTorch's OpenMP threads, and needs AVX512-BF16 (Intel Cooper
Lake / Sapphire Rapids and newer, AMD Zen 4 and newer). Anything it does not take runs PyTorch's operators.
"""

from __future__ import annotations

import ctypes
import functools
import subprocess
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.accel import attention
from core.models.devices import cpu_flags, env_choice

MODE_ENV = "ICLIGHT_CPU_OPS"  # auto (default) or off
MODES = ("auto", "off")
SELF_TEST_TOLERANCE = 0.02  # max |ours - fp32 PyTorch| relative to the output's scale; bf16 rounding is 0.004
_PTR, _I64 = ctypes.c_void_p, ctypes.c_int64


class NativeOps:
    """`native/bf16_ops.c` behind torch-facing calls; each `*_ok` says which inputs it takes."""

    NAME = "AVX512-BF16 ops"
    SOURCE = attention.NATIVE / "bf16_ops.c"
    CFLAGS = attention.BASE_CFLAGS
    CPU_FLAGS = attention.BASE_CPU_FLAGS

    def __init__(self, library: Path) -> None:
        """Runs on PyTorch's OpenMP team when its runtime is found, else on threads of its own."""
        lib = ctypes.CDLL(str(library))
        lib.bf16_group_norm_work_bytes.restype = _I64
        lib.bf16_group_norm_work_bytes.argtypes = [_I64] * 3
        lib.bf16_group_norm.restype = ctypes.c_int
        lib.bf16_group_norm.argtypes = [_PTR] * 4 + [_I64] * 4 + [ctypes.c_double, ctypes.c_int, _PTR, _I64, _PTR]
        lib.bf16_layer_norm.restype = ctypes.c_int
        lib.bf16_layer_norm.argtypes = [_PTR] * 4 + [_I64] * 2 + [ctypes.c_double, _I64, _PTR]
        self._lib = lib
        self.library = library
        self.team = attention.openmp_team()

    @staticmethod
    def _threads() -> int:
        return min(torch.get_num_threads(), attention.MAX_THREADS)

    @staticmethod
    def _bf16_cpu(x: torch.Tensor) -> bool:
        return x.device.type == "cpu" and x.dtype == torch.bfloat16 and not x.requires_grad

    @staticmethod
    def _params(norm: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        weight = None if norm.weight is None else norm.weight.detach().float().contiguous()
        bias = None if norm.bias is None else norm.bias.detach().float().contiguous()
        return weight, bias

    @staticmethod
    def _ptr(t: torch.Tensor | None) -> int | None:
        return None if t is None else t.data_ptr()

    def _check(self, rc: int, what: str, shape) -> None:
        if rc:
            raise RuntimeError(f"{self.NAME}: {what} failed (code {rc}) for {tuple(shape)}")

    def group_norm_ok(self, x: torch.Tensor, norm: nn.Module) -> bool:
        return (
            type(norm) is nn.GroupNorm
            and self._bf16_cpu(x)
            and x.dim() == 4
            and x.shape[1] == norm.num_channels
            and x.is_contiguous(memory_format=torch.channels_last)
            and x.shape[2] * x.shape[3] > 1
        )

    def group_norm(self, x: torch.Tensor, norm: nn.GroupNorm, silu: bool = False) -> torch.Tensor:
        """norm(x), then SiLU when `silu`, for a channels-last NCHW x; returns channels-last."""
        b, c, h, w = x.shape
        weight, bias = self._params(norm)
        out = torch.empty_like(x, memory_format=torch.channels_last)
        threads = self._threads()
        work = torch.empty(self._lib.bf16_group_norm_work_bytes(b, c, threads), dtype=torch.uint8)
        rc = self._lib.bf16_group_norm(x.data_ptr(), out.data_ptr(), self._ptr(weight), self._ptr(bias), b, h * w, c,
                                       norm.num_groups, norm.eps, int(silu), work.data_ptr(), threads,
                                       self.team)  # fmt: skip
        self._check(rc, "GroupNorm", x.shape)
        return out

    def layer_norm_ok(self, x: torch.Tensor, norm: nn.Module) -> bool:
        return (
            type(norm) is nn.LayerNorm
            and self._bf16_cpu(x)
            and len(norm.normalized_shape) == 1
            and x.dim() >= 1
            and x.shape[-1] == norm.normalized_shape[0]
            and x.is_contiguous()
        )

    def layer_norm(self, x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        """norm(x) over the last axis."""
        weight, bias = self._params(norm)
        out = torch.empty_like(x)
        c = x.shape[-1]
        rc = self._lib.bf16_layer_norm(x.data_ptr(), out.data_ptr(), self._ptr(weight), self._ptr(bias),
                                       x.numel() // c, c, norm.eps, self._threads(), self.team)  # fmt: skip
        self._check(rc, "LayerNorm", x.shape)
        return out


def self_test(ops: NativeOps) -> float:
    """Worst error of each op against PyTorch in fp32 on odd sizes (tails, large means), relative to the scale."""
    gen = torch.Generator().manual_seed(0)
    worst = 0.0

    def err(got: torch.Tensor, ref: torch.Tensor) -> float:
        return ((got.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()

    for channels, groups, size, offset in ((40, 8, (5, 7), 0.0), (96, 32, (3, 11), 30.0)):
        norm = nn.GroupNorm(groups, channels, eps=1e-5)
        with torch.no_grad():
            norm.weight.normal_(generator=gen)
            norm.bias.normal_(generator=gen)
        norm = norm.bfloat16()
        x = (torch.randn(2, channels, *size, generator=gen) + offset).bfloat16()
        x = x.contiguous(memory_format=torch.channels_last)
        ref = F.group_norm(x.float(), groups, norm.weight.float(), norm.bias.float(), norm.eps)
        worst = max(worst, err(ops.group_norm(x, norm), ref), err(ops.group_norm(x, norm, silu=True), F.silu(ref)))
    norm = nn.LayerNorm(70).bfloat16()
    x = (torch.randn(3, 9, 70, generator=gen) + 20).bfloat16()
    ref = F.layer_norm(x.float(), (70,), norm.weight.float(), norm.bias.float(), norm.eps)
    return max(worst, err(ops.layer_norm(x, norm), ref))


@functools.cache
def load_ops() -> tuple[NativeOps | None, str]:
    """The native ops when this machine can build and run them (cached), else None; with the reason either way."""
    if env_choice(MODE_ENV, MODES) == "off":
        return None, f"PyTorch ({MODE_ENV}=off)"
    if not attention.native_platform():
        return None, "PyTorch (the native ops are for Linux on x86-64)"
    missing = [flag for flag in NativeOps.CPU_FLAGS if flag not in cpu_flags()]
    if missing:
        return None, f"PyTorch (this CPU lacks {', '.join(missing)})"
    compiler = attention.find_compiler()
    if compiler is None:
        return None, "PyTorch (no C compiler found to build the native ops; install gcc)"
    try:
        ops = NativeOps(attention.build_cached(compiler, NativeOps))
        error = self_test(ops)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return None, f"PyTorch (building the native ops failed: {exc})"
    if not error <= SELF_TEST_TOLERANCE:
        return None, f"PyTorch (the native ops' self-test was off by {error:.3g})"
    return ops, f"{NativeOps.NAME} ({ops.library.name})"
