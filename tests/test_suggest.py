"""Tests for core/lighting/suggest.py, against a real Chat Completions server on loopback and the offline suggester."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from core.cli import main
from core.errors import InvalidParameterError
from core.lighting.lights import Light, parse_hex_color
from core.lighting.prompt_words import lighting_key
from core.lighting.suggest import (
    DEFAULT_MODEL,
    MOODS,
    NOTICE_NOT_CONFIGURED,
    SOURCE_OFFLINE,
    SOURCE_REMOTE,
    SuggestConfig,
    Suggestion,
    SuggestionResult,
    offline_suggestions,
    result_to_json,
    suggest_lighting,
)
from core.lighting.suggest_classic import LIGHTING_PRESETS

SECRET = "sk-test-DO-NOT-LEAK-0123456789abcdef"
SIZE = (96, 80)  # (height, width) of the test images: small keeps every test fast
PRESETS = {preset.prompt: preset for preset in LIGHTING_PRESETS}


# ---------------------------------------------------------------------------------------------------------------------
# A real HTTP server that speaks enough of the Chat Completions protocol


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict -> JSON, str -> sent as is
    delay: float = 0.0  # seconds before answering, to provoke client timeouts
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class ChatServer(ThreadingHTTPServer):
    """Answers POSTs with `respond(request)`; records every request it gets."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[Request] = []
        self.respond: Callable[[Request], Reply] = lambda request: Reply(500, {"error": {"message": "unset"}})
        self.closing = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(raw))
        self.server.requests.append(request)
        reply = self.server.respond(request)
        if reply.delay:
            self.server.closing.wait(reply.delay)
        payload = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
        data = payload.encode()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def server() -> Iterator[ChatServer]:
    chat = ChatServer()
    # A short poll interval keeps shutdown() from costing half a second per test.
    thread = threading.Thread(target=chat.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield chat
    chat.closing.set()
    chat.shutdown()
    chat.server_close()


@pytest.fixture(autouse=True)
def no_suggest_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's real key or server."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ICLIGHT_SUGGEST_MODEL"):
        monkeypatch.delenv(name, raising=False)


def completion(content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "test-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }


def error(status: int, message: str) -> Reply:
    return Reply(status, {"error": {"message": message, "type": "invalid_request_error", "code": None}})


def config_for(server: ChatServer, **overrides: Any) -> SuggestConfig:
    settings = {
        "api_key": SECRET,
        "base_url": server.base_url,
        "model": "test-vision",
        "timeout": 5.0,
        "max_retries": 1,
    }
    return SuggestConfig(**{**settings, **overrides})


GOOD_SUGGESTIONS = [
    {"prompt": "golden time", "azimuth": 180, "elevation": 20, "color": "#ffc880"},
    {"prompt": "neon light, city", "azimuth": 0, "elevation": 10, "color": "#ff3cc8"},
    {"prompt": "soft studio lighting", "azimuth": 90, "elevation": 60, "color": "#ffffff"},
]


# ---------------------------------------------------------------------------------------------------------------------
# Images


def _image(kind: str) -> np.ndarray:
    height, width = SIZE
    rng = np.random.default_rng(0)
    if kind == "dark":
        return np.clip(rng.normal(30, 10, (height, width, 3)), 0, 255).astype(np.uint8)
    if kind == "bright":
        return np.clip(rng.normal(225, 10, (height, width, 3)), 0, 255).astype(np.uint8)
    if kind == "colourful":  # a saturated hue sweep
        hsv = np.zeros((height, width, 3), np.uint8)
        hsv[..., 0] = np.arange(width)[None, :] * 180 // width
        hsv[..., 1:] = (255, 230)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if kind == "greyscale":  # a grey ramp
        ramp = np.tile(np.linspace(0, 255, width), (height, 1)).astype(np.uint8)
        return np.repeat(ramp[..., None], 3, axis=-1)
    raise AssertionError(kind)


IMAGE_KINDS = ("dark", "bright", "colourful", "greyscale")


def _rgb(light: Light) -> tuple[int, int, int]:
    return parse_hex_color(light.color)


# ---------------------------------------------------------------------------------------------------------------------
# Remote suggestions


def test_request_carries_image_schema_mood_and_key(server: ChatServer) -> None:
    server.respond = lambda request: Reply(body=completion(json.dumps({"suggestions": GOOD_SUGGESTIONS})))
    image = np.zeros((*SIZE, 3), np.uint8)
    image[..., 0] = 200  # red, to recognise it at the other end

    result = suggest_lighting(image, mood="cinematic", config=config_for(server))

    assert len(server.requests) == 1
    request = server.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.body["model"] == "test-vision"
    response_format = request.body["response_format"]
    assert response_format["type"] == "json_schema"
    suggestions_schema = response_format["json_schema"]["schema"]["properties"]["suggestions"]
    assert suggestions_schema["minItems"] == suggestions_schema["maxItems"] == 3
    assert set(suggestions_schema["items"]["required"]) == {"prompt", "azimuth", "elevation", "color"}
    user = next(message for message in request.body["messages"] if message["role"] == "user")
    text = " ".join(part["text"] for part in user["content"] if part["type"] == "text")
    assert "cinematic" in text
    url = next(part["image_url"]["url"] for part in user["content"] if part["type"] == "image_url")
    prefix = "data:image/jpeg;base64,"
    assert url.startswith(prefix)
    sent = np.asarray(Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :]))).convert("RGB"))
    assert sent.shape == image.shape
    assert abs(sent[..., 0].mean() - 200) < 5 and sent[..., 1:].mean() < 5
    assert result.source == SOURCE_REMOTE and result.notice is None
    assert [s.prompt for s in result.suggestions] == [s["prompt"] for s in GOOD_SUGGESTIONS]


