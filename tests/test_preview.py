"""Tests for core.lighting.preview: the weight-free relighter on synthetic scenes with known albedo and normals."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from bench import photo_scenes
from bench.preview_accuracy import gradient_baseline, masked_psnr, score_scene
from bench.scenes import Scene, irradiance, render, sphere, textured_blob, true_normals
from core.errors import InvalidParameterError
from core.lighting.lights import Light
from core.lighting.preview import (
    MAX_PIXELS,
    MAX_SOFT_ANGLE_DEG,
    disc_lambert,
    estimate_albedo,
    estimate_normals,
    estimate_source_light,
    preview_relight,
    shade,
)

SIZE = 96
SOURCE = Light(azimuth=120.0, elevation=40.0, ambient=0.2, softness=0.3)  # up-left key light with some fill
LEFT, RIGHT = Light.named("left", ambient=0.1), Light.named("right", ambient=0.1)
MIN_GAIN_DB = 6.0  # the accuracy target, checked here on one small scene


@pytest.fixture(scope="module")
def ball() -> tuple[Scene, np.ndarray, np.ndarray]:
    scene = sphere(SIZE)
    image, matte = render(scene, SOURCE)
    return scene, image, matte


@pytest.fixture(scope="module")
def blob() -> tuple[Scene, np.ndarray, np.ndarray]:
    scene = textured_blob(SIZE)
    image, matte = render(scene, SOURCE)
    return scene, image, matte


def side_brightness(image: np.ndarray, matte: np.ndarray) -> tuple[float, float]:
    """Mean brightness of the subject's left half and right half (split at its centroid)."""
    inside = matte > 0.5
    centre = np.nonzero(inside)[1].mean()
    cols = np.arange(image.shape[1])[None, :]
    grey = image.astype(float).mean(axis=-1)
    return float(grey[inside & (cols < centre)].mean()), float(grey[inside & (cols > centre)].mean())


@pytest.mark.parametrize("scene_name", ["ball", "blob"])
def test_moving_the_light_moves_the_bright_side(scene_name: str, request: pytest.FixtureRequest) -> None:
    _, image, matte = request.getfixturevalue(scene_name)
    left_lit = side_brightness(preview_relight(image, matte, LEFT), matte)
    right_lit = side_brightness(preview_relight(image, matte, RIGHT), matte)
    assert left_lit[0] > left_lit[1] + 30 and right_lit[1] > right_lit[0] + 30
    # Sweeping the azimuth from the left to the right moves the brightness over step by step.
    balance = [
        np.subtract(*side_brightness(preview_relight(image, matte, Light(azimuth=a)), matte))
        for a in (180, 135, 90, 45, 0)
    ]
    assert all(b > a for a, b in zip(balance[1:], balance[:-1], strict=True))


def test_top_light_brightens_the_top(ball: tuple) -> None:
    _, image, matte = ball
    out = preview_relight(image, matte, Light.named("top")).astype(float).mean(axis=-1)
    rows = np.nonzero(matte > 0.5)[0]
    upper, lower = out[rows.min() : rows.min() + 20], out[rows.max() - 20 : rows.max()]
    assert upper[upper > 0].mean() > lower.mean() + 40


def test_output_is_deterministic(blob: tuple) -> None:
    _, image, matte = blob
    light = Light(azimuth=33.0, elevation=25.0, color="#ffb070", ambient=0.15, softness=0.7)
    first = preview_relight(image, matte, light)
    assert first.dtype == np.uint8 and first.shape == image.shape
    np.testing.assert_array_equal(first, preview_relight(image.copy(), matte.copy(), light))


def test_outside_the_matte_is_untouched_without_background(blob: tuple) -> None:
    _, image, matte = blob
    out = preview_relight(image, matte, Light(azimuth=300.0, elevation=10.0, intensity=2.0))
    outside = matte == 0.0
    assert outside.sum() > 1000
    np.testing.assert_array_equal(out[outside], image[outside])
    assert np.abs(out[matte == 1.0].astype(int) - image[matte == 1.0]).mean() > 10  # the subject did change


