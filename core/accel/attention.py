"""Fast bf16 attention on CPUs with AMX or AVX512-BF16: small C kernels built on first use, SDPA everywhere else.

PyTorch's CPU flash attention spends most of its time in the softmax and in small matmuls when the head size is
small (SD 1.5's first UNet level has 8 heads of 40). Two fused kernels keep each score block in L1 and run the
softmax one query per SIMD lane:

- `native/amx_attention.c` for CPUs with AMX (Intel Sapphire Rapids and newer), even head sizes 34..160: both
  products on AMX tiles; 2.7x faster than SDPA at 5,120 tokens and head size 40 on two Sapphire Rapids cores
  (`bench/attention_cpu.py`); at head size 80, 1.2x for self-attention and 1.8x for the 77-key cross-attention;
  on par at 160;
- `native/bf16_attention.c` for CPUs with AVX512-BF16 but no AMX (AMD Zen 4 and newer, Intel Cooper Lake), any
  even head size up to 256: both products on `vdpbf16ps`; 3.2x faster than SDPA at 5,120 tokens on two Zen 4 cores.

The kernel is compiled with the system C compiler into a cache folder on first use, checked against SDPA, and used
only for what it supports; anything else (no compiler, neither instruction set, other head sizes, masks,
gradients) runs PyTorch's SDPA.
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

from core.models.devices import cpu_flags, env_choice

logger = logging.getLogger(__name__)

NATIVE = Path(__file__).with_name("native")
HEADERS = (NATIVE / "common.h",)  # included by every kernel source; part of the build's identity
CACHE_ENV = "ICLIGHT_CACHE_DIR"  # where the compiled kernel is kept (default ~/.cache/iclight)
CC_ENV = "CC"
MODE_ENV = "ICLIGHT_CPU_ATTENTION"  # auto (default), amx, avx512 or sdpa
MODES = ("auto", "amx", "avx512", "sdpa")
BASE_CFLAGS = ("-O3", "-std=gnu11", "-shared", "-fPIC", "-pthread", "-mavx512f", "-mavx512bw", "-mavx512vl",
               "-mavx512dq", "-mavx512bf16")  # fmt: skip
BASE_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16")
KEY_BLOCK = 128  # keys per softmax block: scores (8 KB) and probabilities (4 KB) stay in L1
KEY_CHUNK = 4096  # AMX kernel: keys per pass over a thread's query tiles (packed K and V^T, 640 KB, stay in L2)
MIN_SCORES = 256 * 256  # below this the thread start-up outweighs the gain
MAX_THREADS = 256  # the kernels' own limit
COMPILE_TIMEOUT_S = 120
SELF_TEST_TOLERANCE = 0.02  # max |ours - fp32 SDPA| on the self-test; bf16 SDPA itself is about 0.01


@dataclass(frozen=True)
class KernelStatus:
    """Whether a native attention kernel is in use, and why not when it is not."""

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


def build_library(compiler: str, folder: Path, kind: type[NativeAttention]) -> Path:
    """Compile a kernel once per source, flags and compiler into `folder`; returns the shared library."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    sources = b"".join(path.read_bytes() for path in (kind.SOURCE, *HEADERS))
    digest = hashlib.sha256(sources + " ".join(kind.CFLAGS).encode() + version.encode()).hexdigest()[:16]
    target = folder / f"{kind.SOURCE.stem}-{digest}.so"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    # Compile to a private name and rename: two processes building at once never see half a library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *kind.CFLAGS, str(kind.SOURCE), "-o", tmp], capture_output=True, text=True,
                              timeout=COMPILE_TIMEOUT_S)  # fmt: skip
        if proc.returncode:
            raise RuntimeError(f"{compiler} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def build_cached(compiler: str, kind) -> Path:
    """`build_library` into the cache folder, or into a private temporary folder when that is not writable."""
    try:
        return build_library(compiler, cache_dir(), kind)
    except OSError:
        return build_library(compiler, Path(tempfile.gettempdir()) / f"iclight-{os.getuid()}", kind)


def native_platform() -> bool:
    """Whether the native kernels can run here at all: Linux on x86-64."""
    return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")


class NativeAttention:
    """A compiled attention kernel behind a torch-facing call; `supports` says which inputs it takes."""

    NAME = ""  # as status lines name it
    SOURCE = Path()
    CFLAGS: tuple[str, ...] = ()
    CPU_FLAGS: tuple[str, ...] = ()

    def __init__(self, library: Path, own_threads: bool = False) -> None:
        """Runs on PyTorch's OpenMP team when its runtime is found (see `openmp_team`), else on threads of its own."""
        self._lib = ctypes.CDLL(str(library))
        self._bind(self._lib)
        self.library = library
        self.team = None if own_threads else openmp_team()  # GOMP_parallel's address, or None: own threads

    def _bind(self, lib: ctypes.CDLL) -> None:
        raise NotImplementedError

    def request_permission(self) -> bool:
        """Whether the OS lets this process use the instructions (AMX needs a grant; AVX-512 does not)."""
        return True

    @staticmethod
    def head_dim_ok(d: int) -> bool:
        raise NotImplementedError

    @classmethod
    def supports(cls, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
        """Unmasked bf16 CPU attention, [B, H, N, D] with a head size this kernel takes, large enough to pay off."""
        return (
            q.device.type == "cpu"
            and q.dtype == k.dtype == v.dtype == torch.bfloat16
            and q.dim() == k.dim() == v.dim() == 4
            and cls.head_dim_ok(q.shape[-1])
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
        scale = d**-0.5 if scale is None else scale
        out = torch.empty(b, nq, h, d, dtype=torch.bfloat16)
        rc = self._launch(q, k, v, out, scale, min(torch.get_num_threads(), MAX_THREADS))
        if rc:
            raise RuntimeError(f"{self.NAME} attention kernel failed (code {rc}) for q {tuple(q.shape)}, "
                               f"k {tuple(k.shape)}")  # fmt: skip
        return out

    def _launch(self, q, k, v, out, scale: float, threads: int) -> int:
        raise NotImplementedError


_I64, _PTR = ctypes.c_int64, ctypes.c_void_p


class AmxAttention(NativeAttention):
    """`native/amx_attention.c`: both products on AMX tiles; even head sizes 34..160 (SD 1.5 has 40, 80 and 160)."""

    NAME = "AMX"
    SOURCE = NATIVE / "amx_attention.c"
    CFLAGS = (*BASE_CFLAGS, "-mamx-tile", "-mamx-bf16")
    CPU_FLAGS = (*BASE_CPU_FLAGS, "amx_tile", "amx_bf16")

    def _bind(self, lib: ctypes.CDLL) -> None:
        lib.amx_request.restype = ctypes.c_int
        lib.amx_scratch_elems.restype = _I64
        lib.amx_scratch_elems.argtypes = [_I64] * 5
        lib.amx_attention.restype = ctypes.c_int
        lib.amx_attention.argtypes = [_PTR] * 5 + [_I64] * 14 + [ctypes.c_double] + [_I64] * 3 + [_PTR]

    def request_permission(self) -> bool:
        """Linux grants AMX tile state per process on request (kernel 5.16+)."""
        return self._lib.amx_request() == 0

    @staticmethod
    def head_dim_ok(d: int) -> bool:
        return 34 <= d <= 160 and d % 2 == 0

    def _launch(self, q, k, v, out, scale: float, threads: int) -> int:
        b, h, nq, d = q.shape
        nk = k.shape[2]
        scratch = torch.empty(self._lib.amx_scratch_elems(b, h, nk, d, KEY_BLOCK), dtype=torch.bfloat16)
        return self._lib.amx_attention(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), scratch.data_ptr(),
                                       b, h, nq, nk, d, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], scale,
                                       KEY_BLOCK, KEY_CHUNK, threads, self.team)  # fmt: skip


class Bf16Attention(NativeAttention):
    """`native/bf16_attention.c`: both products on AVX512-BF16 `vdpbf16ps`; any even head size up to 256."""

    NAME = "AVX512-BF16"
    SOURCE = NATIVE / "bf16_attention.c"
    CFLAGS = BASE_CFLAGS
    CPU_FLAGS = BASE_CPU_FLAGS

    def _bind(self, lib: ctypes.CDLL) -> None:
        lib.bf16_scratch_elems.restype = _I64
        lib.bf16_scratch_elems.argtypes = [_I64] * 4
        lib.bf16_attention.restype = ctypes.c_int
        lib.bf16_attention.argtypes = [_PTR] * 5 + [_I64] * 14 + [ctypes.c_double] + [_I64] * 2 + [_PTR]

    @staticmethod
    def head_dim_ok(d: int) -> bool:
        return 2 <= d <= 256 and d % 2 == 0

    def _launch(self, q, k, v, out, scale: float, threads: int) -> int:
        b, h, nq, d = q.shape
        nk = k.shape[2]
        scratch = torch.empty(self._lib.bf16_scratch_elems(b, h, nk, d), dtype=torch.bfloat16)
        return self._lib.bf16_attention(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), scratch.data_ptr(),
                                        b, h, nq, nk, d, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], scale,
                                        KEY_BLOCK, threads, self.team)  # fmt: skip


