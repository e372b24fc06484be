"""data-synth: shading, shadows and highlights against direct renders, instruction text, normals, albedo, and the
command end to end on both engines (byte-identical), with resume, bad files and a dataset `datasets` loads."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from data_models import write_photos, write_tiny_depth
from ray_testing import ray_cluster  # noqa: F401  (session fixture)

from core.cli import main
from core.data.albedo import extract_albedo, to_linear
from core.data.describe import OCTANT_PHRASES, describe_light, describe_with_model, direction_phrase, temperature_word
from core.data.geometry import NormalEstimator, normals_from_depth
from core.data.synth import cast_shadow, kelvin_to_hex, parse_mix, phong, sample_recipe, shading
from core.errors import InvalidParameterError, WeightsNotFoundError
from core.lighting.lights import Light

SIDE = 65  # odd, so the sphere has a centre pixel


def _sphere(side: int = SIDE) -> np.ndarray:
    """Unit normals of a sphere filling the frame (x right, y up, z to camera); flat outside."""
    coords = (np.arange(side) - side // 2) / (side // 2)
    x, y = np.meshgrid(coords, -coords)
    z = np.sqrt(np.clip(1.0 - x * x - y * y, 0.0, None))
    normals = np.stack([x, y, z], axis=-1)
    normals[z == 0] = (0.0, 0.0, 1.0)
    return (normals / np.linalg.norm(normals, axis=-1, keepdims=True)).astype(np.float32)


def _octant_lights(elevation: float = 30.0):
    return [Light(azimuth=45.0 * k + offset, elevation=elevation) for k in range(8) for offset in (-20.0, 0.0, 20.0)]


def test_soft_shading_equals_a_direct_lambert_render():
    normals = _sphere()
    light = Light(azimuth=200.0, elevation=35.0, color="#ffd0a0", intensity=1.2, ambient=0.2)
    az, el = math.radians(200.0), math.radians(35.0)
    to_light = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    expected = np.zeros(normals.shape)
    for row in range(SIDE):
        for col in range(SIDE):
            cosine = max(float(normals[row, col] @ to_light), 0.0)
            expected[row, col] = (0.2 + 0.8 * 1.2 * cosine) * np.array([255, 0xD0, 0xA0]) / 255
    np.testing.assert_allclose(shading(normals, light), expected, atol=1e-5)


@pytest.mark.parametrize("light", _octant_lights(), ids=lambda light: f"az{light.azimuth:.0f}")
def test_cast_shadow_falls_away_from_the_light(light):
    pattern = np.ones((101, 101), np.float32)
    pattern[45:56, 45:56] = 0.0  # one opaque square in the middle of the occluder plane
    visibility = cast_shadow(pattern, light, height_px=20.0)
    rows, cols = np.nonzero(visibility < 0.5)
    shift_x, shift_up = cols.mean() - 50.0, -(rows.mean() - 50.0)
    to_light = light.direction
    expected = -20.0 * to_light[:2] / to_light[2]
    assert shift_x == pytest.approx(expected[0], abs=1.0) and shift_up == pytest.approx(expected[1], abs=1.0)


@pytest.mark.parametrize("light", _octant_lights(elevation=40.0)[::3], ids=lambda light: f"az{light.azimuth:.0f}")
def test_highlight_peaks_where_the_normal_halves_light_and_view(light):
    normals = _sphere(129)
    highlight = phong(normals, light, strength=1.0, shininess=64.0)[..., 0]
    peak = np.unravel_index(np.argmax(highlight), highlight.shape)
    half = light.direction + np.array([0.0, 0.0, 1.0])
    half /= np.linalg.norm(half)
    assert float(normals[peak] @ half) > 0.999
    assert highlight[normals @ light.direction < 0].max() == 0.0  # never on the side turned away


@pytest.mark.parametrize("octant", range(8))
def test_instruction_names_the_direction_of_every_octant(octant):
    words = [
        "the right",
        "the upper right",
        "above",
        "the upper left",
        "the left",
        "the lower left",
        "below",
        "the lower right",
    ]
    for offset in (-22.0, -10.0, 0.0, 10.0, 22.0):
        light = Light(azimuth=45.0 * octant + offset, elevation=20.0, softness=0.9, color=kelvin_to_hex(2700))
        assert direction_phrase(light) == OCTANT_PHRASES[octant]
        text = describe_light(light)
        assert text.endswith(f"light from {words[octant]}")
        assert text.startswith("soft warm")
    assert direction_phrase(Light(azimuth=123.0, elevation=80.0)) == "from the front"


def test_colour_temperature_and_hardness_words():
    assert temperature_word(Light(color=kelvin_to_hex(2700)).rgb) == "warm"
    assert temperature_word(Light(color=kelvin_to_hex(9000)).rgb) == "cool"
    assert temperature_word(Light(color="#ffffff").rgb) == ""
    assert describe_light(Light(azimuth=0.0, softness=0.1)) == "hard light from the right"


def test_recipes_follow_the_mix_and_the_seed():
    mix = parse_mix("soft=0,hard=1")
    recipes = [sample_recipe(np.random.default_rng(5), mix) for _ in range(3)]
    assert all(r.kind == "hard" and r.occluder is not None for r in recipes)
    assert recipes[0] == recipes[1]  # same seed, same recipe
    for bad in ("soft=x", "glow=1", "soft=-1", "soft=0,hard=0"):
        with pytest.raises(InvalidParameterError, match="--mix"):
            parse_mix(bad)


def _dome(side: int = 64) -> np.ndarray:
    """Unit normals of a smooth dome height field (no occluding contour)."""
    coords = np.linspace(-1.0, 1.0, side)
    x, y = np.meshgrid(coords, -coords)
    height = 0.6 * np.exp(-(x * x + y * y) / 0.3)
    dz_drow, dz_dx = np.gradient(height, coords[1] - coords[0])
    normals = np.stack([-dz_dx, dz_drow, np.ones_like(height)], axis=-1)
    return (normals / np.linalg.norm(normals, axis=-1, keepdims=True)).astype(np.float32)


def test_albedo_removes_shading_from_a_lit_scene():
    rng = np.random.default_rng(0)
    cells = rng.uniform(0.15, 0.85, (4, 4, 3))
    albedo = np.kron(cells, np.ones((16, 16, 1)))
    photo = albedo * shading(_dome(), Light(azimuth=30.0, elevation=30.0, ambient=0.2))
    photo_u8 = np.rint(np.clip(photo, 0, 1) ** (1 / 2.2) * 255).astype(np.uint8)

    def error(estimate):
        scale = float(estimate.ravel() @ albedo.ravel()) / float(estimate.ravel() @ estimate.ravel())
        return float(np.mean((scale * estimate - albedo) ** 2))

    assert error(extract_albedo(photo_u8)) < 0.25 * error(to_linear(photo_u8))


def test_normals_from_depth_lean_away_from_the_nearer_side():
    ramp = np.tile(np.linspace(0.0, 1.0, 32, dtype=np.float32), (32, 1))  # nearer toward the right
    normals = normals_from_depth(ramp)
    assert normals[16, 16, 0] < -0.5 and abs(normals[16, 16, 1]) < 1e-3
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-5)


@pytest.fixture(scope="session")
def tiny_depth(tmp_path_factory):
    return write_tiny_depth(tmp_path_factory.mktemp("depth") / "depth")


def test_depth_normals_from_the_real_pipeline_and_the_fallbacks(tiny_depth, tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    matte = np.ones((40, 56), np.float32)
    estimator = NormalEstimator("depth", str(tiny_depth))
    normals = estimator.estimate(image, matte)
    assert estimator.method == "depth" and normals.shape == (40, 56, 3)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-4)
    fallback = NormalEstimator("auto", str(tmp_path / "missing"))
    assert fallback.method == "silhouette" and "silhouette" in fallback.notice
    with pytest.raises(WeightsNotFoundError, match="depth model folder"):
        NormalEstimator("depth", str(tmp_path / "missing"))


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth-photos")
    write_photos(folder)
    (folder / "zz_broken.png").write_bytes(b"\x89PNG broken")
    return folder


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _synth(photos, out, tiny_depth, *extra):
    return main(
        [
            "data-synth",
            "--images",
            str(photos),
            "--out",
            str(out),
            "--per-image",
            "2",
            "--seed",
            "7",
            "--matting",
            "grabcut",
            "--normals",
            "depth",
            "--depth-model",
            str(tiny_depth),
            "--quiet",
            "--models-dir",
            str(out.parent / "no-models"),
            *extra,
        ]
    )


def test_cli_synth_both_engines_byte_identical_resume_and_datasets(
    photos,
    tiny_depth,
    tmp_path,
    ray_cluster,  # noqa: F811
    capsys,
):
    import datasets

    local, ray = tmp_path / "local", tmp_path / "ray"
    assert _synth(photos, local, tiny_depth) == 1  # one bad file: recorded, the rest written
    err = capsys.readouterr().err
    assert "3 done, 1 failed" in err and "1 image(s) failed" in err
    failed = [json.loads(line) for line in (local / "results.jsonl").read_text().splitlines()]
    assert [r["error"] for r in failed if r["status"] == "failed"][0].startswith("zz_broken.png is not an image")
    rows = [json.loads(line) for line in (local / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    assert {
        "input_image_file_name",
        "edit_prompt",
        "edited_image_file_name",
        "albedo_file_name",
        "matte_file_name",
        "light",
        "source",
    } == set(rows[0])
    assert all(r["edited_image_file_name"].endswith("_photo.png") for r in rows)
    assert Light.from_dict({k: v for k, v in json.loads(rows[0]["light"]).items() if k in Light.__annotations__})
    # Ray: the same files, byte for byte.
    assert _synth(photos, ray, tiny_depth, "--engine", "ray", "--workers", "1") == 1
    assert _files(local) == _files(ray)
    assert (local / "metadata.jsonl").read_bytes() == (ray / "metadata.jsonl").read_bytes()
    # Resume: a finished row is not redone; a row whose line a kill cut off is.
    lines = (local / "results.jsonl").read_text().splitlines(keepends=True)
    done = [line for line in lines if '"status": "done"' in line]
    (local / "results.jsonl").write_text("".join(line for line in lines if line != done[-1]))
    capsys.readouterr()
    assert _synth(photos, local, tiny_depth) == 1
    assert "1 done, 1 failed, 2 already done (skipped)" in capsys.readouterr().err
    assert _files(local) == _files(ray)
    # The dataset loads with every image column.
    table = datasets.load_dataset("imagefolder", data_dir=str(local), split="train", cache_dir=str(tmp_path / "hf"))
    assert table.num_rows == 6
    assert {"input_image", "edit_prompt", "edited_image", "albedo", "matte", "light", "source"} <= set(table.features)
    first = table[0]
    assert first["input_image"].size == first["edited_image"].size == first["albedo"].size == (64, 64)


def test_cli_relight_direction_swaps_input_and_target(photos, tiny_depth, tmp_path):
    out = tmp_path / "relight"
    assert _synth(photos, out, tiny_depth, "--direction", "relight", "--normals", "silhouette") == 1
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert all(r["input_image_file_name"].endswith("_photo.png") for r in rows)
    for row in rows:
        light = json.loads(row["light"])
        assert direction_phrase(Light(azimuth=light["azimuth"], elevation=light["elevation"])) in row["edit_prompt"]


def test_cli_synth_usage_errors(photos, tmp_path, capsys):
    out = str(tmp_path / "o")
    assert main(["data-synth", "--images", str(photos), "--out", out, "--per-image", "0"]) == 2
    assert "--per-image should be at least 1 but is 0" in capsys.readouterr().err
    assert main(["data-synth", "--images", str(photos), "--out", out, "--mix", "glow=1"]) == 2
    assert "--mix should look like" in capsys.readouterr().err


class _ChatHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint answering with the server's `reply` (status, content)."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, content = self.server.reply
        body = {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}]}  # fmt: skip
        data = json.dumps(body if status == 200 else {"error": {"message": "down"}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args) -> None:
        pass


@pytest.fixture
def chat_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    server.reply = (200, "Soft golden light from the left.")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_vision_model_writes_the_instruction_with_the_template_as_fallback(chat_server, photos, tmp_path, monkeypatch):
    from core.lighting.suggest import SuggestConfig

    config = SuggestConfig(base_url=f"http://127.0.0.1:{chat_server.server_address[1]}/v1", max_retries=0)
    image = np.zeros((32, 32, 3), np.uint8)
    assert describe_with_model(image, config) == "soft golden light from the left"
    chat_server.reply = (200, "This photo shows a very long description of light that goes on and on for many words")
    assert describe_with_model(image, config) is None
    chat_server.reply = (500, "")
    assert describe_with_model(image, config) is None
    assert describe_with_model(image, SuggestConfig()) is None  # not configured
    # The command: the server's phrase lands in edit_prompt.
    chat_server.reply = (200, "hard cool light from above")
    monkeypatch.setenv("OPENAI_BASE_URL", config.base_url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "vision"
    assert (
        main(
            [
                "data-synth",
                "--images",
                str(photos / "coffee.png"),
                "--out",
                str(out),
                "--per-image",
                "1",
                "--matting",
                "grabcut",
                "--normals",
                "silhouette",
                "--describe",
                "vision",
                "--quiet",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["edit_prompt"] for r in rows] == ["hard cool light from above"]


@pytest.mark.parametrize("azimuth, words", [(135.0, "from the upper left"), (0.0, "from the right")])
def test_edit_prompt_describes_the_photos_own_light(tmp_path, azimuth, words):
    from PIL import Image

    normals = _sphere(97)
    coords = (np.arange(97) - 48) / 48
    inside = coords[None, :] ** 2 + coords[:, None] ** 2 < 1.0  # the ball's silhouette, its alpha
    light = Light(azimuth=azimuth, elevation=20.0, ambient=0.1, softness=0.0, color="#ffb070")
    linear = 0.7 * shading(normals, light)
    rgba = np.dstack([np.rint(np.clip(linear, 0, 1) ** (1 / 2.2) * 255), inside * 255]).astype(np.uint8)
    Image.fromarray(rgba).save(tmp_path / "ball.png")
    out = tmp_path / "out"
    assert (
        main(
            [
                "data-synth",
                "--images",
                str(tmp_path / "ball.png"),
                "--out",
                str(out),
                "--per-image",
                "1",
                "--matting",
                "alpha",
                "--normals",
                "silhouette",
                "--quiet",
            ]
        )
        == 0
    )
    prompt = json.loads((out / "metadata.jsonl").read_text().splitlines()[0])["edit_prompt"]
    assert prompt.endswith(words) and "warm" in prompt and "hard" in prompt
