"""Real-ESRGAN upscaling with a random x4plus-shaped checkpoint: detection, sizes, seams, OOM, missing weights."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import spandrel
import torch
import torch.nn.functional as F

from core.errors import CorruptWeightsError, IncompatibleModelError, InvalidParameterError, WeightsNotFoundError
from core.finishing.upscale import HUB_REPO, WEIGHTS_FILE, Upscaler, lanczos, upscale_tiled
from core.params import Upscale

TEST_BLOCKS = 1  # the real file has 23; one keeps the tests fast and spandrel still detects x4plus
SEAM_TOLERANCE = 2  # /255: tiled vs untiled


def rrdb_state_dict(
    num_feat: int = 64, num_block: int = 23, num_grow_ch: int = 32, seed: int = 0, random: bool = True
) -> dict:
    """Real-ESRGAN x4plus (basicsr RRDBNet) key names and shapes with random weights that give a non-flat output."""
    generator = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name: str, cin: int, cout: int) -> None:
        # Half-gain He init: activations neither die nor saturate, so tile seams would be visible.
        std = 0.5 * (2.0 / (cin * 9)) ** 0.5
        shape = (cout, cin, 3, 3)
        state[f"{name}.weight"] = torch.randn(shape, generator=generator) * std if random else torch.zeros(shape)
        state[f"{name}.bias"] = torch.zeros(cout)

    conv("conv_first", 3, num_feat)
    for block in range(num_block):
        for rdb in (1, 2, 3):
            for index in range(1, 6):
                cout = num_grow_ch if index < 5 else num_feat
                conv(f"body.{block}.rdb{rdb}.conv{index}", num_feat + (index - 1) * num_grow_ch, cout)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, num_feat, num_feat)
    conv("conv_last", num_feat, 3)
    state["conv_last.bias"] += 0.5  # mid-grey output instead of a clamped-to-black one
    return state


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    # The released file wraps the weights in 'params_ema', as basicsr saves them.
    torch.save({"params_ema": rrdb_state_dict(num_block=TEST_BLOCKS)}, folder / WEIGHTS_FILE)
    return folder


@pytest.fixture(scope="module")
def model(weights_dir):
    return Upscaler(weights_dir, allow_download=False).load()


def gradient(width: int, height: int) -> np.ndarray:
    """A smooth colour gradient: any tile seam shows up as a step."""
    ys, xs = np.mgrid[0:height, 0:width] / np.array([max(height - 1, 1), max(width - 1, 1)])[:, None, None]
    image = np.stack([xs, 0.3 + 0.4 * ys, 1.0 - 0.5 * xs - 0.3 * ys], axis=-1)
    return np.round(image * 255).astype(np.uint8)


def untiled(model, image: np.ndarray) -> np.ndarray:
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    return (model(tensor)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


class NearestX4(torch.nn.Module):
    """Cheap stand-in upscaler that records the tile sizes it is called with."""

    scale = 4

    def __init__(self, max_side: int | None = None) -> None:
        super().__init__()
        self.max_side = max_side  # larger tiles raise CUDA's out-of-memory error
        self.sides: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sides.append(max(x.shape[-2:]))
        if self.max_side is not None and max(x.shape[-2:]) > self.max_side:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


def test_real_size_state_dict_is_detected_as_x4plus():
    descriptor = spandrel.ModelLoader().load_from_state_dict(rrdb_state_dict(random=False))  # detection needs shapes
    assert descriptor.architecture.id == "ESRGAN" and descriptor.scale == 4
    assert descriptor.tags == ["64nf", "23nb"]


def test_checkpoint_loads_as_x4_esrgan(model):
    assert model.architecture.id == "ESRGAN" and model.scale == 4
    assert model.tags == ["64nf", f"{TEST_BLOCKS}nb"] and model.dtype == torch.float32


def test_x4_is_exactly_four_times_and_is_the_model(weights_dir, model):
    image = gradient(36, 28)
    result = Upscaler(weights_dir, allow_download=False).upscale(image, Upscale.X4)
    assert result.used_model and result.notice is None
    assert result.image.shape == (112, 144, 3) and result.image.dtype == np.uint8
    np.testing.assert_array_equal(result.image, untiled(model, image))
    assert result.image.std() > 3  # a real, non-flat output, so the seam test below can fail


def test_x2_is_exactly_twice(weights_dir):
    result = Upscaler(weights_dir, allow_download=False).upscale(gradient(37, 23), "x2")
    assert result.used_model and result.image.shape == (46, 74, 3)


def test_tiles_are_stitched_without_seams(model):
    image = gradient(40, 36)
    reference = untiled(model, image)
    tiled = upscale_tiled(model, image, 4, tile=32, overlap=16)  # 2 x 2 tiles
    assert tiled.shape == reference.shape
    assert np.abs(tiled.astype(int) - reference.astype(int)).max() <= SEAM_TOLERANCE
    # Without overlap the same tiling leaves visible steps: the check above is meaningful.
    naive = upscale_tiled(model, image, 4, tile=32, overlap=0)
    assert np.abs(naive.astype(int) - reference.astype(int)).max() > 5 * SEAM_TOLERANCE


def test_out_of_memory_halves_the_tile_and_remembers_it(tmp_path):
    fake = NearestX4(max_side=48)
    upscaler = Upscaler(tmp_path, model=fake, tile=128, overlap=8)
    image = gradient(100, 90)
    result = upscaler.upscale(image, Upscale.X4)
    assert result.used_model and result.notice is None
    np.testing.assert_array_equal(result.image, image.repeat(4, axis=0).repeat(4, axis=1))
    assert upscaler.tile == 32  # 128 -> 64 (58 px patches fail) -> 32 (46 px patches fit)
    fake.sides.clear()
    upscaler.upscale(image, Upscale.X4)
    assert max(fake.sides) <= 48  # the next call starts at the size that fitted


def test_out_of_memory_at_the_smallest_tile_falls_back_to_lanczos(tmp_path):
    upscaler = Upscaler(tmp_path, model=NearestX4(max_side=8))
    image = gradient(40, 30)
    result = upscaler.upscale(image, Upscale.X2)
    assert not result.used_model and "out of memory" in result.notice
    np.testing.assert_array_equal(result.image, lanczos(image, 80, 60))


@pytest.mark.parametrize(
    ("width", "height", "expected", "passes"),
    [(200, 150, (1080, 1440), 2), (300, 400, (1440, 1080), 1), (1200, 1080, None, 0), (1500, 1200, None, 0)],
)
def test_1080p_upscales_until_short_side_then_lanczos_down(tmp_path, width, height, expected, passes):
    fake = NearestX4()
    image = gradient(width, height)
    result = Upscaler(tmp_path, model=fake, tile=2048).upscale(image, Upscale.P1080)
    assert len(fake.sides) == passes  # one call per pass with a tile this large
    if expected is None:  # already at least 1080p: untouched
        assert result.image is image and not result.used_model and result.notice is None
    else:
        assert result.image.shape == (*expected, 3) and result.used_model


def test_1080p_with_a_spandrel_model(tmp_path):
    # Narrow (8 features) so a 1088 px output stays fast on CPU; the full-width checkpoint is tested above.
    narrow = spandrel.ModelLoader().load_from_state_dict(rrdb_state_dict(num_feat=8, num_block=1))
    result = Upscaler(tmp_path, model=narrow).upscale(gradient(280, 272), Upscale.P1080)
    assert result.used_model and result.image.shape == (1080, 1112, 3)


def test_missing_weights_gives_notice_and_lanczos(tmp_path):
    upscaler = Upscaler(tmp_path, allow_download=False)
    image = gradient(30, 20)
    result = upscaler.upscale(image, Upscale.X4)
    assert not result.used_model
    assert WEIGHTS_FILE in result.notice and str(tmp_path) in result.notice
    np.testing.assert_array_equal(result.image, lanczos(image, 120, 80))
    with pytest.raises(WeightsNotFoundError, match=WEIGHTS_FILE):
        upscaler.load()


def test_failed_download_is_explained_and_not_retried(tmp_path, monkeypatch):
    import urllib.request

    import huggingface_hub

    calls = []

    def offline_hub(**kwargs):
        calls.append(kwargs)
        raise OSError("hub unreachable")

    def offline_url(url, timeout):
        calls.append(url)
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline_hub)
    monkeypatch.setattr(urllib.request, "urlopen", offline_url)
    upscaler = Upscaler(tmp_path / "models")
    with pytest.raises(WeightsNotFoundError) as info:
        upscaler.load()
    message = str(info.value)
    assert WEIGHTS_FILE in message and str(tmp_path / "models") in message and "hub unreachable" in message
    assert calls[0]["repo_id"] == HUB_REPO and calls[0]["filename"] == WEIGHTS_FILE and len(calls) == 2
    assert upscaler.upscale(gradient(8, 8), Upscale.X2).image.shape == (16, 16, 3)
    assert len(calls) == 2  # no second attempt on every image
    assert not list((tmp_path / "models").glob("*.part"))  # no half-written file left behind


def test_weights_are_downloaded_from_the_hub_on_first_use(tmp_path, weights_dir, monkeypatch):
    import huggingface_hub

    def fake_hub(repo_id, filename, local_dir):
        assert (repo_id, filename) == (HUB_REPO, WEIGHTS_FILE)
        return shutil.copy(weights_dir / WEIGHTS_FILE, local_dir)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub)
    upscaler = Upscaler(tmp_path)
    assert upscaler.upscale(gradient(10, 12), Upscale.X4).used_model
    assert upscaler.weights_path.is_file()


def test_corrupt_weights_raise_and_fall_back(tmp_path):
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not a checkpoint" * 10)
    upscaler = Upscaler(tmp_path, allow_download=False)
    with pytest.raises(CorruptWeightsError, match=WEIGHTS_FILE):
        upscaler.load()
    result = upscaler.upscale(gradient(10, 10), Upscale.X2)
    assert not result.used_model and WEIGHTS_FILE in result.notice and result.image.shape == (20, 20, 3)


def test_wrong_architecture_is_incompatible(tmp_path):
    torch.save({"encoder.weight": torch.zeros(4, 4)}, tmp_path / WEIGHTS_FILE)
    with pytest.raises(IncompatibleModelError, match=WEIGHTS_FILE):
        Upscaler(tmp_path, allow_download=False).load()


def test_model_is_cached_and_unloaded(weights_dir):
    upscaler = Upscaler(weights_dir, allow_download=False)
    assert not upscaler.loaded
    first = upscaler.load()
    assert upscaler.load() is first
    upscaler.unload()
    assert not upscaler.loaded
    assert upscaler.upscale(gradient(8, 8), Upscale.X4).used_model


def test_off_and_bad_inputs(tmp_path):
    upscaler = Upscaler(tmp_path, allow_download=False)
    image = gradient(8, 8)
    result = upscaler.upscale(image, Upscale.OFF)
    assert result.image is image and not result.used_model and result.notice is None
    with pytest.raises(InvalidParameterError, match="x3"):
        upscaler.upscale(image, "x3")
    with pytest.raises(InvalidParameterError, match="float32"):
        upscaler.upscale(image.astype(np.float32), Upscale.X2)
    with pytest.raises(InvalidParameterError, match="tile"):
        Upscaler(tmp_path, tile=4)
