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
