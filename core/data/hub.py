"""Model folders for the data stages: a local folder as given, or a Hub id fetched into the cache once."""

from __future__ import annotations

from pathlib import Path

from core.errors import WeightsNotFoundError

HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors"]  # configs, tokenizer files and weights; no .bin/.onnx copies


def resolve_folder(source: str, label: str) -> str:
    """A local folder holding the model `source`; WeightsNotFoundError naming `label` when it cannot be had."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise WeightsNotFoundError(f"{label} folder {path} has no config.json")
        return str(path)
    if path.is_absolute() or source.startswith((".", "~")) or source.count("/") != 1:
        raise WeightsNotFoundError(f"{label} folder {source} does not exist")
    from huggingface_hub import snapshot_download

    from core.models.loading import offline_mode

    try:
        return snapshot_download(source, allow_patterns=HUB_PATTERNS, local_files_only=offline_mode())
    except Exception as exc:  # offline, no network, unknown or gated repo: the weights cannot be had now
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WeightsNotFoundError(f"{label} {source} is not cached and cannot be downloaded: {first}") from exc
