"""Background removal before sampling: RMBG-1.4 / BiRefNet as the official demos run them, alpha, GrabCut."""

from __future__ import annotations

import gc
import logging
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from PIL import Image

from core.errors import CorruptWeightsError, IncompatibleModelError, InvalidParameterError, WeightsNotFoundError
from core.imaging.inputs import LoadedImage, load_image
from core.params import Matting, coerce_enum

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

NEUTRAL_GREY = 127  # the official demos composite the cut-out onto this grey
NORMAL_SIGMA = 16.0  # official offset for normal estimation; relighting uses 0
UINT8_MAX = 255

# RMBG-1.4 recipe from the official demos: about 256 cells of 64x64 px (~1 MP), input scaled as x / 127 - 1.
RMBG_CELL = 64
RMBG_CELLS = 256.0
RMBG_SCALE = 127.0
# BiRefNet recipe from its model card: 1024x1024, ImageNet mean/std, sigmoid of the last (finest) output.
BIREFNET_SIDE = 1024
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# GrabCut's graph cut grows faster than the pixel count (seconds at 512 px on noisy textures); 320 px keeps it
# well under a second on one core, and the feathered upsampled cut is what a fallback can promise anyway.
GRABCUT_WORK_SIDE = 320
GRABCUT_ITERATIONS = 5
GRABCUT_BORDER = 0.02  # seed strip width as a fraction of the shorter side
GRABCUT_SURE_ROWS = 0.5  # the side strips are sure background only in the top half of the image
GRABCUT_FEATHER = 1.0  # Gaussian sigma in working-resolution px that softens the binary cut
GRABCUT_MIN_SIDE = 8  # below this there is no border and interior to learn from
GRABCUT_SEED = 0  # OpenCV's k-means init is random; a fixed seed keeps relights reproducible
MIN_FOREGROUND = 0.005  # a GrabCut cut smaller than this fraction of the image found nothing

MODEL_BACKENDS = (Matting.RMBG, Matting.BIREFNET)
HUB_IDS = {Matting.RMBG: "briaai/RMBG-1.4", Matting.BIREFNET: "ZhengPeng7/BiRefNet"}
LOCAL_NAMES = {Matting.RMBG: "RMBG-1.4", Matting.BIREFNET: "BiRefNet"}
ENV_VARS = {Matting.RMBG: "ICLIGHT_RMBG_MODEL", Matting.BIREFNET: "ICLIGHT_BIREFNET_MODEL"}
AUTO_CLASS = "AutoModelForImageSegmentation"
WEIGHTS_FILE = "model.safetensors"
# Only what a remote-code model needs; the RMBG-1.4 repo also holds .pth, .bin and ONNX copies (~600 MB).
HUB_PATTERNS = ["*.json", "*.py", "*.safetensors"]


@dataclass(frozen=True, eq=False)  # arrays have no single truth value, so compare by identity
class MattingResult:
    """A cut-out ready for conditioning, its matte, how it was made and what the user should be told."""

    foreground: np.ndarray  # HxWx3 uint8: subject on neutral grey (or the original image with keep_background)
    matte: np.ndarray  # HxW float32 in [0, 1], 1 = subject
    method: Matting  # the method actually used (GRABCUT after a fallback, ALPHA when the image's own was used)
    notice: str | None = None  # a fallback or substitution the UI should show, None when all went as asked


def composite_on_grey(img: np.ndarray, alpha: np.ndarray, sigma: float = 0.0) -> np.ndarray:
    """The official demos' composite: 127 + (img - 127 + sigma) * alpha, clipped, truncated to uint8."""
    _check_rgb(img)
    if alpha.shape != img.shape[:2]:
        raise InvalidParameterError(f"alpha should have shape {img.shape[:2]} but has {alpha.shape}")
    if not math.isfinite(sigma):
        raise InvalidParameterError(f"sigma should be a finite number but is {sigma!r}")
    weight = alpha.astype(np.float32)[..., None]
    result = NEUTRAL_GREY + (img.astype(np.float32) - NEUTRAL_GREY + np.float32(sigma)) * weight
    return result.clip(0, UINT8_MAX).astype(np.uint8)


