"""Input validation and decoding: limits, rejection messages, EXIF, and every pixel mode to RGB uint8 (+ alpha)."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from core.errors import InvalidParameterError
from core.imaging.inputs import ImageLimits, LoadedImage, load_image

EXIF_ORIENTATION = 0x0112
ROTATE_90_CW = 6  # EXIF orientation: the stored image must be turned 90 degrees clockwise to be upright


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_with_size(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR claims width x height: tests the pixel cap without allocating the pixels."""
    data = bytearray(encode(Image.new("RGB", (4, 4)), "PNG"))
    ihdr = 8  # after the PNG signature: length (4), b"IHDR" (4), width (4), height (4), ...
    assert data[ihdr + 4 : ihdr + 8] == b"IHDR"
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    body = bytes(data[ihdr + 4 : ihdr + 8 + 13])
    data[ihdr + 8 + 13 : ihdr + 8 + 17] = struct.pack(">I", zlib.crc32(body))
    return bytes(data)


# ---------------------------------------------------------------- limits


def test_limits_defaults_and_env():
    assert ImageLimits.from_env({}) == ImageLimits(max_upload_mb=50.0, max_pixels=40_000_000)
    limits = ImageLimits.from_env({"ICLIGHT_MAX_UPLOAD_MB": "12.5", "ICLIGHT_MAX_PIXELS": "1000000"})
    assert limits == ImageLimits(max_upload_mb=12.5, max_pixels=1_000_000)
    assert ImageLimits.from_env({"ICLIGHT_MAX_PIXELS": "24 MP"}).max_pixels == 24_000_000
    assert limits.max_upload_bytes == int(12.5 * 1024 * 1024)


def test_limits_from_os_environ(monkeypatch):
    monkeypatch.setenv("ICLIGHT_MAX_UPLOAD_MB", "3")
    monkeypatch.delenv("ICLIGHT_MAX_PIXELS", raising=False)
    assert ImageLimits.from_env() == ImageLimits(max_upload_mb=3.0)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ICLIGHT_MAX_UPLOAD_MB": "lots"}, "ICLIGHT_MAX_UPLOAD_MB should be a number but is 'lots'"),
        ({"ICLIGHT_MAX_UPLOAD_MB": "-1"}, "ICLIGHT_MAX_UPLOAD_MB should be > 0 but is '-1'"),
        ({"ICLIGHT_MAX_PIXELS": "many"}, "ICLIGHT_MAX_PIXELS should be a number but is 'many'"),
    ],
)
def test_limits_bad_env(env, message):
    with pytest.raises(InvalidParameterError, match=message):
        ImageLimits.from_env(env)


def test_limits_validated():
    with pytest.raises(InvalidParameterError, match="max_pixels should be a positive integer but is 0"):
        ImageLimits(max_pixels=0)
    with pytest.raises(InvalidParameterError, match="max_upload_mb should be > 0 but is 0"):
        ImageLimits(max_upload_mb=0)


# ---------------------------------------------------------------- rejections


def test_gif_rejected_with_format_list(tmp_path):
    path = tmp_path / "foo.gif"
    path.write_bytes(encode(Image.new("RGB", (8, 8), (10, 20, 30)), "GIF"))
    with pytest.raises(InvalidParameterError) as info:
        load_image(path)
    assert str(info.value) == "foo.gif is a GIF; accepted formats are PNG, JPEG, WebP"


@pytest.mark.parametrize(("fmt", "text"), [("BMP", "a BMP"), ("TIFF", "a TIFF")])
def test_other_formats_rejected(fmt, text):
    with pytest.raises(InvalidParameterError) as info:
        load_image(encode(Image.new("RGB", (8, 8)), fmt), name="scan.img")
    assert str(info.value) == f"scan.img is {text}; accepted formats are PNG, JPEG, WebP"


def test_heic_named(tmp_path):
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64))
    with pytest.raises(InvalidParameterError) as info:
        load_image(path)
    assert str(info.value) == "IMG_0001.HEIC is a HEIC; accepted formats are PNG, JPEG, WebP"


