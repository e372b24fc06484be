"""glibc's heap while the UNet samples on CPU: big tensors reused instead of page-faulted in, then handed back."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

from core.models.devices import env_choice

ALLOCATOR_ENV = "ICLIGHT_CPU_ALLOCATOR"  # "tuned" (default) or "system"
ALLOCATOR_MODES = ("tuned", "system")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
HEAP_UP_TO = 256 << 20  # while the UNet samples: tensors up to this size come from the reusable heap
HEAP_KEEP = 256 << 20  # ... and this much free memory stays at the top of the heap
GLIBC_MMAP_MAX, GLIBC_TRIM = 32 << 20, 64 << 20  # glibc's own settings once warmed up, restored afterwards


def _glibc_function(name: str):
    """A glibc function through ctypes, or None where the C library is not glibc (macOS, musl, Windows)."""
    import ctypes
    import ctypes.util

    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        return getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def kept_heap(enabled: bool = True) -> Iterator[str]:
    """While the UNet samples on CPU, keep its big tensors in glibc's heap so they are reused, not page-faulted in.

    glibc serves allocations over 32 MB with fresh memory maps and returns them on free, so each high-res UNet
    activation over 32 MB costs its size in page faults on every call: ~4x the matmul itself on a 2-core machine.
    On exit glibc's settings come back and the freed heap is handed back, so the VAE and the idle app keep their
    usual footprint. Yields the mode in use; `ICLIGHT_CPU_ALLOCATOR=system` keeps glibc's defaults throughout.
    """
    mode = env_choice(ALLOCATOR_ENV, ALLOCATOR_MODES) if enabled else "system"
    mallopt = _glibc_function("mallopt") if mode == "tuned" else None
    if mode == "tuned" and mallopt is None:
        mode = "system (not glibc)"
    elif mallopt is not None and not (
        mallopt(_M_MMAP_THRESHOLD, HEAP_UP_TO) == 1 and mallopt(_M_TRIM_THRESHOLD, HEAP_KEEP) == 1
    ):
        mode = "system (glibc refused the settings)"
    try:
        yield mode
    finally:
        if mallopt is not None:  # also after a partial refusal
            mallopt(_M_MMAP_THRESHOLD, GLIBC_MMAP_MAX)
            mallopt(_M_TRIM_THRESHOLD, GLIBC_TRIM)
            release_cpu_memory()


def release_cpu_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it after big loads, inflating RSS by ~1 GB)."""
    gc.collect()
    trim = _glibc_function("malloc_trim")
    if trim is not None:
        trim(0)
