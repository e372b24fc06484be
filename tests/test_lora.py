"""LoRAs: SOURCE[:SCALE] specs, finding files, telling SD 1.5 LoRAs from others, fusing them exactly."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from core.errors import CorruptWeightsError, IncompatibleModelError, InvalidParameterError, WeightsNotFoundError
from core.models.lora import (
    LoraSpec,
    coerce_loras,
    fuse_loras,
    hub_reference,
    list_local_loras,
    lora_key,
    read_lora,
    resolve_lora,
)
from core.models.synthetic import TEXT_WIDTH, build_components
from tests.lora_files import (
    RANK,
    TEXT_TARGETS,
    UNET_TARGETS,
    diffusers_file,
    expected_weights,
    kohya_file,
    lora_tensors,
)

KOHYA_ALPHA = 2.0  # kohya scales B @ A by alpha / rank


@pytest.fixture(scope="module")
def tiny():
    """(text_encoder, unet) of the tiny SD 1.5 and random LoRA tensors for both."""
    text_encoder, _, unet = build_components()
    return text_encoder, unet, lora_tensors(unet, UNET_TARGETS, seed=1), lora_tensors(text_encoder, TEXT_TARGETS, 2)


@pytest.fixture(scope="module")
def lora_paths(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    _, _, unet_lora, te_lora = tiny
    return {
        "diffusers": diffusers_file(unet_lora, te_lora, folder / "style_diffusers.safetensors"),
        "kohya": kohya_file(unet_lora, te_lora, folder / "style_kohya.safetensors", alpha=KOHYA_ALPHA),
        "unet_only": diffusers_file(unet_lora, None, folder / "unet_only.safetensors"),
    }


# -- specs ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, source, scale",
    [
        ("models/loras/detail.safetensors", "models/loras/detail.safetensors", 1.0),
        ("detail.safetensors:0.6", "detail.safetensors", 0.6),
        ("owner/repo:-1.5", "owner/repo", -1.5),
        (r"C:\loras\x.safetensors", r"C:\loras\x.safetensors", 1.0),
        (r"C:\loras\x.safetensors:2", r"C:\loras\x.safetensors", 2.0),
        (" owner/repo/file.safetensors:0 ", "owner/repo/file.safetensors", 0.0),
    ],
)
def test_spec_parse(text, source, scale):
    spec = LoraSpec.parse(text)
    assert (spec.source, spec.scale) == (source, scale)
    assert LoraSpec.parse(spec.to_text()) == spec


@pytest.mark.parametrize(
    "text, words",
    [("a.safetensors:2.5", "[-2, 2] but is 2.5"), ("a.safetensors:-3", "but is -3"), ("a:strong", "'strong'"),
     (":1", "needs a file or Hub id"), ("a:nan", "should be a number")],
)  # fmt: skip
def test_spec_rejects(text, words):
    with pytest.raises(InvalidParameterError, match=words.replace("[", r"\[").replace("]", r"\]")):
        LoraSpec.parse(text)


def test_coerce_forms():
    want = (LoraSpec("a", 0.5), LoraSpec("b", 1.0))
    assert coerce_loras(["a:0.5", {"source": "b"}]) == want
    assert coerce_loras([("a", 0.5), LoraSpec("b")]) == want
    assert coerce_loras(None) == () and coerce_loras("a:0.5") == want[:1]
    with pytest.raises(InvalidParameterError, match="loras should be a list"):
        coerce_loras(3)
    with pytest.raises(InvalidParameterError, match="'SOURCE"):
        coerce_loras([{"path": "a"}])
    assert lora_key([LoraSpec("a", 0.0), LoraSpec("b", 0.5)]) == (("b", 0.5),)


def test_hub_reference():
    assert hub_reference("owner/repo") == ("owner/repo", None)
    assert hub_reference("ByteDance/Hyper-SD/Hyper-SD15-8steps-lora.safetensors") == (
        "ByteDance/Hyper-SD",
        "Hyper-SD15-8steps-lora.safetensors",
    )
    for local in ("./a/b", "/abs/path.safetensors", "~/x/y", "detail", r"C:\a\b", "a/b/c.pt"):
        assert hub_reference(local) is None, local


# -- finding files -------------------------------------------------------------------------------------------------


def test_resolve_path_name_and_folder(tmp_path, lora_paths):
    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    target = models / "loras" / "detail.safetensors"
    target.write_bytes(lora_paths["diffusers"].read_bytes())
    assert resolve_lora(str(lora_paths["kohya"]), models) == lora_paths["kohya"]
    assert resolve_lora("detail.safetensors", models) == target
    assert resolve_lora("detail", models) == target
    assert list_local_loras(models) == ["detail.safetensors"]
    with pytest.raises(InvalidParameterError, match="is a folder"):
        resolve_lora(str(models), models)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"LoRA 'nothing_here\.safetensors' not found.*loras"):
        resolve_lora("nothing_here.safetensors", tmp_path)


def test_offline_hub_id_says_which_file_to_put_where(tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_lora("latent-consistency/lcm-lora-sdv1-5", tmp_path, download=False)
    message = str(info.value)
    url = "https://huggingface.co/latent-consistency/lcm-lora-sdv1-5/resolve/main/pytorch_lora_weights.safetensors"
    assert url in message
    assert str((tmp_path / "loras" / "lcm-lora-sdv1-5.safetensors").resolve()) in message


def test_hub_lora_found_in_loras_folder(tmp_path, lora_paths):
    (tmp_path / "loras").mkdir()
    target = tmp_path / "loras" / "Hyper-SD15-8steps-lora.safetensors"
    target.write_bytes(lora_paths["kohya"].read_bytes())
    assert resolve_lora("ByteDance/Hyper-SD/Hyper-SD15-8steps-lora.safetensors", tmp_path, download=False) == target


def test_pickled_files_are_refused(tmp_path):
    path = tmp_path / "old.ckpt"
    path.write_bytes(b"x")
    with pytest.raises(InvalidParameterError, match="pickled .ckpt"):
        resolve_lora(str(path), tmp_path)


# -- checking ------------------------------------------------------------------------------------------------------


def _kohya_pair(name: str, rank: int, width_in: int, width_out: int = 320) -> dict:
    return {
        f"{name}.lora_down.weight": torch.zeros(rank, width_in),
        f"{name}.lora_up.weight": torch.zeros(width_out, rank),
        f"{name}.alpha": torch.tensor(float(rank)),
    }


@pytest.mark.parametrize(
    "state, words",
    [
        (_kohya_pair("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 4, 1280), "an SDXL LoRA"),
        (_kohya_pair("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", 4, 2048), "an SDXL"),
        (_kohya_pair("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", 4, 1024), "an SD 2.x"),
        (_kohya_pair("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 4, 1024, 1024), "an SD 2.x"),
        ({"conv_in.weight": torch.zeros(2, 8, 3, 3), "conv_in.bias": torch.zeros(2)}, "is not a LoRA"),
        ({"lora_unet_x.hada_w1_a": torch.zeros(2, 2)}, "LyCORIS"),
    ],
)
def test_foreign_files_are_named(tmp_path, state, words):
    path = tmp_path / "foreign.safetensors"
    save_file(state, str(path))
    with pytest.raises(IncompatibleModelError, match=words) as info:
        read_lora(path)
    assert str(path) in str(info.value)


def test_sd15_lora_passes_the_check(tmp_path):
    path = tmp_path / "sd15.safetensors"
    state = _kohya_pair("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", 4, 768)
    state.update(_kohya_pair("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 4, 768, 768))
    save_file(state, str(path))
    lora = read_lora(path)
    assert lora.kohya and lora.has_text_encoder


def test_truncated_file_is_corrupt(tmp_path, lora_paths):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(lora_paths["diffusers"].read_bytes()[:200])
    with pytest.raises(CorruptWeightsError, match="not a readable .safetensors"):
        read_lora(path, TEXT_WIDTH, TEXT_WIDTH)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


# -- fusing --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout, factor", [("diffusers", 1.0), ("kohya", KOHYA_ALPHA / RANK)])
@pytest.mark.parametrize("scale", [0.7, -1.3])
def test_fused_weights_are_w_plus_scaled_ba(tiny, lora_paths, layout, factor, scale):
    text_encoder, unet, unet_lora, te_lora = tiny
    lora = read_lora(lora_paths[layout], TEXT_WIDTH, TEXT_WIDTH)
    assert lora.kohya is (layout == "kohya") and lora.has_text_encoder
    unet_copy, te_copy = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    fuse_loras(unet_copy, te_copy, [(lora, scale)])
    for module, fused, lora_state in ((unet, unet_copy, unet_lora), (text_encoder, te_copy, te_lora)):
        expected = expected_weights(module, lora_state, scale * factor)
        got = dict(fused.named_parameters())
        assert set(got) == set(dict(module.named_parameters())), "adapter layers left behind"
        for name, weight in expected.items():
            torch.testing.assert_close(got[name], weight, rtol=1e-5, atol=1e-6)
            assert not torch.equal(got[name], dict(module.named_parameters())[name])
        untouched = set(got) - set(expected)
        assert untouched and all(torch.equal(got[k], dict(module.named_parameters())[k]) for k in untouched)
    assert not hasattr(unet_copy, "peft_config") or not unet_copy.peft_config


def test_two_loras_add_and_zero_scale_is_a_no_op(tiny, lora_paths):
    text_encoder, unet, unet_lora, _ = tiny
    diffusers_lora = read_lora(lora_paths["diffusers"], TEXT_WIDTH, TEXT_WIDTH)
    kohya_lora = read_lora(lora_paths["kohya"], TEXT_WIDTH, TEXT_WIDTH)
    unet_copy, te_copy = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    described = fuse_loras(unet_copy, te_copy, [(diffusers_lora, 0.5), (kohya_lora, 1.0), (diffusers_lora, 0.0)])
    assert described == ["style_diffusers.safetensors:0.5", "style_kohya.safetensors:1"]
    expected = expected_weights(unet, unet_lora, 0.5 + KOHYA_ALPHA / RANK)
    got = dict(unet_copy.named_parameters())
    for name, weight in expected.items():
        torch.testing.assert_close(got[name], weight, rtol=1e-5, atol=1e-6)
    untouched_unet, untouched_te = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    assert fuse_loras(untouched_unet, untouched_te, [(diffusers_lora, 0.0)]) == []
    for before, after in ((unet, untouched_unet), (text_encoder, untouched_te)):
        assert _same(before, after)


def test_unet_only_lora_leaves_the_text_encoder(tiny, lora_paths):
    text_encoder, unet, _, _ = tiny
    lora = read_lora(lora_paths["unet_only"], TEXT_WIDTH, TEXT_WIDTH)
    assert not lora.has_text_encoder
    te_copy = copy.deepcopy(text_encoder)
    fuse_loras(copy.deepcopy(unet), te_copy, [(lora, 1.0)])
    assert _same(text_encoder, te_copy)


def test_lora_for_other_layers_is_incompatible(tiny, tmp_path):
    text_encoder, unet, _, _ = tiny
    path = tmp_path / "wrong_shape.safetensors"
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file({f"{key}.lora_A.weight": torch.zeros(4, 48), f"{key}.lora_B.weight": torch.zeros(64, 4)}, str(path))
    lora = read_lora(path, TEXT_WIDTH, TEXT_WIDTH)
    unet_copy = copy.deepcopy(unet)
    with pytest.raises(IncompatibleModelError, match="does not fit this SD 1.5 model"):
        fuse_loras(unet_copy, copy.deepcopy(text_encoder), [(lora, 1.0)])
    assert set(dict(unet_copy.named_parameters())) == set(dict(unet.named_parameters()))


# -- through the model manager: cached per set, rebuilt on change, nothing leaks -----------------------------------

PARAMS = dict(prompt="a cat", width=64, height=64, steps=2, seed=7)


def _relight(manager, fg, loras, **changes):
    from core.params import RelightParams
    from core.recipe.pipeline import relight

    models = manager.get("fc", loras=loras)
    return relight(models, fg, RelightParams.for_mode("fc", **{**PARAMS, **changes})).images[0].astype(int)


@pytest.fixture(scope="module")
def lora_manager(tiny_settings):
    from core.models.manager import ModelManager

    return ModelManager(tiny_settings)  # its own: LoRA sets rebuild the session's shared models


def test_loras_change_the_image_and_never_leak(lora_manager, lora_paths, fg_image):
    diffusers_path = str(lora_paths["diffusers"])
    text_encoder = lora_manager._base_components().text_encoder
    te_before = copy.deepcopy(text_encoder.state_dict())
    plain = _relight(lora_manager, fg_image, ())
    styled = _relight(lora_manager, fg_image, [LoraSpec(diffusers_path, 0.8)])
    assert np.abs(styled - plain).max() > 0
    models = lora_manager.get("fc", loras=[LoraSpec(diffusers_path, 0.8)])
    assert models.loras == ("style_diffusers.safetensors:0.8",) and "LoRAs style_diffusers" in models.describe()
    assert models.text_encoder is not text_encoder  # its text layers went into a private copy
    assert len(lora_manager._cache) == 1  # one LoRA set per variant is kept
    # Scale 0 is exactly the plain model; so is the next request without LoRAs.
    assert np.array_equal(_relight(lora_manager, fg_image, [LoraSpec(diffusers_path, 0.0)]), plain)
    assert np.array_equal(_relight(lora_manager, fg_image, ()), plain)
    assert all(torch.equal(v, text_encoder.state_dict()[k]) for k, v in te_before.items())
    # The same LoRA in kohya layout: alpha / rank scales it, so scale 0.8 * rank / alpha is the same model.
    kohya = _relight(lora_manager, fg_image, [LoraSpec(str(lora_paths["kohya"]), 0.8 * RANK / KOHYA_ALPHA)])
    assert np.abs(kohya - styled).max() <= 1


def test_fused_cpu_path_packs_the_lora_weights(tiny_settings, lora_paths, fg_image):
    from dataclasses import replace

    from core.models.manager import ModelManager

    manager = ModelManager(replace(tiny_settings, dtype="bf16"))  # bf16 on CPU: the fused oneDNN path
    spec = LoraSpec(str(lora_paths["diffusers"]), 1.5)
    plain = _relight(manager, fg_image, ())
    styled = _relight(manager, fg_image, [spec])
    assert "fused" in manager.get("fc", loras=[spec]).unet_ops
    eager = _relight(ModelManager(replace(tiny_settings, dtype="fp32")), fg_image, [spec])
    # The packed path runs the fused LoRA weights: far closer to the eager LoRA result than to the plain image.
    assert np.abs(styled - eager).mean() < np.abs(plain - eager).mean() / 2


def test_missing_lora_fails_before_the_model_is_built(lora_manager, fg_image, tmp_path):
    with pytest.raises(WeightsNotFoundError, match="nowhere.safetensors"):
        lora_manager.get("fc", loras=[LoraSpec(str(tmp_path / "nowhere.safetensors"))])
