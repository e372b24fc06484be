"""What the page tells the user when something goes wrong: one message per error, Stop, missing models, notices."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from types import SimpleNamespace

import gradio as gr
import pytest
from app_testing import CountingRelighter, subject_image, tiny_model_settings

from core.errors import CancelledError, WeightsNotFoundError
from core.imaging.outputs import read_params
from core.lighting.lights import Light
from core.models.availability import missing_models
from core.models.loading import Variant
from core.models.manager import ModelManager
from core.params import Matting, Mode
from ui.feedback import JobTracker, planned_size, relight_button, require_models, stop_message, weights_banner
from ui.form import CUSTOM_LIGHT, PAD_FIELDS, light_fields, pad_light, pad_values
from ui.handlers import PAD_TAKES_OVER, AppHandlers

FAST = {"prompt": "a ball", "steps": 2, "width": 256, "height": 256, "highres_scale": 1.0, "matting": "none"}
NO_PROGRESS = lambda *args, **kwargs: None  # noqa: E731


def _pad(light: Light) -> list:
    """The pad field values of `light`, in PAD_FIELDS order."""
    return list(pad_values(light))


async def _drain(stream) -> list:
    """Every item of an async generator."""
    return [item async for item in stream]


@pytest.fixture
def toasts(monkeypatch) -> list[tuple[str, str]]:
    """The gr.Info / gr.Warning messages the handlers show, as (kind, text)."""
    shown: list[tuple[str, str]] = []
    monkeypatch.setattr(gr, "Info", lambda message, *a, **k: shown.append(("info", message)))
    monkeypatch.setattr(gr, "Warning", lambda message, *a, **k: shown.append(("warning", message)))
    return shown


# -- missing models --------------------------------------------------------------------------------------------------


def test_missing_models_lists_the_base_model_and_the_iclight_file(tiny_paths, tmp_path):
    settings = replace(tiny_model_settings(tiny_paths, models_dir=tmp_path / "empty"), base_model=str(tmp_path / "sd"))
    manager = ModelManager(settings)
    missing = missing_models(manager, Variant.FC)
    assert [item.what for item in missing] == [
        "SD 1.5 base model",
        "IC-Light fc weights (iclight_sd15_fc.safetensors)",
    ]
    assert missing[0].where == str(tmp_path / "sd") and "diffusers SD 1.5 folder" in missing[0].source
    assert missing[1].where == str((tmp_path / "empty").resolve())
    assert missing[1].source == "https://huggingface.co/lllyasviel/ic-light/resolve/main/iclight_sd15_fc.safetensors"
    assert not any(item.downloads for item in missing)  # the tests run offline
    banner = weights_banner(missing)
    assert banner.count("\n- **") == 2 and "Relighting needs models that are not on this machine" in banner
    button = relight_button(missing)
    assert button["interactive"] is False and button["value"] == "Relight (models missing, see above)"
    with pytest.raises(
        WeightsNotFoundError, match=r"SD 1.5 base model is missing .*\(iclight_sd15_fc.safetensors\) is missing"
    ):
        require_models(manager, Variant.FC)
    assert missing_models(ModelManager(tiny_model_settings(tiny_paths)), Variant.FC) == []
    assert weights_banner([]) == "" and relight_button([])["interactive"] is True


def test_a_hub_base_model_counts_only_when_cached(tiny_paths, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    settings = replace(tiny_model_settings(tiny_paths), base_model="someone/not-cached-sd15")
    (base,) = missing_models(ModelManager(settings), Variant.FC)
    assert base.what == "SD 1.5 base model someone/not-cached-sd15" and not base.downloads
    assert "hf download someone/not-cached-sd15" in base.source
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("ICLIGHT_OFFLINE")
    (base,) = missing_models(ModelManager(settings), Variant.FC)
    assert base.downloads  # online, the first relight fetches it
    assert relight_button([base])["value"] == "Relight (downloads the models first)"


def test_page_state_banner_and_button_follow_the_models_folder(tiny_paths, tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    handlers = AppHandlers(CountingRelighter(ModelManager(tiny_model_settings(tiny_paths, empty))), Mode.FC)
    status, banner, button, stop = handlers.page_state()
    assert status.startswith("Weights missing · fc · CPU fp32 · ")
    assert banner["visible"] is True and "iclight_sd15_fc.safetensors" in banner["value"]
    assert button["interactive"] is False and stop == {
        "__type__": "update",
        "variant": "secondary",
        "interactive": False,
    }
    (empty / "iclight_sd15_fc.safetensors").symlink_to(tiny_paths["models"] / "iclight_sd15_fc.safetensors")
    status, banner, button, _ = handlers.page_state()  # a page (re)load checks again
    assert status.startswith("Ready · fc") and banner["visible"] is False and button["interactive"] is True


def test_a_failed_load_is_on_the_status_line(tiny_paths, tmp_path):
    broken = tmp_path / "models"
    broken.mkdir()
    (broken / "iclight_sd15_fc.safetensors").write_bytes(b"not a safetensors file")
    handlers = AppHandlers(CountingRelighter(ModelManager(tiny_model_settings(tiny_paths, broken))), Mode.FC)
    assert handlers.status().startswith("Ready · fc")
    image = str(subject_image(tmp_path / "s.png"))
    with pytest.raises(gr.Error):
        asyncio.run(_drain(handlers.relight(image, progress=NO_PROGRESS, light="None", **FAST)))
    status = handlers.status()
    assert status.startswith("Load failed (see details) · fc") and "iclight_sd15_fc.safetensors" in status


# -- one message, before the job -------------------------------------------------------------------------------------


def test_check_gives_the_first_problem_as_one_message(tiny_paths, tmp_path):
    handlers = AppHandlers(CountingRelighter(ModelManager(tiny_model_settings(tiny_paths))), Mode.FBC)
    image = str(subject_image(tmp_path / "s.png"))
    with pytest.raises(gr.Error, match="no foreground image was given"):
        handlers.check(None, None, bg_source="Use Background Image", **FAST)
    with pytest.raises(gr.Error, match="'Use Background Image' needs a background image"):
        handlers.check(image, None, bg_source="Use Background Image", **FAST)
    with pytest.raises(gr.Error, match="width"):
        handlers.check(image, None, bg_source="Top Light", **{**FAST, "width": 4096})
    assert handlers.check(image, None, bg_source="Top Light", **FAST) is None
    assert handlers.relighter.jobs == []  # checking never starts a job
    empty = AppHandlers(CountingRelighter(ModelManager(tiny_model_settings(tiny_paths, tmp_path))), Mode.FC)
    with pytest.raises(gr.Error, match=r"\(iclight_sd15_fc.safetensors\) is missing from"):
        empty.check(image, None, light="None", **FAST)


# -- Stop ------------------------------------------------------------------------------------------------------------


def test_stop_says_at_which_step_the_job_stopped_and_clears_the_preview(tiny_paths, tmp_path):
    relighter = CountingRelighter(ModelManager(tiny_model_settings(tiny_paths)), tmp_path / "out")
    handlers = AppHandlers(relighter, Mode.FC)
    request = SimpleNamespace(session_hash="session-1")
    assert handlers.stop(request) == (gr.skip(), gr.skip())  # nothing ran: nothing to say
    form = {**FAST, "steps": 100, "light": "None"}

    async def stop_after_a_preview():
        stream = handlers.relight(
            str(subject_image(tmp_path / "s.png")), progress=NO_PROGRESS, request=request, **form
        )
        await anext(stream)
        await stream.aclose()  # what Gradio does to the job when Stop is pressed
        return await asyncio.to_thread(handlers.stop, request)

    gallery, message = asyncio.run(stop_after_a_preview())
    job = relighter.jobs[-1]
    assert isinstance(job.error, CancelledError)
    assert gallery is None  # the leftover noisy live preview goes
    assert message == f"Stopped at step {job.steps} of {job.total}; nothing was saved."
    assert 0 < job.steps < job.total and not list((tmp_path / "out").glob("*.png*"))
    assert handlers.stop(request) == (gr.skip(), gr.skip())  # said once


def test_stop_messages_for_each_way_a_job_ends():
    tracker = JobTracker(step=0, total=20, outcome="stopped")
    tracker.ended.set()
    assert stop_message(tracker) == "Stopped before the first step; nothing was saved."
    finished = JobTracker(step=20, total=20, outcome="finished")
    finished.ended.set()
    assert stop_message(finished) is None  # the job ended before Stop reached it: its results stand
    assert (
        stop_message(JobTracker(step=3, total=20), wait_s=0.01) == "Stopping at step 3 of 20; nothing will be saved."
    )
    assert stop_message(None) is None


# -- the light pad ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["Use Background Image", "Use Flipped Background Image", "Ambient"])
def test_fbc_pad_use_switches_an_image_source_to_the_pad_light(tiny_paths, source, toasts):
    handlers = AppHandlers(CountingRelighter(ModelManager(tiny_model_settings(tiny_paths))), Mode.FBC)
    _, choice = handlers.pad_moved(source, *_pad(Light(azimuth=30, elevation=20)))
    assert choice == CUSTOM_LIGHT  # the relight now uses the light the preview shows
    _, choice = handlers.pad_moved(source, *_pad(Light.named("left")))
    assert choice == "Left Light"
    expected = [("info", PAD_TAKES_OVER)] * 2 if source != "Ambient" else []
    assert toasts == expected
    fc = AppHandlers(CountingRelighter(ModelManager(tiny_model_settings(tiny_paths))), Mode.FC)
    assert fc.pad_moved("None", *_pad(Light(azimuth=30)))[1] == CUSTOM_LIGHT


def test_a_named_light_keeps_the_users_ambient(tiny_paths):
    handlers = AppHandlers(CountingRelighter(ModelManager(tiny_model_settings(tiny_paths))), Mode.FC)
    pad = _pad(Light(azimuth=30, elevation=20, ambient=0.4))
    values = dict(zip(PAD_FIELDS, handlers.choice_changed("Top Light", *pad)[: len(PAD_FIELDS)], strict=True))
    assert values["azimuth"] == 90 and values["elevation"] == 0
    assert isinstance(values["ambient"], dict)  # gr.skip(): the slider keeps 0.4
    # The relight itself still uses the official top gradient, whatever the pad's ambient.
    assert light_fields(Mode.FC, "Top Light", pad_light(dict(zip(PAD_FIELDS, pad, strict=True)))) == {
        "light": Light.named("top")
    }


# -- notices and the truth in the outputs ----------------------------------------------------------------------------


def test_matting_fallback_notice_once_per_image_in_plain_words_and_in_the_metadata(tiny_paths, tmp_path, toasts):
    relighter = CountingRelighter(ModelManager(tiny_model_settings(tiny_paths)), tmp_path / "out")
    handlers = AppHandlers(relighter, Mode.FC)
    first, second = (str(subject_image(tmp_path / f"{name}.png")) for name in ("a", "b"))
    for _ in range(2):
        handlers.preview(first, 0, 0, "#ffffff", 1.0, 0.0, matting="rmbg")
    form = {**FAST, "matting": "rmbg", "light": "None"}
    items = asyncio.run(_drain(handlers.relight(first, progress=NO_PROGRESS, **form)))
    (notice,) = {text for _, text in toasts}
    assert toasts == [("info", notice)]  # the preview told it; moving the light and relighting do not repeat it
    assert notice == (
        "RMBG-1.4 could not be used, so the background was removed with GrabCut (rougher edges): it is not installed "
        "(it comes from https://huggingface.co/briaai/RMBG-1.4). "
        f"To use RMBG-1.4, put its model folder at {tiny_paths['models'] / 'RMBG-1.4'} or set ICLIGHT_RMBG_MODEL."
    )
    asyncio.run(_drain(handlers.relight(second, progress=NO_PROGRESS, **form)))
    assert toasts[-1] == ("warning", notice)  # another image: told again
    files = items[-1][RELIGHT_FILES]
    assert read_params(files[0]).matting is Matting.GRABCUT  # the metadata names what ran, not what was asked
    assert f"- {notice}" in items[-1][RELIGHT_INFO]


RELIGHT_FILES, RELIGHT_INFO = 5, 6


def test_planned_size_counts_the_highres_pass_and_the_upscale():
    assert planned_size(512, 640, 1.5, "off") == "Result: **768×960 px** (512×640 px → high-res ×1.5: 768×960)"
    assert planned_size(512, 640, 1.5, "x2") == (
        "Result: **1536×1920 px** (512×640 px → high-res ×1.5: 768×960 → upscale x2: 1536×1920)"
    )
    assert planned_size(512, 512, 1.0, "1080p") == "Result: **1080×1080 px** (512×512 px → upscale 1080p: 1080×1080)"
    assert planned_size(None, 512, 1.0, "off") == ""  # a half-typed size shows nothing rather than failing
