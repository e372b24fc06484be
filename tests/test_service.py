"""The whole job around the sampler (matting, finishing, saving, normals, preview) on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from official_reference import OfficialDemo
from PIL import Image

from core.errors import DeviceMemoryError, InvalidParameterError
from core.finishing.matting import Matter
from core.imaging.outputs import read_params
from core.lighting.lights import Light
from core.models.manager import ModelManager
from core.params import Matting, RelightParams, Upscale
from core.service import Relighter


@pytest.fixture()
def relighter(tiny_settings, tmp_path) -> Relighter:
    manager = ModelManager(tiny_settings)
    return Relighter(manager, outputs_dir=tmp_path / "outputs", matter=Matter(tmp_path / "no-models"))


@pytest.fixture()
def rgba_png(tmp_path, fg_image) -> str:
    """The test subject with a real alpha channel: opaque disc, transparent surroundings."""
    yy, xx = np.mgrid[:100, :80]
    alpha = (((yy - 50) ** 2 + (xx - 40) ** 2) < 30**2).astype(np.uint8) * 255
    path = tmp_path / "subject.png"
    Image.fromarray(np.dstack([fg_image, alpha])).save(path)
    return str(path)


def fast(**changes) -> RelightParams:
    return RelightParams.for_mode("fc", prompt="a cat", width=64, height=64, steps=2, highres_scale=1.0, **changes)


def test_alpha_png_is_used_as_matte_and_result_is_saved(relighter, rgba_png):
    outcome = relighter.relight(rgba_png, fast(matting=Matting.RMBG))
    assert outcome.matte.shape == (100, 80)
    assert outcome.matte[50, 40] == 1.0 and outcome.matte[2, 2] == 0.0
    assert np.all(outcome.foreground[2, 2] == 127)  # outside the subject: neutral grey
    assert len(outcome.paths) == 1 and outcome.paths[0].is_file()
    assert read_params(outcome.paths[0]) == outcome.params


def test_finishing_options_change_the_output(relighter, rgba_png):
    plain = relighter.relight(rgba_png, fast(), save=False).images[0]
    restored = relighter.relight(rgba_png, fast(restore_details=True, preserve_color=1.0), save=False)
    assert restored.images[0].shape == plain.shape
    assert np.abs(restored.images[0].astype(int) - plain.astype(int)).max() > 0
    upscaled = relighter.relight(rgba_png, fast(upscale=Upscale.X2), save=False)
    assert upscaled.images[0].shape == (128, 128, 3)
    assert any("Lanczos" in n for n in upscaled.notices)  # no Real-ESRGAN weights here: said plainly


def test_offline_matting_falls_back_to_grabcut_with_a_notice(relighter, fg_image):
    outcome = relighter.relight(fg_image, fast(matting=Matting.RMBG), save=False)
    assert outcome.notices and "GrabCut" in " ".join(outcome.notices)
    assert outcome.images[0].shape == (64, 64, 3)


def test_keep_background_uses_the_original_pixels(relighter, fg_image):
    outcome = relighter.relight(fg_image, fast(matting=Matting.GRABCUT, keep_background=True), save=False)
    assert np.array_equal(outcome.foreground, fg_image)


def test_missing_foreground_is_a_clear_error(relighter):
    with pytest.raises(InvalidParameterError, match="no foreground image"):
        relighter.relight(None, fast())
    with pytest.raises(InvalidParameterError, match="foreground: .*does not exist|foreground: .*not"):
        relighter.relight("/no/such/file.png", fast())


def test_normals_runs_four_relights_with_continuous_progress(relighter, fg_image, bg_image):
    params = RelightParams.for_mode("fbc", prompt="a cat", width=64, height=64, steps=2, highres_scale=1.0,
                                    matting=Matting.NONE)  # fmt: skip
    seen = []
    images, matting = relighter.normals(fg_image, params, background=bg_image, callback=seen.append)
    assert len(images) == 9 and all(img.dtype == np.uint8 and img.shape == (64, 64, 3) for img in images)
    assert [s.overall_step for s in seen] == list(range(1, len(seen) + 1))
    assert seen[-1].overall_step == seen[-1].overall_total
    assert matting.foreground.shape == fg_image.shape


def test_normals_match_official_process_normal(relighter, rgba_png, bg_image):
    """Same bytes as the official process_normal on the same matting: its four relights stay unrounded floats."""
    params = RelightParams.for_mode("fbc", prompt="a cat", width=64, height=72, steps=3, seed=5, matting=Matting.RMBG)
    images, matting = relighter.normals(rgba_png, params, background=bg_image)
    theirs = OfficialDemo(relighter.manager.get("fbc")).process_normal(
        matting.foreground, matting.matte[..., None], bg_image, "a cat", 64, 72, 5, 3, params.added_prompt,
        params.negative_prompt, params.cfg, params.highres_scale, params.highres_denoise)  # fmt: skip
    assert len(images) == len(theirs) == 9
    for ours, ref in zip(images, theirs, strict=True):
        assert ours.shape == ref.shape == (128, 128, 3)
        assert np.abs(ours.astype(int) - ref.astype(int)).max() <= 1


def test_out_of_memory_says_what_to_change(relighter, fg_image, bg_image, monkeypatch):
    import core.recipe.pipeline

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(core.recipe.pipeline, "relight", oom)
    expected = (r"cpu ran out of memory relighting 2 image\(s\) at 64x64 \(high-res 64x64\): try --low-vram .*"
                r"fewer images or a smaller size \(CUDA out of memory\. Tried to allocate 2\.00 GiB\)$")  # fmt: skip
    with pytest.raises(DeviceMemoryError, match=expected):
        relighter.relight(fg_image, fast(num_images=2), save=False)
    params = RelightParams.for_mode("fbc", prompt="a cat", width=64, height=64, steps=2, matting=Matting.NONE)
    with pytest.raises(DeviceMemoryError, match="computing normals for 1 image"):
        relighter.normals(fg_image, params, background=bg_image)

    def other(*args, **kwargs):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(core.recipe.pipeline, "relight", other)
    with pytest.raises(RuntimeError, match="a real bug"):
        relighter.relight(fg_image, fast(), save=False)


def test_preview_follows_the_light(relighter, rgba_png):
    left, _ = relighter.preview(rgba_png, Light.named("left"))
    right, _ = relighter.preview(rgba_png, Light.named("right"))
    gray = lambda im: im.astype(float).mean(axis=2)  # noqa: E731
    assert gray(left)[50, 20:35].mean() > gray(left)[50, 45:60].mean()
    assert gray(right)[50, 45:60].mean() > gray(right)[50, 20:35].mean()
