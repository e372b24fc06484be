"""data-filter's CLIP scorer: images per second batched (as it runs) against one image per forward pass, and a rerun
with other prompts served from the embedding cache.

The model is a full-size CLIP ViT-B/32 (openai/clip-vit-base-patch32's configuration) with random weights, written in
the real layout and loaded through the real loader: compute cost does not depend on weight values.

Run: python -m bench.clip_filter_speed
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

IMAGES = 64
PHOTO_SIDE = 320


def write_full_size_clip(folder: Path) -> Path:
    """openai/clip-vit-base-patch32's architecture with random weights and a character tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from core.models.synthetic import write_tokenizer

    write_tokenizer(folder)
    config = CLIPConfig(
        text_config={"vocab_size": 49408},
        vision_config={"image_size": 224, "patch_size": 32},
        projection_dim=512,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(str(folder))
    CLIPProcessor(
        image_processor=CLIPImageProcessor(), tokenizer=CLIPTokenizer.from_pretrained(str(folder))
    ).save_pretrained(str(folder))
    return folder


def main() -> None:
    from core.data.filter import DEFAULT_PROMPTS, ClipScorer, PromptSets

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (PHOTO_SIDE, PHOTO_SIDE, 3), dtype=np.uint8) for _ in range(IMAGES)]
    digests = [f"image{i}" for i in range(IMAGES)]
    with tempfile.TemporaryDirectory() as root:
        folder = write_full_size_clip(Path(root) / "clip")
        scorer = ClipScorer(str(folder), DEFAULT_PROMPTS, None)
        scorer.embed(images[:2], digests[:2])  # warm-up
        start = time.perf_counter()
        for image, digest in zip(images, digests, strict=True):
            scorer.embed([image], [digest])
        single = time.perf_counter() - start
        start = time.perf_counter()
        scorer.score(scorer.embed(images, digests))
        batched = time.perf_counter() - start
        cached = ClipScorer(str(folder), DEFAULT_PROMPTS, Path(root) / "cache")
        cached.embed(images, digests)
        other = ClipScorer(str(folder), PromptSets(("a bright photo",), ("a dark photo",)), Path(root) / "cache")
        start = time.perf_counter()
        other.score(other.embed(images, digests))
        rerun = time.perf_counter() - start
    print(f"one image per pass: {IMAGES / single:.1f} images/s")
    print(f"batched (as data-filter runs): {IMAGES / batched:.1f} images/s ({single / batched:.2f}x)")
    print(f"rerun with other prompts from the cache: {IMAGES / rerun:.0f} images/s, {other.encoded} images encoded")


if __name__ == "__main__":
    main()
