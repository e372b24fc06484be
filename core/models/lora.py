"""LoRAs on the IC-Light UNet (base + offset) and the text encoder: `SOURCE[:SCALE]` specs, finding the file,
checking it is an SD 1.5 LoRA, and fusing it with diffusers' own LoRA loader (peft).

Nothing heavy is imported at the top: `LoraSpec` travels inside RelightParams, which the CLI parser imports.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import (
    CorruptWeightsError,
    IncompatibleModelError,
    InvalidParameterError,
    WeightsNotFoundError,
)

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

MIN_SCALE, MAX_SCALE = -2.0, 2.0
LORAS_SUBDIR = "loras"  # LoRA files live in <models dir>/loras/
LORA_SUFFIX = ".safetensors"
PICKLED_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"  # the file name diffusers' save_lora_weights writes
SD15_CONTEXT_WIDTH = 768  # CLIP ViT-L/14: SD 1.x text conditioning width
FAMILY_BY_WIDTH = {1024: "an SD 2.x", 2048: "an SDXL", 1280: "an SDXL"}  # OpenCLIP-H; CLIP-L + bigG (and bigG)
# Key fragments that only SDXL LoRAs have: its second text encoder and its added-conditioning embedding.
SDXL_MARKERS = ("lora_te1_", "lora_te2_", "text_encoder_2.", "add_embedding", "label_emb")
LORA_MARKERS = ("lora_down", "lora_up", "lora_A", "lora_B", "lora.down", "lora.up", "lora_linear_layer")
LYCORIS_MARKERS = ("hada_w1", "lokr_w1", "oft_blocks", "lora_mid")  # LoHa / LoKr / OFT / LoCon-CP
DOWN_MARKERS = ("lora_down", "lora_A", "lora.down", "down.weight")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w./-]+\.safetensors)?$")


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to apply: where it comes from and how strongly."""

    source: str  # a .safetensors path, a file in <models dir>/loras/, or a Hub id (owner/repo[/file.safetensors])
    scale: float = 1.0  # strength in [-2, 2]; 0 leaves the model exactly as without the LoRA

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise InvalidParameterError(f"a LoRA needs a file or Hub id but got {self.source!r}")
        scale = self.scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise InvalidParameterError(f"LoRA scale should be a number but is {scale!r} (for {self.source})")
        if not MIN_SCALE <= scale <= MAX_SCALE:
            raise InvalidParameterError(
                f"LoRA scale should be in [{MIN_SCALE:g}, {MAX_SCALE:g}] but is {scale:g} (for {self.source})"
            )
        object.__setattr__(self, "source", self.source.strip())
        object.__setattr__(self, "scale", float(scale))

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """`PATH|HUB_ID[:SCALE]`, e.g. 'models/loras/detail.safetensors:0.6' or 'owner/repo:1.2'."""
        if not isinstance(text, str):
            raise InvalidParameterError(f"a LoRA should be given as PATH|HUB_ID[:SCALE] but is {text!r}")
        text = text.strip()
        head, sep, tail = text.rpartition(":")
        if not sep or (len(head) == 1 and head.isalpha() and _DRIVE.match(text)):  # no scale, or C:\... only
            return cls(text)
        try:
            scale = float(tail)
        except ValueError:
            raise InvalidParameterError(
                f"LoRA {text!r}: the part after the last ':' should be a scale in [-2, 2] but is {tail!r}"
            ) from None
        return cls(head, scale)

    @classmethod
    def coerce(cls, value: Any) -> LoraSpec:
        """A LoraSpec from itself, 'SOURCE[:SCALE]', a {'source', 'scale'} dict or a (source, scale) pair."""
        if isinstance(value, LoraSpec):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, Mapping) and set(value) <= {"source", "scale"} and "source" in value:
            return cls(value["source"], value.get("scale", 1.0))
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return cls(*value)
        raise InvalidParameterError(
            f"a LoRA should be 'SOURCE[:SCALE]' or {{'source': ..., 'scale': ...}} but is {value!r}"
        )

    def to_text(self) -> str:
        """'SOURCE:SCALE', the scale written so that it reads back exactly."""
        short = f"{self.scale:g}"
        return f"{self.source}:{short if float(short) == self.scale else repr(self.scale)}"

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "scale": self.scale}


def coerce_loras(value: Any) -> tuple[LoraSpec, ...]:
    """A tuple of LoraSpec from None, one spec, or a list of specs in any form `LoraSpec.coerce` takes."""
    if value is None:
        return ()
    if isinstance(value, (str, LoraSpec, Mapping)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise InvalidParameterError(f"loras should be a list of 'SOURCE[:SCALE]' but is {value!r}")
    return tuple(LoraSpec.coerce(v) for v in value)


# -- finding the file ----------------------------------------------------------------------------------------------


def loras_dir(models_dir: Path) -> Path:
    return Path(models_dir) / LORAS_SUBDIR


def list_local_loras(models_dir: Path) -> list[str]:
    """File names of the LoRAs in <models dir>/loras/ (sorted), as the apps' picker lists them."""
    folder = loras_dir(models_dir)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix == LORA_SUFFIX)


