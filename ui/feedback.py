"""What the page tells the user about the models and the jobs: status line, missing-models banner, Stop's report."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from core.errors import CancelledError, WeightsNotFoundError
from core.models.availability import MissingModel, describe_missing, missing_models
from core.models.loading import Variant
from core.models.manager import ModelManager
from core.params import RelightParams, Upscale
from core.recipe.sampling import StepCallback, StepInfo
from ui.jobs import Work

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
    from core.finishing.upscale import target_size  # the upscaler's own size rule, so the two never disagree

    try:
        params = RelightParams(width=int(width), height=int(height), highres_scale=float(highres_scale))
        target = Upscale(upscale)
    except (ValueError, TypeError):
        return ""
    size = params.highres_size
    steps = [f"{params.width}×{params.height} px"]
    if size != (params.width, params.height):
        steps.append(f"high-res ×{params.highres_scale:g}: {size[0]}×{size[1]}")
    final = target_size(*size, target)
    if final is not None:
        steps.append(f"upscale {target.value}: {final[0]}×{final[1]}")
        size = final
    return f"Result: **{size[0]}×{size[1]} px** ({' → '.join(steps)})"


def stop_button(armed: bool) -> dict[str, Any]:
    """Stop looks armed (red, clickable) only while a job of this page runs."""
    return gr.update(variant="stop" if armed else "secondary", interactive=armed)
