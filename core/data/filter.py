"""Lighting-quality scores: CLIP against good/poor lighting prompts, or a classic score from the pixels alone."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import InvalidParameterError, WeightsNotFoundError

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
CLIP_BATCH = 16  # images per CLIP forward pass
SCORE_DIGITS = 6  # scores are rounded so that results read the same on every engine
GOOD_PROMPTS = (
    "a well-lit photo",
    "a photo with beautiful soft lighting",
    "a professionally lit studio photo",
    "a photo with balanced exposure and natural light",
    "a sharp, clean photo with pleasant light",
)
POOR_PROMPTS = (
    "a badly lit photo",
    "an underexposed, dark photo",
    "an overexposed, washed-out photo",
    "a noisy, grainy low-light photo",
    "a photo with harsh, flat flash lighting",
)
# Classic score: weights of the five measures (each in [0, 1], 1 = good); they sum to 1.
CLASSIC_WEIGHTS = {"exposure": 0.25, "dynamic_range": 0.2, "local_contrast": 0.2, "colour_cast": 0.1, "noise": 0.25}
CLASSIC_SIDE = 384  # measures are taken on a copy this size on its longer side (noise is measured at full size)
CLIP_LOW, CLIP_HIGH = 3 / 255, 252 / 255  # gamma-encoded luma at or beyond which a pixel is crushed / clipped
CLIPPED_TOLERANCE = 0.25  # clipped + crushed share at which the exposure measure reaches 0
MID_GREY = 0.45  # ideal mean gamma-encoded luma
MEAN_TOLERANCE = 0.35  # mean luma this far from MID_GREY scores 0
GOOD_RANGE = 0.7  # 1st-to-99th percentile luma spread that scores 1
CONTRAST_SIGMA = 4.0  # px: local contrast is the luma's standard deviation in a Gaussian window of this size
CONTRAST_PRESMOOTH = 1.5  # px: noise is smoothed away before local contrast is measured
GOOD_CONTRAST = 0.08  # mean local standard deviation that scores 1
CAST_TOLERANCE = 0.25  # grey-world chroma distance (of mean linear rgb, normalised) that scores 0
NOISE_TOLERANCE = 0.05  # noise sigma (in [0, 1] luma) that scores 0
FLAT_SHARE = 0.3  # noise is measured in this flattest share of the image
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # Rec. 601 luma of gamma-encoded RGB
# Immerkaer 1996, "Fast noise variance estimation": this kernel cancels planes and quadrics, leaving noise.
NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


@dataclass(frozen=True)
class PromptSets:
    """The good- and poor-lighting prompts CLIP compares each image with."""

    good: tuple[str, ...]  # prompts describing good lighting
    poor: tuple[str, ...]  # prompts describing poor lighting

    def to_dict(self) -> dict[str, list[str]]:
        return {"good": list(self.good), "poor": list(self.poor)}


DEFAULT_PROMPTS = PromptSets(GOOD_PROMPTS, POOR_PROMPTS)


def load_prompts(path: Path | None) -> PromptSets:
    """Prompt sets from JSON {"good": [...], "poor": [...]} or a text file of 'good: ...' / 'poor: ...' lines."""
    if path is None:
        return DEFAULT_PROMPTS
    path = Path(path)
    if not path.is_file():
        raise InvalidParameterError(f"--prompts {path} does not exist or is not a file")
    text = path.read_text(encoding="utf-8")
    sets: dict[str, list[str]] = {"good": [], "poor": []}
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidParameterError(f"--prompts {path} is not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict):
            raise InvalidParameterError(f"--prompts {path} should hold an object with 'good' and 'poor' lists")
        for name in sets:
            values = data.get(name, [])
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise InvalidParameterError(f"--prompts {path}: '{name}' should be a list of strings")
            sets[name] = [v.strip() for v in values if v.strip()]
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, prompt = line.partition(":")
            if not sep or name.strip().lower() not in sets or not prompt.strip():
                raise InvalidParameterError(f"--prompts {path} line {number} should be 'good: ...' or 'poor: ...'")
            sets[name.strip().lower()].append(prompt.strip())
    for name, values in sets.items():
        if not values:
            raise InvalidParameterError(f"--prompts {path} has no {name} prompts; give at least one of each")
    return PromptSets(tuple(sets["good"]), tuple(sets["poor"]))


# ---------------------------------------------------------------------------------------------------------------------
# Classic score


def _luma(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float32) / 255.0) @ LUMA


def classic_measures(image: np.ndarray) -> dict[str, float]:
    """The five lighting measures of a uint8 RGB photo, each in [0, 1] (1 = good)."""
    noise_sigma = noise_level(_luma(image))
    height, width = image.shape[:2]
    scale = min(1.0, CLASSIC_SIDE / max(height, width))
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))), cv2.INTER_AREA)
    luma = _luma(image)
    # Exposure: clipped highlights and crushed shadows, and a mean far from mid grey.
    clipped = float(((luma <= CLIP_LOW) | (luma >= CLIP_HIGH)).mean())
    exposure = (1.0 - min(clipped / CLIPPED_TOLERANCE, 1.0)) * (
        1.0 - min(abs(float(luma.mean()) - MID_GREY) / MEAN_TOLERANCE, 1.0)
    )
    low, high = np.percentile(luma, [1.0, 99.0])
    dynamic_range = min(float(high - low) / GOOD_RANGE, 1.0)
    smooth = cv2.GaussianBlur(luma, (0, 0), CONTRAST_PRESMOOTH)
    mean = cv2.GaussianBlur(smooth, (0, 0), CONTRAST_SIGMA)
    variance = np.maximum(cv2.GaussianBlur(smooth * smooth, (0, 0), CONTRAST_SIGMA) - mean * mean, 0.0)
    local_contrast = min(float(np.sqrt(variance).mean()) / GOOD_CONTRAST, 1.0)
    rgb = (image.reshape(-1, 3).astype(np.float64) / 255.0) ** 2.2
    average = rgb.mean(axis=0)
    chroma = average / max(float(average.sum()), 1e-6) - 1.0 / 3.0
    colour_cast = 1.0 - min(float(np.linalg.norm(chroma)) / CAST_TOLERANCE, 1.0)
    noise = 1.0 - min(noise_sigma / NOISE_TOLERANCE, 1.0)
    return {
        "exposure": exposure,
        "dynamic_range": dynamic_range,
        "local_contrast": local_contrast,
        "colour_cast": colour_cast,
        "noise": noise,
    }


def noise_level(luma: np.ndarray) -> float:
    """Noise sigma of a [0, 1] luma image by Immerkaer's estimator over its flattest FLAT_SHARE of pixels."""
    if min(luma.shape) < 3:
        return 0.0
    response = np.abs(cv2.filter2D(luma, cv2.CV_32F, NOISE_KERNEL, borderType=cv2.BORDER_REFLECT))[1:-1, 1:-1]
    # Flat = little structure at a larger scale, so edges and texture do not count as noise.
    blurred = cv2.GaussianBlur(luma, (0, 0), 2.0)
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0)[1:-1, 1:-1]
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1)[1:-1, 1:-1]
    structure = np.hypot(gx, gy).ravel()
    flat = response.ravel()[structure <= np.quantile(structure, FLAT_SHARE)]
    return float(math.sqrt(math.pi / 2.0) / 6.0 * flat.mean())