def hub_reference(source: str) -> tuple[str, str | None] | None:
    """(repo_id, file or None) when `source` reads as a Hub id 'owner/repo[/path/file.safetensors]', else None."""
    if _DRIVE.match(source) or source.startswith((".", "/", "~")) or "\\" in source or not _HUB_ID.match(source):
        return None
    owner, repo, *rest = source.split("/")
    return f"{owner}/{repo}", "/".join(rest) or None


def resolve_lora(source: str, models_dir: Path, download: bool = True, hub_file: str | None = None) -> Path:
    """The local .safetensors file for `source`: a path, a name in <models dir>/loras/, or a Hub id (downloaded)."""
    folder = loras_dir(models_dir)
    path = Path(source).expanduser()
    if path.is_dir():
        raise InvalidParameterError(f"LoRA {source} is a folder; give the .safetensors file inside it")
    if path.is_file():
        return _checked_suffix(path)
    for name in (source, source + LORA_SUFFIX):
        if (folder / name).is_file():
            return _checked_suffix(folder / name)
    hub = hub_reference(source)
    if hub is None:
        raise WeightsNotFoundError(
            f"LoRA {source!r} not found: it is not a file, not a name in {folder.resolve()} "
            f"({', '.join(list_local_loras(models_dir)) or 'empty'}), and not a Hub id (owner/repo)"
        )
    repo_id, filename = hub
    return hub_lora(repo_id, filename or hub_file, models_dir, download)


def _checked_suffix(path: Path) -> Path:
    if path.suffix.lower() in PICKLED_SUFFIXES:
        raise InvalidParameterError(
            f"LoRA {path} is a pickled {path.suffix} file, which can run code when read; only .safetensors LoRAs "
            f"are loaded (convert it, or get the .safetensors release)"
        )
    return path


def local_name(repo_id: str, filename: str) -> str:
    """Name a Hub LoRA takes in <models dir>/loras/: diffusers' generic file name is replaced by the repo's name."""
    name = Path(filename).name
    return f"{repo_id.split('/')[1]}{LORA_SUFFIX}" if name == DIFFUSERS_LORA_FILE else name


def hub_lora(repo_id: str, filename: str | None, models_dir: Path, download: bool = True) -> Path:
    """A Hub LoRA: from <models dir>/loras/, the Hub cache, or a download; offline, says which file to put where."""
    from core.models.loading import offline_mode

    filename = filename or DIFFUSERS_LORA_FILE
    target = loras_dir(models_dir) / local_name(repo_id, filename)
    if target.is_file():
        return target
    from huggingface_hub import hf_hub_download

    hint = (
        f"LoRA {repo_id} ({filename}) is not available offline: download "
        f"https://huggingface.co/{repo_id}/resolve/main/{filename} and save it as {target.resolve()}"
    )
    try:  # an earlier download in the Hub cache is as good as a local file
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, local_files_only=True))
    except Exception:  # noqa: BLE001 - any miss means "not cached"; the next step says what to do
        pass
    if not download or offline_mode():
        raise WeightsNotFoundError(hint + " (downloads are disabled)")
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as exc:  # network, DNS, HTTP and missing-file errors all mean the same to the user
        raise WeightsNotFoundError(f"{hint}. The download failed: {type(exc).__name__}: {exc}") from exc


# -- reading and checking ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoraFile:
    """A LoRA read from disk and checked, in diffusers' key layout, ready to load."""

    path: Path
    state: dict  # diffusers-layout LoRA tensors ("unet.…", "text_encoder.…")
    alphas: dict | None  # kohya network alphas (None for diffusers files)
    kohya: bool  # True when the file used kohya/A1111 key names
    has_text_encoder: bool


