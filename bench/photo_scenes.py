"""Photo-like test scenes drawn by a renderer that shares nothing with the preview relighter.

The preview models light as a disc with a closed-form Lambert table, constant ambient and a 2.2 display gamma.
This renderer is written from the light's documented meaning only: direction, colour, intensity on the lit side,
ambient share on the unlit side, and softness as the light's angular size. It differs from the preview's model
wherever a photo would:

- a soft light is a square soft box (a grid of point lights, each weighted by the panel's cos / r^2),
  not a disc; a hard light is one point light at infinity;
- cast shadows: each point light is occluded by the subject's own height field (a nose shades a cheek);
- true sRGB encoding (the piecewise curve), clipped at white, as a camera stores a photo;
- shapes the silhouette does not describe: a flat-fronted box, a can, a vase, a face's relief.

Nothing here imports from core.lighting.preview.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from core.lighting.lights import Light

SUPERSAMPLE = 2  # scenes are built at 2x and box-filtered down, so the matte has anti-aliased edges
SOFTBOX_HALF_WIDTH_DEG = 50.0  # softness 1 = a square soft box whose half-width subtends 50 degrees
SOFTBOX_GRID = 6  # point lights per side of the soft box (36 in all)
SHADOW_STEPS = 40  # height-field samples along each shadow ray
SHADOW_REACH = 0.9  # the longest shadow ray, as a fraction of the image width
SHADOW_BIAS = 1.0  # in pixels of height: keeps a lit surface from shadowing itself through sampling error
FLAT_LIGHT = 1e-3  # a light this close to the camera axis casts no visible shadow
NO_SURFACE = -10.0  # height outside the subject: nothing there can block a ray
BACKDROP = (0.30, 0.28, 0.26)  # linear grey-brown studio wall, not lit by the light
UINT8_MAX = 255
# sRGB transfer function (IEC 61966-2-1).
SRGB_LINEAR_LIMIT, SRGB_SLOPE, SRGB_EXPONENT, SRGB_OFFSET = 0.0031308, 12.92, 2.4, 0.055


@dataclass(frozen=True)
class PhotoScene:
    """Ground truth at SUPERSAMPLE x the output size."""

    name: str  # "shape / albedo"
    albedo: np.ndarray  # HxWx3 linear reflectance in [0, 1]
    normals: np.ndarray  # HxWx3 unit normals, x right, y up, z toward the camera
    height: np.ndarray  # HxW surface height (toward the camera) in the same units as x and y; NO_SURFACE outside
    inside: np.ndarray  # HxW bool, the subject's silhouette
    shadows: bool  # whether the subject shadows itself (off for convex shapes, where it changes nothing)


def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], x to the right and y up (row 0 is the top)."""
    coords = (np.arange(side) + 0.5) / side * 2.0 - 1.0
    return coords[None, :].repeat(side, 0), -coords[:, None].repeat(side, 1)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def _with_relief(normals: np.ndarray, relief: np.ndarray, step: float) -> np.ndarray:
    """Normals of (base surface + relief height), written so that the base's rim (n_z = 0) stays finite."""
    d_rows, d_x = np.gradient(relief, step)
    d_y = -d_rows  # rows go down while y goes up
    nz = normals[..., 2]
    return _unit(np.stack([normals[..., 0] - nz * d_x, normals[..., 1] - nz * d_y, nz], axis=-1))


# -- shapes: (inside, height, normals) on a side x side grid ---------------------------------------------------------