def test_large_images_are_sent_downscaled(server: ChatServer) -> None:
    server.respond = lambda request: Reply(body=completion(json.dumps({"suggestions": GOOD_SUGGESTIONS})))
    suggest_lighting(np.full((1200, 900, 3), 128, np.uint8), config=config_for(server))
    url = server.requests[0].body["messages"][1]["content"][1]["image_url"]["url"]
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (384, 512)  # longest side 512, aspect kept


def test_messy_reply_is_cleaned_to_three_distinct_short_suggestions(server: ChatServer) -> None:
    messy = [
        {"prompt": '  "Golden hour, warm rim light."  ', "azimuth": 450, "elevation": 120, "color": "#FFAA00"},
        {"prompt": "golden HOUR,  warm rim light", "azimuth": 10, "elevation": 10, "color": "#ffffff"},  # duplicate
        {"prompt": "", "azimuth": 0, "elevation": 0, "color": "#ffffff"},  # empty
        {"prompt": "1. neon light, city, rainy night with reflections everywhere", "azimuth": "left", "color": "blue"},
        {"prompt": "soft studio lighting", "azimuth": -90, "elevation": "45", "color": "#abc"},
        {"prompt": "one too many", "azimuth": 0, "elevation": 0, "color": "#ffffff"},
    ]
    server.respond = lambda request: Reply(body=completion(json.dumps({"suggestions": messy})))

    result = suggest_lighting(_image("bright"), config=config_for(server))

    assert result.source == SOURCE_REMOTE and result.notice is None
    assert result.suggestions == (
        Suggestion("Golden hour, warm rim light", Light(azimuth=90, elevation=90, color="#ffaa00")),
        Suggestion("neon light, city, rainy night", Light(azimuth=180, elevation=0, color="#ffffff")),
        Suggestion("soft studio lighting", Light(azimuth=270, elevation=45, color="#aabbcc")),
    )


