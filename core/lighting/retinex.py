"""Retinex: split a photo's luminance into the light falling on the subject (shading) and its paint (albedo).

Light changes brightness smoothly and leaves colour alone; paint changes colour at sharp edges. So the log-luminance
gradients that cross a colour edge are dropped and the rest are integrated back into a shading field, with a
Poisson solve by the discrete cosine transform (Horn 1974, "Determining lightness from an image"; Funt, Drew and
Brockington 1992, "Recovering shading from color images"). A change of brightness alone is kept as light: it is
as often a shadow's edge as a darker paint, and a relighter that keeps a shadow in the albedo is worse off than one
that loses a dark spot.

Also here: push-pull filling (Gortler et al. 1996, "The lumigraph"), which spreads values into the places where
their weight is low, coarse to fine.
"""

from __future__ import annotations

import cv2
import numpy as np

PAINT_EDGE = 0.08  # change in chromaticity (L1, r + g + b = 1) between neighbours that marks a paint edge
DARK_LUMINANCE = 0.02  # below this linear luminance colour is noise: a step there is always light
LOG_EPS = 1e-3  # keeps log(luminance) finite on black pixels
MIN_FILL_WEIGHT = 0.02  # push-pull: a coarse level fills a finer one where the finer one's weight is below this


def _down(field: np.ndarray) -> np.ndarray:
    """Half-size Gaussian pyramid level, keeping a channel axis if there was one."""
    smaller = cv2.pyrDown(field)
    return smaller.reshape(smaller.shape[:2] + field.shape[2:])


def push_pull(values: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """HxWxC weighted average of `values` spread into the places where `weight` (HxW) is low, coarse to fine."""
    levels = [(np.ascontiguousarray(values * weight[..., None], dtype=np.float32), weight.astype(np.float32))]
    while min(levels[-1][1].shape) > 2:
        num, den = levels[-1]
        levels.append((_down(num), _down(den)))
    num, den = levels[-1]
    total = float(den.sum())
    mean = num.reshape(-1, num.shape[-1]).sum(axis=0) / total if total > 0.0 else np.zeros(num.shape[-1])
    estimate = np.broadcast_to(mean.astype(np.float32), num.shape)
    for num, den in reversed(levels):
        height, width = den.shape
        coarse = cv2.resize(estimate, (width, height), interpolation=cv2.INTER_LINEAR).reshape(num.shape)
        trust = np.minimum(den / MIN_FILL_WEIGHT, 1.0)[..., None]
        estimate = trust * (num / np.maximum(den, 1e-12)[..., None]) + (1.0 - trust) * coarse
    return estimate


def poisson(divergence: np.ndarray) -> np.ndarray:
    """The zero-mean field whose Laplacian is `divergence` (Neumann edges; even sides, as cv2.dct needs)."""
    rows, cols = divergence.shape
    spectrum = cv2.dct(divergence.astype(np.float64))
    eigen = (2.0 * np.cos(np.pi * np.arange(cols) / cols) - 2.0)[None, :] + (
        2.0 * np.cos(np.pi * np.arange(rows) / rows) - 2.0
    )[:, None]
    eigen[0, 0] = 1.0
    spectrum /= eigen
    spectrum[0, 0] = 0.0
    return cv2.dct(spectrum, flags=cv2.DCT_INVERSE).astype(np.float32)


def steps(field: np.ndarray, axis: int) -> np.ndarray:
    """field[i + 1] - field[i] along `axis` (1: x, 0: y), zero past the last pixel; the same shape as `field`."""
    step = np.zeros_like(field)
    if axis == 1:
        np.subtract(field[:, 1:], field[:, :-1], out=step[:, :-1])
    else:
        np.subtract(field[1:], field[:-1], out=step[:-1])
    return step


def _pairs(mask: np.ndarray, axis: int) -> np.ndarray:
    """True where a pixel and its next neighbour along `axis` are both in `mask`."""
    both = np.zeros_like(mask)
    if axis == 1:
        np.logical_and(mask[:, 1:], mask[:, :-1], out=both[:, :-1])
    else:
        np.logical_and(mask[1:], mask[:-1], out=both[:-1])
    return both


def _even(field: np.ndarray) -> np.ndarray:
    """`field` with its last row / column repeated where a side is odd: the repeat adds no step to integrate."""
    height, width = field.shape[:2]
    return cv2.copyMakeBorder(field, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)


def shading_field(linear: np.ndarray, luminance: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """HxW linear shading of a linear RGB image inside the boolean matte `inside`, scaled like its luminance."""
    if not inside.any():
        return luminance
    height, width = luminance.shape
    log_lum = np.log(luminance + np.float32(LOG_EPS))
    # Outside the matte the field is filled from the inside, so the rim adds no false jumps to the solve.
    log_lum = np.where(inside, log_lum, push_pull(log_lum[..., None], inside.astype(np.float32))[..., 0])
    linear, log_lum = _even(linear), _even(log_lum)
    solid = _even((inside & (luminance > DARK_LUMINANCE)).astype(np.uint8)) > 0  # colour means something here
    total = linear[..., 0] + linear[..., 1] + linear[..., 2] + np.float32(3 * LOG_EPS)
    red, green = linear[..., 0] / total, linear[..., 1] / total  # chromaticity; blue is what is left
    divergence = np.zeros_like(log_lum)
    for axis in (1, 0):
        d_red, d_green = steps(red, axis), steps(green, axis)
        paint = np.abs(d_red) + np.abs(d_green) + np.abs(d_red + d_green) > PAINT_EDGE
        # A colour change between two lit pixels of the subject is paint, not light: drop its step.
        step = np.where(paint & _pairs(solid, axis), np.float32(0.0), steps(log_lum, axis))
        divergence += step
        if axis == 1:
            divergence[:, 1:] -= step[:, :-1]
        else:
            divergence[1:] -= step[:-1]
    shading = poisson(divergence)[:height, :width]
    log_lum = log_lum[:height, :width]
    # The solve leaves a constant free: match the input's mean log level inside the matte.
    shading += float((log_lum - shading)[inside].mean())
    return np.exp(shading)
