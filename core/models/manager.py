"""The model manager: loads IC-Light models lazily, caches them by (variant, device, dtype), can unload."""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core import accel
from core.models.devices import Placement, env_flag, free_accelerator_memory, resolve_placement
from core.models.loading import (
    DEFAULT_BASE_MODEL,
    OFFLINE_ENV,
    BaseComponents,
    Variant,
    check_offset_variant,
    default_models_dir,
    ensure_iclight_weights,
    load_base_components,
    offline_mode,
)
from core.models.lora import LoraSpec, lora_key
from core.models.weights import build_iclight_unet, read_offset
from core.recipe.sampling import ConcatConditionedUNet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSettings:
    """Where models come from and where they run; read from the environment once by `from_env`."""

    base_model: str = DEFAULT_BASE_MODEL  # Hub id, diffusers folder or single .safetensors file
    models_dir: Path = field(default_factory=default_models_dir)  # holds iclight_sd15_*.safetensors
    device: str = "auto"  # auto, cuda, mps, cpu
    dtype: str = "auto"  # auto, fp32, fp16, bf16
    low_vram: bool = False  # GPU: move models to the GPU only while they run, tiled VAE
    download: bool = True  # fetch missing IC-Light weights from the Hub

    @classmethod
    def from_env(cls, **overrides: Any) -> ModelSettings:
        """Settings from ICLIGHT_* environment variables; `overrides` that are not None win."""
        env = {
            "base_model": os.environ.get("ICLIGHT_BASE_MODEL") or DEFAULT_BASE_MODEL,
            "models_dir": default_models_dir(),
            "device": os.environ.get("ICLIGHT_DEVICE", "auto"),
            "dtype": os.environ.get("ICLIGHT_DTYPE", "auto"),
            "low_vram": env_flag("ICLIGHT_LOW_VRAM"),
        }
        env.update({k: v for k, v in overrides.items() if v is not None})
        env["models_dir"] = Path(env["models_dir"]).expanduser()
        return cls(**env)


def add_model_flags(parser) -> None:
    """The model flags shared by the CLI and both apps."""
    from core.models.devices import DTYPE_ALIASES, DTYPE_CHOICES

    parser.add_argument("--base-model", help=f"SD 1.5 Hub id, folder or .safetensors (default {DEFAULT_BASE_MODEL})")
    parser.add_argument("--models-dir", type=Path, help="folder with the IC-Light weights (default ./models)")
    parser.add_argument("--device", help="auto, cuda, cuda:N, mps, cpu (default auto)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, type=lambda v: DTYPE_ALIASES.get(v.lower(), v.lower()),
                        help="precision (default auto); float32, float16, half and bfloat16 also work")  # fmt: skip
    parser.add_argument("--low-vram", action="store_true", default=None, help="GPU offload + tiled VAE (4-8 GB GPUs)")
    parser.add_argument("--offline", action="store_true", help="never download anything; explain what is missing")


def settings_from_flags(args) -> ModelSettings:
    """ModelSettings from `add_model_flags` flags on top of the environment."""
    if args.offline:
        os.environ[OFFLINE_ENV] = "1"  # one switch for every loader: IC-Light, base model, matting, upscaler
    return ModelSettings.from_env(
        base_model=args.base_model,
        models_dir=args.models_dir,
        device=args.device,
        dtype=args.dtype,
        low_vram=args.low_vram,
        download=False if args.offline else None,
    )


