"""Tests for core.lighting.lightpad: clicks on the lit sphere map to (azimuth, elevation) and back."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InvalidParameterError
from core.lighting.lightpad import PAD_BACKGROUND, light_from_pad_click, pad_geometry, pad_position, render_light_pad
from core.lighting.lights import Light

SIZE = 200


def angle_gap(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


@pytest.mark.parametrize(
    "dx,dy,azimuth",
    [(1.0, 0.0, 0.0), (0.0, -1.0, 90.0), (-1.0, 0.0, 180.0), (0.0, 1.0, 270.0)],  # image y grows downward
)
def test_clicks_on_the_rim_give_grazing_light_from_that_side(dx: float, dy: float, azimuth: float) -> None:
    cx, cy, radius = pad_geometry(SIZE)
    az, el = light_from_pad_click(cx + dx * radius, cy + dy * radius, SIZE)
    assert angle_gap(az, azimuth) < 1e-6 and el == pytest.approx(0.0, abs=1e-3)


def test_click_at_the_centre_is_frontal_and_off_sphere_clicks_snap_to_the_rim() -> None:
    cx, cy, radius = pad_geometry(SIZE)
    assert light_from_pad_click(cx, cy, SIZE)[1] == pytest.approx(90.0)
    az, el = light_from_pad_click(SIZE - 1, cy, SIZE)  # in the margin, right of the sphere
    assert angle_gap(az, 0.0) < 1e-6 and el == 0.0
    az, el = light_from_pad_click(cx + 0.5 * radius, cy - 0.5 * radius, SIZE)  # half-way to the top-right
    assert az == pytest.approx(45.0) and el == pytest.approx(np.degrees(np.arccos(np.sqrt(0.5))))


def test_click_and_position_round_trip() -> None:
    rng = np.random.default_rng(0)
    cx, cy, radius = pad_geometry(SIZE)
    for _ in range(50):
        angle, reach = rng.uniform(0.0, 2.0 * np.pi), rng.uniform(0.05, 0.99)
        x, y = cx + reach * radius * np.cos(angle), cy - reach * radius * np.sin(angle)
        az, el = light_from_pad_click(x, y, SIZE)
        np.testing.assert_allclose(pad_position(Light(azimuth=az, elevation=el), SIZE), (x, y), atol=1e-6)


@pytest.mark.parametrize("x,y", [(150, 70), (60, 120), (100, 40), (130, 140)])
def test_the_sphere_is_brightest_where_the_click_put_the_light(x: int, y: int) -> None:
    az, el = light_from_pad_click(x, y, SIZE)
    light = Light(azimuth=az, elevation=el, softness=0.0)
    pad = render_light_pad(light, SIZE, marker=False, specular_strength=0.0).astype(float).sum(axis=-1)
    # Lambert is flat at its peak, so uint8 leaves a plateau of equal values: its centre is where the light points
    # (the directions within a small angle of the light project to an ellipse centred on that point).
    peak_y, peak_x = np.argwhere(pad >= pad.max() - 2).mean(axis=0)
    assert np.hypot(peak_x - x, peak_y - y) <= 2.0
    assert pad[y, x] >= pad.max() - 2


def test_marker_is_drawn_where_the_light_points() -> None:
    light = Light(azimuth=210.0, elevation=35.0)
    plain = render_light_pad(light, SIZE, marker=False)
    marked = render_light_pad(light, SIZE)
    changed = np.argwhere((plain != marked).any(axis=-1))
    x, y = pad_position(light, SIZE)
    assert len(changed) > 20
    centre_y, centre_x = changed.mean(axis=0)
    assert np.hypot(centre_x - x, centre_y - y) < 1.5


def test_pad_image_shows_the_light_colour_and_background() -> None:
    pad = render_light_pad(Light(azimuth=90.0, elevation=30.0, color="#ff4000"), 64, marker=False)
    assert pad.shape == (64, 64, 3) and pad.dtype == np.uint8
    assert tuple(pad[0, 0]) == PAD_BACKGROUND and tuple(pad[-1, -1]) == PAD_BACKGROUND
    lit = pad[16, 32].astype(int)  # upper part of the sphere, facing the top light
    assert lit[0] > 150 and lit[2] < 40
    # Light from the top: the upper half of the sphere is brighter than the lower half.
    assert pad[10:32].astype(float).mean() > pad[32:54].astype(float).mean() + 30


def test_bad_sizes_and_clicks_are_clear_errors() -> None:
    for size in (0, 8, 10**5, 64.0, True):
        with pytest.raises(InvalidParameterError, match="size"):
            pad_geometry(size)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="nan"):
        light_from_pad_click(float("nan"), 3.0, 64)
    with pytest.raises(InvalidParameterError, match="light"):
        render_light_pad("left", 64)  # type: ignore[arg-type]


# -- the light's softness reaches the Light from the CLI and from the apps' pad ------------------------------------


def test_light_softness_flag_sets_the_light(tmp_path) -> None:
    from core.cli import build_parser, main, params_from_args

    parser = build_parser()
    base = ["relight", "--fg", str(tmp_path / "fg.png"), "--prompt", "p"]
    params = params_from_args(parser.parse_args([*base, "--light", "left", "--light-softness", "0.2"]))
    assert params.light.softness == 0.2
    assert params.light.named_direction == "left"  # softness shapes the preview only: still the official light
    params = params_from_args(parser.parse_args([*base, "--light-softness", "0.9"]))
    assert params.light == Light(softness=0.9)
    assert params_from_args(parser.parse_args([*base, "--light", "left"])).light.softness == Light().softness
    assert main([*base, "--light-softness", "1.5"]) == 2  # one-line usage error, no traceback
    with pytest.raises(InvalidParameterError, match="softness should be in \\[0, 1.0\\] but is 1.5"):
        params_from_args(parser.parse_args([*base, "--light-softness", "1.5"]))


def test_pad_softness_field_maps_to_the_light() -> None:
    from ui.form import PAD_FIELDS, pad_light, pad_values

    assert "light_softness" in PAD_FIELDS
    light = Light(azimuth=30.0, elevation=20.0, color="#ffcc88", intensity=1.5, ambient=0.25, softness=0.15)
    values = dict(zip(PAD_FIELDS, pad_values(light), strict=True))
    assert values["light_softness"] == 0.15
    assert pad_light(values) == light


@pytest.fixture(scope="module")
def fc_handlers(tmp_path_factory: pytest.TempPathFactory):
    """The fc app's handlers over models that are never loaded (the preview needs none)."""
    from core.models.manager import ModelManager, ModelSettings
    from core.params import Mode
    from core.service import Relighter
    from ui.handlers import AppHandlers

    root = tmp_path_factory.mktemp("pad")
    settings = ModelSettings(
        base_model=str(root / "none"), models_dir=root, device="cpu", dtype="fp32", download=False
    )
    return AppHandlers(Relighter(ModelManager(settings), root / "outputs"), Mode.FC)


