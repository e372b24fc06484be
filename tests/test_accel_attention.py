"""The native attention kernels (AMX, AVX512-BF16): numerics against SDPA, what they accept, fallbacks, use in a UNet.

Every kernel test runs once per kernel this CPU can execute (both on Sapphire Rapids, AVX512-BF16 on Zen 4)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core.accel import attention
from core.accel.attention import (
    AmxAttention,
    Bf16Attention,
    CPUAttnProcessor,
    KernelStatus,
    attend,
    build_library,
    load_kernel,
)


def runs_here(kind) -> bool:
    return all(flag in attention.cpu_flags() for flag in kind.CPU_FLAGS)


HAS_AMX = runs_here(AmxAttention)
needs_amx = pytest.mark.skipif(not HAS_AMX, reason="this CPU has no AMX, so the AMX kernel cannot run here")
needs_a_kernel = pytest.mark.skipif(not runs_here(Bf16Attention), reason="this CPU has no AVX512-BF16: no kernel runs")


@pytest.fixture
def fresh_loader(native_cache):
    """load_kernel with its cache cleared and a private build folder; restored afterwards."""
    return load_kernel


@pytest.fixture(scope="module", params=[AmxAttention, Bf16Attention], ids=["amx", "avx512"])
def kernel(request, tmp_path_factory):
    """Each kernel this CPU can run, built into a private folder (so both are tested where both run)."""
    kind = request.param
    if not runs_here(kind):
        pytest.skip(f"this CPU lacks {kind.NAME}, so that kernel cannot run here")
    kernel = kind(build_library(attention.find_compiler(), tmp_path_factory.mktemp(kind.NAME), kind))
    assert kernel.request_permission()
    return kernel


def qkv(b, h, nq, nk, d, seed=0, spread=1.0, interleaved=True):
    """bf16 q, k, v as [B, H, N, D]: views of [B, N, H, D] (diffusers' layout) or contiguous."""
    gen = torch.Generator().manual_seed(seed)

    def one(n):
        if interleaved:
            return (torch.randn(b, n, h, d, generator=gen) * spread).to(torch.bfloat16).transpose(1, 2)
        return (torch.randn(b, h, n, d, generator=gen) * spread).to(torch.bfloat16)

    return one(nq), one(nk), one(nk)


def errors(kernel, q, k, v, scale=None):
    """(max error of the kernel, max error of bf16 SDPA), both against fp32 SDPA."""
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=scale)
    sdpa = F.scaled_dot_product_attention(q, k, v, scale=scale).float()
    ours = kernel(q, k, v, scale).transpose(1, 2).float()
    assert ours.shape == ref.shape and torch.isfinite(ours).all()
    return (ours - ref).abs().max().item(), (sdpa - ref).abs().max().item()


@needs_a_kernel
def test_load_kernel_picks_the_best_kernel_this_cpu_runs(fresh_loader):
    kernel, status = fresh_loader()
    best = AmxAttention if HAS_AMX else Bf16Attention
    assert type(kernel) is best and status.available and status.reason.startswith(f"{best.NAME} kernel (")
    assert kernel.library.is_file() and kernel.library.name.startswith(best.SOURCE.stem)


@needs_a_kernel
def test_mode_asks_for_one_kernel(fresh_loader, monkeypatch):
    monkeypatch.setenv(attention.MODE_ENV, "avx512")
    kernel, status = fresh_loader()
    assert type(kernel) is Bf16Attention and status.reason.startswith("AVX512-BF16 kernel")
    monkeypatch.setenv(attention.MODE_ENV, "amx")
    fresh_loader.cache_clear()
    kernel, status = fresh_loader()
    if HAS_AMX:
        assert type(kernel) is AmxAttention
    else:
        assert kernel is None and status.reason.startswith("SDPA (this CPU has no AMX: it lacks amx_tile")


