"""Lighting suggestions: a vision model proposes three IC-Light lighting prompts, with an offline fallback."""

from __future__ import annotations

import base64
import colorsys
import dataclasses
import io
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from core.errors import InvalidParameterError
from core.images import load_image
from core.lights import NAMED_AZIMUTHS, Light, parse_hex_color
from core.prompt_text import MAX_LIGHTING_WORDS, clean_lighting, lighting_key, replace_lighting

log = logging.getLogger(__name__)

MOODS: tuple[str, ...] = ("dramatic", "warm", "cool", "cinematic", "calm", "mysterious", "natural")
NUM_SUGGESTIONS = 3
SOURCE_REMOTE, SOURCE_OFFLINE = "remote", "offline"

# Configuration: environment variable names and defaults.
ENV_API_KEY, ENV_BASE_URL, ENV_MODEL = "OPENAI_API_KEY", "OPENAI_BASE_URL", "ICLIGHT_SUGGEST_MODEL"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_TIMEOUT_S = 20.0  # a suggestion is a convenience: never keep the UI waiting longer than this per try
DEFAULT_MAX_RETRIES = 1
DEFAULT_BASE_URL = "https://api.openai.com/v1"
LOCAL_SERVER_KEY = "no-key"  # local OpenAI-compatible servers ignore the key, but the SDK will not run without one
REDACTED = "***"
MAX_LOGGED_DETAIL = 300  # characters of a server error message worth logging

# What the model is sent.
IMAGE_MAX_SIDE = 512  # OpenAI's 'low' detail sees 512 px anyway; smaller uploads keep local servers fast
JPEG_QUALITY = 85
EXAMPLE_PROMPTS = (
    "sunshine from window",
    "neon light, city",
    "sunset over sea",
    "golden time",
    "soft studio lighting",
)

NOTICE_NOT_CONFIGURED = (
    f"Offline suggestions: no suggestion server is configured (set {ENV_API_KEY} or {ENV_BASE_URL} to use a vision "
    "model)."
)
NOTICE_FAILED = "Offline suggestions: the suggestion server could not be used ({reason})."
NOTICE_TOPPED_UP = "{missing} of {total} suggestions are offline suggestions: the model returned only {got} usable."


