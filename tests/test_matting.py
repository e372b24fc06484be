"""Background removal: the official composite and recipes, GrabCut, alpha, fallbacks, the real remote-code loader."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from core.errors import CorruptWeightsError, IncompatibleModelError, InvalidParameterError, WeightsNotFoundError
from core.finishing.matting import Matter, composite_on_grey, grabcut_matte, load_matting_model
from core.imaging.inputs import LoadedImage
from core.params import Matting

RED, BLUE = (220, 30, 30), (30, 40, 220)
GAIN = 8.0  # tiny models: alpha = sigmoid(GAIN * (red - blue)), so red is subject and blue is background

# ---------------------------------------------------------------- tiny remote-code models in the Hub layouts
# Both mirror the real repos: a PreTrainedModel whose __init__ does not call post_init(), a config class in its own
# file imported relatively, and the real output structures. BiRefNet also calls .item() on a fresh tensor in
# __init__, as its Swin backbone does, which fails on transformers' meta device.

RMBG_CONFIG_PY = """
from transformers import PretrainedConfig


class RMBGConfig(PretrainedConfig):
    model_type = "SegformerForSemanticSegmentation"

    def __init__(self, in_ch=3, out_ch=1, **kwargs):
        self.in_ch = in_ch
        self.out_ch = out_ch
        super().__init__(**kwargs)
"""

RMBG_MODEL_PY = """
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel

from .MyConfig import RMBGConfig


class BriaRMBG(PreTrainedModel):
    config_class = RMBGConfig

    def __init__(self, config: RMBGConfig = RMBGConfig()):
        super().__init__(config)
        self.side1 = nn.Conv2d(config.in_ch, config.out_ch, 1)
        self.side2 = nn.Conv2d(config.in_ch, config.out_ch, 1)
        POST_INIT

    def forward(self, x):
        d1 = self.side1(x)
        d2 = F.interpolate(self.side2(F.avg_pool2d(x, 2)), size=x.shape[2:], mode="bilinear")
        return [torch.sigmoid(d1), torch.sigmoid(d2)], [d1, d2]
"""

BIREFNET_CONFIG_PY = """
from transformers import PretrainedConfig


class BiRefNetConfig(PretrainedConfig):
    model_type = "SegformerForSemanticSegmentation"

    def __init__(self, bb_pretrained=False, **kwargs):
        self.bb_pretrained = bb_pretrained
        super().__init__(**kwargs)
"""

BIREFNET_MODEL_PY = """
import torch
import torch.nn as nn
from transformers import PreTrainedModel

from .BiRefNet_config import BiRefNetConfig


class BiRefNet(PreTrainedModel):
    config_class = BiRefNetConfig

    def __init__(self, bb_pretrained=True, config=BiRefNetConfig()):
        super(BiRefNet, self).__init__(config)
        self.drop_rates = [x.item() for x in torch.linspace(0, 0.1, 2)]
        self.coarse = nn.Conv2d(3, 1, 1)
        self.fine = nn.Conv2d(3, 1, 1)

    def forward(self, x):
        scaled_preds = [self.coarse(x), self.fine(x)]
        return [scaled_preds, None] if self.training else scaled_preds
