"""Loading SD 1.5 base models and IC-Light weights, and the UNet surgery IC-Light needs."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from core.errors import (
    CorruptWeightsError,
    ICLightError,
    IncompatibleModelError,
    InvalidParameterError,
    WeightsNotFoundError,
)

logger = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "stablediffusionapi/realistic-vision-v51"
ICLIGHT_HUB_REPO = "lllyasviel/ic-light"
# Config used to interpret a single-file SD 1.5 checkpoint (layer layout, scheduler, tokenizer).
SINGLE_FILE_CONFIG = "stable-diffusion-v1-5/stable-diffusion-v1-5"
LATENT_CHANNELS = 4
SD15_TEXT_HIDDEN = 768  # CLIP ViT-L/14 width; SD 2.x uses 1024, SDXL 2048
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Variant(str, Enum):
    """IC-Light weight files: fc (text + foreground), fcon (fc with offset noise), fbc (+ background)."""

    FC = "fc"
    FCON = "fcon"
    FBC = "fbc"

    @property
    def filename(self) -> str:
        return f"iclight_sd15_{self.value}.safetensors"

    @property
    def in_channels(self) -> int:
        """UNet input channels: noisy latents + foreground latents (+ background latents for fbc)."""
        return LATENT_CHANNELS * (3 if self is Variant.FBC else 2)


def default_models_dir() -> Path:
    """`ICLIGHT_MODELS_DIR`, else ./models next to the code (not the current directory)."""
    env = os.environ.get("ICLIGHT_MODELS_DIR")
    return Path(env).expanduser() if env else PROJECT_ROOT / "models"


def offline_mode() -> bool:
    """True when no download should be attempted (ICLIGHT_OFFLINE or HF_HUB_OFFLINE set)."""
    return any(
        os.environ.get(k, "").strip().lower() in ("1", "true", "yes") for k in ("ICLIGHT_OFFLINE", "HF_HUB_OFFLINE")
    )


def ensure_iclight_weights(variant: Variant, models_dir: Path, download: bool = True) -> Path:
    """Path of the variant's weight file, downloading it from the Hub (with a progress bar) when missing."""
    path = Path(models_dir) / variant.filename
    if path.is_file():
        return path
    hint = (
        f"IC-Light weights '{variant.filename}' are missing from {Path(models_dir).resolve()}. "
        f"Download them from https://huggingface.co/{ICLIGHT_HUB_REPO}/resolve/main/{variant.filename} "
        f"and put the file in that folder (or point --models-dir / ICLIGHT_MODELS_DIR at the folder holding it)."
    )
    if not download or offline_mode():
        raise WeightsNotFoundError(hint + " Downloads are disabled (offline mode).")
    from huggingface_hub import hf_hub_download

    logger.info("downloading %s from %s into %s", variant.filename, ICLIGHT_HUB_REPO, models_dir)
    Path(models_dir).mkdir(parents=True, exist_ok=True)
    try:
        got = hf_hub_download(repo_id=ICLIGHT_HUB_REPO, filename=variant.filename, local_dir=str(models_dir))
    except Exception as exc:  # network, DNS, HTTP and cache errors all mean the same to the user
        raise WeightsNotFoundError(f"{hint} The download failed: {type(exc).__name__}: {exc}") from exc
    return Path(got)


class OffsetFile(Mapping):
    """An IC-Light offset file read lazily, tensor by tensor, so merging never holds two UNet copies."""

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self.path = Path(path)
        self._handle = safe_open(str(self.path), framework="pt", device="cpu")
        self._keys = list(self._handle.keys())

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        return self._handle.get_tensor(key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handle.get_slice(key).get_shape())


def read_offset(path: Path) -> OffsetFile:
    """Open an IC-Light offset file, turning unreadable files into a clear CorruptWeightsError."""
    from safetensors import SafetensorError

    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"IC-Light weight file {path} does not exist")
    try:
        offset = OffsetFile(path)
        if "conv_in.weight" in offset:
            offset["conv_in.weight"]  # reading one tensor catches files cut short inside the data
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CorruptWeightsError(
            f"{path} ({path.stat().st_size} bytes) is not a readable safetensors file ({exc}). "
            f"It is probably truncated by an interrupted download: delete it and run again to re-download."
        ) from exc
    return offset


def _shape(offset: Mapping, key: str) -> tuple[int, ...]:
    return offset.shape(key) if isinstance(offset, OffsetFile) else tuple(offset[key].shape)


