"""Tests for core.finishing.normals: the official 'Compute Normal' maths on rendered spheres and on random data."""

from __future__ import annotations

import numpy as np
import pytest
from official_reference import normal_gallery

from core.errors import InvalidParameterError
from core.finishing.normals import (
    DEFAULT_SIGMA,
    NORMAL_LIGHTS,
    compute_normals,
    signed_to_uint8,
)
from core.params import BGSource

SIZE = 97  # odd, so the sphere's centre falls on a pixel
MAX_MEAN_ERROR_DEG = 15.0
# Lambert sphere lit like an IC-Light relight: 30 % fill light plus a key light 45 degrees off the view axis.
# On this rendering the official sigma = 6 recovers the normals to about 7.6 degrees (sigma 1, the plain
# sqrt(1 - u^2 - v^2), gives about 17 degrees: fill light shrinks the ratio differences that sigma restores).
FILL, KEY_ELEVATION_DEG = 0.3, 45.0
# Harder light (less fill, lower key): the ratios overshoot like tan(tilt), so sigma 6 tilts too far (about 21
# degrees) while sigma 1.5 gives about 5.6.
HARD_FILL, HARD_ELEVATION_DEG = 0.2, 40.0
LIGHT_AXES = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "bottom": (0.0, -1.0), "top": (0.0, 1.0)}


