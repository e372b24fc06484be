"""The fused oneDNN UNet: same outputs as diffusers' eager modules, every layer packed, fallbacks, and the wiring."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.accel import attention, fusion
from core.accel.fusion import (
    FusedGEGLU,
    FusedResnetBlock2D,
    FusedTransformer2D,
    FusedUpsample2D,
    FusionStatus,
    PackedConv2d,
    PackedLinear,
    fuse_model,
    upsample_phase_weight,
)

pytestmark = pytest.mark.skipif(
    fusion.unavailable_reason(torch.float32) is not None, reason="this PyTorch build has no oneDNN"
)


def small_unet(**overrides):
    """A small SD 1.5-shaped UNet: conv and linear projections, GEGLU, resnets with shortcuts, up/down samplers."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    config = dict(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=8,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=24,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    unet = UNet2DConditionModel(**{**config, **overrides}).eval()
    with torch.no_grad():  # non-zero biases and norms everywhere, so a dropped bias or residual shows
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return unet


def pair(unet, dtype):
    """(eager, fused) copies of `unet` in `dtype`, channels_last as on the CPU path."""
    eager = copy.deepcopy(unet).to(dtype).to(memory_format=torch.channels_last)
    fused = copy.deepcopy(eager)
    fuse_model(fused)
    return eager, fused


def inputs(dtype, batch=2, size=(24, 16), seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 8, *size, generator=gen).to(dtype)
    context = torch.randn(batch, 77, 24, generator=gen).to(dtype)
    return x, context


def run(unet, x, timestep, context, **kwargs):
    with torch.inference_mode():
        return unet(x, timestep, context, **kwargs).sample.float()


@pytest.mark.parametrize("timestep", [torch.tensor(500), torch.tensor([500, 20])], ids=["one-timestep", "per-sample"])
def test_fused_fp32_matches_eager(timestep):
    """In fp32 the rewrite is the same math: one timestep (embedding folded into conv1's bias) and per-sample."""
    eager, fused = pair(small_unet(), torch.float32)
    x, context = inputs(torch.float32)
    expected, got = run(eager, x, timestep, context), run(fused, x, timestep, context)
    assert torch.allclose(got, expected, atol=2e-5, rtol=1e-4), (got - expected).abs().max()


def test_fused_bf16_is_as_close_to_fp32_as_eager_bf16():
    """In bf16, fused and eager differ only by rounding: both land as close to the fp32 answer."""
    unet = small_unet()
    exact = run(copy.deepcopy(unet), *inputs(torch.float32)[:1], torch.tensor(300), inputs(torch.float32)[1])
    eager, fused = pair(unet, torch.bfloat16)
    x, context = inputs(torch.bfloat16)
    err_eager = (run(eager, x, torch.tensor(300), context) - exact).norm() / exact.norm()
    err_fused = (run(fused, x, torch.tensor(300), context) - exact).norm() / exact.norm()
    assert err_fused < max(1.5 * err_eager, 1e-3), (err_fused, err_eager)


def test_other_sizes_and_batches_after_packing():
    """Packed weights are not tied to one input size: the high-res pass and batch 1 give the same answers."""
    eager, fused = pair(small_unet(), torch.float32)
    for batch, size in ((1, (40, 32)), (3, (8, 8))):
        x, context = inputs(torch.float32, batch=batch, size=size, seed=batch)
        expected, got = run(eager, x, torch.tensor(7), context), run(fused, x, torch.tensor(7), context)
        assert torch.allclose(got, expected, atol=2e-5, rtol=1e-4)