def grabcut_matte(img: np.ndarray) -> np.ndarray:
    """HxW float32 matte from OpenCV GrabCut seeded with the image border as background."""
    _check_rgb(img)
    height, width = img.shape[:2]
    scale = min(1.0, GRABCUT_WORK_SIDE / max(height, width))
    work_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    work = img if scale == 1.0 else cv2.resize(img, work_size, interpolation=cv2.INTER_AREA)
    work_h, work_w = work.shape[:2]
    if min(work_h, work_w) < GRABCUT_MIN_SIDE:
        return np.ones((height, width), np.float32)
    # Seeds: the top strip and the upper halves of the side strips are sure background; the lower halves of the
    # sides are probable background; the bottom strip is left unseeded. Subjects (people, products) are usually cut
    # by the bottom edge, and seeding it as background teaches GrabCut the subject's colours, inverting the cut.
    strip = max(1, round(min(work_h, work_w) * GRABCUT_BORDER))
    sure_rows = max(strip, round(work_h * GRABCUT_SURE_ROWS))
    mask = np.full((work_h, work_w), cv2.GC_PR_FGD, np.uint8)
    mask[:, :strip] = cv2.GC_PR_BGD
    mask[:, -strip:] = cv2.GC_PR_BGD
    mask[:sure_rows, :strip] = cv2.GC_BGD
    mask[:sure_rows, -strip:] = cv2.GC_BGD
    mask[:strip, :] = cv2.GC_BGD
    background_model = np.zeros((1, 65), np.float64)
    foreground_model = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(GRABCUT_SEED)
    cv2.grabCut(
        np.ascontiguousarray(work),
        mask,
        None,
        background_model,
        foreground_model,
        GRABCUT_ITERATIONS,
        cv2.GC_INIT_WITH_MASK,
    )
    cut = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.float32)
    soft = cv2.GaussianBlur(cut, (0, 0), GRABCUT_FEATHER)
    if soft.shape != (height, width):
        soft = cv2.resize(soft, (width, height), interpolation=cv2.INTER_LINEAR)
    return soft.clip(0.0, 1.0).astype(np.float32)


def rmbg_matte(model: torch.nn.Module, img: np.ndarray) -> np.ndarray:
    """RMBG-1.4 alpha exactly as the official IC-Light demos compute it (~1 MP, x / 127 - 1, first output)."""
    import torch
    import torch.nn.functional as F

    _check_rgb(img)
    height, width = img.shape[:2]
    k = (RMBG_CELLS / float(height * width)) ** 0.5
    # max(1, ...) keeps very elongated images (where the official code would ask for a 0 px side) working.
    feed_w = RMBG_CELL * max(1, round(width * k))
    feed_h = RMBG_CELL * max(1, round(height * k))
    feed = np.asarray(Image.fromarray(img).resize((feed_w, feed_h), Image.LANCZOS))
    device, dtype = _model_device_dtype(model)
    x = torch.from_numpy(np.array(feed)).float() / RMBG_SCALE - 1.0
    x = x.movedim(-1, 0)[None].to(device=device, dtype=dtype)
    with torch.inference_mode():
        output = model(x)
    alpha = _output_tensor(output, Matting.RMBG)
    alpha = F.interpolate(alpha.float(), size=(height, width), mode="bilinear")
    return alpha[0, 0].cpu().numpy().clip(0.0, 1.0).astype(np.float32)