"""


def red_minus_blue(gain: float) -> dict[str, torch.Tensor]:
    return {"weight": torch.tensor([gain, 0.0, -gain]).reshape(1, 3, 1, 1), "bias": torch.zeros(1)}


def write_rmbg(folder: Path, post_init: bool = False) -> Path:
    """A tiny RMBG-1.4 look-alike: config.json + MyConfig.py + briarmbg.py + model.safetensors."""
    folder.mkdir(parents=True)
    config = {
        "architectures": ["BriaRMBG"],
        "auto_map": {"AutoConfig": "MyConfig.RMBGConfig", "AutoModelForImageSegmentation": "briarmbg.BriaRMBG"},
        "in_ch": 3,
        "out_ch": 1,
        "model_type": "SegformerForSemanticSegmentation",
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "MyConfig.py").write_text(RMBG_CONFIG_PY)
    (folder / "briarmbg.py").write_text(RMBG_MODEL_PY.replace("POST_INIT", "self.post_init()" if post_init else ""))
    weights = {f"side1.{k}": v for k, v in red_minus_blue(GAIN).items()}
    weights |= {f"side2.{k}": v for k, v in red_minus_blue(-GAIN).items()}  # an inverted decoy: must not be used
    save_file(weights, str(folder / "model.safetensors"))
    return folder


def write_birefnet(folder: Path) -> Path:
    """A tiny BiRefNet look-alike: config.json + BiRefNet_config.py + birefnet.py + model.safetensors."""
    folder.mkdir(parents=True)
    config = {
        "architectures": ["BiRefNet"],
        "auto_map": {
            "AutoConfig": "BiRefNet_config.BiRefNetConfig",
            "AutoModelForImageSegmentation": "birefnet.BiRefNet",
        },
        "bb_pretrained": False,
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "BiRefNet_config.py").write_text(BIREFNET_CONFIG_PY)
    (folder / "birefnet.py").write_text(BIREFNET_MODEL_PY)
    weights = {f"fine.{k}": v for k, v in red_minus_blue(GAIN).items()}
    weights |= {f"coarse.{k}": v for k, v in red_minus_blue(-GAIN).items()}  # the coarse output must not be used
    save_file(weights, str(folder / "model.safetensors"))
    return folder


# ---------------------------------------------------------------- images


def scene(subject: np.ndarray, textured: bool = True) -> np.ndarray:
    """A noisy red `subject` (HxW bool) on a textured (or plain) blue-green background."""
    height, width = subject.shape
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    if textured:
        background = np.stack(
            [np.sin(xx / 5.0) * 30 + 60, np.cos(yy / 7.0) * 40 + 130, np.sin((xx + yy) / 9.0) * 30 + 180], -1
        )
        background = background + rng.normal(0, 10, (height, width, 3))
    else:
        background = np.broadcast_to(np.array(BLUE, float), (height, width, 3))
    colour = np.array(RED, float) + rng.normal(0, 8, (height, width, 3))
    return np.where(subject[..., None], colour, background).clip(0, 255).astype(np.uint8)


def disc_scene(height: int = 120, width: int = 160, textured: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(image, disc mask): a red disc in the middle of the frame."""
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 <= (0.3 * min(height, width)) ** 2
    return scene(disc, textured), disc


def iou(matte: np.ndarray, truth: np.ndarray) -> float:
    cut = matte > 0.5
    return float((cut & truth).sum() / (cut | truth).sum())


class Recorder(torch.nn.Module):
    """Records its input and returns a fixed output built from it (RMBG or BiRefNet structure)."""

    def __init__(self, make_output):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))  # gives the module a device and dtype
        self.make_output = make_output
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return self.make_output(x)


def left_half(x: torch.Tensor, value: float) -> torch.Tensor:
    out = torch.zeros_like(x[:, :1])
    out[..., : x.shape[-1] // 2] = value
    return out


# ---------------------------------------------------------------- composite


def test_composite_sigma_zero_exact_grey_and_passthrough():
    img = np.random.default_rng(0).integers(0, 256, (6, 8, 3), np.uint8)
    alpha = np.zeros((6, 8), np.float32)
    alpha[:, 4:] = 1.0
    out = composite_on_grey(img, alpha, 0.0)
    assert out.dtype == np.uint8
    assert np.all(out[:, :4] == 127)  # exactly the neutral grey where alpha is 0
    np.testing.assert_array_equal(out[:, 4:], img[:, 4:])


def test_composite_formula_and_sigma_16():
    img = np.array([[[200, 0, 250]]], np.uint8)
    half = np.full((1, 1), 0.5, np.float32)
    # 127 + (200 - 127 + 16) * 0.5 = 171.5 -> 171 (truncated, as the official astype(uint8)); 0 -> 71.5 -> 71
    assert composite_on_grey(img, half, 16.0).tolist() == [[[171, 71, 196]]]
    one = np.ones((1, 1), np.float32)
    assert composite_on_grey(img, one, 16.0).tolist() == [[[216, 16, 255]]]  # 250 + 16 clips at 255
    zero = np.zeros((1, 1), np.float32)
    assert composite_on_grey(img, zero, 16.0).tolist() == [[[127, 127, 127]]]  # sigma only moves the subject


def test_composite_rejects_mismatched_alpha():
    with pytest.raises(InvalidParameterError, match=r"alpha should have shape \(4, 4\) but has \(4, 5\)"):
        composite_on_grey(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.float32))
    with pytest.raises(InvalidParameterError, match="HxWx3 uint8 array but has shape"):
        composite_on_grey(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.float32))


