"""The page both apps share: every input, output and event except each app's conditioning inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from core.imaging.inputs import ACCEPTED_TEXT, hide_upload_folders
from core.lighting.lights import Light
from core.lighting.prompt_words import SUBJECT_ITEMS, replace_lighting, split_items
from core.lighting.suggest import MOODS
from core.models.manager import ModelManager
from core.params import (
    MAX_SEED,
    Matting,
    Mode,
    RelightParams,
    Sampler,
    Upscale,
)
from core.service import Relighter
from ui.feedback import planned_size, stop_button
from ui.form import (
    CHOICE_NAMES,
    INT_FIELDS,
    PAD_FIELDS,
    field_spec,
    label,
    pad_values,
    ranges,
    slider_step,
    strict_inputs,
)
from ui.handlers import NORMALS_OUTPUTS, RELIGHT_OUTPUTS, STOP_OUTPUTS, AppHandlers, pad_image
from ui.loras import build_loras
from ui.settings import UPLOAD_CACHE, AppSettings

IMAGE_HEIGHT = 320  # px of the input and output image boxes
PREVIEW_CONCURRENCY = 4  # instant previews are CPU-light; a few run beside a sampling job
SUGGEST_CONCURRENCY = 4  # suggestions mostly wait on a remote server
GPU_QUEUE = "gpu"  # relight and normals share the accelerator, so they share one concurrency limit
SAMPLER_LABELS = {
    Sampler.DPMPP_2M_SDE_KARRAS: "DPM++ 2M SDE Karras (official)",
    Sampler.DPMPP_2M_KARRAS: "DPM++ 2M Karras",
    Sampler.DDIM: "DDIM",
    Sampler.EULER_A: "Euler a",
}
MATTING_LABELS = {
    Matting.RMBG: "RMBG-1.4 (non-commercial licence)",
    Matting.BIREFNET: "BiRefNet (MIT licence)",
    Matting.ALPHA: "The image's own alpha channel",
    Matting.GRABCUT: "GrabCut (classical, no weights)",
    Matting.NONE: "None: use the image as it is",
}
MATTING_NOTE = (
    "RMBG-1.4 (BRIA AI) may only be used non-commercially; BiRefNet is MIT-licensed. Without their weights the "
    "app falls back to GrabCut and says so. PNGs with transparency use their own alpha channel."
)
SCROLL_TO_FORM = "() => document.getElementById('form-top')?.scrollIntoView({behavior: 'smooth', block: 'start'})"
MOOD_ANY = "Any mood"  # the Mood dropdown's blank choice: suggestions for no mood in particular
CHOICE_INFO = "Left/Right/Top/Bottom relight with the official gradients; the light pad makes a Custom Light."
UPSCALE_LABELS = {Upscale.OFF: "Off", Upscale.X2: "x2", Upscale.X4: "x4", Upscale.P1080: "1080p (short side)"}


@dataclass(frozen=True)
class AppSpec:
    """What makes one app different from the other; everything else is shared."""

    mode: Mode
    title: str
    intro: str  # Markdown under the title
    choice_label: str  # label of the light (fc) or background source (fbc) radio
    choices: tuple[str, ...]
    choice_default: str
    examples: list[list]
    example_fields: tuple[str, ...]  # form names that the example columns fill, in order
    add_inputs: Callable[[Page], None] | None = None  # extra conditioning inputs beside the foreground
    add_actions: Callable[[Page], None] | None = None  # extra buttons beside Relight
    add_quick_lists: Callable[[Page], None] | None = None  # quick lists under the results
    add_events: Callable[[Page, AppSettings], None] | None = None  # extra endpoints (fbc: /normals)


@dataclass
class Page:
    """The components of one app page by form name, with the handlers behind them."""

    handlers: AppHandlers
    spec: AppSpec
    inputs: dict[str, Any] = field(default_factory=dict)  # relight inputs by API parameter name, in API order
    outputs: dict[str, Any] = field(default_factory=dict)  # RELIGHT_OUTPUTS components by name
    parts: dict[str, Any] = field(default_factory=dict)  # everything else: pad, preview, buttons, chips, ...
    gpu_events: list[Any] = field(default_factory=list)  # events the Stop button cancels


def image_input(label: str) -> gr.Image:
    """An upload/paste/webcam image input that keeps PNG alpha and explains files it cannot open."""
    image = gr.Image(
        label=label, type="filepath", image_mode=None, sources=["upload", "clipboard", "webcam"], height=IMAGE_HEIGHT
    )
    # Gradio opens every upload with Pillow before any handler runs and reports a failure there only as a generic
    # "error" (a Component subclass would write a .pyi stub next to this file), so wrap this one instance.
    opened = image.preprocess

    def preprocess(payload: Any) -> str | None:
        """The stock preprocessing, with open failures turned into a message saying what to upload."""
        try:
            return opened(payload)
        except Image.DecompressionBombError as exc:
            raise gr.Error(f"{label}: the image is too large to open safely ({exc})") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            reason = hide_upload_folders(str(exc))  # the file's name, not the server's upload folder
            raise gr.Error(
                f"{label}: cannot read the file as an image ({reason}); upload a {ACCEPTED_TEXT} image"
            ) from None

    image.preprocess = preprocess
    return image


def make_relighter(settings: AppSettings) -> Relighter:
    """The engine for an app: models load lazily on the first request, never here."""
    return Relighter(ModelManager(settings.model), outputs_dir=settings.outputs_dir)


def _slider(page: Page, name: str, default: float) -> gr.Slider:
    """The slider of a form field, its range, step and label from the parameter's Spec."""
    low, high = ranges(page.spec.mode)[name]
    precision = 0 if name in INT_FIELDS else None
    slider = gr.Slider(low, high, value=default, step=slider_step(name), precision=precision, label=label(name))
    page.inputs[name] = slider
    return slider