def test_every_layer_is_packed_and_no_weight_is_held_twice():
    from diffusers.models.activations import GEGLU
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.upsampling import Upsample2D

    unet = small_unet()
    before = sum(p.numel() for p in unet.parameters())
    kinds = lambda cls: sum(type(m) is cls for m in unet.modules())  # noqa: E731
    # Each GEGLU's projection becomes one FusedGEGLU (two packed halves), not a PackedLinear.
    expected = {"transformers": kinds(Transformer2DModel), "resnets": kinds(ResnetBlock2D),
                "upsamplers": kinds(Upsample2D), "geglu": kinds(GEGLU), "conv": kinds(nn.Conv2d),
                "linear": kinds(nn.Linear) - kinds(GEGLU)}  # fmt: skip
    # 2 + 3 + mid; 4 + 6 + 2 in mid; the first up block's
    assert expected["transformers"] == 6 and expected["resnets"] == 12 and expected["upsamplers"] == 1
    assert fuse_model(unet) == expected
    assert not [m for m in unet.modules() if type(m) in (nn.Linear, nn.Conv2d)]
    assert kinds(FusedTransformer2D) == expected["transformers"] and kinds(FusedResnetBlock2D) == expected["resnets"]
    assert kinds(FusedUpsample2D) == 1
    # What remains as parameters are the norms; the matmul weights live only in their packed copies.
    remaining = sum(p.numel() for p in unet.parameters())
    norm_modules = [m for m in unet.modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))]
    norms = sum(p.numel() for m in norm_modules for p in m.parameters())
    assert remaining == norms and remaining < before / 50
    assert unet.conv_in.in_channels == 8 and unet.dtype == torch.float32  # what the pipeline reads


def test_linear_projection_transformers_are_fused_too():
    """SD 2-style blocks (linear proj_in/proj_out) take the token path."""
    unet = small_unet(use_linear_projection=True)
    eager, fused = pair(unet, torch.float32)
    assert any(isinstance(m, FusedTransformer2D) for m in fused.modules())
    x, context = inputs(torch.float32)
    assert torch.allclose(run(fused, x, torch.tensor(5), context), run(eager, x, torch.tensor(5), context), atol=2e-5)


def test_unusual_blocks_keep_their_own_forward_on_packed_weights():
    """A scale-shift resnet is not SD 1.5's: not wrapped, but its convs are packed and it agrees."""
    unet = small_unet(resnet_time_scale_shift="scale_shift")
    eager, fused = pair(unet, torch.float32)
    assert not any(isinstance(m, FusedResnetBlock2D) for m in fused.modules())
    assert any(isinstance(m, PackedConv2d) for m in fused.modules())
    x, context = inputs(torch.float32)
    assert torch.allclose(run(fused, x, torch.tensor(5), context), run(eager, x, torch.tensor(5), context), atol=2e-5)


def test_masks_and_attention_kwargs_fall_back_to_diffusers():
    """A cross-attention mask is not the fused path's: the wrapped model's own forward answers, masked correctly."""
    eager, fused = pair(small_unet(), torch.float32)
    x, context = inputs(torch.float32)
    mask = torch.ones(2, 77)
    mask[:, 40:] = 0
    expected = run(eager, x, torch.tensor(5), context, encoder_attention_mask=mask)
    got = run(fused, x, torch.tensor(5), context, encoder_attention_mask=mask)
    assert torch.allclose(got, expected, atol=2e-5, rtol=1e-4)
    assert not torch.allclose(got, run(fused, x, torch.tensor(5), context), atol=1e-3)  # the mask mattered


def test_training_mode_runs_diffusers_forward():
    eager, fused = pair(small_unet(), torch.float32)
    block = next(m for m in fused.modules() if isinstance(m, FusedResnetBlock2D))
    block.train()
    x = torch.randn(2, 32, 8, 8)
    temb = torch.randn(2, 128)
    calls = []
    handle = block.block.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        block(x, temb)
    handle.remove()
    assert calls == [1]


