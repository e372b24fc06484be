"""Normal maps from four directional relights: the official fbc demo's 'Compute Normal', as pure array maths."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.errors import InvalidParameterError
from core.imaging.convert import resize_and_center_crop
from core.params import BGSource

# The official demo relights with these four background sources, in this order; its gallery keeps the order.
NORMAL_LIGHTS = (BGSource.LEFT, BGSource.RIGHT, BGSource.BOTTOM, BGSource.TOP)
DEFAULT_SIGMA = 6.0  # official sharpness: the flat-facing component is (1 - u^2 - v^2) ** (sigma / 2)
DIVIDE_EPS = 1e-5  # official `safa_divide` epsilon; keeps black pixels at ratio 0 instead of nan
MAX_H_BASE = 1e5  # official upper clip of 1 - u^2 - v^2 (only the lower clip at 0 ever matters)
SIGNED_SCALE = 127.5  # [-1, 1] -> [0, 255] as x * 127.5 + 127.5, the official mapping for every gallery image
RANGE_TOLERANCE = 1e-6  # float round-off allowed outside [0, 1] before an image counts as out of range
FLAT_NORMAL = (0.0, 0.0, 1.0)  # facing the camera; used outside the matte


@dataclass(frozen=True)
class NormalsResult:
    """Everything the official 'Compute Normal' shows: the normal map, the ratio images and the relights."""

    # HxWx3 float normals: x right, y up, z toward the camera; unit length where the matte is 0 or 1 (there
    # (0, 0, 1)), linearly blended without renormalising across soft matte edges, as the official demo does.
    normal: np.ndarray
    ratios: tuple[np.ndarray, ...]  # left, right, bottom, top relights over their mean, minus 1 (0 = as ambient)
    relights: tuple[np.ndarray, ...]  # left, right, bottom, top relights as given: HxWx3 float in [0, 1]

    def images(self) -> list[np.ndarray]:
        """The official gallery as uint8: normal map, four ratio images, then the four relights."""
        # The official demo maps relights x -> 2x - 1 and then back through the signed mapping; keep that
        # exact expression so our bytes match its bytes.
        relights = [relight * 2.0 - 1.0 for relight in self.relights]
        return [signed_to_uint8(x) for x in (self.normal, *self.ratios, *relights)]


def compute_normals(
    left: np.ndarray,
    right: np.ndarray,
    bottom: np.ndarray,
    top: np.ndarray,
    matte: np.ndarray,
    sigma: float = DEFAULT_SIGMA,
) -> NormalsResult:
    """Official IC-Light photometric normals from relights lit from the left, right, bottom and top."""
    # 1. Check inputs
    relights = _check_relights(left, right, bottom, top)
    height, width, _ = relights[0].shape
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise InvalidParameterError(f"sigma should be a positive finite number but is {sigma!r}")
    alpha = _fit_matte(matte, width, height).astype(relights[0].dtype)

    # 2. Ratio images: dividing by the mean of the four relights cancels albedo, leaving only shading.
    ambient = sum(relights) / 4.0
    ratios = tuple(((x + DIVIDE_EPS) / (ambient + DIVIDE_EPS)) - 1.0 for x in relights)
    ratio_left, ratio_right, ratio_bottom, ratio_top = ratios

    # 3. Opposite lights give the slope along each axis; colour channels vote equally.
    u = ((ratio_right - ratio_left) * 0.5).mean(axis=2)
    v = ((ratio_top - ratio_bottom) * 0.5).mean(axis=2)

    # 4. The camera-facing part. If u, v were exactly the normal's x, y this would be sqrt(1 - u^2 - v^2)
    # (sigma = 1). Fill light in real relights shrinks the ratio differences, so the official sigma = 6 makes
    # h fall faster and restores the tilt; with little fill u, v grow like tan(tilt) and a smaller sigma fits.
    h = (1.0 - u**2 - v**2).clip(0, MAX_H_BASE) ** (0.5 * sigma)
    normal = np.stack([u, v, h], axis=2)
    # h > 0 whenever u = v = 0, and u or v are non-zero otherwise, so the length is never zero.
    normal /= np.sqrt(np.sum(normal**2, axis=2, keepdims=True))

    # 5. Off the subject the relights are meaningless, so fade to a camera-facing normal.
    flat = np.asarray(FLAT_NORMAL, dtype=normal.dtype)
    normal = normal * alpha + flat * (1.0 - alpha)
    return NormalsResult(normal=normal, ratios=ratios, relights=relights)


def signed_to_uint8(x: np.ndarray) -> np.ndarray:
    """Map a float image from [-1, 1] to uint8 as the official demo does (x * 127.5 + 127.5, clipped)."""
    return (np.asarray(x) * SIGNED_SCALE + SIGNED_SCALE).clip(0, 255).astype(np.uint8)


def _check_relights(*images: np.ndarray) -> tuple[np.ndarray, ...]:
    """The four relights as float arrays after checking they are matching HxWx3 images in [0, 1]."""
    checked = []
    for name, image in zip(("left", "right", "bottom", "top"), images, strict=True):
        if not isinstance(image, np.ndarray):
            raise InvalidParameterError(f"{name} should be a numpy array but is {type(image).__name__}")
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise InvalidParameterError(f"{name} should be an HxWx3 image but has shape {image.shape}")
        if not np.issubdtype(image.dtype, np.floating):
            raise InvalidParameterError(
                f"{name} should be a float image in [0, 1] but has dtype {image.dtype} (divide uint8 by 255)"
            )
        low, high = float(np.min(image)), float(np.max(image))
        if not (math.isfinite(low) and math.isfinite(high)):
            raise InvalidParameterError(f"{name} should be finite but contains nan or inf")
        if low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
            raise InvalidParameterError(f"{name} should be a float image in [0, 1] but spans [{low:g}, {high:g}]")
        checked.append(image)
    shapes = [image.shape for image in checked]
    if len(set(shapes)) != 1:
        raise InvalidParameterError(f"left, right, bottom and top should share one shape but have {shapes}")
    # Float32 at least, like the official decoder output; float64 stays float64.
    dtype = np.result_type(*checked, np.float32)
    return tuple(image.astype(dtype, copy=False) for image in checked)


def _fit_matte(matte: np.ndarray, width: int, height: int) -> np.ndarray:
    """HxWx1 alpha in [0, 1] at the relight size: resized to cover it and centre-cropped, as the official demo."""
    if not isinstance(matte, np.ndarray):
        raise InvalidParameterError(f"matte should be a numpy array but is {type(matte).__name__}")
    if matte.ndim == 3 and matte.shape[2] == 1:
        matte = matte[..., 0]
    if matte.ndim != 2 or matte.shape[0] == 0 or matte.shape[1] == 0:
        raise InvalidParameterError(f"matte should be an HxW or HxWx1 array but has shape {matte.shape}")
    if not np.issubdtype(matte.dtype, np.floating):
        raise InvalidParameterError(f"matte should be a float alpha in [0, 1] but has dtype {matte.dtype}")
    low, high = float(np.min(matte)), float(np.max(matte))
    if not (math.isfinite(low) and math.isfinite(high)) or low < -RANGE_TOLERANCE or high > 1.0 + RANGE_TOLERANCE:
        raise InvalidParameterError(f"matte should be a float alpha in [0, 1] but spans [{low:g}, {high:g}]")
    # As the official demo: alpha to 8 bits (truncated), Lanczos cover-and-crop in PIL's 8-bit mode, back to [0, 1].
    quantised = (matte * 255.0).clip(0, 255).astype(np.uint8)
    return (resize_and_center_crop(quantised, width, height).astype(np.float32) / 255.0)[..., None]
