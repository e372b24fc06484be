"""Post-sampling fixes that pull detail and colour back from the input foreground into the relit image."""

from __future__ import annotations

import numpy as np

from core.errors import InvalidParameterError
from core.imaging.convert import resize_and_center_crop

REFERENCE_SIDE = 512  # `radius` is given in pixels at this short side and scaled with the image
MIN_RADIUS, MAX_RADIUS = 0.5, 64.0  # same range RelightParams.detail_radius accepts
MIN_BLUR_SIGMA = 0.3  # below this a Gaussian kernel is a no-op; keep the split meaningful on tiny images
MATTE_EPS = 1e-4  # weight sum below which a pixel is treated as outside the foreground
UINT8_MAX = 255.0


def restore_details(relit: np.ndarray, original: np.ndarray, matte: np.ndarray, radius: float = 5.0) -> np.ndarray:
    """Frequency separation: blur(relit) + (original - blur(original)) inside the matte, relit elsewhere."""
    import cv2

    # 1. Check inputs and bring original and matte onto the relit frame
    _check_radius(radius)
    relit_f, original_f, alpha = _prepare(relit, original, matte)
    height, width = relit_f.shape[:2]
    # 2. Radius is given at 512 px; scale it so the same detail band is kept at any output size
    sigma = max(float(radius) * min(height, width) / REFERENCE_SIDE, MIN_BLUR_SIGMA)

    # 3. Low frequencies of both images, averaged over the foreground only: a plain blur would mix the
    #    background into the edge pixels and transfer the old fg/bg contrast as a halo.
    def fg_blur(image: np.ndarray) -> np.ndarray:
        weight = cv2.GaussianBlur(alpha, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        summed = cv2.GaussianBlur(image * alpha[..., None], (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        plain = cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        inside = weight[..., None] > MATTE_EPS
        return np.where(inside, summed / np.maximum(weight, MATTE_EPS)[..., None], plain)

    # 4. Combine and blend through the matte so the background stays exactly the relit one
    combined = fg_blur(relit_f) + (original_f - fg_blur(original_f))
    out = relit_f + alpha[..., None] * (combined - relit_f)
    return _to_uint8(out)


def preserve_color(relit: np.ndarray, original: np.ndarray, matte: np.ndarray, strength: float) -> np.ndarray:
    """Pull the relit foreground's Lab chroma (a*, b*) toward the original's by `strength` (0..1), keeping L*."""
    import cv2

    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise InvalidParameterError(f"preserve_color strength should be in [0.0, 1.0] but is {strength!r}")
    relit_f, original_f, alpha = _prepare(relit, original, matte)
    if strength == 0.0:
        return np.asarray(relit).copy()
    # Lab separates lightness (what the relight should change) from chroma (the subject's own colours).
    relit_lab = cv2.cvtColor(relit_f / UINT8_MAX, cv2.COLOR_RGB2Lab)
    original_lab = cv2.cvtColor(original_f / UINT8_MAX, cv2.COLOR_RGB2Lab)
    weight = (float(strength) * alpha)[..., None]
    relit_lab[..., 1:] += weight * (original_lab[..., 1:] - relit_lab[..., 1:])
    out = cv2.cvtColor(relit_lab, cv2.COLOR_Lab2RGB) * UINT8_MAX
    # Outside the matte the pixels must be the relit ones bit for bit, not a Lab round trip of them.
    out = np.where(alpha[..., None] > 0.0, out, relit_f)
    return _to_uint8(out)


def _check_radius(radius: float) -> None:
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not MIN_RADIUS <= radius <= MAX_RADIUS:
        raise InvalidParameterError(f"detail radius should be in [{MIN_RADIUS}, {MAX_RADIUS}] px but is {radius!r}")


def _check_rgb(name: str, image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise InvalidParameterError(f"{name} should be a uint8 HxWx3 image but has shape {array.shape}, {array.dtype}")
    return array


def _prepare(relit: np.ndarray, original: np.ndarray, matte: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated float32 relit, original and matte, the last two cover-cropped to the relit size."""
    relit = _check_rgb("relit", relit)
    original = _check_rgb("original", original)
    alpha = np.asarray(matte)
    if alpha.ndim == 3 and alpha.shape[2] == 1:
        alpha = alpha[..., 0]
    if alpha.shape != original.shape[:2]:
        raise InvalidParameterError(
            f"matte should be HxW like the original {original.shape[:2]} but has shape {np.asarray(matte).shape}"
        )
    if alpha.dtype == np.uint8:
        alpha = alpha.astype(np.float32) / UINT8_MAX
    alpha = alpha.astype(np.float32)
    if not np.isfinite(alpha).all() or alpha.min() < 0.0 or alpha.max() > 1.0:
        raise InvalidParameterError(
            f"matte values should be in [0, 1] but span [{np.nanmin(alpha):.3g}, {np.nanmax(alpha):.3g}]"
        )
    height, width = relit.shape[:2]
    original_f = resize_and_center_crop(original, width, height).astype(np.float32)
    # LANCZOS rings slightly past 0 and 1 at hard matte edges.
    alpha = np.clip(resize_and_center_crop(alpha, width, height), 0.0, 1.0)
    return relit.astype(np.float32), original_f, alpha


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image), 0, UINT8_MAX).astype(np.uint8)
