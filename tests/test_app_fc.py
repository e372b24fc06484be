"""The fc app, launched for real over the tiny models and driven through its API with gradio_client."""

from __future__ import annotations

import time
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from app_testing import (
    app_settings,
    image_size,
    launch,
    read_rgb,
    start_app,
    subject_image,
    tiny_model_settings,
)
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from core.errors import CancelledError
from core.imaging.outputs import read_params
from core.lighting.lights import Light
from core.params import RelightParams
from gradio_fc import create_demo

FAST = {"steps": 2, "highres_scale": 1.0, "matting": "none", "width": 256, "height": 256}
JOB_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def fc(tiny_paths, tmp_path_factory):
    """One launched fc app for the module, with no suggestion server configured in the environment."""
    app = start_app(create_demo, tiny_paths, tmp_path_factory.mktemp("fc_app"))
    yield SimpleNamespace(**vars(app), subject=handle_file(str(subject_image(app.root / "subject.png"))))
    app.demo.close()


def test_view_api_lists_exactly_the_documented_endpoints(fc):
    api = fc.client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == {"/relight", "/preview", "/suggest", "/batch"}
    assert api["unnamed_endpoints"] == {}
    names = lambda endpoint: [p["parameter_name"] for p in api["named_endpoints"][endpoint]["parameters"]]  # noqa: E731
    assert names("/preview") == ["image", "azimuth", "elevation", "color", "intensity", "ambient", "softness"]
    assert names("/suggest") == ["image", "mood"]
    assert names("/relight") == [
        "foreground",
        "prompt",
        "light",
        "azimuth",
        "elevation",
        "light_color",
        "light_intensity",
        "ambient",
        "light_softness",
        "seed",
        "randomize_seed",
        "num_images",
        "width",
        "height",
        "steps",
        "cfg",
        "lowres_denoise",
        "highres_scale",
        "highres_denoise",
        "added_prompt",
        "negative_prompt",
        "sampler",
        "matting",
        "keep_background",
        "restore_details",
        "detail_radius",
        "preserve_color",
        "upscale",
        "fast",
        "loras",
    ]
    returns = [r["label"] for r in api["named_endpoints"]["/relight"]["returns"]]
    assert returns == [
        "Results",
        "Preprocessed foreground",
        "Matte",
        "Before and after",
        "Seed used",
        "Downloads",
        "Run info",
    ]


def test_relight_returns_images_of_the_requested_highres_size_and_saves_settings(fc):
    size = {"width": 256, "height": 320, "highres_scale": 1.25}
    expected = RelightParams(**size).highres_size
    gallery, foreground, matte, (before, after), seed, files, info = fc.client.predict(
        foreground=fc.subject,
        prompt="a ball, sunset",
        light="Left Light",
        seed=7,
        num_images=2,
        steps=2,
        matting="grabcut",
        **size,
        api_name="/relight",
    )
    assert len(gallery) == 2
    assert [image_size(item["image"]) for item in gallery] == [expected, expected]
    assert image_size(before) == image_size(after) == expected
    assert seed == 7 and "Seed **7**" in info
    assert image_size(foreground) == image_size(matte) == (256, 256)  # the conditioning input, at input size
    assert len(files) == 2
    saved = read_params(files[0])
    assert saved.seed == 7 and saved.light == Light.named("left")  # the named choice gives the official light


def test_pad_light_and_none_reach_the_run_and_two_concurrent_jobs_finish(fc):
    custom = {"light": "Custom Light", "azimuth": 30, "elevation": 20, "light_color": "#ffcc88", "ambient": 0.25}
    jobs = [
        fc.client.submit(foreground=fc.subject, prompt="a ball", seed=1, **FAST, **custom, api_name="/relight"),
        fc.client.submit(foreground=fc.subject, prompt="a ball", seed=2, light="None", **FAST, api_name="/relight"),
    ]
    results = [job.result(timeout=JOB_TIMEOUT_S) for job in jobs]
    lights = [read_params(result[5][0]).light for result in results]
    assert lights == [Light(azimuth=30, elevation=20, color="#ffcc88", ambient=0.25), None]