def test_not_an_image(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("hello, I am text")
    with pytest.raises(InvalidParameterError) as info:
        load_image(path)
    assert str(info.value) == "x.png is not an image (cannot be decoded)"


def test_truncated_image_rejected():
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)), "PNG")
    with pytest.raises(InvalidParameterError, match=r"^cut\.png is not an image \(cannot be decoded: "):
        load_image(data[: len(data) // 2], name="cut.png")


def test_empty_missing_and_directory(tmp_path):
    with pytest.raises(InvalidParameterError, match="^upload.png is empty"):
        load_image(b"", name="upload.png")
    with pytest.raises(InvalidParameterError, match="nope.png does not exist"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InvalidParameterError, match="is not a file"):
        load_image(tmp_path)
    with pytest.raises(InvalidParameterError, match="image should be a path, bytes, a numpy array or a PIL image"):
        load_image(42)  # type: ignore[arg-type]


def test_upload_size_limit(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(encode(Image.new("RGB", (64, 64)), "PNG") + bytes(300_000))
    with pytest.raises(InvalidParameterError) as info:
        load_image(path, ImageLimits(max_upload_mb=0.25))
    assert str(info.value) == "big.png is 0.3 MB, above the 0.25 MB upload limit (ICLIGHT_MAX_UPLOAD_MB)"
    assert load_image(path, ImageLimits(max_upload_mb=1)).size == (64, 64)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_cap_checked_on_header():
    with pytest.raises(InvalidParameterError) as info:
        load_image(png_with_size(12000, 9000), ImageLimits())
    assert str(info.value) == "image is 12000x9000 = 108 MP, above the 40 MP limit (ICLIGHT_MAX_PIXELS)"


def test_pixel_cap_beyond_pillows_bomb_limit():
    # 200 MP is past twice Pillow's MAX_IMAGE_PIXELS, so Pillow refuses before we see the size.
    with pytest.raises(InvalidParameterError) as info:
        load_image(png_with_size(20000, 10000), ImageLimits(), name="bomb.png")
    assert str(info.value) == "bomb.png is 200 MP, above the 40 MP limit (ICLIGHT_MAX_PIXELS)"


def test_pixel_cap_exact_counts_when_rounding_hides_them():
    with pytest.raises(InvalidParameterError) as info:
        load_image(np.zeros((1000, 1001, 3), np.uint8), ImageLimits(max_pixels=1_000_000))
    assert str(info.value) == (
        "image is 1001x1000 = 1,001,000 pixels, above the 1,000,000 pixel limit (ICLIGHT_MAX_PIXELS)"
    )


def test_pixel_cap_applies_to_arrays_and_pil():
    limits = ImageLimits(max_pixels=100)
    with pytest.raises(InvalidParameterError, match=r"^image is 20x10 = 200 pixels, above the 100 pixel limit"):
        load_image(np.zeros((10, 20, 3), np.uint8), limits)
    with pytest.raises(InvalidParameterError, match=r"^photo is 20x10 = 200 pixels"):
        load_image(Image.new("RGB", (20, 10)), limits, name="photo")


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 4, 2), np.uint8), r"should be an HxW, HxWx3 or HxWx4 array but has shape \(4, 4, 2\)"),
        (np.zeros((0, 4, 3), np.uint8), r"has shape \(0, 4, 3\)"),
        (np.full((4, 4, 3), 2.0, np.float32), r"float32 values in \[2, 2\]; float images should be in \[0, 1\]"),
        (np.full((4, 4, 3), np.nan), "NaN or infinite"),
        (np.full((4, 4, 3), 300, np.int64), r"int64 values in \[300, 300\]; integer images should be in \[0, 255\]"),
        (np.zeros((4, 4, 3), np.complex64), "has dtype complex64"),
    ],
)
def test_bad_arrays(array, message):
    with pytest.raises(InvalidParameterError, match=message):
        load_image(array)


def test_loaded_image_validates():
    with pytest.raises(InvalidParameterError, match="rgb should be an HxWx3 uint8 array"):
        LoadedImage(rgb=np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InvalidParameterError, match="alpha should be a 4x4 float32 array"):
        LoadedImage(rgb=np.zeros((4, 4, 3), np.uint8), alpha=np.zeros((4, 5), np.float32))
    with pytest.raises(InvalidParameterError, match="image should not be empty but is 0x0"):
        load_image(Image.new("RGB", (0, 0)))


# ---------------------------------------------------------------- decoding


def test_png_rgb_roundtrip_from_path_bytes_and_pil(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, (12, 20, 3), np.uint8)
    path = tmp_path / "p.png"
    path.write_bytes(encode(Image.fromarray(pixels), "PNG"))
    for source in (path, str(path), path.read_bytes(), Image.open(path), pixels):
        loaded = load_image(source)
        np.testing.assert_array_equal(loaded.rgb, pixels)
        assert loaded.alpha is None and not loaded.has_meaningful_alpha
        assert loaded.size == (20, 12)


def test_exif_orientation_applied():
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (230, 20, 20)  # left half red
    stored[:, 20:] = (20, 20, 230)  # right half blue
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CW
    loaded = load_image(encode(Image.fromarray(stored), "JPEG", exif=exif, quality=95))
    assert loaded.size == (20, 40)  # now portrait
    top, bottom = loaded.rgb[5, 10].astype(int), loaded.rgb[35, 10].astype(int)
    assert top[0] > 200 and top[2] < 60  # turning clockwise brings the left (red) half to the top
    assert bottom[2] > 200 and bottom[0] < 60


