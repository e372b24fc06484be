"""The IC-Light relight recipe (fc and fbc): low-res pass, then high-res pass, seed-exact with the official demos."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from core import accel
from core.errors import IncompatibleModelError, InvalidParameterError
from core.imaging.convert import (
    AMBIENT_GREY,
    constant_image,
    decoded_floats,
    float_to_uint8,
    numpy2pytorch,
    pytorch2numpy,
    resize_and_center_crop,
    resize_without_crop,
)
from core.lighting.lights import Light, fbc_background, fc_initial_image, light_map_image
from core.models.loading import Variant
from core.models.manager import ICLightModels
from core.params import BGSource, Mode, RelightParams
from core.recipe.prompt_encoding import encode_prompt_pair
from core.recipe.sampling import (
    Progress,
    StepCallback,
    count_img2img_steps,
    denoise,
    img2img_timesteps,
    initial_noise,
    make_scheduler,
    noised_latents,
)

MODE_VARIANTS = {Mode.FC: (Variant.FC, Variant.FCON), Mode.FBC: (Variant.FBC,)}
LOWRES, HIGHRES = "lowres", "highres"


@dataclass
class RelightResult:
    """Output images and the conditions the model actually saw."""

    images: list[np.ndarray]  # uint8 HxWx3 at the high-res size
    foreground: np.ndarray  # foreground condition at the low-res size
    background: np.ndarray | None  # fbc background / fc initial-latent image at the low-res size
    params: RelightParams
    seconds: float
    # fbc with keep_floats: the official `process()` output itself, float32 HxWx3 in [0, 1] before the * 255 that
    # gives `images` (its Compute Normal works on these); else None
    floats: list[np.ndarray] | None = None


def check_inputs(
    models: ICLightModels, foreground: np.ndarray, params: RelightParams, background: np.ndarray | None
) -> None:
    """Guard clauses with messages that name the bad value."""
    if models.variant not in MODE_VARIANTS[params.mode]:
        raise IncompatibleModelError(
            f"mode {params.mode.value} needs IC-Light {'/'.join(v.value for v in MODE_VARIANTS[params.mode])} "
            f"weights but the loaded model is {models.variant.value}"
        )
    for name, image in (("foreground", foreground), ("background", background)):
        if image is None:
            continue
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = getattr(image, "shape", type(image).__name__), getattr(image, "dtype", "")
            raise InvalidParameterError(f"{name} should be an HxWx3 uint8 RGB array but is {got}")
        if min(image.shape[:2]) < 1:
            raise InvalidParameterError(f"{name} is empty ({image.shape})")
    needs_bg = params.mode is Mode.FBC and params.bg_source in (BGSource.UPLOAD, BGSource.FLIP)
    if needs_bg and background is None:
        raise InvalidParameterError(
            f"background source '{params.bg_source.label}' needs a background image; upload one or pick a "
            f"light direction / Ambient"
        )


def condition_image(
    params: RelightParams, background: np.ndarray | None, light_map: np.ndarray | None
) -> np.ndarray | None:
    """fc: the initial-latent image (None = start from noise); fbc: the background condition."""
    w, h = params.width, params.height
    if params.mode is Mode.FC:
        if light_map is not None:
            return light_map_image(light_map, w, h)
        return None if params.light is None else fc_initial_image(params.light, w, h)
    source = params.bg_source
    if source is BGSource.UPLOAD:
        return background
    if source is BGSource.FLIP:
        return np.ascontiguousarray(np.fliplr(background))
    if source is BGSource.AMBIENT:
        return constant_image(AMBIENT_GREY, w, h)
    light = params.light if source is BGSource.LIGHT else Light.named(source.value)
    return fbc_background(light, w, h)


@torch.inference_mode()
def encode_images(models: ICLightModels, images: list[np.ndarray]) -> torch.Tensor:
    """VAE-encode uint8 images as one batch, then concatenate on channels: (1, 4 * n, h, w)."""
    return torch.cat([latent[None] for latent in encode_batch(models, images)], dim=1)


@torch.inference_mode()
def encode_batch(models: ICLightModels, images: list[np.ndarray]) -> torch.Tensor:
    """VAE-encode uint8 images as a batch: (n, 4, h, w)."""
    vae = models.vae
    with models.active(vae):
        pixels = numpy2pytorch(images).to(device=models.device, dtype=vae.dtype)
        return vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor


@torch.inference_mode()
def decode(models: ICLightModels, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents to pixels in [-1, 1]."""
    vae = models.vae
    with models.active(vae):
        return vae.decode(latents.to(device=models.device, dtype=vae.dtype) / vae.config.scaling_factor).sample


def conditions(models: ICLightModels, params: RelightParams, fg: np.ndarray, bg: np.ndarray | None, w: int, h: int):
    """Condition latents at (w, h): foreground, plus background for fbc."""
    images = [resize_and_center_crop(fg, w, h)]
    if params.mode is Mode.FBC:
        images.append(resize_and_center_crop(bg, w, h))
    return encode_images(models, images), images


def img2img_total_steps(steps: int, strength: float) -> int:
    """The official demos' image-to-image schedule length: `steps` are the ones that run at `strength`."""
    return int(round(steps / strength))