def test_pad_softness_slider_reaches_the_preview_light(fc_handlers, tmp_path, monkeypatch) -> None:
    from PIL import Image

    rgba = np.zeros((64, 64, 4), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 24**2
    rgba[disc] = (180, 140, 100, 255)
    path = tmp_path / "subject.png"
    Image.fromarray(rgba).save(path)
    seen: list[Light] = []
    render = fc_handlers.previews.render
    monkeypatch.setattr(
        fc_handlers.previews, "render", lambda image, light, *a: seen.append(light) or render(image, light, *a)
    )
    hard = fc_handlers.preview(str(path), 180.0, 10.0, "#ffffff", 1.0, 0.0, "alpha", softness=0.0)
    soft = fc_handlers.preview(str(path), 180.0, 10.0, "#ffffff", 1.0, 0.0, "alpha", softness=1.0)
    assert [light.softness for light in seen] == [0.0, 1.0]
    assert np.abs(hard.astype(int) - soft.astype(int)).max() > 10  # the softness changed the picture


def test_pad_softness_slider_is_on_the_page_and_feeds_the_preview() -> None:
    from gradio_fc import create_demo

    demo = create_demo()
    config = demo.get_config_file()
    sliders = [c for c in config["components"] if c.get("props", {}).get("label") == "Softness"]
    assert len(sliders) == 1 and sliders[0]["type"] == "slider"
    slider = sliders[0]["id"]
    assert sliders[0]["props"]["minimum"] == 0 and sliders[0]["props"]["maximum"] == 1
    preview = [d for d in config["dependencies"] if d.get("api_name") == "preview"]
    assert len(preview) == 1 and slider in preview[0]["inputs"]
    assert any(slider in [t[0] for t in d["targets"]] for d in config["dependencies"])  # moving it redraws too
