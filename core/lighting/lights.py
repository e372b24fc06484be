"""Light specification and the gradient images IC-Light is conditioned on."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import InvalidParameterError
from core.schema import from_known_fields

# Azimuth convention: 0 = light from the right, 90 = from the top, 180 = from the left, 270 = from the bottom.
NAMED_AZIMUTHS = {"right": 0.0, "top": 90.0, "left": 180.0, "bottom": 270.0}
FC_BRIGHT, FC_DARK = 255, 0  # official fc initial-latent gradient ends
FBC_BRIGHT, FBC_DARK = 224, 32  # official fbc background gradient ends
MAX_INTENSITY = 2.0
MAX_ELEVATION = 90.0
FULL_TURN = 360.0
MAX_IMAGE_SIDE = 8192  # gradients and light maps larger than this are a caller bug, not a request
UINT8_MAX = 255
RGB = 3
RGBA = 4
# Upper bound of each field that must lie in [0, bound].
_UPPER_BOUNDS = {"elevation": MAX_ELEVATION, "intensity": MAX_INTENSITY, "ambient": 1.0, "softness": 1.0}


@dataclass(frozen=True)
class Light:
    """A placeable light: direction, colour and strength."""

    azimuth: float = 180.0  # degrees, 0 = from the right, counter-clockwise (90 = top)
    elevation: float = 0.0  # degrees, 0 = grazing from the side, 90 = from the camera
    color: str = "#ffffff"  # hex RGB of the light
    intensity: float = 1.0  # multiplier on the lit side, 0..2
    ambient: float = 0.0  # 0..1, light reaching the unlit side
    softness: float = 0.5  # 0..1, angular size of the light: wider fall-off, broader highlight, softer shadow

    def __post_init__(self) -> None:
        object.__setattr__(self, "azimuth", _finite("azimuth", self.azimuth) % FULL_TURN)
        for name, high in _UPPER_BOUNDS.items():
            value = _finite(name, getattr(self, name))
            if not 0.0 <= value <= high:
                unit = " degrees" if name == "elevation" else ""
                raise InvalidParameterError(f"{name} should be in [0, {high}]{unit} but is {getattr(self, name)}")
            object.__setattr__(self, name, value)
        parse_hex_color(self.color)

    @classmethod
    def named(cls, name: str, **overrides: Any) -> Light:
        """The light for an official direction name (left/right/top/bottom)."""
        key = str(name).lower().removesuffix(" light")
        if key not in NAMED_AZIMUTHS:
            raise InvalidParameterError(f"light direction should be one of {sorted(NAMED_AZIMUTHS)} but is {name!r}")
        return cls(azimuth=NAMED_AZIMUTHS[key], **overrides)

    @property
    def named_direction(self) -> str | None:
        """'left'/'right'/'top'/'bottom' when this light is exactly an official one, else None."""
        default = Light()
        # Softness only shapes the preview, so it does not stop a light from being an official one.
        plain = (self.elevation, parse_hex_color(self.color), self.intensity, self.ambient) == (
            default.elevation,
            parse_hex_color(default.color),
            default.intensity,
            default.ambient,
        )
        for name, az in NAMED_AZIMUTHS.items():
            if plain and self.azimuth == az:
                return name
        return None

    @property
    def direction(self) -> np.ndarray:
        """Unit vector toward the light: x right, y up, z toward the camera."""
        az, el = math.radians(self.azimuth), math.radians(self.elevation)
        return np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])

    @property
    def rgb(self) -> np.ndarray:
        """Light colour as three floats in [0, 1]."""
        return np.array(parse_hex_color(self.color), dtype=np.float64) / UINT8_MAX

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Light:
        """Inverse of `to_dict`; unknown keys are an error so a typo never passes silently."""
        return from_known_fields(cls, data, "light")


def _finite(name: str, value: Any) -> float:
    """`value` as a finite float, or InvalidParameterError naming it."""
    if isinstance(value, bool):
        raise InvalidParameterError(f"{name} should be a number but is {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name} should be a number but is {value!r}") from None
    if not math.isfinite(number):
        raise InvalidParameterError(f"{name} should be a finite number but is {value!r}")
    return number


def parse_hex_color(color: str) -> tuple[int, int, int]:
    """'#rrggbb' (or 'rgb') to an (r, g, b) tuple of ints."""
    text = str(color).strip().lstrip("#")
    if len(text) == 3:
        text = "".join(c * 2 for c in text)
    try:
        if len(text) != 6 or text.strip("0123456789abcdefABCDEF"):  # int(..., 16) would take '-f' and ' f'
            raise ValueError
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    except ValueError:
        raise InvalidParameterError(f"color should be a hex colour like '#ffcc88' but is {color!r}") from None


def _check_size(width: Any, height: Any) -> None:
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_IMAGE_SIDE:
            raise InvalidParameterError(f"{name} should be an integer in [1, {MAX_IMAGE_SIDE}] but is {value!r}")


def _official_gradient(direction: str, width: int, height: int, bright: int, dark: int) -> np.ndarray:
    """Exactly the official demos' gradients (np.linspace, tiled, truncated to uint8)."""
    if direction in ("left", "right"):
        ends = (bright, dark) if direction == "left" else (dark, bright)
        image = np.tile(np.linspace(*ends, width), (height, 1))
    else:
        ends = (bright, dark) if direction == "top" else (dark, bright)
        image = np.tile(np.linspace(*ends, height)[:, None], (1, width))
    return np.stack((image,) * 3, axis=-1).astype(np.uint8)