# ---------------------------------------------------------------- GrabCut


@pytest.mark.parametrize("textured", [True, False])
def test_grabcut_recovers_disc(textured):
    image, disc = disc_scene(textured=textured)
    matte = grabcut_matte(image)
    assert matte.shape == disc.shape and matte.dtype == np.float32
    assert 0.0 <= matte.min() and matte.max() <= 1.0
    assert iou(matte, disc) > 0.8


def test_grabcut_subject_cut_by_bottom_and_sides():
    # A bust: head plus shoulders that run out of the bottom and side edges, like most portraits.
    yy, xx = np.mgrid[:120, :160]
    bust = ((yy - 45) ** 2 + (xx - 80) ** 2 <= 25**2) | ((yy > 80) & (np.abs(xx - 80) < 30 + (yy - 80) * 2))
    assert bust[-1].all() and bust[-1, 0] and bust[100:, -1].any()
    assert iou(grabcut_matte(scene(bust)), bust) > 0.8


def test_grabcut_large_image_works_downscaled_and_returns_full_size():
    image, disc = disc_scene(600, 800, textured=False)
    matte = grabcut_matte(image)
    assert matte.shape == (600, 800)
    assert iou(matte, disc) > 0.9
    edge = matte[300, 210:230]  # the disc's left edge (x = 400 - 180): feathered, not a hard step
    assert np.any((edge > 0.05) & (edge < 0.95))


def test_grabcut_method_and_nothing_found(tmp_path):
    image, disc = disc_scene()
    result = Matter(tmp_path).extract(image, Matting.GRABCUT)
    assert result.method is Matting.GRABCUT and result.notice is None
    assert iou(result.matte, disc) > 0.8
    assert np.all(result.foreground[~(result.matte > 0)] == 127)
    flat = np.full((40, 50, 3), 90, np.uint8)
    result = Matter(tmp_path).extract(flat, "grabcut")
    assert result.notice == "GrabCut found no subject, so the whole image was kept."
    assert np.all(result.matte == 1.0)
    np.testing.assert_array_equal(result.foreground, flat)


# ---------------------------------------------------------------- alpha, none, keep_background


def test_alpha_passthrough_exact(tmp_path):
    image, disc = disc_scene(40, 50)
    alpha = disc.astype(np.float32) * 0.75
    loaded = LoadedImage(rgb=image, alpha=alpha)
    result = Matter(tmp_path).extract(loaded, Matting.ALPHA)
    assert result.method is Matting.ALPHA and result.notice is None
    np.testing.assert_array_equal(result.matte, alpha)
    np.testing.assert_array_equal(result.foreground, composite_on_grey(image, alpha, 0.0))


def test_meaningful_alpha_used_instead_of_a_model(tmp_path):
    image, disc = disc_scene(40, 50)
    loaded = LoadedImage(rgb=image, alpha=disc.astype(np.float32))
    recorder = Recorder(lambda x: ([torch.ones_like(x[:, :1])], []))
    matter = Matter(tmp_path, models={Matting.RMBG: recorder})
    result = matter.extract(loaded, Matting.RMBG)
    assert result.method is Matting.ALPHA and "alpha channel instead of rmbg" in result.notice
    assert recorder.inputs == []
    np.testing.assert_array_equal(result.matte, disc.astype(np.float32))
    result = matter.extract(loaded, Matting.RMBG, prefer_alpha=False)
    assert result.method is Matting.RMBG and len(recorder.inputs) == 1
    np.testing.assert_allclose(result.matte, 1.0, atol=1e-6)


