"""Tests for core.lighting.lights: the official gradients, custom angles and colours, light maps, validation."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InvalidParameterError
from core.lighting.lights import (
    Light,
    fbc_background,
    fc_initial_image,
    light_gradient,
    light_map_image,
    parse_hex_color,
)

SIZES = [(512, 640), (640, 512), (97, 33)]  # (width, height), the last odd on purpose


def official_fc(direction: str, width: int, height: int) -> np.ndarray:
    """Verbatim from the official gradio_demo.py (initial latent)."""
    if direction == "left":
        gradient = np.linspace(255, 0, width)
        image = np.tile(gradient, (height, 1))
    elif direction == "right":
        gradient = np.linspace(0, 255, width)
        image = np.tile(gradient, (height, 1))
    elif direction == "top":
        gradient = np.linspace(255, 0, height)[:, None]
        image = np.tile(gradient, (1, width))
    else:
        gradient = np.linspace(0, 255, height)[:, None]
        image = np.tile(gradient, (1, width))
    return np.stack((image,) * 3, axis=-1).astype(np.uint8)


def official_fbc(direction: str, width: int, height: int) -> np.ndarray:
    """Verbatim from the official gradio_demo_bg.py (background condition)."""
    if direction == "left":
        gradient = np.linspace(224, 32, width)
        image = np.tile(gradient, (height, 1))
    elif direction == "right":
        gradient = np.linspace(32, 224, width)
        image = np.tile(gradient, (height, 1))
    elif direction == "top":
        gradient = np.linspace(224, 32, height)[:, None]
        image = np.tile(gradient, (1, width))
    else:
        gradient = np.linspace(32, 224, height)[:, None]
        image = np.tile(gradient, (1, width))
    return np.stack((image,) * 3, axis=-1).astype(np.uint8)


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("direction", ["left", "right", "top", "bottom"])
def test_named_lights_reproduce_official_gradients_exactly(direction: str, width: int, height: int) -> None:
    light = Light.named(direction)
    assert light.named_direction == direction
    fc = fc_initial_image(light, width, height)
    fbc = fbc_background(light, width, height)
    assert fc.dtype == np.uint8 and fc.shape == (height, width, 3)
    np.testing.assert_array_equal(fc, official_fc(direction, width, height))
    np.testing.assert_array_equal(fbc, official_fbc(direction, width, height))


def test_named_light_spellings_and_softness_keep_the_official_image() -> None:
    # The UI labels ("Left Light"), short colour hex and a preview-only softness still mean the official light.
    for light in (Light.named("Left Light"), Light(azimuth=-180.0, color="#FFF"), Light.named("left", softness=0.9)):
        assert light.named_direction == "left"
        np.testing.assert_array_equal(fc_initial_image(light, 64, 48), official_fc("left", 64, 48))


def test_azimuth_convention_matches_named_directions() -> None:
    assert Light.named("right").azimuth == 0.0
    assert Light.named("top").azimuth == 90.0
    assert Light.named("left").azimuth == 180.0
    assert Light.named("bottom").azimuth == 270.0
    np.testing.assert_allclose(Light.named("top").direction, [0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(Light(azimuth=0.0, elevation=90.0).direction, [0.0, 0.0, 1.0], atol=1e-12)


def test_custom_angle_next_to_a_named_one_is_continuous() -> None:
    # Nudging the light off an official direction must not jump: the custom path extends the official one.
    nudged = fc_initial_image(Light(azimuth=180.001), 256, 64).astype(int)
    official = official_fc("left", 256, 64).astype(int)
    assert np.abs(nudged - official).max() <= 1


def test_45_degrees_gives_a_diagonal_gradient() -> None:
    image = fc_initial_image(Light(azimuth=45.0), 128, 128)[..., 0].astype(int)
    # Light from the top-right: brightest there, darkest at the bottom-left, equal along the other diagonal.
    assert image[0, -1] == 255 and image[-1, 0] == 0
    assert abs(image[0, 0] - 127) <= 1 and abs(image[-1, -1] - 127) <= 1
    assert np.abs(image[:-1, :-1] - image[1:, 1:]).max() <= 1  # constant along top-left -> bottom-right lines
    assert (np.diff(image[64, :]) >= 0).all() and (np.diff(image[:, 64]) <= 0).all()


def test_colour_tints_the_gradient() -> None:
    image = fc_initial_image(Light(azimuth=200.0, color="#ff8000"), 64, 32).astype(int)
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    assert red.max() == 255 and blue.max() == 0
    assert np.abs(green - red * 128 / 255).max() <= 1
    white = fc_initial_image(Light(azimuth=200.0), 64, 32).astype(int)
    np.testing.assert_array_equal(red, white[..., 0])  # the red channel of an orange light is the white one


def test_lower_elevation_is_steeper() -> None:
    contrasts = []
    for elevation in (0.0, 30.0, 60.0, 90.0):
        # A not-quite-white colour forces the custom (non-official) path even at elevation 0.
        red = fc_initial_image(Light(azimuth=180.0, elevation=elevation, color="#fffffe"), 64, 16)[..., 0]
        contrasts.append(int(red.max()) - int(red.min()))
    assert contrasts == sorted(contrasts, reverse=True) and contrasts[0] > 250 and contrasts[-1] == 0


def test_fbc_gradient_for_a_custom_light_stays_in_the_official_range() -> None:
    image = fbc_background(Light(azimuth=300.0, elevation=10.0, ambient=0.1), 80, 60)
    assert image.min() >= 32 and image.max() <= 224
    assert image[-1, -1, 0] > image[0, 0, 0]  # lit from the bottom-right


def test_light_map_is_resized_and_centre_cropped() -> None:
    # 100 x 300 map: a bright middle third between dark thirds; covering 64 x 64 keeps just the middle.
    light_map = np.zeros((100, 300, 3), np.uint8)
    light_map[:, 100:200] = 240
    out = light_map_image(light_map, 64, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out.min() >= 235
    wide = light_map_image(light_map, 300, 50)  # same aspect, smaller: the three bands survive
    assert wide[:, :90].max() < 10 and wide[:, 110:190].min() > 230


def test_light_map_accepts_grey_rgba_and_float() -> None:
    grey = np.tile(np.linspace(0, 255, 50).astype(np.uint8), (40, 1))
    out = light_map_image(grey, 25, 20)
    assert out.shape == (20, 25, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert out[:, -1, 0].mean() > out[:, 0, 0].mean() + 200
    rgba = np.dstack([np.full((8, 8, 3), 100, np.uint8), np.zeros((8, 8), np.uint8)])
    assert (light_map_image(rgba, 16, 16) == 100).all()
    assert (light_map_image(np.full((8, 8, 3), 0.5), 4, 4) == 128).all()


@pytest.mark.parametrize(
    "bad",
    [np.zeros((8, 8, 2), np.uint8), np.zeros((0, 8, 3), np.uint8), np.full((4, 4), 1.5), np.zeros((4, 4), np.int64)],
)
def test_light_map_rejects_bad_images(bad: np.ndarray) -> None:
    with pytest.raises(InvalidParameterError):
        light_map_image(bad, 16, 16)


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"elevation": 91}, "91"),
        ({"elevation": -1}, "-1"),
        ({"intensity": 2.5}, "2.5"),
        ({"ambient": 1.2}, "1.2"),
        ({"softness": -0.1}, "-0.1"),
        ({"azimuth": float("nan")}, "nan"),
        ({"azimuth": "east"}, "east"),
        ({"color": "#12345"}, "#12345"),
        ({"color": "red"}, "red"),
    ],
)
def test_light_validation_names_the_bad_value(kwargs: dict, fragment: str) -> None:
    with pytest.raises(InvalidParameterError, match=fragment):
        Light(**kwargs)


def test_azimuth_wraps_and_dict_round_trips() -> None:
    assert Light(azimuth=-90.0).azimuth == 270.0
    assert Light(azimuth=720.0 + 45.0).azimuth == 45.0
    light = Light(azimuth=33.0, elevation=12.0, color="#a0c8ff", intensity=1.5, ambient=0.2, softness=0.1)
    assert Light.from_dict(light.to_dict()) == light
    with pytest.raises(InvalidParameterError, match="azimut"):
        Light.from_dict({"azimut": 3.0})
    assert parse_hex_color("#a0C8fF") == (160, 200, 255)
    assert parse_hex_color("fc8") == (255, 204, 136)


def test_gradient_rejects_bad_sizes() -> None:
    for width, height in ((0, 8), (8, -1), (8.0, 8), (10**6, 8)):
        with pytest.raises(InvalidParameterError, match="width|height"):
            light_gradient(Light(), width, height)
    with pytest.raises(InvalidParameterError, match="unknown|direction"):
        Light.named("north")