@dataclass(frozen=True)
class SuggestConfig:
    """Where lighting suggestions come from; `from_env` reads it from the environment once."""

    api_key: str | None = None  # secret: never logged, shown or stored; hidden by __repr__
    base_url: str | None = None  # any OpenAI-compatible server (vLLM, Ollama, llama.cpp); None = OpenAI
    model: str = DEFAULT_MODEL  # a vision-capable chat model
    timeout: float = DEFAULT_TIMEOUT_S  # seconds per request, so a dead server cannot hang the caller
    max_retries: int = DEFAULT_MAX_RETRIES  # the SDK retries timeouts, lost connections, 408/409/429 and 5xx

    def __post_init__(self) -> None:
        for name in ("api_key", "base_url"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidParameterError(f"{name} should be a string or None but is a {type(value).__name__}")
        if self.base_url is not None and not _is_http_url(self.base_url):
            raise InvalidParameterError(
                f"base_url should be an http(s) URL like http://localhost:8000/v1 but is {self.base_url!r}"
            )
        if not isinstance(self.model, str) or not self.model.strip():
            raise InvalidParameterError(f"model should be a non-empty model name but is {self.model!r}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or not self.timeout > 0:
            raise InvalidParameterError(f"timeout should be a positive number of seconds but is {self.timeout!r}")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise InvalidParameterError(f"max_retries should be an integer >= 0 but is {self.max_retries!r}")

    def __repr__(self) -> str:
        key = None if self.api_key is None else REDACTED
        return (
            f"SuggestConfig(api_key={key!r}, base_url={self.base_url!r}, model={self.model!r}, "
            f"timeout={self.timeout!r}, max_retries={self.max_retries!r})"
        )

    @property
    def enabled(self) -> bool:
        """Whether a server is configured: a key (OpenAI) or a base URL (a local server needs no key)."""
        return bool(self.api_key or self.base_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SuggestConfig:
        """Configuration from OPENAI_API_KEY, OPENAI_BASE_URL and ICLIGHT_SUGGEST_MODEL; empty values are unset."""
        env = os.environ if environ is None else environ
        return cls(
            api_key=env.get(ENV_API_KEY, "").strip() or None,
            base_url=env.get(ENV_BASE_URL, "").strip() or None,
            model=env.get(ENV_MODEL, "").strip() or DEFAULT_MODEL,
        )


@dataclass(frozen=True)
class Suggestion:
    """One lighting idea: a short prompt and the light that goes with it."""

    prompt: str  # IC-Light lighting phrase of at most six words ("sunset over sea")
    light: Light  # direction and colour for the initial latent (fc) or background gradient (fbc)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "light": self.light.to_dict()}


@dataclass(frozen=True)
class SuggestionResult:
    """Three suggestions and where they came from."""

    suggestions: tuple[Suggestion, ...]  # NUM_SUGGESTIONS of them, with distinct prompts
    source: str  # SOURCE_REMOTE (the model) or SOURCE_OFFLINE (computed from the image)
    notice: str | None = None  # for the user: why the suggestions are (partly) offline; None when all remote

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "notice": self.notice,
            "suggestions": [suggestion.to_dict() for suggestion in self.suggestions],
        }


def suggest_lighting(
    image: np.ndarray,
    mood: str | None = None,
    matte: np.ndarray | None = None,
    config: SuggestConfig | None = None,
) -> SuggestionResult:
    """Three lighting suggestions for `image`: from the configured vision model, else computed offline."""
    # 1. Check inputs: bad input is the caller's error, unlike an unavailable service.
    image = _check_image(image)
    mood = _check_mood(mood)
    matte = _check_matte(matte, image)
    config = SuggestConfig.from_env() if config is None else config

    # 2. No server configured: offline, and say so.
    if not config.enabled:
        return SuggestionResult(offline_suggestions(image, mood, matte), SOURCE_OFFLINE, NOTICE_NOT_CONFIGURED)

    # 3. Ask the model; whatever goes wrong with the service ends in offline suggestions, never an error.
    import openai  # lazy: only needed when a server is configured

    try:
        remote = _remote_suggestions(image, mood, config)
    except (openai.OpenAIError, ValueError) as err:
        reason = _failure_reason(err, config)
        # The server's own words help debugging, but not for a refused key: that message is about the key.
        quiet = isinstance(err, (_BadReply, openai.AuthenticationError, openai.PermissionDeniedError))
        detail = "" if quiet else f" ({_redact(str(err), config.api_key)[:MAX_LOGGED_DETAIL]})"
        log.warning("Lighting suggestions from %r failed: %s%s; using offline ones", config.model, reason, detail)
        notice = NOTICE_FAILED.format(reason=reason)
        return SuggestionResult(offline_suggestions(image, mood, matte), SOURCE_OFFLINE, notice)

    # 4. Top up a short (but usable) reply with offline ideas that are not already there.
    if len(remote) == NUM_SUGGESTIONS:
        return SuggestionResult(tuple(remote), SOURCE_REMOTE, None)
    seen = {lighting_key(s.prompt) for s in remote}
    extra = [s for s in _ranked_offline(image, mood, matte) if lighting_key(s.prompt) not in seen]
    notice = NOTICE_TOPPED_UP.format(missing=NUM_SUGGESTIONS - len(remote), total=NUM_SUGGESTIONS, got=len(remote))
    return SuggestionResult(tuple(remote + extra[: NUM_SUGGESTIONS - len(remote)]), SOURCE_REMOTE, notice)


def result_to_json(result: SuggestionResult) -> str:
    """The result as pretty JSON (what `python -m core suggest` prints)."""
    return json.dumps(result.to_dict(), indent=2)


def suggest_json(image_path: str | Path, mood: str | None = None, config: SuggestConfig | None = None) -> str:
    """`python -m core suggest --image PATH [--mood MOOD]`: load the image, suggest, return the JSON text."""
    loaded = load_image(image_path)
    matte = loaded.alpha if loaded.has_meaningful_alpha else None  # an all-opaque alpha says nothing about shape
    return result_to_json(suggest_lighting(loaded.rgb, mood=mood, matte=matte, config=config))


def apply_suggestion_to_prompt(prompt: str, suggestion_prompt: str) -> str:
    """`prompt` with its lighting part replaced by the suggestion, keeping the subject part."""
    return replace_lighting(prompt, suggestion_prompt)


# ---------------------------------------------------------------------------------------------------------------------
# Input checks


def _check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__)
        raise InvalidParameterError(f"image should be an HxWx3 uint8 array but is shape {shape}, dtype {dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidParameterError(f"image should not be empty but is shape {image.shape}")
    return image


def _check_mood(mood: Any) -> str | None:
    if mood is None or (isinstance(mood, str) and not mood.strip()):
        return None
    key = mood.strip().lower() if isinstance(mood, str) else mood
    if key not in MOODS:
        raise InvalidParameterError(f"mood should be one of {', '.join(MOODS)} (or empty) but is {mood!r}")
    return key


def _check_matte(matte: Any, image: np.ndarray) -> np.ndarray | None:
    """The matte as HxW float in [0, 1] (uint8 mattes are 0..255), or None."""
    if matte is None:
        return None
    if not isinstance(matte, np.ndarray) or matte.dtype.kind not in "buif":
        raise InvalidParameterError(f"matte should be a numeric HxW array but is {type(matte).__name__}")
    if matte.ndim == 3 and matte.shape[2] == 1:
        matte = matte[..., 0]
    if matte.shape != image.shape[:2]:
        raise InvalidParameterError(f"matte should be shape {image.shape[:2]} like the image but is {matte.shape}")
    scale = 255.0 if matte.dtype == np.uint8 else 1.0
    return np.clip(matte.astype(np.float32) / scale, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Remote: Chat Completions with the image and a JSON schema

RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "suggestions": {
            "type": "array",
            "minItems": NUM_SUGGESTIONS,
            "maxItems": NUM_SUGGESTIONS,
            "items": {
                "type": "object",
                "properties": {
                    "prompt": {
                        "type": "string",
                        "description": f"IC-Light lighting prompt, at most {MAX_LIGHTING_WORDS} words",
                    },
                    "azimuth": {
                        "type": "number",
                        "minimum": 0,
                        "maximum": 360,
                        "description": "degrees the light comes from: 0 right, 90 top, 180 left, 270 bottom",
                    },
                    "elevation": {
                        "type": "number",
                        "minimum": 0,
                        "maximum": 90,
                        "description": "degrees: 0 grazing from the side, 90 straight from the camera",
                    },
                    "color": {"type": "string", "pattern": "^#[0-9a-fA-F]{6}$", "description": "light colour"},
                },
                "required": ["prompt", "azimuth", "elevation", "color"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["suggestions"],
    "additionalProperties": False,
}
RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "lighting_suggestions", "strict": True, "schema": RESPONSE_SCHEMA},
}
_SYSTEM_PROMPT = (
    "You are the lighting director for IC-Light, a diffusion model that relights the subject of a photo from a short "
    f"text prompt. Propose {NUM_SUGGESTIONS} clearly different lighting setups that would suit the image. Each prompt "
    f"is a lighting phrase of at most {MAX_LIGHTING_WORDS} words about light and atmosphere only, never the subject, "
    f"in the style of: {'; '.join(EXAMPLE_PROMPTS)}. For each, give the main light: azimuth in degrees it comes from "
    "as seen in the image (0 = right, 90 = top, 180 = left, 270 = bottom), elevation in degrees (0 = grazing from "
    "the side, 90 = straight from the camera) and colour as hex (#rrggbb)."
)
_PLAIN_JSON_PROMPT = (
    "Reply with JSON only, no prose and no code fences, in exactly this shape with "
    f"{NUM_SUGGESTIONS} items: "
    + json.dumps({"suggestions": [{"prompt": "golden time", "azimuth": 180, "elevation": 20, "color": "#ffc880"}]})
)
_FENCE = re.compile(r"```(?:json)?", re.IGNORECASE)


class _BadReply(ValueError):
    """The server answered, but not with usable suggestions; the message is safe to show."""


def _remote_suggestions(image: np.ndarray, mood: str | None, config: SuggestConfig) -> list[Suggestion]:
    """Up to three cleaned suggestions from the model; raises openai.OpenAIError or ValueError (a bad reply)."""
    import openai  # lazy: importing the SDK costs a noticeable fraction of a second

    data_url = _data_url(image)
    with openai.OpenAI(
        api_key=config.api_key or LOCAL_SERVER_KEY,
        base_url=config.base_url or DEFAULT_BASE_URL,  # explicit, so the config is the only source of truth
        timeout=config.timeout,
        max_retries=config.max_retries,
    ) as client:
        try:
            completion = client.chat.completions.create(
                model=config.model,
                messages=_messages(data_url, mood, plain_json=False),
                response_format=RESPONSE_FORMAT,
            )
        except (openai.BadRequestError, openai.UnprocessableEntityError) as err:
            # Older vLLM, llama.cpp and Ollama builds reject json_schema: ask for the same JSON in words instead.
            log.info("%r rejected structured output (HTTP %s); asking for plain JSON", config.model, err.status_code)
            completion = client.chat.completions.create(
                model=config.model, messages=_messages(data_url, mood, plain_json=True)
            )
    payload = _parse_reply(_reply_text(completion))
    suggestions = _suggestions_from_payload(payload, config.api_key)
    if not suggestions:
        raise _BadReply("the reply had no usable suggestions")
    return suggestions


def _data_url(image: np.ndarray) -> str:
    """The image as a base64 JPEG data: URL, at most IMAGE_MAX_SIDE pixels a side."""
    picture = Image.fromarray(image)
    picture.thumbnail((IMAGE_MAX_SIDE, IMAGE_MAX_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _messages(data_url: str, mood: str | None, plain_json: bool) -> list[dict[str, Any]]:
    request = f"Mood: {mood}." if mood else "Mood: whatever suits the image best."
    if plain_json:
        request += " " + _PLAIN_JSON_PROMPT
    return [
        {"role": "system", "content": _SYSTEM_PROMPT},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": request},
                {"type": "image_url", "image_url": {"url": data_url, "detail": "low"}},
            ],
        },
    ]


def _reply_text(completion: Any) -> str:
    try:
        text = completion.choices[0].message.content
    except (AttributeError, IndexError, TypeError):  # a server that answers 200 with something else
        raise _BadReply("the reply was not a chat completion") from None
    if not isinstance(text, str) or not text.strip():
        raise _BadReply("the reply was empty")
    return text


def _parse_reply(text: str) -> Any:
    """The JSON value in a reply, tolerating code fences and prose around it (plain-JSON servers add both)."""
    text = _FENCE.sub("", text).strip()
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if starts:
        try:
            return json.JSONDecoder().raw_decode(text, min(starts))[0]
        except json.JSONDecodeError:
            pass
    raise _BadReply("the reply was not valid JSON")


def _suggestions_from_payload(payload: Any, api_key: str | None) -> list[Suggestion]:
    """Valid, cleaned, distinct suggestions (at most three) from the model's JSON."""
    items = payload.get("suggestions") if isinstance(payload, dict) else payload
    if not isinstance(items, list):
        return []
    out: list[Suggestion] = []
    seen: set[str] = set()
    for item in items:
        raw = item.get("prompt") if isinstance(item, dict) else item
        prompt = clean_lighting(raw)
        key = lighting_key(prompt)
        # A server that echoes the key back must not get it into the UI.
        if not key or key in seen or (api_key and api_key in prompt):
            continue
        seen.add(key)
        out.append(Suggestion(prompt, _light_from_item(item if isinstance(item, dict) else {})))
        if len(out) == NUM_SUGGESTIONS:
            break
    return out


def _light_from_item(item: Mapping[str, Any]) -> Light:
    """A Light from the model's azimuth/elevation/colour; out-of-range values are clamped, junk gets defaults."""
    default = Light()
    azimuth = _number(item.get("azimuth"))
    if azimuth is None and isinstance(item.get("azimuth"), str):  # "left" instead of 180
        azimuth = NAMED_AZIMUTHS.get(item["azimuth"].strip().lower())
    elevation = _number(item.get("elevation"))
    elevation = default.elevation if elevation is None else min(max(elevation, 0.0), 90.0)
    color = item.get("color")
    try:
        color = "#{:02x}{:02x}{:02x}".format(*parse_hex_color(color)) if isinstance(color, str) else default.color
    except InvalidParameterError:
        color = default.color
    return Light(azimuth=default.azimuth if azimuth is None else azimuth, elevation=elevation, color=color)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _failure_reason(err: Exception, config: SuggestConfig) -> str:
    """A short, key-free reason for the notice; built from the error type, not from what the server said."""
    import openai

    if isinstance(err, openai.APITimeoutError):
        return f"no answer within {config.timeout:g} s"
    if isinstance(err, openai.APIConnectionError):
        return "could not connect"
    if isinstance(err, openai.AuthenticationError):
        return "the API key was refused (HTTP 401)"
    if isinstance(err, openai.APIStatusError):
        return f"the server answered HTTP {err.status_code}"
    if isinstance(err, _BadReply):
        return str(err)
    return "the answer could not be read"  # e.g. a 200 whose body is not JSON: the SDK raises a bare ValueError


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (parses the port: raises ValueError for "host:abc")
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, REDACTED) if secret else text


# ---------------------------------------------------------------------------------------------------------------------
# Offline: curated IC-Light prompts ranked by mood and by what the image looks like

TRAITS = frozenset("dark bright colourful grey warm-cast cool-cast contrasty flat portrait object scene".split())


@dataclass(frozen=True)
class LightingPreset:
    """A curated IC-Light lighting prompt, the light it implies, and when it suits."""

    prompt: str  # at most six words: the official demos' quick prompts and phrases in their style
    light: Light
    moods: frozenset[str]  # subset of MOODS
    suits: frozenset[str]  # subset of TRAITS: images this lighting flatters


# prompt | azimuth elevation colour intensity ambient softness | moods | image traits it suits
_PRESET_TABLE = """
sunshine from window | 180 30 #fff0d0 1.2 .25 .4 | warm natural calm | bright warm-cast portrait
shadow from window | 180 20 #fff4e0 1.3 .05 .2 | dramatic mysterious cinematic | bright grey
sunset over sea | 180 5 #ff9a5a 1.2 .2 .6 | warm cinematic calm | warm-cast colourful scene
golden time | 0 15 #ffb870 1.1 .3 .6 | warm natural cinematic | warm-cast bright portrait
neon light, city | 0 10 #ff3cc8 1.3 .15 .4 | cinematic dramatic | dark colourful cool-cast
sci-fi RGB glowing, cyberpunk | 180 5 #3cf0ff 1.4 .1 .3 | dramatic cinematic cool | dark colourful contrasty
soft studio lighting | 90 60 #ffffff 1.0 .45 .9 | calm natural | grey flat portrait object
natural lighting | 90 45 #fffaf0 1.0 .4 .8 | natural calm | bright flat scene
warm atmosphere, at home, bedroom | 180 25 #ffc88a .9 .35 .8 | warm calm | dark warm-cast portrait
home atmosphere, cozy bedroom illumination | 0 30 #ffb56b .9 .4 .85 | warm calm natural | warm-cast flat
magic lit | 270 20 #9a7bff 1.3 .15 .5 | mysterious dramatic | dark colourful
evil, gothic, Yharnam | 90 30 #aab8cc 1.1 .05 .3 | mysterious dramatic | dark grey contrasty
light and shadow | 0 20 #ffffff 1.4 .05 .2 | dramatic cinematic | grey contrasty object
neon, Wong Kar-wai, warm | 0 15 #ff5a3c 1.2 .2 .5 | cinematic warm mysterious | dark colourful warm-cast
moonlight through window | 180 40 #9fb8ff .8 .1 .5 | mysterious calm cool | dark cool-cast grey
blue hour, soft ambient light | 90 30 #8fb0ff .9 .4 .8 | calm cool cinematic | cool-cast flat scene
rim light, dark background | 0 0 #ffffff 1.5 0 .15 | dramatic cinematic mysterious | dark contrasty portrait object
spotlight from above, studio | 90 50 #ffffff 1.5 .05 .25 | dramatic | object contrasty dark
overcast daylight, soft shadows | 90 70 #eef2ff .9 .55 1.0 | calm natural cool | flat grey bright scene
campfire glow | 270 10 #ff8a3c 1.2 .1 .5 | warm mysterious dramatic | dark warm-cast
cold fluorescent light | 90 60 #dff4ff 1.0 .3 .7 | cool mysterious | cool-cast grey flat
teal and orange, cinematic lighting | 180 15 #ffa060 1.2 .25 .5 | cinematic warm | colourful scene
bright sunlight, hard shadows | 45 50 #fff6e0 1.5 .15 .15 | dramatic natural | bright contrasty scene
foggy morning, diffused light | 90 60 #e6ecf2 .8 .6 1.0 | calm mysterious cool | flat grey cool-cast
candlelight, warm glow | 270 15 #ffa64d 1.0 .15 .7 | warm calm mysterious | dark warm-cast portrait
"""


def _parse_presets(table: str) -> tuple[LightingPreset, ...]:
    """The preset table above as LightingPresets (a table reads better than 25 four-line constructor calls)."""
    presets = []
    for row in table.strip().splitlines():
        prompt, light, moods, suits = (cell.strip() for cell in row.split("|"))
        azimuth, elevation, color, intensity, ambient, softness = light.split()
        numbers = (float(value) for value in (azimuth, elevation, intensity, ambient, softness))
        azimuth, elevation, intensity, ambient, softness = numbers
        preset = LightingPreset(
            prompt,
            Light(azimuth, elevation, color, intensity, ambient, softness),
            frozenset(moods.split()),
            frozenset(suits.split()),
        )
        assert preset.moods <= set(MOODS) and preset.suits <= TRAITS, preset
        assert len(prompt.split()) <= MAX_LIGHTING_WORDS, preset
        presets.append(preset)
    return tuple(presets)


LIGHTING_PRESETS: tuple[LightingPreset, ...] = _parse_presets(_PRESET_TABLE)

MOOD_WEIGHT = 10.0  # more than all matching traits together: the user's mood always wins over image statistics
# Exposure matters most to what looks plausible (neon on a sunlit snapshot does not), so it counts double.
TRAIT_WEIGHTS = {"dark": 2.0, "bright": 2.0}
DIVERSITY_PENALTY = 0.5  # less than one trait: only breaks ties in favour of a different light direction

STATS_MAX_SIDE = 256  # statistics from every n-th pixel up to this size: the same answer in a fraction of the time
SUBJECT_ALPHA = 0.5  # matte value above which a pixel belongs to the subject
MIN_SUBJECT_FRACTION = 0.01  # a matte covering less than this is ignored (statistics of a handful of pixels lie)
LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601, as in JPEG / PIL's 'L'
DARK_LUMA, BRIGHT_LUMA = 0.3, 0.6
FLAT_CONTRAST, HIGH_CONTRAST = 0.12, 0.25  # standard deviation of luma
GREY_COLOURFULNESS, COLOURFUL = 8.0, 50.0  # Hasler & Suesstrunk 2003 metric: 'not colourful' .. 'quite colourful'
QUANT_SHIFT = 6  # 8-bit channels >> 6 = 4 levels each, 64 colour bins for the dominant colours
DOMINANT_BINS = 3
CAST_MIN_SATURATION, CAST_MIN_SHARE = 0.2, 0.15  # a dominant colour this saturated and common sets the colour cast
WARM_HUE_BELOW, WARM_HUE_ABOVE = 60.0, 330.0  # degrees: reds, oranges, yellows
COOL_HUES = (160.0, 280.0)  # degrees: cyans and blues
SIDE_LIT_BALANCE = 0.04  # right-minus-left luma above this: the photo is already lit from that side
SCENE_COVERAGE = 0.85  # a matte covering this much of the frame is the whole scene, not a cut-out subject
FULL_BODY_ASPECT = 1.6  # bounding box height / width of a standing person
HEAD_TO_SHOULDERS = 0.75  # head band narrower than this fraction of the shoulder band: a head-and-shoulders crop
BOTTOM_EDGE = 0.95  # a matte reaching this far down is cut by the frame, as portraits are


@dataclass(frozen=True)
class _ImageFacts:
    traits: frozenset[str]  # subset of TRAITS
    side_balance: float  # right-minus-left luma of the subject: > 0 lit from the right


def offline_suggestions(
    image: np.ndarray, mood: str | None = None, matte: np.ndarray | None = None
) -> tuple[Suggestion, ...]:
    """Three distinct lighting ideas picked from LIGHTING_PRESETS by mood and by what the image looks like."""
    return tuple(_ranked_offline(image, mood, matte)[:NUM_SUGGESTIONS])


def _ranked_offline(image: np.ndarray, mood: str | None, matte: np.ndarray | None) -> list[Suggestion]:
    """Every preset as a suggestion, best first, lights mirrored to agree with the photo's own shading."""
    image, mood, matte = _check_image(image), _check_mood(mood), _check_matte(matte, image)
    facts = _image_facts(image, matte)
    candidates = [
        (_score(preset, mood, facts.traits), preset.prompt, _agree(preset, facts)) for preset in LIGHTING_PRESETS
    ]
    ranked: list[Suggestion] = []
    while candidates:
        # max() keeps the first of equals, so the table order settles exact ties deterministically.
        best = max(
            candidates,
            key=lambda c: c[0] - DIVERSITY_PENALTY * sum(s.light.azimuth == c[2].azimuth for s in ranked),
        )
        candidates.remove(best)
        ranked.append(Suggestion(best[1], best[2]))
    return ranked


def _score(preset: LightingPreset, mood: str | None, traits: frozenset[str]) -> float:
    matched = sum(TRAIT_WEIGHTS.get(trait, 1.0) for trait in preset.suits & traits)
    return MOOD_WEIGHT * (mood in preset.moods) + matched


def _agree(preset: LightingPreset, facts: _ImageFacts) -> Light:
    """Mirror a side light to the side the photo is already lit from, so relit shading does not fight the original."""
    light = preset.light
    horizontal = math.cos(math.radians(light.azimuth))
    if abs(facts.side_balance) < SIDE_LIT_BALANCE or abs(horizontal) < 1e-6:
        return light
    if (horizontal > 0) == (facts.side_balance > 0):
        return light
    return dataclasses.replace(light, azimuth=(180.0 - light.azimuth) % 360.0)


def _image_facts(image: np.ndarray, matte: np.ndarray | None) -> _ImageFacts:
    """Brightness, contrast, colourfulness, colour cast, lit side and subject shape, as traits."""
    step = math.ceil(max(image.shape[:2]) / STATS_MAX_SIDE)
    image = image[::step, ::step]
    matte = None if matte is None else matte[::step, ::step]
    mask = None if matte is None else matte > SUBJECT_ALPHA
    if mask is not None and mask.mean() < MIN_SUBJECT_FRACTION:
        mask = None
    subject = np.ones(image.shape[:2], bool) if mask is None else mask

    rgb = image[subject].astype(np.float64)  # N x 3, 0..255
    luma = rgb @ LUMA / 255.0
    traits: set[str] = set()
    brightness, contrast = float(luma.mean()), float(luma.std())
    traits |= {"dark"} if brightness < DARK_LUMA else {"bright"} if brightness > BRIGHT_LUMA else set()
    traits |= {"flat"} if contrast < FLAT_CONTRAST else {"contrasty"} if contrast > HIGH_CONTRAST else set()
    colourfulness = _colourfulness(rgb)
    traits |= {"grey"} if colourfulness < GREY_COLOURFULNESS else {"colourful"} if colourfulness > COLOURFUL else set()
    cast = _colour_cast(image[subject])
    traits |= {cast} if cast else set()
    kind = None if mask is None else _subject_kind(mask)
    traits |= {kind} if kind else set()

    columns = np.nonzero(subject)[1]
    right = columns >= columns.mean()
    balance = float(luma[right].mean() - luma[~right].mean()) if right.any() and (~right).any() else 0.0
    return _ImageFacts(frozenset(traits), balance)


def _colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003), 'Measuring colourfulness in natural images', on 0..255 RGB rows."""
    rg = rgb[:, 0] - rgb[:, 1]
    yb = 0.5 * (rgb[:, 0] + rgb[:, 1]) - rgb[:, 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _colour_cast(pixels: np.ndarray) -> str | None:
    """'warm-cast' / 'cool-cast' from the most common saturated dominant colour, None when neutral."""
    bins = pixels >> QUANT_SHIFT
    levels = 256 >> QUANT_SHIFT
    codes = (bins[:, 0].astype(np.int64) * levels + bins[:, 1]) * levels + bins[:, 2]
    counts = np.bincount(codes, minlength=levels**3)
    for code in np.argsort(counts)[::-1][:DOMINANT_BINS]:
        share = counts[code] / len(codes)
        if share < CAST_MIN_SHARE:
            break
        red, green, blue = pixels[codes == code].mean(axis=0) / 255.0
        hue, saturation, _ = colorsys.rgb_to_hsv(red, green, blue)
        if saturation < CAST_MIN_SATURATION:
            continue
        hue *= 360.0
        if hue < WARM_HUE_BELOW or hue >= WARM_HUE_ABOVE:
            return "warm-cast"
        if COOL_HUES[0] <= hue <= COOL_HUES[1]:
            return "cool-cast"
        return None  # greens and magentas: neither warm nor cool
    return None


def _subject_kind(mask: np.ndarray) -> str:
    """'portrait', 'object' or 'scene' from the matte's shape."""
    if mask.mean() >= SCENE_COVERAGE:
        return "scene"
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom = rows[0], rows[-1]
    box_height, box_width = bottom - top + 1, cols[-1] - cols[0] + 1
    widths = mask.sum(axis=1)[top : bottom + 1]
    head = widths[box_height // 10 : max(box_height * 3 // 10, box_height // 10 + 1)].mean()
    shoulders = widths[box_height * 7 // 10 : max(box_height * 9 // 10, box_height * 7 // 10 + 1)].mean()
    cut_by_frame = bottom >= BOTTOM_EDGE * (mask.shape[0] - 1)
    if box_height / box_width >= FULL_BODY_ASPECT or (cut_by_frame and head < HEAD_TO_SHOULDERS * shoulders):
        return "portrait"
    return "object"
