"""Device and dtype decisions, made in one place."""

from __future__ import annotations

import pytest
import torch

from core.errors import InvalidParameterError
from core.models import devices
from core.models.devices import cpu_has_native_bf16, resolve_placement


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


@pytest.mark.parametrize("device", ["auto:1", "cpu:x", "cpu:0", "cuda:", "cuda:one", "mps:1"])
def test_malformed_device_strings_are_named(device):
    with pytest.raises(InvalidParameterError, match=f"device '{device}' is malformed"):
        resolve_placement(device, "auto")


@pytest.fixture()
def fake_cuda(monkeypatch):
    """Two CUDA GPUs whose compute capabilities the test sets; bf16 'supported' everywhere, as torch says."""
    capability = {0: (8, 0), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability[(d.index or 0) if d else 0])
    return capability


def test_cuda_vae_is_bf16_only_where_the_gpu_computes_it(fake_cuda):
    placement = resolve_placement("cuda", "auto")
    assert (placement.unet_dtype, placement.text_dtype, placement.vae_dtype) == (torch.float16,) * 2 + (
        torch.bfloat16,
    )
    fake_cuda[1] = (7, 5)  # a T4: bf16 only emulated, no bf16 convolutions in cuDNN
    assert resolve_placement("cuda:1", "auto").vae_dtype == torch.float32
    assert resolve_placement("cuda:1", "fp16").vae_dtype == torch.float32
    assert resolve_placement("cuda:0", "fp16").vae_dtype == torch.bfloat16


def test_cuda_index_past_the_gpus_is_a_clear_error(fake_cuda):
    with pytest.raises(InvalidParameterError, match="'cuda:2' does not exist: this machine has 2 CUDA GPU"):
        resolve_placement("cuda:2", "auto")


def test_mps_vae_stays_fp32_whatever_is_asked(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    for dtype in ("auto", "bf16", "fp16"):
        placement = resolve_placement("mps", dtype)
        assert placement.vae_dtype == torch.float32 and placement.unet_dtype != torch.float32


@pytest.mark.parametrize(("alias", "dtype"), [("float32", torch.float32), ("BFloat16", torch.bfloat16)])
def test_torch_dtype_names_are_accepted(alias, dtype):
    assert resolve_placement("cpu", alias).unet_dtype == dtype


def test_low_vram_is_ignored_on_cpu():
    placement = resolve_placement("cpu", "auto", low_vram=True)
    assert not placement.offload and not placement.vae_tiling


def test_env_choice_reads_one_of_its_choices(monkeypatch, caplog):
    monkeypatch.delenv("ICLIGHT_TEST_MODE", raising=False)
    assert devices.env_choice("ICLIGHT_TEST_MODE", ("auto", "off")) == "auto"  # unset: the first
    monkeypatch.setenv("ICLIGHT_TEST_MODE", " OFF ")
    assert devices.env_choice("ICLIGHT_TEST_MODE", ("auto", "off")) == "off"
    assert not caplog.text
    monkeypatch.setenv("ICLIGHT_TEST_MODE", "sometimes")
    assert devices.env_choice("ICLIGHT_TEST_MODE", ("auto", "off")) == "auto"
    assert "ICLIGHT_TEST_MODE should be one of auto/off but is 'sometimes'; using auto" in caplog.text