def birefnet_matte(model: torch.nn.Module, img: np.ndarray) -> np.ndarray:
    """BiRefNet alpha as its model card computes it (1024x1024, ImageNet normalisation, sigmoid of last output)."""
    import torch
    import torch.nn.functional as F

    _check_rgb(img)
    height, width = img.shape[:2]
    # torchvision's Resize on a PIL image, as in the model card, is PIL's bilinear resize.
    feed = np.asarray(Image.fromarray(img).resize((BIREFNET_SIDE, BIREFNET_SIDE), Image.BILINEAR))
    device, dtype = _model_device_dtype(model)
    x = torch.from_numpy(np.array(feed)).float() / UINT8_MAX
    x = (x - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    x = x.movedim(-1, 0)[None].to(device=device, dtype=dtype)
    with torch.inference_mode():
        output = model(x)
    alpha = _output_tensor(output, Matting.BIREFNET).float().sigmoid()
    alpha = F.interpolate(alpha, size=(height, width), mode="bilinear")
    return alpha[0, 0].cpu().numpy().clip(0.0, 1.0).astype(np.float32)


_MATTE_FUNCTIONS = {Matting.RMBG: rmbg_matte, Matting.BIREFNET: birefnet_matte}


class Matter:
    """Cuts the subject out of an input image; loads the matting models lazily and caches them per device."""

    def __init__(
        self,
        models_dir: Path,
        device: str = "cpu",
        models: dict[Matting, torch.nn.Module] | None = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.device = device
        models = models or {}
        self._injected: dict[Matting, Any] = {coerce_enum(Matting, k, "matting"): m for k, m in models.items()}
        for backend in self._injected:
            if backend not in MODEL_BACKENDS:
                raise InvalidParameterError(
                    f"models can only be given for rmbg and birefnet but got {backend.value!r}"
                )
        # Settings are read from the environment once, here.
        self._overrides = {backend: os.environ.get(ENV_VARS[backend], "").strip() for backend in MODEL_BACKENDS}
        self._cache: dict[tuple[Matting, str], Any] = {}
        # Why a backend could not be loaded: a failed Hub lookup can take half a minute, so it is not retried
        # on every request (unload() clears it).
        self._failures: dict[Matting, str] = {}
        self._lock = threading.Lock()

    @property
    def loaded(self) -> tuple[tuple[Matting, str], ...]:
        """(backend, device) pairs currently held in memory."""
        return tuple(self._cache)

    def extract(
        self,
        image: LoadedImage | np.ndarray,
        method: Matting | str,
        sigma: float = 0.0,
        keep_background: bool = False,
        prefer_alpha: bool = True,
    ) -> MattingResult:
        """Cut out the subject and composite it on grey (or keep the original background); never fails on weights."""
        # 1. Check inputs.
        method = coerce_enum(Matting, method, "matting")
        if not isinstance(image, LoadedImage):
            image = load_image(image)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma):
            raise InvalidParameterError(f"sigma should be a finite number but is {sigma!r}")
        rgb = image.rgb
        notice: str | None = None
        # 2. Decide the matte.
        if method is Matting.NONE:
            matte = np.ones(rgb.shape[:2], np.float32)
        elif method is Matting.ALPHA:
            if image.alpha is None:
                raise InvalidParameterError(
                    "matting 'alpha' needs an image with an alpha channel (PNG or WebP with transparency) "
                    "but this image has none; choose rmbg, birefnet or grabcut"
                )
            matte = image.alpha
        elif prefer_alpha and image.has_meaningful_alpha:
            # A cut-out with its own transparency is already matted; a model would only see undefined colours.
            matte, notice = image.alpha, f"Used the image's own alpha channel instead of {method.value}."
            method = Matting.ALPHA
        elif method is Matting.GRABCUT:
            matte, notice = self._grabcut(rgb)
        else:
            matte, notice = self._model_matte(method, rgb)
            if matte is None:
                matte, grabcut_notice = self._grabcut(rgb)
                notice = " ".join(filter(None, (notice, grabcut_notice)))
                method = Matting.GRABCUT
        # 3. Composite.
        foreground = rgb.copy() if keep_background else composite_on_grey(rgb, matte, float(sigma))
        return MattingResult(foreground=foreground, matte=matte.astype(np.float32), method=method, notice=notice)

    def load(self, backend: Matting | str) -> torch.nn.Module:
        """The model for `backend` on this Matter's device, loading it on first use; raises if it cannot be had."""
        backend = coerce_enum(Matting, backend, "matting")
        if backend not in MODEL_BACKENDS:
            raise InvalidParameterError(f"only rmbg and birefnet use a model, not {backend.value!r}")
        key = (backend, self.device)
        with self._lock:
            if key not in self._cache:
                if backend in self._injected:
                    model = self._injected[backend]
                else:
                    model = load_matting_model(self.source(backend), label=LOCAL_NAMES[backend])
                self._cache[key] = model.to(self.device).eval()
            return self._cache[key]

    def source(self, backend: Matting) -> str:
        """Where `backend` is loaded from: the env override, else `<models_dir>/<name>` if present, else the Hub."""
        override = self._overrides.get(backend)
        if override:
            return override
        local = self.models_dir / LOCAL_NAMES[backend]
        return str(local) if local.is_dir() else HUB_IDS[backend]

    def unload(self) -> None:
        """Drop every cached model (and remembered load failures) so memory is freed and loading is retried."""
        from core.models.devices import free_accelerator_memory

        with self._lock:
            self._cache.clear()
            self._failures.clear()
        gc.collect()
        free_accelerator_memory()

    def _model_matte(self, backend: Matting, rgb: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        """(matte, None) from the backend's model, or (None, notice) when the model cannot be had or used."""
        reason = self._failures.get(backend)
        if reason is None:
            try:
                return _MATTE_FUNCTIONS[backend](self.load(backend), rgb), None
            except (WeightsNotFoundError, CorruptWeightsError, IncompatibleModelError) as exc:
                # The full error (paths, errno codes) is for the log; the user gets what happened and what to do.
                logger.warning("%s could not be loaded: %s", LOCAL_NAMES[backend], exc)
                reason = self._fallback_notice(backend, exc)
                self._failures[backend] = reason
        return None, reason

    def _fallback_notice(self, backend: Matting, exc: Exception) -> str:
        """The GrabCut-fallback notice in plain words: why the model was not used and where it should go."""
        name, env = LOCAL_NAMES[backend], ENV_VARS[backend]
        if isinstance(exc, WeightsNotFoundError):
            source = self.source(backend)
            why = "it is not installed"
            if source == HUB_IDS[backend]:
                why += f" (it comes from https://huggingface.co/{source})"
        elif isinstance(exc, CorruptWeightsError):
            why = f"its files are damaged ({_plain(_first_line(exc))})"
        else:
            why = f"it is not a model this app can use ({_plain(_first_line(exc))})"
        where = self._overrides.get(backend) or str(self.models_dir / name)
        return (
            f"{name} could not be used, so the background was removed with GrabCut (rougher edges): {why}. "
            f"To use {name}, put its model folder at {where} or set {env}."
        )

    def failure(self, backend: Matting) -> str | None:
        """Why `backend` fell back to GrabCut on this Matter, if it did (cleared by unload)."""
        return self._failures.get(coerce_enum(Matting, backend, "matting"))

    def describe(self, backend: Matting) -> str:
        """A few words for a status line: which method the default `backend` will give, without loading anything."""
        backend = coerce_enum(Matting, backend, "matting")
        name = LOCAL_NAMES.get(backend, backend.value)
        if backend not in MODEL_BACKENDS or backend in self._injected or (backend, self.device) in self._cache:
            return name
        if self.failure(backend):
            return f"GrabCut ({name} unavailable)"
        source = self.source(backend)
        if Path(source).is_dir() or _hub_cached(source):
            return name
        from core.models.loading import offline_mode

        return f"GrabCut ({name} not installed)" if offline_mode() else f"{name} (downloads on first use)"

    @staticmethod
    def _grabcut(rgb: np.ndarray) -> tuple[np.ndarray, str | None]:
        matte = grabcut_matte(rgb)
        if float((matte > 0.5).mean()) < MIN_FOREGROUND:
            return np.ones_like(matte), "GrabCut found no subject, so the whole image was kept."
        return matte, None


def _hub_cached(repo_id: str) -> bool:
    """True when the Hub cache holds the model's config (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id (e.g. a missing local path): not cached
        return False


def _plain(text: str) -> str:
    """`text` without errno codes, and with file paths cut to their last part."""
    text = re.sub(r"\[Errno -?\d+\]\s*", "", text)
    return re.sub(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/:]+)+[\\/]?", lambda m: Path(m.group(0).rstrip("/\\")).name, text)


def _first_line(exc: Exception, limit: int = 200) -> str:
    """The gist of an error for a user-facing notice (library messages can run to many lines)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " (…)"


def load_matting_model(source: str, label: str = "matting model") -> torch.nn.Module:
    """Load a remote-code segmentation model (RMBG-1.4 / BiRefNet layout) from a Hub id or a local folder."""
    folder = _resolve_folder(source, label)
    if not (folder / "config.json").is_file():
        raise WeightsNotFoundError(f"{folder} has no config.json; expected the Hub layout of {label}")
    if not (folder / WEIGHTS_FILE).is_file():
        raise WeightsNotFoundError(f"{folder} has no {WEIGHTS_FILE}; expected the Hub layout of {label}")
    from transformers import AutoModelForImageSegmentation

    # trust_remote_code runs the Python files in the folder: the architecture only exists as such code.
    try:
        model, info = AutoModelForImageSegmentation.from_pretrained(
            str(folder), trust_remote_code=True, use_safetensors=True, output_loading_info=True
        )
    except Exception as exc:  # the direct construction below reports the precise cause
        # transformers 5 builds models on the meta device and expects post_init() in __init__; the RMBG-1.4 and
        # BiRefNet remote code predate that and fail there, so build the class ourselves and load the weights.
        logger.info(
            "from_pretrained failed for %s (%s: %s); constructing it directly", folder, type(exc).__name__, exc
        )
        model = _construct_remote_model(folder, label)
    else:
        # from_pretrained only warns about missing weights and fills them randomly: a silent garbage matte.
        problems = {key: sorted(info.get(key) or ()) for key in ("missing_keys", "mismatched_keys")}
        if any(problems.values()):
            raise IncompatibleModelError(f"{folder / WEIGHTS_FILE} does not fit the {label} architecture: {problems}")
    import torch

    return model.to(dtype=torch.float32).eval().requires_grad_(False)


def _resolve_folder(source: str, label: str) -> Path:
    """A local folder for `source`, downloading the needed files for a Hub id (or taking them from the cache)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or source.startswith((".", "~")) or "\\" in source or source.count("/") != 1:
        raise WeightsNotFoundError(f"{label} folder {source} does not exist")
    from huggingface_hub import snapshot_download

    from core.models.loading import offline_mode

    try:
        return Path(snapshot_download(source, allow_patterns=HUB_PATTERNS, local_files_only=offline_mode()))
    except Exception as exc:  # offline, no network, proxy, unknown or gated repo: the weights cannot be had now
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsNotFoundError(f"{label} ({source}) is not cached and cannot be downloaded: {first_line}") from exc


def _construct_remote_model(folder: Path, label: str) -> torch.nn.Module:
    """Instantiate the folder's remote-code class on the CPU and load model.safetensors into it, strictly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=True)
        class_ref = (getattr(config, "auto_map", None) or {}).get(AUTO_CLASS)
        if class_ref is None:
            raise IncompatibleModelError(f"{folder}/config.json has no auto_map entry for {AUTO_CLASS}")
        model_class = get_class_from_dynamic_module(class_ref, str(folder))
        # Keyword: BiRefNet's __init__ takes bb_pretrained first and config second.
        model = model_class(config=config)
    except ImportError as exc:
        raise IncompatibleModelError(f"the {label} code in {folder} needs a package that is missing: {exc}") from exc
    except (OSError, ValueError, TypeError, AttributeError, RuntimeError) as exc:
        raise IncompatibleModelError(f"cannot build {label} from {folder}: {type(exc).__name__}: {exc}") from exc
    weights = folder / WEIGHTS_FILE
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptWeightsError(f"{weights} cannot be read as safetensors: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise IncompatibleModelError(f"{weights} does not fit the {label} architecture: {first_line}") from exc
    return model


def _output_tensor(output: Any, backend: Matting) -> torch.Tensor:
    """The alpha tensor out of each backend's output structure (RMBG: ([d1, ...], [...]); BiRefNet: [..., final])."""
    import torch

    try:
        tensor = output[0][0] if backend is Matting.RMBG else output[-1]
    except (TypeError, IndexError, KeyError):
        tensor = None
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4 or tensor.shape[:2] != (1, 1):
        raise IncompatibleModelError(
            f"{LOCAL_NAMES[backend]} model returned {type(output).__name__} without a 1x1xHxW alpha where expected"
        )
    return tensor


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    import torch

    parameter = next(iter(model.parameters()), None)
    if parameter is None:
        return torch.device("cpu"), torch.float32
    return parameter.device, parameter.dtype


def _check_rgb(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        found = f"shape {img.shape} and dtype {img.dtype}" if isinstance(img, np.ndarray) else type(img).__name__
        raise InvalidParameterError(f"image should be an HxWx3 uint8 array but has {found}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise InvalidParameterError(f"image should not be empty but has shape {img.shape}")
