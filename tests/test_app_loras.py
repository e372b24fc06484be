"""LoRAs and fast mode in the apps: the panel's helpers, and /relight driven with gradio_client over tiny models."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from app_testing import CountingRelighter, app_settings, launch, read_rgb, subject_image, tiny_model_settings
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from safetensors.torch import save_file

from core.imaging.outputs import read_params
from core.models.lora import LoraSpec
from core.models.manager import ModelManager
from core.params import Mode, RelightParams
from core.recipe.fast import FastMode
from ui.form import values_from_params
from ui.loras import LORA_SLOTS, loras_value, slot_values, steps_and_cfg

RUN = {"steps": 2, "highres_scale": 1.0, "matting": "none", "width": 256, "height": 256, "seed": 5}


def test_slots_and_the_loras_value_round_trip():
    slots = slot_values(["style.safetensors:0.6", {"source": "owner/repo", "scale": -1}])
    assert slots == ["style.safetensors", 0.6, "owner/repo", -1.0, None, 1.0][: 2 * LORA_SLOTS]
    assert loras_value(*slots) == ["style.safetensors:0.6", "owner/repo:-1"]
    assert loras_value("", 1.0, None, 0.5, " ", 2.0) == []
    assert steps_and_cfg(Mode.FC, "lcm") == (4, 1.0) and steps_and_cfg(Mode.FBC, "off") == (20, 7.0)


def test_settings_from_a_png_fill_the_panel():
    params = RelightParams.for_mode("fc", fast="hyper", loras=["style.safetensors:0.35"])
    values, notes = values_from_params(Mode.FC, params)
    assert values["fast"] == "hyper" and values["loras"] == ["style.safetensors:0.35"] and not notes
    assert RelightParams.from_dict(params.to_dict()) == params  # what the PNG stores reads back exactly


@pytest.fixture(scope="module")
def app(tiny_paths, tmp_path_factory):
    """The fc app over the tiny models, with a style LoRA and a random LCM-LoRA in models/loras/."""
    from diffusers import UNet2DConditionModel

    from core.models.synthetic import random_lora
    from gradio_fc import create_demo

    root = tmp_path_factory.mktemp("lora_app")
    models = root / "models"
    (models / "loras").mkdir(parents=True)
    for path in tiny_paths["models"].glob("*.safetensors"):
        shutil.copy(path, models / path.name)
    unet = UNet2DConditionModel.from_pretrained(str(tiny_paths["base"]), subfolder="unet")
    save_file(
        random_lora(unet, ("to_q", "to_k", "to_v", "conv1"), 4, seed=1, scale=0.3),
        str(models / "loras" / "style.safetensors"),
    )
    save_file(
        random_lora(unet, ("to_q", "conv1"), 4, seed=2, scale=0.3),
        str(models / "loras" / "lcm-lora-sdv1-5.safetensors"),
    )
    model = tiny_model_settings(tiny_paths, models_dir=models)
    relighter = CountingRelighter(ModelManager(model), outputs_dir=root / "outputs")
    demo = create_demo(relighter, app_settings(model, root / "outputs"))
    client = Client(launch(demo), verbose=False)
    yield client, relighter, handle_file(str(subject_image(root / "subject.png", size=128)))
    demo.close()


def _relight(client, subject, **values):
    gallery, *_, files, _info = client.predict(foreground=subject, prompt="a ball", **{**RUN, **values},
                                               api_name="/relight")  # fmt: skip
    return read_rgb(gallery[0]["image"]).astype(int), files


def test_relight_api_takes_loras_and_records_them(app):
    client, relighter, subject = app
    plain, _ = _relight(client, subject)
    styled, files = _relight(client, subject, loras=["style.safetensors:0.8"])
    assert np.abs(styled - plain).max() > 0
    assert read_params(files[0]).loras == (LoraSpec("style.safetensors", 0.8),)
    zero, _ = _relight(client, subject, loras=["style.safetensors:0"])
    again, _ = _relight(client, subject)
    assert np.array_equal(zero, plain) and np.array_equal(again, plain)  # scale 0 and the next run: no LoRA at all


def test_fast_toggle_runs_fast_mode_and_errors_are_one_message(app):
    client, relighter, subject = app
    _, files = _relight(client, subject, fast="lcm", steps=4, cfg=1.0)
    saved = read_params(files[0])
    assert saved.fast is FastMode.LCM and (saved.steps, saved.cfg) == (4, 1.0)
    assert relighter.jobs[-1].steps == 8  # 4 low-res + 4 high-res steps
    with pytest.raises(AppError, match="not_here.safetensors"):
        _relight(client, subject, loras=["not_here.safetensors:1"])
    with pytest.raises(AppError, match=r"\[-2, 2\] but is 3"):
        _relight(client, subject, loras=["style.safetensors:3"])


def test_batch_api_takes_loras_and_fast_mode(app):
    client, _, subject = app
    batch = {k: v for k, v in RUN.items() if k != "seed"}
    *_, results, _gallery, progress, _failed = client.predict(
        foregrounds=[subject], prompt="a ball", seed=3, fast="lcm", loras=["style.safetensors:0.5"],
        **{**batch, "steps": 4, "cfg": 1.0}, api_name="/batch",
    )  # fmt: skip
    assert progress.startswith("1 of 1 rows done")
    saved = read_params(results[0]["outputs"][0])
    assert saved.fast is FastMode.LCM and saved.loras == (LoraSpec("style.safetensors", 0.5),)