@pytest.mark.parametrize(
    "b,h,nq,nk,d",
    [
        (2, 8, 1024, 1024, 40),  # SD 1.5 level 1 at 256 x 256
        (1, 2, 300, 301, 40),  # tails: queries not a multiple of 16, odd key count
        (1, 1, 257, 4200, 40),  # keys span two chunks with a partial block; one query in the last tile
        (1, 3, 512, 300, 34),  # the AMX kernel's smallest head size
        (2, 1, 333, 1000, 46),  # the largest head size of the AMX kernel's narrow path
        (1, 2, 4096, 64, 40),  # few keys: one partial block
        (2, 2, 520, 515, 80),  # SD 1.5 level 2 (the AMX kernel's wide path: O^T streamed through memory)
        (2, 4, 1280, 77, 80),  # its cross-attention
        (1, 2, 300, 250, 160),  # SD 1.5 level 3: five full groups of 32 dims, 11 O^T tiles
        (2, 1, 333, 1000, 48),  # the wide path's smallest head size: one full group and a short one
        (1, 1, 257, 4200, 158),  # its largest with a short group; keys span two chunks
        (1, 2, 270, 299, 64),  # SD 2
        (1, 1, 256, 257, 6),  # tiny: two head dims per register group (AVX512-BF16 kernel only)
        (1, 1, 260, 300, 256),  # the AVX512-BF16 kernel's largest
        (1, 1, 256, 300, 44),  # not a size the AVX512-BF16 kernel specialises: its generic loop
    ],
)
@pytest.mark.parametrize("interleaved", [True, False])
def test_kernel_matches_sdpa(kernel, b, h, nq, nk, d, interleaved):
    if not kernel.head_dim_ok(d):
        assert not kernel.supports(*qkv(1, 1, 512, 512, d))
        return
    q, k, v = qkv(b, h, nq, nk, d, interleaved=interleaved)
    ours, sdpa = errors(kernel, q, k, v)
    # Both round to bf16 at the end; the kernel may not be meaningfully worse than PyTorch's own bf16 SDPA.
    assert ours <= 1.5 * sdpa + 1e-3, (ours, sdpa)


def test_kernel_takes_queries_with_odd_strides(kernel):
    """Query rows are gathered a dim pair (32 bits) at a time when aligned; odd strides take the scalar path."""
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(1, 3, 301, 41, generator=gen).to(torch.bfloat16)[..., :40]  # row stride 41: pairs unaligned
    k, v = (torch.randn(1, 3, 300, 40, generator=gen).to(torch.bfloat16) for _ in range(2))
    assert q.stride(-2) % 2 == 1 and kernel.supports(q, k, v)
    ours, sdpa = errors(kernel, q, k, v)
    assert ours <= 1.5 * sdpa + 1e-3, (ours, sdpa)
    assert torch.equal(kernel(q, k, v), kernel(q.contiguous(), k, v))  # both paths give the same bits


@pytest.mark.parametrize("d", [40, 80])
def test_kernel_writes_every_output_and_zeroes_its_padding(kernel, monkeypatch, d):
    """Scratch and output buffers start as whatever memory held (here NaN): the packer writes every padded key and
    the kernel every output element, so nothing stale leaks into the result."""
    empty = torch.empty
    monkeypatch.setattr(torch, "empty", lambda *a, **k: empty(*a, **k).fill_(float("nan")))
    q, k, v = qkv(1, 2, 301, 333, d)  # keys pad to a whole block, the last query tile is partial
    ours, sdpa = errors(kernel, q, k, v)
    assert ours <= 1.5 * sdpa + 1e-3, (ours, sdpa)


def test_kernel_scale_and_peaky_scores(kernel):
    q, k, v = qkv(1, 2, 640, 640, 40, spread=6.0)  # logits in the hundreds: the running max must keep exp finite
    ours, sdpa = errors(kernel, q, k, v)
    assert ours <= 1.5 * sdpa + 1e-3
    ours, sdpa = errors(kernel, *qkv(1, 2, 640, 640, 40, seed=3), scale=0.7)
    assert ours <= 1.5 * sdpa + 1e-3


@pytest.mark.parametrize("nk,d", [(1000, 40), (4200, 40), (1000, 80)])
def test_kernel_rescales_when_later_keys_score_higher(kernel, nk, d):
    """The softmax keeps a running maximum: scores that rise block after block, and one late key far above all
    others, must both move it (without the rescale the spike's exp2 overflows to inf). Head size 80 takes the AMX
    kernel's wide path, which rescales O^T in memory."""
    q, k, v = qkv(1, 2, 300, nk, d, seed=5)
    rising = torch.linspace(0.2, 4.0, nk).view(1, 1, nk, 1)
    ours, sdpa = errors(kernel, q, (k.float() * rising).to(torch.bfloat16), v)
    assert ours <= 1.5 * sdpa + 1e-3, (ours, sdpa)
    spike = k.clone()
    spike[:, :, nk - 3] = q[:, :, 0] * 32  # a key near the end scoring ~2^270 above the first blocks' max for query 0
    ours, sdpa = errors(kernel, q, spike, v)
    assert ours <= 1.5 * sdpa + 1e-3, (ours, sdpa)


