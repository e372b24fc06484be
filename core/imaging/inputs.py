"""Input images: limits and validation shared by the CLI and the apps, decoding to RGB uint8 (+ alpha)."""

from __future__ import annotations

import io
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from core.errors import InvalidParameterError

logger = logging.getLogger(__name__)

MAX_UPLOAD_MB_ENV = "ICLIGHT_MAX_UPLOAD_MB"
MAX_PIXELS_ENV = "ICLIGHT_MAX_PIXELS"
DEFAULT_MAX_UPLOAD_MB = 50.0
DEFAULT_MAX_PIXELS = 40_000_000
BYTES_PER_MB = 1024 * 1024
PIXELS_PER_MP = 1_000_000
# Pillow format names we decode; MPO is how Pillow reports the multi-picture JPEGs many phones write.
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP"})
ACCEPTED_TEXT = "PNG, JPEG, WebP"
UINT8_MAX = 255
UINT16_TO_UINT8 = 257.0  # 65535 / 255: maps 16-bit full scale exactly onto 8-bit full scale
DEFAULT_NAME = "image"
# ISO-BMFF brands of HEIC/HEIF files (iPhone photos): Pillow cannot identify them, so name them ourselves.
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


@dataclass(frozen=True)
class ImageLimits:
    """Upload limits checked before an image is decoded."""

    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB  # largest accepted file, in MB of 1024 * 1024 bytes
    max_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb guard: width * height above this is rejected

    def __post_init__(self) -> None:
        if isinstance(self.max_upload_mb, bool) or not isinstance(self.max_upload_mb, (int, float)):
            raise InvalidParameterError(f"max_upload_mb should be a number but is {self.max_upload_mb!r}")
        if not math.isfinite(self.max_upload_mb) or self.max_upload_mb <= 0:
            raise InvalidParameterError(f"max_upload_mb should be > 0 but is {self.max_upload_mb}")
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels <= 0:
            raise InvalidParameterError(f"max_pixels should be a positive integer but is {self.max_pixels!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ImageLimits:
        """Limits from ICLIGHT_MAX_UPLOAD_MB (MB) and ICLIGHT_MAX_PIXELS (pixels, or megapixels as '40MP')."""
        env = os.environ if environ is None else environ
        upload = env.get(MAX_UPLOAD_MB_ENV, "").strip()
        pixels = env.get(MAX_PIXELS_ENV, "").strip()
        return cls(
            max_upload_mb=_parse_env_number(MAX_UPLOAD_MB_ENV, upload) if upload else DEFAULT_MAX_UPLOAD_MB,
            max_pixels=_parse_env_pixels(pixels) if pixels else DEFAULT_MAX_PIXELS,
        )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * BYTES_PER_MB)


@dataclass(frozen=True, eq=False)  # arrays have no single truth value, so compare by identity
class LoadedImage:
    """A decoded input: RGB pixels plus the alpha channel when the file had one."""

    rgb: np.ndarray  # HxWx3 uint8
    alpha: np.ndarray | None = None  # HxW float32 in [0, 1], None when the source had no alpha channel
    has_meaningful_alpha: bool = field(init=False)  # alpha is present, not all opaque and not all transparent

    def __post_init__(self) -> None:
        rgb, alpha = self.rgb, self.alpha
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise InvalidParameterError(f"rgb should be an HxWx3 uint8 array but is {_describe(rgb)}")
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            raise InvalidParameterError(f"image should not be empty but is {rgb.shape[1]}x{rgb.shape[0]}")
        if alpha is not None:
            if not isinstance(alpha, np.ndarray) or alpha.dtype != np.float32 or alpha.shape != rgb.shape[:2]:
                raise InvalidParameterError(
                    f"alpha should be a {rgb.shape[0]}x{rgb.shape[1]} float32 array but is {_describe(alpha)}"
                )
        # A fully transparent layer carries no matte either: treat it like a missing one.
        meaningful = alpha is not None and bool(alpha.min() < 1.0) and bool(alpha.max() > 0.0)
        object.__setattr__(self, "has_meaningful_alpha", meaningful)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.rgb.shape[1], self.rgb.shape[0]


Source = str | os.PathLike | bytes | np.ndarray | Image.Image


