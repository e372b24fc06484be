"""Image <-> tensor conversions and resizes, matching the official demos bit for bit."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from core.errors import InvalidParameterError

NEUTRAL_GREY = 127  # maps exactly to 0.0 in model space
AMBIENT_GREY = 64  # the official fbc "Ambient" background


def numpy2pytorch(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 images to a (B, 3, H, W) float tensor where 127 is exactly 0."""
    batch = torch.from_numpy(np.stack(images, axis=0)).float() / 127.0 - 1.0
    return batch.movedim(-1, 1)


def pytorch2numpy(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) decoder output in [-1, 1] to uint8 HxWx3 images, rounded as the official fc demo does."""
    results = []
    for x in images:
        y = x.movedim(0, -1)
        results.append((y * 127.5 + 127.5).detach().float().cpu().numpy().clip(0, 255).astype(np.uint8))
    return results


def decoded_floats(images: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) decoder output in [-1, 1] to float32 HxWx3 images in [0, 1], as the official fbc `process()`."""
    return [
        (x.movedim(0, -1) * 0.5 + 0.5).detach().float().cpu().numpy().clip(0, 1).astype(np.float32) for x in images
    ]


def float_to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] to uint8 as the official fbc demo does (* 255, clipped, truncated)."""
    return (image * 255.0).clip(0, 255).astype(np.uint8)


def resize_and_center_crop(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Lanczos-resize to cover (width, height), then centre-crop: uint8 exactly as the official demos; floats too."""
    if not (isinstance(width, int) and isinstance(height, int)) or width < 1 or height < 1:
        raise InvalidParameterError(f"resize size should be positive integers but is {width!r}x{height!r}")
    array = np.asarray(image)
    if array.ndim not in (2, 3) or array.shape[0] < 1 or array.shape[1] < 1:
        raise InvalidParameterError(f"image to resize should be HxW or HxWxC but has shape {array.shape}")
    in_h, in_w = array.shape[:2]
    if (in_w, in_h) == (width, height):
        return array.copy()
    # Same arithmetic as the official demos (PIL LANCZOS, rounded size, crop start rounded like PIL rounds
    # their float box) so the original lines up pixel for pixel with the image the pipeline fed the model.
    # Unlike theirs, the end is start + size: their box loses a row when the margin is odd and the size is odd.
    scale = max(width / in_w, height / in_h)
    resized_w, resized_h = int(round(in_w * scale)), int(round(in_h * scale))
    left, top = round((resized_w - width) / 2), round((resized_h - height) / 2)
    box = (left, top, left + width, top + height)

    def _resize(plane: np.ndarray) -> np.ndarray:
        pil = Image.fromarray(plane)
        return np.asarray(pil.resize((resized_w, resized_h), Image.LANCZOS).crop(box))

    if array.dtype == np.uint8 and (array.ndim == 2 or array.shape[2] in (3, 4)):
        return _resize(array).copy()
    # Float images (mattes) go through PIL's 32-bit float mode one channel at a time.
    planes = array[..., None] if array.ndim == 2 else array
    out = np.stack(
        [_resize(np.ascontiguousarray(planes[..., c], dtype=np.float32)) for c in range(planes.shape[2])], -1
    )
    out = out[..., 0] if array.ndim == 2 else out
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        return np.clip(np.round(out), info.min, info.max).astype(array.dtype)
    return out.astype(array.dtype)


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