def _build_prompt(page: Page) -> None:
    """Prompt with the lighting-suggestion controls beside it."""
    with gr.Row(equal_height=True):
        page.inputs["prompt"] = gr.Textbox(label=label("prompt"), scale=4, placeholder="subject, lighting")
        page.parts["mood"] = gr.Dropdown(
            [(MOOD_ANY, ""), *((mood, mood) for mood in MOODS)], value="", label="Mood", scale=1, min_width=150
        )
        page.parts["suggest"] = gr.Button("Suggest lighting", scale=1, min_width=110)
    page.parts["suggestions"] = gr.JSON(label="Lighting suggestions", visible=False)
    page.parts["chips"] = gr.Dataset(
        components=["textbox"],
        samples=[],
        type="index",
        label="Suggested lighting (click to use)",
        visible=False,
        elem_id="suggestions",
    )
    page.parts["suggest_note"] = gr.Markdown()


def _build_size(page: Page) -> None:
    """Seed, image count and size."""
    with gr.Group():
        with gr.Row():
            page.inputs["seed"] = gr.Number(
                label=label("seed"), value=RelightParams.seed, precision=0, minimum=0, maximum=MAX_SEED
            )
            page.inputs["randomize_seed"] = gr.Checkbox(label="Randomize seed", value=False)
            _slider(page, "num_images", RelightParams.num_images)
        with gr.Row():
            _slider(page, "width", RelightParams.width)
            _slider(page, "height", RelightParams.height)
    page.parts["planned_size"] = gr.Markdown(elem_id="planned-size")  # filled on load and on every size change