def test_packed_linear_epilogues():
    gen = torch.Generator().manual_seed(0)
    x, other = torch.randn(3, 5, 16, generator=gen), torch.randn(3, 5, 12, generator=gen)
    linear = nn.Linear(16, 12)
    packed = PackedLinear.from_linear(linear)
    with torch.no_grad():
        ref = linear(x)
        assert torch.allclose(packed(x), ref, atol=1e-5)
        assert torch.allclose(packed(x, other), ref + other, atol=1e-5)
        assert torch.allclose(packed(x, other, op="mul"), ref * other, atol=1e-5)
        assert torch.allclose(packed.gelu(x), F.gelu(ref), atol=1e-5)  # exact (erf) GELU, as diffusers' GEGLU
        assert torch.allclose(packed(x, other.transpose(0, 1).contiguous().transpose(0, 1)), ref + other, atol=1e-5)


def test_packed_conv_geometry_residual_and_bias_override():
    gen = torch.Generator().manual_seed(0)
    for conv in (nn.Conv2d(6, 10, 3, padding=1), nn.Conv2d(6, 10, 3, stride=2, padding=1), nn.Conv2d(6, 10, 1)):
        x = torch.randn(2, 6, 9, 7, generator=gen).to(memory_format=torch.channels_last)
        packed = PackedConv2d(conv)
        with torch.no_grad():
            ref = conv(x)
            residual = torch.randn(ref.shape, generator=gen)
            bias = torch.randn(10, generator=gen)
            assert torch.allclose(packed(x), ref, atol=1e-5)
            assert torch.allclose(packed(x, residual), ref + residual, atol=1e-5)
            rebiased = ref - conv.bias[:, None, None] + bias[:, None, None]
            assert torch.allclose(packed(x, bias=bias), rebiased, atol=1e-5)
    assert not PackedConv2d.supports(nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"))
    assert not PackedConv2d.supports(nn.Conv2d(3, 3, 3, padding="same"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pointwise_convs_run_as_gemms_on_any_layout(dtype):
    """1x1 convolutions (stride 1, no padding, no groups) run as GEMMs on the NHWC tokens: same results as the
    convolution for channels_last and plain NCHW inputs and residuals, output in channels_last."""
    gen = torch.Generator().manual_seed(1)
    conv = nn.Conv2d(48, 40, 1).to(dtype)
    packed = PackedConv2d(conv)
    assert packed.pointwise
    assert not any(PackedConv2d(c).pointwise for c in (nn.Conv2d(8, 8, 1, stride=2), nn.Conv2d(8, 8, 1, groups=2),
                                                       nn.Conv2d(8, 8, 1, padding=1), nn.Conv2d(8, 8, 3)))  # fmt: skip
    x = torch.randn(2, 48, 11, 6, generator=gen).to(dtype)
    residual = torch.randn(2, 40, 11, 6, generator=gen).to(dtype)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.05, rtol=0.02)
    with torch.no_grad():
        ref = conv(x.float() if dtype == torch.float32 else x).float()
        for layout in (torch.contiguous_format, torch.channels_last):
            xs, rs = x.contiguous(memory_format=layout), residual.contiguous(memory_format=layout)
            out = packed(xs)
            assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(out.float(), ref, **tol)
            torch.testing.assert_close(packed(xs, rs).float(), ref + residual.float(), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_square_deep_convs_run_as_im2col_gemms(dtype, monkeypatch):
    """3x3 "same" convolutions with GEMM_CONV_CHANNELS in and out run as GEMMs over im2col patches: the
    convolution's results (borders, residual, bias override, any layout), output in channels_last."""
    assert fusion.GEMM_CONV_CHANNELS == 1280  # SD 1.5's deepest levels; a small width stands in for it here
    monkeypatch.setattr(fusion, "GEMM_CONV_CHANNELS", 24)
    gen = torch.Generator().manual_seed(2)
    conv = nn.Conv2d(24, 24, 3, padding=1).to(dtype)
    packed = PackedConv2d(conv)
    assert packed.im2col and not packed.pointwise
    others = (nn.Conv2d(24, 24, 3, stride=2, padding=1), nn.Conv2d(24, 24, 3), nn.Conv2d(16, 24, 3, padding=1),
              nn.Conv2d(24, 24, 3, padding=1, groups=2), nn.Conv2d(24, 24, 3, padding=2, dilation=2))  # fmt: skip
    assert not any(PackedConv2d(c).im2col for c in others)
    x = torch.randn(2, 24, 7, 5, generator=gen).to(dtype)
    residual = torch.randn(2, 24, 7, 5, generator=gen).to(dtype)
    bias = torch.randn(24, generator=gen).to(dtype)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.05, rtol=0.02)
    with torch.no_grad():
        ref = conv(x.float() if dtype == torch.float32 else x).float()
        rebiased = ref - conv.bias.float()[:, None, None] + bias.float()[:, None, None]
        for layout in (torch.contiguous_format, torch.channels_last):
            xs = x.contiguous(memory_format=layout)
            out = packed(xs)
            assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(out.float(), ref, **tol)
            torch.testing.assert_close(packed(xs, residual).float(), ref + residual.float(), **tol)
            torch.testing.assert_close(packed(xs, bias=bias).float(), rebiased, **tol)


def test_unet_with_im2col_convs_matches_eager(monkeypatch):
    """The small UNet's 64-channel level with its 3x3 convs as im2col GEMMs gives the eager answer."""
    monkeypatch.setattr(fusion, "GEMM_CONV_CHANNELS", 64)
    eager, fused = pair(small_unet(), torch.float32)
    assert sum(isinstance(m, PackedConv2d) and m.im2col for m in fused.modules()) >= 6
    x, context = inputs(torch.float32)
    expected, got = run(eager, x, torch.tensor(70), context), run(fused, x, torch.tensor(70), context)
    assert torch.allclose(got, expected, atol=2e-5, rtol=1e-4), (got - expected).abs().max()


def test_fused_geglu_matches_diffusers():
    from diffusers.models.activations import GEGLU

    torch.manual_seed(0)
    geglu = GEGLU(16, 24)
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        assert torch.allclose(FusedGEGLU(geglu)(x), geglu(x), atol=1e-5)


def test_install_respects_the_switch_and_reports_missing_onednn(monkeypatch):
    unet = small_unet()
    monkeypatch.setenv(fusion.MODE_ENV, "off")
    assert fusion.install(unet) == FusionStatus(False, "eager (ICLIGHT_CPU_FUSION=off)")
    monkeypatch.setenv(fusion.MODE_ENV, "auto")
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert fusion.install(unet) == FusionStatus(False, "eager (this PyTorch build has no oneDNN)")
    assert not any(isinstance(m, (PackedConv2d, PackedLinear)) for m in unet.modules())


def test_install_reports_what_it_fused():
    status = fusion.install(small_unet())
    assert status == FusionStatus(True, "fused oneDNN (6 transformers, 12 resnets, 1 upsampler)")


def test_manager_fuses_bf16_cpu_and_relights(tiny_paths, fg_image, bg_image):
    """The bf16 CPU placement loads the fused UNet through the real loader, and a relight runs end to end on it."""
    if fusion.unavailable_reason(torch.bfloat16):
        pytest.skip(f"bf16 fusion unavailable here: {fusion.unavailable_reason(torch.bfloat16)}")
    from core.models.manager import ModelManager, ModelSettings
    from core.params import RelightParams
    from core.recipe.pipeline import relight

    settings = ModelSettings(base_model=str(tiny_paths["base"]), models_dir=tiny_paths["models"], device="cpu",
                             dtype="bf16", download=False)  # fmt: skip
    manager = ModelManager(settings)
    assert manager.placement.cpu_fusion
    models = manager.get("fc")
    assert models.unet_ops.startswith("fused oneDNN") and "UNet fused oneDNN" in manager.describe("fc")
    assert models.vae_ops == "fused oneDNN (16 resnets, 3 upsamplers)" and "VAE fused oneDNN" in manager.describe("fc")
    assert fusion.shares_identical_batches(models.unet.unet)  # CFG's duplicated latents reach it held once
    params = RelightParams.for_mode("fc", prompt="sunlight", width=64, height=64, steps=2, seed=3)
    out = relight(models, fg_image, params)
    assert out.images[0].shape == (128, 128, 3) and out.images[0].dtype == np.uint8
    assert out.images[0].std() > 0
    # fbc: 12 input channels through the packed conv_in; then unloading frees the fused modules for a clean reload.
    fbc = manager.get("fbc")
    assert fbc.unet_ops.startswith("fused oneDNN") and fbc.unet.unet.conv_in.in_channels == 12
    assert fbc.vae is models.vae and fbc.vae_ops == models.vae_ops  # one VAE, fused once, reported the same
    params = RelightParams.for_mode("fbc", prompt="studio", width=64, height=64, steps=2, seed=3)
    assert relight(fbc, fg_image, params, background=bg_image).images[0].shape == (128, 128, 3)
    manager.unload()
    assert not manager.is_loaded("fc") and manager.get("fc").unet_ops.startswith("fused oneDNN")


def test_fp32_keeps_eager_modules(fc_models):
    """The seed-exact fp32 path is never rewritten."""
    assert not fc_models.placement.cpu_fusion and fc_models.unet_ops == "eager"
    assert not fusion.shares_identical_batches(fc_models.unet.unet)
    assert fc_models.vae_ops == "eager"
    assert not any(isinstance(m, (PackedConv2d, PackedLinear)) for m in fc_models.unet.modules())
    assert not any(isinstance(m, (PackedConv2d, PackedLinear)) for m in fc_models.vae.modules())


def test_fused_transformers_run_the_native_kernel(monkeypatch):
    """Head size 40 at 4,096 tokens: the fused blocks send attention to the native kernel and agree with eager."""
    kernel, status = attention.load_kernel()
    if kernel is None:
        pytest.skip(f"no native attention kernel on this machine: {status.reason}")
    unet = small_unet(block_out_channels=(80, 160), attention_head_dim=2, sample_size=64, cross_attention_dim=24)
    eager = unet.to(torch.bfloat16).to(memory_format=torch.channels_last)
    fused = copy.deepcopy(eager)
    fuse_model(fused, kernel)
    calls = []
    original = type(kernel).__call__
    record = lambda self, *a: calls.append(a[0].shape) or original(self, *a)  # noqa: E731
    monkeypatch.setattr(type(kernel), "__call__", record)
    x, context = inputs(torch.bfloat16, batch=1, size=(64, 64))
    expected, got = run(eager, x, torch.tensor(10), context), run(fused, x, torch.tensor(10), context)
    assert (1, 2, 4096, 40) in calls and all(kernel.head_dim_ok(shape[-1]) for shape in calls)
    assert (got - expected).norm() / expected.norm() < 0.02


def test_fusing_twice_changes_nothing():
    """install() on an already fused UNet (a second manager over the same modules) neither re-wraps nor breaks it."""
    eager, fused = pair(small_unet(), torch.float32)
    x, context = inputs(torch.float32)
    before = run(fused, x, torch.tensor(9), context)
    assert fuse_model(fused) == {"transformers": 0, "resnets": 0, "upsamplers": 0, "geglu": 0, "conv": 0, "linear": 0}
    resnets = [m for m in fused.modules() if isinstance(m, FusedResnetBlock2D)]
    assert resnets and not any(isinstance(m.block, FusedResnetBlock2D) for m in resnets)
    assert torch.equal(run(fused, x, torch.tensor(9), context), before)
    assert all(not m.training for m in fused.modules())  # wrappers inherit eval mode


def batch_sizes_seen(fused, run_once):
    """Batch size each packed layer computed in one call, by module name (its last input, via pre-hooks)."""
    seen, handles = {}, []
    for name, module in fused.named_modules():
        if isinstance(module, (PackedConv2d, PackedLinear)):

            def hook(module, args, name=name):
                seen[name] = args[0].shape[0]  # a conv given a stride-0 batch calls itself again on one item

            handles.append(module.register_forward_pre_hook(hook))
    try:
        run_once()
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_batch_runs_the_prefix_once_and_agrees(dtype):
    """Identical latents held once (stride 0, as CFG passes them) run once up to the first cross-attention; the
    answer is the full batch's."""
    eager, fused = pair(small_unet(), dtype)
    one, context = inputs(dtype, batch=1)[0], inputs(dtype, batch=2)[1]  # the two items' contexts differ
    full, shared = one.repeat(2, 1, 1, 1), one.expand(2, -1, -1, -1)
    assert fusion.shared_batch(shared) and not fusion.shared_batch(full)
    expected = run(fused, full, torch.tensor(50), context)
    got = None

    def once():
        nonlocal got
        got = run(fused, shared, torch.tensor(50), context)

    sizes = batch_sizes_seen(fused, once)
    tol = dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.03, rtol=0.03)
    assert torch.allclose(got, expected, **tol), (got - expected).abs().max()
    assert torch.allclose(got, run(eager, full, torch.tensor(50), context), **tol)
    assert not torch.allclose(got[0], got[1], atol=1e-3)  # the contexts made the halves differ
    first = "down_blocks.0.attentions.0.model.transformer_blocks.0"
    resnet = "down_blocks.0.resnets.0.block"
    once_only = ["conv_in", f"{resnet}.time_emb_proj", f"{resnet}.conv1", f"{resnet}.conv2",
                 "down_blocks.0.attentions.0.model.proj_in", f"{first}.attn1.to_q", f"{first}.attn1.to_k",
                 f"{first}.attn1.to_v", f"{first}.attn1.to_out.0"]  # fmt: skip
    assert {name: sizes[name] for name in once_only} == dict.fromkeys(once_only, 1)
    # From the cross-attention on, and everywhere else, the whole batch.
    assert sizes[f"{first}.attn2.to_q"] == 2 and sizes["down_blocks.0.resnets.1.block.conv1"] == 2
    assert sizes["down_blocks.0.attentions.0.model.proj_out"] == 2 and sizes["conv_out"] == 2
    assert sorted(name for name, size in sizes.items() if size == 1) == sorted(once_only)


def test_shared_batch_needs_one_timestep():
    """Per-item timesteps make the items differ from the first resnet on: that resnet runs the whole batch."""
    _, fused = pair(small_unet(), torch.float32)
    one, context = inputs(torch.float32, batch=1)[0], inputs(torch.float32, batch=2)[1]
    timesteps = torch.tensor([50, 900])
    expected = run(fused, one.repeat(2, 1, 1, 1), timesteps, context)
    got = None

    def once():
        nonlocal got
        got = run(fused, one.expand(2, -1, -1, -1), timesteps, context)

    sizes = batch_sizes_seen(fused, once)
    assert sizes["conv_in"] == 1 and sizes["down_blocks.0.resnets.0.block.conv1"] == 2
    assert torch.allclose(got, expected, atol=2e-5, rtol=1e-4)


def test_fused_unet_is_handed_only_identical_batches_held_once():
    """After share_identical_batches (once, however often asked) the UNet gets a stride-0 batch exactly when every
    item is the same, whether the sample comes by position or by name; other UNets get the batch as it is."""
    from core.recipe.sampling import ConcatConditionedUNet

    seen = []

    class Probe(nn.Module):
        conv_in = nn.Conv2d(8, 4, 1)

        def forward(self, sample, timestep, encoder_hidden_states, return_dict):
            seen.append(fusion.shared_batch(sample))
            return (sample[:, :4].contiguous(),)

    latents, concat, context = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), torch.randn(2, 77, 24)
    plain, shared = Probe(), Probe()
    fusion.share_identical_batches(shared)
    fusion.share_identical_batches(shared)
    assert fusion.shares_identical_batches(shared) and not fusion.shares_identical_batches(plain)
    assert len(shared._forward_pre_hooks) == 1
    for probe in (plain, shared):
        unet = ConcatConditionedUNet(probe)
        out = unet(torch.cat([latents, latents]), 10, context, concat)
        assert torch.equal(out, torch.cat([latents, latents]))
        unet(torch.cat([latents, latents + 1]), 10, context, concat)
    same = torch.randn(1, 8, 4, 4).expand(3, -1, -1, -1).contiguous()
    shared(sample=same, timestep=10, encoder_hidden_states=context, return_dict=False)
    assert seen == [False, False, True, False, True]


