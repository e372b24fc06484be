"""What the app buttons do, apart from page layout: form values to parameters, streamed jobs, the cached preview."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from core.errors import ICLightError, InvalidParameterError
from core.images import LoadedImage
from core.lights import Light
from core.loading import ICLIGHT_HUB_REPO, Variant, offline_mode
from core.manager import ModelManager
from core.params import BGSource, LightDirection, Matting, Mode, RelightParams
from core.sampling import StepCallback, StepInfo
from core.service import Relighter, as_loaded

logger = logging.getLogger(__name__)

CUSTOM_LIGHT = BGSource.LIGHT.label  # the choice that means "the light placed on the pad", in both apps
FC_CHOICES = tuple(d.label for d in LightDirection) + (CUSTOM_LIGHT,)
FBC_CHOICES = tuple(s.label for s in BGSource)
CHOICE_NAMES = {Mode.FC: "light", Mode.FBC: "bg_source"}  # API name of each app's light/background choice
_FC_BY_LABEL = {d.label: d for d in LightDirection}
_FBC_BY_LABEL = {s.label: s for s in BGSource}
_NAMED_LABELS = {
    Mode.FC: {d.value: d.label for d in LightDirection if d is not LightDirection.NONE},
    Mode.FBC: {s.value: s.label for s in (BGSource.LEFT, BGSource.RIGHT, BGSource.TOP, BGSource.BOTTOM)},
}
# fbc sources that are a light gradient: moving the pad light replaces them; an uploaded background is kept.
GRADIENT_SOURCES = frozenset({BGSource.LEFT, BGSource.RIGHT, BGSource.TOP, BGSource.BOTTOM, BGSource.LIGHT})
PAD_FIELDS = ("azimuth", "elevation", "light_color", "light_intensity", "ambient")  # form names of the pad light
_PAD_TO_LIGHT = {
    "azimuth": "azimuth",
    "elevation": "elevation",
    "light_color": "color",
    "light_intensity": "intensity",
    "ambient": "ambient",
}

INT_FIELDS = ("seed", "width", "height", "num_images", "steps")
PLAIN_FIELDS = (
    "prompt",
    "added_prompt",
    "negative_prompt",
    "cfg",
    "lowres_denoise",
    "highres_scale",
    "highres_denoise",
    "sampler",
    "matting",
    "keep_background",
    "restore_details",
    "detail_radius",
    "preserve_color",
    "upscale",
)
# Slider ranges of the form (official demo ranges); also used to fit settings loaded from a PNG.
RANGES: dict[str, tuple[float, float]] = {
    "width": (256, 1024),
    "height": (256, 1024),
    "num_images": (1, 12),
    "steps": (1, 100),
    "cfg": (1.0, 32.0),
    "lowres_denoise": (0.1, 1.0),
    "highres_scale": (1.0, 3.0),
    "highres_denoise": (0.1, 1.0),
    "detail_radius": (1.0, 20.0),
    "preserve_color": (0.0, 1.0),
}
FBC_HIGHRES_DENOISE_MAX = 0.9  # the official fbc demo's slider stops here

PREVIEW_MAX_SIDE = 768  # the instant preview works on a copy this size: fast, and plenty for a side panel
PREVIEW_CACHE_SIZE = 8  # mattes kept for this many recent images
MATTE_MAX = 255
WEIGHTS_URL = "https://huggingface.co/" + ICLIGHT_HUB_REPO + "/resolve/main/{filename}"


# -- form values <-> parameters ------------------------------------------------------------------------------------


def pad_light(values: Mapping[str, Any]) -> Light:
    """The light placed on the pad, from the form's azimuth/elevation/colour/intensity/ambient values."""
    return Light(**{_PAD_TO_LIGHT[name]: values[name] for name in PAD_FIELDS if values.get(name) is not None})


def pad_values(light: Light) -> tuple[float, float, str, float, float]:
    """The pad fields (in PAD_FIELDS order) that show `light`."""
    return light.azimuth, light.elevation, light.color, light.intensity, light.ambient


def light_fields(mode: Mode, choice: str, pad: Light) -> dict[str, Any]:
    """RelightParams fields for the light/background choice; the pad light is used by 'Custom Light'."""
    if mode is Mode.FC:
        if choice == CUSTOM_LIGHT:
            return {"light": pad}
        direction = _FC_BY_LABEL.get(choice)
        if direction is None:
            raise InvalidParameterError(f"light should be one of {', '.join(FC_CHOICES)} but is {choice!r}")
        return {"light": None if direction is LightDirection.NONE else Light.named(direction.value)}
    source = _FBC_BY_LABEL.get(choice)
    if source is None:
        raise InvalidParameterError(f"bg_source should be one of {', '.join(FBC_CHOICES)} but is {choice!r}")
    return {"bg_source": source, "light": pad if source is BGSource.LIGHT else None}