def test_bad_inputs_give_readable_errors_and_the_app_keeps_serving(fc, monkeypatch):
    with pytest.raises(AppError, match="no foreground image"):
        fc.client.predict(prompt="a ball", **FAST, api_name="/relight")
    with pytest.raises(AppError, match="1024"):
        fc.client.predict(foreground=fc.subject, prompt="a ball", **{**FAST, "width": 2048}, api_name="/relight")
    not_an_image = fc.root / "notes.png"
    not_an_image.write_text("this is not a picture")
    with pytest.raises(AppError, match="Foreground: cannot read the file as an image"):
        fc.client.predict(foreground=handle_file(str(not_an_image)), prompt="a ball", **FAST, api_name="/relight")
    monkeypatch.setenv("ICLIGHT_MAX_PIXELS", "10000")  # upload limits are checked on every load
    with pytest.raises(AppError, match="above the .* limit"):
        fc.client.predict(foreground=fc.subject, prompt="a ball", **FAST, api_name="/relight")
    monkeypatch.delenv("ICLIGHT_MAX_PIXELS")
    relit = fc.client.predict(image=fc.subject, azimuth=0, api_name="/preview")
    assert read_rgb(relit).shape == (256, 256, 3)


def _wait_for_progress(job, minimum: int) -> list[int]:
    """Progress indices seen until one reaches `minimum` (or the job ends)."""
    seen: list[int] = []
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline and not job.done():
        units = job.status().progress_data or []
        seen += [unit.index for unit in units if unit.index is not None and unit.unit == "steps"]
        if seen and seen[-1] >= minimum:
            break
        time.sleep(0.05)
    return seen


def test_progress_and_live_previews_arrive_while_a_job_runs(fc):
    job = fc.client.submit(foreground=fc.subject, prompt="a ball", **{**FAST, "steps": 16}, api_name="/relight")
    seen = _wait_for_progress(job, minimum=10**6)  # until the end
    final = job.result(timeout=JOB_TIMEOUT_S)
    assert len(set(seen)) >= 2 and sorted(seen) == seen  # several increasing step counts
    outputs = job.outputs()
    assert len(outputs) >= 2  # at least one live preview before the final results
    assert "live preview" in outputs[0][0][0]["caption"]
    assert outputs[-1][4] == final[4]


def test_stop_cancels_the_running_job_between_steps(fc):
    job = fc.client.submit(foreground=fc.subject, prompt="a ball", **{**FAST, "steps": 100}, api_name="/relight")
    assert _wait_for_progress(job, minimum=2)
    record = fc.relighter.jobs[-1]
    job.cancel()
    assert record.ended.wait(JOB_TIMEOUT_S), "the worker thread kept running after the job was cancelled"
    assert isinstance(record.error, CancelledError)
    assert record.steps < record.total


def test_preview_bright_side_follows_the_light(fc):
    """Its speed is measured by bench/preview_speed.py, not here: a shared test machine's timing is not the app's."""
    image = handle_file(str(subject_image(fc.root / "subject512.png", size=512)))
    fc.client.predict(image=image, api_name="/preview")  # the first call cuts the subject out once
    sides = {}
    for azimuth in (0, 180):  # light from the right, then from the left
        relit = read_rgb(fc.client.predict(image=image, azimuth=azimuth, elevation=10, api_name="/preview"))
        band = relit[200:312].astype(np.float64).mean(axis=(0, 2))  # a band through the disc's middle
        sides[azimuth] = band[300:400].mean() - band[112:212].mean()  # right part minus left part
    assert sides[0] > 0 > sides[180]


def test_suggest_works_offline_and_says_so(fc):
    result = fc.client.predict(image=fc.subject, mood="warm", api_name="/suggest")
    assert result["source"] == "offline" and "Offline" in result["notice"]
    assert len(result["suggestions"]) == 3
    for item in result["suggestions"]:
        assert item["prompt"]
        # The light round-trips: every field the API sent is the field of a valid Light (from_dict raises otherwise).
        assert Light.from_dict(item["light"]).to_dict() == {**Light().to_dict(), **item["light"]}