def load_image(source: Source, limits: ImageLimits | None = None, name: str | None = None) -> LoadedImage:
    """Validate and decode a path, encoded bytes, array or PIL image into RGB uint8 (+ alpha)."""
    limits = ImageLimits.from_env() if limits is None else limits
    if isinstance(source, np.ndarray):
        return _from_array(source, limits, name or DEFAULT_NAME)
    if isinstance(source, Image.Image):
        return _from_pil(source, limits, name or DEFAULT_NAME)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = name or DEFAULT_NAME
        _check_upload_size(label, len(data), limits)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = name or path.name or str(path)
        if not path.exists():  # named, not shown with its folder: an upload's is the server's temp space
            raise InvalidParameterError(f"{label} does not exist")
        if not path.is_file():
            raise InvalidParameterError(f"{label} is not a file")
        _check_upload_size(label, path.stat().st_size, limits)
        data = path.read_bytes()
    else:
        raise InvalidParameterError(
            f"image should be a path, bytes, a numpy array or a PIL image but is {type(source).__name__}"
        )
    if not data:
        raise InvalidParameterError(f"{label} is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
            raise InvalidParameterError(f"{label} is a HEIC; accepted formats are {ACCEPTED_TEXT}") from None
        raise InvalidParameterError(f"{label} is not an image (cannot be decoded)") from None
    except Image.DecompressionBombError as exc:
        raise InvalidParameterError(_bomb_message(label, str(exc), limits)) from None
    return _from_pil(image, limits, label)


def _from_pil(image: Image.Image, limits: ImageLimits, label: str) -> LoadedImage:
    """Checks format and pixel count on the header, then decodes, orients and converts."""
    # 1. Format and size come from the header, before any pixel is decoded.
    if image.format is not None and image.format not in ACCEPTED_FORMATS:
        raise InvalidParameterError(
            f"{label} is {_article(image.format)} {image.format}; accepted formats are {ACCEPTED_TEXT}"
        )
    _check_pixels(label, *image.size, limits)
    # 2. Decode; truncated or corrupt data only shows up here.
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidParameterError(f"{label} is not an image (cannot be decoded: {exc})") from None
    # 3. Apply the EXIF orientation so portraits from phones are upright.
    image = _exif_upright(image, label)
    # 4. Convert whatever mode it has to RGB uint8 + optional alpha.
    rgb, alpha = _pil_to_arrays(image, label)
    return LoadedImage(rgb=rgb, alpha=alpha)


def _exif_upright(image: Image.Image, label: str) -> Image.Image:
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception as exc:  # a broken EXIF block must not reject pixels that decode fine
        logger.warning("ignoring unreadable EXIF orientation in %s: %s", label, exc)
        return image
    return image if upright is None else upright


def _pil_to_arrays(image: Image.Image, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale PNG: scale to 8 bits instead of letting Pillow clip everything above 255.
        grey = np.asarray(image).astype(np.float64).clip(0, 65535) / UINT16_TO_UINT8
        grey = np.round(grey).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2), None
    if mode == "F":
        grey = np.round(np.nan_to_num(np.asarray(image, dtype=np.float64)).clip(0, UINT8_MAX)).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2), None
    if mode == "CMYK":
        return _cmyk_to_rgb(image, label), None
    if mode in ("RGBa", "La"):  # premultiplied alpha: un-premultiply first
        image = image.convert("RGBA" if mode == "RGBa" else "LA")
        mode = image.mode
    if mode in ("LA", "PA", "RGBA") or image.has_transparency_data:
        rgba = np.asarray(image.convert("RGBA"))
        rgb = np.ascontiguousarray(rgba[..., :3])
        alpha = rgba[..., 3].astype(np.float32) / UINT8_MAX
        return rgb, alpha
    try:
        return np.ascontiguousarray(np.asarray(image.convert("RGB"))), None
    except ValueError as exc:
        raise InvalidParameterError(
            f"{label} has colour mode {mode}, which cannot be converted to RGB ({exc})"
        ) from None


