"""Single-file SD 1.5 checkpoints (original LDM key layout) loaded offline through the real diffusers converter."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from single_file import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, write_single_file_checkpoint
from transformers import CLIPTokenizer

from core.models.loading import Variant, load_base_components
from core.models.manager import ModelManager, ModelSettings
from core.models.weights import read_offset

# Keys every SD 1.5 checkpoint has; diffusers' own single-file detection looks for the CLIP one.
LDM_LANDMARKS = (
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.time_embed.0.weight",
    "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
    "model.diffusion_model.out.2.weight",
    "first_stage_model.encoder.down.0.block.0.conv1.weight",
    "first_stage_model.decoder.up.0.block.0.conv1.weight",
    "first_stage_model.post_quant_conv.weight",
    "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
    "cond_stage_model.transformer.text_model.final_layer_norm.weight",
)
# Where the tiny UNet (2 levels, 1 layer each) keeps its resamplers. diffusers' converter also accepts an upsampler
# at `.1.conv` after an attention, so only this check pins the `.2.conv` slot that real SD 1.5 files use.
TINY_RESAMPLERS = (
    "model.diffusion_model.input_blocks.2.0.op.weight",
    "model.diffusion_model.output_blocks.1.2.conv.weight",
)
DIFFUSERS_ONLY_NAMES = ("down_blocks", "up_blocks", "mid_block", "resnets", "time_embedding", "conv_norm_out")


@pytest.fixture(scope="module")
def originals(tiny_paths) -> dict[str, dict[str, torch.Tensor]]:
    """State dicts of the tiny diffusers components the checkpoint was written from."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    base = str(tiny_paths["base"])
    return {
        "unet": UNet2DConditionModel.from_pretrained(base, subfolder="unet").state_dict(),
        "vae": AutoencoderKL.from_pretrained(base, subfolder="vae").state_dict(),
        "text_encoder": CLIPTextModel.from_pretrained(base, subfolder="text_encoder").state_dict(),
    }


@pytest.fixture(scope="module")
def ckpt(tiny_paths, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "tiny_sd15.safetensors"
    return write_single_file_checkpoint(tiny_paths["base"], out)


def assert_same_weights(loaded: dict[str, torch.Tensor], original: dict[str, torch.Tensor], name: str) -> None:
    assert sorted(loaded) == sorted(original), f"{name}: key sets differ: {sorted(set(loaded) ^ set(original))[:5]}"
    for key, value in original.items():
        assert loaded[key].dtype == value.dtype and loaded[key].device.type == "cpu", f"{name}.{key}"
        assert torch.equal(loaded[key], value), f"{name}.{key} differs after the single-file round trip"


def test_checkpoint_has_the_original_sd15_layout(ckpt, originals):
    with safe_open(str(ckpt), framework="pt") as f:
        keys = set(f.keys())
        vae_q = f.get_tensor("first_stage_model.encoder.mid.attn_1.q.weight")
    assert all(k.startswith((UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX)) for k in keys)
    assert set(LDM_LANDMARKS) <= keys and set(TINY_RESAMPLERS) <= keys
    assert not [k for k in keys if any(part in k for part in DIFFUSERS_ONLY_NAMES)]
    assert vae_q.ndim == 4  # LDM's VAE attention uses 1x1 convolutions, diffusers' uses Linear
    # Every diffusers tensor has exactly one place in the file, plus CLIP's position ids.
    assert len(keys) == sum(len(sd) for sd in originals.values()) + 1


def test_single_file_loads_the_exact_diffusers_weights(ckpt, tiny_paths, originals):
    base = load_base_components(str(ckpt), single_file_config=str(tiny_paths["base"]))
    assert base.source == str(ckpt)
    assert_same_weights(dict(base.unet_weights), originals["unet"], "unet")
    assert_same_weights(base.vae.state_dict(), originals["vae"], "vae")
    assert_same_weights(base.text_encoder.state_dict(), originals["text_encoder"], "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_paths["base"]), subfolder="tokenizer")
    assert base.tokenizer.get_vocab() == tokenizer.get_vocab()  # the single file holds no tokenizer: the config does


def test_manager_relights_from_a_single_file_base(ckpt, tiny_paths, originals, monkeypatch):
    # The manager has no config argument: offline, the layout comes from ICLIGHT_SINGLE_FILE_CONFIG.
    monkeypatch.setenv("ICLIGHT_SINGLE_FILE_CONFIG", str(tiny_paths["base"]))
    settings = ModelSettings(
        base_model=str(ckpt), models_dir=tiny_paths["models"], device="cpu", dtype="fp32", download=False
    )
    models = ModelManager(settings).get("fc")
    assert models.base_model == str(ckpt) and models.unet.in_channels == Variant.FC.in_channels
    offset = read_offset(tiny_paths["models"] / Variant.FC.filename)
    merged = models.unet.unet.state_dict()
    for key, value in originals["unet"].items():
        if key == "conv_in.weight":  # widened: new channels start at zero, so they hold the offset alone
            value = torch.cat([value, torch.zeros_like(value)], dim=1)
        assert torch.equal(merged[key], value + offset[key].float()), key
    assert_same_weights(models.vae.state_dict(), originals["vae"], "vae")
    assert_same_weights(models.text_encoder.state_dict(), originals["text_encoder"], "text_encoder")


def test_offline_single_file_without_cached_config_says_what_to_set(tmp_path, tiny_paths, monkeypatch):
    from core.errors import WeightsNotFoundError
    from core.models.loading import load_base_components

    monkeypatch.delenv("ICLIGHT_SINGLE_FILE_CONFIG", raising=False)
    ckpt = write_single_file_checkpoint(tiny_paths["base"], tmp_path / "model.safetensors")
    with pytest.raises(WeightsNotFoundError, match="ICLIGHT_SINGLE_FILE_CONFIG"):
        load_base_components(str(ckpt))
