"""New lighting for a photo's albedo: Lambert shading, hard cast shadows from procedural occluders, Phong highlights.

Everything is in linear light on HxWx3 float32 arrays; normals are x right, y up, z toward the camera (the
convention of core.lighting). One `Recipe` (a Light plus the kind of effect) is drawn per sample from a seeded
numpy Generator, so the same seed gives the same images on any machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from core.errors import InvalidParameterError
from core.lighting.lights import Light

KINDS = ("soft", "hard", "specular")
DEFAULT_MIX = {"soft": 0.4, "hard": 0.4, "specular": 0.2}
OCCLUDERS = ("window", "blinds", "foliage")
VIEW = np.array([0.0, 0.0, 1.0], dtype=np.float32)  # orthographic camera looking down -z
# Random lights.
MAX_ELEVATION = 70.0  # degrees: above this the light is nearly frontal and shows little direction
KELVIN_RANGE = (2500.0, 9000.0)  # candle-warm to overcast-blue
INTENSITY_RANGE = (0.8, 1.2)
AMBIENT_RANGE = (0.05, 0.35)
SOFTNESS = {"soft": (0.6, 1.0), "hard": (0.0, 0.25), "specular": (0.0, 0.4)}
SPECULAR_RANGE = (0.25, 0.6)  # Phong peak added on top of the diffuse level
SHININESS_RANGE = (16.0, 64.0)
EXPOSURE_RANGE = (0.75, 1.25)  # the relit mean luminance against the photo's
# Cast shadows: an occluder plane between light and subject, at OCCLUDER_HEIGHT of the shorter side.
OCCLUDER_HEIGHT = 0.15
MIN_LIGHT_Z = 0.2  # grazing lights would throw the pattern off the frame: its offset is capped as at this z
PENUMBRA = 0.05  # penumbra blur sigma per unit softness, as a fraction of the occluder height
LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


@dataclass(frozen=True)
class Recipe:
    """One synthetic lighting: the light and how it is rendered."""

    kind: str  # one of KINDS: soft (shading only), hard (plus a cast shadow), specular (plus a highlight)
    light: Light  # direction, colour, intensity, ambient and softness
    occluder: str | None = None  # one of OCCLUDERS for kind 'hard', else None
    specular: float = 0.0  # Phong peak strength (0 = none)
    shininess: float = 32.0  # Phong exponent: larger = smaller, sharper highlight
    exposure: float = 1.0  # relit mean luminance over the photo's

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the light's fields plus the rendering ones (what metadata.jsonl records as `light`)."""
        return {
            "kind": self.kind,
            **self.light.to_dict(),
            "occluder": self.occluder,
            "specular": self.specular,
            "shininess": self.shininess,
            "exposure": self.exposure,
        }


def parse_mix(text: str | None) -> dict[str, float]:
    """'soft=0.4,hard=0.4,specular=0.2' to normalised weights; None gives DEFAULT_MIX."""
    if text is None:
        return dict(DEFAULT_MIX)
    weights: dict[str, float] = {}
    for part in str(text).split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in KINDS:
            raise InvalidParameterError(f"--mix should look like soft=0.4,hard=0.4,specular=0.2 but has {part!r}")
        try:
            weight = float(value)
        except ValueError:
            raise InvalidParameterError(f"--mix weight for {name} should be a number but is {value!r}") from None
        if not math.isfinite(weight) or weight < 0:
            raise InvalidParameterError(f"--mix weight for {name} should be >= 0 but is {value!r}")
        weights[name] = weight
    total = sum(weights.values())
    if total <= 0:
        raise InvalidParameterError(f"--mix needs at least one positive weight but is {text!r}")
    return {kind: weights.get(kind, 0.0) / total for kind in KINDS}


def kelvin_to_hex(kelvin: float) -> str:
    """Colour of a black body at `kelvin`, normalised to its largest channel (Tanner Helland's fit, 1000-40000 K)."""
    t = kelvin / 100.0
    red = 255.0 if t <= 66 else 329.698727446 * (t - 60) ** -0.1332047592
    green = 99.4708025861 * math.log(t) - 161.1195681661 if t <= 66 else 288.1221695283 * (t - 60) ** -0.0755148492
    blue = 255.0 if t >= 66 else (0.0 if t <= 19 else 138.5177312231 * math.log(t - 10) - 305.0447927307)
    rgb = np.clip([red, green, blue], 0.0, 255.0)
    rgb = rgb / rgb.max() * 255.0
    return "#" + "".join(f"{round(c):02x}" for c in rgb)


def sample_recipe(rng: np.random.Generator, mix: dict[str, float]) -> Recipe:
    """A random lighting drawn from `rng`: kind by `mix`, then the light and its effect."""
    kind = KINDS[int(rng.choice(len(KINDS), p=[mix[k] for k in KINDS]))]
    kelvin = math.exp(rng.uniform(math.log(KELVIN_RANGE[0]), math.log(KELVIN_RANGE[1])))
    light = Light(
        azimuth=float(rng.uniform(0.0, 360.0)),
        elevation=float(rng.uniform(0.0, MAX_ELEVATION)),
        color=kelvin_to_hex(kelvin),
        intensity=float(rng.uniform(*INTENSITY_RANGE)),
        ambient=float(rng.uniform(*AMBIENT_RANGE)),
        softness=float(rng.uniform(*SOFTNESS[kind])),
    )
    occluder = OCCLUDERS[int(rng.integers(len(OCCLUDERS)))] if kind == "hard" else None
    specular = float(rng.uniform(*SPECULAR_RANGE)) if kind == "specular" else 0.0
    shininess = float(rng.uniform(*SHININESS_RANGE))
    exposure = float(rng.uniform(*EXPOSURE_RANGE))
    return Recipe(kind, light, occluder, specular, shininess, exposure)