def test_server_rejecting_json_schema_gets_plain_json_prompting(server: ChatServer) -> None:
    def respond(request: Request) -> Reply:
        if request.body.get("response_format", {}).get("type") == "json_schema":
            return error(400, "response_format json_schema is not supported by this server")
        # Plain-JSON servers like to wrap the answer in prose and a code fence.
        fenced = "Here you go:\n```json\n" + json.dumps({"suggestions": GOOD_SUGGESTIONS}) + "\n```\nEnjoy!"
        return Reply(body=completion(fenced))

    server.respond = respond
    result = suggest_lighting(_image("dark"), mood="dramatic", config=config_for(server))

    assert len(server.requests) == 2
    first, second = (request.body for request in server.requests)
    assert first["response_format"]["type"] == "json_schema"
    assert "response_format" not in second
    user_text = second["messages"][1]["content"][0]["text"]
    assert "JSON" in user_text and "dramatic" in user_text
    assert second["messages"][1]["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert result.source == SOURCE_REMOTE and result.notice is None
    assert [s.prompt for s in result.suggestions] == [s["prompt"] for s in GOOD_SUGGESTIONS]


def test_short_reply_is_topped_up_offline_with_a_notice(server: ChatServer) -> None:
    two = [GOOD_SUGGESTIONS[0], {**GOOD_SUGGESTIONS[0], "prompt": "Golden Time!"}, GOOD_SUGGESTIONS[1]]
    server.respond = lambda request: Reply(body=completion(json.dumps({"suggestions": two})))

    result = suggest_lighting(_image("dark"), config=config_for(server))

    assert result.source == SOURCE_REMOTE
    assert [s.prompt for s in result.suggestions[:2]] == ["golden time", "neon light, city"]
    assert len({lighting_key(s.prompt) for s in result.suggestions}) == 3
    assert result.suggestions[2].prompt in PRESETS
    assert result.notice is not None and "1 of 3" in result.notice


def test_local_server_needs_no_key(server: ChatServer) -> None:
    server.respond = lambda request: Reply(body=completion(json.dumps({"suggestions": GOOD_SUGGESTIONS})))
    result = suggest_lighting(_image("bright"), config=config_for(server, api_key=None))
    assert result.source == SOURCE_REMOTE
    assert server.requests[0].headers["authorization"].startswith("Bearer ")


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(body=completion("Sure! Golden hour would be lovely {not json")), "not valid JSON"),
        (Reply(body=completion(json.dumps({"suggestions": []}))), "no usable suggestions"),
        (Reply(body=completion(json.dumps({"ideas": "golden time"}))), "no usable suggestions"),
        (Reply(body=completion("")), "empty"),
        (Reply(body="this body is not JSON at all"), "could not be read"),
        (Reply(body={"unexpected": "shape"}), "not a chat completion"),
        (error(401, "Incorrect API key provided"), "HTTP 401"),
        (error(404, "model 'test-vision' not found"), "HTTP 404"),
    ],
)
def test_bad_replies_end_in_offline_suggestions(server: ChatServer, reply: Reply, reason: str) -> None:
    server.respond = lambda request: reply
    result = suggest_lighting(_image("colourful"), mood="warm", config=config_for(server))
    assert result.source == SOURCE_OFFLINE
    assert result.notice is not None and result.notice.startswith("Offline suggestions") and reason in result.notice
    assert result.suggestions == offline_suggestions(_image("colourful"), mood="warm")


def test_server_error_is_retried_once_then_offline(server: ChatServer) -> None:
    # retry-after-ms keeps the SDK's backoff short; without it the retry would wait about half a second.
    server.respond = lambda request: Reply(500, {"error": {"message": "boom"}}, headers={"retry-after-ms": "10"})
    result = suggest_lighting(_image("dark"), config=config_for(server))
    assert len(server.requests) == 2  # the first try and exactly one retry
    assert result.source == SOURCE_OFFLINE and result.notice is not None and "HTTP 500" in result.notice
    assert len(result.suggestions) == 3


def test_timeout_is_retried_once_then_offline(server: ChatServer) -> None:
    good = completion(json.dumps({"suggestions": GOOD_SUGGESTIONS}))
    server.respond = lambda request: Reply(body=good, delay=3.0)
    start = time.monotonic()
    result = suggest_lighting(_image("bright"), config=config_for(server, timeout=0.3))
    elapsed = time.monotonic() - start
    assert len(server.requests) == 2
    assert result.source == SOURCE_OFFLINE and result.notice is not None and "0.3 s" in result.notice
    assert elapsed < 2.5  # two short timeouts plus one backoff, never the server's three seconds