def read_lora(path: Path, context_width: int = SD15_CONTEXT_WIDTH, text_width: int = SD15_CONTEXT_WIDTH) -> LoraFile:
    """Read and check a LoRA file; widths are the UNet's cross-attention and the text encoder's hidden size."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = _checked_suffix(Path(path))
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptWeightsError(
            f"LoRA {path} is not a readable .safetensors file ({exc}); it may be cut short: download it again"
        ) from exc
    check_lora_keys(state, path, context_width, text_width)
    kohya = all(k.startswith(("lora_unet_", "lora_te_")) for k in state)
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    try:
        converted, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(state)
    except (ValueError, KeyError) as exc:
        raise IncompatibleModelError(f"LoRA {path} has keys diffusers cannot map onto SD 1.5: {exc}") from exc
    has_te = any(k.startswith("text_encoder.") for k in converted)
    return LoraFile(path, converted, alphas, kohya, has_te)


def check_lora_keys(
    state: Mapping[str, torch.Tensor], source, context_width: int = SD15_CONTEXT_WIDTH, text_width: int = 768
) -> None:
    """Raise when `state` is not a LoRA, or is one for SDXL / SD 2.x (by key names and conditioning widths)."""
    keys = list(state)
    if any(m in k for k in keys for m in LYCORIS_MARKERS):
        raise IncompatibleModelError(
            f"{source} is a LyCORIS (LoHa/LoKr/OFT) file; only plain LoRAs (diffusers or kohya format) are supported"
        )
    if not any(m in k for k in keys for m in LORA_MARKERS):
        example = ", ".join(keys[:3]) or "none"
        raise IncompatibleModelError(
            f"{source} is not a LoRA: none of its {len(keys)} tensors is a LoRA weight (lora_down/lora_up or "
            f"lora_A/lora_B; e.g. {example}). A full checkpoint goes in --base-model, not --lora"
        )
    if any(m in k for k in keys for m in SDXL_MARKERS):
        raise IncompatibleModelError(_family_message(source, "an SDXL", "keys of a second text encoder"))
    for key in keys:
        if not any(m in key for m in DOWN_MARKERS) or state[key].ndim < 2:
            continue
        width = int(state[key].shape[1])
        is_context = "attn2" in key and ("to_k" in key or "to_v" in key)
        is_text = ("lora_te_" in key or key.startswith("text_encoder.")) and "proj" in key and "mlp" not in key
        expected = context_width if is_context else text_width if is_text else None
        if expected is not None and width != expected:
            family = FAMILY_BY_WIDTH.get(width, f"a {width}-wide (not SD 1.5)")
            where = "cross-attention" if is_context else "text encoder"
            raise IncompatibleModelError(_family_message(source, family, f"{where} inputs {width} wide in {key}"))


def _family_message(source, family: str, evidence: str) -> str:
    return (
        f"{source} is {family} LoRA ({evidence}); IC-Light is built on SD 1.5 and takes SD 1.5 LoRAs only "
        f"(SD 1.5: {SD15_CONTEXT_WIDTH} wide)"
    )


# -- applying ------------------------------------------------------------------------------------------------------


def lora_key(loras: Sequence[LoraSpec]) -> tuple[tuple[str, float], ...]:
    """Cache key of a set of LoRAs; scale-0 entries drop out, as they change nothing."""
    return tuple((spec.source, spec.scale) for spec in loras if spec.scale != 0)


def _loader(unet, text_encoder):
    """A minimal holder for diffusers' SD LoRA mixin, so its public load / fuse / unload methods apply to our
    modules (the IC-Light UNet is not a pipeline's)."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    class _Target(StableDiffusionLoraLoaderMixin):
        hf_device_map = None

        def __init__(self) -> None:
            self.unet, self.text_encoder = unet, text_encoder

        @property
        def components(self) -> dict[str, Any]:
            return {"unet": self.unet, "text_encoder": self.text_encoder}

    return _Target()


def fuse_loras(unet, text_encoder, loras: Sequence[tuple[LoraFile, float]]) -> list[str]:
    """Load each LoRA with diffusers (peft), fuse it at its scale into the weights, then drop the peft layers.

    The modules end up plain (no adapter layers), so the fused CPU path and SDPA see ordinary weights. Returns a
    description per LoRA. Scale 0 is skipped: fusing it would change nothing.
    """
    target = _loader(unet, text_encoder)
    described = []
    for i, (lora, scale) in enumerate(loras):
        if scale == 0:
            continue
        name = f"lora_{i}"
        try:
            target.load_lora_into_unet(dict(lora.state), lora.alphas, unet, adapter_name=name, _pipeline=target)
            if lora.has_text_encoder:
                target.load_lora_into_text_encoder(
                    dict(lora.state), lora.alphas, text_encoder, adapter_name=name, _pipeline=target
                )
        except (ValueError, RuntimeError, KeyError) as exc:
            target.unload_lora_weights()
            raise IncompatibleModelError(f"LoRA {lora.path} does not fit this SD 1.5 model: {exc}") from exc
        components = ["unet"] + (["text_encoder"] if lora.has_text_encoder else [])
        target.fuse_lora(components=components, lora_scale=scale, adapter_names=[name])
        target.unload_lora_weights()  # keeps the fused weights, removes the adapter layers
        described.append(f"{lora.path.name}:{scale:g}")
    return described
