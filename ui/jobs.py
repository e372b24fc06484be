"""Jobs behind the app buttons: streamed work in a worker thread, user errors, the status line, the cached preview."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from core.errors import CancelledError, ICLightError, WeightsNotFoundError
from core.imaging.inputs import LoadedImage, hide_upload_folders
from core.lighting.lights import Light
from core.models.availability import MissingModel, describe_missing, missing_models
from core.models.loading import Variant
from core.models.manager import ModelManager
from core.params import Matting, RelightParams, Upscale
from core.recipe.sampling import StepCallback, StepInfo
from core.service import Relighter, as_loaded

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


# -- status, weights and job tracking ----------------------------------------------------------------------------

RELIGHT_LABEL = "Relight"
DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
STOP_WAIT_S = 60.0  # Stop waits this long for the worker to reach its next step before it answers


def status_line(manager: ModelManager, variant: Variant, matting: str, failure: str | None = None) -> str:
    """Markdown: one plain line ("Ready · fc · CPU bf16 · RMBG-1.4"), the full description behind "details"."""
    missing = missing_models(manager, variant)
    if failure:
        state = "Load failed (see details)"
    elif manager.is_loaded(variant):
        state = "Loaded"
    elif not missing:
        state = "Ready"
    elif all(item.downloads for item in missing):
        state = "Ready (downloads the weights on the first relight)"
    else:
        state = "Weights missing"
    placement = manager.placement
    device = placement.device.split(":")[0].upper()
    dtype = DTYPE_NAMES.get(str(placement.unet_dtype).removeprefix("torch."), str(placement.unet_dtype))
    line = f"{state} · {variant.value} · {device} {dtype} · {matting}"
    details = [manager.describe(variant)]
    if failure:
        details.insert(0, f"The last model load failed: {failure}")
    if missing:
        details.append(describe_missing(missing))
    body = "\n\n".join(details)
    return f"{line}\n\n<details><summary>details</summary>\n\n{body}\n\n</details>"


def weights_banner(missing: list[MissingModel]) -> str:
    """Markdown listing every missing model (what, where it goes, where to get it); empty when none is."""
    if not missing:
        return ""
    if all(item.downloads for item in missing):
        head = "**The first relight downloads these models** (the light pad and its preview work meanwhile):"
    else:
        head = (
            "⚠️ **Relighting needs models that are not on this machine.** Until they are in place, only the light "
            "pad and its instant preview work. Reload the page after adding them."
        )
    rows = [f"- **{item.what}**: put it in `{item.where}`; get it from {item.source}" for item in missing]
    return "\n".join([head, *rows])


def relight_button(missing: list[MissingModel]) -> dict[str, Any]:
    """The Relight button's label and state: it says what it will do while models are missing."""
    if not missing:
        return gr.update(value=RELIGHT_LABEL, interactive=True)
    if all(item.downloads for item in missing):
        return gr.update(value=f"{RELIGHT_LABEL} (downloads the models first)", interactive=True)
    return gr.update(value=f"{RELIGHT_LABEL} (models missing, see above)", interactive=False)


def require_models(manager: ModelManager, variant: Variant) -> None:
    """Raise WeightsNotFoundError listing every missing model that will not be downloaded."""
    blocking = [item for item in missing_models(manager, variant) if not item.downloads]
    if blocking:
        raise WeightsNotFoundError(describe_missing(blocking))


@dataclass
class JobTracker:
    """How far one session's running job got, written by its worker thread and read by Stop."""

    step: int = 0  # sampling steps done, across all passes
    total: int = 0  # sampling steps planned
    outcome: str | None = None  # "finished", "stopped" or "failed" once the worker has ended
    ended: threading.Event = field(default_factory=threading.Event)

    def wrap(self, work: Work) -> Work:
        """`work` reporting its steps and its end here."""

        def tracked(callback: StepCallback, cancel: threading.Event) -> Any:
            def counting(info: StepInfo) -> None:
                self.step, self.total = info.overall_step, info.overall_total
                callback(info)

            try:
                result = work(counting, cancel)
            except CancelledError:
                self.outcome = "stopped"
                raise
            except BaseException:
                self.outcome = "failed"
                raise
            finally:
                self.ended.set()
            self.outcome = "finished"
            return result

        return tracked


def stop_message(tracker: JobTracker | None, wait_s: float = STOP_WAIT_S) -> str | None:
    """What Stop did, once the worker has ended (None when nothing was running)."""
    if tracker is None:
        return None
    tracker.ended.wait(wait_s)
    if tracker.outcome == "finished":
        return None  # the job ended before Stop reached it; its results stand
    if tracker.outcome is None:
        return f"Stopping at step {tracker.step} of {tracker.total or '?'}; nothing will be saved."
    if tracker.step == 0:
        return "Stopped before the first step; nothing was saved."
    return f"Stopped at step {tracker.step} of {tracker.total}; nothing was saved."


def planned_size(width: float, height: float, highres_scale: float, upscale: str) -> str:
    """Markdown: the size each result will have after the high-res pass and upscaling."""
    from core.finishing.upscale import _target_size  # the upscaler's own size rule, so the two never disagree

    try:
        params = RelightParams(width=int(width), height=int(height), highres_scale=float(highres_scale))
        target = Upscale(upscale)
    except (ValueError, TypeError):
        return ""
    size = params.highres_size
    steps = [f"{params.width}×{params.height} px"]
    if size != (params.width, params.height):
        steps.append(f"high-res ×{params.highres_scale:g}: {size[0]}×{size[1]}")
    final = _target_size(*size, target)
    if final is not None:
        steps.append(f"upscale {target.value}: {final[0]}×{final[1]}")
        size = final
    return f"Result: **{size[0]}×{size[1]} px** ({' → '.join(steps)})"


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
