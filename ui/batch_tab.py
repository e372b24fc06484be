"""The Batch tab of both apps and the /batch API: many foregrounds in, a gallery, failed rows and a zip out."""

from __future__ import annotations

import queue
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from core.errors import ICLightError
from core.params import Matting, Mode, RelightParams, Upscale
from core.service import Relighter
from ui.form import CHOICE_NAMES, CUSTOM_LIGHT, FBC_CHOICES, FC_CHOICES, label, params_from_values, ranges
from ui.jobs import user_error
from ui.loras import batch_lora_inputs
from ui.page import GPU_QUEUE

BATCH_FOLDER = "batch"  # under the app's outputs folder: one batch_<time>_<id> folder per run
MAX_SESSIONS = 64  # Stop events remembered (one per browser session's latest batch)
POLL_S = 0.2  # how often the page checks for finished rows
FAILED_HEADERS = ["row", "file", "reason"]
# Form fields of the batch tab besides the files and the light/background choice (sliders unless listed below).
SLIDERS = ("width", "height", "steps", "cfg", "highres_scale", "highres_denoise", "preserve_color")
BATCH_OUTPUTS = ("zip", "results", "gallery", "progress", "failed")  # /batch returns these, in this order


class BatchHandlers:
    """Runs one batch per click on the app's Relighter (models shared with the single form), streaming rows."""

    def __init__(self, relighter: Relighter, mode: Mode, outputs_dir: Path | None) -> None:
        self.relighter = relighter
        self.mode = Mode(mode)
        root = Path(outputs_dir) if outputs_dir is not None else Path(tempfile.gettempdir()) / "iclight"
        self.root = root / BATCH_FOLDER
        self._cancels: OrderedDict[str, threading.Event] = OrderedDict()
        self._lock = threading.Lock()

    def run(
        self,
        foregrounds: list[str] | None,
        background: str | None = None,
        manifest: str | None = None,
        request: gr.Request = None,
        progress: gr.Progress = gr.Progress(),
        **values: Any,
    ) -> Iterator[tuple]:
        """Validate every row, then relight them one by one; yields (zip, results, gallery, progress, failed)."""
        from core.batch.cli import batch_record
        from core.batch.uploads import new_job_folder, prepare_upload_batch, zip_results
        from core.batch.worker import BatchWorker
        from core.jobs import run_job

        files = [_path_of(f) for f in foregrounds or []]
        try:
            params = params_from_values(self.mode, values)
            folder = new_job_folder(self.root)
            variant = self.relighter.fc_variant.value
            rows = prepare_upload_batch(folder, files, params, variant, background=background, manifest=manifest)
        except ICLightError as exc:
            raise user_error(exc) from None
        cancel = self._arm(request)
        finished: queue.Queue = queue.Queue()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["summary"] = run_job(
                    rows, partial(BatchWorker, relighter=self.relighter, cancel=cancel), {"out": str(folder)}, folder,
                    quiet=True, record=batch_record, on_result=finished.put, cancel=cancel,
                )  # fmt: skip
            except Exception as exc:  # shown to the user once the thread has ended
                outcome["error"] = exc
            finally:
                finished.put(None)

        threading.Thread(target=work, name="batch", daemon=True).start()
        records: list[dict] = []
        progress((0, len(rows)), desc="rows", unit="rows")
        while True:
            try:
                record = finished.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if record is None:
                break
            records.append(record)
            progress((len(records), len(rows)), desc="rows", unit="rows")
            yield None, None, _gallery(records), _progress_text(records, len(rows)), _failed(records)
        if "error" in outcome:
            error = outcome["error"]
            raise user_error(error) if isinstance(error, ICLightError) else error
        summary = outcome["summary"]
        text = _progress_text(records, len(rows), stopped=summary.cancelled)
        yield str(zip_results(folder, records)), records, _gallery(records), text, _failed(records)

    def stop(self, request: gr.Request = None) -> None:
        """Stop: the row being sampled ends between two steps; the rows already done are kept."""
        with self._lock:
            cancel = self._cancels.get(_session(request))
        if cancel is not None:
            cancel.set()

    def _arm(self, request: gr.Request | None) -> threading.Event:
        cancel = threading.Event()
        with self._lock:
            self._cancels[_session(request)] = cancel
            while len(self._cancels) > MAX_SESSIONS:
                self._cancels.popitem(last=False)
        return cancel


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "api"


