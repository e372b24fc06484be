"""Random-weight SD 1.5 models and IC-Light offsets in the real on-disk layouts, for tests, benchmarks and the GPU check."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

from core.models.loading import Variant

TEXT_WIDTH = 32
MAX_LENGTH = 77


def write_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer whose vocabulary is single characters (so every letter is one token)."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + ",.!?-'")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in symbols:
        vocab.setdefault(s, len(vocab))
        vocab.setdefault(s + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    config = {
        "model_max_length": MAX_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def build_components(seed: int = 0):
    """(tokenizer folder writer, text_encoder, vae, unet) with deterministic random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    # Four blocks so the VAE downsamples by 8 like the real one.
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    )
    text_config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=TEXT_WIDTH,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=128,
        max_position_embeddings=MAX_LENGTH,
    )
    text_encoder = CLIPTextModel(text_config)
    return text_encoder.eval(), vae.eval(), unet.eval()


def save_sd15_folder(folder: Path, text_encoder, vae, unet) -> Path:
    """Save components as a diffusers SD 1.5 folder (model_index.json, unet/, vae/, ...) with our small tokenizer."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    tok_dir = folder / "_tok"
    write_tokenizer(tok_dir)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(str(tok_dir)),
        unet=unet,
        scheduler=DPMSolverMultistepScheduler(steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))
    return folder


def write_base_model(folder: Path, seed: int = 0) -> Path:
    """Save a tiny SD 1.5 pipeline in the diffusers folder layout."""
    return save_sd15_folder(folder, *build_components(seed))


def make_offset(unet: torch.nn.Module, variant: Variant, seed: int = 1, scale: float = 0.02) -> dict:
    """A random IC-Light-style offset: every UNet key, conv_in widened to the variant's channels."""
    gen = torch.Generator().manual_seed(seed)
    offset = {}
    for key, value in unet.state_dict().items():
        shape = list(value.shape)
        if key == "conv_in.weight":
            shape[1] = variant.in_channels
        offset[key] = (torch.randn(shape, generator=gen) * scale).to(torch.float16)
    return offset


def write_offsets(unet: torch.nn.Module, models_dir: Path) -> dict[Variant, Path]:
    """Write iclight_sd15_{fc,fcon,fbc}.safetensors for `unet` into `models_dir`."""
    from safetensors.torch import save_file

    models_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, variant in enumerate(Variant):
        path = models_dir / variant.filename
        save_file(make_offset(unet, variant, seed=10 + i), str(path))
        paths[variant] = path
    return paths


# -- full size: SD 1.5's real architecture, for benches and the GPU check --------------------------------------------

SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
)
# The layers LCM-LoRA (and most SD 1.5 LoRA trainers with convolutions) adapt, at LCM-LoRA's rank.
FULL_LORA_TARGETS = (
    *("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "time_emb_proj"),
    *("conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv"),
)
FULL_LORA_RANK = 64
FULL_LORA_FILE = "lcm-lora-sdv1-5.safetensors"  # where fast mode --fast lcm looks first


def build_full_size_components(seed: int = 0):
    """(text_encoder, vae, unet) with SD 1.5's real sizes and random weights (compute cost does not depend on them)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
    )
    text_config = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                                 vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu")  # fmt: skip
    return CLIPTextModel(text_config).eval(), vae.eval(), unet.eval()


def write_full_size_model(folder: Path, variants: tuple[Variant, ...] = (Variant.FC,), lora: bool = False) -> Path:
    """A random full-size SD 1.5 folder (folder/base), offsets for `variants` and, with `lora`, a random LoRA of
    LCM-LoRA's shapes as folder/models/loras/lcm-lora-sdv1-5.safetensors; written once, reused afterwards."""
    from safetensors.torch import save_file

    models = folder / "models"
    wanted = [models / v.filename for v in variants] + ([models / "loras" / FULL_LORA_FILE] if lora else [])
    if (folder / "base" / "model_index.json").is_file() and all(p.is_file() for p in wanted):
        return folder
    text_encoder, vae, unet = build_full_size_components()
    if not (folder / "base" / "model_index.json").is_file():
        save_sd15_folder(folder / "base", text_encoder, vae, unet)  # a tokenizer costs the same as CLIP's
    models.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        if not (models / variant.filename).is_file():
            save_file(make_offset(unet, variant, scale=1e-3), str(models / variant.filename))
    if lora:
        (models / "loras").mkdir(exist_ok=True)
        save_file(random_lora(unet, FULL_LORA_TARGETS, FULL_LORA_RANK), str(models / "loras" / FULL_LORA_FILE))
    return folder


def random_lora(unet: torch.nn.Module, targets, rank: int, seed: int = 3, scale: float = 1e-3) -> dict:
    """Random diffusers-layout LoRA tensors ('unet.<module>.lora_A/B.weight') for every module named like `targets`."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in unet.named_modules():
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        if isinstance(module, torch.nn.Linear):
            down, up = (rank, module.in_features), (module.out_features, rank)
        elif isinstance(module, torch.nn.Conv2d):
            down, up = (rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)
        else:
            continue
        out[f"unet.{name}.lora_A.weight"] = (torch.randn(down, generator=gen) * scale).to(torch.float16)
        out[f"unet.{name}.lora_B.weight"] = (torch.randn(up, generator=gen) * scale).to(torch.float16)
    return out