def classic_score(image: np.ndarray) -> tuple[float, dict[str, float]]:
    """(score in [0, 1], measures): the weighted mean of the classic measures."""
    measures = classic_measures(image)
    score = sum(CLASSIC_WEIGHTS[name] * value for name, value in measures.items())
    return round(score, SCORE_DIGITS), {name: round(value, SCORE_DIGITS) for name, value in measures.items()}


# ---------------------------------------------------------------------------------------------------------------------
# CLIP score


def resolve_clip(source: str) -> str:
    """A local folder holding the CLIP model `source` (a folder, or a Hub id fetched into the cache once)."""
    from core.data.hub import resolve_folder

    return resolve_folder(source, "CLIP model")


class ClipScorer:
    """CLIP image and prompt embeddings; image embeddings cached on disk by content so other prompts reuse them."""

    def __init__(self, folder: str, prompts: PromptSets, cache_dir: Path | None, device: str = "cpu") -> None:
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.device = device
        try:
            self.model = CLIPModel.from_pretrained(folder).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(folder)
        except OSError as exc:
            raise WeightsNotFoundError(f"CLIP model in {folder} cannot be loaded: {exc}") from exc
        self.prompts = prompts
        self.cache_dir = None if cache_dir is None else Path(cache_dir) / _model_tag(folder)
        texts = list(prompts.good) + list(prompts.poor)
        tokens = self.processor(text=texts, return_tensors="pt", padding=True).to(device)
        with torch.inference_mode():
            self.text = _unit(_features(self.model.get_text_features(**tokens)))
        self.encoded = 0  # images run through the model (not found in the cache), for the record

    def embed(self, images: Sequence[np.ndarray], digests: Sequence[str]) -> np.ndarray:
        """Nx(D) unit image embeddings, from the cache where present, else encoded in batches of CLIP_BATCH."""
        import torch

        found: dict[int, np.ndarray] = {}
        for index, digest in enumerate(digests):
            cached = self._cache_path(digest)
            if cached is not None and cached.is_file():
                found[index] = np.load(cached)
        missing = [i for i in range(len(images)) if i not in found]
        for start in range(0, len(missing), CLIP_BATCH):
            chunk = missing[start : start + CLIP_BATCH]
            pixels = self.processor(images=[images[i] for i in chunk], return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                vectors = _unit(_features(self.model.get_image_features(pixel_values=pixels.to(self.device))))
            for index, vector in zip(chunk, vectors.float().cpu().numpy(), strict=True):
                found[index] = vector
                self._store(digests[index], vector)
            self.encoded += len(chunk)
        return np.stack([found[i] for i in range(len(images))]) if images else np.zeros((0, 1), np.float32)

    def score(self, embeddings: np.ndarray) -> list[tuple[float, dict[str, Any]]]:
        """(score, parts) per image: mean cosine similarity to the good prompts minus that to the poor ones."""
        similarity = embeddings @ self.text.float().cpu().numpy().T
        count = len(self.prompts.good)
        scored = []
        for row in similarity:
            good, poor = float(row[:count].mean()), float(row[count:].mean())
            parts = {
                "good": round(good, SCORE_DIGITS),
                "poor": round(poor, SCORE_DIGITS),
                "prompts": {
                    p: round(float(s), SCORE_DIGITS)
                    for p, s in zip(self.prompts.good + self.prompts.poor, row, strict=True)
                },
            }
            scored.append((round(good - poor, SCORE_DIGITS), parts))
        return scored

    def _cache_path(self, digest: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{digest}.npy"

    def _store(self, digest: str, vector: np.ndarray) -> None:
        path = self._cache_path(digest)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # two workers may store the same image at once
        with open(temp, "wb") as handle:
            np.save(handle, vector.astype(np.float32))
        temp.replace(path)


def _features(output: Any) -> Any:
    """The embedding tensor of get_*_features: a tensor, or (transformers 5) an output with pooler_output."""
    return output if hasattr(output, "norm") else output.pooler_output


def _unit(tensor: Any) -> Any:
    return tensor / tensor.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _model_tag(folder: str) -> str:
    """A short name for the model's cache folder: its config and weights' identity."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        path = Path(folder) / name
        if path.is_file():
            stat = path.stat()
            digest.update(f"{name}:{stat.st_size}".encode())
            if name == "config.json":
                digest.update(path.read_bytes())
    return "clip-" + digest.hexdigest()[:16]