def named_light(choice: str) -> Light | None:
    """The exact official light of a Left/Right/Top/Bottom choice; None for any other choice."""
    for labels in _NAMED_LABELS.values():
        for direction, label in labels.items():
            if label == choice:
                return Light.named(direction)
    return None


def choice_after_move(mode: Mode, choice: str, light: Light) -> str:
    """The choice once the user has placed `light`: a named one if it is exactly official, else 'Custom Light'."""
    named = light.named_direction
    label = _NAMED_LABELS[mode][named] if named else CUSTOM_LIGHT
    if mode is Mode.FBC and _FBC_BY_LABEL.get(choice) not in GRADIENT_SOURCES:
        return choice  # an uploaded (or flipped, or ambient) background stays the condition
    return label


def _integer(value: Any) -> Any:
    """Whole floats (sliders, JSON) as int; anything else is left for RelightParams to reject by name."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def params_from_values(mode: Mode, values: Mapping[str, Any]) -> RelightParams:
    """Validated RelightParams from the form (or API) values of either app."""
    fields: dict[str, Any] = {name: _integer(values[name]) for name in INT_FIELDS if name in values}
    fields.update({name: values[name] for name in PLAIN_FIELDS if name in values})
    fields.update(light_fields(mode, values[CHOICE_NAMES[mode]], pad_light(values)))
    return RelightParams.for_mode(mode, **fields)


def values_from_params(mode: Mode, params: RelightParams) -> tuple[dict[str, Any], list[str]]:
    """Form values that reproduce `params` in this app, and what had to be changed to fit the form."""
    notes = []
    if params.mode is not mode:
        notes.append(f"these settings come from the {params.mode.value} app; the shared ones were loaded")
    values: dict[str, Any] = {name: getattr(params, name) for name in INT_FIELDS + PLAIN_FIELDS}
    for name, value in values.items():
        if isinstance(value, Enum):
            values[name] = value.value
    for name, (low, high) in ranges(mode).items():
        if not low <= values[name] <= high:
            fitted = type(values[name])(min(max(values[name], low), high))
            notes.append(f"{name} {values[name]} is outside this form's range [{low:g}, {high:g}]; set to {fitted}")
            values[name] = fitted
    light = params.light
    if mode is Mode.FC:
        named = light.named_direction if light is not None else None
        choice = LightDirection.NONE.label if light is None else _NAMED_LABELS[mode][named] if named else CUSTOM_LIGHT
    else:
        choice = params.bg_source.label if params.mode is Mode.FBC else BGSource.UPLOAD.label
    values[CHOICE_NAMES[mode]] = choice
    if light is not None:
        values.update(zip(PAD_FIELDS, pad_values(light), strict=True))
    values["randomize_seed"] = False  # the point of loading settings is to get the same image again
    return values, notes


def ranges(mode: Mode) -> dict[str, tuple[float, float]]:
    """Slider ranges of the app for `mode`."""
    out = dict(RANGES)
    if mode is Mode.FBC:
        out["highres_denoise"] = (RANGES["highres_denoise"][0], FBC_HIGHRES_DENOISE_MAX)
        del out["lowres_denoise"]  # fbc has no image-to-image low-res pass
    return out


# -- streamed jobs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobDone:
    """The last item of a job stream: what the work function returned."""

    value: Any


Work = Callable[[StepCallback, threading.Event], Any]


async def stream_job(work: Work) -> AsyncIterator[StepInfo | JobDone]:
    """Run `work(callback, cancel)` in a worker thread; yield each StepInfo, then JobDone(result)."""
    # Cancelling or closing the stream (Gradio does both when a job is stopped) sets `cancel`, so the worker
    # stops at its next sampling step instead of running to the end unseen.
    loop = asyncio.get_running_loop()
    steps: asyncio.Queue[StepInfo] = asyncio.Queue()
    cancel = threading.Event()

    def callback(info: StepInfo) -> None:
        """Called in the worker thread: hand the step to the event loop."""
        loop.call_soon_threadsafe(steps.put_nowait, info)

    worker = loop.run_in_executor(None, work, callback, cancel)
    worker.add_done_callback(_retrieve_exception)
    next_step: asyncio.Future | None = None
    try:
        while True:
            next_step = asyncio.ensure_future(steps.get())
            done, _ = await asyncio.wait({next_step, worker}, return_when=asyncio.FIRST_COMPLETED)
            if next_step in done:
                yield next_step.result()
                continue
            while not steps.empty():  # steps reported just before the worker returned
                yield steps.get_nowait()
            yield JobDone(worker.result())
            return
    finally:
        cancel.set()
        if next_step is not None:
            next_step.cancel()


def _retrieve_exception(future: asyncio.Future) -> None:
    """Mark a stopped worker's exception as seen; the stream that wanted it is gone."""
    if not future.cancelled():
        future.exception()