@pytest.mark.parametrize("size", [(6, 7), (1, 1), (5, 2)])
def test_upsample_phase_kernels_are_upsample_then_conv(size):
    """The four 2x2 phase kernels on the low-res input give exactly the 3x3 conv of the 2x nearest upsample."""
    gen = torch.Generator().manual_seed(sum(size))
    weight = torch.randn(5, 3, 3, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(2, 3, *size, generator=gen, dtype=torch.float64)
    expected = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, padding=1)
    phases = F.conv2d(x, upsample_phase_weight(weight), padding=1)  # [2, 4 * 5, H + 1, W + 1]
    got = torch.empty_like(expected)
    height, width = size
    for a in range(2):
        for b in range(2):
            k = 2 * a + b
            got[:, :, a::2, b::2] = phases[:, 5 * k : 5 * (k + 1), a : a + height, b : b + width]
    assert torch.allclose(got, expected, atol=1e-5)  # the taps are summed in fp32


def upsampler(channels=16, seed=0):
    from diffusers.models.upsampling import Upsample2D

    torch.manual_seed(seed)
    up = Upsample2D(channels, use_conv=True, out_channels=channels + 8).eval()
    with torch.no_grad():
        up.conv.bias.normal_()
    return up


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_upsampler_matches_diffusers(dtype):
    """2x outputs take the phase GEMM (no upsampled map is written); batches, sizes and layouts agree with eager."""
    eager = upsampler().to(dtype)
    fused = FusedUpsample2D(copy.deepcopy(eager))
    exact = upsampler()
    for batch, size in ((1, (1, 1)), (2, (5, 7)), (3, (8, 4))):
        x = torch.randn(batch, 16, *size).to(dtype)
        for layout in (torch.contiguous_format, torch.channels_last):
            with torch.inference_mode():
                got, expected = fused(x.contiguous(memory_format=layout)).float(), eager(x).float()
                reference = exact(x.float())
            assert got.shape == (batch, 24, 2 * size[0], 2 * size[1])
            if dtype == torch.float32:
                assert torch.allclose(got, expected, atol=1e-5)
            else:  # rounded at other points: as close to fp32 as eager bf16
                err_got = ((got - reference).norm() / reference.norm()).item()
                err_eager = ((expected - reference).norm() / reference.norm()).item()
                assert err_got < max(1.5 * err_eager, 2e-3), (err_got, err_eager)