def light_gradient(light: Light, width: int, height: int, bright: int = FC_BRIGHT, dark: int = FC_DARK) -> np.ndarray:
    """HxWx3 uint8 gradient rising toward the light; the official image when `light` is a named one."""
    _check_size(width, height)
    named = light.named_direction
    if named is not None:
        return _official_gradient(named, width, height, bright, dark)
    az = math.radians(light.azimuth)
    dx, dy = math.cos(az), math.sin(az)
    xs = np.linspace(-1.0, 1.0, width)[None, :]
    ys = np.linspace(1.0, -1.0, height)[:, None]  # image rows go down, light 'top' is +y
    proj = xs * dx + ys * dy
    # Dividing by the L1 norm makes the far corner exactly 0 and the lit corner exactly 1 at any angle,
    # and reduces to the official linspace when the angle is a named one.
    span = max(abs(dx) + abs(dy), 1e-6)
    t = (proj / span + 1.0) * 0.5  # 0 at the far side, 1 at the lit side
    # Higher elevation flattens the gradient toward a frontal (uniform) light; grazing light is steepest.
    flat = math.sin(math.radians(light.elevation))
    t = t * (1.0 - flat) + flat
    t = np.clip(light.ambient + (1.0 - light.ambient) * t * light.intensity, 0.0, 1.0)
    value = dark + (bright - dark) * t[..., None] * light.rgb[None, None, :]
    return np.clip(value, 0, UINT8_MAX).astype(np.uint8)


def fc_initial_image(light: Light, width: int, height: int) -> np.ndarray:
    """The fc initial-latent image for `light` (255 -> 0 from the lit side)."""
    return light_gradient(light, width, height, FC_BRIGHT, FC_DARK)


def fbc_background(light: Light, width: int, height: int) -> np.ndarray:
    """The fbc background condition for `light` (224 -> 32 from the lit side)."""
    return light_gradient(light, width, height, FBC_BRIGHT, FBC_DARK)


def to_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Grey, RGB or RGBA uint8 (or float in [0, 1]) to HxWx3 uint8; alpha is dropped."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], RGB, axis=2)
    if array.ndim != 3 or array.shape[2] not in (RGB, RGBA) or min(array.shape[:2]) < 1:
        raise InvalidParameterError(f"{name} should be HxW, HxWx3 or HxWx4 but has shape {array.shape}")
    array = array[:, :, :RGB]
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if not (math.isfinite(low) and math.isfinite(high)) or low < 0.0 or high > 1.0:
            raise InvalidParameterError(f"float {name} should hold values in [0, 1] but spans [{low}, {high}]")
        return np.round(array * UINT8_MAX).astype(np.uint8)
    raise InvalidParameterError(f"{name} should be uint8 or float in [0, 1] but has dtype {array.dtype}")


def cover_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale `image` to cover width x height keeping its aspect ratio, then centre-crop."""
    import cv2  # local: keeps `import core.lighting.lights` (pulled in by params) light

    src_h, src_w = image.shape[:2]
    scale = max(width / src_w, height / src_h)
    new_w, new_h = max(width, round(src_w * scale)), max(height, round(src_h * scale))
    # INTER_AREA averages when shrinking (no aliasing); it behaves like bilinear when enlarging.
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=interpolation)
    if resized.ndim == 2:
        resized = resized[:, :, None]
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width])


def light_map_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """A user light map resized (aspect kept) and centre-cropped to height x width x 3 uint8."""
    _check_size(width, height)
    return cover_resize(to_rgb_uint8(image, "light map"), width, height)
