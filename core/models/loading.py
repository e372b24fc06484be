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
from safetensors import SafetensorError

from core.errors import (
    CorruptWeightsError,
    ICLightError,
    IncompatibleModelError,
    InvalidParameterError,
    WeightsNotFoundError,
)
from core.models.weights import SafetensorsFile, offset_in_channels

logger = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "stablediffusionapi/realistic-vision-v51"
ICLIGHT_HUB_REPO = "lllyasviel/ic-light"
# Config used to interpret a single-file SD 1.5 checkpoint (layer layout, scheduler, tokenizer).
SINGLE_FILE_CONFIG = "stable-diffusion-v1-5/stable-diffusion-v1-5"
LATENT_CHANNELS = 4
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
OFFLINE_ENV = "ICLIGHT_OFFLINE"


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
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes") for k in (OFFLINE_ENV, "HF_HUB_OFFLINE"))


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
    if Path(models_dir).exists() and not Path(models_dir).is_dir():
        raise InvalidParameterError(f"models folder {models_dir} is a file; point --models-dir at a folder")
    Path(models_dir).mkdir(parents=True, exist_ok=True)
    try:
        got = hf_hub_download(repo_id=ICLIGHT_HUB_REPO, filename=variant.filename, local_dir=str(models_dir))
    except Exception as exc:  # network, DNS, HTTP and cache errors all mean the same to the user
        raise WeightsNotFoundError(f"{hint} The download failed: {type(exc).__name__}: {exc}") from exc
    return Path(got)


def check_offset_variant(offset: Mapping, variant: Variant, path: Path) -> None:
    """Reject an fc file used as fbc and vice versa (8 vs 12 input channels)."""
    channels = offset_in_channels(offset, path)
    if channels != variant.in_channels:
        names = {Variant.FC.in_channels: "an fc/fcon file", Variant.FBC.in_channels: "an fbc file"}
        actual = names.get(channels, "not an IC-Light file")
        raise IncompatibleModelError(
            f"{path} has a {channels}-channel conv_in ({actual}) but {variant.value} needs {variant.in_channels}; "
            f"replace it with {variant.filename} from the Hub repo {ICLIGHT_HUB_REPO}"
        )


@dataclass
class BaseComponents:
    """The SD 1.5 parts IC-Light builds on; the UNet as config + weights, merged later per variant."""

    tokenizer: Any
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet_config: dict[str, Any]
    unet_weights: Mapping[str, torch.Tensor]  # a lazily read file, or an in-memory state dict
    source: str

    @classmethod
    def from_modules(cls, tokenizer: Any, text_encoder, vae, unet, source: str) -> BaseComponents:
        """Components from loaded modules (in-memory, single-file, or non-safetensors checkpoints)."""
        return cls(tokenizer, text_encoder, vae, dict(unet.config), unet.state_dict(), source)


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
    # transformers quietly builds a default text encoder config or an empty tokenizer for a missing subfolder, which
    # would surface as a wrong "not SD 1.5" verdict or a crash mid-sampling: name what is missing instead.
    missing = [
        f"{part}/config.json"
        for part in ("unet", "vae", "text_encoder")
        if not (folder / part / "config.json").is_file()
    ]
    if not any((folder / "tokenizer" / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        missing.append("tokenizer/ (vocab.json and merges.txt)")
    if missing:
        raise WeightsNotFoundError(
            f"base model folder {folder} is incomplete: missing {', '.join(missing)}. Copy the whole SD 1.5 diffusers "
            "folder, or pass a Hub id or a single .safetensors checkpoint with --base-model."
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
        weights_file = _unet_weights_file(source, kind, offline)
        if weights_file is not None:
            unet_weights: Mapping[str, torch.Tensor] = SafetensorsFile(weights_file)
        else:  # .bin or sharded checkpoints: let diffusers read them
            unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=torch.float32, **kwargs)
            unet_weights = unet.state_dict()
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=text_dtype, **kwargs)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=vae_dtype, **kwargs)
    except ICLightError:
        raise
    except (OSError, ValueError, SafetensorError) as exc:
        raise _explain_base_failure(source, kind, exc) from exc
    return BaseComponents(tokenizer, text_encoder, vae, dict(unet_config), unet_weights, source)


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
    return BaseComponents.from_modules(pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet, str(path))


def _unet_weights_file(source: str, kind: str, offline: bool) -> Path | None:
    """The UNet's single .safetensors file, when the model has one (read tensor by tensor to save memory)."""
    name = "diffusion_pytorch_model.safetensors"
    if kind == "folder":
        path = Path(source).expanduser() / "unet" / name
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, name, subfolder="unet", local_files_only=offline))
    except Exception:  # not cached / no such file (a .bin-only repo): from_pretrained decides and explains
        return None


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


def _describe(exc: BaseException) -> str:
    """'Type: first line of the message'."""
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message.splitlines()[0] if message else ''}"


def _explain_base_failure(source: str, kind: str, exc: Exception) -> Exception:
    text = _describe(exc)
    if kind == "hub":
        return WeightsNotFoundError(
            f"base model '{source}' could not be loaded from the Hugging Face Hub or its cache ({text}). "
            f"When offline, download it once elsewhere (`hf download {source}`) into the cache, or pass a local "
            f"diffusers folder or .safetensors file with --base-model / ICLIGHT_BASE_MODEL."
        )
    if kind == "file" and "Unable to load weights from checkpoint" in text:  # diffusers' word for an unreadable file
        cause = exc.__cause__ or exc.__context__
        why = f" ({_describe(cause)})" if cause is not None and str(cause).strip() else ""
        return CorruptWeightsError(
            f"single-file checkpoint '{source}' is truncated, corrupt or not a checkpoint{why}. Delete it and "
            f"download it again."
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
