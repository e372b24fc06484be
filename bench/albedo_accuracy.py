"""Albedo extraction accuracy: scale-invariant PSNR against the known albedo of synthetic scenes.

Each scene has a known albedo (piecewise-constant colour and grey patches, or textures) and known normals (a
height field of bumps and a dome). It is rendered here, with its own small renderer that shares no code with
core.data: plain Lambert from a directional light, plus ambient, times a hard cast shadow from a bar-and-grid
occluder (a one-pixel penumbra), stored gamma-encoded as 8-bit photos are. The extracted albedo is compared with
the truth in linear light after the one scale that fits best (albedo is only defined up to scale). The naive
baseline is the photo itself taken as albedo; the classic multi-scale Retinex is printed too.

Run: python -m bench.albedo_accuracy
"""

from __future__ import annotations

import math
import time

import cv2
import numpy as np

from core.data.albedo import extract_albedo, multiscale_retinex

SIZE = 256
SEED = 7
TARGET_GAIN_DB = 6.0  # extraction must beat the naive baseline by this much on average
RENDER_GAMMA = 2.2
# (azimuth deg, elevation deg, ambient, colour): the lights each scene is photographed under.
LIGHTS = (
    (150.0, 35.0, 0.20, (1.0, 1.0, 1.0)),
    (20.0, 50.0, 0.15, (1.0, 0.94, 0.86)),
    (270.0, 25.0, 0.30, (1.0, 1.0, 1.0)),
    (60.0, 65.0, 0.25, (0.95, 0.97, 1.0)),
)


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(c, -c)


def _normals(rng: np.random.Generator, size: int) -> np.ndarray:
    """Unit normals of a smooth height field (no self-occlusion): a few Gaussian bumps and a broad dome."""
    xs, ys = _coords(size)
    height = np.zeros_like(xs)
    for _ in range(6):
        cx, cy = rng.uniform(-0.8, 0.8, 2)
        radius, amp = rng.uniform(0.15, 0.4), rng.uniform(-0.3, 0.4)
        height += amp * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * radius**2))
    height += 0.6 * np.exp(-(xs**2 + ys**2) / 0.5)  # a broad dome
    step = 2.0 / size
    dz_drow, dz_dx = np.gradient(height, step)
    normals = np.stack([-dz_dx, dz_drow, np.ones_like(height)], axis=-1)  # rows go down, y goes up
    return normals / np.linalg.norm(normals, axis=-1, keepdims=True)


