"""Real-ESRGAN x4plus upscaling after sampling (spandrel, tiled), with a Lanczos fallback when weights are missing."""

from __future__ import annotations

import math
import os
import tempfile
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import CorruptWeightsError, IncompatibleModelError, InvalidParameterError, WeightsNotFoundError
from core.params import Upscale, coerce_enum

if TYPE_CHECKING:
    import torch

WEIGHTS_FILE = "RealESRGAN_x4plus.pth"
HUB_REPO = "lllyasviel/Annotators"  # mirrors the official release file under the same name
RELEASE_URL = "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth"
DOWNLOAD_TIMEOUT_S = 60
TARGET_SHORT_SIDE = 1080  # Upscale.P1080: short side of the final image
MODE_FACTORS = {Upscale.X2: 2, Upscale.X4: 4}
DEFAULT_TILE = 512  # input pixels per tile side (core, without the overlap)
DEFAULT_OVERLAP = 32  # context pixels read beyond each tile side and then cropped away
MIN_TILE = 32  # halving on out-of-memory stops here
UINT8_MAX = 255.0


@dataclass(frozen=True)
class UpscaleResult:
    """An upscaled image, plus a notice for the user when the model could not be used."""

    image: np.ndarray  # uint8 HxWx3
    notice: str | None  # human-readable reason for a fallback, None when all went as asked
    used_model: bool  # True when Real-ESRGAN ran, False for OFF or the Lanczos fallback


class Upscaler:
    """Lazily loads and caches Real-ESRGAN x4plus; upscales by mode, falling back to Lanczos with a notice."""

    def __init__(
        self,
        models_dir: Path,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        model: Any | None = None,
        *,
        allow_download: bool = True,
        tile: int = DEFAULT_TILE,
        overlap: int = DEFAULT_OVERLAP,
    ) -> None:
        _check_tiling(tile, overlap)
        self.models_dir = Path(models_dir)
        self.device = device
        self.dtype = dtype
        self.allow_download = allow_download
        self.tile = tile  # shrinks for good after an out-of-memory, so later calls do not fail again first
        self.overlap = overlap
        self._model = model  # an injected model (tests, callers that share one) is used as is and never unloaded
        self._injected = model is not None
        self._download_error: str | None = None  # remembered so a missing network is not retried on every call
        self._lock = threading.Lock()
        if model is not None:
            _check_model(model, repr(model))

    @property
    def weights_path(self) -> Path:
        """Where the weights are looked for and downloaded to."""
        return self.models_dir / WEIGHTS_FILE

    @property
    def loaded(self) -> bool:
        """True while a model is held in memory."""
        return self._model is not None

    def ensure_weights(self) -> Path:
        """Path of the weights file, downloading it on first use; WeightsNotFoundError when impossible."""
        if self.weights_path.is_file():
            return self.weights_path
        if self.allow_download and self._download_error is None:
            try:
                return _download_weights(self.models_dir)
            except OSError as error:
                self._download_error = str(error)
        reason = self._download_error or "downloading is disabled"
        raise WeightsNotFoundError(
            f"{WEIGHTS_FILE} not found in {self.models_dir} ({reason}); download it from "
            f"https://huggingface.co/{HUB_REPO} or {RELEASE_URL} and put it in {self.models_dir}"
        )

    def load(self) -> Any:
        """The spandrel model on this upscaler's device and dtype, loaded on first call."""
        with self._lock:
            if self._model is None:
                self._model = _load_model(self.ensure_weights(), self.device, self.dtype)
            return self._model

    def unload(self) -> None:
        """Drop the loaded model (an injected one is kept) and free accelerator memory."""
        with self._lock:
            if not self._injected:
                self._model = None
        from core.models.devices import free_accelerator_memory

        free_accelerator_memory()

    def upscale(self, image: np.ndarray, mode: Upscale | str) -> UpscaleResult:
        """Upscale `image` per `mode`; without usable weights, Lanczos plus a notice saying why."""
        # 1. Check inputs
        mode = coerce_enum(Upscale, mode, "upscale mode")
        image = _check_image(image)
        height, width = image.shape[:2]
        # 2. Work out the exact output size
        target = target_size(width, height, mode)
        if target is None:
            return UpscaleResult(image, None, False)
        # 3. Model passes until both sides reach the target, then Lanczos to the exact size
        try:
            model = self.load()
            out = image
            while out.shape[1] < target[0] or out.shape[0] < target[1]:
                out, self.tile = _upscale_tiled(model, out, int(model.scale), self.tile, self.overlap)
        except (WeightsNotFoundError, CorruptWeightsError, IncompatibleModelError) as error:
            return UpscaleResult(
                lanczos(image, *target), f"Upscaled with Lanczos instead of Real-ESRGAN: {error}", False
            )
        except RuntimeError as error:
            from core.models.devices import is_out_of_memory

            if not is_out_of_memory(error):
                raise
            notice = f"Upscaled with Lanczos: Real-ESRGAN ran out of memory even with {MIN_TILE} px tiles ({error})"
            return UpscaleResult(lanczos(image, *target), notice, False)
        return UpscaleResult(lanczos(out, *target), None, True)