def test_attend_takes_sdpa_for_a_non_positive_scale():
    """The kernel's lazy maximum assumes a positive scale; anything else goes to SDPA (a fake kernel would fail)."""

    class Refuses:
        @staticmethod
        def supports(*args):
            return True

        def __call__(self, *args):
            raise AssertionError("the kernel must not see a non-positive scale")

    q, k, v = (torch.randn(1, 64, 2 * 40) for _ in range(3))
    out = attend(Refuses(), q, k, v, heads=2, scale=-0.1)
    ref = F.scaled_dot_product_attention(*(t.view(1, 64, 2, 40).transpose(1, 2) for t in (q, k, v)), scale=-0.1)
    torch.testing.assert_close(out, ref.transpose(1, 2).reshape(1, 64, 80))


@needs_amx
def test_kernel_leaves_torch_amx_kernels_alone(kernel):
    """The kernel runs on PyTorch's OpenMP threads and puts back the tile configuration oneDNN left there (oneDNN
    skips reconfiguring when it thinks its palette is loaded): oneDNN's AMX matmuls and SDPA give the same answers."""
    from core.accel.fusion import PackedLinear

    assert kernel.team is not None  # PyTorch's libgomp is found on Linux
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(256, 320, generator=gen).bfloat16()
    w = torch.randn(320, 320, generator=gen).bfloat16()
    packed = PackedLinear(w, torch.randn(320, generator=gen).bfloat16())
    q, k, v = qkv(2, 8, 77, 77, 40)

    def torch_ops():
        return a @ w, packed(a), packed.gelu(a), F.scaled_dot_product_attention(q, k, v)

    before = torch_ops()
    for _ in range(3):
        kernel(*qkv(1, 2, 512, 512, 40))
        after = torch_ops()
        assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))


def test_kernel_on_openmp_team_equals_own_threads(kernel):
    own = type(kernel)(kernel.library, own_threads=True)
    assert own.team is None
    for shape in ((2, 8, 1024, 1024, 40), (1, 3, 300, 77, 34)):
        q, k, v = qkv(*shape)
        assert torch.equal(kernel(q, k, v), own(q, k, v))


def test_openmp_team_is_found_only_when_loaded(tmp_path):
    assert attention.openmp_team("") is None
    assert attention.openmp_team(f"7f00-7f10 r-xp 0 08:01 1 {tmp_path}/libgomp.so.1\n") is None  # not a library
    maps = Path("/proc/self/maps").read_text().splitlines()
    runtime = next(line for line in maps if Path(line.split()[-1]).name.startswith(attention.OPENMP_RUNTIMES))
    found = attention.openmp_team(runtime + "\n")  # PyTorch's own runtime, the one its operators already use
    assert found is not None and found == attention.openmp_team()


