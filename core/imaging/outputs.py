"""Result PNGs: unique, atomically written files carrying the full RelightParams, and reading them back."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import InvalidParameterError
from core.params import RelightParams

if TYPE_CHECKING:
    from PIL import Image

PARAMS_KEY = "iclight_params"  # machine-readable: RelightParams as JSON
MODEL_KEY = "iclight_model"  # the weights that made it: IC-Light variant, base model, device and dtypes (JSON)
PARAMETERS_KEY = "parameters"  # human-readable, in the layout other SD tools show and parse
SOFTWARE_KEY, SOFTWARE = "Software", "IC-Light app"
RESERVED_KEYS = frozenset({PARAMS_KEY, PARAMETERS_KEY, SOFTWARE_KEY})
INDEX_DIGITS = 5  # iclight_00001.png
MAX_NAME_ATTEMPTS = 10_000  # concurrent writers each move on by one name per collision
FILE_MODE = 0o644  # mkstemp creates 0600; results should be readable like any other saved image
MAX_KEYWORD_LEN = 79  # PNG text keyword limit
STEM_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
REDACTED = "[redacted]"
# Names of settings and environment variables that hold credentials.
SECRET_NAME = re.compile(r"api[_-]?key|token|secret|passw(?:or)?d|authorization|credential|cookie", re.IGNORECASE)
# Credential-shaped strings (OpenAI, Hugging Face, GitHub, Google) wherever they appear.
SECRET_VALUE = re.compile(r"\b(?:sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|AIza[\w-]{30,})")
MIN_ENV_SECRET_LEN = 8  # shorter environment values are too likely to be ordinary words to redact by substring
MAX_TEXT_MB = 1  # Pillow refuses a text chunk that decompresses beyond this (PngImagePlugin.MAX_TEXT_CHUNK)
TEMP_SUFFIX = ".png.tmp"
STALE_TEMP_S = 3600  # a temp file this old is left over whatever process wrote it (writing one takes seconds)
_TEMP_PATTERN = re.compile(r"\.[A-Za-z0-9][A-Za-z0-9._-]*\.(\d+)\.[^/]*" + re.escape(TEMP_SUFFIX))


def save_result(
    image: np.ndarray,
    params: RelightParams,
    outputs_dir: Path,
    stem: str = "iclight",
    extra_text: dict[str, str] | None = None,
) -> Path:
    """Write `image` as `<stem>_NNNNN.png` in `outputs_dir` with the parameters as PNG text; return its path."""
    from PIL import Image, PngImagePlugin

    # 1. Check inputs
    array = _check_image(image)
    if not isinstance(params, RelightParams):
        raise InvalidParameterError(f"params should be a RelightParams but is {type(params).__name__}")
    if not isinstance(stem, str) or not STEM_PATTERN.fullmatch(stem):
        raise InvalidParameterError(f"stem should be 1-64 letters, digits, '.', '_' or '-' but is {stem!r}")
    extra_text = dict(extra_text or {})
    _check_extra_text(extra_text)

    # 2. Metadata: exact parameters, a readable summary, caller notes; credentials removed from all of it
    text = {
        PARAMS_KEY: _params_json(params),
        PARAMETERS_KEY: parameters_text(params, array.shape[1], array.shape[0]),
        SOFTWARE_KEY: SOFTWARE,
    }
    text.update({key: value for key, value in extra_text.items() if not SECRET_NAME.search(key)})
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, redact(value))  # non-latin-1 text goes into an iTXt chunk automatically

    # 3. Encode into a hidden temporary file next to the target, so the rename/link stays on one file system
    outputs_dir = Path(outputs_dir)
    outputs_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(outputs_dir)
    # The writer's process id is in the name, so a later run can tell a killed writer's leftover from a live one.
    handle, temp_name = tempfile.mkstemp(dir=outputs_dir, prefix=f".{stem}.{os.getpid()}.", suffix=TEMP_SUFFIX)
    temp = Path(temp_name)
    try:
        with os.fdopen(handle, "wb") as file:
            Image.fromarray(array).save(file, format="PNG", pnginfo=info)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, FILE_MODE)
        # 4. Publish under a name nobody else has taken
        return _publish(temp, outputs_dir, stem)
    finally:
        temp.unlink(missing_ok=True)


def remove_stale_temps(outputs_dir: Path) -> list[Path]:
    """Delete the half-written `.png.tmp` files a killed run left in `outputs_dir`; return what was removed."""
    import time

    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(outputs_dir))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_PATTERN.fullmatch(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match.group(1))
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_S
        except OSError:
            continue
        if pid != os.getpid() and (old or not _process_alive(pid)):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


def _process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a temp from another machine ages out instead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def public_model_name(base_model: str) -> str:
    """How results record the base model: a Hub id as is, a local file or folder by its name only."""
    path = Path(base_model).expanduser()
    if path.is_absolute() or path.exists() or base_model.startswith((".", "~")):
        return path.name or base_model
    return base_model


def outputs_problem(outputs_dir: Path | None) -> str | None:
    """Why results cannot be saved in `outputs_dir` (None when they can): a real write is tried, not guessed."""
    if outputs_dir is None:
        return None
    folder = Path(outputs_dir)
    if folder.exists() and not folder.is_dir():
        return f"the outputs folder '{folder.name}' is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".write-check."):
            pass
    except OSError as error:
        return f"the outputs folder '{folder.name}' is not writable ({error.strerror or type(error).__name__})"
    return None


def read_params(path_or_image: str | os.PathLike[str] | bytes | Image.Image) -> RelightParams:
    """The exact RelightParams stored in a result PNG (path, bytes or PIL image)."""
    text = read_png_text(path_or_image)
    name = _describe_source(path_or_image)
    raw = text.get(PARAMS_KEY)
    if raw is None:
        raise InvalidParameterError(
            f"{name} has no IC-Light metadata (no '{PARAMS_KEY}' text chunk): only PNGs saved by this app, "
            "and not re-encoded since, can restore settings"
        )
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as error:
        raise InvalidParameterError(f"{name} has damaged IC-Light metadata ({error}): {raw[:80]!r}") from None
    except RecursionError:
        raise InvalidParameterError(f"{name} has IC-Light metadata nested too deeply to be settings") from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        reason = str(error).split(";")[0]
        raise InvalidParameterError(f"{name} has IC-Light metadata that cannot be read ({reason})") from None
    if not isinstance(data, dict):
        raise InvalidParameterError(f"{name} has IC-Light metadata that is not a JSON object: {raw[:80]!r}")
    return RelightParams.from_dict(data)


def read_png_text(path_or_image: str | os.PathLike[str] | bytes | Image.Image) -> dict[str, str]:
    """All PNG text chunks (tEXt, zTXt, iTXt) of a file, bytes or PIL image, as a dict."""
    import io

    from PIL import Image, UnidentifiedImageError

    if isinstance(path_or_image, np.ndarray):
        raise InvalidParameterError(
            "a numpy image carries no PNG metadata; pass the file path or a PIL image of the saved PNG"
        )
    if isinstance(path_or_image, Image.Image):
        return _text_of(path_or_image)
    name = _describe_source(path_or_image)
    source = io.BytesIO(path_or_image) if isinstance(path_or_image, (bytes, bytearray)) else path_or_image
    try:
        with Image.open(source) as pil:
            return _text_of(pil)
    except FileNotFoundError:
        raise InvalidParameterError(f"{name} does not exist") from None
    except UnidentifiedImageError:
        raise InvalidParameterError(f"{name} is not a readable image") from None
    except ValueError as error:  # Pillow's decompression-bomb guard on text chunks
        if "too large" not in str(error).lower():
            raise
        raise InvalidParameterError(
            f"{name} has a PNG text chunk larger than {MAX_TEXT_MB} MB when decompressed; not reading it"
        ) from None
    except (OSError, SyntaxError) as error:
        reason = str(error).replace(os.fspath(source), name) if isinstance(source, (str, os.PathLike)) else error
        raise InvalidParameterError(f"{name} is not a readable image ({reason})") from None


def parameters_text(params: RelightParams, width: int | None = None, height: int | None = None) -> str:
    """Readable summary: prompt, 'Negative prompt: ...', then 'Key: value, ...' (the usual SD layout)."""
    light = params.light
    if light is None:
        light_text = "none"
    else:
        light_text = light.named_direction or (
            f"azimuth {light.azimuth:g} elevation {light.elevation:g} color {light.color} "
            f"intensity {light.intensity:g} ambient {light.ambient:g}"
        )
    fields = {
        "Mode": params.mode.value,
        "Steps": params.steps,
        "Sampler": params.sampler.value,
        "CFG scale": f"{params.cfg:g}",
        "Seed": params.seed,
        "Size": f"{params.width}x{params.height}",
        "Hires size": "x".join(map(str, params.highres_size)),
        "Lowres denoise": f"{params.lowres_denoise:g}",
        "Hires denoise": f"{params.highres_denoise:g}",
        "Light": light_text,
        "Background": params.bg_source.value,
        "Matting": params.matting.value,
        "Keep background": "yes" if params.keep_background else "no",
        "Restore details": f"radius {params.detail_radius:g}" if params.restore_details else "off",
        "Preserve colour": f"{params.preserve_color:g}",
        "Upscale": params.upscale.value,
    }
    if params.fast.value != "off":
        fields["Fast mode"] = params.fast.value
    if params.loras:
        fields["LoRAs"] = " ".join(spec.to_text() for spec in params.loras)
    if width is not None and height is not None:
        fields["Output size"] = f"{width}x{height}"
    settings = ", ".join(f"{key}: {value}" for key, value in fields.items())
    return f"{params.positive_prompt}\nNegative prompt: {params.negative_prompt}\n{settings}"


def redact(text: str) -> str:
    """`text` with credential-shaped strings and the values of secret environment variables replaced."""
    for name, value in os.environ.items():
        if SECRET_NAME.search(name) and len(value) >= MIN_ENV_SECRET_LEN and value in text:
            text = text.replace(value, REDACTED)
    return SECRET_VALUE.sub(REDACTED, text)


def _params_json(params: RelightParams) -> str:
    """RelightParams.to_json(), minus `extra` entries whose names say they hold credentials."""
    data = params.to_dict()
    data["extra"] = _drop_secret_keys(data["extra"])
    try:
        return json.dumps(data, sort_keys=True)  # the same encoding as RelightParams.to_json
    except TypeError as error:
        raise InvalidParameterError(f"params.extra should hold only JSON values but {error}") from None


def _drop_secret_keys(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _drop_secret_keys(v) for k, v in value.items() if not SECRET_NAME.search(str(k))}
    if isinstance(value, (list, tuple)):
        return [_drop_secret_keys(v) for v in value]
    return value


def _publish(temp: Path, outputs_dir: Path, stem: str) -> Path:
    """Give the finished temp file a fresh `<stem>_NNNNN.png` name without ever replacing an existing file."""
    index = _next_index(outputs_dir, stem)
    for _ in range(MAX_NAME_ATTEMPTS):
        target = outputs_dir / f"{stem}_{index:0{INDEX_DIGITS}d}.png"
        try:
            # A hard link is atomic and fails if the name exists: readers never see a partial file and a
            # concurrent writer that picked the same number simply moves on to the next one.
            os.link(temp, target)
            return target
        except FileExistsError:
            index += 1
        except OSError:
            # File systems without hard links (FAT, some network shares): reserve the name with O_EXCL,
            # then rename over our own empty placeholder.
            try:
                os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
            except FileExistsError:
                index += 1
                continue
            os.replace(temp, target)
            return target
    raise InvalidParameterError(f"no free file name for {stem!r} in {outputs_dir} after {MAX_NAME_ATTEMPTS} attempts")


def _next_index(outputs_dir: Path, stem: str) -> int:
    """One past the highest existing `<stem>_NNNNN.png` number, so sequential saves rarely collide."""
    pattern = re.compile(re.escape(stem) + r"_(\d+)\.png")
    numbers = [int(m.group(1)) for entry in os.scandir(outputs_dir) if (m := pattern.fullmatch(entry.name))]
    return max(numbers, default=0) + 1


def _text_of(pil: Image.Image) -> dict[str, str]:
    # `.text` also collects chunks stored after the image data; plain `.info` only has those before it.
    text = getattr(pil, "text", None)
    if text is None:
        text = {k: v for k, v in pil.info.items() if isinstance(v, str)}
    return {str(k): str(v) for k, v in text.items()}


def _describe_source(source: Any) -> str:
    """The file's name (never its folder: an upload's lies in the server's temp space)."""
    if isinstance(source, (str, os.PathLike)):
        return repr(Path(source).name or os.fspath(source))
    if isinstance(source, (bytes, bytearray)):
        return f"the uploaded image ({len(source)} bytes)"
    filename = getattr(source, "filename", "")
    return f"'{filename}'" if filename else "the image"


def _check_extra_text(extra_text: dict[str, str]) -> None:
    for key, value in extra_text.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEYWORD_LEN or not key.isprintable():
            raise InvalidParameterError(
                f"extra_text keys should be 1-{MAX_KEYWORD_LEN} printable chars but got {key!r}"
            )
        if not key.isascii():
            raise InvalidParameterError(f"extra_text keys should be ASCII (PNG keywords) but got {key!r}")
        if key in RESERVED_KEYS:
            raise InvalidParameterError(f"extra_text key {key!r} is reserved; reserved: {sorted(RESERVED_KEYS)}")
        if not isinstance(value, str):
            raise InvalidParameterError(f"extra_text[{key!r}] should be a string but is {value!r}")


def _check_image(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    channels_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    if array.dtype != np.uint8 or not channels_ok or min(array.shape[:2], default=0) < 1:
        raise InvalidParameterError(
            f"image should be a uint8 HxWx3 (or HxWx4, HxW) array but has shape {array.shape}, {array.dtype}"
        )
    return np.ascontiguousarray(array)