def sphere(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """True unit normals (x right, y up, z to camera) of a sphere filling the frame, and its inside mask."""
    ys, xs = np.mgrid[1.0 : -1.0 : size * 1j, -1.0 : 1.0 : size * 1j]  # row 0 is the top, so y falls downward
    inside = xs**2 + ys**2 < 1.0
    zs = np.sqrt(np.clip(1.0 - xs**2 - ys**2, 0.0, 1.0))
    normals = np.stack([xs, ys, zs], axis=2)
    normals[~inside] = (0.0, 0.0, 1.0)
    return normals, inside


def render(
    normals: np.ndarray, inside: np.ndarray, albedo: np.ndarray, fill: float, elevation_deg: float
) -> dict[str, np.ndarray]:
    """Four float32 relights in [0, 1] (Lambert + fill light), lit from the left, right, bottom and top."""
    horizontal, vertical = np.cos(np.radians(elevation_deg)), np.sin(np.radians(elevation_deg))
    relights = {}
    for name, (dx, dy) in LIGHT_AXES.items():
        light = np.array([dx * horizontal, dy * horizontal, vertical])
        shading = fill + (1.0 - fill) * np.clip(normals @ light, 0.0, None)
        image = albedo * shading[..., None]
        image[~inside] = 0.5  # grey backdrop, like the neutral background IC-Light relights against
        relights[name] = np.clip(image, 0.0, 1.0).astype(np.float32)
    return relights


def mean_angle_deg(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean angle between unit vector fields `a` and `b` over `mask`, in degrees."""
    cosine = np.clip(np.sum(a * b, axis=2), -1.0, 1.0)
    return float(np.degrees(np.arccos(cosine))[mask].mean())


@pytest.fixture(scope="module")
def scene() -> dict:
    normals, inside = sphere()
    rng = np.random.default_rng(0)
    # A speckled coloured albedo: the ratio images must cancel it, so it must not change the normals.
    textured = rng.uniform(0.3, 0.9, size=(SIZE, SIZE, 3))
    plain = np.full((SIZE, SIZE, 3), 0.8)
    return {
        "normals": normals,
        "inside": inside,
        "matte": inside.astype(np.float32),
        "soft": render(normals, inside, textured, FILL, KEY_ELEVATION_DEG),
        "soft_plain": render(normals, inside, plain, FILL, KEY_ELEVATION_DEG),
        "hard": render(normals, inside, textured, HARD_FILL, HARD_ELEVATION_DEG),
    }


def _args(relights: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [relights[name] for name in ("left", "right", "bottom", "top")]


def test_official_sigma_recovers_sphere(scene):
    normal = compute_normals(*_args(scene["soft"]), scene["matte"]).normal
    assert normal.shape == (SIZE, SIZE, 3)
    np.testing.assert_allclose(np.linalg.norm(normal[scene["inside"]], axis=1), 1.0, atol=1e-5)
    error = mean_angle_deg(normal, scene["normals"], scene["inside"])
    assert error < MAX_MEAN_ERROR_DEG, error


def test_sigma_is_a_real_knob(scene):
    """Hard light defeats sigma 6 but a soft sigma fits it; the soft scene is the other way round."""
    hard_official = compute_normals(*_args(scene["hard"]), scene["matte"]).normal
    hard_soft = compute_normals(*_args(scene["hard"]), scene["matte"], sigma=1.5).normal
    assert mean_angle_deg(hard_official, scene["normals"], scene["inside"]) > MAX_MEAN_ERROR_DEG
    assert mean_angle_deg(hard_soft, scene["normals"], scene["inside"]) < MAX_MEAN_ERROR_DEG
    soft_official = compute_normals(*_args(scene["soft"]), scene["matte"]).normal
    soft_soft = compute_normals(*_args(scene["soft"]), scene["matte"], sigma=1.5).normal
    assert mean_angle_deg(soft_official, scene["normals"], scene["inside"]) < mean_angle_deg(
        soft_soft, scene["normals"], scene["inside"]
    )


def test_albedo_cancels(scene):
    textured = compute_normals(*_args(scene["soft"]), scene["matte"]).normal
    plain = compute_normals(*_args(scene["soft_plain"]), scene["matte"]).normal
    assert mean_angle_deg(textured, plain, scene["inside"]) < 0.1


def test_axes_point_right_up_and_to_camera(scene):
    normal = compute_normals(*_args(scene["soft"]), scene["matte"]).normal
    mid, quarter = SIZE // 2, SIZE // 4
    assert normal[mid, mid + quarter, 0] > 0.3  # right of centre faces right
    assert normal[mid, mid - quarter, 0] < -0.3
    assert normal[mid - quarter, mid, 1] > 0.3  # rows go down, so above centre faces up
    assert normal[mid + quarter, mid, 1] < -0.3
    np.testing.assert_allclose(normal[mid, mid], (0.0, 0.0, 1.0), atol=1e-3)


def test_outside_matte_faces_camera(scene):
    result = compute_normals(*_args(scene["soft"]), scene["matte"])
    np.testing.assert_array_equal(result.normal[0, 0], (0.0, 0.0, 1.0))
    assert tuple(result.images()[0][0, 0]) == (127, 127, 255)


GALLERY_CASES = [(DEFAULT_SIGMA, (24, 40)), (2.0, (24, 40)), (DEFAULT_SIGMA, (50, 60))]  # matte sizes: same, resized


@pytest.mark.parametrize(("sigma", "matte_size"), GALLERY_CASES)
def test_gallery_matches_official_bytes(sigma, matte_size):
    rng = np.random.default_rng(1)
    relights = [rng.uniform(0.0, 1.0, size=(24, 40, 3)).astype(np.float32) for _ in range(4)]
    relights[0][:4, :4] = 0.0  # black pixels exercise the epsilon in the division
    matte = rng.uniform(0.0, 1.0, size=(*matte_size, 1)).astype(np.float32)
    images = compute_normals(*relights, matte, sigma=sigma).images()
    expected = normal_gallery(*relights, matte, sigma)
    assert len(images) == len(expected) == 9
    for ours, theirs in zip(images, expected, strict=True):
        assert ours.dtype == np.uint8 and ours.shape == (24, 40, 3)
        # Summation order may differ in the last float32 bit, so allow a single grey level.
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_identical_relights_give_flat_normals_and_grey_ratios():
    image = np.random.default_rng(2).uniform(0.1, 0.9, size=(8, 8, 3))
    result = compute_normals(image, image, image, image, np.ones((8, 8)))
    np.testing.assert_allclose(result.normal, np.broadcast_to((0.0, 0.0, 1.0), (8, 8, 3)), atol=1e-12)
    assert result.normal.dtype == np.float64  # float64 input keeps its precision
    gallery = result.images()
    assert all((ratio == 127).all() for ratio in gallery[1:5])
    np.testing.assert_array_equal(gallery[5], (image * 255.0).clip(0, 255).astype(np.uint8))


def test_matte_is_resized_and_centre_cropped(scene):
    args = _args(scene["soft"])
    full = compute_normals(*args, scene["matte"]).normal
    # A wider matte whose extra side bands are zero: covering the relight size crops the bands away.
    wide = np.zeros((SIZE, SIZE + 20), dtype=np.float32)
    wide[:, 10:-10] = scene["matte"]
    np.testing.assert_allclose(compute_normals(*args, wide).normal, full, atol=1e-6)
    # A half-size matte is scaled up: it agrees away from the blurred rim.
    small = scene["matte"][::2, ::2][..., None]
    upscaled = compute_normals(*args, small).normal
    core = np.hypot(*np.mgrid[-1.0 : 1.0 : SIZE * 1j, -1.0 : 1.0 : SIZE * 1j]) < 0.85
    np.testing.assert_allclose(upscaled[core], full[core], atol=1e-3)


def test_normal_lights_follow_official_order():
    assert NORMAL_LIGHTS == (BGSource.LEFT, BGSource.RIGHT, BGSource.BOTTOM, BGSource.TOP)


def test_signed_to_uint8_clips():
    values = np.array([[[-2.0, -1.0, 0.0], [0.5, 1.0, 3.0]]])
    np.testing.assert_array_equal(signed_to_uint8(values), [[[0, 0, 127], [191, 255, 255]]])


GOOD = np.full((6, 5, 3), 0.5, dtype=np.float32)
GOOD_MATTE = np.ones((6, 5, 1), dtype=np.float32)


@pytest.mark.parametrize(
    ("left", "matte", "sigma", "message"),
    [
        (np.full((6, 4, 3), 0.5, dtype=np.float32), GOOD_MATTE, 6.0, "(6, 4, 3)"),  # mismatched shapes
        (np.full((6, 5), 0.5, dtype=np.float32), GOOD_MATTE, 6.0, "(6, 5)"),  # no channel axis
        (np.full((6, 5, 4), 0.5, dtype=np.float32), GOOD_MATTE, 6.0, "(6, 5, 4)"),  # RGBA
        (np.full((6, 5, 3), 128, dtype=np.uint8), GOOD_MATTE, 6.0, "uint8"),  # 0..255 bytes
        (np.full((6, 5, 3), 200.0, dtype=np.float32), GOOD_MATTE, 6.0, "200"),  # float 0..255
        (np.full((6, 5, 3), -0.5, dtype=np.float32), GOOD_MATTE, 6.0, "-0.5"),  # [-1, 1] decoder output
        (np.full((6, 5, 3), np.nan, dtype=np.float32), GOOD_MATTE, 6.0, "nan"),
        ([[0.5]], GOOD_MATTE, 6.0, "list"),
        (GOOD, np.ones((6, 5, 3), dtype=np.float32), 6.0, "(6, 5, 3)"),  # matte with colour channels
        (GOOD, np.full((6, 5), 255, dtype=np.uint8), 6.0, "uint8"),
        (GOOD, np.full((6, 5), 1.5, dtype=np.float32), 6.0, "1.5"),
        (GOOD, np.ones((0, 5), dtype=np.float32), 6.0, "(0, 5)"),
        (GOOD, GOOD_MATTE, 0.0, "0.0"),
        (GOOD, GOOD_MATTE, -2.0, "-2.0"),
        (GOOD, GOOD_MATTE, float("inf"), "inf"),
        (GOOD, GOOD_MATTE, True, "True"),
        (GOOD, GOOD_MATTE, "6", "'6'"),
    ],
)
def test_rejects_bad_inputs(left, matte, sigma, message):
    with pytest.raises(InvalidParameterError) as info:
        compute_normals(left, GOOD, GOOD, GOOD, matte, sigma=sigma)
    assert message in str(info.value)
