"""Image <-> tensor conversions and resizes, matching the official demos bit for bit."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

NEUTRAL_GREY = 127  # maps exactly to 0.0 in model space
AMBIENT_GREY = 64  # the official fbc "Ambient" background


def numpy2pytorch(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 images to a (B, 3, H, W) float tensor where 127 is exactly 0."""
    batch = torch.from_numpy(np.stack(images, axis=0)).float() / 127.0 - 1.0
    return batch.movedim(-1, 1)


def pytorch2numpy(images: torch.Tensor, quant: bool = True) -> list[np.ndarray]:
    """(B, 3, H, W) decoder output in [-1, 1] to uint8 HxWx3 images (two roundings, as fc and fbc do)."""
    results = []
    for x in images:
        y = x.movedim(0, -1)
        if quant:  # official fc demo
            y = (y * 127.5 + 127.5).detach().float().cpu().numpy().clip(0, 255).astype(np.uint8)
        else:  # official fbc demo: [0, 1] floats, then * 255
            y = (y * 0.5 + 0.5).detach().float().cpu().numpy().clip(0, 1).astype(np.float32)
            y = (y * 255.0).clip(0, 255).astype(np.uint8)
        results.append(y)
    return results


def resize_and_center_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize to cover (width, height) with Lanczos, then centre-crop."""
    pil = Image.fromarray(image)
    scale = max(width / pil.width, height / pil.height)
    resized_w, resized_h = int(round(pil.width * scale)), int(round(pil.height * scale))
    pil = pil.resize((resized_w, resized_h), Image.LANCZOS)
    box = ((resized_w - width) / 2, (resized_h - height) / 2, (resized_w + width) / 2, (resized_h + height) / 2)
    return np.array(pil.crop(box))


def resize_without_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize to exactly (width, height) with Lanczos (aspect may change)."""
    return np.array(Image.fromarray(image).resize((width, height), Image.LANCZOS))


def constant_image(value: int, width: int, height: int) -> np.ndarray:
    """A flat uint8 HxWx3 image."""
    return np.full((height, width, 3), value, dtype=np.uint8)


# Approximate SD 1.5 latent -> RGB projection, for cheap live previews only.
_LATENT_RGB = torch.tensor(
    [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
)


def latent_preview(latents: torch.Tensor) -> np.ndarray:
    """A small uint8 RGB preview of the first latent in a batch (no VAE)."""
    lat = latents[0, :4].detach().float().cpu()
    rgb = torch.einsum("chw,cr->hwr", lat, _LATENT_RGB)
    return ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