def test_fused_upsampler_skips_the_upsampled_map_and_falls_back_for_other_sizes(monkeypatch):
    """The 2x path never calls interpolate; an explicit odd output size (odd latents) runs diffusers' forward."""
    eager = upsampler()
    fused = FusedUpsample2D(copy.deepcopy(eager))
    calls = []
    real = F.interpolate
    monkeypatch.setattr(F, "interpolate", lambda *a, **k: calls.append(k) or real(*a, **k))
    x = torch.randn(2, 16, 5, 6)
    with torch.inference_mode():
        fused(x)
        fused(x, output_size=(10, 12))  # the same doubling, spelled out
        assert not calls
        got, expected = fused(x, output_size=(9, 11)), eager(x, output_size=(9, 11))
    assert calls and got.shape == (2, 24, 9, 11) and torch.allclose(got, expected, atol=1e-5)


def test_fused_upsampler_computes_a_shared_batch_once():
    fused = FusedUpsample2D(upsampler())
    one = torch.randn(1, 16, 4, 5)
    with torch.inference_mode():
        shared = fused(one.expand(3, -1, -1, -1))
        assert fusion.shared_batch(shared) and torch.equal(shared[2], fused(one)[0])


def test_unet_at_odd_latent_sizes_matches_eager():
    """Latents not divisible by the UNet's downsampling pass explicit output sizes to the upsampler: still exact."""
    eager, fused = pair(small_unet(), torch.float32)
    x, context = inputs(torch.float32, size=(13, 9))
    assert torch.allclose(run(fused, x, torch.tensor(3), context), run(eager, x, torch.tensor(3), context), atol=2e-5)