def _path_of(item: Any) -> str:
    """A gr.File value (a path, or an object with .name in some clients) as a path."""
    return str(getattr(item, "name", item))


def _gallery(records: list[dict]) -> list[tuple[str, str]]:
    return [(path, Path(r["foreground"]).name) for r in records if r["status"] == "done" for path in r["outputs"]]


def _failed(records: list[dict]) -> list[list[Any]]:
    return [[r["row"], Path(r["foreground"]).name, r["error"]] for r in records if r["status"] == "failed"]


def _progress_text(records: list[dict], total: int, stopped: bool = False) -> str:
    done = sum(r["status"] == "done" for r in records)
    failed = len(records) - done
    text = f"{done} of {total} rows done, {failed} failed"
    if stopped:
        text += f"; stopped, {total - len(records)} not run (the finished rows are kept)"
    return text


def build_batch_tab(relighter: Relighter, mode: Mode, settings) -> None:
    """The Batch tab's layout and events; call inside `gr.Tab("Batch")` of either app."""
    mode = Mode(mode)
    handlers = BatchHandlers(relighter, mode, settings.outputs_dir)
    defaults = RelightParams.for_mode(mode)
    inputs: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=1):
            foregrounds = gr.File(label="Foreground images", file_count="multiple", file_types=["image"],
                                  type="filepath")  # fmt: skip
            background = None
            if mode is Mode.FBC:
                background = gr.Image(label="Background for every row", type="filepath", height=200)
                what = "'foreground' and 'background' columns name"
            else:
                what = "'foreground' column names"
            manifest = gr.File(label=f"Manifest (optional): a CSV/JSONL whose {what} the uploaded files",
                               file_types=[".csv", ".jsonl"], type="filepath")  # fmt: skip
            inputs["prompt"] = gr.Textbox(label=label("prompt"), placeholder="subject, lighting")
            choices = [c for c in (FC_CHOICES if mode is Mode.FC else FBC_CHOICES) if c != CUSTOM_LIGHT]
            inputs[CHOICE_NAMES[mode]] = gr.Radio(choices, value=choices[0], label=label(CHOICE_NAMES[mode]))
            inputs["seed"] = gr.Number(defaults.seed, precision=0, label="Seed (row i uses seed + i)")
            with gr.Row():
                run = gr.Button("Run batch", variant="primary")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column(scale=1):
            status = gr.Markdown("No batch yet.")
            gallery = gr.Gallery(label="Finished rows", columns=4, height=360)
            failed = gr.Dataframe(headers=FAILED_HEADERS, label="Failed rows", interactive=False)
            archive = gr.File(label="Download: images + results.jsonl (zip)")
            results = gr.JSON(label="results.jsonl", visible=False)
    with gr.Accordion("Size, sampling and finishing", open=False):
        slider_ranges = ranges(mode)
        with gr.Row():
            for name in SLIDERS:
                low, high = slider_ranges[name]
                inputs[name] = gr.Slider(low, high, value=getattr(defaults, name), label=label(name))
        with gr.Row():
            inputs["matting"] = gr.Dropdown([m.value for m in Matting], value=defaults.matting.value,
                                            label=label("matting"))  # fmt: skip
            inputs["upscale"] = gr.Dropdown([u.value for u in Upscale], value=defaults.upscale.value,
                                            label=label("upscale"))  # fmt: skip
            inputs["keep_background"] = gr.Checkbox(defaults.keep_background, label=label("keep_background"))
            inputs["restore_details"] = gr.Checkbox(defaults.restore_details, label=label("restore_details"))
        inputs.update(batch_lora_inputs(settings.model.models_dir))  # `fast` and `loras`, as /relight takes them
    files = {"foregrounds": foregrounds, "manifest": manifest}
    if background is not None:
        files["background"] = background
    run.click(
        handlers.run,
        inputs_kwargs={**files, **inputs},
        outputs=[archive, results, gallery, status, failed],
        api_name="batch",
        concurrency_id=GPU_QUEUE,  # the single form's queue: one sampling job at a time on the accelerator
        concurrency_limit=settings.concurrency,
        show_progress_on=gallery,
    )
    # Stop is cooperative rather than a Gradio `cancels`: the batch ends between two steps and still returns the
    # zip of the rows already done.
    stop.click(handlers.stop, api_visibility="private", queue=False)
