"""Tests for core.lighting.retinex: shading apart from paint, and push-pull filling."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bench import photo_scenes
from core.lighting.lights import Light
from core.lighting.retinex import push_pull, shading_field

SIZE = 96
LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)


@pytest.mark.parametrize("height,width", [(64, 64), (97, 131), (64, 33)])
def test_unpainted_light_comes_back_exactly_at_any_size(height: int, width: int) -> None:
    rows, cols = np.mgrid[:height, :width]
    light = np.exp(np.sin(cols / 9.0) + np.cos(rows / 7.0) + 0.01 * cols - 2.0).astype(np.float32)
    grey = np.repeat(light[..., None], 3, axis=-1)
    shading = shading_field(grey, light, np.ones((height, width), bool))
    np.testing.assert_allclose(np.log(shading), np.log(light + 1e-3), atol=1e-4)


def test_shading_ignores_paint_edges() -> None:
    scene = photo_scenes.build("sphere", "patches", SIZE)
    light = Light(azimuth=150.0, elevation=35.0, ambient=0.15, softness=0.0)
    image, matte = photo_scenes.photograph(scene, light)
    inside = matte == 1.0
    truth = cv2.resize(photo_scenes.irradiance(scene, light)[..., 1], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    linear = ((image / 255.0) ** 2.2).astype(np.float32)
    luminance = linear @ LUMA

    def log_error(field: np.ndarray) -> float:
        """Spread of log(field / truth) over the subject: 0 when the field is the light times a constant."""
        return float(np.std(np.log(field[inside] + 1e-3) - np.log(truth[inside] + 1e-3)))

    # The luminance mixes in the paint (nine colours); the shading keeps only the light.
    assert log_error(luminance) > 0.4
    assert log_error(shading_field(linear, luminance, matte >= 0.5)) < 0.25


def test_empty_matte_leaves_the_luminance() -> None:
    linear = np.full((8, 8, 3), 0.25, np.float32)
    luminance = linear @ LUMA
    np.testing.assert_array_equal(shading_field(linear, luminance, np.zeros((8, 8), bool)), luminance)


def test_push_pull_keeps_weighted_values_and_fills_the_rest_from_nearby() -> None:
    values = np.zeros((40, 60, 3), np.float32)
    values[:, :30] = (1.0, 0.5, 0.0)
    values[:, 30:] = (0.0, 0.5, 1.0)
    weight = np.ones((40, 60), np.float32)
    weight[:, 25:35] = 0.0  # a gap across the boundary
    weight[:, 35:] = 1.0
    filled = push_pull(values, weight)
    np.testing.assert_allclose(filled[weight == 1.0], values[weight == 1.0], atol=1e-5)
    assert filled[20, 25, 0] > filled[20, 34, 0]  # each side of the gap leans toward its own neighbours
    assert np.all((filled >= 0.0) & (filled <= 1.0))
    everywhere_empty = push_pull(values, np.zeros((40, 60), np.float32))
    assert np.all(everywhere_empty == 0.0)