def test_unreachable_server_is_offline(server: ChatServer) -> None:
    url = server.base_url
    server.shutdown()
    server.server_close()  # nothing listens on the port any more
    result = suggest_lighting(_image("bright"), config=SuggestConfig(base_url=url, timeout=1.0, max_retries=0))
    assert result.source == SOURCE_OFFLINE and result.notice is not None and "could not connect" in result.notice


@pytest.mark.parametrize("status", [401, 500])
def test_api_key_never_appears_in_logs_or_outputs(
    server: ChatServer, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    # A hostile or careless server echoes the Authorization header in its error message.
    def respond(request: Request) -> Reply:
        reply = error(status, f"Bad credentials or server: {request.headers['authorization']}")
        return dataclasses.replace(reply, headers={"retry-after-ms": "10"})

    server.respond = respond
    config = config_for(server)
    with caplog.at_level(logging.DEBUG):
        result = suggest_lighting(_image("bright"), config=config)
    assert result.source == SOURCE_OFFLINE and f"HTTP {status}" in (result.notice or "")
    if status == 500:
        assert "Bad credentials or server: Bearer ***" in caplog.text  # logged, with the key redacted
    outputs = [caplog.text, result_to_json(result), repr(result), str(config), repr(config), result.notice or ""]
    assert not any(SECRET in text for text in outputs)


def test_key_echoed_into_a_suggestion_is_dropped(server: ChatServer) -> None:
    def respond(request: Request) -> Reply:
        key = request.headers["authorization"].removeprefix("Bearer ")
        echoed = [{**GOOD_SUGGESTIONS[0], "prompt": f"lit by {key}"}, *GOOD_SUGGESTIONS]
        return Reply(body=completion(json.dumps({"suggestions": echoed})))

    server.respond = respond
    result = suggest_lighting(_image("bright"), config=config_for(server))
    assert result.source == SOURCE_REMOTE
    assert SECRET not in result_to_json(result)
    assert [s.prompt for s in result.suggestions] == [s["prompt"] for s in GOOD_SUGGESTIONS]


# ---------------------------------------------------------------------------------------------------------------------
# Configuration


def test_config_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert SuggestConfig.from_env() == SuggestConfig()
    assert not SuggestConfig.from_env().enabled
    monkeypatch.setenv("OPENAI_API_KEY", f" {SECRET} ")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("ICLIGHT_SUGGEST_MODEL", "llava")
    config = SuggestConfig.from_env()
    assert (config.api_key, config.base_url, config.model) == (SECRET, "http://127.0.0.1:11434/v1", "llava")
    assert config.enabled and config.timeout > 0 and config.max_retries == 1
    assert SuggestConfig.from_env({"OPENAI_API_KEY": "", "ICLIGHT_SUGGEST_MODEL": " "}) == SuggestConfig()
    assert SuggestConfig().model == DEFAULT_MODEL == "gpt-4o-mini"


def test_config_repr_hides_the_key() -> None:
    config = SuggestConfig(api_key=SECRET, base_url="http://localhost:8000/v1")
    assert SECRET not in repr(config) and SECRET not in str(config) and SECRET not in f"{config}"
    assert "***" in repr(config) and "localhost:8000" in repr(config)
    assert "api_key=None" in repr(SuggestConfig())


@pytest.mark.parametrize(
    "bad",
    [
        {"timeout": 0},
        {"timeout": -1.0},
        {"max_retries": -1},
        {"max_retries": 1.5},
        {"model": " "},
        {"base_url": "localhost:8000"},
        {"base_url": "http://[::1"},
        {"base_url": "http://host:port/v1"},
        {"base_url": "ftp://host/v1"},
    ],
)
def test_config_rejects_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameterError):
        SuggestConfig(**bad)


def test_unconfigured_is_offline_with_a_notice() -> None:
    result = suggest_lighting(_image("dark"))
    assert result.source == SOURCE_OFFLINE and result.notice == NOTICE_NOT_CONFIGURED
    assert result.suggestions == offline_suggestions(_image("dark"))