KERNELS = {"amx": AmxAttention, "avx512": Bf16Attention}  # in order of preference


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


SELF_TEST_SHAPES = (
    (1, 2, 300, 301, 40),
    (2, 1, 257, 4200, 46),
    (1, 3, 512, 300, 34),
    (1, 2, 260, 333, 80),
    (1, 1, 257, 300, 160),
)


def self_test(kernel: NativeAttention) -> float:
    """Max |kernel - fp32 SDPA| on odd sizes (tails in queries, keys and blocks) and strided inputs."""
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for b, h, nq, nk, d in (shape for shape in SELF_TEST_SHAPES if kernel.head_dim_ok(shape[-1])):
        q, k, v = (torch.randn(b, n, h, d, generator=gen).to(torch.bfloat16).transpose(1, 2) for n in (nq, nk, nk))
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).transpose(1, 2)
        worst = max(worst, (kernel(q, k, v).float() - ref).abs().max().item())
    return worst


def _load(kind: type[NativeAttention], compiler: str) -> tuple[NativeAttention | None, str]:
    """Build, load and self-test one kernel: (kernel, status reason) or (None, why not)."""
    try:
        kernel = kind(build_cached(compiler, kind))
        if not kernel.request_permission():
            return None, f"SDPA (Linux refused {kind.NAME} tile state; kernel 5.16+ is needed)"
        error = self_test(kernel)
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return None, f"SDPA (building the {kind.NAME} kernel failed: {exc})"
    if not error <= SELF_TEST_TOLERANCE:
        return None, f"SDPA (the {kind.NAME} kernel's self-test was off by {error:.3g})"
    threads = "PyTorch's OpenMP threads" if kernel.team else "its own threads"
    return kernel, f"{kind.NAME} kernel ({kernel.library.name}, on {threads})"


