"""Lighting suggestions: a vision model proposes three IC-Light lighting prompts, with an offline fallback."""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from core.errors import InvalidParameterError
from core.lighting.lights import NAMED_AZIMUTHS, Light, parse_hex_color
from core.lighting.prompt_words import MAX_LIGHTING_WORDS, clean_lighting, lighting_key
from core.lighting.suggest_classic import (
    MOODS,
    NUM_SUGGESTIONS,
    Suggestion,
    check_image,
    check_matte,
    check_mood,
    offline_suggestions,
    ranked_offline,
)

__all__ = [  # the offline half lives in core/lighting/suggest_classic.py; this module is the public entry point
    "MOODS",
    "SOURCE_OFFLINE",
    "SOURCE_REMOTE",
    "SuggestConfig",
    "Suggestion",
    "SuggestionResult",
    "offline_suggestions",
    "result_to_json",
    "suggest_lighting",
]

log = logging.getLogger(__name__)

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
    image = check_image(image)
    mood = check_mood(mood)
    matte = check_matte(matte, image)
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
    extra = [s for s in ranked_offline(image, mood, matte) if lighting_key(s.prompt) not in seen]
    notice = NOTICE_TOPPED_UP.format(missing=NUM_SUGGESTIONS - len(remote), total=NUM_SUGGESTIONS, got=len(remote))
    return SuggestionResult(tuple(remote + extra[: NUM_SUGGESTIONS - len(remote)]), SOURCE_REMOTE, notice)


def result_to_json(result: SuggestionResult) -> str:
    """The result as pretty JSON (what `python -m core suggest` prints)."""
    return json.dumps(result.to_dict(), indent=2)


# ---------------------------------------------------------------------------------------------------------------------
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
