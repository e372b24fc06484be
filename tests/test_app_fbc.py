"""The fbc app, launched for real over the tiny models and driven through its API with gradio_client."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from app_testing import background_image, image_size, read_rgb, start_app, subject_image
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from core.imaging.outputs import read_params
from core.lighting.lights import Light
from core.params import BGSource, RelightParams
from gradio_fbc import create_demo
from ui.handlers import NORMAL_CAPTIONS

FAST = {"steps": 2, "highres_scale": 1.0, "matting": "none", "width": 256, "height": 256}
JOB_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def fbc(tiny_paths, tmp_path_factory):
    """One launched fbc app for the module, with no suggestion server configured in the environment."""
    app = start_app(create_demo, tiny_paths, tmp_path_factory.mktemp("fbc_app"))
    yield SimpleNamespace(
        **vars(app),
        subject=handle_file(str(subject_image(app.root / "subject.png", alpha=True))),
        background=handle_file(str(background_image(app.root / "background.png"))),
    )
    app.demo.close()


def test_view_api_lists_exactly_the_documented_endpoints(fbc):
    api = fbc.client.view_api(print_info=False, return_format="dict")
    assert set(api["named_endpoints"]) == {"/relight", "/normals", "/preview", "/suggest", "/batch"}
    assert api["unnamed_endpoints"] == {}
    relight = [p["parameter_name"] for p in api["named_endpoints"]["/relight"]["parameters"]]
    normals = [p["parameter_name"] for p in api["named_endpoints"]["/normals"]["parameters"]]
    assert relight == [
        "foreground",
        "background",
        "prompt",
        "bg_source",
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
    assert normals == relight
    returns = lambda endpoint: [r["label"] for r in api["named_endpoints"][endpoint]["returns"]]  # noqa: E731
    assert returns("/normals") == returns("/relight")  # a normals run replaces every output of the last relight


def test_relight_with_a_background_returns_the_requested_size(fbc):
    size = {"width": 320, "height": 256, "highres_scale": 1.25}
    gallery, foreground, matte, _, seed, files, _ = fbc.client.predict(
        foreground=fbc.subject,
        background=fbc.background,
        prompt="a ball, warm light",
        bg_source="Use Flipped Background Image",
        seed=3,
        steps=2,
        matting="alpha",
        **size,
        api_name="/relight",
    )
    assert image_size(gallery[0]["image"]) == RelightParams(**size).highres_size
    saved = read_params(files[0])
    assert (saved.mode.value, saved.bg_source, saved.seed, saved.matting.value) == ("fbc", BGSource.FLIP, 3, "alpha")
    subject_matte = read_rgb(matte)[..., 0]
    assert subject_matte[128, 128] == 255 and subject_matte[5, 5] == 0  # the PNG's own alpha is the matte


def test_custom_light_source_uses_the_pad_light(fbc):
    pad = {"azimuth": 135, "elevation": 30, "light_color": "#88aaff", "light_intensity": 1.5}
    result = fbc.client.predict(
        foreground=fbc.subject, prompt="a ball", bg_source="Custom Light", **pad, **FAST, api_name="/relight"
    )
    saved = read_params(result[5][0])
    assert saved.bg_source is BGSource.LIGHT
    assert saved.light == Light(azimuth=135, elevation=30, color="#88aaff", intensity=1.5)


def test_missing_background_is_a_readable_error_and_the_app_keeps_serving(fbc):
    with pytest.raises(AppError, match="needs a background image"):
        fbc.client.predict(foreground=fbc.subject, prompt="a ball", **FAST, api_name="/relight")
    result = fbc.client.predict(
        foreground=fbc.subject, prompt="a ball", bg_source="Top Light", **FAST, api_name="/relight"
    )
    assert read_params(result[5][0]).bg_source is BGSource.TOP


def test_normals_returns_the_normal_map_ratios_and_relights_with_their_own_outputs(fbc):
    gallery, foreground, matte, (before, after), seed, files, info = fbc.client.predict(
        foreground=fbc.subject, prompt="a ball", seed=11, **FAST, api_name="/normals"
    )
    assert [item["caption"] for item in gallery] == list(NORMAL_CAPTIONS) and len(gallery) == 9
    assert {image_size(item["image"]) for item in gallery} == {(256, 256)}
    assert "Normals" in info and seed == 11
    # The downloads, matte and before/after belong to this run: its nine images, saved with its settings.
    assert len(files) == 9 and all(read_params(path).seed == 11 for path in files)
    difference = read_rgb(after).astype(int) - read_rgb(gallery[0]["image"]).astype(int)
    assert abs(difference).mean() < 1.0  # after = the normal map (the slider sends a lossy WebP)
    assert image_size(before) == image_size(foreground) == image_size(matte) == (256, 256)


def test_preview_and_suggest_answer(fbc):
    relit = read_rgb(fbc.client.predict(image=fbc.subject, azimuth=90, api_name="/preview"))
    assert relit.shape == (256, 256, 3)
    result = fbc.client.predict(image=fbc.subject, mood="", api_name="/suggest")
    assert result["source"] == "offline" and len(result["suggestions"]) == 3
