"""Result PNGs: unique atomic names, exact parameter round trip, readable summary, no secrets."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
from PIL import Image

import core.imaging.outputs as outputs
from core.errors import InvalidParameterError
from core.imaging.outputs import PARAMETERS_KEY, PARAMS_KEY, read_params, read_png_text, save_result
from core.lighting.lights import Light
from core.params import BGSource, Matting, Mode, RelightParams, Sampler, Upscale

OPENAI_KEY = "sk-proj-Abc123Def456Ghi789Jkl012Mno345"


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)


@pytest.fixture
def params() -> RelightParams:
    """Every field away from its default, including a non-latin-1 prompt and a custom light."""
    return RelightParams(
        mode=Mode.FBC,
        prompt="portrait, neon light ✨ — café",
        added_prompt="best quality, sharp",
        negative_prompt="lowres",
        width=576,
        height=768,
        num_images=2,
        seed=4242,
        steps=31,
        cfg=6.5,
        lowres_denoise=0.8,
        highres_scale=1.75,
        highres_denoise=0.45,
        sampler=Sampler.EULER_A,
        light=Light(azimuth=33.5, elevation=20, color="#ffcc88", intensity=1.4, ambient=0.1, softness=0.3),
        bg_source=BGSource.LIGHT,
        matting=Matting.BIREFNET,
        keep_background=True,
        restore_details=True,
        detail_radius=7.5,
        preserve_color=0.6,
        upscale=Upscale.P1080,
        extra={"source": "unit test"},
    )


def test_round_trip_restores_exact_params(tmp_path, image, params):
    path = save_result(image, params, tmp_path)
    assert path.parent == tmp_path and path.suffix == ".png"
    restored = read_params(path)
    assert restored == params and restored.to_dict() == params.to_dict()
    assert read_png_text(path)[PARAMS_KEY] == params.to_json()
    # Also from a PIL image (gradio type="pil") and raw bytes (uploads).
    with Image.open(path) as pil:
        assert read_params(pil) == params
    assert read_params(path.read_bytes()) == params


def test_pixels_are_lossless(tmp_path, image, params):
    path = save_result(image, params, tmp_path)
    with Image.open(path) as pil:
        assert pil.format == "PNG"
        np.testing.assert_array_equal(np.asarray(pil), image)


def test_human_readable_parameters(tmp_path, image, params):
    text = read_png_text(save_result(image, params, tmp_path))[PARAMETERS_KEY]
    prompt, negative, settings = text.split("\n")
    assert prompt == "portrait, neon light ✨ — café, best quality, sharp"
    assert negative == "Negative prompt: lowres"
    for part in (
        "Steps: 31",
        "Seed: 4242",
        "CFG scale: 6.5",
        "Size: 576x768",
        "Sampler: euler_a",
        "Output size: 32x24",
    ):
        assert part in settings


def test_names_are_unique_and_never_overwrite(tmp_path, image, params, monkeypatch):
    first = save_result(image, params, tmp_path)
    second = save_result(image, params, tmp_path)
    assert first.name == "iclight_00001.png" and second.name == "iclight_00002.png"
    # A writer that picked a taken number (as a concurrent one would) moves on instead of replacing it.
    before = first.read_bytes()
    monkeypatch.setattr(outputs, "_next_index", lambda folder, stem: 1)
    third = save_result(image, params.replace(seed=7), tmp_path, stem="iclight")
    assert third.name == "iclight_00003.png"
    assert first.read_bytes() == before and read_params(third).seed == 7


def test_concurrent_writers_get_distinct_complete_files(tmp_path, image, params):
    writers = 8
    barrier = threading.Barrier(writers)
    paths: list = [None] * writers

    def write(index: int) -> None:
        barrier.wait()  # all save at the same moment
        paths[index] = save_result(image, params.replace(seed=index), tmp_path)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({p.name for p in paths}) == writers
    assert sorted(read_params(p).seed for p in paths) == list(range(writers))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temp files left


def test_without_hard_links_falls_back_to_exclusive_create(tmp_path, image, params, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(outputs.os, "link", no_links)
    first = save_result(image, params, tmp_path)
    monkeypatch.setattr(outputs, "_next_index", lambda folder, stem: 1)
    second = save_result(image, params.replace(seed=9), tmp_path)
    assert (first.name, second.name) == ("iclight_00001.png", "iclight_00002.png")
    assert read_params(first).seed == params.seed and read_params(second).seed == 9
    assert len(list(tmp_path.iterdir())) == 2


def test_failed_encode_leaves_nothing_behind(tmp_path, image, params, monkeypatch):
    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_result(image, params, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_outputs_folder_is_created_and_stem_is_used(tmp_path, image, params):
    path = save_result(image, params, tmp_path / "new" / "folder", stem="fbc_4242")
    assert path == tmp_path / "new" / "folder" / "fbc_4242_00001.png"


def test_extra_text_is_stored(tmp_path, image, params):
    path = save_result(image, params, tmp_path, extra_text={"notice": "Upscaled with Lanczos"})
    assert read_png_text(path)["notice"] == "Upscaled with Lanczos"


def test_secrets_never_reach_the_file(tmp_path, image, params, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-77665544332211")
    leaky = params.replace(
        prompt=f"a cat, key {OPENAI_KEY}",
        extra={"openai_api_key": "plain-value-1234", "nested": {"hf_token": "x" * 12, "ok": 1}, "note": "fine"},
    )
    path = save_result(
        image,
        leaky,
        tmp_path,
        extra_text={"api_key": "another-secret-99", "log": "called with tok-77665544332211 and hf_" + "a" * 30},
    )
    raw = path.read_bytes()
    for secret in (OPENAI_KEY, "plain-value-1234", "x" * 12, "another-secret-99", "tok-77665544332211", "a" * 30):
        assert secret.encode() not in raw
    text = read_png_text(path)
    assert "api_key" not in text and "[redacted]" in text["log"]
    restored = read_params(path)
    assert restored.extra == {"nested": {"ok": 1}, "note": "fine"}
    assert restored.prompt == "a cat, key [redacted]" and restored.seed == params.seed
    assert json.loads(text[PARAMS_KEY])["extra"] == restored.extra


def test_png_without_metadata_is_reported_clearly(tmp_path, image):
    plain = tmp_path / "plain.png"
    Image.fromarray(image).save(plain)
    with pytest.raises(InvalidParameterError, match=r"plain\.png.*no IC-Light metadata"):
        read_params(plain)
    jpeg = io.BytesIO()
    Image.fromarray(image).save(jpeg, format="JPEG")
    with pytest.raises(InvalidParameterError, match="no IC-Light metadata"):
        read_params(jpeg.getvalue())
    with pytest.raises(InvalidParameterError, match="numpy image carries no PNG metadata"):
        read_params(image)


def test_unreadable_or_damaged_inputs(tmp_path, image, params):
    with pytest.raises(InvalidParameterError, match="does not exist"):
        read_params(tmp_path / "missing.png")
    text_file = tmp_path / "notes.png"
    text_file.write_text("hello")
    with pytest.raises(InvalidParameterError, match=r"notes\.png.*not a readable image"):
        read_params(text_file)
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMS_KEY, "{not json")
    damaged = tmp_path / "damaged.png"
    Image.fromarray(image).save(damaged, pnginfo=info)
    with pytest.raises(InvalidParameterError, match="damaged IC-Light metadata"):
        read_params(damaged)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"stem": "../escape"}, "stem"),
        ({"stem": ""}, "stem"),
        ({"extra_text": {PARAMS_KEY: "x"}}, "reserved"),
        ({"extra_text": {"note": 3}}, "string"),
    ],
)
def test_bad_arguments(tmp_path, image, params, kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        save_result(image, params, tmp_path, **kwargs)


def test_bad_image(tmp_path, params):
    with pytest.raises(InvalidParameterError, match="float64"):
        save_result(np.zeros((4, 4, 3)), params, tmp_path)
