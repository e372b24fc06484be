"""Synthetic scenes with known albedo and normals, rendered under a Light: ground truth for the preview relighter."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from core.lighting.lights import Light
from core.lighting.preview import GAMMA, MAX_SOFT_ANGLE_DEG

SUPERSAMPLE = 2  # scenes are built at 2x and box-filtered down, so the matte has anti-aliased edges
CAP_SAMPLES = 64  # directions sampled on the disc light; brute force on purpose, independent of core's table
GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))
BACKDROP_TOP, BACKDROP_BOTTOM = 0.35, 0.12  # linear grey of the unlit studio backdrop
UINT8_MAX = 255
DOME_HEIGHT = 0.6  # the blob's height, about its mean radius


@dataclass(frozen=True)
class Scene:
    """Per-pixel ground truth at SUPERSAMPLE x the output size."""

    name: str
    albedo: np.ndarray  # HxWx3 linear reflectance in [0, 1]
    normals: np.ndarray  # HxWx3 unit normals, x right, y up, z toward the camera
    inside: np.ndarray  # HxW bool, the subject's silhouette
    backdrop: np.ndarray  # HxWx3 linear backdrop, not lit by the light


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], x to the right and y up (row 0 is the top)."""
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    return coords[None, :].repeat(size, 0), -coords[:, None].repeat(size, 1)


def _backdrop(size: int) -> np.ndarray:
    ramp = np.linspace(BACKDROP_TOP, BACKDROP_BOTTOM, size)[:, None, None]
    return np.broadcast_to(ramp, (size, size, 3)).copy()