@functools.cache
def load_kernel() -> tuple[NativeAttention | None, KernelStatus]:
    """The best attention kernel this machine can build and run (AMX, else AVX512-BF16), else None; with the reason
    either way (cached). ICLIGHT_CPU_ATTENTION=amx or avx512 asks for one kernel, sdpa for none."""
    mode = env_choice(MODE_ENV, MODES)
    if mode == "sdpa":
        return None, KernelStatus(False, f"SDPA ({MODE_ENV}=sdpa)")
    if not native_platform():
        return None, KernelStatus(False, "SDPA (the attention kernels are for Linux on x86-64)")
    kinds = [KERNELS[mode]] if mode in KERNELS else list(KERNELS.values())
    usable = [kind for kind in kinds if all(flag in cpu_flags() for flag in kind.CPU_FLAGS)]
    if not usable:
        missing = [flag for flag in kinds[-1].CPU_FLAGS if flag not in cpu_flags()]
        wanted = " nor ".join(kind.NAME for kind in kinds)
        return None, KernelStatus(False, f"SDPA (this CPU has no {wanted}: it lacks {', '.join(missing)})")
    compiler = find_compiler()
    if compiler is None:
        reason = f"SDPA (no C compiler found to build the {usable[0].NAME} kernel; install gcc)"
        return None, KernelStatus(False, reason)
    failures = []
    for kind in usable:
        kernel, reason = _load(kind, compiler)
        if kernel is not None:
            return kernel, KernelStatus(True, reason)
        logger.warning("CPU attention: %s", reason)
        failures.append(reason)
    return None, KernelStatus(False, failures[0])


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
    """diffusers attention processor: the native kernel for the plain attention it supports, SDPA otherwise.

    SD 1.5 attention blocks are plain (no spatial/group/cross norms, no residual inside, no mask), which is the
    path written out here; any other block goes to diffusers' own `AttnProcessor2_0`.
    """

    def __init__(self, kernel: NativeAttention | None) -> None:
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
    kernel: NativeAttention | None,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    heads: int,
    scale: float,
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
    """Route a diffusers UNet's attention through a native kernel when this machine has one; returns what is used."""
    kernel, status = load_kernel()
    if kernel is not None:
        unet.set_attn_processor(CPUAttnProcessor(kernel))
    logger.info("CPU attention: %s", status.reason)
    return status
