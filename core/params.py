"""Generation parameters: one frozen dataclass, validated in one place, plus the enums it uses."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from core.errors import InvalidParameterError
from core.lighting.lights import Light

MAX_SEED = 2**32 - 1
MIN_SIDE, MAX_SIDE = 64, 2048
VAE_SCALE = 8  # pixels per latent cell


class Mode(str, Enum):
    """Which IC-Light model: text+foreground (fc) or text+foreground+background (fbc)."""

    FC = "fc"
    FBC = "fbc"


class LightDirection(str, Enum):
    """The official fc demo's 'Lighting Preference (Initial Latent)' choices."""

    NONE = "none"
    LEFT = "left"
    RIGHT = "right"
    TOP = "top"
    BOTTOM = "bottom"

    @property
    def label(self) -> str:
        return "None" if self is LightDirection.NONE else f"{self.value.title()} Light"


class BGSource(str, Enum):
    """The official fbc demo's 'Background Source' choices, plus LIGHT (gradient from `RelightParams.light`)."""

    UPLOAD = "upload"
    FLIP = "flip"
    LEFT = "left"
    RIGHT = "right"
    TOP = "top"
    BOTTOM = "bottom"
    AMBIENT = "ambient"
    LIGHT = "light"

    @property
    def label(self) -> str:
        return _BG_LABELS[self]


_BG_LABELS = {
    BGSource.UPLOAD: "Use Background Image",
    BGSource.FLIP: "Use Flipped Background Image",
    BGSource.LEFT: "Left Light",
    BGSource.RIGHT: "Right Light",
    BGSource.TOP: "Top Light",
    BGSource.BOTTOM: "Bottom Light",
    BGSource.AMBIENT: "Ambient",
    BGSource.LIGHT: "Custom Light",
}


class Sampler(str, Enum):
    """Samplers offered; DPM++ 2M SDE Karras is the official demos' choice."""

    DPMPP_2M_SDE_KARRAS = "dpmpp_2m_sde_karras"
    DPMPP_2M_KARRAS = "dpmpp_2m_karras"
    DDIM = "ddim"
    EULER_A = "euler_a"


class Matting(str, Enum):
    """How the foreground is cut out before sampling."""

    RMBG = "rmbg"
    BIREFNET = "birefnet"
    ALPHA = "alpha"
    GRABCUT = "grabcut"
    NONE = "none"


class Upscale(str, Enum):
    """Upscaling after sampling."""

    OFF = "off"
    X2 = "x2"
    X4 = "x4"
    P1080 = "1080p"


DEFAULT_ADDED_PROMPT = "best quality"
DEFAULT_NEGATIVE_PROMPT = "lowres, bad anatomy, bad hands, cropped, worst quality"
# Official demo defaults that differ between the two models.
MODE_DEFAULTS: dict[Mode, dict[str, Any]] = {
    Mode.FC: {"steps": 25, "cfg": 2.0},
    Mode.FBC: {"steps": 20, "cfg": 7.0},
}