def offset_in_channels(offset: Mapping, path: Path) -> int:
    """Input channels of conv_in stored in an offset file."""
    shape = _shape(offset, "conv_in.weight") if "conv_in.weight" in offset else ()
    if len(shape) != 4:
        raise IncompatibleModelError(f"{path} has no 4-D 'conv_in.weight'; it is not an IC-Light SD 1.5 weight file")
    return int(shape[1])


def check_offset_variant(offset: Mapping, variant: Variant, path: Path) -> None:
    """Reject an fc file used as fbc and vice versa (8 vs 12 input channels)."""
    channels = offset_in_channels(offset, path)
    if channels != variant.in_channels:
        actual = {v.in_channels: v.value for v in Variant}.get(channels, f"{channels}-channel")
        raise IncompatibleModelError(
            f"{path.name} has a {channels}-channel conv_in (an {actual} model) but variant '{variant.value}' needs "
            f"{variant.in_channels} channels; use {variant.filename} for {variant.value}"
        )


@torch.no_grad()
def widen_conv_in(unet: torch.nn.Module, in_channels: int) -> None:
    """Replace conv_in by one with `in_channels` inputs: first 4 copied, new ones zero, bias kept."""
    old = unet.conv_in
    if old.in_channels == in_channels:
        return
    new = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    new.weight.zero_()
    new.weight[:, : old.in_channels].copy_(old.weight)
    new.bias = old.bias
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)


@torch.no_grad()
def apply_offset(unet: torch.nn.Module, offset: Mapping, source: Path | str = "offset") -> None:
    """Add the offset (a delta over every base UNet key) to the UNet weights, strictly and in place."""
    state = unet.state_dict()
    missing = sorted(set(state) - set(offset))
    unexpected = sorted(set(offset) - set(state))
    if missing or unexpected:
        raise IncompatibleModelError(
            f"{source} does not match the base UNet: {len(missing)} key(s) missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}). IC-Light needs an SD 1.5 base model."
        )
    for key, base in state.items():
        if _shape(offset, key) != tuple(base.shape):
            raise IncompatibleModelError(
                f"{source}: '{key}' has shape {_shape(offset, key)} but the base UNet has {tuple(base.shape)}; "
                f"IC-Light needs an SD 1.5 base model"
            )
    # In place, one tensor at a time: the same fp32 sums as `base + offset` without a second copy of the UNet.
    for key, base in state.items():
        base.add_(offset[key].to(device=base.device))


@dataclass
class BaseComponents:
    """The SD 1.5 parts IC-Light builds on."""

    tokenizer: Any
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: torch.nn.Module
    source: str


def classify_base_source(base_model: str) -> str:
    """'folder', 'file' or 'hub' for a --base-model value; raises for paths that do not exist."""
    text = str(base_model).strip()
    if not text:
        raise InvalidParameterError("base model is empty; give a Hub id, a diffusers folder or a .safetensors file")
    path = Path(text).expanduser()
    if path.is_dir():
        return "folder"
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise InvalidParameterError(f"base model file {path} should be a .safetensors or .ckpt checkpoint")
        return "file"
    looks_like_path = text.startswith((".", "/", "~")) or path.suffix.lower() in SINGLE_FILE_SUFFIXES
    if looks_like_path or text.count("/") != 1:
        raise InvalidParameterError(
            f"base model {text!r} is neither an existing folder or file nor a Hub id like 'owner/name'"
        )
    return "hub"


def _check_not_sdxl_folder(folder: Path) -> None:
    index = folder / "model_index.json"
    if index.is_file():
        import json

        try:
            cls = json.loads(index.read_text()).get("_class_name", "")
        except ValueError as exc:
            raise CorruptWeightsError(f"{index} is not valid JSON: {exc}") from exc
        if "XL" in cls or "StableDiffusion3" in cls or "Flux" in cls:
            raise IncompatibleModelError(f"{folder} is a {cls} model; IC-Light needs an SD 1.5 base model")
    elif not (folder / "unet").is_dir():
        raise InvalidParameterError(
            f"{folder} is not a diffusers model folder (no model_index.json and no unet/ subfolder)"
        )


