"""Jobs behind the app buttons: streamed work in a worker thread, user errors, the status line, the cached preview."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from core.errors import ICLightError
from core.imaging.inputs import LoadedImage, hide_upload_folders
from core.lighting.lights import Light
from core.params import Matting, RelightParams
from core.recipe.sampling import StepCallback, StepInfo
from core.service import Relighter, RelightOutcome, as_loaded
from ui.settings import gpu

logger = logging.getLogger(__name__)

PREVIEW_MAX_SIDE = 768  # the instant preview works on a copy this size: fast, and plenty for a side panel
PREVIEW_CACHE_SIZE = 8  # mattes kept for this many recent images
MATTE_MAX = 255


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
    return gr.Error(hide_upload_folders(str(exc)), title=_ERROR_TITLES.get(type(exc).__name__, "Cannot relight"))


_ERROR_TITLES = {
    "InvalidParameterError": "Please check the inputs",
    "WeightsNotFoundError": "IC-Light weights missing",
    "CorruptWeightsError": "Weight file damaged",
    "IncompatibleModelError": "Wrong model file",
}


def load_input(image: Any, what: str, required: bool = True) -> LoadedImage | None:
    """Decode an uploaded image through the shared loader; a missing required one is a readable error."""
    return as_loaded(image, what, required)


def matte_image(matte: np.ndarray) -> np.ndarray:
    """A float matte as a viewable grey image."""
    return np.round(np.clip(matte, 0.0, 1.0) * MATTE_MAX).astype(np.uint8)


# -- the work behind the buttons ----------------------------------------------------------------------------------

LIVE_PREVIEW_INTERVAL_S = 0.5  # live previews go out at most this often; the progress bar moves every step


@gpu
def relight_work(
    relighter: Relighter,
    foreground: LoadedImage,
    params: RelightParams,
    background: LoadedImage | None,
    callback: StepCallback,
    cancel: threading.Event,
) -> RelightOutcome:
    """One relight on the accelerator (ZeroGPU allocates it for the duration of this call)."""
    return relighter.relight(foreground, params, background=background, callback=callback, cancel=cancel)


@gpu
def normals_work(
    relighter: Relighter,
    foreground: LoadedImage,
    params: RelightParams,
    background: LoadedImage | None,
    callback: StepCallback,
    cancel: threading.Event,
) -> NormalsRun:
    """The four relights and the normal map of 'Compute Normal', saved like a relight's results."""
    images, matting = relighter.normals(foreground, params, background=background, callback=callback, cancel=cancel)
    paths = relighter.save(images, params, stem="normals") if relighter.outputs_dir is not None else []
    return NormalsRun(images, matting.foreground, matting.matte, paths)


@dataclass(frozen=True)
class NormalsRun:
    """What 'Compute Normal' produced: the 9-image gallery, the conditioning foreground, its matte, saved files."""

    images: list[np.ndarray]
    foreground: np.ndarray
    matte: np.ndarray
    paths: list[Any]


@dataclass(frozen=True)
class Finished:
    """The end of a job stream: the parameters used, the decoded foreground and what the work returned."""

    params: RelightParams
    foreground: LoadedImage
    result: Any
    seconds: float
    source: str | None = None  # the uploaded file, so a notice about it is shown once


class LiveView:
    """Turns step reports into progress-bar updates and throttled live previews."""

    def __init__(self, progress: gr.Progress) -> None:
        self.progress = progress
        self.last = 0.0

    def step(self, info: StepInfo) -> list[tuple[np.ndarray, str]] | None:
        """Advance the bar; a one-image gallery of the current latents when a preview is due."""
        desc = f"{info.stage} pass, step {info.step}/{info.stage_total}"
        self.progress((info.overall_step, info.overall_total), desc=desc, unit="steps")
        now = time.monotonic()
        if info.preview is None or now - self.last < LIVE_PREVIEW_INTERVAL_S:
            return None
        self.last = now
        return [(info.preview, f"live preview, {desc}")]


@dataclass(frozen=True)
class _Planned:
    """The one thing the recipe's input checks ask of the models: their variant."""

    variant: Any


def check_images(variant: Any, params: RelightParams, fg: LoadedImage, bg: LoadedImage | None) -> None:
    """The recipe's own input checks (e.g. a background where the source needs one), before any model loads."""
    from core.recipe.pipeline import check_inputs

    check_inputs(_Planned(variant), fg.rgb, params, None if bg is None else bg.rgb)


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