@dataclass(frozen=True)
class RelightParams:
    """Everything that decides a relight, except the images themselves."""

    mode: Mode = Mode.FC  # fc: text + foreground; fbc: text + foreground + background
    prompt: str = ""  # subject and lighting description
    added_prompt: str = DEFAULT_ADDED_PROMPT  # appended to the prompt as ", <added>"
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    width: int = 512  # low-res pass size in pixels, multiple of 8
    height: int = 640
    num_images: int = 1  # images generated in one batch
    seed: int = 12345  # seeds the single generator that drives both passes
    steps: int = 25  # about this many denoising steps run in each pass
    cfg: float = 2.0  # classifier-free guidance scale; 1 disables the unconditional branch
    lowres_denoise: float = 0.9  # fc with a light: strength of the image-to-image low-res pass
    highres_scale: float = 1.5  # high-res pass size = round(size * scale / 64) * 64
    highres_denoise: float = 0.5  # strength of the high-res image-to-image pass
    sampler: Sampler = Sampler.DPMPP_2M_SDE_KARRAS
    light: Light | None = None  # fc: initial-latent light (None = from noise); fbc: used when bg_source is LIGHT
    bg_source: BGSource = BGSource.UPLOAD  # fbc only: where the background condition comes from
    matting: Matting = Matting.RMBG  # foreground extraction before sampling (GrabCut fallback offline)
    keep_background: bool = False  # keep the original background instead of neutral grey
    restore_details: bool = False  # frequency-separation detail transfer from the input
    detail_radius: float = 5.0  # blur radius in px at 512 px for restore_details (scaled with size)
    preserve_color: float = 0.0  # 0..1: pull the relit chroma toward the original's
    upscale: Upscale = Upscale.OFF
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # free-form notes kept in metadata

    def __post_init__(self) -> None:
        for name, enum in (
            ("mode", Mode),
            ("sampler", Sampler),
            ("bg_source", BGSource),
            ("matting", Matting),
            ("upscale", Upscale),
        ):
            value = getattr(self, name)
            if not isinstance(value, enum):
                object.__setattr__(self, name, coerce_enum(enum, value, name))
        self.validate()

    @classmethod
    def for_mode(cls, mode: Mode | str, **overrides: Any) -> RelightParams:
        """Parameters with the official defaults of `mode`, then `overrides`."""
        mode = coerce_enum(Mode, mode, "mode")
        return cls(mode=mode, **{**MODE_DEFAULTS[mode], **overrides})

    @property
    def positive_prompt(self) -> str:
        """Prompt as the official demos feed it: prompt + ', ' + added prompt."""
        return self.prompt + ", " + self.added_prompt

    @property
    def highres_size(self) -> tuple[int, int]:
        """(width, height) of the high-res pass."""
        return _round64(self.width * self.highres_scale), _round64(self.height * self.highres_scale)

    def validate(self) -> None:
        """Raise InvalidParameterError naming the first out-of-range value."""
        for name in ("width", "height"):
            value = getattr(self, name)
            _check_int(name, value)
            if value % VAE_SCALE or not MIN_SIDE <= value <= MAX_SIDE:
                raise InvalidParameterError(
                    f"{name} should be a multiple of {VAE_SCALE} in [{MIN_SIDE}, {MAX_SIDE}] but is {value}"
                )
        _check_range("steps", self.steps, 1, 100, integer=True)
        _check_range("num_images", self.num_images, 1, 12, integer=True)
        _check_range("seed", self.seed, 0, MAX_SEED, integer=True)
        _check_range("cfg", self.cfg, 1.0, 32.0)
        _check_range("highres_scale", self.highres_scale, 1.0, 3.0)
        for name in ("lowres_denoise", "highres_denoise"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise InvalidParameterError(f"{name} should be in (0.0, 1.0] but is {value!r}")
        radius = self.detail_radius
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 0.5 <= radius <= 64:
            raise InvalidParameterError(f"detail_radius should be in [0.5, 64] px but is {self.detail_radius!r}")
        _check_range("preserve_color", self.preserve_color, 0.0, 1.0)
        for name in ("prompt", "added_prompt", "negative_prompt"):
            if not isinstance(getattr(self, name), str):
                raise InvalidParameterError(f"{name} should be a string but is {getattr(self, name)!r}")
        if self.light is not None and not isinstance(self.light, Light):
            raise InvalidParameterError(f"light should be a Light or None but is {self.light!r}")
        if self.bg_source is BGSource.LIGHT and self.light is None:
            raise InvalidParameterError("bg_source 'light' needs a light (azimuth, elevation, colour) but none is set")

    def replace(self, **changes: Any) -> RelightParams:
        """A copy with `changes` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (enums as values, light as a dict) for PNG metadata."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Enum):
                value = value.value
            elif isinstance(value, Light):
                value = value.to_dict()
            out[f.name] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RelightParams:
        """Inverse of `to_dict`; unknown keys are an error so a typo never passes silently."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidParameterError(f"unknown parameter(s) {unknown}; known: {sorted(names)}")
        data = dict(data)
        if isinstance(data.get("light"), dict):
            data["light"] = Light.from_dict(data["light"])
        return cls(**data)


def _round64(x: float) -> int:
    return int(round(x / 64.0) * 64)


def coerce_enum(enum: type[Enum], value: Any, name: str) -> Any:
    """`enum(value)`, or InvalidParameterError naming `name`, the bad value and the choices."""
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(e.value for e in enum)
        raise InvalidParameterError(f"{name} should be one of {choices} but is {value!r}") from None


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameterError(f"{name} should be an integer but is {value!r}")


def _check_range(name: str, value: Any, low: float, high: float, integer: bool = False) -> None:
    if integer:
        _check_int(name, value)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameterError(f"{name} should be a number but is {value!r}")
    if not low <= value <= high:
        raise InvalidParameterError(f"{name} should be in [{low}, {high}] but is {value}")