def small_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    blocks = dict(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    vae = AutoencoderKL(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, **blocks).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return vae


def test_fused_vae_matches_eager():
    """The VAE's resnets (the decoder's say "group", with no time embedding), upsampler, downsampler, attention
    projections and 1x1 quant convs all take the packed path; encode and decode agree with eager."""
    from diffusers.models.resnet import ResnetBlock2D

    eager = small_vae()
    fused = copy.deepcopy(eager).to(memory_format=torch.channels_last)
    resnets = sum(type(m) is ResnetBlock2D for m in eager.modules())
    counts = fuse_model(fused)
    assert counts["resnets"] == resnets == 10 and counts["upsamplers"] == 1
    assert not [m for m in fused.modules() if type(m) in (nn.Linear, nn.Conv2d)]
    assert fusion.describe(fused) == "10 resnets, 1 upsampler"
    image = torch.rand(2, 3, 24, 16) * 2 - 1
    with torch.inference_mode():
        latents = eager.encode(image).latent_dist.mode()
        assert torch.allclose(fused.encode(image).latent_dist.mode(), latents, atol=2e-5)
        assert torch.allclose(fused.decode(latents).sample, eager.decode(latents).sample, atol=2e-5)


def test_manager_keeps_injected_vae_as_given(tiny_paths):
    """A manager over a caller's modules fuses its own copy of the VAE for bf16 CPU, never the caller's."""
    if fusion.unavailable_reason(torch.bfloat16):
        pytest.skip(f"bf16 fusion unavailable here: {fusion.unavailable_reason(torch.bfloat16)}")
    from diffusers import UNet2DConditionModel

    from core.models.loading import load_base_components
    from core.models.manager import ModelManager, ModelSettings

    base = load_base_components(str(tiny_paths["base"]))
    settings = ModelSettings(base_model="in-memory", models_dir=tiny_paths["models"], device="cpu", dtype="bf16",
                             download=False)  # fmt: skip
    unet = UNet2DConditionModel.from_pretrained(str(tiny_paths["base"]), subfolder="unet")
    manager = ModelManager.from_components(base.tokenizer, base.text_encoder, base.vae, unet, settings=settings)
    models = manager.get("fc")
    assert models.vae is not base.vae and models.vae_ops.startswith("fused oneDNN")
    assert any(type(m) is nn.Conv2d for m in base.vae.modules())
    assert manager.get("fbc").vae is models.vae  # one copy, shared by the variants as the loaded VAE is


@pytest.mark.parametrize("rows", [1, 3, 6, 100])
def test_fused_upsampler_row_chunks_agree(monkeypatch, rows):
    """Chunked GEMMs (one patch row at a time up to all of them at once) write every output row once, the same."""
    fused = FusedUpsample2D(upsampler())
    x = torch.randn(2, 16, 5, 7)
    with torch.inference_mode():
        whole = fused(x)
        monkeypatch.setattr(fusion, "UPSAMPLE_CHUNK_BYTES", rows * 2 * (7 + 1) * 4 * 16 * 4)  # `rows` patch rows
        chunked = fused(x)
    assert torch.allclose(chunked, whole, atol=1e-6)
    assert torch.allclose(whole, upsampler()(x), atol=1e-5)
