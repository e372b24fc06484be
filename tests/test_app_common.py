"""Tests for the shared app pieces: settings and flags, form values <-> parameters, job streams, handlers."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from app_testing import CountingRelighter, subject_image, tiny_model_settings

import ui.settings as app_settings
from core.errors import CancelledError, InvalidParameterError
from core.imaging.outputs import save_result
from core.lighting.lightpad import pad_position
from core.lighting.lights import Light
from core.lighting.suggest import NOTICE_NOT_CONFIGURED
from core.models.loading import Variant
from core.models.manager import ModelManager
from core.params import BGSource, Matting, Mode, RelightParams
from core.recipe.sampling import StepInfo
from core.service import Relighter
from ui.feedback import status_line
from ui.form import CUSTOM_LIGHT, FBC_CHOICES, FC_CHOICES, choice_after_move, params_from_values, values_from_params
from ui.handlers import PAD_SIZE, AppHandlers
from ui.jobs import JobDone, PreviewEngine, stream_job
from ui.page import set_lighting, set_prompt, set_subject
from ui.settings import AppSettings, build_parser, settings_from_args

PAD = {"azimuth": 30.0, "elevation": 20.0, "light_color": "#ffcc88", "light_intensity": 1.5, "ambient": 0.25}
PAD_LIGHT = Light(azimuth=30.0, elevation=20.0, color="#ffcc88", intensity=1.5, ambient=0.25)
FORM = {"prompt": "a ball, sunset", "seed": 7.0, "width": 256.0, "height": 320.0, "steps": 3.0, **PAD}


# -- settings and flags ----------------------------------------------------------------------------------------------


def test_settings_come_from_the_environment_once(monkeypatch, tmp_path):
    monkeypatch.setenv("ICLIGHT_QUEUE_SIZE", "5")
    monkeypatch.setenv("ICLIGHT_CONCURRENCY", "2")
    monkeypatch.setenv("ICLIGHT_OUTPUTS_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    settings = AppSettings.from_env()
    assert (settings.queue_size, settings.concurrency, settings.port) == (5, 2, 7999)
    assert settings.outputs_dir == tmp_path / "out"
    monkeypatch.setenv("ICLIGHT_CONCURRENCY", "two")
    with pytest.raises(ValueError, match="ICLIGHT_CONCURRENCY should be an integer but is 'two'"):
        AppSettings.from_env()
    monkeypatch.setenv("ICLIGHT_CONCURRENCY", "0")
    with pytest.raises(ValueError, match="ICLIGHT_CONCURRENCY should be an integer >= 1 but is 0"):
        AppSettings.from_env()


def test_defaults_without_environment(monkeypatch):
    for name in ("ICLIGHT_QUEUE_SIZE", "ICLIGHT_CONCURRENCY", "ICLIGHT_OUTPUTS_DIR", "GRADIO_SERVER_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = AppSettings.from_env()
    assert (settings.queue_size, settings.concurrency, settings.port, settings.share) == (20, 1, None, False)
    assert settings.outputs_dir == Path(app_settings.__file__).resolve().parent.parent / "outputs"


def test_flags_override_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    argv = [
        "--share",
        "--server-name",
        "0.0.0.0",
        "--port",
        "8000",
        "--base-model",
        str(tmp_path / "sd15"),
        "--models-dir",
        str(tmp_path / "weights"),
        "--device",
        "cpu",
        "--dtype",
        "fp32",
        "--low-vram",
        "--offline",
        "--outputs-dir",
        str(tmp_path / "results"),
    ]
    settings = settings_from_args(build_parser("test").parse_args(argv))
    assert (settings.share, settings.server_name, settings.port) == (True, "0.0.0.0", 8000)
    model = settings.model
    assert (model.base_model, model.models_dir) == (str(tmp_path / "sd15"), tmp_path / "weights")
    assert (model.device, model.dtype, model.low_vram, model.download) == ("cpu", "fp32", True, False)
    assert settings.outputs_dir == tmp_path / "results"


def test_main_launches_the_app_with_the_flags(tmp_path):
    launched = {}

    class FakeDemo:
        def launch(self, **kwargs):
            launched.update(kwargs)

    made = {}

    def create_demo(settings):
        made["settings"] = settings
        return FakeDemo()

    app_settings.main(create_demo, "test", ["--port", "8123", "--outputs-dir", str(tmp_path)])
    assert launched["server_port"] == 8123 and launched["share"] is False
    assert str(tmp_path.resolve()) in launched["allowed_paths"]  # saved results can be served
    assert made["settings"].outputs_dir == tmp_path


def test_gpu_decorator_is_a_no_op_without_spaces_and_uses_it_when_present(monkeypatch):
    def work():
        return 1

    monkeypatch.setitem(sys.modules, "spaces", None)  # "import spaces" raises ImportError
    assert app_settings.gpu(work) is work
    monkeypatch.setitem(sys.modules, "spaces", SimpleNamespace(GPU=lambda fn: ("on gpu", fn)))
    assert app_settings.gpu(work) == ("on gpu", work)


# -- form values <-> parameters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "light"),
    [
        ("None", None),
        ("Left Light", Light.named("left")),
        ("Top Light", Light.named("top")),
        (CUSTOM_LIGHT, PAD_LIGHT),
    ],
)
def test_fc_choices_give_the_official_lights_exactly_or_the_pad_light(choice, light):
    params = params_from_values(Mode.FC, {**FORM, "light": choice})
    assert params.light == light
    assert (params.seed, params.width, params.height, params.steps) == (7, 256, 320, 3)  # whole floats become ints


@pytest.mark.parametrize(
    ("choice", "source", "light"),
    [
        ("Use Background Image", BGSource.UPLOAD, None),
        ("Use Flipped Background Image", BGSource.FLIP, None),
        ("Ambient", BGSource.AMBIENT, None),
        ("Right Light", BGSource.RIGHT, None),
        (CUSTOM_LIGHT, BGSource.LIGHT, PAD_LIGHT),
    ],
)
def test_fbc_sources_map_to_the_background_source(choice, source, light):
    params = params_from_values(Mode.FBC, {**FORM, "bg_source": choice})
    assert (params.mode, params.bg_source, params.light, params.steps, params.cfg) == (Mode.FBC, source, light, 3, 7.0)


def test_bad_form_values_are_named_in_the_error():
    with pytest.raises(InvalidParameterError, match="light should be one of"):
        params_from_values(Mode.FC, {**FORM, "light": "Sideways"})
    with pytest.raises(InvalidParameterError, match="seed should be an integer but is 1.5"):
        params_from_values(Mode.FC, {**FORM, "seed": 1.5, "light": "None"})


def test_moving_the_light_picks_the_matching_choice():
    assert choice_after_move(Mode.FC, "None", PAD_LIGHT) == CUSTOM_LIGHT
    assert choice_after_move(Mode.FC, CUSTOM_LIGHT, Light.named("bottom")) == "Bottom Light"
    assert choice_after_move(Mode.FBC, "Left Light", PAD_LIGHT) == CUSTOM_LIGHT
    assert choice_after_move(Mode.FBC, CUSTOM_LIGHT, Light.named("right")) == "Right Light"
    assert choice_after_move(Mode.FBC, "Use Background Image", PAD_LIGHT) == "Use Background Image"  # bg kept
    assert CUSTOM_LIGHT in FC_CHOICES and CUSTOM_LIGHT in FBC_CHOICES


@pytest.mark.parametrize(
    "params",
    [
        RelightParams.for_mode(
            "fc", prompt="a cat, golden time", seed=99, light=PAD_LIGHT, num_images=3, upscale="x2"
        ),
        RelightParams.for_mode("fc", prompt="a cat", light=Light.named("left"), matting="grabcut", cfg=3.5),
        RelightParams.for_mode("fbc", prompt="a cat", bg_source="light", light=PAD_LIGHT, restore_details=True),
        RelightParams.for_mode("fbc", prompt="a cat", bg_source="flip", keep_background=True, preserve_color=0.4),
    ],
)
def test_settings_from_a_result_png_restore_the_same_parameters(params, tmp_path):
    path = save_result(np.zeros((8, 8, 3), np.uint8), params, tmp_path)
    from core.imaging.outputs import read_params

    values, notes = values_from_params(params.mode, read_params(path))
    assert notes == [] and values["randomize_seed"] is False
    assert params_from_values(params.mode, values) == params


def test_settings_outside_the_form_are_fitted_and_reported():
    params = RelightParams.for_mode("fbc", prompt="a cat", width=2048, highres_denoise=0.95, bg_source="left")
    values, notes = values_from_params(Mode.FC, params)
    assert values["width"] == 1024 and values["highres_denoise"] == 0.95 and values["light"] == "None"
    assert any("fbc app" in note for note in notes) and any("width 2048" in note for note in notes)
    values, notes = values_from_params(Mode.FBC, params)
    assert values["highres_denoise"] == 0.9 and values["bg_source"] == "Left Light"


# -- streamed jobs ---------------------------------------------------------------------------------------------------


def _info(k: int, total: int) -> StepInfo:
    return StepInfo("lowres", k, total, k, total, None)


def test_stream_job_yields_steps_in_order_then_the_result():
    def work(callback, cancel):
        for k in range(1, 6):
            callback(_info(k, 5))
        return "done"

    async def collect():
        return [event async for event in stream_job(work)]

    events = asyncio.run(collect())
    assert [e.step for e in events[:-1]] == [1, 2, 3, 4, 5] and events[-1] == JobDone("done")


def test_stream_job_raises_the_worker_error():
    def work(callback, cancel):
        raise InvalidParameterError("width should be ...")

    async def collect():
        return [event async for event in stream_job(work)]

    with pytest.raises(InvalidParameterError, match="width should be"):
        asyncio.run(collect())


def test_closing_the_stream_stops_the_worker_between_steps():
    ran, stopped = [], threading.Event()

    def work(callback, cancel):
        try:
            for k in range(1, 1000):
                if cancel.is_set():
                    raise CancelledError(f"cancelled after {k - 1} steps")
                ran.append(k)
                callback(_info(k, 1000))
                time.sleep(0.005)
        finally:
            stopped.set()

    async def first_steps():
        stream = stream_job(work)
        async for event in stream:
            if event.step == 3:
                break
        await stream.aclose()

    asyncio.run(first_steps())
    assert stopped.wait(10) and len(ran) < 1000


def test_closing_a_relight_handler_stops_its_worker_thread(tiny_paths, tmp_path):
    relighter = CountingRelighter(ModelManager(tiny_model_settings(tiny_paths)), tmp_path / "out")
    handlers = AppHandlers(relighter, Mode.FC)
    form = {"prompt": "a ball", "light": "None", "steps": 100, "width": 256, "height": 256, "highres_scale": 1.0}

    async def first_preview_then_close():
        stream = handlers.relight(str(subject_image(tmp_path / "s.png")), progress=lambda *a, **k: None, **form)
        first = await anext(stream)
        await stream.aclose()
        ended = await asyncio.to_thread(relighter.jobs[-1].ended.wait, 30)
        return first, ended

    first, ended = asyncio.run(first_preview_then_close())
    assert "live preview" in first[0][0][1] and all(isinstance(value, dict) for value in first[1:])
    job = relighter.jobs[-1]
    assert ended and isinstance(job.error, CancelledError) and job.steps < job.total


# -- handlers --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def handlers(tiny_paths, tmp_path_factory):
    relighter = Relighter(ModelManager(tiny_model_settings(tiny_paths)), tmp_path_factory.mktemp("out"))
    return AppHandlers(relighter, Mode.FC)


def _select(index, value=None) -> gr.SelectData:
    return gr.SelectData(None, {"index": index, "value": value})


def test_a_pad_click_places_the_light_where_the_sphere_was_clicked(handlers):
    target = Light(azimuth=45.0, elevation=30.0)
    x, y = pad_position(target, PAD_SIZE)
    azimuth, elevation, image, choice = handlers.pad_click(
        "None", "#ffffff", 1.0, 0.0, 0.5, _select([round(x), round(y)])
    )
    assert azimuth == pytest.approx(45, abs=1) and elevation == pytest.approx(30, abs=1)
    assert choice == CUSTOM_LIGHT and image.shape == (PAD_SIZE, PAD_SIZE, 3)


def test_named_choices_put_the_official_direction_on_the_pad(handlers):
    pad = (45.0, 30.0, "#ffb070", 1.5, 0.3, 0.2)
    azimuth, elevation, *rest, image = handlers.choice_changed("Right Light", *pad)
    official = Light.named("right")
    assert (azimuth, elevation) == (official.azimuth, official.elevation)
    assert all(isinstance(value, dict) for value in rest)  # gr.skip(): colour, intensity, ambient, softness stay
    assert image.shape == (PAD_SIZE, PAD_SIZE, 3)
    assert all(isinstance(value, dict) for value in handlers.choice_changed(CUSTOM_LIGHT, *pad))


def test_a_suggestion_chip_replaces_the_lighting_and_sets_the_light(handlers):
    result = {
        "source": "offline",
        "notice": NOTICE_NOT_CONFIGURED,
        "suggestions": [
            {"prompt": "golden time", "light": Light.named("left").to_dict()},
            {"prompt": "neon light, city", "light": PAD_LIGHT.to_dict()},
        ],
    }
    prompt, choice, *pad, image = handlers.apply_suggestion(1, result, "a cat, fluffy, sunset over sea", "None")
    assert prompt == "a cat, fluffy, neon light, city" and choice == CUSTOM_LIGHT
    assert Light(*pad) == PAD_LIGHT
    _, choice, *_ = handlers.apply_suggestion(0, result, "a cat", "None")
    assert choice == "Left Light"
    _, note = handlers.show_suggestions(result)
    assert note == f"*{NOTICE_NOT_CONFIGURED}*"
    _, note = handlers.show_suggestions({**result, "source": "remote", "notice": None})
    assert note == "*Suggestions from the vision model.*"


def test_load_settings_fills_the_form_from_a_png(handlers, tmp_path):
    params = RelightParams.for_mode("fc", prompt="a cat, magic lit", seed=4242, light=PAD_LIGHT)
    values = handlers.read_settings(str(save_result(np.zeros((8, 8, 3), np.uint8), params, tmp_path)))
    assert (values["prompt"], values["seed"], values["light"]) == ("a cat, magic lit", 4242, CUSTOM_LIGHT)
    assert values["pad"].shape == (PAD_SIZE, PAD_SIZE, 3)
    assert handlers.read_settings(None) is None  # the file input was cleared: nothing to fill
    plain = tmp_path / "plain.png"
    subject_image(plain, size=16)
    with pytest.raises(gr.Error, match="no IC-Light metadata"):
        handlers.read_settings(str(plain))


def test_gallery_selection_updates_the_comparison():
    results = {"before": "B", "after": ["A0", "A1"]}
    assert AppHandlers.compare(results, _select(1)) == ("B", "A1")


def test_quick_lists_keep_the_other_part_of_the_prompt():
    assert set_prompt(["beautiful woman"]) == "beautiful woman"
    assert set_lighting(["golden time"], "handsome man, detailed face, neon light") == (
        "handsome man, detailed face, golden time"
    )
    assert set_subject(["beautiful woman, detailed face"], "handsome man, detailed face, neon light, city") == (
        "beautiful woman, detailed face, neon light, city"
    )


def test_preview_engine_cuts_each_image_out_once(handlers, tmp_path):
    calls = []
    relighter = handlers.relighter
    engine = PreviewEngine(relighter)
    original = relighter.extract

    def counting_extract(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    image = subject_image(tmp_path / "subject.png", size=1000)
    relighter.extract = counting_extract
    try:
        first, _ = engine.render(image, Light.named("left"), Matting.GRABCUT)
        second, notice = engine.render(image, Light.named("right"), Matting.GRABCUT)
    finally:
        del relighter.extract
    assert len(calls) == 1 and notice is None
    assert first.shape == second.shape == (768, 768, 3)  # previews work on a copy at most 768 px
    assert not np.array_equal(first, second)


def test_status_line_is_one_plain_line_with_details_in_a_fold(tiny_paths, tmp_path, monkeypatch):
    present = status_line(ModelManager(tiny_model_settings(tiny_paths)), Variant.FC, "RMBG-1.4")
    line, details = present.split("\n\n", 1)
    assert line == "Ready · fc · CPU fp32 · RMBG-1.4"
    assert details.startswith("<details><summary>details</summary>") and "IC-Light fc" in details
    # The details name the weight file, so a fine-tuned offset in its own --models-dir is visible as such.
    settings = tiny_model_settings(tiny_paths)
    assert f"IC-Light fc: {Path(settings.models_dir) / 'iclight_sd15_fc.safetensors'}" in details
    offline = ModelManager(tiny_model_settings(tiny_paths, models_dir=tmp_path))
    text = status_line(offline, Variant.FBC, "GrabCut")
    assert text.startswith("Weights missing · fbc · CPU fp32 · GrabCut\n")
    assert "iclight_sd15_fbc.safetensors" in text
    assert "https://huggingface.co/lllyasviel/ic-light/resolve/main/iclight_sd15_fbc.safetensors" in text
    failed = status_line(offline, Variant.FC, "GrabCut", failure="iclight_sd15_fc.safetensors is truncated")
    assert failed.startswith("Load failed (see details) · fc") and "is truncated" in failed
    monkeypatch.delenv("ICLIGHT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    online = ModelManager(replace(tiny_model_settings(tiny_paths, models_dir=tmp_path), download=True))
    assert status_line(online, Variant.FC, "RMBG-1.4").startswith("Ready (downloads the weights on the first relight)")
