"""Samplers and the denoising loop; draws random numbers in exactly the order diffusers' SD pipelines do."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import CancelledError
from core.imaging.convert import latent_preview
from core.params import Sampler


def _randn(shape, generator, device, dtype) -> torch.Tensor:
    """diffusers' randn_tensor (same draws as its pipelines), imported on use: its module probes CUDA at import."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(shape, generator=generator, device=device, dtype=dtype)


# Scheduler settings of the official demos. They set beta_start/beta_end but leave beta_schedule at diffusers'
# default ("linear") for DPM++ 2M SDE Karras and Euler a; DDIM uses "scaled_linear". Kept as-is for seed-exactness.
_BASE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}
SCHEDULER_CONFIGS: dict[Sampler, tuple[str, dict]] = {
    Sampler.DPMPP_2M_SDE_KARRAS: (
        "DPMSolverMultistepScheduler",
        {**_BASE, "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    Sampler.DPMPP_2M_KARRAS: (
        "DPMSolverMultistepScheduler",
        {**_BASE, "algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
    ),
    Sampler.DDIM: (
        "DDIMScheduler",
        {**_BASE, "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False},
    ),
    Sampler.EULER_A: ("EulerAncestralDiscreteScheduler", dict(_BASE)),
}


def make_scheduler(sampler: Sampler, fast: str = "off"):
    """A fresh diffusers scheduler configured as in the official demos, or fast mode's own (core/recipe/fast.py)."""
    import diffusers

    if fast != "off":
        from core.recipe.fast import make_fast_scheduler

        return make_fast_scheduler(fast)
    class_name, config = SCHEDULER_CONFIGS[Sampler(sampler)]
    return getattr(diffusers, class_name)(**config)


@dataclass(frozen=True)
class StepInfo:
    """Progress report after one denoising step."""

    stage: str  # "lowres" or "highres"
    step: int  # 1-based step within the stage
    stage_total: int
    overall_step: int  # 1-based over both stages
    overall_total: int
    preview: np.ndarray | None  # small RGB preview of the current latents


StepCallback = Callable[[StepInfo], None]


class ConcatConditionedUNet(torch.nn.Module):
    """IC-Light's UNet: condition latents are concatenated to the noisy latents on the channel axis."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    @property
    def in_channels(self) -> int:
        return self.unet.conv_in.in_channels

    def forward(
        self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor, concat: torch.Tensor
    ) -> torch.Tensor:
        concat = concat.to(sample)
        concat = torch.cat([concat] * (sample.shape[0] // concat.shape[0]), dim=0)
        sample = torch.cat([sample, concat], dim=1)
        if sample.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects {self.in_channels} input channels but got {sample.shape[1]}")
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


@dataclass
class Progress:
    """Step bookkeeping shared by both passes, plus the user's callback and cancel flag."""

    overall_total: int
    callback: StepCallback | None = None
    cancel: threading.Event | None = None
    done: int = 0

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError(f"cancelled after {self.done} of {self.overall_total} steps")

    def report(self, stage: str, step: int, stage_total: int, latents: torch.Tensor) -> None:
        self.done += 1
        if self.callback is not None:
            preview = latent_preview(latents) if latents.shape[1] >= 4 else None
            self.callback(StepInfo(stage, step, stage_total, self.done, self.overall_total, preview))


def img2img_timesteps(scheduler, total_steps: int, strength: float, device) -> tuple[torch.Tensor, int]:
    """Timesteps that remain after skipping the first (1 - strength) of `total_steps` (diffusers img2img rule)."""
    scheduler.set_timesteps(total_steps, device=device)
    init_timestep = min(int(total_steps * strength), total_steps)
    t_start = max(total_steps - max(init_timestep, 1), 0)  # at least one step even for tiny strengths
    timesteps = scheduler.timesteps[t_start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps, len(timesteps)


def count_img2img_steps(total_steps: int, strength: float) -> int:
    """How many steps an img2img pass of `total_steps` at `strength` actually runs."""
    return max(min(int(total_steps * strength), total_steps), 1)


def _step_kwargs(scheduler, generator: torch.Generator) -> dict:
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in accepted:
        kwargs["eta"] = getattr(scheduler, "step_eta", 0.0)  # fast mode's TCD sets its gamma (core/recipe/fast.py)
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


@torch.inference_mode()
def denoise(
    unet: ConcatConditionedUNet,
    scheduler,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    cfg: float,
    concat: torch.Tensor,
    generator: torch.Generator,
    progress: Progress,
    stage: str,
) -> torch.Tensor:
    """Run the sampler over `timesteps` with classifier-free guidance (skipped when cfg <= 1)."""
    guided = cfg > 1.0
    batch = latents.shape[0]
    cond = cond.repeat(batch, 1, 1)
    embeds = torch.cat([uncond.repeat(batch, 1, 1), cond]) if guided else cond
    extra = _step_kwargs(scheduler, generator)
    for i, t in enumerate(timesteps):
        progress.check_cancel()
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = scheduler.scale_model_input(model_input, t)
        noise = unet(model_input, t, embeds, concat)
        if guided:
            noise_uncond, noise_cond = noise.chunk(2)
            noise = noise_uncond + cfg * (noise_cond - noise_uncond)
        latents = scheduler.step(noise, t, latents, **extra, return_dict=False)[0]
        progress.report(stage, i + 1, len(timesteps), latents)
    return latents


def initial_noise(
    shape: tuple[int, ...], scheduler, generator: torch.Generator, device, dtype: torch.dtype
) -> torch.Tensor:
    """Text-to-image starting latents: scaled Gaussian noise."""
    return _randn(shape, generator=generator, device=torch.device(device), dtype=dtype) * scheduler.init_noise_sigma


def noised_latents(
    init: torch.Tensor, batch: int, timesteps: torch.Tensor, scheduler, generator: torch.Generator
) -> torch.Tensor:
    """Image-to-image starting latents: `init` repeated to `batch`, noised to the first timestep."""
    if batch > init.shape[0] and batch % init.shape[0] == 0:
        init = torch.cat([init] * (batch // init.shape[0]), dim=0)
    noise = _randn(init.shape, generator=generator, device=init.device, dtype=init.dtype)
    return scheduler.add_noise(init, noise, timesteps[:1].repeat(batch))