def upscale_tiled(
    model: Any, image: np.ndarray, scale: int, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP
) -> np.ndarray:
    """Run `model` (float BCHW in 0..1 -> `scale`x) over uint8 HxWx3 `image` in tiles; halve the tile on OOM."""
    return _upscale_tiled(model, _check_image(image), scale, tile, overlap)[0]


def lanczos(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize uint8 `image` to width x height with PIL's (antialiased) Lanczos."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.LANCZOS))


def _upscale_tiled(model: Any, image: np.ndarray, scale: int, tile: int, overlap: int) -> tuple[np.ndarray, int]:
    """Tiled upscale; returns the image and the tile size that fitted in memory."""
    _check_tiling(tile, overlap)
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise InvalidParameterError(f"scale should be a positive integer but is {scale!r}")
    while True:
        try:
            return _run_tiles(model, image, scale, tile, overlap), tile
        except RuntimeError as error:
            from core.models.devices import free_accelerator_memory, is_out_of_memory

            if not is_out_of_memory(error) or tile // 2 < MIN_TILE:
                raise
            free_accelerator_memory()
            tile //= 2


def _run_tiles(model: Any, image: np.ndarray, scale: int, tile: int, overlap: int) -> np.ndarray:
    """One pass over the tile grid: each tile reads `overlap` px of context per side, only its core is kept."""
    import torch

    device, dtype = _model_device_dtype(model)
    height, width = image.shape[:2]
    out = np.empty((height * scale, width * scale, 3), np.uint8)
    # Even split instead of fixed steps so no sliver tile at the edge gets too little context.
    ys = _splits(height, tile)
    xs = _splits(width, tile)
    with torch.inference_mode():
        for y0, y1 in ys:
            for x0, x1 in xs:
                # Context so the convolutions see the same neighbourhood as in a full-image pass;
                # cropping it away afterwards removes the zero-padding artefacts that would show as seams.
                cy0, cy1 = max(y0 - overlap, 0), min(y1 + overlap, height)
                cx0, cx1 = max(x0 - overlap, 0), min(x1 + overlap, width)
                patch = torch.from_numpy(np.ascontiguousarray(image[cy0:cy1, cx0:cx1])).permute(2, 0, 1)[None]
                patch = (patch.to(device=device, dtype=dtype) / UINT8_MAX).contiguous()
                result = model(patch)
                expected = (1, 3, (cy1 - cy0) * scale, (cx1 - cx0) * scale)
                if tuple(result.shape) != expected:
                    raise IncompatibleModelError(
                        f"upscaler returned shape {tuple(result.shape)} for a {tuple(patch.shape)} tile; "
                        f"expected {expected} for scale {scale}"
                    )
                core = result[0, :, (y0 - cy0) * scale : (y1 - cy0) * scale, (x0 - cx0) * scale : (x1 - cx0) * scale]
                core = (core.float().clamp(0, 1) * UINT8_MAX).round().to(torch.uint8)
                out[y0 * scale : y1 * scale, x0 * scale : x1 * scale] = core.permute(1, 2, 0).cpu().numpy()
    return out


def _splits(length: int, tile: int) -> list[tuple[int, int]]:
    count = max(1, math.ceil(length / tile))
    edges = [round(i * length / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def target_size(width: int, height: int, mode: Upscale) -> tuple[int, int] | None:
    """(width, height) of the final image, or None when nothing is to be done."""
    if mode is Upscale.OFF:
        return None
    if mode is Upscale.P1080:
        short = min(width, height)
        if short >= TARGET_SHORT_SIDE:
            return None  # already "at least 1080p"; never shrink a result
        factor = TARGET_SHORT_SIDE / short
        if width <= height:
            return TARGET_SHORT_SIDE, round(height * factor)
        return round(width * factor), TARGET_SHORT_SIDE
    factor = MODE_FACTORS[mode]
    return width * factor, height * factor


def _download_weights(models_dir: Path) -> Path:
    """Fetch the weights into `models_dir` from the Hugging Face hub, else from the GitHub release."""
    models_dir.mkdir(parents=True, exist_ok=True)
    errors = []
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id=HUB_REPO, filename=WEIGHTS_FILE, local_dir=models_dir))
    except Exception as error:  # hub errors come in many types (offline, HTTP, auth); try the mirror
        errors.append(f"hub {HUB_REPO}: {type(error).__name__}: {error}")
    # Write next to the target and rename, so an interrupted download never leaves a truncated weights file.
    handle, temp = tempfile.mkstemp(dir=models_dir, prefix=f".{WEIGHTS_FILE}.", suffix=".part")
    try:
        with (
            os.fdopen(handle, "wb") as file,
            urllib.request.urlopen(RELEASE_URL, timeout=DOWNLOAD_TIMEOUT_S) as response,
        ):
            while chunk := response.read(1 << 20):
                file.write(chunk)
        os.replace(temp, models_dir / WEIGHTS_FILE)
        return models_dir / WEIGHTS_FILE
    except OSError as error:
        errors.append(f"{RELEASE_URL}: {error}")
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    raise OSError("download failed: " + "; ".join(errors))


def _load_model(path: Path, device: str, dtype: torch.dtype | None) -> Any:
    """Load `path` with spandrel, check it is an RGB super-resolution model, move it to device/dtype."""
    import spandrel
    import torch

    from core.models.devices import CPU

    try:
        descriptor = spandrel.ModelLoader(device=device).load_from_file(path)
    except spandrel.UnsupportedModelError as error:
        raise IncompatibleModelError(f"{path} is not a model spandrel recognises ({error})") from error
    except Exception as error:  # torch.load raises pickle, zip, EOF and runtime errors for bad files
        raise CorruptWeightsError(
            f"cannot read {path}: {type(error).__name__}: {error}; delete it and retry"
        ) from error
    _check_model(descriptor, str(path))
    if dtype is None:
        # fp16 halves memory and time on accelerators; CPU kernels are fp32.
        on_cpu = torch.device(device).type == CPU
        dtype = torch.float32 if on_cpu or not descriptor.supports_half else torch.float16
    return descriptor.to(dtype).eval()


def _check_model(model: Any, name: str) -> None:
    scale = getattr(model, "scale", None)
    if not callable(model) or not isinstance(scale, int) or scale < 2:
        raise IncompatibleModelError(f"{name} is not an upscaling model (scale {scale!r}); expected {WEIGHTS_FILE}")
    for attr in ("input_channels", "output_channels"):
        if getattr(model, attr, 3) != 3:
            raise IncompatibleModelError(f"{name} has {attr}={getattr(model, attr)}, expected an RGB model")


def _model_device_dtype(model: Any) -> tuple[Any, Any]:
    """Device and dtype the model's inputs must have (spandrel descriptors and plain modules)."""
    import torch

    if isinstance(getattr(model, "device", None), torch.device) and isinstance(
        getattr(model, "dtype", None), torch.dtype
    ):
        return model.device, model.dtype
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        first = next(iter(parameters()), None)
        if first is not None:
            return first.device, first.dtype
    return torch.device("cpu"), torch.float32


def _check_tiling(tile: int, overlap: int) -> None:
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < MIN_TILE:
        raise InvalidParameterError(f"tile should be an integer >= {MIN_TILE} but is {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
        raise InvalidParameterError(f"overlap should be a non-negative integer but is {overlap!r}")


def _check_image(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 1:
        raise InvalidParameterError(f"image should be a uint8 HxWx3 array but has shape {array.shape}, {array.dtype}")
    return array
