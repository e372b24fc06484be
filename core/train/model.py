"""The trainable models: IC-Light fc and InstructPix2Pix, both an SD 1.5 UNet with conv_in widened to 8 channels."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from core.errors import WeightsNotFoundError
from core.models.loading import (
    LATENT_CHANNELS,
    BaseComponents,
    Variant,
    check_offset_variant,
    ensure_iclight_weights,
    load_base_components,
    offline_mode,
)
from core.models.weights import CONV_IN, build_iclight_unet, read_offset, tensor_shape
from core.train.config import Init, Kind, TrainConfig

logger = logging.getLogger(__name__)

IN_CHANNELS = 2 * LATENT_CHANNELS  # noisy latents + condition latents (IC-Light fc and InstructPix2Pix alike)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # the attention projections, as diffusers' LoRA examples
# SD 1.5's training noise schedule (scaled_linear betas 0.00085..0.012 over 1000 steps, epsilon prediction).
NOISE_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}


class ZeroOffset(Mapping):
    """An all-zero offset for `base`, conv_in widened: merging it gives the base with new input channels at zero."""

    def __init__(self, base: Mapping, in_channels: int) -> None:
        self.base, self.in_channels = base, in_channels

    def __getitem__(self, key: str) -> torch.Tensor:
        shape = list(tensor_shape(self.base, key))
        if key == CONV_IN:
            shape[1] = self.in_channels
        return torch.zeros(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)


@dataclass
class TrainModels:
    """The frozen parts, the trainable UNet and where its starting weights came from."""

    base: BaseComponents  # the SD 1.5 base: its UNet weights are what exported offsets are relative to
    tokenizer: Any
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module  # 8 input channels, fp32
    init: str  # "iclight (PATH)" or "base (conv_in widened with zeros)"
    notice: str | None = None  # a fallback the user should be told about


def load_models(config: TrainConfig) -> TrainModels:
    """Base components (checked to be SD 1.5) and the 8-channel UNet initialised as --init says."""
    base = load_base_components(config.base_model)
    unet, init, notice = None, "base (conv_in widened with zeros)", None
    if config.kind is Kind.ICLIGHT_FC and config.init is not Init.BASE:
        try:
            path = ensure_iclight_weights(Variant.FC, config.models_dir, download=config.download)
        except WeightsNotFoundError as exc:
            if config.init is Init.ICLIGHT:
                raise
            notice = f"IC-Light fc weights cannot be had, starting from the base model instead ({str(exc)[:160]}...)"
            if offline_mode():
                notice = "offline and no IC-Light fc weights in --models-dir: starting from the base model"
        else:
            offset = read_offset(path)
            check_offset_variant(offset, Variant.FC, path)
            unet = build_iclight_unet(
                base.unet_config, base.unet_weights, offset, IN_CHANNELS, torch.float32, str(path)
            )
            init = f"iclight ({path})"
    if unet is None:
        unet = build_iclight_unet(base.unet_config, base.unet_weights, ZeroOffset(base.unet_weights, IN_CHANNELS),
                                  IN_CHANNELS, torch.float32, "the base model")  # fmt: skip
    text_encoder = base.text_encoder.eval().requires_grad_(False)
    vae = base.vae.eval().requires_grad_(False)
    return TrainModels(base, base.tokenizer, text_encoder, vae, unet, init, notice)


def make_trainable(unet: torch.nn.Module, config: TrainConfig) -> list[torch.nn.Parameter]:
    """Switch on gradients (all weights, or LoRA adapters plus conv_in) and return the trained parameters."""
    unet.train()
    if config.lora_rank:
        from peft import LoraConfig

        unet.requires_grad_(False)
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_rank, init_lora_weights="gaussian",
                          target_modules=list(LORA_TARGETS))  # fmt: skip
        unet.add_adapter(lora)
        # conv_in's new channels are the only way the condition enters: they must learn even under LoRA.
        unet.conv_in.requires_grad_(True)
    else:
        unet.requires_grad_(True)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return [p for p in unet.parameters() if p.requires_grad]


def noise_scheduler():
    """The DDPM forward process SD 1.5 was trained with."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**NOISE_SCHEDULE)


@torch.no_grad()
def merged_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The UNet's plain weights (fp32, CPU), LoRA adapters folded in, keys as in an unadapted UNet."""
    deltas = {}
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is in requirements.txt
        LoraLayer = ()  # noqa: N806
    for name, module in unet.named_modules():
        if LoraLayer and isinstance(module, LoraLayer) and not getattr(module, "merged", False):
            adapters = [a for a in module.active_adapters if a in module.lora_A]
            if adapters:
                deltas[f"{name}.base_layer.weight"] = sum(module.get_delta_weight(a) for a in adapters)
    state = {}
    for key, value in unet.state_dict().items():
        if "lora_" in key:
            continue
        value = value.detach().float().cpu()
        if key in deltas:
            value = value + deltas[key].float().cpu()
        state[key.replace(".base_layer", "")] = value
    return state
