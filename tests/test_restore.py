"""Detail restoration and colour preservation on synthetic images whose aspect differs from the relit output."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from core.errors import InvalidParameterError
from core.finishing.restore import preserve_color, restore_details
from core.imaging.convert import resize_and_center_crop as cover_crop

ORIG_W, ORIG_H = 400, 300  # landscape input ...
RELIT_W, RELIT_H = 256, 320  # ... relit as a portrait, so cover-crop alignment matters
HF_SIGMA = 1.5  # the "high frequency" band measured by the tests


def _official_resize_and_center_crop(image: np.ndarray, target_width: int, target_height: int) -> np.ndarray:
    """Verbatim logic of the official IC-Light demos' helper, as the reference for cover_crop."""
    pil_image = Image.fromarray(image)
    original_width, original_height = pil_image.size
    scale_factor = max(target_width / original_width, target_height / original_height)
    resized_width = int(round(original_width * scale_factor))
    resized_height = int(round(original_height * scale_factor))
    resized_image = pil_image.resize((resized_width, resized_height), Image.LANCZOS)
    left = (resized_width - target_width) / 2
    top = (resized_height - target_height) / 2
    right = (resized_width + target_width) / 2
    bottom = (resized_height + target_height) / 2
    return np.array(resized_image.crop((left, top, right, bottom)))