def _sphere(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    radius = 0.72
    z2 = radius**2 - xs**2 - ys**2
    inside = z2 > 0.0
    z = np.sqrt(np.clip(z2, 0.0, None))
    return inside, z, _unit(np.stack([xs, ys, z], axis=-1))


def _can(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    radius, half_height = 0.4, 0.78
    inside = (np.abs(xs) < radius) & (np.abs(ys) < half_height)
    z = np.sqrt(np.clip(radius**2 - xs**2, 0.0, None))
    return inside, z, _unit(np.stack([np.clip(xs, -radius, radius), np.zeros_like(xs), z], axis=-1))


def _rounded_box(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A box seen face-on: a flat front, edges rounded with a quarter circle of radius EDGE."""
    half_w, half_h, edge = 0.55, 0.7, 0.22
    to_side, to_top = half_w - np.abs(xs), half_h - np.abs(ys)
    inside = (to_side > 0.0) & (to_top > 0.0)
    depth = np.clip(np.minimum(to_side, to_top), 0.0, edge)  # distance in from the nearest edge, up to EDGE
    lean = edge - depth  # how far the normal leans out: a quarter circle's normal is (lean, z) / EDGE
    z = np.sqrt(np.clip(edge**2 - lean**2, 0.0, None))
    side_is_nearer = to_side < to_top
    out_x = np.where(side_is_nearer, np.sign(xs), 0.0)
    out_y = np.where(side_is_nearer, 0.0, np.sign(ys))
    return inside, z, _unit(np.stack([out_x * lean, out_y * lean, z], axis=-1))


def _vase(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A solid of revolution about the vertical axis whose radius swells and narrows with height."""
    half_height = 0.82
    radius = 0.34 + 0.14 * np.sin(2.6 * ys + 0.9) - 0.06 * ys
    d_radius = 0.14 * 2.6 * np.cos(2.6 * ys + 0.9) - 0.06
    inside = (np.abs(xs) < radius) & (np.abs(ys) < half_height)
    z = np.sqrt(np.clip(radius**2 - xs**2, 0.0, None))
    # z = sqrt(r(y)^2 - x^2): the normal (-dz/dx, -dz/dy, 1) times z is (x, -r r', z).
    return inside, z, _unit(np.stack([xs, -radius * d_radius, z], axis=-1))


def _ellipsoid(
    xs: np.ndarray, ys: np.ndarray, axes: tuple[float, float, float], tilt_deg: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b, c = axes
    t = math.radians(tilt_deg)
    u, v = xs * math.cos(t) + ys * math.sin(t), -xs * math.sin(t) + ys * math.cos(t)
    rest = 1.0 - (u / a) ** 2 - (v / b) ** 2
    inside = rest > 0.0
    z = c * np.sqrt(np.clip(rest, 0.0, None))
    gu, gv = u / a**2, v / b**2  # gradient of the implicit surface, rotated back to x, y
    gradient = np.stack([gu * math.cos(t) - gv * math.sin(t), gu * math.sin(t) + gv * math.cos(t), z / c**2], axis=-1)
    return inside, z, _unit(gradient)


def _bump(xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-(((xs - cx) / sx) ** 2) - ((ys - cy) / sy) ** 2)


def _blob(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tilted egg with a few soft lumps."""
    inside, z, normals = _ellipsoid(xs, ys, (0.5, 0.78, 0.42), 25.0)
    lumps = 0.05 * _bump(xs, ys, -0.15, 0.3, 0.18, 0.15) - 0.04 * _bump(xs, ys, 0.2, -0.25, 0.15, 0.2)
    lumps += 0.03 * _bump(xs, ys, 0.05, 0.05, 0.1, 0.1)
    lumps *= inside
    return inside, z + lumps, _with_relief(normals, lumps, xs[0, 1] - xs[0, 0])


def _face(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A head: an egg with a nose, brows, eye sockets, cheeks, lips and a chin."""
    inside, z, normals = _ellipsoid(xs, ys, (0.5, 0.7, 0.5), 0.0)
    relief = 0.13 * _bump(xs, ys, 0.0, -0.02, 0.055, 0.2)  # nose ridge
    relief += 0.06 * _bump(xs, ys, 0.0, -0.18, 0.08, 0.06)  # nose tip
    relief += sum(0.04 * _bump(xs, ys, side * 0.17, 0.2, 0.14, 0.045) for side in (-1, 1))  # brows
    relief -= sum(0.07 * _bump(xs, ys, side * 0.17, 0.11, 0.09, 0.06) for side in (-1, 1))  # eye sockets
    relief += sum(0.035 * _bump(xs, ys, side * 0.25, -0.15, 0.12, 0.1) for side in (-1, 1))  # cheeks
    relief += 0.035 * _bump(xs, ys, 0.0, -0.36, 0.12, 0.035)  # lips
    relief += 0.03 * _bump(xs, ys, 0.0, -0.55, 0.12, 0.06)  # chin
    relief *= np.clip(z / 0.2, 0.0, 1.0)  # features fade out toward the rim
    return inside, z + relief, _with_relief(normals, relief, xs[0, 1] - xs[0, 0])


SHAPES: dict[str, tuple[Callable, bool]] = {  # name: (builder, shadows itself)
    "sphere": (_sphere, False),
    "can": (_can, False),
    "box": (_rounded_box, False),
    "vase": (_vase, True),
    "blob": (_blob, True),
    "face": (_face, True),
}


# -- albedos ---------------------------------------------------------------------------------------------------------


def _flat(xs: np.ndarray, ys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    colour = rng.uniform(0.25, 0.8, size=3)
    return np.broadcast_to(colour, xs.shape + (3,)).copy()


def _patches(xs: np.ndarray, ys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sharp-edged regions of different paint (Voronoi cells): labels, clothes, stickers."""
    centres = rng.uniform(-0.8, 0.8, size=(9, 2))
    colours = rng.uniform(0.08, 0.9, size=(9, 3))
    distance = (xs[..., None] - centres[:, 0]) ** 2 + (ys[..., None] - centres[:, 1]) ** 2
    return colours[np.argmin(distance, axis=-1)]


def _texture(xs: np.ndarray, ys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth colour variation plus fine grain (wood, skin, fabric)."""
    base = rng.uniform(0.3, 0.7, size=3)
    albedo = np.broadcast_to(base, xs.shape + (3,)).copy()
    for frequency, amplitude in ((3.0, 0.15), (9.0, 0.08), (27.0, 0.05)):
        for channel in range(3):
            fx, fy = rng.uniform(0.6, 1.4, size=2) * frequency
            phase = rng.uniform(0.0, 2.0 * math.pi)
            albedo[..., channel] += amplitude * np.sin(fx * xs + phase) * np.cos(fy * ys + 0.7 * phase)
    side = xs.shape[0]
    albedo *= 1.0 + 0.12 * rng.standard_normal((side, side, 1))  # grain
    return np.clip(albedo, 0.03, 0.95)


ALBEDOS: dict[str, Callable] = {"flat": _flat, "patches": _patches, "texture": _texture}


def build(shape: str, albedo: str, size: int, seed: int = 0) -> PhotoScene:
    """The scene `shape` painted with `albedo`, at SUPERSAMPLE x `size`."""
    builder, shadows = SHAPES[shape]
    xs, ys = _grid(size * SUPERSAMPLE)
    inside, height, normals = builder(xs, ys)
    rng = np.random.default_rng(seed + 101 * list(SHAPES).index(shape) + 7 * list(ALBEDOS).index(albedo))
    paint = ALBEDOS[albedo](xs, ys, rng)
    height = np.where(inside, height, NO_SURFACE)
    return PhotoScene(f"{shape} / {albedo}", paint, normals, height, inside, shadows)


# -- lighting --------------------------------------------------------------------------------------------------------


def light_samples(light: Light) -> tuple[np.ndarray, np.ndarray]:
    """(directions Nx3, weights N) of the point lights that make up `light`'s soft box."""
    axis = light.direction
    half_width = math.tan(math.radians(SOFTBOX_HALF_WIDTH_DEG * light.softness))
    if half_width == 0.0:
        return axis[None, :], np.ones(1)
    helper = np.array([0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
    tangent = _unit(np.cross(axis, helper))
    bitangent = np.cross(axis, tangent)
    cells = (np.arange(SOFTBOX_GRID) + 0.5) / SOFTBOX_GRID * 2.0 - 1.0
    u, v = (grid.ravel() * half_width for grid in np.meshgrid(cells, cells))
    # Points on a panel at distance 1: direction to each, and its irradiance weight cos(emitter) / r^2 = 1 / r^3.
    points = axis + u[:, None] * tangent + v[:, None] * bitangent
    distance = np.linalg.norm(points, axis=-1)
    return points / distance[:, None], distance**-3.0


def _visibility(height: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """HxW 1 where the light direction is not blocked by the height field, else 0 (ray marching)."""
    side = height.shape[0]
    planar = math.hypot(direction[0], direction[1])
    if planar < FLAT_LIGHT:
        return np.ones_like(height, dtype=np.float32)
    step_x, step_y = direction[0] / planar, -direction[1] / planar  # per pixel; rows go down
    rise = direction[2] / planar * 2.0 / side  # height gained per pixel travelled (image width is 2 units)
    cols, rows = np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32))
    height32 = height.astype(np.float32)
    lit = np.ones_like(height32)
    bias = SHADOW_BIAS * 2.0 / side
    for k in range(1, SHADOW_STEPS + 1):
        reach = 1.0 + (k / SHADOW_STEPS) ** 2 * SHADOW_REACH * side  # dense near the pixel, sparse far away
        along = cv2.remap(
            height32,
            cols + np.float32(step_x * reach),
            rows + np.float32(step_y * reach),
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=NO_SURFACE,
        )
        lit[along > height32 + np.float32(rise * reach + bias)] = 0.0
    return lit


def irradiance(scene: PhotoScene, light: Light) -> np.ndarray:
    """HxWx3 linear irradiance: colour * (ambient + (1 - ambient) * intensity * key), 1 facing an unblocked key."""
    directions, weights = light_samples(light)
    key = np.zeros(scene.inside.shape)
    if scene.shadows:  # traced at the output size, then enlarged: the rays are the costly part
        small = cv2.resize(scene.height, None, fx=1 / SUPERSAMPLE, fy=1 / SUPERSAMPLE, interpolation=cv2.INTER_NEAREST)
    for direction, weight in zip(directions, weights, strict=True):
        lambert = np.maximum(scene.normals @ direction, 0.0)
        if scene.shadows:
            lit = cv2.resize(_visibility(small, direction), scene.inside.shape[::-1], interpolation=cv2.INTER_LINEAR)
            lambert = lambert * lit
        key += weight * lambert
    key /= float(weights @ (directions @ light.direction))
    level = light.ambient + (1.0 - light.ambient) * light.intensity * key
    return level[..., None] * light.rgb


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Linear [0, 1] to sRGB-encoded [0, 1] (IEC 61966-2-1)."""
    linear = np.clip(linear, 0.0, 1.0)
    curve = (1.0 + SRGB_OFFSET) * linear ** (1.0 / SRGB_EXPONENT) - SRGB_OFFSET
    return np.where(linear <= SRGB_LINEAR_LIMIT, SRGB_SLOPE * linear, curve)


def photograph(scene: PhotoScene, light: Light) -> tuple[np.ndarray, np.ndarray]:
    """(HxWx3 uint8 sRGB photo, HxW float matte) of the scene lit by `light`, at the output size."""
    linear = np.broadcast_to(np.array(BACKDROP), scene.albedo.shape).copy()
    lit = scene.albedo * irradiance(scene, light)
    linear[scene.inside] = lit[scene.inside]
    size = linear.shape[0] // SUPERSAMPLE
    # Light adds up in linear units, so the pixel average (anti-aliasing) happens before encoding.
    linear = cv2.resize(np.clip(linear, 0.0, 1.0), (size, size), interpolation=cv2.INTER_AREA)
    matte = cv2.resize(scene.inside.astype(np.float64), (size, size), interpolation=cv2.INTER_AREA)
    image = np.round(srgb_encode(linear) * UINT8_MAX).astype(np.uint8)
    return image, np.clip(matte, 0.0, 1.0)
