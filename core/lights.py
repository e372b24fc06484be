"""Light specification and the gradient images IC-Light is conditioned on."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import InvalidParameterError

# Azimuth convention: 0 = light from the right, 90 = from the top, 180 = from the left, 270 = from the bottom.
NAMED_AZIMUTHS = {"right": 0.0, "top": 90.0, "left": 180.0, "bottom": 270.0}
FC_BRIGHT, FC_DARK = 255, 0  # official fc initial-latent gradient ends
FBC_BRIGHT, FBC_DARK = 224, 32  # official fbc background gradient ends


@dataclass(frozen=True)
class Light:
    """A placeable light: direction, colour and strength."""

    azimuth: float = 180.0  # degrees, 0 = from the right, counter-clockwise (90 = top)
    elevation: float = 0.0  # degrees, 0 = grazing from the side, 90 = from the camera
    color: str = "#ffffff"  # hex RGB of the light
    intensity: float = 1.0  # multiplier on the lit side, 0..2
    ambient: float = 0.0  # 0..1, light reaching the unlit side
    softness: float = 0.5  # 0..1, how wide the light falls off (shadow softness in the preview)

    def __post_init__(self) -> None:
        object.__setattr__(self, "azimuth", float(self.azimuth) % 360.0)
        if not 0.0 <= float(self.elevation) <= 90.0:
            raise InvalidParameterError(f"elevation should be in [0, 90] degrees but is {self.elevation}")
        parse_hex_color(self.color)
        for name, high in (("intensity", 2.0), ("ambient", 1.0), ("softness", 1.0)):
            value = getattr(self, name)
            if not 0.0 <= float(value) <= high:
                raise InvalidParameterError(f"{name} should be in [0, {high}] but is {value}")

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
        plain = (self.elevation, self.color.lower(), self.intensity, self.ambient) == (
            default.elevation,
            default.color,
            default.intensity,
            default.ambient,
        )
        for name, az in NAMED_AZIMUTHS.items():
            if plain and self.azimuth == az:
                return name
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Light:
        return cls(**data)


def parse_hex_color(color: str) -> tuple[int, int, int]:
    """'#rrggbb' (or 'rgb') to an (r, g, b) tuple of ints."""
    text = str(color).strip().lstrip("#")
    if len(text) == 3:
        text = "".join(c * 2 for c in text)
    try:
        if len(text) != 6:
            raise ValueError
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    except ValueError:
        raise InvalidParameterError(f"color should be a hex colour like '#ffcc88' but is {color!r}") from None


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
    named = light.named_direction
    if named is not None:
        return _official_gradient(named, width, height, bright, dark)
    az = math.radians(light.azimuth)
    dx, dy = math.cos(az), math.sin(az)
    xs = np.linspace(-1.0, 1.0, width)[None, :]
    ys = np.linspace(1.0, -1.0, height)[:, None]  # image rows go down, light 'top' is +y
    proj = xs * dx + ys * dy
    span = max(abs(dx) + abs(dy), 1e-6)
    t = (proj / span + 1.0) * 0.5  # 0 at the far side, 1 at the lit side
    # Higher elevation flattens the gradient toward a frontal (uniform) light.
    flat = math.sin(math.radians(light.elevation))
    t = t * (1.0 - flat) + flat
    t = np.clip(light.ambient + (1.0 - light.ambient) * t * light.intensity, 0.0, 1.0)
    tint = np.array(parse_hex_color(light.color), dtype=np.float64) / 255.0
    value = dark + (bright - dark) * t[..., None] * tint[None, None, :]
    return np.clip(value, 0, 255).astype(np.uint8)


def fc_initial_image(light: Light, width: int, height: int) -> np.ndarray:
    """The fc initial-latent image for `light` (255 -> 0 from the lit side)."""
    return light_gradient(light, width, height, FC_BRIGHT, FC_DARK)


def fbc_background(light: Light, width: int, height: int) -> np.ndarray:
    """The fbc background condition for `light` (224 -> 32 from the lit side)."""
    return light_gradient(light, width, height, FBC_BRIGHT, FBC_DARK)