# ---------------------------------------------------------------------------------------------------------------------
# Input checks


@pytest.mark.parametrize("mood", ["happy", "DRAMATICALLY", 3])
def test_invalid_mood_lists_the_valid_ones(mood: Any) -> None:
    for call in (suggest_lighting, offline_suggestions):
        with pytest.raises(InvalidParameterError) as info:
            call(_image("dark"), mood=mood)
        assert all(valid in str(info.value) for valid in MOODS) and repr(mood) in str(info.value)


def test_empty_mood_means_none_and_case_is_ignored() -> None:
    image = _image("bright")
    assert offline_suggestions(image, "") == offline_suggestions(image, "  ") == offline_suggestions(image, None)
    assert offline_suggestions(image, " Calm ") == offline_suggestions(image, "calm")


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((8, 8, 3), np.float32),
        np.zeros((0, 8, 3), np.uint8),
    ],
)
def test_invalid_image(image: np.ndarray) -> None:
    with pytest.raises(InvalidParameterError, match="image"):
        suggest_lighting(image)


def test_matte_must_match_the_image() -> None:
    with pytest.raises(InvalidParameterError, match="matte"):
        offline_suggestions(_image("dark"), matte=np.ones((5, 5), np.float32))


# ---------------------------------------------------------------------------------------------------------------------
# Offline suggestions


@pytest.mark.parametrize("kind", IMAGE_KINDS)
@pytest.mark.parametrize("mood", [None, *MOODS])
def test_offline_gives_three_distinct_short_suggestions(kind: str, mood: str | None) -> None:
    suggestions = offline_suggestions(_image(kind), mood)
    assert len(suggestions) == 3
    assert len({lighting_key(s.prompt) for s in suggestions}) == 3
    for suggestion in suggestions:
        assert suggestion.prompt.strip() and len(suggestion.prompt.split()) <= 6
        assert isinstance(suggestion.light, Light)
        if mood is not None:
            assert mood in PRESETS[suggestion.prompt].moods


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_offline_warm_and_cool_moods_pick_warm_and_cool_light(kind: str) -> None:
    assert all(_rgb(s.light)[0] > _rgb(s.light)[2] for s in offline_suggestions(_image(kind), "warm"))
    assert all(_rgb(s.light)[2] > _rgb(s.light)[0] for s in offline_suggestions(_image(kind), "cool"))


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_offline_calm_is_softer_than_dramatic(kind: str) -> None:
    calm, dramatic = (offline_suggestions(_image(kind), mood) for mood in ("calm", "dramatic"))
    assert not {s.prompt for s in calm} & {s.prompt for s in dramatic}
    assert np.mean([s.light.softness for s in calm]) > np.mean([s.light.softness for s in dramatic]) + 0.2


def test_offline_follows_the_image_without_a_mood() -> None:
    dark, bright, colourful, grey = (offline_suggestions(_image(kind)) for kind in IMAGE_KINDS)
    assert all("dark" in PRESETS[s.prompt].suits for s in dark)
    assert all("bright" in PRESETS[s.prompt].suits for s in bright)
    assert max(max(_rgb(s.light)) - min(_rgb(s.light)) for s in colourful) > 100  # some saturated light
    assert all(max(_rgb(s.light)) - min(_rgb(s.light)) < 48 for s in grey)  # near-neutral light on a grey image


def test_offline_statistics_come_from_the_matted_subject() -> None:
    # A dark subject on a bright backdrop: with the matte the subject's exposure decides, not the backdrop's.
    image = np.full((*SIZE, 3), 235, np.uint8)
    matte = np.zeros(SIZE, np.uint8)
    matte[20:80, 20:60] = 255
    image[matte > 0] = 25
    backdrop, subject = offline_suggestions(image), offline_suggestions(image, matte=matte)
    assert all("bright" in PRESETS[s.prompt].suits for s in backdrop)
    assert sum("dark" in PRESETS[s.prompt].suits for s in subject) >= 2
    assert not {s.prompt for s in backdrop} & {s.prompt for s in subject}


