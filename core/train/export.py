"""Export a trained model where the apps and CLI find it: an IC-Light fc offset file, or an InstructPix2Pix folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from core.errors import IncompatibleModelError
from core.models.loading import Variant
from core.models.weights import CONV_IN
from core.train.config import Kind, TrainConfig
from core.train.model import IN_CHANNELS, TrainModels, merged_state_dict

IP2P_FOLDER = "model"  # OUT/model: the exported InstructPix2Pix pipeline
EXPORT_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def export(config: TrainConfig, models: TrainModels, unet: torch.nn.Module) -> Path:
    """Write the trained weights (LoRA folded in) and return the exported path."""
    state = merged_state_dict(unet)
    if config.kind is Kind.ICLIGHT_FC:
        return export_offset(state, models.base.unet_weights, config.out / Variant.FC.filename, config.export_dtype)
    return export_ip2p(state, config, config.out / IP2P_FOLDER)


@torch.no_grad()
def offset_from(trained: dict[str, torch.Tensor], base) -> dict[str, torch.Tensor]:
    """trained - base for every key, the base's conv_in widened with zeros (the official IC-Light offset layout)."""
    missing = sorted(set(base) - set(trained))
    extra = sorted(set(trained) - set(base))
    if missing or extra:
        raise IncompatibleModelError(
            f"the trained UNet does not match the base: {len(missing)} key(s) missing (e.g. {missing[:3]}), "
            f"{len(extra)} extra (e.g. {extra[:3]})"
        )
    offset = {}
    for key in base:
        reference = base[key].float()
        if key == CONV_IN:
            widened = reference.new_zeros(trained[key].shape)
            widened[:, : reference.shape[1]] = reference
            reference = widened
        offset[key] = trained[key].float() - reference
    return offset


def export_offset(trained: dict[str, torch.Tensor], base, path: Path, dtype: str = "fp16") -> Path:
    """Save trained - base as an IC-Light offset file (atomically: a reader never sees half a file)."""
    from safetensors.torch import save_file

    offset = {key: value.to(EXPORT_DTYPES[dtype]).contiguous() for key, value in offset_from(trained, base).items()}
    temp = path.with_name(f".{path.name}.tmp")
    save_file(offset, str(temp), metadata={"format": "pt", "iclight_variant": Variant.FC.value})
    temp.replace(path)
    return path


def export_ip2p(trained: dict[str, torch.Tensor], config: TrainConfig, folder: Path) -> Path:
    """Save a diffusers StableDiffusionInstructPix2PixPipeline folder: the base's text encoder and VAE (reloaded in
    full precision), the trained UNet."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel

    from core.models.loading import load_base_components
    from core.train.model import NOISE_SCHEDULE

    base = load_base_components(config.base_model)
    unet = UNet2DConditionModel.from_config({**base.unet_config, "in_channels": IN_CHANNELS})
    unet.load_state_dict(trained, strict=True)
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(**{k: v for k, v in NOISE_SCHEDULE.items()}),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    temp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(temp, ignore_errors=True)
    pipe.save_pretrained(str(temp))
    if folder.exists():
        shutil.rmtree(folder)
    temp.rename(folder)
    return folder
