"""Tiny random CLIP and Depth Anything models in their real Hub layouts, and small test photos, for the data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PHOTO_SIDE = 64
CLIP_IMAGE = 32


def write_tiny_clip(folder: Path) -> Path:
    """A random CLIPModel + CLIPProcessor (character tokenizer) saved with save_pretrained."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from core.models.synthetic import write_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    tiny = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={**tiny, "vocab_size": 128, "max_position_embeddings": 77},
        vision_config={**tiny, "image_size": CLIP_IMAGE, "patch_size": 8},
        projection_dim=8,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(str(folder))
    size = {"shortest_edge": CLIP_IMAGE}
    crop = {"height": CLIP_IMAGE, "width": CLIP_IMAGE}
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size=size, crop_size=crop), tokenizer=tokenizer)
    processor.save_pretrained(str(folder))
    return folder


def write_tiny_depth(folder: Path) -> Path:
    """A random Depth Anything (tiny DINOv2 backbone) + its image processor, saved with save_pretrained."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    backbone = Dinov2Config(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=28,
        patch_size=14,
        out_indices=[1, 2, 3, 4],
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=16,
        neck_hidden_sizes=[8, 8, 16, 16],
        fusion_hidden_size=16,
        head_hidden_size=8,
        reassemble_factors=[4, 2, 1, 0.5],
    )
    torch.manual_seed(0)
    DepthAnythingForDepthEstimation(config).save_pretrained(str(folder))
    processor = DPTImageProcessor(size={"height": 28, "width": 28}, keep_aspect_ratio=True, ensure_multiple_of=14)
    processor.save_pretrained(str(folder))
    return folder


def write_photos(folder: Path, names=("astronaut", "coffee", "chelsea")) -> list[Path]:
    """Small PNGs of scikit-image's public-domain photos."""
    import cv2
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        image = getattr(skimage.data, name)()
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        image = cv2.resize(image[..., :3], (PHOTO_SIDE, PHOTO_SIDE), interpolation=cv2.INTER_AREA)
        path = folder / f"{name}.png"
        cv2.imwrite(str(path), image[..., ::-1])
        paths.append(path)
    return paths
