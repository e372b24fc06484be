"""Fast mode: a few-step SD 1.5 LoRA (LCM, TCD or Hyper-SD) with the scheduler it was distilled for.

These LoRAs were trained on plain SD 1.5, not with IC-Light; fast mode trades fidelity to the official recipe for
4-8 steps without classifier-free guidance. Nothing heavy at import: RelightParams uses `FastMode`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from core.models.lora import LoraSpec


class FastMode(str, Enum):
    """Which few-step LoRA (and scheduler) replaces the official sampler; OFF keeps the official recipe."""

    OFF = "off"
    LCM = "lcm"
    TCD = "tcd"
    HYPER = "hyper"


@dataclass(frozen=True)
class FastPreset:
    """A few-step LoRA, where to get it, its scheduler and the settings its authors recommend."""

    repo_id: str  # Hub repository of the LoRA
    filename: str  # file in that repository
    scheduler: str  # diffusers scheduler class it was distilled for
    steps: int  # default steps per pass
    cfg: float  # default guidance (1 = no negative branch: one UNet pass per step)
    scheduler_config: dict[str, Any] = field(default_factory=dict)  # on top of SD 1.5's training schedule
    eta: float = 0.0  # the scheduler's stochasticity (TCD's gamma); 0 for deterministic samplers

    @property
    def lora_source(self) -> str:
        """The LoRA as a Hub id with its file: found in <models dir>/loras/ first (see core.models.lora)."""
        return f"{self.repo_id}/{self.filename}"


FAST_PRESETS: dict[FastMode, FastPreset] = {
    # LCM-LoRA (Luo et al. 2023): LCMScheduler, 4 steps, guidance 1-2 in its model card.
    FastMode.LCM: FastPreset(
        "latent-consistency/lcm-lora-sdv1-5", "pytorch_lora_weights.safetensors", "LCMScheduler", steps=4, cfg=1.0
    ),  # fmt: skip
    # TCD (Zheng et al. 2024): TCDScheduler with gamma (eta) 0.3, 4 steps, no guidance.
    FastMode.TCD: FastPreset(
        "h1t/TCD-SD15", "pytorch_lora_weights.safetensors", "TCDScheduler", steps=4, cfg=1.0, eta=0.3
    ),  # fmt: skip
    # Hyper-SD (Ren et al. 2024) 8-step SD 1.5 LoRA: DDIM with trailing timesteps, 8 steps, no guidance.
    FastMode.HYPER: FastPreset(
        "ByteDance/Hyper-SD",
        "Hyper-SD15-8steps-lora.safetensors",
        "DDIMScheduler",
        steps=8,
        cfg=1.0,
        scheduler_config={"timestep_spacing": "trailing"},
    ),  # fmt: skip
}

# SD 1.5's training noise schedule, which the distilled LoRAs assume (the official demos' samplers keep theirs).
SD15_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
}


def fast_defaults(mode: FastMode | str) -> dict[str, Any]:
    """The steps and guidance fast mode sets for both passes (empty when off); explicit values still win."""
    mode = FastMode(mode)
    if mode is FastMode.OFF:
        return {}
    preset = FAST_PRESETS[mode]
    return {"steps": preset.steps, "cfg": preset.cfg}


def fast_lora(mode: FastMode | str) -> tuple[LoraSpec, ...]:
    """The few-step LoRA of `mode` at full strength (none when off)."""
    mode = FastMode(mode)
    return () if mode is FastMode.OFF else (LoraSpec(FAST_PRESETS[mode].lora_source, 1.0),)


def make_fast_scheduler(mode: FastMode | str):
    """A fresh scheduler for `mode`; `step_eta` is what the denoising loop passes as eta to its step()."""
    import inspect

    import diffusers

    preset = FAST_PRESETS[FastMode(mode)]
    scheduler_class = getattr(diffusers, preset.scheduler)
    accepted = set(inspect.signature(scheduler_class.__init__).parameters)
    config = {k: v for k, v in {**SD15_SCHEDULE, **preset.scheduler_config}.items() if k in accepted}
    scheduler = scheduler_class(**config)
    scheduler.step_eta = preset.eta
    return scheduler


def active_loras(params) -> tuple[LoraSpec, ...]:
    """The LoRAs a relight with `params` applies: fast mode's few-step LoRA first, then the user's."""
    return fast_lora(params.fast) + tuple(params.loras)
