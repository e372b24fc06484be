"""The native bf16 norms (GroupNorm + SiLU, LayerNorm): numerics against fp64, what they take, fallbacks, wiring."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.accel import attention, fusion, norms
from core.accel.norms import NativeOps, load_ops

RUNS_HERE = all(flag in norms.cpu_flags() for flag in NativeOps.CPU_FLAGS)
needs_ops = pytest.mark.skipif(not RUNS_HERE, reason="this CPU has no AVX512-BF16, so the native ops cannot run here")
HALF_ULP = 2**-8  # bf16 keeps 8 significant bits: one rounding moves a value by at most this, relative


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    if not RUNS_HERE:
        pytest.skip("this CPU has no AVX512-BF16, so the native ops cannot run here")
    folder = tmp_path_factory.mktemp("ops")
    return NativeOps(attention.build_library(attention.find_compiler(), folder, NativeOps))


@pytest.fixture
def fresh_loader(native_cache):
    """load_ops with its cache cleared and a private build folder; restored afterwards."""
    return load_ops


def random_norm(norm: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(norm.weight.shape, generator=gen))
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=gen))
    return norm.bfloat16()


def activation(shape, seed=0, offset=0.0, spread=1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * spread + offset).bfloat16()
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def rounding_bound(got: torch.Tensor, ref: torch.Tensor) -> bool:
    """Every element within one bf16 rounding of the fp64 answer (plus fp32 arithmetic slack)."""
    return bool(((got.double() - ref).abs() <= ref.abs() * HALF_ULP * 1.02 + 1e-3).all())


@needs_ops
@pytest.mark.parametrize(
    "channels, groups, size, offset",
    [
        (320, 32, (80, 64), 0.0),
        (40, 8, (5, 7), 0.0),
        (24, 6, (3, 1), 0.0),
        (96, 32, (9, 11), 300.0),
        (320, 32, (80, 64), 300.0),
        (17, 1, (4, 4), 2.0),
    ],  # fmt: skip
    ids=["sd-level-1", "tails", "one-column", "large-mean", "large-mean-many-pixels", "odd-channels"],
)
@pytest.mark.parametrize("silu", [False, True], ids=["norm", "norm+silu"])
def test_group_norm_matches_fp64(ops, channels, groups, size, offset, silu):
    """One rounding of the exact answer, even where the mean dwarfs the spread (300 +- 1: naive E[x^2] - E[x]^2 in
    fp32 has no bits left for the variance)."""
    norm = random_norm(nn.GroupNorm(groups, channels, eps=1e-5), seed=channels)
    x = activation((2, channels, *size), seed=channels, offset=offset)
    ref = F.group_norm(x.double(), groups, norm.weight.double(), norm.bias.double(), norm.eps)
    ref = F.silu(ref) if silu else ref
    got = ops.group_norm(x, norm, silu=silu)
    assert got.dtype == torch.bfloat16 and got.shape == x.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    # SiLU's exponential is a fast one (relative error 1.4e-4): allow that on top of the rounding.
    slack = (got.double() - ref).abs() - ref.abs() * (HALF_ULP * 1.02 + (2e-4 if silu else 0)) - 1e-3
    assert (slack <= 0).all(), slack.max()


@needs_ops
def test_group_norm_without_affine_and_per_item_statistics(ops):
    """No weight or bias; each item of the batch gets its own statistics."""
    norm = nn.GroupNorm(4, 16, affine=False).bfloat16()
    x = torch.cat([activation((1, 16, 6, 6), seed=1), activation((1, 16, 6, 6), seed=2, offset=5, spread=3)])
    x = x.contiguous(memory_format=torch.channels_last)
    ref = F.group_norm(x.double(), 4, eps=norm.eps)
    assert rounding_bound(ops.group_norm(x, norm), ref)


@needs_ops
@pytest.mark.parametrize("shape, offset", [((2, 5120, 320), 0.0), ((3, 7, 70), 20.0), ((1, 1, 9), 0.0)])
def test_layer_norm_matches_fp64(ops, shape, offset):
    norm = random_norm(nn.LayerNorm(shape[-1]), seed=shape[-1])
    x = activation(shape, seed=1, offset=offset)
    ref = F.layer_norm(x.double(), shape[-1:], norm.weight.double(), norm.bias.double(), norm.eps)
    got = ops.layer_norm(x, norm)
    assert got.shape == x.shape and rounding_bound(got, ref)


@needs_ops
def test_ops_run_the_same_on_the_openmp_team_own_threads_and_any_thread_count(ops):
    norm = random_norm(nn.GroupNorm(8, 64), seed=3)
    x = activation((2, 64, 33, 17), seed=3)
    expected = ops.group_norm(x, norm, silu=True)
    own = copy.copy(ops)
    own.team = None
    threads = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            assert torch.equal(ops.group_norm(x, norm, silu=True), expected)
            assert torch.equal(own.group_norm(x, norm, silu=True), expected)
    finally:
        torch.set_num_threads(threads)


def test_ok_checks_take_only_what_the_kernels_handle():
    ops = object.__new__(NativeOps)  # the checks need no library
    gn = nn.GroupNorm(4, 16).bfloat16()
    x = activation((2, 16, 4, 4))
    assert ops.group_norm_ok(x, gn)
    assert not ops.group_norm_ok(x.contiguous(), gn)  # NCHW memory
    assert not ops.group_norm_ok(x.float().contiguous(memory_format=torch.channels_last), gn)
    assert not ops.group_norm_ok(x, nn.GroupNorm(4, 32).bfloat16())  # channel count
    assert not ops.group_norm_ok(x, nn.BatchNorm2d(16).bfloat16())
    ln = nn.LayerNorm(16).bfloat16()
    tokens = activation((2, 5, 16))
    assert ops.layer_norm_ok(tokens, ln)
    assert not ops.layer_norm_ok(tokens.transpose(0, 1), ln)  # not contiguous
    assert not ops.layer_norm_ok(tokens, nn.LayerNorm((5, 16)).bfloat16())  # two normalised axes
    assert not ops.layer_norm_ok(tokens.float(), ln)


def test_fusion_helpers_fall_back_to_pytorch():
    """Without ops, or with inputs they do not take, the helpers are PyTorch's norm (and SiLU) exactly."""
    gn, ln = nn.GroupNorm(4, 16), nn.LayerNorm(16)
    x, tokens = torch.randn(2, 16, 4, 4), torch.randn(2, 5, 16)
    assert torch.equal(fusion.group_norm(None, gn, x, silu=True), F.silu(gn(x)))
    assert torch.equal(fusion.group_norm(None, gn, x), gn(x))
    assert torch.equal(fusion.layer_norm(None, ln, tokens), ln(tokens))
    refusing = object.__new__(NativeOps)
    assert torch.equal(fusion.group_norm(refusing, gn, x), gn(x))  # fp32: not taken


