"""The acceleration layer's one door: `install` at load time, `sampling_context` around sampling, `plain_layers`."""

from __future__ import annotations

import copy

import pytest
import torch
from test_accel_fusion import inputs, run, small_unet, small_vae
from torch import nn

from core import accel
from core.accel import attention, fusion, heap, norms
from core.accel.fusion import PackedConv2d, PackedLinear
from core.models.devices import Placement, resolve_placement

GPU = Placement(device="cuda", unet_dtype=torch.float16, text_dtype=torch.float16, vae_dtype=torch.bfloat16)
NO_FUSION, NO_BF16_FUSION = fusion.unavailable_reason(torch.float32), fusion.unavailable_reason(torch.bfloat16)


def packed(model: nn.Module) -> int:
    return sum(isinstance(m, (PackedConv2d, PackedLinear)) for m in model.modules())


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


def same_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == weights.keys() and all(torch.equal(now[k], weights[k]) for k in weights)


def test_install_off_cpu_leaves_the_models_as_they_are():
    unet, vae = small_unet(), small_vae()
    processors = {name: type(p) for name, p in unet.attn_processors.items()}
    weights = snapshot(unet)
    status = accel.install(unet, vae, GPU, vae_owned=False)
    assert status == accel.AccelStatus(vae=vae, attention="SDPA", unet_ops="eager", vae_ops="eager")
    assert status.vae is vae and packed(unet) == packed(vae) == 0 and same_weights(unet, weights)
    assert {name: type(p) for name, p in unet.attn_processors.items()} == processors
    assert not fusion.shares_identical_batches(unet)
    assert unet.conv_in.weight.is_contiguous()  # not even channels_last


def test_install_fp32_cpu_only_switches_to_channels_last():
    """The seed-exact fp32 CPU path keeps diffusers' modules and SDPA; only the memory layout changes."""
    unet, vae = small_unet(), small_vae()
    status = accel.install(unet, vae, resolve_placement("cpu", "fp32"))
    assert status == accel.AccelStatus(vae=vae, attention="SDPA", unet_ops="eager", vae_ops="eager")
    assert packed(unet) == packed(vae) == 0 and not fusion.shares_identical_batches(unet)
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(NO_BF16_FUSION is not None, reason=f"bf16 fusion unavailable here: {NO_BF16_FUSION}")
def test_install_bf16_cpu_sets_up_every_part_and_reports_it():
    """Attention kernel, fused UNet and VAE with native norms, CFG's prefix held once; a caller's VAE is copied;
    the status names each part as the status line always has; a second install changes nothing."""
    placement = resolve_placement("cpu", "bf16")
    unet, vae = small_unet().to(torch.bfloat16), small_vae().to(torch.bfloat16)
    vae_weights = snapshot(vae)
    status = accel.install(unet, vae, placement, vae_owned=False)
    kernel, kernel_status = attention.load_kernel()
    assert status.attention == kernel_status.reason
    assert status.unet_ops == f"fused oneDNN (6 transformers, 12 resnets, 1 upsampler), norms {norms.load_ops()[1]}"
    assert status.vae_ops == "fused oneDNN (10 resnets, 1 upsampler)"
    assert status.vae is not vae and packed(status.vae) > 0 and packed(vae) == 0 and same_weights(vae, vae_weights)
    assert packed(unet) > 0 and fusion.shares_identical_batches(unet)
    if kernel is not None:
        assert all(isinstance(p, attention.CPUAttnProcessor) for p in unet.attn_processors.values())
    fused_vae = status.vae
    again = accel.install(unet, fused_vae, placement)
    assert again == accel.AccelStatus(fused_vae, status.attention, status.unet_ops, status.vae_ops)
    assert len(unet._forward_pre_hooks) == 1


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_sampling_context_tunes_the_heap_only_on_cpu(monkeypatch, device):
    """On CPU glibc's heap is tuned inside, put back and trimmed on exit; elsewhere glibc is not even looked up."""
    calls = []
    monkeypatch.setattr(heap, "_glibc_function", lambda name: lambda *args: calls.append((name, *args)) or 1)
    monkeypatch.delenv(heap.ALLOCATOR_ENV, raising=False)
    placement = resolve_placement("cpu", "fp32") if device == "cpu" else GPU
    with accel.sampling_context(placement):
        inside = list(calls)
    if device == "cuda":
        assert calls == []
        return
    assert inside == [("mallopt", -3, heap.HEAP_UP_TO), ("mallopt", -1, heap.HEAP_KEEP)]
    assert calls[2:4] == [("mallopt", -3, heap.GLIBC_MMAP_MAX), ("mallopt", -1, heap.GLIBC_TRIM)]
    assert calls[-1] == ("malloc_trim", 0)  # the decode that follows starts from a trimmed heap


