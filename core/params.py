"""Generation parameters: one frozen dataclass, validated in one place, plus the enums it uses."""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Any

from core.errors import InvalidParameterError
from core.lighting.lights import FULL_TURN, MAX_ELEVATION, MAX_INTENSITY, Light
from core.models.lora import LoraSpec, coerce_loras
from core.recipe.fast import FastMode, fast_defaults
from core.schema import Spec, check_value, clean_text, from_known_fields, param, specs

MAX_SEED = 2**32 - 1
MIN_SIDE, MAX_SIDE = 64, 2048
VAE_SCALE = 8  # pixels per latent cell
# Longest prompt (and added / negative prompt) accepted. CLIP reads 75-token chunks and the recipe encodes every
# chunk, so cost grows with length: 4,000 characters are about 1,000 tokens (about 14 chunks), several times any
# descriptive prompt, while a 480 KB prompt held the only worker for 50 s.
MAX_PROMPT_CHARS = 4_000


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
    """Everything that decides a relight, except the images themselves; each field's Spec says its range and help."""

    mode: Mode = param(Mode.FC, help="fc: text + foreground; fbc: text + foreground + background", direct=False)
    prompt: str = param(
        "",
        help="subject and lighting, e.g. 'beautiful woman, sunset over sea'; encoded in 75-token chunks, never cut",
        label="Prompt",
        metavar="TEXT",
        max_length=MAX_PROMPT_CHARS,
        default_text="required unless --from-png",
    )
    added_prompt: str = param(
        DEFAULT_ADDED_PROMPT, help="appended to the prompt as ', <added>'", label="Added prompt", metavar="TEXT",
        max_length=MAX_PROMPT_CHARS,
    )  # fmt: skip
    negative_prompt: str = param(
        DEFAULT_NEGATIVE_PROMPT, help="what the images should not show", label="Negative prompt", metavar="TEXT",
        max_length=MAX_PROMPT_CHARS,
    )  # fmt: skip
    width: int = param(
        512, help="low-res pass width in px", label="Width", metavar="PX", low=MIN_SIDE, high=MAX_SIDE,
        multiple_of=VAE_SCALE, slider=(256, 1024, 64),
    )  # fmt: skip
    height: int = param(
        640, help="low-res pass height in px", label="Height", metavar="PX", low=MIN_SIDE, high=MAX_SIDE,
        multiple_of=VAE_SCALE, slider=(256, 1024, 64),
    )  # fmt: skip
    num_images: int = param(1, help="images generated in one batch", label="Images", low=1, high=12, slider=(1, 12, 1))
    seed: int = param(
        12345, help="seeds the one generator that drives both passes", label="Seed", low=0, high=MAX_SEED
    )
    steps: int = param(
        25, help="denoising steps (about this many run in each pass)", label="Steps", low=1, high=100,
        slider=(1, 100, 1),
    )  # fmt: skip
    cfg: float = param(
        2.0, help="classifier-free guidance scale; 1 skips the unconditional branch", label="CFG scale", low=1.0,
        high=32.0, slider=(1.0, 32.0, 0.01),
    )  # fmt: skip
    lowres_denoise: float = param(
        0.9, help="fc with a light: strength of the image-to-image low-res pass",
        label="Lowres denoise (for initial latent)", low=0.0, low_open=True, high=1.0, slider=(0.1, 1.0, 0.01),
        modes=("fc",),
    )  # fmt: skip
    highres_scale: float = param(
        1.5, help="high-res pass size = round(size * scale / 64) * 64", label="Highres scale", low=1.0, high=3.0,
        slider=(1.0, 3.0, 0.01),
    )  # fmt: skip
    highres_denoise: float = param(
        0.5, help="strength of the high-res image-to-image pass", label="Highres denoise", low=0.0, low_open=True,
        high=1.0, slider=(0.1, 1.0, 0.01), fbc_slider_high=0.9,
    )  # fmt: skip
    sampler: Sampler = param(
        Sampler.DPMPP_2M_SDE_KARRAS, help="sampler (DPM++ 2M SDE Karras is the official demos' one)", label="Sampler"
    )
    light: Light | None = param(
        None, help="fc: initial-latent light (none = from noise); fbc: the gradient of --bg-source light; "
        "an azimuth in degrees: 0 = from the right, 90 = top, 180 = left, 270 = bottom",
        metavar="none|left|right|top|bottom|DEGREES", direct=False, default_text="none",
    )  # fmt: skip
    bg_source: BGSource = param(
        BGSource.UPLOAD, help="fbc only: where the background condition comes from (light = gradient from --light)"
    )
    matting: Matting = param(
        Matting.RMBG, help="foreground extraction before sampling (GrabCut when the model is unavailable offline)",
        label="Background removal",
    )  # fmt: skip
    keep_background: bool = param(
        False, help="keep the original background instead of neutral grey", label="Keep original background"
    )
    restore_details: bool = param(
        False, help="transfer the original's fine detail back (frequency separation)", label="Restore details"
    )
    detail_radius: float = param(
        5.0, help="blur radius of --restore-details at 512 px (scaled with size)", label="Detail radius (px at 512)",
        low=0.5, high=64, unit="px", slider=(1.0, 20.0, 0.5), metavar="PX",
    )  # fmt: skip
    preserve_color: float = param(
        0.0, help="pull the relit colours toward the original's", label="Preserve colour", low=0.0, high=1.0,
        slider=(0.0, 1.0, 0.05),
    )  # fmt: skip
    upscale: Upscale = param(
        Upscale.OFF, help="Real-ESRGAN x4plus upscaling; 1080p = short side exactly 1080", label="Upscale"
    )
    fast: FastMode = param(
        FastMode.OFF, help="few-step mode: the LCM, TCD or Hyper-SD LoRA with its scheduler; sets steps and cfg for "
        "both passes (not trained with IC-Light: results differ from the official recipe; docs/loras.md)",
        label="Fast mode",
    )  # fmt: skip
    loras: tuple[LoraSpec, ...] = param(
        (), help="an SD 1.5 LoRA: a .safetensors path, a file in models/loras/ or a Hub id, with a scale in [-2, 2] "
        "(default 1); repeat for more", label="LoRAs", flag="lora", metavar="SOURCE[:SCALE]", direct=False,
        default_text="none",
    )  # fmt: skip
    extra: dict[str, Any] = param(
        default_factory=dict, compare=False, help="free-form notes kept in the metadata", flag=None
    )

    def __post_init__(self) -> None:
        for name, kind in field_kinds().items():
            value = getattr(self, name)
            if issubclass(kind, Enum) and not isinstance(value, kind):
                object.__setattr__(self, name, coerce_enum(kind, value, name))
            elif kind is str and isinstance(value, str):
                object.__setattr__(self, name, clean_text(value))  # never to the model or the metadata
        object.__setattr__(self, "loras", coerce_loras(self.loras))
        self.validate()

    @classmethod
    def for_mode(cls, mode: Mode | str, **overrides: Any) -> RelightParams:
        """Parameters with the official defaults of `mode`, then fast mode's steps and cfg, then `overrides`."""
        mode = coerce_enum(Mode, mode, "mode")
        fast = fast_defaults(coerce_enum(FastMode, overrides.get("fast", FastMode.OFF), "fast"))
        return cls(mode=mode, **{**MODE_DEFAULTS[mode], **fast, **overrides})

    @property
    def positive_prompt(self) -> str:
        """Prompt as the official demos feed it: prompt + ', ' + added prompt."""
        return self.prompt + ", " + self.added_prompt

    @property
    def highres_size(self) -> tuple[int, int]:
        """(width, height) of the high-res pass."""
        return _round64(self.width * self.highres_scale), _round64(self.height * self.highres_scale)

    def validate(self) -> None:
        """Raise InvalidParameterError naming the first value outside its Spec."""
        kinds = field_kinds()
        for name, spec in PARAM_SPECS.items():
            check_value(name, getattr(self, name), kinds[name], spec)
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
            elif f.name == "loras":
                value = [spec.to_text() for spec in value]
            out[f.name] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RelightParams:
        """Inverse of `to_dict`; unknown keys are an error so a typo never passes silently."""
        if isinstance(data, dict) and isinstance(data.get("light"), dict):
            data = {**data, "light": Light.from_dict(data["light"])}
        return from_known_fields(cls, data, "parameter")


