"""Fast mode: few-step LoRA presets, their schedulers in our loop, defaults, and a relight at guidance 1."""

from __future__ import annotations

import functools
import shutil

import numpy as np
import pytest
import torch

from core.errors import WeightsNotFoundError
from core.models.lora import LoraSpec, local_name
from core.models.manager import ModelManager
from core.params import Matting, RelightParams
from core.recipe.fast import FAST_PRESETS, FastMode, active_loras, fast_defaults, fast_lora, make_fast_scheduler
from core.recipe.sampling import Progress, count_img2img_steps, denoise, img2img_timesteps, make_scheduler
from core.service import Relighter


def test_presets_name_their_hub_files_and_local_names():
    lcm, tcd, hyper = (FAST_PRESETS[m] for m in (FastMode.LCM, FastMode.TCD, FastMode.HYPER))
    assert lcm.lora_source == "latent-consistency/lcm-lora-sdv1-5/pytorch_lora_weights.safetensors"
    assert local_name(lcm.repo_id, lcm.filename) == "lcm-lora-sdv1-5.safetensors"
    assert local_name(tcd.repo_id, tcd.filename) == "TCD-SD15.safetensors"
    assert local_name(hyper.repo_id, hyper.filename) == "Hyper-SD15-8steps-lora.safetensors"
    for preset in (lcm, tcd, hyper):
        assert 4 <= preset.steps <= 8 and 1.0 <= preset.cfg <= 2.0
    assert fast_defaults("off") == {} and fast_defaults("hyper") == {"steps": 8, "cfg": 1.0}
    assert fast_lora("off") == () and fast_lora("tcd") == (LoraSpec(tcd.lora_source, 1.0),)


@pytest.mark.parametrize(
    "mode, cls, first, eta",
    [("lcm", "LCMScheduler", 999, 0.0), ("tcd", "TCDScheduler", 999, 0.3), ("hyper", "DDIMScheduler", 999, 0.0)],
)
def test_schedulers_use_the_sd15_schedule(mode, cls, first, eta):
    scheduler = make_fast_scheduler(mode)
    assert type(scheduler).__name__ == cls and scheduler.step_eta == eta
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.beta_end == 0.012
    scheduler.set_timesteps(FAST_PRESETS[FastMode(mode)].steps)
    assert int(scheduler.timesteps[0]) == first
    assert type(make_scheduler("dpmpp_2m_sde_karras", fast=mode)).__name__ == cls
    assert type(make_scheduler("dpmpp_2m_sde_karras")).__name__ == "DPMSolverMultistepScheduler"


def test_hyper_uses_trailing_timesteps():
    scheduler = make_fast_scheduler("hyper")
    scheduler.set_timesteps(8)
    assert scheduler.timesteps.tolist() == [999, 874, 749, 624, 499, 374, 249, 124]


@pytest.mark.parametrize("mode", ["lcm", "tcd", "hyper"])
def test_highres_pass_runs_the_same_number_of_steps(mode):
    steps = FAST_PRESETS[FastMode(mode)].steps
    total = int(round(steps / 0.5))
    timesteps, count = img2img_timesteps(make_fast_scheduler(mode), total, 0.5, "cpu")
    assert count == steps == count_img2img_steps(total, 0.5)
    assert int(timesteps[0]) < 600  # the second half of the schedule: the high-res pass refines, it does not restart


