"""Instruction editing with a trained InstructPix2Pix folder (diffusers' pipeline), saved like relight results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.errors import IncompatibleModelError, InvalidParameterError, WeightsNotFoundError

PIPELINE_CLASS = "StableDiffusionInstructPix2PixPipeline"
IP2P_CHANNELS = 8  # noisy latents + image latents
VAE_SCALE = 8
MIN_SIDE, MAX_SIDE = 64, 2048
STEM = "edit"


def find_model_folder(model: Path) -> Path:
    """The InstructPix2Pix folder: `model` itself, or the `model/` export inside a training run folder."""
    from core.train.export import IP2P_FOLDER

    model = Path(model).expanduser()
    if not model.is_dir():
        raise InvalidParameterError(f"--model {model} is not a folder; give an InstructPix2Pix diffusers folder")
    for folder in (model, model / IP2P_FOLDER):
        if (folder / "model_index.json").is_file():
            break
    else:
        raise WeightsNotFoundError(f"--model {model} holds no model_index.json (nor {IP2P_FOLDER}/model_index.json); "
                                   "give the folder `python -m core train --kind ip2p` exported")  # fmt: skip
    try:
        channels = json.loads((folder / "unet" / "config.json").read_text()).get("in_channels")
    except (OSError, ValueError) as exc:
        raise WeightsNotFoundError(f"{folder}/unet/config.json is missing or damaged ({exc})") from None
    if channels != IP2P_CHANNELS:
        raise IncompatibleModelError(
            f"{folder} has a UNet with {channels} input channels, not an InstructPix2Pix model ({IP2P_CHANNELS})"
        )
    return folder


def output_size(image: np.ndarray, width: int | None, height: int | None) -> tuple[int, int]:
    """(width, height): the flags, or the image's size rounded down to a multiple of 8."""
    w = width if width is not None else image.shape[1] // VAE_SCALE * VAE_SCALE
    h = height if height is not None else image.shape[0] // VAE_SCALE * VAE_SCALE
    for name, value in (("width", w), ("height", h)):
        if value % VAE_SCALE or not MIN_SIDE <= value <= MAX_SIDE:
            raise InvalidParameterError(
                f"--{name} should be a multiple of {VAE_SCALE} in [{MIN_SIDE}, {MAX_SIDE}] but is {value}"
            )
    return w, h


def edit(
    model: Path,
    image: Path,
    instruction: str,
    out: Path,
    image_guidance: float = 1.5,
    cfg: float = 7.0,
    steps: int = 20,
    seed: int = 12345,
    width: int | None = None,
    height: int | None = None,
    device: str = "auto",
    quiet: bool = False,
    loras: Sequence[str] = (),
    download: bool = True,
) -> list[Path]:
    """Edit `image` by `instruction`; the result is a new PNG in `out` carrying every parameter."""
    import torch

    from core.cli import _check_out_dir
    from core.imaging.convert import resize_and_center_crop
    from core.imaging.inputs import load_image
    from core.imaging.outputs import save_result
    from core.models.devices import resolve_placement
    from core.models.loading import default_models_dir, offline_mode
    from core.models.lora import coerce_loras, fuse_loras, read_lora, resolve_lora
    from core.params import Matting, RelightParams

    # 1. Check inputs (before any model loads)
    if isinstance(image_guidance, bool) or not 1.0 <= image_guidance <= 10.0:
        raise InvalidParameterError(f"--image-guidance should be in [1, 10] but is {image_guidance!r}")
    folder = find_model_folder(model)
    source = load_image(image)
    w, h = output_size(source.rgb, width, height)
    notes = {"engine": "edit", "image_guidance": image_guidance, "model": str(folder)}
    params = RelightParams(prompt=instruction, added_prompt="", negative_prompt="", width=w, height=h, steps=steps,
                           cfg=cfg, seed=seed, matting=Matting.NONE, loras=coerce_loras(list(loras)),
                           extra=notes)  # fmt: skip
    _check_out_dir(Path(out))
    # LoRA files are found and checked before the pipeline loads (a missing or SDXL LoRA costs no model load).
    download = download and not offline_mode()
    widths = (_config_value(folder / "unet", "cross_attention_dim", 768), _config_value(folder / "text_encoder",
              "hidden_size", 768))  # fmt: skip
    lora_files = [(read_lora(resolve_lora(spec.source, default_models_dir(), download=download), *widths), spec.scale)
                  for spec in params.loras if spec.scale != 0]  # fmt: skip

    # 2. Load the pipeline (fp32 on CPU: diffusers' bf16 CPU path is slower than fp32)
    from diffusers import StableDiffusionInstructPix2PixPipeline

    placement = resolve_placement(device, "auto")
    dtype = torch.float32 if placement.torch_device.type == "cpu" else placement.unet_dtype
    try:
        pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(folder), torch_dtype=dtype,
                                                                      safety_checker=None)  # fmt: skip
    except (OSError, ValueError) as exc:
        raise WeightsNotFoundError(f"{folder} could not be loaded as an InstructPix2Pix pipeline ({exc})") from exc
    if lora_files:  # fused into the weights, as the relight path does: no adapter layers left at sampling time
        fuse_loras(pipe.unet, pipe.text_encoder, lora_files)
    pipe.to(placement.torch_device)
    pipe.set_progress_bar_config(disable=quiet)

    # 3. Edit
    from PIL import Image

    pixels = Image.fromarray(resize_and_center_crop(source.rgb, w, h))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    result = pipe(instruction, image=pixels, num_inference_steps=steps, image_guidance_scale=image_guidance,
                  guidance_scale=cfg, generator=generator, output_type="np")  # fmt: skip
    edited = (result.images[0] * 255).round().clip(0, 255).astype(np.uint8)
    return [save_result(edited, params, Path(out), stem=STEM)]


def _config_value(folder: Path, key: str, default: int) -> int:
    """One number from a model folder's config.json (read before the model loads, to check LoRAs against it)."""
    try:
        return int(json.loads((folder / "config.json").read_text()).get(key, default))
    except (OSError, ValueError, TypeError):
        return default
