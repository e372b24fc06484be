"""Light pad: a lit sphere the user clicks to place the light; the click point is where the light hits head-on."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from core.errors import InvalidParameterError
from core.lighting.lights import Light
from core.lighting.preview import GAMMA, shade, specular

PAD_FILL = 0.9  # sphere diameter as a fraction of the pad, leaving a margin to click "at the rim"
MIN_PAD_SIZE, MAX_PAD_SIZE = 16, 2048
PAD_BACKGROUND = (24, 26, 30)  # dark slate behind the sphere
SPHERE_ALBEDO = 0.8  # light grey, so the light's colour shows as it is
PAD_SPECULAR = 0.15  # a little gloss makes the sphere read as round
MARKER_RADIUS = 0.045  # fraction of the pad size
MARKER_RING = 0.4  # ring thickness as a fraction of the marker radius
MARKER_COLOR, MARKER_OUTLINE = (255, 255, 255), (0, 0, 0)
UINT8_MAX = 255


def _check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_PAD_SIZE <= size <= MAX_PAD_SIZE:
        raise InvalidParameterError(f"pad size should be an int in [{MIN_PAD_SIZE}, {MAX_PAD_SIZE}] but is {size!r}")
    return int(size)


def pad_geometry(size: int) -> tuple[float, float, float]:
    """(centre x, centre y, radius) of the sphere in pixel coordinates (pixel i's centre is at i)."""
    size = _check_size(size)
    centre = (size - 1) / 2.0
    return centre, centre, PAD_FILL * size / 2.0


def light_from_pad_click(x: float, y: float, size: int) -> tuple[float, float]:
    """(azimuth, elevation) in degrees for a click at pixel (x, y); clicks off the sphere snap to its rim."""
    cx, cy, radius = pad_geometry(size)
    for name, value in (("x", x), ("y", y)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
            raise InvalidParameterError(f"click {name} should be a finite number but is {value!r}")
    u, v = (float(x) - cx) / radius, (cy - float(y)) / radius  # v up, like the light's y
    reach = min(math.hypot(u, v), 1.0)
    # The clicked sphere point faces the light: its normal (u, v, sqrt(1 - u^2 - v^2)) is the light direction.
    azimuth = math.degrees(math.atan2(v, u)) % 360.0 if reach > 0.0 else 0.0
    return azimuth, math.degrees(math.acos(reach))


def pad_position(light: Light, size: int) -> tuple[float, float]:
    """Pixel (x, y) on the pad where `light` hits the sphere head-on: the inverse of `light_from_pad_click`."""
    cx, cy, radius = pad_geometry(size)
    reach = math.cos(math.radians(light.elevation))
    azimuth = math.radians(light.azimuth)
    return cx + reach * math.cos(azimuth) * radius, cy - reach * math.sin(azimuth) * radius


def render_light_pad(
    light: Light, size: int = 256, *, marker: bool = True, specular_strength: float = PAD_SPECULAR
) -> np.ndarray:
    """size x size x 3 uint8 image of a grey sphere lit by `light`, with a ring where the light points."""
    if not isinstance(light, Light):
        raise InvalidParameterError(f"light should be a Light but is {light!r}")
    cx, cy, radius = pad_geometry(size)
    # 1. Sphere normals at each pixel centre; pixels past the rim get the rim's normal.
    cols, rows = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
    u, v = (cols - cx) / radius, (cy - rows) / radius
    distance = np.sqrt(u * u + v * v)
    scale = 1.0 / np.maximum(distance, 1.0)
    u, v = u * scale, v * scale
    normals = np.stack([u, v, np.sqrt(np.maximum(1.0 - u * u - v * v, 0.0))], axis=-1)
    # 2. Shade as the preview does, in linear light, then gamma-encode.
    linear = SPHERE_ALBEDO * shade(normals, light) + specular(normals, light, specular_strength)
    sphere = np.clip(linear, 0.0, 1.0) ** (1.0 / GAMMA) * UINT8_MAX
    # 3. Anti-aliased edge: coverage falls from 1 to 0 across the one pixel that straddles the rim.
    coverage = np.clip((1.0 - distance) * radius + 0.5, 0.0, 1.0)[..., None]
    image = coverage * sphere + (1.0 - coverage) * np.array(PAD_BACKGROUND, dtype=np.float32)
    if marker:
        image = _draw_marker(image, *pad_position(light, size), size)
    return np.clip(np.rint(image), 0, UINT8_MAX).astype(np.uint8)


def _draw_marker(image: np.ndarray, x: float, y: float, size: int) -> np.ndarray:
    """A white ring with a dark outline centred on (x, y), visible on both lit and unlit parts of the sphere."""
    cols, rows = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
    distance = np.hypot(cols - x, rows - y)
    outer = max(MARKER_RADIUS * size, 2.0)
    ring = max(MARKER_RING * outer, 1.0)
    image = image.copy()
    image[np.abs(distance - outer) <= ring * 0.5 + 1.0] = MARKER_OUTLINE
    image[np.abs(distance - outer) <= ring * 0.5] = MARKER_COLOR
    return image