def test_kernel_is_deterministic_and_thread_safe(kernel):
    inputs = [qkv(1, 4, 700, 700, 40, seed=s) for s in range(2)]
    expected = [kernel(*x) for x in inputs]
    results = [None, None]

    def run(i):
        results[i] = [kernel(*inputs[i]) for _ in range(3)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert all(torch.equal(r, expected[i]) for r in results[i])


def test_supports_only_what_the_kernel_handles():
    q, k, v = qkv(1, 2, 512, 512, 40)
    assert AmxAttention.supports(q, k, v)
    assert not AmxAttention.supports(q.float(), k.float(), v.float())  # fp32
    assert all(AmxAttention.supports(*qkv(1, 2, 512, 512, d)) for d in (34, 46, 48, 64, 80, 160))
    assert not any(AmxAttention.supports(*qkv(1, 2, 512, 512, d)) for d in (32, 41, 162, 256))  # head size
    assert not AmxAttention.supports(*qkv(1, 2, 64, 77, 40))  # too small to pay off
    assert not AmxAttention.supports(q[..., ::2], k[..., ::2], v[..., ::2])  # head dim not contiguous
    assert not AmxAttention.supports(q, k[:, :1], v[:, :1])  # heads differ
    with torch.enable_grad():
        assert not AmxAttention.supports(q.clone().requires_grad_(), k, v)  # no backward
    # The AVX512-BF16 kernel takes any even head size up to 256, with the same other limits.
    assert all(Bf16Attention.supports(*qkv(1, 2, 512, 512, d)) for d in (2, 40, 64, 80, 160, 256))
    assert not any(Bf16Attention.supports(*qkv(1, 2, 512, 512, d)) for d in (39, 258))
    assert not Bf16Attention.supports(*qkv(1, 2, 64, 77, 40))
    assert not Bf16Attention.supports(q.float(), k.float(), v.float())


def test_sdpa_mode_skips_the_kernel(fresh_loader, monkeypatch):
    monkeypatch.setenv(attention.MODE_ENV, "sdpa")
    kernel, status = fresh_loader()
    assert kernel is None and not status.available and "ICLIGHT_CPU_ATTENTION=sdpa" in status.reason


def test_cpu_without_bf16_instructions_uses_sdpa(fresh_loader, monkeypatch):
    monkeypatch.setattr(attention, "cpu_flags", lambda: {"avx512f", "avx2"})
    kernel, status = fresh_loader()
    assert kernel is None and status.reason.startswith("SDPA (this CPU has no AMX nor AVX512-BF16: it lacks ")
    assert "avx512_bf16" in status.reason


@needs_a_kernel
def test_missing_or_failing_compiler_falls_back(fresh_loader, monkeypatch, tmp_path, broken_cc):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    kernel, status = fresh_loader()
    best = AmxAttention if HAS_AMX else Bf16Attention
    assert kernel is None and f"building the {best.NAME} kernel failed" in status.reason

    monkeypatch.setenv("CC", str(broken_cc))
    load_kernel.cache_clear()
    kernel, status = fresh_loader()
    assert kernel is None and "failed" in status.reason and "error: no" in status.reason
    assert not list((tmp_path / "cache").glob("*.so"))  # no half-written library left behind


@needs_a_kernel
def test_unwritable_cache_folder_builds_in_a_temp_folder(fresh_loader, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(attention.CACHE_ENV, str(blocker / "cache"))
    kernel, status = fresh_loader()
    assert kernel is not None and status.available
    assert kernel.library.parent.name.startswith("iclight-") and blocker.is_file()


@needs_a_kernel
def test_library_is_built_once(tmp_path):
    compiler = attention.find_compiler()
    first = build_library(compiler, tmp_path, Bf16Attention)
    stamp = first.stat().st_mtime_ns
    assert build_library(compiler, tmp_path, Bf16Attention) == first and first.stat().st_mtime_ns == stamp
    assert build_library(compiler, tmp_path, AmxAttention) != first  # each kernel its own library


def attention_module(dim=320, heads=8, cross_dim=None, **kwargs):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(query_dim=dim, heads=heads, dim_head=dim // heads, cross_attention_dim=cross_dim, **kwargs).to(
        torch.bfloat16
    )


def test_processor_matches_diffusers_sdpa(kernel):
    from diffusers.models.attention_processor import AttnProcessor2_0

    attn = attention_module()
    x = torch.randn(2, 1024, 320).bfloat16()
    with torch.inference_mode():
        attn.set_processor(AttnProcessor2_0())
        expected = attn(x).float()
        attn.set_processor(CPUAttnProcessor(kernel))
        got = attn(x).float()
    # bf16 outputs of two different kernels: equal up to bf16 rounding through the output projection
    assert (got - expected).abs().max().item() <= 0.02 * expected.abs().max().item()


def test_processor_falls_back_to_diffusers_exactly():
    """Cross-attention (77 keys) and non-plain blocks run exactly diffusers' own SDPA path."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    ours = CPUAttnProcessor(kernel=None)
    cases = [
        (attention_module(cross_dim=64), dict(encoder_hidden_states=torch.randn(2, 77, 64).bfloat16())),
        (attention_module(residual_connection=True), {}),
        (attention_module(), dict(attention_mask=torch.ones(2, 1, 300, dtype=torch.bool))),
    ]
    x = torch.randn(2, 300, 320).bfloat16()
    with torch.inference_mode():
        for attn, kwargs in cases:
            attn.set_processor(AttnProcessor2_0())
            expected = attn(x, **kwargs)
            attn.set_processor(ours)
            assert torch.equal(attn(x, **kwargs), expected)


@needs_a_kernel
def test_unet_runs_the_kernel_and_matches_sdpa(monkeypatch):
    """A small UNet whose first level has SD 1.5's head size (40) at 4,096 tokens: the kernel runs and agrees."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(80, 160),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,  # diffusers' legacy name: 2 heads of 40
        norm_num_groups=16,
        sample_size=64,
    ).to(torch.bfloat16)
    args = (torch.randn(1, 4, 64, 64).bfloat16(), torch.tensor(10), torch.randn(1, 77, 32).bfloat16())
    calls = []
    kind = type(load_kernel()[0])
    original = kind.__call__
    with torch.inference_mode():
        expected = unet(*args).sample.float()
        status = attention.install(unet)
        monkeypatch.setattr(kind, "__call__", lambda self, *a: calls.append(a[0].shape) or original(self, *a))
        got = unet(*args).sample.float()
    assert status.available and (1, 2, 4096, 40) in calls and all(kind.head_dim_ok(s[-1]) for s in calls)
    rel = (got - expected).norm() / expected.norm()
    assert rel < 0.02, rel


def test_install_reports_sdpa_without_touching_the_unet(fresh_loader, monkeypatch):
    from diffusers.models.attention_processor import AttnProcessor2_0

    monkeypatch.setenv(attention.MODE_ENV, "sdpa")
    attn = attention_module()
    unet = torch.nn.Module()
    unet.set_attn_processor = lambda p: attn.set_processor(p)
    assert attention.install(unet) == KernelStatus(False, "SDPA (ICLIGHT_CPU_ATTENTION=sdpa)")
    assert isinstance(attn.processor, AttnProcessor2_0)


@needs_a_kernel
def test_manager_uses_the_kernel_for_bf16_cpu(tiny_paths):
    from core.models.manager import ModelManager, ModelSettings

    settings = ModelSettings(base_model=str(tiny_paths["base"]), models_dir=tiny_paths["models"], device="cpu",
                             dtype="bf16", download=False)  # fmt: skip
    manager = ModelManager(settings)
    assert manager.placement.cpu_attention
    models = manager.get("fc")
    name = (AmxAttention if HAS_AMX else Bf16Attention).NAME
    assert models.attention.startswith(f"{name} kernel")
    assert f"attention {name} kernel" in manager.describe("fc") and f"attention {name}" in models.describe()
    processors = models.unet.unet.attn_processors.values()
    assert processors and all(isinstance(p, CPUAttnProcessor) for p in processors)


def test_fp32_keeps_diffusers_attention(fc_models):
    """The seed-exact fp32 path never swaps processors."""
    assert not fc_models.placement.cpu_attention and fc_models.attention == "SDPA"
    assert not any(isinstance(p, CPUAttnProcessor) for p in fc_models.unet.unet.attn_processors.values())


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(attention.CACHE_ENV, str(tmp_path / "x"))
    assert attention.cache_dir() == tmp_path / "x"
    monkeypatch.delenv(attention.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert attention.cache_dir() == tmp_path / "iclight"
    assert os.path.isabs(attention.cache_dir())


def test_processor_survives_a_failing_kernel(caplog):
    """A kernel call that fails (no threads or memory) is answered by SDPA, exactly as diffusers would."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    class Failing:
        supports = staticmethod(lambda q, k, v: True)

        def __call__(self, q, k, v, scale=None):
            raise RuntimeError("AMX attention kernel failed (code 2)")

    attn = attention_module()
    x = torch.randn(1, 300, 320).bfloat16()
    with torch.inference_mode():
        attn.set_processor(AttnProcessor2_0())
        expected = attn(x)
        attn.set_processor(CPUAttnProcessor(Failing()))
        got = attn(x)
    assert torch.equal(got, expected) and "using SDPA" in caplog.text


def test_processor_honours_the_attention_scale():
    """An Attention built with scale_qk=False scores with scale 1, as diffusers' own AttnProcessor does."""
    from diffusers.models.attention_processor import Attention, AttnProcessor

    torch.manual_seed(0)
    attn = Attention(query_dim=64, heads=2, dim_head=32, scale_qk=False).eval()
    x = torch.randn(1, 50, 64)
    with torch.inference_mode():
        attn.set_processor(AttnProcessor())
        expected = attn(x)
        attn.set_processor(CPUAttnProcessor(None))
        got = attn(x)
    assert attn.scale == 1.0 and torch.allclose(got, expected, atol=1e-5)