def _cmyk_to_rgb(image: Image.Image, label: str) -> np.ndarray:
    """CMYK through its embedded ICC profile when it has one (print files), else Pillow's plain formula."""
    profile = image.info.get("icc_profile")
    if profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            converted = ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
            if converted is not None:
                return np.ascontiguousarray(np.asarray(converted))
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            logger.warning("ignoring unusable ICC profile in %s: %s", label, exc)
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def _from_array(array: np.ndarray, limits: ImageLimits, label: str) -> LoadedImage:
    """HxW, HxWx1, HxWx3 or HxWx4 arrays: uint8, uint16, bool, other ints in [0, 255], floats in [0, 1]."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidParameterError(f"{label} should be an HxW, HxWx3 or HxWx4 array but has shape {array.shape}")
    _check_pixels(label, array.shape[1], array.shape[0], limits)
    pixels = _to_uint8(array, label)
    channels = pixels.shape[2]
    if channels == 1:
        return LoadedImage(rgb=np.repeat(pixels, 3, axis=2))
    rgb = np.ascontiguousarray(pixels[..., :3])
    alpha = pixels[..., 3].astype(np.float32) / UINT8_MAX if channels == 4 else None
    return LoadedImage(rgb=rgb, alpha=alpha)


def _to_uint8(array: np.ndarray, label: str) -> np.ndarray:
    kind = array.dtype
    if kind == np.uint8:
        return array
    if kind == np.uint16:
        return np.round(array / UINT16_TO_UINT8).astype(np.uint8)
    if kind == np.bool_:
        return array.astype(np.uint8) * UINT8_MAX
    if np.issubdtype(kind, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > UINT8_MAX:
            raise InvalidParameterError(
                f"{label} has {kind} values in [{low}, {high}]; integer images should be in [0, 255]"
            )
        return array.astype(np.uint8)
    if np.issubdtype(kind, np.floating):
        if not np.isfinite(array).all():
            raise InvalidParameterError(f"{label} has NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise InvalidParameterError(
                f"{label} has {kind} values in [{low:g}, {high:g}]; float images should be in [0, 1]"
            )
        return np.round(array * UINT8_MAX).astype(np.uint8)
    raise InvalidParameterError(f"{label} has dtype {kind}; expected uint8, uint16, bool, int or float")


def _check_upload_size(label: str, size: int, limits: ImageLimits) -> None:
    if size > limits.max_upload_bytes:
        raise InvalidParameterError(
            f"{label} is {size / BYTES_PER_MB:.1f} MB, above the {limits.max_upload_mb:g} MB upload limit "
            f"({MAX_UPLOAD_MB_ENV})"
        )


def _check_pixels(label: str, width: int, height: int, limits: ImageLimits) -> None:
    pixels = width * height
    if pixels > limits.max_pixels:
        shown, limit = _megapixels(pixels), _megapixels(limits.max_pixels)
        if shown == limit:  # rounding hid the difference: show exact counts
            shown, limit = f"{pixels:,} pixels", f"{limits.max_pixels:,} pixel"
        else:
            shown, limit = f"{shown} MP", f"{limit} MP"
        raise InvalidParameterError(
            f"{label} is {width}x{height} = {shown}, above the {limit} limit ({MAX_PIXELS_ENV})"
        )


def _bomb_message(label: str, pillow_message: str, limits: ImageLimits) -> str:
    """Our pixel-limit message for an image Pillow refused to open (above twice Image.MAX_IMAGE_PIXELS)."""
    # Pillow refuses before we can read the size; its message is the only place that gives the pixel count.
    found = re.search(r"\((\d+) pixels\)", pillow_message)
    amount = f"is {_megapixels(int(found.group(1)))} MP" if found else "has too many pixels"
    pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    if limits.max_pixels < pillow_limit:
        return f"{label} {amount}, above the {_megapixels(limits.max_pixels)} MP limit ({MAX_PIXELS_ENV})"
    return f"{label} {amount}, above Pillow's {_megapixels(pillow_limit)} MP decoding limit"


def _megapixels(pixels: int) -> str:
    return f"{pixels / PIXELS_PER_MP:.1f}".removesuffix(".0")


def _article(word: str) -> str:
    return "an" if word[:1].upper() in "AEIO" else "a"


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return type(value).__name__


def _parse_env_number(var: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidParameterError(f"{var} should be a number but is {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidParameterError(f"{var} should be > 0 but is {text!r}")
    return value


def _parse_env_pixels(text: str) -> int:
    compact = text.upper().replace(" ", "")
    if compact.endswith("MP"):
        return int(_parse_env_number(MAX_PIXELS_ENV, compact.removesuffix("MP")) * PIXELS_PER_MP)
    return int(_parse_env_number(MAX_PIXELS_ENV, text))


def hide_upload_folders(text: str) -> str:
    """`text` with each path inside the server's upload folder cut down to the file's name."""
    import tempfile

    roots = {os.environ.get("GRADIO_TEMP_DIR", ""), os.path.join(tempfile.gettempdir(), "gradio")}
    for root in sorted(filter(None, roots), key=len, reverse=True):
        folder = re.escape(os.path.realpath(root)) + "|" + re.escape(root)
        text = re.sub(rf"(?:{folder})[\\/](?:[^\s'\"\\/]+[\\/])*([^\s'\"\\/]+)", r"\1", text)
    return text