def test_offline_subject_shape_from_the_matte() -> None:
    image = np.full((*SIZE, 3), 128, np.uint8)  # neutral: only the matte's shape tells the suggestions apart
    height, width = SIZE
    person = np.zeros(SIZE, np.float32)
    cv2.ellipse(person, (width // 2, height // 4), (width // 8, height // 6), 0, 0, 360, 1.0, -1)  # head
    cv2.ellipse(person, (width // 2, height), (width * 2 // 5, height // 2), 0, 180, 360, 1.0, -1)  # shoulders
    box = np.zeros(SIZE, np.float32)
    box[35:65, 25:55] = 1.0  # a product shot: compact, floating in the frame
    portrait, product = offline_suggestions(image, matte=person), offline_suggestions(image, matte=box)
    assert "portrait" in PRESETS[portrait[0].prompt].suits
    assert "object" in PRESETS[product[0].prompt].suits
    assert portrait != product


@pytest.mark.parametrize(("lit_side", "sign"), [("left", -1), ("right", 1)])
def test_offline_side_lights_agree_with_the_photo(lit_side: str, sign: int) -> None:
    ramp = np.linspace(60, 200, SIZE[1]) if lit_side == "right" else np.linspace(200, 60, SIZE[1])
    image = np.repeat(np.tile(ramp, (SIZE[0], 1))[..., None], 3, axis=-1).astype(np.uint8)
    for mood in MOODS:
        for suggestion in offline_suggestions(image, mood):
            horizontal = math.cos(math.radians(suggestion.light.azimuth))
            assert horizontal * sign >= -1e-6, (mood, suggestion)


def test_offline_is_deterministic_and_fast() -> None:
    image = np.random.default_rng(1).integers(0, 256, (1024, 768, 3), dtype=np.uint8)
    start = time.monotonic()
    first = offline_suggestions(image, "mysterious")
    assert time.monotonic() - start < 1.0
    assert offline_suggestions(image, "mysterious") == first


# ---------------------------------------------------------------------------------------------------------------------
# JSON, CLI helper and prompt editing


def test_result_to_json_round_trips() -> None:
    result = SuggestionResult(offline_suggestions(_image("dark"), "warm"), SOURCE_OFFLINE, "a notice")
    data = json.loads(result_to_json(result))
    assert data["source"] == SOURCE_OFFLINE and data["notice"] == "a notice"
    assert [Suggestion(item["prompt"], Light.from_dict(item["light"])) for item in data["suggestions"]] == list(
        result.suggestions
    )


def test_suggest_command_reads_the_file_and_uses_its_alpha_as_matte(tmp_path: Any, capsys, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    image = np.full((*SIZE, 3), 235, np.uint8)
    image[20:80, 20:60] = 25
    alpha = np.zeros(SIZE, np.uint8)
    alpha[20:80, 20:60] = 255
    path = tmp_path / "subject.png"
    Image.fromarray(np.dstack([image, alpha]), "RGBA").save(path)

    assert main(["suggest", "--image", str(path)]) == 0
    data = json.loads(capsys.readouterr().out)

    assert data["source"] == SOURCE_OFFLINE and data["notice"] == NOTICE_NOT_CONFIGURED
    assert [item["prompt"] for item in data["suggestions"]] == [
        s.prompt for s in offline_suggestions(image, matte=alpha)
    ]
    assert data["suggestions"][0]["prompt"] != offline_suggestions(image)[0].prompt  # the alpha made a difference


def test_suggest_command_rejects_missing_and_broken_files(tmp_path: Any, capsys) -> None:
    assert main(["suggest", "--image", str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert main(["suggest", "--image", str(broken)]) == 2
    assert "broken.png" in capsys.readouterr().err
    Image.fromarray(_image("dark")).save(tmp_path / "ok.png")
    assert main(["suggest", "--image", str(tmp_path / "ok.png"), "--mood", "sleepy"]) == 2
    assert "mood" in capsys.readouterr().err