def test_opaque_alpha_still_runs_the_model(tmp_path):
    image, _ = disc_scene(40, 50)
    loaded = LoadedImage(rgb=image, alpha=np.ones((40, 50), np.float32))
    recorder = Recorder(lambda x: ([torch.zeros_like(x[:, :1])], []))
    result = Matter(tmp_path, models={Matting.RMBG: recorder}).extract(loaded, Matting.RMBG)
    assert result.method is Matting.RMBG and len(recorder.inputs) == 1


def test_alpha_mode_without_alpha_is_an_error(tmp_path):
    with pytest.raises(InvalidParameterError, match="matting 'alpha' needs an image with an alpha channel"):
        Matter(tmp_path).extract(np.zeros((8, 8, 3), np.uint8), Matting.ALPHA)


def test_rgba_array_goes_through_the_loader(tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[2:8, 3:9] = (200, 10, 10, 255)
    result = Matter(tmp_path).extract(rgba, Matting.ALPHA)
    np.testing.assert_array_equal(result.matte, (rgba[..., 3] / 255).astype(np.float32))


def test_none_and_keep_background(tmp_path):
    image, disc = disc_scene(40, 50)
    result = Matter(tmp_path).extract(image, Matting.NONE)
    assert result.method is Matting.NONE and np.all(result.matte == 1.0)
    np.testing.assert_array_equal(result.foreground, image)
    loaded = LoadedImage(rgb=image, alpha=disc.astype(np.float32) * 0.5)
    kept = Matter(tmp_path).extract(loaded, Matting.ALPHA, sigma=16.0, keep_background=True)
    np.testing.assert_array_equal(kept.foreground, image)  # the original, background included
    np.testing.assert_array_equal(kept.matte, disc.astype(np.float32) * 0.5)  # matte still returned


def test_bad_method_and_sigma(tmp_path):
    with pytest.raises(InvalidParameterError, match="matting should be one of rmbg, birefnet, alpha, grabcut, none"):
        Matter(tmp_path).extract(np.zeros((8, 8, 3), np.uint8), "magic")
    with pytest.raises(InvalidParameterError, match="sigma should be a finite number but is nan"):
        Matter(tmp_path).extract(np.zeros((8, 8, 3), np.uint8), Matting.NONE, sigma=float("nan"))
    with pytest.raises(InvalidParameterError, match="models can only be given for rmbg and birefnet but got 'alpha'"):
        Matter(tmp_path, models={Matting.ALPHA: torch.nn.Identity()})


# ---------------------------------------------------------------- official recipes with injected models


def test_rmbg_recipe_matches_official(tmp_path):
    image = np.random.default_rng(3).integers(0, 256, (200, 300, 3), np.uint8)
    recorder = Recorder(lambda x: ([left_half(x, 1.0), torch.zeros_like(x[:, :1])], []))
    result = Matter(tmp_path, models={Matting.RMBG: recorder}).extract(image, Matting.RMBG, sigma=16.0)
    (feed,) = recorder.inputs
    # k = sqrt(256 / (200 * 300)); 64 * round(300 k) = 1280, 64 * round(200 k) = 832
    assert feed.shape == (1, 3, 832, 1280) and feed.dtype == torch.float32
    resized = np.asarray(Image.fromarray(image).resize((1280, 832), Image.LANCZOS)).astype(np.float32)
    expected = torch.from_numpy(resized / 127.0 - 1.0).movedim(-1, 0)[None]
    torch.testing.assert_close(feed, expected, rtol=0, atol=1e-6)
    assert result.method is Matting.RMBG and result.notice is None
    assert result.matte.shape == (200, 300)
    assert np.all(result.matte[:, :140] == 1.0) and np.all(result.matte[:, 160:] == 0.0)
    assert np.all(result.foreground[:, 160:] == 127)
    np.testing.assert_array_equal(result.foreground, composite_on_grey(image, result.matte, 16.0))


def test_rmbg_elongated_image_keeps_a_nonzero_side(tmp_path):
    image = np.zeros((2, 600, 3), np.uint8)
    recorder = Recorder(lambda x: ([torch.ones_like(x[:, :1])], []))
    Matter(tmp_path, models={Matting.RMBG: recorder}).extract(image, Matting.RMBG)
    assert recorder.inputs[0].shape[2:] == (64, 64 * round(600 * (256 / 1200) ** 0.5))


def test_birefnet_recipe_matches_model_card(tmp_path):
    image = np.random.default_rng(4).integers(0, 256, (90, 70, 3), np.uint8)
    recorder = Recorder(lambda x: [torch.full_like(x[:, :1], -50.0), left_half(x, 50.0) - 25.0])
    result = Matter(tmp_path, models={"birefnet": recorder}).extract(image, Matting.BIREFNET)
    (feed,) = recorder.inputs
    assert feed.shape == (1, 3, 1024, 1024)
    resized = np.asarray(Image.fromarray(image).resize((1024, 1024), Image.BILINEAR)).astype(np.float32) / 255.0
    expected = (resized - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    torch.testing.assert_close(feed, torch.from_numpy(expected).movedim(-1, 0)[None], rtol=0, atol=1e-5)
    # The last (finest) output, through a sigmoid: +25 on the left half, -25 on the right.
    assert result.method is Matting.BIREFNET
    assert np.all(result.matte[:, :30] > 0.99) and np.all(result.matte[:, 40:] < 0.01)


def test_wrong_output_structure_falls_back(tmp_path):
    image, disc = disc_scene()
    broken = Recorder(lambda x: x[:, :1].mean())  # a scalar, not ([alpha, ...], ...)
    result = Matter(tmp_path, models={Matting.RMBG: broken}).extract(image, Matting.RMBG)
    assert result.method is Matting.GRABCUT
    assert "RMBG-1.4 could not be used" in result.notice and "without a 1x1xHxW alpha" in result.notice
    assert iou(result.matte, disc) > 0.8


def test_injected_models_cached_per_device_and_unloaded(tmp_path):
    recorder = Recorder(lambda x: ([torch.ones_like(x[:, :1])], []))
    matter = Matter(tmp_path, models={Matting.RMBG: recorder})
    assert matter.loaded == ()
    assert matter.load(Matting.RMBG) is recorder and matter.load("rmbg") is recorder
    assert matter.loaded == ((Matting.RMBG, "cpu"),)
    assert not recorder.training  # put in eval mode
    matter.unload()
    assert matter.loaded == ()


# ---------------------------------------------------------------- the real loader on tiny Hub-layout folders


def test_rmbg_loaded_from_models_dir(tmp_path):
    write_rmbg(tmp_path / "models" / "RMBG-1.4")
    matter = Matter(tmp_path / "models")
    assert matter.source(Matting.RMBG) == str(tmp_path / "models" / "RMBG-1.4")
    image, disc = disc_scene(textured=False)
    result = matter.extract(image, Matting.RMBG)
    assert result.method is Matting.RMBG and result.notice is None
    assert iou(result.matte, disc) > 0.95
    background = result.foreground[~disc & (result.matte < 1e-3)].astype(int)
    assert np.all(np.abs(background - 127) <= 1)  # grey up to the official truncation to uint8
    model = matter.load(Matting.RMBG)
    assert type(model).__name__ == "BriaRMBG" and not model.training
    assert next(model.parameters()).dtype == torch.float32
    torch.testing.assert_close(model.side1.weight.flatten(), torch.tensor([GAIN, 0.0, -GAIN]))
    assert matter.load(Matting.RMBG) is model  # cached, not reloaded
    assert matter.loaded == ((Matting.RMBG, "cpu"),)
    matter.unload()
    assert matter.loaded == () and matter.load(Matting.RMBG) is not model


def test_birefnet_loaded_from_env_override(tmp_path, monkeypatch):
    folder = write_birefnet(tmp_path / "somewhere" / "my-birefnet")
    monkeypatch.setenv("ICLIGHT_BIREFNET_MODEL", str(folder))
    matter = Matter(tmp_path / "empty-models")
    image, disc = disc_scene(textured=False)
    result = matter.extract(image, Matting.BIREFNET)
    assert result.method is Matting.BIREFNET and result.notice is None
    assert iou(result.matte, disc) > 0.95


def test_post_init_model_loads_through_from_pretrained(tmp_path, caplog):
    # Its own folder name: transformers keys remote classes by the config class, which is per folder name + code.
    folder = write_rmbg(tmp_path / "RMBG-post-init", post_init=True)
    with caplog.at_level(logging.INFO, logger="core.finishing.matting"):
        model = load_matting_model(str(folder))
    assert "constructing it directly" not in caplog.text
    torch.testing.assert_close(model.side1.weight.flatten(), torch.tensor([GAIN, 0.0, -GAIN]))


def test_missing_weights_fall_back_once_and_retry_after_unload(tmp_path, monkeypatch):
    folder = tmp_path / "not-yet" / "RMBG-1.4"
    monkeypatch.setenv("ICLIGHT_RMBG_MODEL", str(folder))
    matter = Matter(tmp_path / "models")
    image, disc = disc_scene()
    result = matter.extract(image, Matting.RMBG)
    assert result.method is Matting.GRABCUT
    assert result.notice.startswith("RMBG-1.4 could not be used, so the background was removed with GrabCut")
    assert str(folder) in result.notice and "ICLIGHT_RMBG_MODEL" in result.notice
    assert iou(result.matte, disc) > 0.8
    write_rmbg(folder)
    assert matter.extract(image, Matting.RMBG).method is Matting.GRABCUT  # the failure is remembered
    matter.unload()
    assert matter.extract(image, Matting.RMBG).method is Matting.RMBG


def test_hub_id_offline_falls_back_quickly(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.delenv("ICLIGHT_RMBG_MODEL", raising=False)
    matter = Matter(tmp_path / "models")
    assert matter.source(Matting.RMBG) == "briaai/RMBG-1.4"
    with pytest.raises(WeightsNotFoundError, match=r"briaai/RMBG-1\.4\) is not cached and cannot be downloaded"):
        load_matting_model("briaai/RMBG-1.4", label="RMBG-1.4")
    start = time.perf_counter()
    result = matter.extract(disc_scene()[0], Matting.RMBG)
    assert time.perf_counter() - start < 10.0
    assert result.method is Matting.GRABCUT and "briaai/RMBG-1.4" in result.notice


def test_corrupt_weights(tmp_path):
    folder = write_rmbg(tmp_path / "models" / "RMBG-1.4")
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")
    with pytest.raises(CorruptWeightsError, match=r"model\.safetensors cannot be read as safetensors"):
        load_matting_model(str(folder))
    result = Matter(tmp_path / "models").extract(disc_scene()[0], Matting.RMBG)
    assert result.method is Matting.GRABCUT and "cannot be read as safetensors" in result.notice


def test_wrong_weights_and_missing_files(tmp_path):
    folder = write_birefnet(tmp_path / "BiRefNet")
    save_file({"fine.weight": torch.zeros(1, 3, 1, 1)}, str(folder / "model.safetensors"))
    with pytest.raises(IncompatibleModelError, match="does not fit the matting model architecture"):
        load_matting_model(str(folder))
    (folder / "model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"has no model\.safetensors"):
        load_matting_model(str(folder))
    with pytest.raises(WeightsNotFoundError, match="has no config.json"):
        load_matting_model(str(tmp_path))


def test_missing_keys_are_an_error_not_random_weights(tmp_path):
    folder = write_rmbg(tmp_path / "RMBG-post-init-partial", post_init=True)  # loads through from_pretrained
    save_file(red_minus_blue(GAIN), str(folder / "model.safetensors"))  # keys without the side1./side2. prefix
    with pytest.raises(IncompatibleModelError, match=r"does not fit the matting model architecture.*side1\.weight"):
        load_matting_model(str(folder))


def test_remote_code_needing_a_missing_package(tmp_path):
    folder = write_rmbg(tmp_path / "RMBG-1.4")
    code = (folder / "briarmbg.py").read_text()
    (folder / "briarmbg.py").write_text("import iclight_no_such_package_xyz\n" + code)
    with pytest.raises(IncompatibleModelError, match="needs a package that is missing.*iclight_no_such_package_xyz"):
        load_matting_model(str(folder))
