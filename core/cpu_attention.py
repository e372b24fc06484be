"""Fast bf16 self-attention on CPUs with AMX: a small C kernel built on first use, SDPA everywhere else.

PyTorch's CPU flash attention spends most of its time in the softmax when the head size is small (SD 1.5's first
UNet level has 8 heads of 40), about 2.7 G scores/s on two Sapphire Rapids cores. `native/amx_attention.c` keeps
each score tile in L1, runs the softmax one query per SIMD lane and both products on AMX tiles: 2.0x and 2.3x
faster on the self-attention at 5,120 and 11,520 tokens (`bench/attention_cpu.py`). It is compiled with the system C
compiler into a cache folder on first use, checked against SDPA, and used only for what it supports; anything
else (no compiler, no AMX, other head sizes, masks, gradients) runs PyTorch's SDPA.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from core.devices import cpu_flags

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native") / "amx_attention.c"
CACHE_ENV = "ICLIGHT_CACHE_DIR"  # where the compiled kernel is kept (default ~/.cache/iclight)
CC_ENV = "CC"
MODE_ENV = "ICLIGHT_CPU_ATTENTION"  # auto (default) or sdpa
MODES = ("auto", "sdpa")
CFLAGS = ("-O3", "-std=gnu11", "-shared", "-fPIC", "-pthread", "-mavx512f", "-mavx512bw", "-mavx512vl",
          "-mavx512dq", "-mavx512bf16", "-mamx-tile", "-mamx-bf16")  # fmt: skip
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "amx_tile", "amx_bf16")
HEAD_DIMS = range(34, 47, 2)  # what the kernel's tile layout handles (one spare row for the denominator)
KEY_BLOCK = 128  # keys per softmax block: scores (8 KB) and probabilities (4 KB) stay in L1
KEY_CHUNK = 4096  # keys per pass over a thread's query tiles: packed K and V^T (640 KB) stay in L2
MIN_SCORES = 256 * 256  # below this the thread start-up outweighs the gain
MAX_THREADS = 256  # the kernel's own limit
COMPILE_TIMEOUT_S = 120
SELF_TEST_TOLERANCE = 0.02  # max |ours - fp32 SDPA| on the self-test; bf16 SDPA itself is about 0.01


@dataclass(frozen=True)
class KernelStatus:
    """Whether the AMX kernel is in use, and why not when it is not."""

    available: bool
    reason: str  # one line for logs and status lines


def find_compiler() -> str | None:
    """$CC, else the first of cc, gcc, clang on PATH."""
    if os.environ.get(CC_ENV):
        return os.environ[CC_ENV]
    return next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


def cache_dir() -> Path:
    """$ICLIGHT_CACHE_DIR, else $XDG_CACHE_HOME/iclight, else ~/.cache/iclight."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "iclight"


