"""The one place that decides device, dtype and offloading for every model role."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import DeviceMemoryError, InvalidParameterError

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_ALIASES = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}  # torch's names
CUDA = "cuda"  # the only place this literal lives
MPS = "mps"
CPU = "cpu"


@dataclass(frozen=True)
class Placement:
    """Where and in which precision each model role runs."""

    device: str  # "cuda", "cuda:1", "mps" or "cpu"
    unet_dtype: torch.dtype
    text_dtype: torch.dtype
    vae_dtype: torch.dtype
    channels_last: bool = False  # NHWC convolutions: faster on CPU with oneDNN
    offload: bool = False  # low-VRAM: keep models on CPU, move each to the GPU only while it runs
    vae_tiling: bool = False  # low-VRAM: decode/encode the VAE in tiles
    cpu_attention: bool = False  # bf16 on CPU: try a native attention kernel (core/accel/attention.py), else SDPA
    cpu_fusion: bool = False  # bf16 on CPU: oneDNN packed weights and fused epilogues (core/accel/fusion.py)

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def cache_key(self) -> tuple[str, str]:
        """(device, dtype-name) used to cache loaded models."""
        return self.device, f"{self.unet_dtype}/{self.text_dtype}/{self.vae_dtype}/{self.offload}"

    def describe(self) -> str:
        """Human-readable one-liner for status lines and logs."""
        name = lambda d: str(d).removeprefix("torch.")  # noqa: E731
        text = (
            f"{self.device} (UNet {name(self.unet_dtype)}, text {name(self.text_dtype)}, VAE {name(self.vae_dtype)})"
        )
        if self.offload:
            text += ", low-VRAM offload"
        return text


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports in /proc/cpuinfo (empty elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return set()
    for line in cpuinfo.read_text(errors="ignore").splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix units (AMX or AVX512-BF16), where bf16 beats fp32."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except RuntimeError:
                pass
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def cuda_native_bf16(device: str = CUDA) -> bool:
    """Whether this CUDA GPU computes bf16 natively (compute capability 8.0+: Ampere and newer).

    `torch.cuda.is_bf16_supported()` also says yes where bf16 is only emulated (T4, V100, RTX 20xx), and there
    cuDNN has no bf16 convolutions, so the VAE must fall back to fp32.
    """
    major, _ = torch.cuda.get_device_capability(torch.device(device))
    return major >= 8


def _auto_device() -> str:
    if torch.cuda.is_available():
        return CUDA
    if getattr(torch.backends, MPS, None) is not None and torch.backends.mps.is_available():
        return MPS
    return CPU


def resolve_placement(device: str | None = "auto", dtype: str | None = "auto", low_vram: bool = False) -> Placement:
    """Choose device and per-role dtypes; explicit `device`/`dtype` override the automatic choice."""
    device = (device or "auto").strip().lower()
    dtype = (dtype or "auto").strip().lower()
    base, _, index = device.partition(":")
    if base not in DEVICE_CHOICES:
        raise InvalidParameterError(f"device should be one of {', '.join(DEVICE_CHOICES)} but is {device!r}")
    if ":" in device and (base != CUDA or not index.isdigit()):
        raise InvalidParameterError(f"device {device!r} is malformed; only CUDA takes an index, as in 'cuda:1'")
    dtype = DTYPE_ALIASES.get(dtype, dtype)
    if dtype not in DTYPE_CHOICES:
        raise InvalidParameterError(f"dtype should be one of {', '.join(DTYPE_CHOICES)} but is {dtype!r}")
    if device == "auto":
        device = _auto_device()
        base = device
    if base == CUDA and not torch.cuda.is_available():
        raise InvalidParameterError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu")
    if base == CUDA and index and int(index) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise InvalidParameterError(f"device {device!r} does not exist: this machine has {count} CUDA GPU(s), 0-based")
    if base == MPS and not torch.backends.mps.is_available():
        raise InvalidParameterError("device 'mps' was requested but Apple MPS is not available; use --device cpu")

    if base == CUDA:
        # As the official demos: UNet and text encoder fp16, VAE bf16 (fp32 where bf16 is unsupported).
        vae = torch.bfloat16 if cuda_native_bf16(device) else torch.float32
        unet = text = torch.float16
    elif base == MPS:
        unet = text = torch.float16
        vae = torch.float32  # bf16 convolutions are incomplete on MPS
    else:
        unet = text = vae = torch.bfloat16 if cpu_has_native_bf16() else torch.float32

    if dtype != "auto":
        unet = text = _DTYPES[dtype]
        if base == MPS:
            vae = torch.float32  # bf16 convolutions are incomplete on MPS, whatever was asked
        elif dtype == "fp16":  # the SD 1.5 VAE overflows in fp16: bf16 where the GPU computes it, else fp32
            vae = torch.bfloat16 if base == CUDA and cuda_native_bf16(device) else torch.float32
        else:
            vae = _DTYPES[dtype]
        if base == CPU and dtype == "fp16":
            logger.warning("fp16 on CPU is slow and may be unsupported for some ops; bf16 or fp32 is recommended")
    if low_vram and base == CPU:
        logger.warning("--low-vram has no effect on CPU (it keeps GPU models on the CPU between uses); ignored")
    return Placement(
        device=device,
        unet_dtype=unet,
        text_dtype=text,
        vae_dtype=vae,
        channels_last=base == CPU,
        offload=low_vram and base != CPU,
        vae_tiling=low_vram and base != CPU,
        cpu_attention=base == CPU and unet == torch.bfloat16,
        cpu_fusion=base == CPU and unet == torch.bfloat16,
    )


def env_choice(name: str, choices: tuple[str, ...]) -> str:
    """An environment variable that names one of `choices` (case-insensitive); unset or unknown gives the first,
    with a warning for an unknown value."""
    value = os.environ.get(name, choices[0]).strip().lower()
    if value not in choices:
        logger.warning("%s should be one of %s but is %r; using %s", name, "/".join(choices), value, choices[0])
        return choices[0]
    return value


def env_flag(name: str, default: bool = False) -> bool:
    """Read a boolean environment variable ('1', 'true', 'yes', 'on')."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def free_accelerator_memory() -> None:
    """Return cached GPU blocks to the driver (CUDA, MPS); nothing to do on CPU or before a GPU was used."""
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    mps = getattr(torch.backends, MPS, None)
    if mps is not None and mps.is_available():
        torch.mps.empty_cache()


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA raises torch.OutOfMemoryError; MPS and some allocators raise a plain RuntimeError with this text."""
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


@contextlib.contextmanager
def explain_out_of_memory(what: str, device: str | torch.device) -> Iterator[None]:
    """Turn an out-of-memory error inside the block into a DeviceMemoryError saying what to change."""
    try:
        yield
    except RuntimeError as exc:  # torch.OutOfMemoryError is one
        if not is_out_of_memory(exc):
            raise
        free_accelerator_memory()  # hand the failed attempt's blocks back before the next one
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DeviceMemoryError(
            f"{device} ran out of memory {what}: try --low-vram (ICLIGHT_LOW_VRAM=1), fewer images or a smaller "
            f"size ({first_line})"
        ) from None