def _patches(rng: np.random.Generator, size: int, grey: bool) -> np.ndarray:
    """Piecewise-constant albedo: nearest-seed (Voronoi) cells, each a flat colour (or grey level)."""
    seeds = rng.uniform(0, size, (24, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    cell = np.argmin((xx[..., None] - seeds[:, 0]) ** 2 + (yy[..., None] - seeds[:, 1]) ** 2, axis=-1)
    value = rng.uniform(0.15, 0.85, (24, 1))
    saturation = np.zeros((24, 1)) if grey else rng.uniform(0.15, 0.8, (24, 1))
    hue = rng.uniform(0.0, 1.0, (24, 1))
    colours = value * (1.0 - saturation * (0.5 + 0.5 * np.cos(2 * np.pi * (hue + np.array([0.0, 1 / 3, 2 / 3])))))
    return colours[cell]


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured albedo: colour stripes, a checker and band-passed noise, multiplied."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    stripes = np.where((xx + 0.5 * yy) % 40 < 20, 1.0, 0.0)[..., None] * np.array([0.2, -0.1, 0.15])
    checker = np.where(((xx // 32) + (yy // 32)) % 2 == 0, 1.0, 0.0)[..., None]
    checker = checker * np.array([1.0, 0.75, 0.6]) + (1.0 - checker) * np.array([0.6, 0.8, 1.0])
    noise = cv2.GaussianBlur(rng.normal(0.0, 1.0, (size, size)), (0, 0), 3.0)
    noise = 1.0 + 0.25 * noise / noise.std()
    base = np.array(rng.uniform(0.35, 0.7, 3))
    return np.clip((base + stripes) * checker * noise[..., None], 0.02, 0.95)


def _occluder(rng: np.random.Generator, size: int) -> np.ndarray:
    """1 where the key light reaches, 0 in the hard shadow of a window-frame-like occluder."""
    lit = np.ones((size, size))
    pitch = int(rng.integers(48, 96))
    offset = int(rng.integers(0, pitch))
    bar = int(rng.integers(6, 14))
    for start in range(offset - pitch, size, pitch):
        lit[:, max(start, 0) : max(start + bar, 0)] = 0.0
    row = int(rng.integers(size // 4, 3 * size // 4))
    lit[row : row + bar, :] = 0.0
    return cv2.GaussianBlur(lit, (0, 0), 1.0)  # a one-pixel penumbra: a hard light's shadow


def render(albedo: np.ndarray, normals: np.ndarray, light: tuple, lit: np.ndarray) -> np.ndarray:
    """Gamma-encoded uint8 photo of the scene: albedo * colour * (ambient + (1 - ambient) * lit * max(n.l, 0))."""
    azimuth, elevation, ambient, colour = light
    az, el = math.radians(azimuth), math.radians(elevation)
    to_light = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    lambert = np.clip(normals @ to_light, 0.0, None)
    irradiance = ambient + (1.0 - ambient) * lambert * lit
    linear = albedo * irradiance[..., None] * np.array(colour)
    return np.rint(np.clip(linear, 0.0, 1.0) ** (1.0 / RENDER_GAMMA) * 255).astype(np.uint8)


def si_psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    """PSNR (peak 1) of `estimate` against `truth` after the least-squares scale of `estimate`."""
    estimate, truth = estimate.astype(np.float64).ravel(), truth.astype(np.float64).ravel()
    scale = float(estimate @ truth) / max(float(estimate @ estimate), 1e-12)
    mse = float(np.mean((scale * estimate - truth) ** 2))
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def main() -> None:
    rng = np.random.default_rng(SEED)
    kinds = (("colour patches", False), ("grey patches", True), ("texture", None))
    rows = []
    seconds = 0.0
    print(f"{'scene':<16}{'light':>6}{'naive':>8}{'msr':>8}{'albedo':>8}{'gain':>7}  (dB, scale-invariant PSNR)")
    for name, grey in kinds:
        albedo = _texture(rng, SIZE) if grey is None else _patches(rng, SIZE, grey)
        normals = _normals(rng, SIZE)
        for index, light in enumerate(LIGHTS):
            photo = render(albedo, normals, light, _occluder(rng, SIZE))
            naive = (photo / 255.0) ** RENDER_GAMMA
            start = time.perf_counter()
            extracted = extract_albedo(photo)
            seconds += time.perf_counter() - start
            scores = (si_psnr(naive, albedo), si_psnr(multiscale_retinex(photo), albedo), si_psnr(extracted, albedo))
            rows.append(scores)
            gain = scores[2] - scores[0]
            print(f"{name:<16}{index:>6}{scores[0]:>8.2f}{scores[1]:>8.2f}{scores[2]:>8.2f}{gain:>7.2f}")
    for family, (name, _) in enumerate(kinds):
        part = np.mean(rows[family * len(LIGHTS) : (family + 1) * len(LIGHTS)], axis=0)
        print(f"{'mean ' + name:<22}{part[0]:>8.2f}{part[1]:>8.2f}{part[2]:>8.2f}{part[2] - part[0]:>7.2f}")
    mean = np.mean(rows, axis=0)
    gain = mean[2] - mean[0]
    print(f"{'mean':<22}{mean[0]:>8.2f}{mean[1]:>8.2f}{mean[2]:>8.2f}{gain:>7.2f}")
    print(f"albedo extraction: {1000 * seconds / len(rows):.1f} ms per {SIZE}x{SIZE} image")
    verdict = "met" if gain >= TARGET_GAIN_DB else "NOT met"
    print(f"gain over the naive baseline: {gain:.2f} dB (target >= {TARGET_GAIN_DB} dB: {verdict})")


if __name__ == "__main__":
    main()
