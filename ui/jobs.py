"""Jobs behind the app buttons: streamed work in a worker thread, user errors, the status line, the cached preview."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from core.errors import ICLightError
from core.imaging.inputs import LoadedImage
from core.lighting.lights import Light
from core.models.loading import ICLIGHT_HUB_REPO, Variant, offline_mode
from core.models.manager import ModelManager
from core.params import Matting, RelightParams
from core.recipe.sampling import StepCallback, StepInfo
from core.service import Relighter, as_loaded

logger = logging.getLogger(__name__)

PREVIEW_MAX_SIDE = 768  # the instant preview works on a copy this size: fast, and plenty for a side panel
PREVIEW_CACHE_SIZE = 8  # mattes kept for this many recent images
MATTE_MAX = 255
WEIGHTS_URL = "https://huggingface.co/" + ICLIGHT_HUB_REPO + "/resolve/main/{filename}"


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
    return as_loaded(image, what, required)


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