def _from_height(z: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Unit normals (-dz/dx, -dz/dy, 1) of a height field sampled on the grid."""
    step = xs[0, 1] - xs[0, 0]
    dz_dy_rows, dz_dx = np.gradient(z, step)
    dz_dy = -dz_dy_rows  # rows go down while y goes up
    normals = np.stack([-dz_dx, -dz_dy, np.ones_like(z)], axis=-1)
    return normals / np.linalg.norm(normals, axis=-1, keepdims=True)


def sphere(size: int) -> Scene:
    """A matte orange ball filling most of the frame."""
    xs, ys = _grid(size * SUPERSAMPLE)
    radius = 0.75
    rho2 = (xs**2 + ys**2) / radius**2
    inside = rho2 < 1.0
    normals = np.stack([xs / radius, ys / radius, np.sqrt(np.clip(1.0 - rho2, 0.0, 1.0))], axis=-1)
    albedo = np.broadcast_to(np.array([0.8, 0.45, 0.25]), normals.shape).copy()
    return Scene("sphere", albedo, normals, inside, _backdrop(size * SUPERSAMPLE))


def cylinder(size: int) -> Scene:
    """An upright can seen from the side (flat ends, so its silhouette is a rectangle), with painted bands."""
    xs, ys = _grid(size * SUPERSAMPLE)
    radius, half_height = 0.42, 0.8
    u = np.clip(xs / radius, -1.0, 1.0)
    inside = (np.abs(xs) < radius) & (np.abs(ys) < half_height)
    normals = np.stack([u, np.zeros_like(u), np.sqrt(1.0 - u**2)], axis=-1)
    band = (np.floor(ys * 3.0) % 2)[..., None]
    albedo = band * np.array([0.2, 0.45, 0.75]) + (1.0 - band) * np.array([0.85, 0.82, 0.7])
    return Scene("cylinder", albedo, normals, inside, _backdrop(size * SUPERSAMPLE))


def textured_blob(size: int, seed: int = 7) -> Scene:
    """A lumpy star-shaped dome with small bumps and a blotchy, spotted albedo."""
    xs, ys = _grid(size * SUPERSAMPLE)
    theta = np.arctan2(ys, xs)
    outline = 0.62 * (1.0 + 0.22 * np.sin(3.0 * theta + 0.5) + 0.08 * np.cos(5.0 * theta))
    rho2 = (xs**2 + ys**2) / outline**2
    inside = rho2 < 1.0
    # A constant height keeps the surface smooth at the centre, where the outline's angle is undefined.
    dome = DOME_HEIGHT * np.sqrt(np.clip(1.0 - rho2, 0.0, 1.0))
    bumps = 0.025 * np.sin(11.0 * xs + 0.3) * np.sin(9.0 * ys + 1.1) * np.clip(1.0 - rho2, 0.0, 1.0)
    normals = _from_height(dome + bumps, xs, ys)
    rng = np.random.default_rng(seed)
    albedo = np.full(xs.shape + (3,), 0.5)
    for channel in range(3):
        for _ in range(3):
            fx, fy, phase = rng.uniform(2.0, 7.0), rng.uniform(2.0, 7.0), rng.uniform(0.0, 2.0 * np.pi)
            albedo[..., channel] += 0.1 * np.sin(fx * xs + phase) * np.cos(fy * ys - phase)
    for _ in range(12):  # dark spots: sharp albedo edges a luminance-based method could mistake for geometry
        cx, cy, r = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(0.03, 0.08)
        albedo[(xs - cx) ** 2 + (ys - cy) ** 2 < r**2] *= 0.45
    return Scene("textured blob", np.clip(albedo, 0.05, 0.95), normals, inside, _backdrop(size * SUPERSAMPLE))


SCENES: dict[str, Callable[[int], Scene]] = {"sphere": sphere, "cylinder": cylinder, "textured blob": textured_blob}


def _cap_directions(light: Light) -> np.ndarray:
    """CAP_SAMPLES directions spread evenly (in solid angle) over the light's disc, as rows."""
    half_angle = math.radians(MAX_SOFT_ANGLE_DEG) * light.softness
    axis = light.direction
    if half_angle == 0.0:
        return axis[None, :]
    k = np.arange(CAP_SAMPLES) + 0.5
    cos_g = 1.0 - (1.0 - math.cos(half_angle)) * k / CAP_SAMPLES
    sin_g = np.sqrt(1.0 - cos_g**2)
    phi = GOLDEN_ANGLE * k
    helper = np.array([0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    tangent = np.cross(axis, helper)
    tangent /= np.linalg.norm(tangent)
    bitangent = np.cross(axis, tangent)
    return (
        sin_g[:, None] * np.cos(phi)[:, None] * tangent
        + sin_g[:, None] * np.sin(phi)[:, None] * bitangent
        + cos_g[:, None] * axis
    )


def irradiance(normals: np.ndarray, light: Light) -> np.ndarray:
    """Linear RGB irradiance: colour * (ambient + (1 - ambient) * intensity * disc-light Lambert), by brute force."""
    directions = _cap_directions(light)
    flat = normals.reshape(-1, 3)
    lambert = np.zeros(len(flat))
    for direction in directions:
        lambert += np.maximum(flat @ direction, 0.0)
    # A surface facing the light receives 1, whatever the light's size.
    lambert /= (directions @ light.direction).sum()
    lambert = lambert.reshape(normals.shape[:2])
    level = light.ambient + (1.0 - light.ambient) * light.intensity * lambert
    return level[..., None] * light.rgb


def render(scene: Scene, light: Light) -> tuple[np.ndarray, np.ndarray]:
    """(HxWx3 uint8 sRGB-like image, HxW float matte) of the scene lit by `light`, at the output size."""
    linear = scene.backdrop.copy()
    linear[scene.inside] = scene.albedo[scene.inside] * irradiance(scene.normals[scene.inside][:, None], light)[:, 0]
    size = linear.shape[0] // SUPERSAMPLE
    linear = cv2.resize(np.clip(linear, 0.0, 1.0), (size, size), interpolation=cv2.INTER_AREA)
    matte = cv2.resize(scene.inside.astype(np.float64), (size, size), interpolation=cv2.INTER_AREA)
    image = np.round(linear ** (1.0 / GAMMA) * UINT8_MAX).astype(np.uint8)
    return image, np.clip(matte, 0.0, 1.0)


def true_normals(scene: Scene) -> np.ndarray:
    """The scene's normals at the output size (box-filtered, renormalised)."""
    size = scene.normals.shape[0] // SUPERSAMPLE
    normals = cv2.resize(scene.normals, (size, size), interpolation=cv2.INTER_AREA)
    return normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-9)
