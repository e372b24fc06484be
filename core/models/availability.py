"""What a relight needs on disk before it runs: the SD 1.5 base model and the IC-Light file, checked unloaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import InvalidParameterError
from core.models.loading import ICLIGHT_HUB_REPO, Variant, classify_base_source, offline_mode
from core.models.manager import ModelManager

BASE_PROBE_FILE = "unet/config.json"  # a Hub base model counts as present when its cache holds this file
BASE_HINT = "a diffusers SD 1.5 folder or a single .safetensors checkpoint (--base-model / ICLIGHT_BASE_MODEL)"
ICLIGHT_URL = "https://huggingface.co/" + ICLIGHT_HUB_REPO + "/resolve/main/{filename}"


@dataclass(frozen=True)
class MissingModel:
    """One model file or folder a relight needs that is not on this machine yet."""

    what: str  # what it is, in words ("IC-Light fc weights (iclight_sd15_fc.safetensors)")
    where: str  # where it has to go (a folder, or the Hub cache)
    source: str  # where to get it (a URL or a command)
    downloads: bool  # True when the first relight will download it by itself


def missing_models(manager: ModelManager, variant: Variant) -> list[MissingModel]:
    """Everything `variant` needs that is neither loaded nor on disk (base model first); empty when ready."""
    if manager.is_loaded(variant):
        return []
    missing = []
    base = _missing_base(manager)
    if base is not None:
        missing.append(base)
    if not manager.weights_available(variant):
        folder = Path(manager.settings.models_dir).resolve()
        missing.append(
            MissingModel(
                what=f"IC-Light {variant.value} weights ({variant.filename})",
                where=str(folder),
                source=ICLIGHT_URL.format(filename=variant.filename),
                downloads=manager.settings.download and not offline_mode(),
            )
        )
    return missing


def _missing_base(manager: ModelManager) -> MissingModel | None:
    """The base model when it is neither in memory, nor a local folder/file, nor in the Hub cache."""
    if manager.has_base_in_memory:
        return None
    name = str(manager.settings.base_model)
    try:
        kind = classify_base_source(name)
    except InvalidParameterError:
        return MissingModel(what="SD 1.5 base model", where=name, source=BASE_HINT, downloads=False)
    if kind != "hub" or _hub_cached(name):
        return None
    return MissingModel(
        what=f"SD 1.5 base model {name}",
        where="the Hugging Face cache (HF_HOME)",
        source=f"`hf download {name}`, or {BASE_HINT}",
        downloads=not offline_mode(),
    )


def _hub_cached(repo_id: str) -> bool:
    """True when the Hub cache holds the repo's UNet config (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, BASE_PROBE_FILE)
    return isinstance(found, str)


def describe_missing(missing: list[MissingModel]) -> str:
    """One sentence per missing model: what, where it goes and where to get it."""
    return " ".join(f"{item.what} is missing from {item.where}; get it from {item.source}." for item in missing)
