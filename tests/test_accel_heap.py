"""glibc's heap while the UNet samples: big tensors reused instead of faulted in, settings restored afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.accel import heap

FAULT_PROBE = """
import resource, torch
from core.accel.heap import kept_heap
with kept_heap() as mode:
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(30):  # a UNet-like churn of 40-60 MB bf16 activations, over glibc's 32 MB memory-map threshold
        a = torch.empty((20 + i % 3) << 20, dtype=torch.bfloat16).fill_(1)
        b = torch.empty((24 + i % 5) << 20, dtype=torch.bfloat16).fill_(1)
        del a
        c = torch.empty(30 << 20, dtype=torch.bfloat16).fill_(1)
        del b, c
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
rss_mb = int(next(x for x in open("/proc/self/status") if x.startswith("VmRSS")).split()[1]) // 1024
print(mode, faults, rss_mb)
"""


def page_faults(setting: str) -> tuple[str, int, int]:
    env = {**os.environ, heap.ALLOCATOR_ENV: setting}
    out = subprocess.run([sys.executable, "-c", FAULT_PROBE], capture_output=True, text=True, env=env, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout.split()  # fmt: skip
    return out[0], int(out[1]), int(out[2])


@pytest.mark.skipif(heap._glibc_function("mallopt") is None, reason="glibc only")
def test_tuned_allocator_reuses_big_tensors_instead_of_faulting_them_in():
    """Inside kept_heap big tensors come back from the heap (a fraction of glibc's faults); after it, the heap is
    handed back, so the process is no bigger than with glibc's defaults."""
    (tuned, tuned_faults, tuned_rss), (system, system_faults, system_rss) = page_faults("tuned"), page_faults("system")
    assert (tuned, system) == ("tuned", "system")
    assert system_faults > 30 * (32 << 20) // 4096  # the default really faults every allocation in
    assert tuned_faults < system_faults / 5, (tuned_faults, system_faults)
    assert tuned_rss < system_rss + 64, (tuned_rss, system_rss)


def test_allocator_falls_back_where_it_cannot_tune(monkeypatch, caplog):
    monkeypatch.setattr(heap, "_glibc_function", lambda name: None)
    monkeypatch.setenv(heap.ALLOCATOR_ENV, "bogus")
    with heap.kept_heap() as mode:
        assert mode == "system (not glibc)"
    assert "ICLIGHT_CPU_ALLOCATOR should be one of tuned/system but is 'bogus'" in caplog.text
    calls = []
    monkeypatch.setattr(heap, "_glibc_function", lambda name: lambda *args: calls.append((name, *args)) and 0)
    with heap.kept_heap() as mode:
        assert mode == "system (glibc refused the settings)"
    restored = [c[2] for c in calls if c[0] == "mallopt"][-2:]
    assert restored == [heap.GLIBC_MMAP_MAX, heap.GLIBC_TRIM]  # whatever was set is put back
    with heap.kept_heap(enabled=False) as mode:  # GPUs: nothing to do
        assert mode == "system"