def _build_light_pad(page: Page) -> None:
    """The clickable lit sphere, its instant preview and the light's sliders."""
    light = Light()
    with gr.Accordion("Light pad: click the sphere to place the light", open=True):
        with gr.Row():
            page.parts["pad"] = gr.Image(
                pad_image(light),
                label="Light pad (click)",
                elem_id="light-pad",
                interactive=False,
                height=IMAGE_HEIGHT * 3 // 4,
                buttons=[],
            )
            page.parts["preview"] = gr.Image(label="Instant preview", interactive=False, height=IMAGE_HEIGHT * 3 // 4)
        values = dict(zip(PAD_FIELDS, pad_values(light), strict=True))
        for row in (PAD_FIELDS[:2], PAD_FIELDS[2:]):  # direction, then colour and strength
            with gr.Row():
                for name in row:
                    slider = field_spec(name).slider
                    if slider is None:  # the colour
                        # The block clips its ~260 px pop-up picker, so it is kept at least that wide.
                        page.inputs[name] = gr.ColorPicker(value=values[name], label=label(name), min_width=280)
                    else:
                        low, high, step = slider
                        page.inputs[name] = gr.Slider(low, high, value=values[name], step=step, label=label(name))


def _build_advanced(page: Page) -> None:
    """Sampling settings with the official defaults of the app's mode."""
    defaults = RelightParams.for_mode(page.spec.mode)
    with gr.Accordion("Advanced", open=False):
        for name in ("steps", "cfg", "lowres_denoise", "highres_scale", "highres_denoise"):
            if name in ranges(page.spec.mode):  # fbc has no low-res denoise
                _slider(page, name, getattr(defaults, name))
        page.inputs["added_prompt"] = gr.Textbox(label=label("added_prompt"), value=defaults.added_prompt)
        page.inputs["negative_prompt"] = gr.Textbox(label=label("negative_prompt"), value=defaults.negative_prompt)
        page.inputs["sampler"] = gr.Dropdown(
            [(text, s.value) for s, text in SAMPLER_LABELS.items()],
            value=defaults.sampler.value,
            label=label("sampler"),
        )


def _build_finishing(page: Page) -> None:
    """Foreground extraction and the finishing steps after sampling."""
    with gr.Accordion("Foreground & finishing", open=False):
        page.inputs["matting"] = gr.Dropdown(
            [(text, m.value) for m, text in MATTING_LABELS.items()],
            value=RelightParams.matting.value,
            label=label("matting"),
        )
        gr.Markdown(MATTING_NOTE)
        page.inputs["keep_background"] = gr.Checkbox(
            label=label("keep_background"), value=RelightParams.keep_background
        )
        with gr.Row():
            page.inputs["restore_details"] = gr.Checkbox(
                label=label("restore_details"), value=RelightParams.restore_details
            )
            _slider(page, "detail_radius", RelightParams.detail_radius)
        _slider(page, "preserve_color", RelightParams.preserve_color)
        page.inputs["upscale"] = gr.Dropdown(
            [(text, u.value) for u, text in UPSCALE_LABELS.items()], value=RelightParams.upscale.value,
            label=label("upscale"),
        )  # fmt: skip


def _build_results(page: Page) -> None:
    """Results gallery (it alone shows the job's progress bar), run info and the seed used."""
    out = page.outputs
    out["gallery"] = gr.Gallery(
        label="Results", height=IMAGE_HEIGHT * 3 // 2, columns=2, object_fit="contain", format="png", elem_id="results"
    )
    out["info"] = gr.Markdown(label="Run info", elem_id="run-info")
    # A Number box cannot be empty (the browser shows 0), so it stays hidden until a run has a seed to show.
    out["seed"] = gr.Number(label="Seed used", precision=0, interactive=False, visible=False, elem_id="seed-used")


def _build_run_details(page: Page) -> None:
    """Before/after slider, preprocessed foreground, matte and downloads of the last run."""
    out = page.outputs
    out["comparison"] = gr.ImageSlider(label="Before and after", type="numpy")
    with gr.Row():
        out["foreground"] = gr.Image(label="Preprocessed foreground", interactive=False, height=IMAGE_HEIGHT)
        out["matte"] = gr.Image(label="Matte", interactive=False, height=IMAGE_HEIGHT, image_mode="L")
    out["files"] = gr.File(label="Downloads", file_count="multiple", interactive=False)
    out["results"] = gr.State()


def _build_examples(page: Page) -> None:
    """A strip of example thumbnails under the inputs; a click fills every example field (see _wire)."""
    images = [k for k, name in enumerate(page.spec.example_fields) if name in ("foreground", "background")]
    page.parts["examples"] = gr.Dataset(
        components=["image"] * len(images),
        samples=[[row[k] for k in images] for row in page.spec.examples],
        type="index",
        layout="gallery",
        label="Examples (click one to fill the form)",
        samples_per_page=len(page.spec.examples),
        elem_id="examples",
    )


def build_page(spec: AppSpec, handlers: AppHandlers, settings: AppSettings) -> Page:
    """Lay out the page and wire the shared events; call inside `gr.Blocks()`."""
    page = Page(handlers, spec)
    gr.Markdown(f"# {spec.title}\n{spec.intro}")
    page.parts["status"] = gr.Markdown(handlers.status(), elem_id="status")
    banner = handlers.banner()
    page.parts["banner"] = gr.Markdown(banner, visible=bool(banner), elem_id="weights-banner")
    # Two rows of two columns: a phone stacks them in this order, so Results come right after the Relight button.
    with gr.Row(elem_id="form-top"):
        with gr.Column(scale=1):
            with gr.Row():
                page.inputs["foreground"] = image_input("Foreground")
                if spec.add_inputs is not None:
                    spec.add_inputs(page)
            _build_examples(page)
            _build_prompt(page)
            name = CHOICE_NAMES[spec.mode]
            info = CHOICE_INFO if spec.mode is Mode.FC else None
            page.inputs[name] = gr.Radio(
                list(spec.choices), value=spec.choice_default, label=spec.choice_label, info=info
            )
            with gr.Row():
                button = handlers.relight_button()
                page.parts["relight"] = gr.Button(
                    button["value"], interactive=button["interactive"], variant="primary", elem_id="relight"
                )
                page.parts["stop"] = gr.Button("Stop", variant="secondary", interactive=False, elem_id="stop")
                if spec.add_actions is not None:
                    spec.add_actions(page)
        with gr.Column(scale=1):
            _build_results(page)
    with gr.Row():
        with gr.Column(scale=1):
            _build_light_pad(page)
            _build_size(page)
            _build_advanced(page)
            _build_finishing(page)
            build_loras(page, settings.model.models_dir)  # last: /relight's inputs gain `fast` and `loras` at the end
            page.parts["settings_file"] = gr.File(
                label="Load settings from a result PNG", file_types=[".png"], type="filepath"
            )
        with gr.Column(scale=1):
            _build_run_details(page)
            if spec.add_quick_lists is not None:
                spec.add_quick_lists(page)
    strict_inputs(spec.mode, {**page.inputs, "mood": page.parts["mood"]})  # API values: types and ranges, named
    _wire(page, settings)
    return page


def _wire(page: Page, settings: AppSettings) -> None:
    """The events both apps share."""
    h, inputs, parts, out = page.handlers, page.inputs, page.parts, page.outputs
    choice = inputs[CHOICE_NAMES[page.spec.mode]]
    pad_inputs = [inputs[name] for name in PAD_FIELDS]
    private = {"api_visibility": "private", "queue": False}
    # Relight: inputs and models are checked before queueing (a problem is one message, no output changes), then
    # queued, one job per GPU, live previews, one progress bar on the results; Stop cancels it between steps.
    _wire_job(page, parts["relight"], h.check, h.relight, RELIGHT_OUTPUTS, "relight", settings)
    example_fields = [inputs[name] for name in page.spec.example_fields]
    fill = partial(_example_values, page.spec)
    parts["examples"].click(fill, inputs=parts["examples"], outputs=example_fields, **private).then(
        None, js=SCROLL_TO_FORM
    )
    size_inputs = [inputs[name] for name in ("width", "height", "highres_scale", "upscale")]
    gr.on([c.change for c in size_inputs], planned_size, inputs=size_inputs, outputs=parts["planned_size"], **private)
    out["gallery"].select(h.compare, inputs=out["results"], outputs=out["comparison"], **private)
    # Light pad: a click or a slider moves the light; a named choice puts the official light on the pad.
    parts["pad"].select(
        h.pad_click, inputs=[choice, *pad_inputs[2:]], outputs=[*pad_inputs[:2], parts["pad"], choice], **private
    )
    gr.on(
        [c.input for c in pad_inputs],
        h.pad_moved,
        inputs=[choice, *pad_inputs],
        outputs=[parts["pad"], choice],
        **private,
    )
    choice.change(h.choice_changed, inputs=[choice, *pad_inputs], outputs=[*pad_inputs, parts["pad"]], **private)
    # Instant preview of the user's own image under the pad light (/preview).
    matting = gr.State(Matting.RMBG.value)
    inputs["matting"].change(lambda value: value, inputs=inputs["matting"], outputs=matting, **private)
    gr.on(
        [inputs["foreground"].change, matting.change, *(c.change for c in pad_inputs)],
        h.preview,
        inputs_kwargs={
            "image": inputs["foreground"],
            "azimuth": inputs["azimuth"],
            "elevation": inputs["elevation"],
            "color": inputs["light_color"],
            "intensity": inputs["light_intensity"],
            "ambient": inputs["ambient"],
            "softness": inputs["light_softness"],
            "matting": matting,
        },
        outputs=parts["preview"],
        api_name="preview",
        concurrency_id="preview",
        concurrency_limit=PREVIEW_CONCURRENCY,
        show_progress="minimal",
        trigger_mode="always_last",
    )
    # Lighting suggestions (/suggest) and their chips.
    parts["suggest"].click(
        h.suggest,
        inputs_kwargs={"image": inputs["foreground"], "mood": parts["mood"]},
        outputs=parts["suggestions"],
        api_name="suggest",
        concurrency_id="suggest",
        concurrency_limit=SUGGEST_CONCURRENCY,
    ).success(
        h.show_suggestions, inputs=parts["suggestions"], outputs=[parts["chips"], parts["suggest_note"]], **private
    )
    parts["chips"].click(
        h.apply_suggestion,
        inputs=[parts["chips"], parts["suggestions"], inputs["prompt"], choice],
        outputs=[inputs["prompt"], choice, *pad_inputs, parts["pad"]],
        **private,
    )
    # Settings from a result PNG.
    targets = {name: comp for name, comp in inputs.items() if name not in ("foreground", "background")}
    targets["pad"] = parts["pad"]

    def apply_settings(values: dict[str, Any] | None) -> list[Any]:
        """Restored values in `targets` order; fields the PNG does not set stay as they are."""
        return [(values or {}).get(name, gr.skip()) for name in targets]

    # Read first (an unusable PNG is one message and changes nothing), then fill the form.
    loaded = gr.State()
    parts["settings_file"].upload(
        h.read_settings, inputs=parts["settings_file"], outputs=loaded, api_visibility="private"
    ).success(apply_settings, inputs=loaded, outputs=list(targets.values()), **private)


def _example_values(spec: AppSpec, index: int) -> list[Any]:
    """Every field of example `index`, in `spec.example_fields` order."""
    return list(spec.examples[index])


def _wire_job(
    page: Page,
    button: gr.Button,
    check: Callable[..., None],
    fn: Callable[..., Any],
    outputs: tuple[str, ...],
    api_name: str,
    settings: AppSettings,
) -> None:
    """A GPU job behind `button`: checked before queueing, Stop armed while it runs, status line after it."""
    h, parts = page.handlers, page.parts
    private = {"api_visibility": "private", "queue": False}
    # Queued: Gradio shows the message of a failed un-queued event nowhere. Checks are quick, so never limited.
    checked = button.click(
        check, inputs_kwargs=page.inputs, outputs=None, api_visibility="private", concurrency_limit=None
    )
    checked.success(lambda: stop_button(True), outputs=parts["stop"], **private)
    job = checked.success(
        fn,
        inputs_kwargs=page.inputs,
        outputs=[page.outputs[name] for name in outputs],
        api_name=api_name,
        concurrency_id=GPU_QUEUE,
        concurrency_limit=settings.concurrency,
        show_progress_on=page.outputs["gallery"],
    )
    job.then(
        lambda: (h.status(), stop_button(False), h.relight_button()),
        outputs=[parts["status"], parts["stop"], parts["relight"]],
        **private,
    )
    job.success(lambda: gr.update(visible=True), outputs=page.outputs["seed"], **private)  # a run has a seed to show
    page.gpu_events.append(job)


def wire_normals(page: Page, button: gr.Button, settings: AppSettings) -> None:
    """'Compute Normal' (/normals): the same inputs and outputs as /relight, a 9-image gallery in the results."""
    _wire_job(page, button, page.handlers.check_normals, page.handlers.normals, NORMALS_OUTPUTS, "normals", settings)


def build_demo(spec: AppSpec, relighter: Relighter | None, settings: AppSettings | None) -> gr.Blocks:
    """A whole app page for `spec`; nothing is loaded until the first request."""
    settings = settings or AppSettings.from_env()
    handlers = AppHandlers(relighter or make_relighter(settings), spec.mode, settings.suggest)
    with gr.Blocks(title=spec.title, delete_cache=UPLOAD_CACHE) as demo:
        with gr.Tab("Relight"):
            page = build_page(spec, handlers, settings)
            if spec.add_events is not None:
                spec.add_events(page, settings)
        with gr.Tab("Batch"):  # many images with one look (/batch); ui/batch_tab.py
            from ui.batch_tab import build_batch_tab

            build_batch_tab(handlers.relighter, spec.mode, settings)
        finish(demo, page, settings)
    return demo


def finish(demo: gr.Blocks, page: Page, settings: AppSettings) -> gr.Blocks:
    """Stop button, status refresh on page load, and the queue; call inside the Blocks after all events."""
    h, parts, out = page.handlers, page.parts, page.outputs
    private = {"api_visibility": "private", "queue": False}
    # The browser cancels the jobs only once the click's own function has returned, so the report comes after.
    parts["stop"].click(None, cancels=page.gpu_events, api_visibility="private").then(
        h.stop,
        outputs=[out[name] for name in STOP_OUTPUTS],
        api_visibility="private",
        concurrency_limit=None,  # each Stop only waits for its own job's next step
    ).then(lambda: (h.status(), stop_button(False)), outputs=[parts["status"], parts["stop"]], **private)
    demo.load(
        h.page_state,
        outputs=[parts["status"], parts["banner"], parts["relight"], parts["stop"]],
        api_visibility="private",
        queue=False,
    )
    size_inputs = [page.inputs[name] for name in ("width", "height", "highres_scale", "upscale")]
    demo.load(planned_size, inputs=size_inputs, outputs=parts["planned_size"], api_visibility="private", queue=False)
    return demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency)


def quick_list(label: str, items: list[str] | tuple[str, ...]) -> gr.Dataset:
    """A clickable list of prompt snippets."""
    return gr.Dataset(components=["textbox"], samples=[[item] for item in items], label=label, samples_per_page=20)


def set_prompt(sample: list[str] | str) -> str:
    """A quick-list click that replaces the whole prompt."""
    return sample[0] if isinstance(sample, list) else sample


def set_lighting(sample: list[str] | str, prompt: str) -> str:
    """A quick-list click that keeps the subject and replaces the lighting part of the prompt."""
    return replace_lighting(prompt or "", set_prompt(sample))


def set_subject(sample: list[str] | str, prompt: str) -> str:
    """A quick-list click that replaces the subject and keeps the lighting part of the prompt."""
    lighting = ", ".join(split_items(prompt or "")[SUBJECT_ITEMS:])
    return ", ".join(item for item in (set_prompt(sample), lighting) if item)