def user_error(exc: ICLightError) -> gr.Error:
    """An engine error as the message box the user sees."""
    return gr.Error(str(exc), title=_ERROR_TITLES.get(type(exc).__name__, "Cannot relight"))


_ERROR_TITLES = {
    "InvalidParameterError": "Please check the inputs",
    "WeightsNotFoundError": "IC-Light weights missing",
    "CorruptWeightsError": "Weight file damaged",
    "IncompatibleModelError": "Wrong model file",
}


def load_input(image: Any, what: str, required: bool = True) -> LoadedImage | None:
    """Decode an uploaded image through the shared loader; a missing required one is a readable error."""
    loaded = as_loaded(image, what)
    if loaded is None and required:
        raise InvalidParameterError(f"no {what} image was given; upload (or paste) one first")
    return loaded


def matte_image(matte: np.ndarray) -> np.ndarray:
    """A float matte as a viewable grey image."""
    return np.round(np.clip(matte, 0.0, 1.0) * MATTE_MAX).astype(np.uint8)


# -- status and weights --------------------------------------------------------------------------------------------


def status_line(manager: ModelManager, variant: Variant) -> str:
    """Markdown: which base model / IC-Light variant on which device and dtype, and how to get missing weights."""
    text = f"**Model:** {manager.describe(variant)}"
    if manager.weights_available(variant):
        return text
    folder = Path(manager.settings.models_dir).resolve()
    url = WEIGHTS_URL.format(filename=variant.filename)
    if manager.settings.download and not offline_mode():
        return text + f"\n\n`{variant.filename}` will be downloaded from {url} into `{folder}` on the first relight."
    return text + (
        f"\n\n⚠️ **Preview only: the IC-Light weights are missing.** Relighting needs `{variant.filename}` in "
        f"`{folder}`: download it from {url} and put it there (or start the app without `--offline` to download it "
        "automatically). Until then the light pad and its instant preview work without any weights."
    )


# -- instant preview -----------------------------------------------------------------------------------------------


class PreviewEngine:
    """Relighter.preview with each image's matte cached, so moving the light costs milliseconds, not a matting."""

    def __init__(self, relighter: Relighter, cache_size: int = PREVIEW_CACHE_SIZE) -> None:
        self.relighter = relighter
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, LoadedImage] = OrderedDict()
        self._lock = threading.Lock()

    def cutout(self, image: str | Path, matting: Matting) -> tuple[LoadedImage, str | None]:
        """The image (at most PREVIEW_MAX_SIDE) with its matte as alpha, and the matting notice on first use."""
        path = Path(image)
        stat = path.stat() if path.is_file() else None
        key = (str(path), stat and stat.st_size, stat and stat.st_mtime_ns, Matting(matting))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key], None
        loaded = load_input(image, "foreground")
        rgb = _fit_side(loaded.rgb, PREVIEW_MAX_SIDE)
        alpha = None if loaded.alpha is None else _fit_side(loaded.alpha, PREVIEW_MAX_SIDE)
        small = LoadedImage(rgb, alpha)
        result = self.relighter.extract(small, RelightParams(matting=matting, keep_background=True))
        cutout = LoadedImage(rgb, result.matte)
        with self._lock:
            self._cache[key] = cutout
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return cutout, result.notice

    def render(
        self, image: str | Path, light: Light, matting: Matting = Matting.RMBG
    ) -> tuple[np.ndarray, str | None]:
        """The instantly relit subject of `image` under `light`, and a matting notice the first time."""
        cutout, notice = self.cutout(image, matting)
        relit, _ = self.relighter.preview(cutout, light, RelightParams(matting=Matting.ALPHA))
        return relit, notice


def _fit_side(array: np.ndarray, max_side: int) -> np.ndarray:
    """`array` scaled down (area filter) so its long side is at most `max_side`."""
    import cv2

    height, width = array.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return array
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA)
