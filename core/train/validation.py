"""Validation images during training: the model in training, run as users will run it, into OUT/validation/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.train.config import Kind, TrainConfig
from core.train.run_dir import STEP_DIGITS, VALIDATION

MIN_SIDE = 64  # the relight recipe's smallest size
IMAGE_GUIDANCE, TEXT_GUIDANCE = 1.5, 7.0  # InstructPix2Pix defaults


def validate(config: TrainConfig, models, unet: torch.nn.Module, step: int, device: torch.device) -> Path:
    """Render the validation image at `step` and save it as OUT/validation/step-NNNNNN.png."""
    from PIL import Image

    from core.imaging.inputs import load_image

    source = load_image(config.validation_image)
    was_training = unet.training
    unet.eval()
    try:
        if config.kind is Kind.ICLIGHT_FC:
            image = _relight(config, models, unet, source, device)
        else:
            image = _edit(config, models, unet, source.rgb, device)
    finally:
        unet.train(was_training)
    folder = config.out / VALIDATION
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:0{STEP_DIGITS}d}.png"
    temp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image).save(temp, format="PNG")
    temp.replace(path)
    return path


def _relight(config: TrainConfig, models, unet, source, device) -> np.ndarray:
    """The real relight recipe (low-res + high-res pass) with the UNet being trained."""
    from core.finishing.matting import composite_on_grey
    from core.models.devices import Placement
    from core.models.loading import Variant
    from core.models.manager import ICLightModels
    from core.params import RelightParams
    from core.recipe.pipeline import relight
    from core.recipe.sampling import ConcatConditionedUNet

    dtype = next(models.text_encoder.parameters()).dtype
    placement = Placement(device=str(device), unet_dtype=dtype, text_dtype=dtype, vae_dtype=models.vae.dtype)
    fc = ICLightModels(Variant.FC, models.tokenizer, models.text_encoder, models.vae, ConcatConditionedUNet(unet),
                       placement, base_model=config.base_model)  # fmt: skip
    foreground = composite_on_grey(source.rgb, source.alpha) if source.alpha is not None else source.rgb
    side = max(config.resolution, MIN_SIDE)
    params = RelightParams(prompt=config.validation_prompt, width=side, height=side, steps=config.validation_steps,
                           seed=config.seed, highres_scale=1.0)  # fmt: skip
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        return relight(fc, foreground, params).images[0]


def _edit(config: TrainConfig, models, unet, rgb: np.ndarray, device) -> np.ndarray:
    """diffusers' InstructPix2Pix pipeline over the UNet being trained."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline
    from PIL import Image

    from core.imaging.convert import resize_and_center_crop
    from core.train.model import NOISE_SCHEDULE

    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=models.vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer, unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(**NOISE_SCHEDULE), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    side = config.resolution
    image = Image.fromarray(resize_and_center_crop(rgb, side, side))
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    with torch.autocast(device.type, enabled=models.vae.dtype != torch.float32, dtype=models.vae.dtype):
        result = pipe(config.validation_prompt, image=image, num_inference_steps=config.validation_steps,
                      image_guidance_scale=IMAGE_GUIDANCE, guidance_scale=TEXT_GUIDANCE, generator=generator,
                      output_type="np")  # fmt: skip
    return (result.images[0] * 255).round().clip(0, 255).astype(np.uint8)