PARAM_SPECS: dict[str, Spec] = specs(RelightParams)  # every parameter's range, help, label and flag


@functools.cache
def field_kinds() -> dict[str, type]:
    """The plain type (int, float, bool, str, an Enum, Light, dict) of each RelightParams field."""
    kinds = {}
    for name, hint in typing.get_type_hints(RelightParams).items():
        if typing.get_origin(hint) in (dict, tuple):
            kinds[name] = typing.get_origin(hint)
        else:  # `X | None` is X
            kinds[name] = next((arg for arg in typing.get_args(hint) if arg is not type(None)), hint)
    return kinds


def _round64(x: float) -> int:
    return int(round(x / 64.0) * 64)


def coerce_enum(enum: type[Enum], value: Any, name: str) -> Any:
    """`enum(value)`, or InvalidParameterError naming `name`, the bad value and the choices."""
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(e.value for e in enum)
        raise InvalidParameterError(f"{name} should be one of {choices} but is {value!r}") from None


@dataclass(frozen=True)
class LightControl:
    """One property of the placed light as the CLI (--NAME) and the apps' light pad (form field NAME) offer it."""

    field: str  # the Light field it sets
    spec: Spec  # range, help, pad label and slider; Light itself validates


# The light's controls, keyed by their form name (the CLI flag is the same with dashes). Light checks the values;
# the ranges here are Light's, for --help, the README and the pad sliders.
LIGHT_CONTROLS: dict[str, LightControl] = {
    "azimuth": LightControl("azimuth", Spec(
        "light direction in degrees: 0 = from the right, 90 = top", flag=None,
        label="Azimuth (0 = right, 90 = top)", low=0, high=FULL_TURN, slider=(0, FULL_TURN, 1),
    )),
    "elevation": LightControl("elevation", Spec(
        "light elevation in degrees: 0 = grazing from the side, 90 = from the camera", label="Elevation (90 = camera)",
        low=0, high=MAX_ELEVATION, slider=(0, MAX_ELEVATION, 1), metavar="DEG",
    )),
    "light_color": LightControl("color", Spec(
        "light colour as #rrggbb, e.g. '#ffb070'", label="Light colour", metavar="HEX",
    )),
    "light_intensity": LightControl("intensity", Spec(
        "light intensity on the lit side", label="Intensity", low=0, high=MAX_INTENSITY,
        slider=(0, MAX_INTENSITY, 0.05), metavar="X",
    )),
    "ambient": LightControl("ambient", Spec(
        "light reaching the unlit side", label="Ambient", low=0, high=1, slider=(0, 1, 0.05), metavar="X",
    )),
    "light_softness": LightControl("softness", Spec(
        "light size: 0 = a hard point light (sharp shadows), 1 = a big soft box (wide fall-off); shapes the instant "
        "preview and the light pad", label="Softness", low=0, high=1, slider=(0, 1, 0.05), metavar="X",
    )),
}  # fmt: skip