def check_sd15(unet_config: Any, text_width: int, source: str) -> None:
    """Raise IncompatibleModelError unless the configs have the SD 1.5 shape IC-Light was trained on."""
    get = unet_config.get if isinstance(unet_config, dict) else lambda k, d=None: getattr(unet_config, k, d)
    problems = []
    if get("addition_embed_type") is not None:
        problems.append(f"UNet uses addition_embed_type={get('addition_embed_type')!r} (SDXL-style)")
    if get("in_channels") != LATENT_CHANNELS:
        problems.append(f"UNet has {get('in_channels')} input channels instead of {LATENT_CHANNELS}")
    if get("cross_attention_dim") != text_width:
        problems.append(f"UNet cross-attention width {get('cross_attention_dim')} != text encoder width {text_width}")
    if problems:
        raise IncompatibleModelError(
            f"base model {source} is not SD 1.5: " + "; ".join(problems) + ". IC-Light needs SD 1.5."
        )


def load_base_components(
    base_model: str,
    single_file_config: str | None = None,
    text_dtype: torch.dtype = torch.float32,
    vae_dtype: torch.dtype = torch.float32,
) -> BaseComponents:
    """Load tokenizer, text encoder, VAE (in their final dtypes) and the UNet (fp32 for the merge) on CPU."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    kind = classify_base_source(base_model)
    offline = offline_mode()
    source = str(base_model)
    try:
        if kind == "file":
            return _load_single_file(Path(base_model).expanduser(), single_file_config, offline)
        if kind == "folder":
            _check_not_sdxl_folder(Path(base_model).expanduser())
        kwargs: dict[str, Any] = {"local_files_only": offline} if kind == "hub" else {}
        # Check the architecture from the configs first: fail in a second, not after loading gigabytes.
        text_config = CLIPTextConfig.from_pretrained(source, subfolder="text_encoder", **kwargs)
        unet_config = UNet2DConditionModel.load_config(source, subfolder="unet", **kwargs)
        check_sd15(unet_config, text_config.hidden_size, source)
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kwargs)
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=torch.float32, **kwargs)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=text_dtype, **kwargs)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=vae_dtype, **kwargs)
    except ICLightError:
        raise
    except (OSError, ValueError) as exc:
        raise _explain_base_failure(source, kind, exc) from exc
    return BaseComponents(tokenizer, text_encoder, vae, unet, source)


def _load_single_file(path: Path, config: str | None, offline: bool) -> BaseComponents:
    from diffusers import StableDiffusionPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    config = config or os.environ.get("ICLIGHT_SINGLE_FILE_CONFIG") or SINGLE_FILE_CONFIG
    if offline and not Path(config).expanduser().is_dir():
        config = _cached_config_folder(config)
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path), config=config, local_files_only=offline, safety_checker=None, torch_dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as exc:
        raise _explain_base_failure(str(path), "file", exc) from exc
    check_sd15(pipe.unet.config, pipe.text_encoder.config.hidden_size, str(path))
    return BaseComponents(pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet, str(path))


def _cached_config_folder(repo_id: str) -> str:
    """Offline: the cached layout config of `repo_id` (diffusers would otherwise try the network anyway)."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True, allow_patterns=["*.json", "**/*.json", "**/*.txt"])
    except Exception as exc:  # cache misses come in several error types; all mean "not cached"
        raise WeightsNotFoundError(
            f"a single-file checkpoint needs the SD 1.5 layout config '{repo_id}', which is not cached and cannot be "
            f"downloaded offline. Set ICLIGHT_SINGLE_FILE_CONFIG to a local diffusers SD 1.5 folder "
            f"({exc.__class__.__name__})"
        ) from exc


def _explain_base_failure(source: str, kind: str, exc: Exception) -> Exception:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {first_line}"
    if kind == "hub":
        return WeightsNotFoundError(
            f"base model '{source}' could not be loaded from the Hugging Face Hub or its cache ({text}). "
            f"When offline, download it once elsewhere (`hf download {source}`) into the cache, or pass a local "
            f"diffusers folder or .safetensors file with --base-model / ICLIGHT_BASE_MODEL."
        )
    if "safetensors" in text.lower() or "header" in text.lower() or "incomplete" in text.lower():
        return CorruptWeightsError(f"base model '{source}' has a corrupt or truncated weight file ({text})")
    if "expected shape" in text or "size mismatch" in text:
        return IncompatibleModelError(f"base model '{source}' has weights of the wrong shape for SD 1.5 ({text})")
    if kind == "file":
        return IncompatibleModelError(
            f"single-file checkpoint '{source}' could not be read as SD 1.5 ({text}). The layout config comes from "
            f"'{SINGLE_FILE_CONFIG}' (set ICLIGHT_SINGLE_FILE_CONFIG to a local diffusers folder when offline)."
        )
    return WeightsNotFoundError(f"base model folder '{source}' is incomplete or unreadable ({text})")