class CountingUNet(torch.nn.Module):
    """A stand-in noise predictor that records the batch of every call (it predicts zero noise)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, sample, timestep, embeds, concat):
        self.batches.append(sample.shape[0])
        return torch.zeros_like(sample)


@pytest.mark.parametrize("cfg, batch", [(1.0, 1), (1.5, 2)])
def test_guidance_one_skips_the_negative_branch(cfg, batch):
    unet, scheduler = CountingUNet(), make_fast_scheduler("lcm")
    scheduler.set_timesteps(4)
    latents = torch.randn(1, 4, 8, 8)
    embeds = torch.zeros(1, 77, 32)
    denoise(unet, scheduler, latents, scheduler.timesteps, embeds, embeds, cfg, torch.zeros(1, 4, 8, 8),
            torch.Generator().manual_seed(0), Progress(4), "lowres")  # fmt: skip
    assert unet.batches == [batch] * 4


def test_tcd_gets_its_gamma_through_the_loop(monkeypatch):
    scheduler = make_fast_scheduler("tcd")
    scheduler.set_timesteps(4)
    seen = []
    original = type(scheduler).step

    @functools.wraps(original)  # keeps step()'s signature, which the loop reads to pass eta
    def step(self, *args, **kwargs):
        seen.append(kwargs.get("eta"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(scheduler), "step", step)
    denoise(CountingUNet(), scheduler, torch.randn(1, 4, 8, 8), scheduler.timesteps, torch.zeros(1, 77, 32),
            torch.zeros(1, 77, 32), 1.0, torch.zeros(1, 4, 8, 8), torch.Generator().manual_seed(0), Progress(4),
            "lowres")  # fmt: skip
    assert seen == [0.3] * 4


def test_fast_mode_sets_steps_and_cfg_unless_given():
    params = RelightParams.for_mode("fc", fast="lcm")
    assert (params.steps, params.cfg, params.fast) == (4, 1.0, FastMode.LCM)
    params = RelightParams.for_mode("fbc", fast="hyper", steps=6, cfg=1.5)
    assert (params.steps, params.cfg) == (6, 1.5)
    assert RelightParams.for_mode("fbc").cfg == 7.0
    assert active_loras(RelightParams.for_mode("fc", fast="tcd", loras=["a.safetensors:0.5"])) == (
        LoraSpec(FAST_PRESETS[FastMode.TCD].lora_source, 1.0),
        LoraSpec("a.safetensors", 0.5),
    )


# -- end to end on the tiny models ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fast_models_dir(tiny_paths, tmp_path_factory):
    """The tiny IC-Light files plus a random LCM-LoRA for the tiny UNet where fast mode looks for it."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    from core.models.synthetic import random_lora

    folder = tmp_path_factory.mktemp("fast_models")
    for path in tiny_paths["models"].glob("*.safetensors"):
        shutil.copy(path, folder / path.name)
    unet = UNet2DConditionModel.from_pretrained(str(tiny_paths["base"]), subfolder="unet")
    (folder / "loras").mkdir()
    lora = random_lora(unet, ("to_q", "to_k", "to_v", "to_out.0", "conv1"), rank=4, scale=0.3)
    save_file(lora, str(folder / "loras" / "lcm-lora-sdv1-5.safetensors"))
    return folder


def test_fast_relight_runs_four_single_batch_steps_per_pass(tiny_settings, fast_models_dir, fg_image):
    settings = tiny_settings.__class__(**{**tiny_settings.__dict__, "models_dir": fast_models_dir})
    relighter = Relighter(ModelManager(settings))
    params = RelightParams.for_mode("fc", prompt="a cat", width=64, height=64, fast="lcm", matting=Matting.NONE)
    stages = []
    fast = relighter.relight(fg_image, params, callback=lambda info: stages.append(info.stage), save=False)
    assert stages == ["lowres"] * 4 + ["highres"] * 4
    models = relighter.manager.get("fc", loras=active_loras(params))
    assert "lcm-lora-sdv1-5.safetensors:1" in models.describe()
    plain = relighter.relight(fg_image, params.replace(fast="off"), save=False)  # same steps, no LoRA, DPM++
    assert np.abs(fast.images[0].astype(int) - plain.images[0].astype(int)).max() > 0


def test_fast_mode_offline_says_which_file_to_put_where(tiny_settings, fg_image):
    relighter = Relighter(ModelManager(tiny_settings))
    params = RelightParams.for_mode("fc", prompt="a cat", width=64, height=64, fast="tcd", matting=Matting.NONE)
    with pytest.raises(WeightsNotFoundError) as info:
        relighter.relight(fg_image, params, save=False)
    message = str(info.value)
    assert "https://huggingface.co/h1t/TCD-SD15/resolve/main/pytorch_lora_weights.safetensors" in message
    assert str((tiny_settings.models_dir / "loras" / "TCD-SD15.safetensors").resolve()) in message