def test_missing_models_are_one_banner_and_relight_says_why_it_is_off(tiny_paths, tmp_path):
    model = replace(tiny_model_settings(tiny_paths, models_dir=tmp_path / "empty"), base_model=str(tmp_path / "sd"))
    demo = create_demo(None, app_settings(model, tmp_path / "outputs"))
    try:
        client = Client(launch(demo), verbose=False)
        props = {c["props"].get("elem_id"): c["props"] for c in client.config["components"]}
        banner = props["weights-banner"]
        assert banner["visible"] is True and banner["value"].count("\n- **") == 2  # the base model, the IC-Light file
        assert f"`{tmp_path / 'sd'}`" in banner["value"] and "iclight_sd15_fc.safetensors" in banner["value"]
        assert "https://huggingface.co/lllyasviel/ic-light" in banner["value"]
        assert props["status"]["value"].startswith("Weights missing · fc · CPU fp32 · ")
        assert (props["relight"]["value"], props["relight"]["interactive"]) == (
            "Relight (models missing, see above)",
            False,
        )
        subject = handle_file(str(subject_image(tmp_path / "subject.png")))
        assert read_rgb(client.predict(image=subject, api_name="/preview")).shape == (256, 256, 3)
        with pytest.raises(AppError, match=r"SD 1.5 base model is missing .*iclight_sd15_fc.safetensors"):
            client.predict(foreground=subject, prompt="a ball", **FAST, api_name="/relight")
    finally:
        demo.close()


def _layout_order(node: dict) -> list[int]:
    """Component ids of the page layout in document order (the order a phone stacks them in)."""
    return [node["id"], *(k for child in node.get("children", []) for k in _layout_order(child))]


def test_page_shape_one_progress_bar_no_badges_and_results_after_relight(fc):
    config = fc.demo.config
    components = {c["id"]: c for c in config["components"]}
    by_elem = {c["props"].get("elem_id"): c["id"] for c in config["components"] if c["props"].get("elem_id")}
    dependencies = {d["id"]: d for d in config["dependencies"]}
    relight = next(d for d in config["dependencies"] if d["api_name"] == "relight")
    check = dependencies[relight["trigger_after"]]
    # Inputs are checked by an event with no outputs, so a bad input paints no output box; the job runs only after.
    assert check["outputs"] == [] and [tuple(target) for target in check["targets"]] == [(by_elem["relight"], "click")]
    assert relight["trigger_only_on_success"] and relight["show_progress_on"] == [by_elem["results"]]
    upload = next(d for d in config["dependencies"] if d["targets"][0][1] == "upload")
    (loaded,) = upload["outputs"]
    assert components[loaded]["type"] == "state"  # a PNG without our settings changes no form field
    # Stop is idle until a job runs; the seed used is hidden until a run has one; the Mood starts as "Any mood".
    stop = components[by_elem["stop"]]["props"]
    assert (stop["variant"], stop["interactive"]) == ("secondary", False)
    assert components[by_elem["seed-used"]]["props"]["visible"] is False
    mood = next(c for c in config["components"] if c["props"].get("label") == "Mood")["props"]
    assert list(mood["choices"][0]) == ["Any mood", ""] and mood["value"] == ""
    colour = next(c for c in config["components"] if c["type"] == "colorpicker")["props"]
    assert colour["min_width"] >= 260  # its pop-up picker is not cut off by the block
    # An example click fills the form, then scrolls it into view.
    fill = next(
        d for d in config["dependencies"] if [tuple(t) for t in d["targets"]] == [(by_elem["examples"], "click")]
    )
    scroll = next(d for d in config["dependencies"] if d["trigger_after"] == fill["id"])
    assert "scrollIntoView" in scroll["js"] and "form-top" in scroll["js"] and by_elem["form-top"] in components
    # Examples under the foreground; on a narrow screen the results come straight after the Relight button.
    order = _layout_order(config["layout"])
    position = {key: order.index(by_elem[key]) for key in ("examples", "relight", "stop", "results", "light-pad")}
    assert position["examples"] < position["relight"] < position["stop"] < position["results"] < position["light-pad"]
    between = order[position["stop"] + 1 : position["results"]]
    assert all(components[k]["type"] in ("row", "column", "form") for k in between if k in components)