@dataclass
class ICLightModels:
    """Everything one relight needs, already placed on its device."""

    variant: Variant
    tokenizer: Any
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    unet: ConcatConditionedUNet
    placement: Placement
    base_model: str
    attention: str = "SDPA"  # the UNet's attention: "AMX kernel (...)", "AVX512-BF16 kernel (...)" or "SDPA (why)"
    unet_ops: str = "eager"  # how the UNet's layers run ("fused oneDNN (...)" or "eager (why)")
    vae_ops: str = "eager"  # how the VAE's layers run, likewise
    loras: tuple[str, ...] = ()  # LoRAs fused into the UNet (and text encoder), as 'file:scale'

    @property
    def device(self) -> torch.device:
        return self.placement.torch_device

    def describe(self) -> str:
        return (
            f"base model {self.base_model} · IC-Light {self.variant.value} · {self.placement.describe()}"
            f" · attention {self.attention} · UNet {self.unet_ops} · VAE {self.vae_ops}"
        ) + (f" · LoRAs {', '.join(self.loras)}" if self.loras else "")

    @contextlib.contextmanager
    def active(self, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """Low-VRAM offload: the module sits on the GPU only inside this block."""
        if not self.placement.offload:
            yield module
            return
        module.to(self.placement.torch_device)
        try:
            yield module
        finally:
            module.to("cpu")
            free_accelerator_memory()


class ModelManager:
    """Lazily loads and caches IC-Light models; one instance per app or CLI run."""

    def __init__(
        self,
        settings: ModelSettings | None = None,
        base: BaseComponents | None = None,
        offsets: dict[Variant, dict[str, torch.Tensor]] | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.settings = settings or ModelSettings.from_env()
        self._injected_base = base  # its UNet is never modified: each variant builds its own
        self._offsets = dict(offsets or {})
        self._base: BaseComponents | None = None
        self._cache: dict[tuple, ICLightModels] = {}
        self._placement = placement  # None: decided from the settings on first use
        self._vae: torch.nn.Module | None = None  # the placed VAE the variants share (maybe the CPU layer's copy)
        self._lock = threading.RLock()

    @classmethod
    def from_components(
        cls,
        tokenizer: Any,
        text_encoder: torch.nn.Module,
        vae: torch.nn.Module,
        unet: torch.nn.Module,
        settings: ModelSettings | None = None,
        offsets: dict[Variant, dict[str, torch.Tensor]] | None = None,
    ) -> ModelManager:
        """A manager over in-memory SD 1.5 components (offsets from `offsets` or the models folder)."""
        base = BaseComponents.from_modules(tokenizer, text_encoder, vae, unet, source="in-memory components")
        return cls(settings or ModelSettings(base_model="in-memory components"), base=base, offsets=offsets)

    @property
    def has_base_in_memory(self) -> bool:
        """True when the base model was handed in as modules (tests, embedding apps): nothing to find on disk."""
        return self._injected_base is not None

    @property
    def placement(self) -> Placement:
        """Device and dtypes, decided once on first use (never at import)."""
        if self._placement is None:
            s = self.settings
            self._placement = resolve_placement(s.device, s.dtype, s.low_vram)
        return self._placement

    def cache_key(self, variant: Variant) -> tuple:
        return (Variant(variant), *self.placement.cache_key)

    def is_loaded(self, variant: Variant) -> bool:
        return self._loaded(variant) is not None

    def _loaded(self, variant: Variant) -> ICLightModels | None:
        """The cached models of `variant` on this placement, whatever LoRAs they carry."""
        key = self.cache_key(variant)
        return next((models for k, models in self._cache.items() if k[:-1] == key), None)

    def weights_path(self, variant: Variant) -> Path:
        return Path(self.settings.models_dir) / Variant(variant).filename

    def weights_available(self, variant: Variant) -> bool:
        """True when the variant's offset is in memory or on disk (no download attempted)."""
        return Variant(variant) in self._offsets or self.weights_path(variant).is_file()

    def get(self, variant: Variant | str, loras: Sequence[LoraSpec] = ()) -> ICLightModels:
        """The models for `variant` with `loras` fused in, loading them on first use.

        One LoRA set per variant is kept: asking for another set rebuilds the UNet from the base and offset weights
        (never by subtracting), so no LoRA leaks into a later request.
        """
        variant = Variant(variant)
        with self._lock:
            key = (*self.cache_key(variant), lora_key(loras))
            if key not in self._cache:
                stale = [k for k in self._cache if k[:-1] == key[:-1]]
                for k in stale:
                    del self._cache[k]
                if stale:
                    accel.release_cpu_memory()
                    free_accelerator_memory()
                self._cache[key] = self._load(variant, tuple(loras))
            return self._cache[key]

    def unload(self, variant: Variant | str | None = None) -> None:
        """Drop cached models (one variant, or all with the shared base) and free memory."""
        with self._lock:
            for key in [k for k in self._cache if variant is None or k[0] == Variant(variant)]:
                del self._cache[key]
            if variant is None or not self._cache:
                self._base = self._vae = None  # also drops the base weights' file handles
        accel.release_cpu_memory()
        free_accelerator_memory()

    def describe(self, variant: Variant | str) -> str:
        """Status line: base model, variant, weight file state, device and dtypes."""
        variant = Variant(variant)
        state = "loaded" if self.is_loaded(variant) else "not loaded yet"
        if not self.weights_available(variant):
            state = f"weights missing: put {variant.filename} in {Path(self.settings.models_dir).resolve()}"
            if self.settings.download and not offline_mode():
                state += " (or let the first run download it)"
        # Name the weight file: a fine-tuned offset (`python -m core train`) sits in its own --models-dir.
        weights = "in-memory offset" if variant in self._offsets else str(self.weights_path(variant))
        text = f"base model {self.settings.base_model} · IC-Light {variant.value}: {weights} ({state})"
        text += f" · {self.placement.describe()}"
        loaded = self._loaded(variant)
        if loaded:
            text += f" · attention {loaded.attention} · UNet {loaded.unet_ops} · VAE {loaded.vae_ops}"
            text += f" · LoRAs {', '.join(loaded.loras)}" if loaded.loras else ""
        return text

    # -- loading -------------------------------------------------------------------------------------------------

    def _offset(self, variant: Variant) -> tuple[Mapping[str, torch.Tensor], Path]:
        """The variant's offset weights, checked for its channel count, and where they came from."""
        if variant in self._offsets:
            offset, source = self._offsets[variant], Path(f"<in-memory {variant.filename}>")
        else:
            source = ensure_iclight_weights(variant, self.settings.models_dir, download=self.settings.download)
            offset = read_offset(source)
        check_offset_variant(offset, variant, source)
        return offset, source

    def _base_components(self) -> BaseComponents:
        """Shared tokenizer, text encoder, VAE and the (lazily read) base UNet weights."""
        if self._injected_base is not None:
            return self._injected_base
        if self._base is None:
            placement = self.placement
            self._base = load_base_components(
                self.settings.base_model, text_dtype=placement.text_dtype, vae_dtype=placement.vae_dtype
            )
        return self._base

    def _lora_files(self, base: BaseComponents, loras: Sequence[LoraSpec]) -> list:
        """(checked LoRA file, scale) for each LoRA of non-zero scale: found, read and checked before any build."""
        from core.models.lora import read_lora, resolve_lora

        context = int(base.unet_config.get("cross_attention_dim", 768))
        text_width = int(base.text_encoder.config.hidden_size)
        files = []
        for spec in loras:
            if spec.scale != 0:
                path = resolve_lora(spec.source, self.settings.models_dir, download=self.settings.download)
                files.append((read_lora(path, context, text_width), spec.scale))
        return files

    def _load(self, variant: Variant, loras: Sequence[LoraSpec] = ()) -> ICLightModels:
        from core.models.lora import fuse_loras

        placement = self.placement
        logger.info("loading IC-Light %s on %s", variant.value, placement.describe())
        offset, source = self._offset(variant)  # first: fail fast on missing/corrupt weights before the big load
        base = self._base_components()
        lora_files = self._lora_files(base, loras)  # likewise for missing or foreign LoRA files
        unet = build_iclight_unet(base.unet_config, base.unet_weights, offset, variant.in_channels,
                                  placement.unet_dtype, source=source)  # fmt: skip
        del offset
        text_encoder = base.text_encoder
        if any(lora.has_text_encoder for lora, _ in lora_files):
            text_encoder = copy.deepcopy(text_encoder)  # the shared one stays as loaded, for other LoRA sets
        # Fused into this fresh UNet before the CPU layer packs it (accel.install below), so packing sees them.
        fused = tuple(fuse_loras(unet, text_encoder, lora_files))
        home = "cpu" if placement.offload else placement.torch_device
        unet.to(device=home)
        text_encoder = text_encoder.eval().requires_grad_(False).to(device=home, dtype=placement.text_dtype)
        vae, owned = self._vae, True  # placed and set up by an earlier variant
        if vae is None:
            vae = base.vae.eval().requires_grad_(False).to(device=home, dtype=placement.vae_dtype)
            owned = base is not self._injected_base  # a caller's module is never rewritten, only copied
        status = accel.install(unet, vae, placement, vae_owned=owned)
        self._vae = vae = status.vae  # one VAE for every variant
        if placement.vae_tiling and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
        return ICLightModels(
            variant=variant,
            tokenizer=base.tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            unet=ConcatConditionedUNet(unet),
            placement=placement,
            base_model=self.settings.base_model,
            attention=status.attention,
            unet_ops=status.unet_ops,
            vae_ops=status.vae_ops,
            loras=fused,
        )