def planned_steps(params: RelightParams, has_initial_image: bool) -> tuple[int, int]:
    """(low-res steps, high-res steps) that will actually run."""
    low = params.steps
    if has_initial_image:
        low = count_img2img_steps(img2img_total_steps(params.steps, params.lowres_denoise), params.lowres_denoise)
    high = count_img2img_steps(img2img_total_steps(params.steps, params.highres_denoise), params.highres_denoise)
    return low, high


def img2img_start(
    params: RelightParams, strength: float, init: torch.Tensor, generator: torch.Generator, device: torch.device
) -> tuple[object, torch.Tensor, torch.Tensor]:
    """(scheduler, timesteps, latents) of an image-to-image pass: `init` noised to the pass's first timestep."""
    scheduler = make_scheduler(params.sampler, params.fast)
    timesteps, _ = img2img_timesteps(scheduler, img2img_total_steps(params.steps, strength), strength, device)
    return scheduler, timesteps, noised_latents(init, params.num_images, timesteps, scheduler, generator)


@dataclass(frozen=True)
class Guidance:
    """What every denoising step of both passes is conditioned on."""

    cond: torch.Tensor  # positive prompt embeddings
    uncond: torch.Tensor  # negative prompt embeddings
    cfg: float  # classifier-free guidance scale


def denoise_pass(
    models: ICLightModels,
    scheduler,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    guidance: Guidance,
    concat: torch.Tensor,
    generator: torch.Generator,
    progress: Progress,
    stage: str,
) -> torch.Tensor:
    """One pass of the denoising loop with the UNet on its device, in the acceleration layer's sampling context."""
    with models.active(models.unet), accel.sampling_context(models.placement):
        return denoise(models.unet, scheduler, latents, timesteps, guidance.cond, guidance.uncond, guidance.cfg,
                       concat, generator, progress, stage)  # fmt: skip


@torch.inference_mode()
def relight(
    models: ICLightModels,
    foreground: np.ndarray,
    params: RelightParams,
    background: np.ndarray | None = None,
    light_map: np.ndarray | None = None,
    callback: StepCallback | None = None,
    cancel: threading.Event | None = None,
    keep_floats: bool = False,
) -> RelightResult:
    """Relight `foreground` (already matted onto grey) as the official `process()` does.

    `keep_floats` (fbc only) also returns the unrounded [0, 1] images the official fbc `process()` returns.
    """
    started = time.perf_counter()
    # 1. Check inputs
    check_inputs(models, foreground, params, background)
    device, width, height, n = models.device, params.width, params.height, params.num_images
    # One generator, seeded once, drives both passes (on the model's device, as the official demos).
    generator = torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(int(params.seed))

    # 2. Conditioning images
    cond_image = condition_image(params, background, light_map)
    init_image = cond_image if params.mode is Mode.FC else None
    bg_for_concat = cond_image if params.mode is Mode.FBC else None
    low_steps, high_steps = planned_steps(params, init_image is not None)
    progress = Progress(low_steps + high_steps, callback, cancel)
    progress.check_cancel()

    # 3. Encode the foreground (and background) condition
    concat, cond_images = conditions(models, params, foreground, bg_for_concat, width, height)

    # 4. Encode the prompt
    with models.active(models.text_encoder):
        cond, uncond = encode_prompt_pair(
            models.tokenizer, models.text_encoder, params.positive_prompt, params.negative_prompt, device
        )
    dtype = cond.dtype  # diffusers runs the latents in the prompt embeddings' dtype
    guidance = Guidance(cond, uncond, params.cfg)

    # 5. Low-res pass: from noise, or image-to-image from the light's initial image
    if init_image is None:
        scheduler = make_scheduler(params.sampler, params.fast)
        scheduler.set_timesteps(params.steps, device=device)
        timesteps = scheduler.timesteps
        latents = initial_noise((n, 4, height // 8, width // 8), scheduler, generator, device, dtype)
    else:
        init = encode_batch(models, [resize_and_center_crop(init_image, width, height)])
        scheduler, timesteps, latents = img2img_start(params, params.lowres_denoise, init.to(dtype), generator, device)
    latents = denoise_pass(models, scheduler, latents, timesteps, guidance, concat, generator, progress, LOWRES)

    # 6. Decode, resize to the high-res size (no crop), re-encode
    pixels = pytorch2numpy(decode(models, latents))
    hr_width, hr_height = params.highres_size
    pixels = [resize_without_crop(p, hr_width, hr_height) for p in pixels]
    latents = encode_batch(models, pixels).to(dtype=models.unet.unet.dtype)
    hr_height, hr_width = latents.shape[2] * 8, latents.shape[3] * 8

    # 7. High-res pass: image-to-image with the conditions re-encoded at the new size
    concat, _ = conditions(models, params, foreground, bg_for_concat, hr_width, hr_height)
    scheduler, timesteps, latents = img2img_start(params, params.highres_denoise, latents.to(dtype), generator, device)
    latents = denoise_pass(models, scheduler, latents, timesteps, guidance, concat, generator, progress, HIGHRES)

    # 8. Decode
    floats = None
    if params.mode is Mode.FC:
        images = pytorch2numpy(decode(models, latents))
    else:
        floats = decoded_floats(decode(models, latents))
        images = [float_to_uint8(f) for f in floats]
    return RelightResult(
        images=images,
        foreground=cond_images[0],
        background=cond_images[1] if len(cond_images) > 1 else init_image,
        params=params,
        seconds=time.perf_counter() - started,
        floats=floats if keep_floats else None,
    )
