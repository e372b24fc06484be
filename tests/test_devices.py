"""Device and dtype decisions, made in one place."""

from __future__ import annotations

import pytest
import torch

from core.devices import cpu_has_native_bf16, resolve_placement
from core.errors import InvalidParameterError


def test_cpu_auto_uses_bf16_only_with_native_units():
    placement = resolve_placement("cpu", "auto")
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert placement.unet_dtype == placement.text_dtype == placement.vae_dtype == expected
    assert placement.channels_last and not placement.offload


def test_explicit_dtype_overrides():
    placement = resolve_placement("cpu", "fp32")
    assert placement.unet_dtype == torch.float32 and placement.vae_dtype == torch.float32
    assert "cpu" in placement.describe()


def test_fp16_never_reaches_the_vae_on_cpu():
    assert resolve_placement("cpu", "fp16").vae_dtype == torch.float32


@pytest.mark.parametrize(("device", "dtype", "message"), [("tpu", "auto", "device should be one of"),
                                                          ("cpu", "fp8", "dtype should be one of")])  # fmt: skip
def test_bad_choices_are_named(device, dtype, message):
    with pytest.raises(InvalidParameterError, match=message):
        resolve_placement(device, dtype)


def test_cuda_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidParameterError, match="no CUDA GPU is available"):
        resolve_placement("cuda", "auto")


def test_low_vram_is_ignored_on_cpu():
    placement = resolve_placement("cpu", "auto", low_vram=True)
    assert not placement.offload and not placement.vae_tiling