def test_off_switch_and_missing_instructions(fresh_loader, monkeypatch):
    monkeypatch.setenv(norms.MODE_ENV, "off")
    assert fresh_loader() == (None, "PyTorch (ICLIGHT_CPU_OPS=off)")
    monkeypatch.setenv(norms.MODE_ENV, "auto")
    load_ops.cache_clear()
    monkeypatch.setattr(norms, "cpu_flags", lambda: {"avx512f", "avx2"})
    ops, reason = fresh_loader()
    assert ops is None and reason.startswith("PyTorch (this CPU lacks ") and "avx512_bf16" in reason


@needs_ops
def test_missing_or_failing_compiler_falls_back(fresh_loader, monkeypatch, tmp_path, broken_cc):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    ops, reason = fresh_loader()
    assert ops is None and "building the native ops failed" in reason
    monkeypatch.setenv("CC", str(broken_cc))
    load_ops.cache_clear()
    ops, reason = fresh_loader()
    assert ops is None and "error: no" in reason


@needs_ops
def test_a_failing_self_test_keeps_pytorch(fresh_loader, monkeypatch):
    monkeypatch.setattr(norms, "self_test", lambda ops: 0.5)
    ops, reason = fresh_loader()
    assert ops is None and reason == "PyTorch (the native ops' self-test was off by 0.5)"


@needs_ops
def test_loads_and_passes_its_self_test(fresh_loader):
    ops, reason = fresh_loader()
    assert ops is not None and reason.startswith("AVX512-BF16 ops (bf16_ops-")
    assert norms.self_test(ops) <= norms.SELF_TEST_TOLERANCE


@needs_ops
def test_fused_unet_runs_its_norms_on_the_ops(ops, monkeypatch):
    """In the fused bf16 UNet every resnet and transformer norm goes to the ops, and the answer stays as close to
    fp32 as the PyTorch-norm fused UNet's."""
    from test_accel_fusion import inputs, run, small_unet

    unet = small_unet()
    exact = run(copy.deepcopy(unet), inputs(torch.float32)[0], torch.tensor(300), inputs(torch.float32)[1])
    plain = copy.deepcopy(unet).to(torch.bfloat16).to(memory_format=torch.channels_last)
    with_ops = copy.deepcopy(plain)
    fusion.fuse_model(plain)
    fusion.fuse_model(with_ops, ops=ops)
    calls = []
    for name in ("group_norm", "layer_norm"):
        original = getattr(NativeOps, name)
        monkeypatch.setattr(
            NativeOps, name, lambda self, *a, _o=original, _n=name, **k: calls.append(_n) or _o(self, *a, **k)
        )
    x, context = inputs(torch.bfloat16)
    err_plain = (run(plain, x, torch.tensor(300), context) - exact).norm() / exact.norm()
    assert not calls
    err_ops = (run(with_ops, x, torch.tensor(300), context) - exact).norm() / exact.norm()
    # 12 resnets x 2 GroupNorm+SiLU and 6 transformers x (GroupNorm + 3 LayerNorms), the upsampled ones included.
    assert calls.count("group_norm") == 12 * 2 + 6 and calls.count("layer_norm") == 6 * 3
    assert err_ops < max(1.5 * err_plain, 1e-3), (err_ops, err_plain)


def test_manager_reports_the_norms(tiny_paths):
    """The status line says who runs the norms of a bf16 CPU UNet."""
    from core.models.manager import ModelManager, ModelSettings

    if fusion.unavailable_reason(torch.bfloat16):
        pytest.skip(f"bf16 fusion unavailable here: {fusion.unavailable_reason(torch.bfloat16)}")
    settings = ModelSettings(base_model=str(tiny_paths["base"]), models_dir=tiny_paths["models"], device="cpu",
                             dtype="bf16", download=False)  # fmt: skip
    models = ModelManager(settings).get("fc")
    reason = load_ops()[1]
    assert models.unet_ops.startswith("fused oneDNN") and models.unet_ops.endswith(f", norms {reason}")
