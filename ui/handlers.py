"""Event handlers shared by both apps: relight, normals, preview, suggestions, light pad and settings from a PNG."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from functools import partial
from typing import Any

import gradio as gr
import numpy as np

from core.errors import CorruptWeightsError, ICLightError, IncompatibleModelError, WeightsNotFoundError
from core.imaging.convert import resize_and_center_crop
from core.imaging.inputs import LoadedImage
from core.imaging.outputs import read_params
from core.lighting.lightpad import light_from_pad_click, render_light_pad
from core.lighting.lights import Light
from core.lighting.prompt_words import replace_lighting
from core.lighting.suggest import SOURCE_OFFLINE, SuggestConfig, suggest_lighting
from core.models.availability import missing_models
from core.params import MAX_SEED, BGSource, Matting, Mode, RelightParams
from core.service import Relighter, RelightOutcome
from ui.feedback import (
    JobTracker,
    relight_button,
    require_models,
    status_line,
    stop_button,
    stop_message,
    weights_banner,
)
from ui.form import (
    CUSTOM_LIGHT,
    PAD_FIELDS,
    choice_after_move,
    named_light,
    pad_light,
    pad_values,
    params_from_values,
    values_from_params,
)
from ui.jobs import (
    Finished,
    JobDone,
    LiveView,
    NormalsRun,
    PreviewEngine,
    check_images,
    load_input,
    matte_image,
    normals_work,
    relight_work,
    stream_job,
    user_error,
)

# Outputs of /relight and /normals, in order; the page lists its components in the same order. A normals run
# replaces all of them, so the before/after, matte and downloads on the page always belong to the last run.
RELIGHT_OUTPUTS = ("gallery", "foreground", "matte", "comparison", "seed", "files", "info", "results")
NORMALS_OUTPUTS = RELIGHT_OUTPUTS
STOP_OUTPUTS = ("gallery", "info")  # what Stop rewrites: the leftover live preview and the run info
NORMAL_CAPTIONS = (
    "normal map",
    *(f"shading ratio, {side} light" for side in ("left", "right", "bottom", "top")),
    *(f"relit from the {side}" for side in ("left", "right", "bottom", "top")),
)
PAD_SIZE = 256  # light pad image side in pixels
PAD_DECIMALS = 1  # a pad click is not more precise than a tenth of a degree
PREPARING = "cutting out the subject and loading the models (slow only the first time)"
LOAD_ERRORS = (WeightsNotFoundError, CorruptWeightsError, IncompatibleModelError)  # the status line reports these
REMEMBERED = 256  # notices already shown and stopped jobs kept per app, oldest dropped first
IMAGE_SOURCES = (BGSource.UPLOAD.label, BGSource.FLIP.label)  # fbc choices where the image decides the light
PAD_TAKES_OVER = (
    "The light pad now sets the light, so the background source switched to Custom Light. "
    "Pick “Use Background Image” to light from the image again."
)


def pad_image(light: Light) -> np.ndarray:
    """The light pad showing `light`."""
    return render_light_pad(light, PAD_SIZE)


class AppHandlers:
    """The functions behind one app's events; fc and fbc differ only by `mode`."""

    def __init__(self, relighter: Relighter, mode: Mode, suggest_config: SuggestConfig | None = None) -> None:
        self.relighter = relighter
        self.mode = Mode(mode)
        self.variant = relighter.variant_for(self.mode)
        self.suggest_config = suggest_config
        self.previews = PreviewEngine(relighter)
        self.load_failure: str | None = None  # why the last model load failed; cleared by a run that loads
        self._jobs: OrderedDict[str, JobTracker] = OrderedDict()  # each session's last job, for Stop
        self._told: OrderedDict[tuple[str, str], None] = OrderedDict()  # (image, notice) pairs already shown
        self._lock = threading.Lock()

    # -- page state -----------------------------------------------------------------------------------------------

    def status(self) -> str:
        """The status line (Markdown): one plain line, details in a fold."""
        matting = self.relighter.matter.describe(Matting.RMBG)
        return status_line(self.relighter.manager, self.variant, matting, self.load_failure)

    def page_state(self) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
        """On page load: status line, missing-models banner, Relight button, and an idle Stop button."""
        missing = missing_models(self.relighter.manager, self.variant)
        banner = weights_banner(missing)
        return (
            self.status(),
            gr.update(value=banner, visible=bool(banner)),
            relight_button(missing),
            stop_button(False),
        )

    def banner(self) -> str:
        """The missing-models banner as the page starts (empty when nothing is missing)."""
        return weights_banner(missing_models(self.relighter.manager, self.variant))

    def relight_button(self) -> dict[str, Any]:
        """The Relight button's label and state as the page starts."""
        return relight_button(missing_models(self.relighter.manager, self.variant))

    # -- relight and normals ------------------------------------------------------------------------------------------

    def _prepare(
        self, foreground: str | None, background: str | None, values: dict[str, Any], normals: bool = False
    ) -> tuple[RelightParams, LoadedImage, LoadedImage | None]:
        """Inputs checked and decoded: parameters (seed drawn if asked), foreground, optional background."""
        # The one place a job's inputs are checked: the page asks here before queueing, the API when it runs.
        fg = load_input(foreground, "foreground")
        bg = load_input(background, "background", required=False)
        if values.pop("randomize_seed", False):
            values["seed"] = random.randint(0, MAX_SEED)
        params = params_from_values(self.mode, values)
        if not normals:  # Compute Normal lights from four fixed sides, whatever the background source says
            check_images(self.variant, params, fg, bg)
        require_models(self.relighter.manager, self.variant)
        return params, fg, bg

    def check(self, foreground: str | None = None, background: str | None = None, **values: Any) -> None:
        """Before a relight is queued: the first problem with its inputs or models as one message; nothing if none."""
        try:
            self._prepare(foreground, background, dict(values))
        except ICLightError as exc:
            raise user_error(exc) from None

    def check_normals(self, foreground: str | None = None, background: str | None = None, **values: Any) -> None:
        """Before Compute Normal is queued: as `check`, without the background source's needs."""
        try:
            self._prepare(foreground, background, dict(values), normals=True)
        except ICLightError as exc:
            raise user_error(exc) from None

    async def relight(
        self,
        foreground: str | None = None,
        background: str | None = None,
        progress: gr.Progress = gr.Progress(),
        request: gr.Request = None,
        **values: Any,
    ) -> AsyncIterator[tuple]:
        """Relight the foreground: live previews while sampling, then results, conditioning, matte, seed and files."""
        async with aclosing(
            self._stream(relight_work, foreground, background, values, progress, RELIGHT_OUTPUTS, request)
        ) as items:
            async for item in items:
                yield self._results(item) if isinstance(item, Finished) else item

    async def normals(
        self,
        foreground: str | None = None,
        background: str | None = None,
        progress: gr.Progress = gr.Progress(),
        request: gr.Request = None,
        **values: Any,
    ) -> AsyncIterator[tuple]:
        """Compute Normal: relight from four sides and estimate normals; the same outputs as a relight."""
        async with aclosing(
            self._stream(normals_work, foreground, background, values, progress, NORMALS_OUTPUTS, request)
        ) as items:
            async for item in items:
                yield self._normals(item) if isinstance(item, Finished) else item

    async def _stream(
        self,
        work: Callable[..., Any],
        foreground: str | None,
        background: str | None,
        values: dict[str, Any],
        progress: gr.Progress,
        outputs: tuple[str, ...],
        request: gr.Request | None = None,
    ) -> AsyncIterator[tuple | Finished]:
        """Check the inputs, run `work` in a worker thread, yield live previews as `outputs`, then Finished."""
        started = time.perf_counter()
        session = getattr(request, "session_hash", None)
        tracker = JobTracker()
        try:
            params, fg, bg = self._prepare(foreground, background, values, normals=work is normals_work)
            live = LiveView(progress)
            progress(0.0, desc=PREPARING)
            if session is not None:
                self._remember(self._jobs, session, tracker)
            job = tracker.wrap(partial(work, self.relighter, fg, params, bg))
            async with aclosing(stream_job(job)) as events:
                async for event in events:
                    if isinstance(event, JobDone):
                        self.load_failure = None
                        source = foreground if isinstance(foreground, str) else None
                        yield Finished(params, fg, event.value, time.perf_counter() - started, source)
                    elif (gallery := live.step(event)) is not None:
                        yield (gallery,) + (gr.skip(),) * (len(outputs) - 1)
        except ICLightError as exc:
            if isinstance(exc, LOAD_ERRORS) and tracker.outcome is not None:
                self.load_failure = str(exc)  # the job got as far as loading; the status line says it failed
            raise user_error(exc) from None

    def stop(self, request: gr.Request = None) -> tuple:
        """Stop: say at which step the job stopped and clear its leftover live preview (STOP_OUTPUTS)."""
        session = getattr(request, "session_hash", None)
        with self._lock:
            tracker = self._jobs.pop(session, None) if session is not None else None
        message = stop_message(tracker)
        if message is None:
            return gr.skip(), gr.skip()
        return None, message

    def _remember(self, table: OrderedDict, key: Any, value: Any) -> None:
        """table[key] = value, keeping only the newest REMEMBERED entries."""
        with self._lock:
            table[key] = value
            table.move_to_end(key)
            while len(table) > REMEMBERED:
                table.popitem(last=False)

    def _first_time(self, source: str | None, notice: str) -> bool:
        """True the first time `notice` comes up for the image `source` (always True without a source)."""
        if source is None:
            return True
        with self._lock:
            if (source, notice) in self._told:
                return False
        self._remember(self._told, (source, notice), None)
        return True

    def _normals(self, finished: Finished) -> tuple:
        """The NORMALS_OUTPUTS values: the captioned 9-image gallery, its inputs, the normal map as 'after'."""
        run: NormalsRun = finished.result
        params = finished.params
        height, width = run.images[0].shape[:2]
        before = resize_and_center_crop(finished.foreground.rgb, width, height)
        sources = [str(path) for path in run.paths] if len(run.paths) == len(run.images) else run.images
        gallery = list(zip(sources, NORMAL_CAPTIONS, strict=True))
        info = [f"Normals · seed **{params.seed}** · {width}×{height} px · {finished.seconds:.1f} s"]
        if run.paths:
            info.append("Saved: " + ", ".join(f"`{path.name}`" for path in run.paths))
        files = [str(path) for path in run.paths] or None
        state = {"before": before, "after": run.images}
        matte = matte_image(run.matte)
        return gallery, run.foreground, matte, (before, run.images[0]), params.seed, files, "\n\n".join(info), state

    def _results(self, finished: Finished) -> tuple:
        """The RELIGHT_OUTPUTS values for a finished relight."""
        outcome: RelightOutcome = finished.result
        params, images = outcome.params, outcome.images
        sources = [str(path) for path in outcome.paths] if len(outcome.paths) == len(images) else images
        gallery = [(source, f"#{k + 1}, seed {params.seed}") for k, source in enumerate(sources)]
        height, width = images[0].shape[:2]
        before = resize_and_center_crop(finished.foreground.rgb, width, height)
        for notice in outcome.notices:
            if self._first_time(finished.source, notice):
                gr.Warning(notice)
        info = [f"Seed **{params.seed}** · {len(images)} × {width}×{height} px · {outcome.seconds:.1f} s"]
        if outcome.paths:
            info.append("Saved: " + ", ".join(f"`{path.name}`" for path in outcome.paths))
        info += [f"- {notice}" for notice in outcome.notices]
        files = [str(path) for path in outcome.paths] or None
        state = {"before": before, "after": images}
        matte = matte_image(outcome.matte)
        return gallery, outcome.foreground, matte, (before, images[0]), params.seed, files, "\n\n".join(info), state

    def preview(
        self,
        image: str | None,
        azimuth: float,
        elevation: float,
        color: str,
        intensity: float,
        ambient: float,
        matting: str = Matting.RMBG.value,
        softness: float = Light.softness,
    ) -> np.ndarray | None:
        """Instant classical relight of the image under the light (no diffusion, no weights); null without image."""
        if image is None:
            return None
        try:
            light = Light(azimuth, elevation, color, intensity, ambient, softness)
            relit, notice = self.previews.render(image, light, Matting(matting))
        except ICLightError as exc:
            raise user_error(exc) from None
        if notice and self._first_time(image, notice):
            gr.Info(notice)
        return relit

    def suggest(self, image: str | None, mood: str | None) -> dict[str, Any]:
        """Three lighting suggestions for the image: {source, notice, suggestions: [{prompt, light}]}."""
        try:
            loaded = load_input(image, "foreground")
            matte = loaded.alpha if loaded.has_meaningful_alpha else None
            result = suggest_lighting(loaded.rgb, mood=mood or None, matte=matte, config=self.suggest_config)
        except ICLightError as exc:
            raise user_error(exc) from None
        return result.to_dict()

    # -- light pad and suggestion chips (UI only, hidden from the API) -------------------------------------------

    def pad_click(
        self, choice: str, color: str, intensity: float, ambient: float, softness: float, evt: gr.SelectData
    ) -> tuple:
        """A click on the pad: the light hits the sphere head-on where the user clicked."""
        azimuth, elevation = (round(angle, PAD_DECIMALS) for angle in light_from_pad_click(*evt.index, PAD_SIZE))
        light = Light(azimuth, elevation, color, intensity, ambient, softness)
        return azimuth, elevation, pad_image(light), self._choice_for_pad(choice, light)

    def pad_moved(self, choice: str, *pad: Any) -> tuple:
        """A pad slider or the colour changed: redraw the sphere; the run now uses this light."""
        light = pad_light(dict(zip(PAD_FIELDS, pad, strict=True)))
        return pad_image(light), self._choice_for_pad(choice, light)

    def _choice_for_pad(self, choice: str, light: Light) -> str:
        """The choice once the user has placed `light` on the pad: the pad light is the one the run uses."""
        if self.mode is not Mode.FBC:
            return choice_after_move(self.mode, choice, light)
        # In fbc an image (or ambient) source would ignore the pad, so placing the light switches to it.
        chosen = choice_after_move(self.mode, CUSTOM_LIGHT, light)
        if choice in IMAGE_SOURCES:
            gr.Info(PAD_TAKES_OVER)
        return chosen

    def choice_changed(self, choice: str, *pad: Any) -> tuple:
        """Left/Right/Top/Bottom move the pad light to the official direction; other choices leave it."""
        official = named_light(choice)
        if official is None:
            return (gr.skip(),) * (len(PAD_FIELDS) + 1)
        # Only the direction moves: colour, intensity, ambient and softness stay as the user set them (they shape
        # the preview and a later Custom Light; a named choice relights with the official gradient regardless).
        current = pad_light(dict(zip(PAD_FIELDS, pad, strict=True))) if pad else official
        placed = dataclasses.replace(current, azimuth=official.azimuth, elevation=official.elevation)
        moved = (placed.azimuth, placed.elevation)
        return (*moved, *(gr.skip(),) * (len(PAD_FIELDS) - len(moved)), pad_image(placed))

    def show_suggestions(self, result: dict[str, Any] | None) -> tuple:
        """The suggestion chips and the line saying where they came from."""
        if not result:
            return gr.Dataset(samples=[], visible=False), ""
        samples = [[item["prompt"]] for item in result["suggestions"]]
        offline = result["source"] == SOURCE_OFFLINE
        note = result.get("notice") or ("Offline suggestions." if offline else "Suggestions from the vision model.")
        return gr.Dataset(samples=samples, visible=True), f"*{note}*"

    def apply_suggestion(self, index: int, result: dict[str, Any] | None, prompt: str, choice: str) -> tuple:
        """A chip click: its lighting phrase replaces the prompt's lighting part and its light goes on the pad."""
        if not result or index is None or not 0 <= index < len(result["suggestions"]):
            return (gr.skip(),) * (len(PAD_FIELDS) + 3)
        item = result["suggestions"][index]
        light = Light.from_dict(item["light"])
        new_prompt = replace_lighting(prompt or "", item["prompt"])
        return new_prompt, choice_after_move(self.mode, choice, light), *pad_values(light), pad_image(light)

    def read_settings(self, path: str | None) -> dict[str, Any] | None:
        """Form values from a result PNG's metadata (None when the file input was cleared); one message if unusable."""
        if not path:
            return None
        try:
            values, notes = values_from_params(self.mode, read_params(path))
        except ICLightError as exc:
            raise user_error(exc) from None
        for note in notes:
            gr.Warning(note)
        values["pad"] = pad_image(pad_light(values)) if values.get("azimuth") is not None else gr.skip()
        gr.Info(f"Settings loaded (seed {values['seed']}).")
        return values

    @staticmethod
    def compare(results: dict[str, Any] | None, evt: gr.SelectData) -> Any:
        """Before/after of the gallery image the user selected."""
        if not results or not 0 <= evt.index < len(results["after"]):
            return gr.skip()
        return results["before"], results["after"][evt.index]