def build_library(compiler: str, folder: Path) -> Path:
    """Compile the kernel (once per source, flags and compiler) into `folder`; returns the shared library."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode() + version.encode()).hexdigest()[:16]
    target = folder / f"amx_attention-{digest}.so"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    # Compile to a private name and rename: two processes building at once never see half a library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *CFLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True,
                              timeout=COMPILE_TIMEOUT_S)  # fmt: skip
        if proc.returncode:
            raise RuntimeError(f"{compiler} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


class AmxAttention:
    """The compiled kernel behind a torch-facing call; `supports` says which inputs it takes."""

    def __init__(self, library: Path, own_threads: bool = False) -> None:
        """Runs on PyTorch's OpenMP team when its runtime is found (see `openmp_team`), else on threads of its own."""
        lib = ctypes.CDLL(str(library))
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        lib.amx_request.restype = ctypes.c_int
        lib.amx_scratch_elems.restype = i64
        lib.amx_scratch_elems.argtypes = [i64] * 5
        lib.amx_attention.restype = ctypes.c_int
        lib.amx_attention.argtypes = [ptr] * 5 + [i64] * 14 + [ctypes.c_double] + [i64] * 3 + [ptr]
        self._lib = lib
        self.library = library
        self.team = None if own_threads else openmp_team()  # GOMP_parallel's address, or None: own threads

    def request_permission(self) -> bool:
        """Linux grants AMX tile state per process on request (kernel 5.16+)."""
        return self._lib.amx_request() == 0

    @staticmethod
    def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
        """Unmasked bf16 CPU attention, [B, H, N, D] with D in 34..46, large enough to be worth it."""
        return (
            q.device.type == "cpu"
            and q.dtype == k.dtype == v.dtype == torch.bfloat16
            and q.dim() == k.dim() == v.dim() == 4
            and q.shape[-1] in HEAD_DIMS
            and q.shape[-1] == k.shape[-1] == v.shape[-1]
            and q.shape[:2] == k.shape[:2] == v.shape[:2]
            and k.shape[2] == v.shape[2]
            and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
            and q.shape[2] * k.shape[2] >= MIN_SCORES
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
        )

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        """softmax(q k^T * scale) v as a [B, Nq, H, D] tensor (heads already interleaved for the output proj)."""
        b, h, nq, d = q.shape
        nk = k.shape[2]
        scale = d**-0.5 if scale is None else scale
        out = torch.empty(b, nq, h, d, dtype=torch.bfloat16)
        scratch = torch.empty(self._lib.amx_scratch_elems(b, h, nk, d, KEY_BLOCK), dtype=torch.bfloat16)
        rc = self._lib.amx_attention(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), scratch.data_ptr(),
                                     b, h, nq, nk, d, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], scale,
                                     KEY_BLOCK, KEY_CHUNK, min(torch.get_num_threads(), MAX_THREADS),
                                     self.team)  # fmt: skip
        if rc:
            raise RuntimeError(f"AMX attention kernel failed (code {rc}) for q {tuple(q.shape)}, k {tuple(k.shape)}")
        return out


OPENMP_RUNTIMES = ("libgomp", "libiomp5")  # both export GOMP_parallel


def openmp_team(maps: str | None = None) -> int | None:
    """Address of GOMP_parallel in the OpenMP runtime this process already has loaded (PyTorch's), else None.

    The kernel then runs on the threads PyTorch's operators use. On its own threads it competes for the cores with
    that team, which spins idle for several milliseconds after every operator (2x slower right after a matmul on
    2 cores). Only a runtime that is already mapped is used, so no second OpenMP runtime is ever started.
    """
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return None
    paths = {field for line in maps.splitlines() for field in line.split()[5:] if field.startswith("/")}
    for path in sorted(paths):
        if Path(path).name.startswith(OPENMP_RUNTIMES):
            try:
                return ctypes.cast(ctypes.CDLL(path).GOMP_parallel, ctypes.c_void_p).value
            except (OSError, AttributeError):
                continue
    return None


def self_test(kernel: AmxAttention) -> float:
    """Max |kernel - fp32 SDPA| on odd sizes (tails in queries, keys and blocks) and strided inputs."""
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for b, h, nq, nk, d in ((1, 2, 300, 301, 40), (2, 1, 257, 4200, 46), (1, 3, 512, 300, 34)):
        q, k, v = (torch.randn(b, n, h, d, generator=gen).to(torch.bfloat16).transpose(1, 2) for n in (nq, nk, nk))
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).transpose(1, 2)
        worst = max(worst, (kernel(q, k, v).float() - ref).abs().max().item())
    return worst