def lambert(normals: np.ndarray, light: Light) -> np.ndarray:
    """HxW float32 max(n . l, 0): the direct term of Lambertian shading."""
    return np.maximum(np.tensordot(normals, light.direction.astype(np.float32), axes=([-1], [0])), 0.0)


def shading(normals: np.ndarray, light: Light, visibility: np.ndarray | None = None) -> np.ndarray:
    """HxWx3 irradiance: colour * (ambient + (1 - ambient) * intensity * visibility * max(n . l, 0))."""
    direct = lambert(normals, light) * light.intensity
    if visibility is not None:
        direct = direct * visibility
    level = light.ambient + (1.0 - light.ambient) * direct
    return (level[..., None] * light.rgb.astype(np.float32)).astype(np.float32)


def phong(normals: np.ndarray, light: Light, strength: float, shininess: float) -> np.ndarray:
    """HxWx3 Phong highlight: strength * intensity * max(r . v, 0) ** shininess, r = the light mirrored about n."""
    to_light = light.direction.astype(np.float32)
    n_dot_l = np.tensordot(normals, to_light, axes=([-1], [0]))
    mirrored = 2.0 * n_dot_l[..., None] * normals - to_light
    r_dot_v = np.clip(np.tensordot(mirrored, VIEW, axes=([-1], [0])), 0.0, 1.0)
    peak = strength * light.intensity * r_dot_v**shininess * (n_dot_l > 0.0)
    return (peak[..., None] * light.rgb.astype(np.float32)).astype(np.float32)


def occluder_pattern(kind: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """HxW float32 transmission of a procedural occluder (1 = open, 0 = opaque): window frame, blinds or foliage."""
    side = min(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "window":
        pitch_x, pitch_y = (side * rng.uniform(0.3, 0.6) for _ in range(2))
        bar = side * rng.uniform(0.03, 0.07)
        ox, oy = rng.uniform(0, pitch_x), rng.uniform(0, pitch_y)
        opaque = ((xx + ox) % pitch_x < bar) | ((yy + oy) % pitch_y < bar)
    elif kind == "blinds":
        angle = rng.uniform(-0.4, 0.4)  # radians from horizontal
        pitch = side * rng.uniform(0.06, 0.14)
        slat = pitch * rng.uniform(0.35, 0.6)
        across = yy * math.cos(angle) - xx * math.sin(angle) + rng.uniform(0, pitch)
        opaque = across % pitch < slat
    elif kind == "foliage":
        small = max(4, side // 16)
        noise = rng.normal(size=(small, small)).astype(np.float32)
        noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
        noise = cv2.GaussianBlur(noise, (0, 0), side / 64.0)
        opaque = noise > np.quantile(noise, 1.0 - rng.uniform(0.3, 0.55))
    else:
        raise InvalidParameterError(f"occluder should be one of {', '.join(OCCLUDERS)} but is {kind!r}")
    return np.where(opaque, 0.0, 1.0).astype(np.float32)


def cast_shadow(pattern: np.ndarray, light: Light, height_px: float) -> np.ndarray:
    """HxW visibility of the light through an occluder plane `height_px` above the surface (toward the light)."""
    to_light = light.direction
    z = max(float(to_light[2]), MIN_LIGHT_Z)
    # A point sees the light through the occluder where the ray toward the light crosses the plane, so the shadow
    # is the pattern moved away from the light; image rows grow downward, hence the sign on y.
    dx, dy = -height_px * to_light[0] / z, height_px * to_light[1] / z
    rows, cols = pattern.shape
    shift = np.float32([[1, 0, dx], [0, 1, dy]])
    moved = cv2.warpAffine(pattern, shift, (cols, rows), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    sigma = PENUMBRA * height_px * light.softness
    if sigma > 0.3:
        moved = cv2.GaussianBlur(moved, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return np.clip(moved, 0.0, 1.0).astype(np.float32)


def relight(
    albedo: np.ndarray, normals: np.ndarray, recipe: Recipe, rng: np.random.Generator, reference: np.ndarray
) -> np.ndarray:
    """HxWx3 float32 linear image: `albedo` lit by `recipe`, exposed like the linear `reference` photo."""
    height, width = albedo.shape[:2]
    visibility = None
    if recipe.occluder is not None:
        pattern = occluder_pattern(recipe.occluder, height, width, rng)
        visibility = cast_shadow(pattern, recipe.light, OCCLUDER_HEIGHT * min(height, width))
    image = albedo * shading(normals, recipe.light, visibility)
    if recipe.specular > 0.0:
        highlight = phong(normals, recipe.light, recipe.specular, recipe.shininess)
        image = image + highlight * (1.0 if visibility is None else visibility[..., None])
    # Same mean brightness as the photo (times the drawn exposure): the input differs in light, not in exposure.
    gain = recipe.exposure * float((reference @ LUMA).mean()) / max(float((image @ LUMA).mean()), 1e-6)
    return np.clip(image * gain, 0.0, 1.0).astype(np.float32)