@pytest.fixture(scope="module")
def scene() -> dict[str, np.ndarray]:
    """Textured colourful original, soft elliptic matte, and a blurred, re-lit, re-framed 'relit' image."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:ORIG_H, 0:ORIG_W].astype(np.float32)
    base = np.stack(
        [90 + 60 * xs / ORIG_W, 150 - 50 * ys / ORIG_H, 110 + 40 * np.sin(xs / 40.0) * np.cos(ys / 30.0)], axis=-1
    )
    texture = cv2.GaussianBlur(rng.normal(0, 18, (ORIG_H, ORIG_W, 3)).astype(np.float32), (0, 0), 0.8)
    original = np.clip(base + texture, 0, 255).astype(np.uint8)
    matte = np.zeros((ORIG_H, ORIG_W), np.float32)
    cv2.ellipse(matte, (ORIG_W // 2, ORIG_H // 2), (120, 130), 0, 0, 360, 1.0, -1)
    matte = np.clip(cv2.GaussianBlur(matte, (0, 0), 2.0), 0, 1)

    framed = cover_crop(original, RELIT_W, RELIT_H).astype(np.float32)
    light = np.linspace(1.25, 0.7, RELIT_W, dtype=np.float32)[None, :, None]  # light from the left
    tint = np.array([18, 4, -14], np.float32)  # warm light
    relit = cv2.GaussianBlur(framed, (0, 0), 3.0) * light + tint  # sampling loses the fine texture
    return {"original": original, "matte": matte, "relit": np.clip(relit, 0, 255).astype(np.uint8)}


def _inner(matte: np.ndarray, margin: int = 12) -> np.ndarray:
    """Relit-frame mask of pixels well inside the matte, away from edge effects."""
    framed = cover_crop(matte, RELIT_W, RELIT_H) > 0.99
    return cv2.erode(framed.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)).astype(bool)


def _high(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    return image - cv2.GaussianBlur(image, (0, 0), HF_SIGMA)


def _band(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32)
    return cv2.GaussianBlur(image, (0, 0), 1.0) - cv2.GaussianBlur(image, (0, 0), 6.0)


def _chroma_error(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    lab_a = cv2.cvtColor(a.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
    lab_b = cv2.cvtColor(b.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
    return float(np.linalg.norm(lab_a[..., 1:] - lab_b[..., 1:], axis=-1)[mask].mean())


@pytest.mark.parametrize("size", [(256, 320), (640, 448), (123, 77), (400, 300), (1000, 100)])
def test_cover_crop_matches_official_helper(scene, size):
    width, height = size
    out = cover_crop(scene["original"], width, height)
    assert out.shape == (height, width, 3) and out.dtype == np.uint8
    official = _official_resize_and_center_crop(scene["original"], width, height)
    # The official box drops a row/column when margin and size are both odd; ours keeps the size and the start.
    np.testing.assert_array_equal(out[: official.shape[0], : official.shape[1]], official)


def test_cover_crop_float_matte_has_same_geometry(scene):
    as_uint8 = cover_crop((scene["matte"] * 255).round().astype(np.uint8), RELIT_W, RELIT_H).astype(np.float32) / 255
    as_float = cover_crop(scene["matte"], RELIT_W, RELIT_H)
    assert as_float.shape == (RELIT_H, RELIT_W) and as_float.dtype == np.float32
    assert np.abs(as_float - as_uint8).max() < 2.5 / 255


def test_cover_crop_rejects_bad_size(scene):
    with pytest.raises(InvalidParameterError, match="0x10"):
        cover_crop(scene["original"], 0, 10)


def test_restore_details_transfers_high_frequencies(scene):
    relit, original = scene["relit"], scene["original"]
    out = restore_details(relit, original, scene["matte"], radius=5.0)
    assert out.shape == relit.shape and out.dtype == np.uint8

    inner = _inner(scene["matte"])
    reference = _high(cover_crop(original, RELIT_W, RELIT_H))[inner]
    energy = lambda image: float(np.mean(_high(image)[inner] ** 2))  # noqa: E731
    target = float(np.mean(reference**2))
    assert energy(relit) < 0.3 * target  # the relit image really lost the detail ...
    assert abs(energy(out) - target) / target < 0.10  # ... and restoring brings it back within 10%
    # Aligned with the cover-cropped original, not just similar in amount.
    assert np.corrcoef(_high(out)[inner].ravel(), reference.ravel())[0, 1] > 0.95


def test_restore_details_keeps_relit_lighting_and_background(scene):
    relit, matte = scene["relit"], scene["matte"]
    out = restore_details(relit, scene["original"], matte)
    inner = _inner(matte)
    low = lambda image: cv2.GaussianBlur(image.astype(np.float32), (0, 0), 8.0)  # noqa: E731
    assert np.abs(low(out) - low(relit))[inner].mean() < 2.0  # lighting comes from the relit image
    outside = cover_crop(matte, RELIT_W, RELIT_H) <= 0.0
    assert outside.sum() > 1000
    np.testing.assert_array_equal(out[outside], relit[outside])


def test_restore_details_radius_widens_transferred_band(scene):
    relit, original, matte = scene["relit"], scene["original"], scene["matte"]
    inner = _inner(matte, margin=24)
    reference = _band(cover_crop(original, RELIT_W, RELIT_H))

    def band_error(radius: float) -> float:
        out = restore_details(relit, original, matte, radius=radius)
        return float(np.mean((_band(out) - reference)[inner] ** 2))

    assert band_error(20.0) < 0.5 * band_error(1.0)


def test_preserve_color_strength_one_matches_original_chroma(scene):
    relit, original, matte = scene["relit"], scene["original"], scene["matte"]
    inner = _inner(matte)
    framed = cover_crop(original, RELIT_W, RELIT_H)
    assert _chroma_error(relit, framed, inner) > 8.0  # the warm light really shifted the colours

    out = preserve_color(relit, original, matte, strength=1.0)
    assert _chroma_error(out, framed, inner) < 2.0
    # Lightness (the relighting itself) is kept.
    lightness = lambda image: cv2.cvtColor(image.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)[..., 0]  # noqa: E731
    assert np.abs(lightness(out) - lightness(relit))[inner].mean() < 1.0


def test_preserve_color_strength_scales_the_pull(scene):
    relit, original, matte = scene["relit"], scene["original"], scene["matte"]
    inner = _inner(matte)
    framed = cover_crop(original, RELIT_W, RELIT_H)
    np.testing.assert_array_equal(preserve_color(relit, original, matte, strength=0.0), relit)
    before = _chroma_error(relit, framed, inner)
    half = _chroma_error(preserve_color(relit, original, matte, strength=0.5), framed, inner)
    assert 0.35 * before < half < 0.65 * before


def test_preserve_color_leaves_background_alone(scene):
    relit, matte = scene["relit"], scene["matte"]
    out = preserve_color(relit, scene["original"], matte, strength=1.0)
    outside = cover_crop(matte, RELIT_W, RELIT_H) <= 0.0
    np.testing.assert_array_equal(out[outside], relit[outside])


@pytest.mark.parametrize("radius", [0.0, 100.0, True])
def test_restore_details_rejects_bad_radius(scene, radius):
    with pytest.raises(InvalidParameterError, match=str(radius)):
        restore_details(scene["relit"], scene["original"], scene["matte"], radius=radius)


@pytest.mark.parametrize("strength", [-0.1, 1.5])
def test_preserve_color_rejects_bad_strength(scene, strength):
    with pytest.raises(InvalidParameterError, match=str(strength)):
        preserve_color(scene["relit"], scene["original"], scene["matte"], strength=strength)


def test_rejects_matte_of_wrong_size_or_range(scene):
    relit, original = scene["relit"], scene["original"]
    with pytest.raises(InvalidParameterError, match=r"\(300, 400\)"):
        restore_details(relit, original, np.ones((RELIT_H, RELIT_W), np.float32))
    with pytest.raises(InvalidParameterError, match="matte values"):
        preserve_color(relit, original, scene["matte"] * 2.0, strength=1.0)
    with pytest.raises(InvalidParameterError, match="float32"):
        restore_details(relit.astype(np.float32), original, scene["matte"])


def test_uint8_matte_is_accepted(scene):
    relit, original, matte = scene["relit"], scene["original"], scene["matte"]
    as_uint8 = (matte * 255).round().astype(np.uint8)
    a = restore_details(relit, original, matte)
    b = restore_details(relit, original, as_uint8)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