@functools.cache
def load_kernel() -> tuple[AmxAttention | None, KernelStatus]:
    """The AMX kernel when this machine can build and run it, else None; with the reason either way (cached)."""
    mode = os.environ.get(MODE_ENV, "auto").strip().lower()
    if mode not in MODES:
        logger.warning("%s should be one of %s but is %r; using auto", MODE_ENV, ", ".join(MODES), mode)
    if mode == "sdpa":
        return None, KernelStatus(False, f"SDPA ({MODE_ENV}=sdpa)")
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None, KernelStatus(False, "SDPA (the AMX kernel is for Linux on x86-64)")
    missing = [f for f in CPU_FLAGS if f not in cpu_flags()]
    if missing:
        return None, KernelStatus(False, f"SDPA (this CPU lacks {', '.join(missing)})")
    compiler = find_compiler()
    if compiler is None:
        return None, KernelStatus(False, "SDPA (no C compiler found to build the AMX kernel; install gcc)")
    try:
        try:
            library = build_library(compiler, cache_dir())
        except OSError:  # cache folder not writable: build in a private temporary folder instead
            library = build_library(compiler, Path(tempfile.gettempdir()) / f"iclight-{os.getuid()}")
        kernel = AmxAttention(library)
        if not kernel.request_permission():
            return None, KernelStatus(False, "SDPA (Linux refused AMX tile state; kernel 5.16+ is needed)")
        error = self_test(kernel)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return None, KernelStatus(False, f"SDPA (building the AMX kernel failed: {exc})")
    if not error <= SELF_TEST_TOLERANCE:
        return None, KernelStatus(False, f"SDPA (the AMX kernel's self-test was off by {error:.3g})")
    threads = "PyTorch's OpenMP threads" if kernel.team else "its own threads"
    return kernel, KernelStatus(True, f"AMX kernel ({kernel.library.name}, on {threads})")


def has_plain_layers(attn) -> bool:
    """A diffusers Attention with nothing SD 1.5's lacks: no spatial/group/cross/q/k norms, no residual inside."""
    return (
        attn.spatial_norm is None
        and attn.group_norm is None
        and not attn.norm_cross
        and attn.norm_q is None
        and attn.norm_k is None
        and not attn.residual_connection
        and attn.rescale_output_factor == 1.0
    )


class CPUAttnProcessor:
    """diffusers attention processor: the AMX kernel for the plain attention it supports, SDPA otherwise.

    SD 1.5 attention blocks are plain (no spatial/group/cross norms, no residual inside, no mask), which is the
    path written out here; any other block goes to diffusers' own `AttnProcessor2_0`.
    """

    def __init__(self, kernel: AmxAttention | None) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.kernel = kernel
        self.fallback = AttnProcessor2_0()

    @staticmethod
    def is_plain(attn, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> bool:
        return hidden_states.dim() == 3 and attention_mask is None and has_plain_layers(attn)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if not self.is_plain(attn, hidden_states, attention_mask):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        out = attend(self.kernel, query, key, value, attn.heads, attn.scale)
        return attn.to_out[1](attn.to_out[0](out))


def attend(
    kernel: AmxAttention | None, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int, scale: float
) -> torch.Tensor:
    """softmax(q k^T * scale) v over `heads` heads: [B, N, heads*D] projections in, [B, Nq, heads*D] out.

    The kernel runs what it supports; everything else, or a kernel call that fails, runs SDPA.
    """
    batch = query.shape[0]
    head_dim = key.shape[-1] // heads
    query, key, value = (t.unflatten(-1, (heads, head_dim)).transpose(1, 2) for t in (query, key, value))
    out = None
    if kernel is not None and scale > 0 and kernel.supports(query, key, value):
        try:
            out = kernel(query, key, value, scale)  # already [B, N, H, D]
        except RuntimeError as exc:  # threads or memory could not be had: SDPA still gives the answer
            logger.warning("%s; using SDPA for this call", exc)
    if out is None:
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False, scale=scale)
        out = out.transpose(1, 2)
    return out.reshape(batch, -1, heads * head_dim).to(query.dtype)


def install(unet: torch.nn.Module) -> KernelStatus:
    """Route a diffusers UNet's attention through the AMX kernel when this machine has it; returns what is used."""
    kernel, status = load_kernel()
    if kernel is not None:
        unet.set_attn_processor(CPUAttnProcessor(kernel))
    logger.info("CPU attention: %s", status.reason)
    return status
