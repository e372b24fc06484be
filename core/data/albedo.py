"""Albedo (the photo without its lighting) by Color Retinex: classify log-luminance gradients, reintegrate.

Method (Land & McCann's Retinex in the gradient form of Horn 1974, with the chromaticity cue of Grosse et al.
2009, "Ground truth dataset and baseline evaluations for intrinsic image algorithms", and an edge-width cue):

1. Work in linear light: luminance L and chromaticity c = rgb / (r + g + b), slightly blurred against noise.
2. Every gradient of log L is either shading or reflectance. Albedo edges are sharp: their luminance step happens
   within about one pixel, while smooth shading and the penumbra of a cast shadow spread it over several. So a
   gradient is reflectance when its edge is sharp (the one-pixel step is at least SHARP_EDGE of the step over
   2 * EDGE_SPAN pixels) and it either changes the chromaticity (white light scales all channels alike) or is
   larger than TEXTURE_STEP; a chromaticity change with a small luminance step counts whatever its width.
3. Reintegrate the reflectance gradients into log albedo by a Neumann Poisson solve (one DCT each way).
4. Colour: the albedo keeps each pixel's own chromaticity (the Lab a/b idea in linear RGB), only its luminance
   is replaced; the result is scaled so that its ALBEDO_WHITE percentile is ALBEDO_WHITE_LEVEL.

Limits: a cast shadow as sharp as a printed edge is taken for albedo, and albedo that fades over several pixels
for shading. bench/albedo_accuracy.py measures it on scenes rendered by an independent renderer.

`multiscale_retinex` is the classic MSR (log L minus its blurs at three scales, chroma kept from Lab), kept as
the documented simpler method and measured next to the default in bench/albedo_accuracy.py.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import fft
from scipy.ndimage import maximum_filter1d

from core.errors import InvalidParameterError

GAMMA = 2.2  # display gamma of the stored photos
UINT8_MAX = 255
LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)  # Rec. 709 luminance weights (linear RGB)
LOG_EPS = 1e-3  # keeps log(luminance) finite on black pixels
NOISE_SIGMA = 0.7  # px: pre-blur so that 8-bit quantisation in shadows does not read as chromaticity edges
CHROMA_EDGE = 0.012  # chromaticity change per pixel above which an edge changes colour
TEXTURE_STEP = 0.03  # log-luminance step per pixel above which a sharp achromatic edge is albedo
SHARP_EDGE = 0.6  # share of an edge's step taken within one pixel above which the edge is sharp
EDGE_SPAN = 2  # px each side of a pixel pair over which an edge's whole step is measured
SMALL_STEP = 0.3  # log-luminance step over the span under which a colour edge counts however wide it is
ALBEDO_WHITE = 99.0  # percentile of albedo luminance that is mapped to ALBEDO_WHITE_LEVEL
ALBEDO_WHITE_LEVEL = 0.85  # linear reflectance of the brightest surfaces (white paper is ~0.8-0.9)
MSR_SIGMAS = (0.02, 0.08, 0.25)  # classic MSR scales as fractions of the image's longer side
_TO_LINEAR = ((np.arange(UINT8_MAX + 1) / UINT8_MAX) ** GAMMA).astype(np.float32)


def to_linear(image: np.ndarray) -> np.ndarray:
    """uint8 gamma-encoded HxWx3 to float32 linear light in [0, 1]."""
    return _TO_LINEAR[_check_image(image)]


def to_uint8(linear: np.ndarray) -> np.ndarray:
    """float linear light to gamma-encoded uint8 (clipped to [0, 1] first)."""
    return np.rint(np.clip(linear, 0.0, 1.0) ** (1.0 / GAMMA) * UINT8_MAX).astype(np.uint8)


def extract_albedo(image: np.ndarray) -> np.ndarray:
    """HxWx3 float32 linear albedo of a uint8 photo by Color Retinex (see the module docstring)."""
    linear = to_linear(image)
    smooth = cv2.GaussianBlur(linear, (0, 0), NOISE_SIGMA, borderType=cv2.BORDER_REPLICATE)
    log_lum = np.log(smooth @ LUMA + LOG_EPS)
    raw_log_lum = np.log(linear @ LUMA + LOG_EPS)  # unblurred, for the edge width
    chroma = (smooth + LOG_EPS / 3) / (smooth.sum(axis=2, keepdims=True) + LOG_EPS)
    # 1.-2. Forward differences along x and y, each kept where it is a reflectance edge.
    gx, gy = (_reflectance_gradient(log_lum, raw_log_lum, chroma, axis) for axis in (1, 0))
    # 3. Reintegrate.
    return _with_chroma(linear, np.exp(poisson_integrate(gx, gy)))


def multiscale_retinex(image: np.ndarray) -> np.ndarray:
    """HxWx3 float32 linear albedo by classic multi-scale Retinex on log L, chroma kept from Lab."""
    linear = to_linear(image)
    log_lum = np.log(linear @ LUMA + LOG_EPS)
    side = max(log_lum.shape)
    blurs = [cv2.GaussianBlur(log_lum, (0, 0), s * side, borderType=cv2.BORDER_REFLECT) for s in MSR_SIGMAS]
    log_albedo = log_lum - sum(blurs) / len(blurs)
    return _with_chroma(linear, np.exp(log_albedo))


def poisson_integrate(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """The zero-mean field u whose forward differences best match (gx, gy) in least squares (Neumann, by DCT)."""
    height, width = gx.shape
    # Divergence of the forward-difference field by backward differences (the adjoint).
    div = gx.astype(np.float64).copy()
    div[:, 1:] -= gx[:, :-1]
    div += gy
    div[1:, :] -= gy[:-1, :]
    spectrum = fft.dctn(div, type=2, norm="ortho")
    wx = 2.0 * np.cos(np.pi * np.arange(width) / width) - 2.0
    wy = 2.0 * np.cos(np.pi * np.arange(height) / height) - 2.0
    denominator = wy[:, None] + wx[None, :]
    denominator[0, 0] = 1.0
    spectrum /= denominator
    spectrum[0, 0] = 0.0  # the constant is free: albedo is known only up to scale
    return fft.idctn(spectrum, type=2, norm="ortho").astype(np.float32)


def _forward(field: np.ndarray, axis: int) -> np.ndarray:
    """Forward difference along `axis`; 0 in the last row/column (Neumann boundary)."""
    step = np.zeros(field.shape[:2], np.float32)
    diff = np.diff(field, axis=axis)
    if field.ndim == 3:
        diff = np.abs(diff).max(axis=2)
    if axis == 1:
        step[:, :-1] = diff
    else:
        step[:-1, :] = diff
    return step


def _shifted(field: np.ndarray, offset: int, axis: int) -> np.ndarray:
    """field[i + offset] along `axis`, the edge values repeated past the border."""
    padding = [(0, 0)] * field.ndim
    padding[axis] = (max(-offset, 0), max(offset, 0))
    padded = np.pad(field, padding, mode="edge")
    start = max(offset, 0)
    return np.take(padded, np.arange(start, start + field.shape[axis]), axis=axis)


def _reflectance_gradient(log_lum: np.ndarray, raw_log_lum: np.ndarray, chroma: np.ndarray, axis: int) -> np.ndarray:
    """The forward gradient of log L along `axis` where it is an albedo edge, 0 where it is shading."""
    step = _forward(log_lum, axis)
    colour_step = _forward(chroma, axis)
    # Whole step across the pair's neighbourhood (EDGE_SPAN px each side), against the one-pixel step; an edge
    # blurred by the noise filter spreads over neighbouring pairs, so each pair takes its neighbours' sharpness.
    span = _shifted(raw_log_lum, EDGE_SPAN, axis) - _shifted(raw_log_lum, 1 - EDGE_SPAN, axis)
    sharpness = np.abs(_forward(raw_log_lum, axis)) / np.maximum(np.abs(span), 1e-6)
    sharp = maximum_filter1d(sharpness, size=3, axis=axis) > SHARP_EDGE
    colour_edge = (colour_step > CHROMA_EDGE) & (sharp | (np.abs(span) < SMALL_STEP))
    texture_edge = (np.abs(step) > TEXTURE_STEP) & sharp
    return step * (colour_edge | texture_edge)


def _with_chroma(linear: np.ndarray, albedo_luminance: np.ndarray) -> np.ndarray:
    """Each pixel's own chromaticity at the new luminance, scaled so bright surfaces reach ALBEDO_WHITE_LEVEL."""
    luminance = linear @ LUMA + LOG_EPS
    albedo = linear * (albedo_luminance / luminance)[..., None]
    # Pixels black in every channel have no chromaticity: give them the grey of their new luminance.
    black = (linear.max(axis=2) <= 0.0)[..., None]
    albedo = np.where(black, albedo_luminance[..., None], albedo)
    white = float(np.percentile(albedo_luminance, ALBEDO_WHITE))
    return (albedo * (ALBEDO_WHITE_LEVEL / max(white, 1e-12))).astype(np.float32)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise InvalidParameterError(f"image should be an HxWx3 uint8 array but has shape {image.shape} {image.dtype}")
    return image