def test_background_replaces_the_outside_and_receives_a_shadow_away_from_the_light(ball: tuple) -> None:
    _, image, matte = ball
    background = np.full((SIZE, SIZE, 3), 200, np.uint8)
    out = preview_relight(image, matte, Light(azimuth=180.0, elevation=20.0, softness=0.2), background)
    outside = matte == 0.0
    assert (out[outside] <= 200).all()
    darkening = np.where(outside, 200.0 - out.astype(float).mean(axis=-1), 0.0)
    left, right = darkening[:, : SIZE // 2].sum(), darkening[:, SIZE // 2 :].sum()
    assert right > 5 * left and right > 0  # light from the left: the shadow falls to the right
    assert (out[:4, :4] == 200).all()  # far corners keep the background as it was


def test_background_of_another_size_is_fitted(ball: tuple) -> None:
    _, image, matte = ball
    background = np.zeros((30, 50, 3), np.uint8)
    background[:, 25:] = 250
    out = preview_relight(image, matte, LEFT, background)
    assert out.shape == image.shape
    # Corners, away from the subject and its shadow, show the background's dark and bright halves.
    assert out[0, 0].max() == 0 and out[0, -1].min() == 250


def test_matches_ground_truth_better_than_the_baselines(blob: tuple) -> None:
    scene, image, matte = blob
    gains = []
    for target in (LEFT, Light(azimuth=300.0, elevation=50.0, color="#a0c8ff", ambient=0.3, softness=0.8)):
        truth, _ = render(scene, target)
        baseline = max(masked_psnr(image, truth, matte), masked_psnr(gradient_baseline(image, target), truth, matte))
        gains.append(masked_psnr(preview_relight(image, matte, target), truth, matte) - baseline)
    assert np.mean(gains) >= MIN_GAIN_DB


def test_source_light_is_recovered_on_a_sphere(ball: tuple) -> None:
    _, image, matte = ball
    found = estimate_source_light(image, matte, estimate_normals(matte))
    assert abs((found.azimuth - SOURCE.azimuth + 180.0) % 360.0 - 180.0) < 10.0
    assert abs(found.elevation - SOURCE.elevation) < 10.0
    assert abs(found.ambient - SOURCE.ambient) < 0.1


def test_normals_of_a_disc_matte_are_those_of_a_sphere(ball: tuple) -> None:
    scene, _, matte = ball
    estimated, truth = estimate_normals(matte), true_normals(scene)
    np.testing.assert_allclose(np.linalg.norm(estimated, axis=-1), 1.0, atol=1e-4)
    inside = matte == 1.0
    angles = np.degrees(np.arccos(np.clip((estimated * truth).sum(axis=-1), -1.0, 1.0)))
    assert angles[inside].mean() < 5.0
    assert estimated[SIZE // 2, SIZE // 2, 2] > 0.99
    rim_col = np.nonzero(inside[SIZE // 2])[0].max()
    assert estimated[SIZE // 2, rim_col, 0] > 0.8  # the right rim faces right


def test_albedo_removes_the_shading(ball: tuple) -> None:
    scene, image, matte = ball
    linear = (image / 255.0) ** 2.2
    albedo, trust = estimate_albedo(linear, matte, shade(true_normals(scene), SOURCE)[..., 0])
    inside = matte == 1.0
    assert trust[inside].min() == 1.0  # the ball has fill light everywhere: nothing to guess
    # The ball is one colour: once its shading is divided out, the lit and the dim sides agree.
    red = albedo[..., 0][inside]
    assert red.std() / red.mean() < 0.05
    assert abs(red.mean() - scene.albedo[0, 0, 0]) < 0.05


def test_albedo_in_black_shadow_is_filled_from_the_lit_side(ball: tuple) -> None:
    scene, image, matte = ball
    hard = Light(azimuth=180.0, elevation=0.0, ambient=0.0, softness=0.0)  # the right half gets no light at all
    image, _ = render(scene, hard)
    linear = (image / 255.0) ** 2.2
    albedo, trust = estimate_albedo(linear, matte, shade(true_normals(scene), hard)[..., 0])
    inside = matte == 1.0
    dark = inside & (trust == 0.0)
    assert dark.sum() > 0.3 * inside.sum() and image[dark].mean() < 2.0
    # Nothing is left of the albedo there, so it comes from the lit half: the ball's one colour, not black.
    np.testing.assert_allclose(albedo[dark].mean(axis=0), scene.albedo[0, 0], rtol=0.1)


def dense_disc_irradiance(cos_theta: np.ndarray, half_angle: float, samples: int = 20000) -> np.ndarray:
    """Reference: average of max(0, n . w) over `samples` directions evenly covering the disc, 1 facing it."""
    k = np.arange(samples) + 0.5
    cos_g = 1.0 - (1.0 - np.cos(half_angle)) * k / samples
    sin_g, phi = np.sqrt(1.0 - cos_g**2), np.pi * (3.0 - np.sqrt(5.0)) * k
    sin_theta = np.sqrt(1.0 - cos_theta**2)
    dots = sin_theta[:, None] * (sin_g * np.cos(phi))[None, :] + cos_theta[:, None] * cos_g[None, :]
    return np.maximum(dots, 0.0).mean(axis=1) / cos_g.mean()


def test_disc_light_table_matches_dense_integration() -> None:
    cos_theta = np.cos(np.linspace(0.0, np.pi, 61))
    for softness in (0.0, 0.3, 1.0):
        reference = dense_disc_irradiance(cos_theta, np.radians(MAX_SOFT_ANGLE_DEG) * softness)
        np.testing.assert_allclose(disc_lambert(cos_theta, softness), reference, atol=1e-3)


def test_scene_renderer_agrees_with_the_table() -> None:
    # The benchmark's ground truth integrates the disc by brute force; it must mean the same light.
    normals = np.stack([np.sin(t := np.linspace(0.0, np.pi, 50)), np.zeros(50), np.cos(t)], axis=-1)
    for softness in (0.0, 0.5, 1.0):
        brute = irradiance(normals[:, None], Light(azimuth=0.0, elevation=90.0, softness=softness))[:, 0, 0]
        np.testing.assert_allclose(disc_lambert(normals[:, 2], softness), brute, atol=1e-2)


def test_empty_matte_returns_the_input_or_the_background(ball: tuple) -> None:
    _, image, _ = ball
    empty = np.zeros(image.shape[:2], np.float32)
    np.testing.assert_array_equal(preview_relight(image, empty, LEFT), image)
    background = np.full_like(image, 77)
    np.testing.assert_array_equal(preview_relight(image, empty, LEFT, background), background)


def test_tiny_and_degenerate_inputs_give_sane_results() -> None:
    pixel = np.array([[[120, 60, 30]]], np.uint8)
    out = preview_relight(pixel, np.ones((1, 1)), Light(azimuth=0.0, elevation=90.0), specular_strength=0.0)
    assert out.shape == (1, 1, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - pixel).max() <= 2  # one frontal pixel under a frontal light stays put
    full = np.full((32, 48, 3), 128, np.uint8)  # matte covers the whole frame: no silhouette at all
    out = preview_relight(full, np.ones((32, 48)), Light.named("left"))
    assert out.shape == full.shape and 0 < out.mean() < 255
    thin = np.zeros((600, 600))
    thin[:, 300] = 1.0  # a one-pixel line shrinks below a work pixel but must still be relit
    out = preview_relight(np.full((600, 600, 3), 128, np.uint8), thin, Light(azimuth=0.0, elevation=90.0))
    assert out[:, 299].max() == 128 and out[:, 301].max() == 128


def test_uint8_and_bool_mattes_are_accepted(ball: tuple) -> None:
    _, image, matte = ball
    hard = matte > 0.5
    as_float = preview_relight(image, hard.astype(np.float32), RIGHT)
    np.testing.assert_array_equal(preview_relight(image, hard, RIGHT), as_float)
    np.testing.assert_array_equal(preview_relight(image, hard.astype(np.uint8) * 255, RIGHT), as_float)


def test_image_over_the_pixel_cap_is_refused() -> None:
    side = math.isqrt(MAX_PIXELS) + 1
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (side, side, 3))  # no memory behind it
    matte = np.broadcast_to(np.zeros((1, 1), np.float32), (side, side))
    with pytest.raises(InvalidParameterError, match=f"{side * side}"):
        preview_relight(huge, matte, LEFT)


@pytest.mark.parametrize(
    "image,matte,fragment",
    [
        (np.zeros((8, 8), np.uint8), np.ones((8, 8)), "HxWx3"),
        (np.zeros((8, 8, 4), np.uint8), np.ones((8, 8)), "HxWx3"),
        (np.zeros((8, 8, 3), np.float32), np.ones((8, 8)), "uint8"),
        (np.zeros((0, 8, 3), np.uint8), np.ones((0, 8)), "empty"),
        (np.zeros((8, 8, 3), np.uint8), np.ones((8, 9)), "8x9|8x8"),
        (np.zeros((8, 8, 3), np.uint8), np.full((8, 8), 1.5), "1.5"),
        (np.zeros((8, 8, 3), np.uint8), np.full((8, 8), np.nan), "nan"),
        (np.zeros((8, 8, 3), np.uint8), np.ones((8, 8), np.int32), "int32"),
    ],
)
def test_bad_inputs_are_clear_errors(image: np.ndarray, matte: np.ndarray, fragment: str) -> None:
    with pytest.raises(InvalidParameterError, match=fragment):
        preview_relight(image, matte, LEFT)


def test_bad_light_and_options_are_clear_errors(ball: tuple) -> None:
    _, image, matte = ball
    with pytest.raises(InvalidParameterError, match="left"):
        preview_relight(image, matte, "left")  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="-1"):
        preview_relight(image, matte, LEFT, specular_strength=-1.0)
    with pytest.raises(InvalidParameterError, match="background"):
        preview_relight(image, matte, LEFT, np.zeros((4, 4, 2), np.uint8))


# -- independent scenes: a renderer that shares nothing with the preview ------------------------------------------


def test_independent_renderer_imports_nothing_from_the_preview() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(photo_scenes))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not any(name.startswith("core.lighting.preview") for name in imported)


def test_srgb_encoding_is_the_standard_curve() -> None:
    encoded = photo_scenes.srgb_encode(np.array([0.0, 0.002, 0.0031308, 0.18, 0.5, 1.0, 1.5]))
    np.testing.assert_allclose(encoded, [0.0, 0.02584, 0.04045, 0.46135, 0.73536, 1.0, 1.0], atol=1e-4)


def unshadowed(normals: np.ndarray) -> photo_scenes.PhotoScene:
    """A 1xN strip of the given normals, nothing blocking the light."""
    row = normals[None]
    flat = np.zeros(row.shape[:2])
    return photo_scenes.PhotoScene("strip", np.ones_like(row), row, flat, flat == 0.0, shadows=False)


@pytest.mark.parametrize("softness", [0.0, 0.4, 1.0])
def test_a_surface_facing_the_light_receives_one(softness: float) -> None:
    angles = np.radians([0.0, 60.0, 90.0, 100.0, 120.0])  # between the normal and the light
    strip = unshadowed(np.stack([np.cos(angles), np.zeros(5), np.sin(angles)], axis=-1))
    level = photo_scenes.irradiance(strip, Light(azimuth=0.0, elevation=0.0, softness=softness))[0, :, 0]
    assert level[0] == pytest.approx(1.0, abs=1e-9)
    assert np.all(np.diff(level) <= 1e-12)  # turning away from the light, never brighter
    if softness == 0.0:  # a point light: Lambert's cosine, nothing past 90 degrees
        np.testing.assert_allclose(level, np.maximum(np.cos(angles), 0.0), atol=1e-9)
    else:  # a soft box still reaches a little past 90 degrees, and its size grows with the softness
        assert level[3] > 0.0
    if softness == 1.0:
        assert level[4] > 0.0


def test_the_face_shadows_itself_and_a_ball_does_not() -> None:
    light = Light(azimuth=0.0, elevation=30.0, ambient=0.1, softness=0.0)  # from the right: the nose casts left
    face = photo_scenes.build("face", "flat", 64)
    with_shadows = photo_scenes.irradiance(face, light)[..., 0]
    without = photo_scenes.irradiance(dataclasses.replace(face, shadows=False), light)[..., 0]
    assert (with_shadows <= without + 1e-9).all()
    darker = face.inside & (with_shadows < without - 0.2)
    assert darker.sum() > 30
    assert np.nonzero(darker)[1].mean() < 64  # left of the nose, away from the light
    ball = photo_scenes.build("sphere", "flat", 64)  # convex: only the side turned away is dark, as Lambert says
    shadowed = photo_scenes.irradiance(dataclasses.replace(ball, shadows=True), light)
    np.testing.assert_allclose(shadowed, photo_scenes.irradiance(ball, light), atol=0.05)


def test_preview_beats_the_baselines_on_an_independent_scene() -> None:
    scene = photo_scenes.build("face", "patches", SIZE)
    sources = (
        Light(azimuth=160.0, elevation=20.0, ambient=0.0, softness=0.0),  # hard light, no fill: half the face black
        Light(azimuth=20.0, elevation=50.0, ambient=0.2, softness=0.7),
    )
    targets = (
        Light.named("right", softness=0.0),
        Light(azimuth=250.0, elevation=60.0, softness=0.8, ambient=0.3, color="#a0c8ff"),
    )
    gains = score_scene(lambda light: photo_scenes.photograph(scene, light), sources, targets)[:, 3]
    assert gains.mean() >= MIN_GAIN_DB and gains.min() > 3.0