def test_sampling_context_trims_the_heap_with_the_system_allocator_too(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "_glibc_function", lambda name: lambda *args: calls.append((name, *args)) or 1)
    monkeypatch.setenv(heap.ALLOCATOR_ENV, "system")
    with pytest.raises(RuntimeError, match="boom"), accel.sampling_context(resolve_placement("cpu", "fp32")):
        raise RuntimeError("boom")
    assert calls == [("malloc_trim", 0)]


@torch.no_grad()
def changed(model: nn.Module, seed: int) -> None:
    """A LoRA-like change of every matmul weight: W += small random delta."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if type(module) in (nn.Linear, nn.Conv2d):
            delta = torch.randn(module.weight.shape, generator=gen) * 0.05
            module.weight.add_(delta.to(module.weight.dtype))


@pytest.mark.skipif(NO_FUSION is not None, reason=f"fusion unavailable here: {NO_FUSION}")
def test_plain_layers_gives_exact_weights_and_repacks_the_new_ones():
    """Inside, diffusers' own layers with exactly the weights packed; changed there, the repacked UNet computes
    with the new weights (as an eager UNet with them does), and differently from before."""
    eager = small_unet().to(memory_format=torch.channels_last)
    fused = copy.deepcopy(eager)
    weights = snapshot(eager)
    fusion.fuse_model(fused)
    fusion.share_identical_batches(fused)
    x, context = inputs(torch.float32)
    before = run(fused, x, torch.tensor(40), context)
    with accel.plain_layers(fused) as plain:
        assert plain is fused and packed(fused) == 0 and same_weights(fused, weights)
        changed(fused, seed=1)
    changed(eager, seed=1)
    assert packed(fused) > 0 and fusion.describe(fused) == "6 transformers, 12 resnets, 1 upsampler"
    expected, got = run(eager, x, torch.tensor(40), context), run(fused, x, torch.tensor(40), context)
    assert torch.allclose(got, expected, atol=2e-5, rtol=1e-4), (got - expected).abs().max()
    assert not torch.allclose(got, before, atol=1e-3)


@pytest.mark.skipif(NO_BF16_FUSION is not None, reason=f"bf16 fusion unavailable here: {NO_BF16_FUSION}")
def test_plain_layers_repacks_an_installed_bf16_unet_with_its_kernel_and_norms():
    """After install on bf16 CPU, a weight change inside plain_layers reaches the fused path (kernel and native
    norms kept): as close to the changed fp32 UNet as an eager bf16 UNet with the same weights."""
    exact = small_unet()
    unet = copy.deepcopy(exact).to(torch.bfloat16)
    status = accel.install(unet, small_vae().to(torch.bfloat16), resolve_placement("cpu", "bf16"))
    with accel.plain_layers(unet):
        changed(unet, seed=2)
        eager = small_unet().to(torch.bfloat16)
        eager.load_state_dict(unet.state_dict())
    changed(exact, seed=2)
    assert packed(unet) > 0 and accel.install(unet, status.vae, resolve_placement("cpu", "bf16")) == status
    x, context = inputs(torch.float32)
    truth = run(exact, x, torch.tensor(300), context)
    x, context = x.to(torch.bfloat16), context.to(torch.bfloat16)
    err_eager = (run(eager, x, torch.tensor(300), context) - truth).norm() / truth.norm()
    err_fused = (run(unet, x, torch.tensor(300), context) - truth).norm() / truth.norm()
    assert err_fused < max(1.5 * err_eager, 1e-3), (err_fused, err_eager)


def test_plain_layers_leaves_an_unfused_model_alone():
    unet = small_unet()
    weights = snapshot(unet)
    with accel.plain_layers(unet):
        assert packed(unet) == 0
    assert packed(unet) == 0 and same_weights(unet, weights)
