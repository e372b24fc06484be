"""The relight recipe: seed-exact against the official demos' process(), sizes, progress, cancel, errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from official_reference import OfficialDemo

from core.errors import CancelledError, IncompatibleModelError, InvalidParameterError
from core.lighting.lights import Light
from core.params import BGSource, RelightParams, Sampler
from core.recipe.pipeline import planned_steps, relight

FC_LIGHTS = [(None, "None"), (Light.named("left"), "Left Light"), (Light.named("top"), "Top Light")]


def _max_diff(ours: list[np.ndarray], theirs: list[np.ndarray]) -> int:
    assert len(ours) == len(theirs)
    return max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(ours, theirs, strict=True))


@pytest.mark.parametrize(("light", "label"), FC_LIGHTS)
def test_fc_matches_official_process(fc_models, fg_image, light, label):
    params = RelightParams.for_mode("fc", prompt="a cat", width=64, height=96, steps=5, light=light, num_images=2)
    ours = relight(fc_models, fg_image, params).images
    ref = OfficialDemo(fc_models)
    theirs = ref.process_fc(fg_image, "a cat", 64, 96, 2, params.seed, 5, params.added_prompt,
                            params.negative_prompt, params.cfg, 1.5, 0.5, 0.9, label)  # fmt: skip
    assert _max_diff(ours, theirs) <= 1
    assert ours[0].shape == (128, 128, 3)


def test_fc_matches_official_with_cfg_one_and_long_prompt(fc_models, fg_image):
    prompt = "a very detailed portrait, " * 12  # > 75 tokens per chunk with this one-letter-per-token vocab
    params = RelightParams.for_mode("fc", prompt=prompt, width=64, height=64, steps=3, cfg=1.0, seed=99,
                                    light=Light.named("right"), lowres_denoise=0.7, highres_denoise=0.4)  # fmt: skip
    ours = relight(fc_models, fg_image, params).images
    theirs = OfficialDemo(fc_models).process_fc(fg_image, prompt, 64, 64, 1, 99, 3, params.added_prompt,
                                                params.negative_prompt, 1.0, 1.5, 0.4, 0.7, "Right Light")  # fmt: skip
    assert _max_diff(ours, theirs) <= 1


@pytest.mark.parametrize("source", [s for s in BGSource if s is not BGSource.LIGHT])
def test_fbc_matches_official_process(fbc_models, fg_image, bg_image, source):
    params = RelightParams.for_mode("fbc", prompt="a cat", width=72, height=64, steps=4, bg_source=source, seed=3)
    ours = relight(fbc_models, fg_image, params, background=bg_image).images
    reference = OfficialDemo(fbc_models)
    theirs = reference.process_fbc(fg_image, bg_image, "a cat", 72, 64, 1, 3, 4, params.added_prompt,
                                   params.negative_prompt, params.cfg, 1.5, 0.5, source.label)  # fmt: skip
    assert _max_diff(ours, theirs) <= 1


def test_fbc_keep_floats_returns_the_official_process_output(fbc_models, fg_image, bg_image):
    params = RelightParams.for_mode("fbc", prompt="a cat", width=64, height=64, steps=3, seed=3)
    result = relight(fbc_models, fg_image, params, background=bg_image, keep_floats=True)
    theirs = OfficialDemo(fbc_models).process_fbc_floats(fg_image, bg_image, "a cat", 64, 64, 1, 3, 3,
                                                         params.added_prompt, params.negative_prompt, params.cfg,
                                                         1.5, 0.5, params.bg_source.label)  # fmt: skip
    assert result.floats[0].dtype == np.float32 and result.floats[0].shape == (128, 128, 3)
    assert np.abs(result.floats[0] - theirs[0]).max() <= 1 / 255
    assert np.array_equal(result.images[0], (result.floats[0] * 255.0).clip(0, 255).astype(np.uint8))
    assert relight(fbc_models, fg_image, params, background=bg_image).floats is None


def test_same_seed_same_images_other_seed_differs(fc_models, fg_image):
    params = RelightParams.for_mode("fc", prompt="neon light", width=64, height=64, steps=3)
    a = relight(fc_models, fg_image, params).images[0]
    b = relight(fc_models, fg_image, params).images[0]
    c = relight(fc_models, fg_image, params.replace(seed=params.seed + 1)).images[0]
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).max() > 0


SIZES = [(64, 96, 1.5, (128, 128)), (128, 64, 2.0, (256, 128)), (72, 64, 1.0, (64, 64))]


@pytest.mark.parametrize(("width", "height", "scale", "expected"), SIZES)
def test_output_sizes_follow_highres_rounding(fc_models, fg_image, width, height, scale, expected):
    params = RelightParams.for_mode("fc", prompt="x", width=width, height=height, steps=2, highres_scale=scale)
    result = relight(fc_models, fg_image, params)
    assert result.images[0].shape == (expected[1], expected[0], 3)
    assert result.foreground.shape == (height, width, 3)


@pytest.mark.parametrize("sampler", list(Sampler))
def test_every_sampler_runs_and_is_deterministic(fc_models, fg_image, sampler):
    params = RelightParams.for_mode("fc", prompt="x", width=64, height=64, steps=3, sampler=sampler)
    first = relight(fc_models, fg_image, params).images[0]
    assert np.array_equal(first, relight(fc_models, fg_image, params).images[0])


def test_progress_reports_every_step_of_both_passes(fc_models, fg_image):
    params = RelightParams.for_mode("fc", prompt="x", width=64, height=64, steps=4, light=Light.named("left"))
    seen = []
    relight(fc_models, fg_image, params, callback=seen.append)
    low, high = planned_steps(params, has_initial_image=True)
    assert [s.overall_step for s in seen] == list(range(1, low + high + 1))
    assert [s.stage for s in seen] == ["lowres"] * low + ["highres"] * high
    assert all(s.overall_total == low + high for s in seen)
    assert seen[0].preview is not None and seen[0].preview.dtype == np.uint8


def test_cancel_stops_between_steps(fc_models, fg_image):
    params = RelightParams.for_mode("fc", prompt="x", width=64, height=64, steps=6)
    cancel = threading.Event()
    seen = []

    def callback(info):
        seen.append(info)
        if info.overall_step == 2:
            cancel.set()

    with pytest.raises(CancelledError, match="after 2 of"):
        relight(fc_models, fg_image, params, callback=callback, cancel=cancel)
    assert len(seen) == 2


def test_custom_light_and_light_map_change_the_result(fc_models, fg_image):
    base = RelightParams.for_mode("fc", prompt="x", width=64, height=64, steps=3, light=Light.named("left"))
    left = relight(fc_models, fg_image, base).images[0]
    diagonal = relight(fc_models, fg_image, base.replace(light=Light(azimuth=45, color="#ff8000"))).images[0]
    light_map = np.zeros((32, 32, 3), np.uint8)
    light_map[:, :16] = 255
    mapped = relight(fc_models, fg_image, base, light_map=light_map)
    assert np.abs(left.astype(int) - diagonal.astype(int)).max() > 0
    assert mapped.background.shape == (64, 64, 3)
    assert mapped.background[:, :24].mean() > 240 and mapped.background[:, 40:].mean() < 15


def test_mode_and_model_must_match(fc_models, fbc_models, fg_image, bg_image):
    with pytest.raises(IncompatibleModelError, match="needs IC-Light fbc"):
        relight(fc_models, fg_image, RelightParams.for_mode("fbc", prompt="x", bg_source="left"))
    with pytest.raises(IncompatibleModelError, match="needs IC-Light fc/fcon"):
        relight(fbc_models, fg_image, RelightParams.for_mode("fc", prompt="x"))


def test_fbc_upload_without_background_is_a_clear_error(fbc_models, fg_image):
    with pytest.raises(InvalidParameterError, match="needs a background image"):
        relight(fbc_models, fg_image, RelightParams.for_mode("fbc", prompt="x", width=64, height=64))


@pytest.mark.parametrize("bad", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32), "img.png"])
def test_foreground_must_be_rgb_uint8(fc_models, bad):
    with pytest.raises(InvalidParameterError, match="foreground should be an HxWx3 uint8"):
        relight(fc_models, bad, RelightParams.for_mode("fc", prompt="x", width=64, height=64, steps=1))