def test_rgba_png_alpha_and_meaningfulness():
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[..., 3] = np.linspace(0, 255, 8).astype(np.uint8)[None, :]
    loaded = load_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    np.testing.assert_array_equal(loaded.rgb, rgba[..., :3])
    assert loaded.alpha.dtype == np.float32
    np.testing.assert_allclose(loaded.alpha, rgba[..., 3] / 255.0, atol=1e-7)
    assert loaded.has_meaningful_alpha
    opaque = rgba.copy()
    opaque[..., 3] = 255
    loaded = load_image(encode(Image.fromarray(opaque, "RGBA"), "PNG"))
    assert loaded.alpha is not None and not loaded.has_meaningful_alpha
    clear = rgba.copy()
    clear[..., 3] = 0
    assert not load_image(encode(Image.fromarray(clear, "RGBA"), "PNG")).has_meaningful_alpha


def test_webp_with_alpha():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (40, 80, 120)
    rgba[2:6, 2:6, 3] = 255
    loaded = load_image(encode(Image.fromarray(rgba, "RGBA"), "WEBP", lossless=True))
    np.testing.assert_array_equal(loaded.alpha, (rgba[..., 3] / 255).astype(np.float32))
    assert loaded.has_meaningful_alpha


def test_16bit_greyscale_png_scaled_not_clipped():
    grey = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    image = Image.fromarray(grey)
    assert image.mode == "I;16"
    loaded = load_image(encode(image, "PNG"))
    expected = np.round(grey / 257.0).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(loaded.rgb[..., channel], expected)
    assert loaded.rgb[32, 0, 0] == 128  # 16-bit 32768: half scale, where clipping would have given 255


def test_16bit_rgb_and_rgba_png():
    rgb16 = np.zeros((4, 5, 3), np.uint16)
    rgb16[..., 0] = 65535  # red full scale
    rgb16[..., 1] = 32896  # ~128 in 8 bits
    ok, buffer = cv2.imencode(".png", rgb16[..., ::-1])  # OpenCV writes BGR
    assert ok
    loaded = load_image(buffer.tobytes())
    np.testing.assert_allclose(loaded.rgb[0, 0].astype(int), (255, 128, 0), atol=1)
    rgba16 = np.dstack([rgb16[..., ::-1], np.full((4, 5), 32768, np.uint16)])
    ok, buffer = cv2.imencode(".png", rgba16)
    loaded = load_image(buffer.tobytes())
    np.testing.assert_allclose(loaded.alpha, 0.5, atol=1 / 255)
    assert loaded.has_meaningful_alpha


def test_palette_png_with_and_without_transparency():
    palette = Image.new("P", (6, 4), 0)
    palette.putpalette([250, 0, 0, 0, 250, 0] + [0] * 762)
    palette.paste(1, (3, 0, 6, 4))
    loaded = load_image(encode(palette, "PNG"))
    assert loaded.alpha is None
    assert tuple(loaded.rgb[0, 0]) == (250, 0, 0) and tuple(loaded.rgb[0, 5]) == (0, 250, 0)
    loaded = load_image(encode(palette, "PNG", transparency=0))
    assert loaded.alpha is not None and loaded.has_meaningful_alpha
    assert loaded.alpha[0, 0] == 0.0 and loaded.alpha[0, 5] == 1.0
    assert tuple(loaded.rgb[0, 5]) == (0, 250, 0)


def test_cmyk_jpeg_to_rgb():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    loaded = load_image(encode(cmyk, "JPEG", quality=95))
    assert loaded.alpha is None
    np.testing.assert_allclose(loaded.rgb[4, 4].astype(int), (255, 0, 0), atol=6)


def test_la_png_grey_plus_alpha():
    la = Image.new("LA", (5, 3), (100, 128))
    loaded = load_image(encode(la, "PNG"))
    assert np.all(loaded.rgb == 100)
    np.testing.assert_allclose(loaded.alpha, 128 / 255, atol=1e-6)
    assert loaded.has_meaningful_alpha


def test_greyscale_and_mpo_jpeg():
    grey = load_image(encode(Image.new("L", (7, 5), 90), "JPEG", quality=95))
    assert grey.rgb.shape == (5, 7, 3) and np.all(np.abs(grey.rgb.astype(int) - 90) <= 1)
    frame = Image.new("RGB", (8, 6), (200, 30, 30))
    mpo = load_image(encode(frame, "MPO", save_all=True, append_images=[frame]))  # phones write these
    assert mpo.size == (8, 6)


def test_array_inputs():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(load_image(grey).rgb, np.repeat(grey[..., None], 3, axis=2))
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 3] = 51
    loaded = load_image(rgba)
    np.testing.assert_allclose(loaded.alpha, 0.2, atol=1e-7)
    floats = np.full((3, 4, 3), 0.5, np.float32)
    assert np.all(load_image(floats).rgb == 128)
    words = np.full((3, 4, 3), 65535, np.uint16)
    assert np.all(load_image(words).rgb == 255)
    mask = np.eye(3, 4, dtype=bool)
    assert load_image(mask).rgb[0, 0, 0] == 255 and load_image(mask).rgb[0, 1, 0] == 0
    ints = np.full((3, 4, 3), 200, np.int64)
    assert np.all(load_image(ints).rgb == 200)
