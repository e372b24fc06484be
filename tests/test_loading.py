"""Model loading through the real loaders: UNet surgery, offsets, and every error a user can hit."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import save_file

from core.errors import CorruptWeightsError, IncompatibleModelError, InvalidParameterError, WeightsNotFoundError
from core.models.loading import (
    Variant,
    check_offset_variant,
    classify_base_source,
    default_models_dir,
    ensure_iclight_weights,
    load_base_components,
)
from core.models.manager import ModelManager, ModelSettings
from core.models.synthetic import build_components, make_offset
from core.models.weights import build_iclight_unet, read_offset


@pytest.fixture()
def tiny_unet():
    return build_components(seed=3)[2]


def test_merge_widens_conv_in_and_adds_the_offset_to_every_key(tiny_unet):
    base = {k: v.clone() for k, v in tiny_unet.state_dict().items()}
    offset = make_offset(tiny_unet, Variant.FBC)
    unet = build_iclight_unet(tiny_unet.config, base, offset, 12, torch.float32, source="test")
    merged = unet.state_dict()
    conv = merged["conv_in.weight"]
    assert conv.shape[1] == 12 and unet.config.in_channels == 12 and unet.conv_in.in_channels == 12
    # First 4 input channels: base + offset; the 8 new ones start at zero, so they are exactly the offset.
    assert torch.equal(conv[:, :4], base["conv_in.weight"] + offset["conv_in.weight"][:, :4].float())
    assert torch.equal(conv[:, 4:], offset["conv_in.weight"][:, 4:].float())
    assert torch.equal(merged["conv_in.bias"], base["conv_in.bias"] + offset["conv_in.bias"].float())
    for key, value in base.items():
        if key != "conv_in.weight":
            assert torch.equal(merged[key], value + offset[key].float()), key
    assert torch.equal(tiny_unet.state_dict()["conv_in.weight"], base["conv_in.weight"])  # base untouched


def test_merge_casts_after_summing_in_fp32(tiny_unet):
    base = tiny_unet.state_dict()
    offset = make_offset(tiny_unet, Variant.FC)
    unet = build_iclight_unet(tiny_unet.config, base, offset, 8, torch.bfloat16, source="test")
    key = "conv_out.weight"
    assert unet.state_dict()[key].dtype == torch.bfloat16
    assert torch.equal(unet.state_dict()[key], (base[key] + offset[key].float()).to(torch.bfloat16))


def test_merge_rejects_missing_keys_and_shapes(tiny_unet):
    base = tiny_unet.state_dict()
    offset = make_offset(tiny_unet, Variant.FC)
    partial = dict(list(offset.items())[1:])
    with pytest.raises(IncompatibleModelError, match="1 key\\(s\\) missing"):
        build_iclight_unet(tiny_unet.config, base, partial, 8, torch.float32, source="x")
    offset["conv_out.bias"] = torch.zeros(7)
    with pytest.raises(IncompatibleModelError, match="conv_out.bias.*check that --base-model is SD 1.5 and that"):
        build_iclight_unet(tiny_unet.config, base, offset, 8, torch.float32, source="x")


def test_manager_names_the_offset_file_that_does_not_fit(tiny_paths, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    offset = dict(read_offset(tiny_paths["models"] / Variant.FC.filename).items())
    offset.pop("conv_out.bias")
    save_file({k: v.contiguous() for k, v in offset.items()}, str(models / Variant.FC.filename))
    manager = ModelManager(ModelSettings(base_model=str(tiny_paths["base"]), models_dir=models, device="cpu"))
    with pytest.raises(IncompatibleModelError, match="unmodified one from the Hub repo lllyasviel/ic-light") as info:
        manager.get("fc")
    assert str(models / Variant.FC.filename) in str(info.value)


def test_weight_file_reader_matches_safetensors(tiny_paths):
    from safetensors.torch import load_file

    path = tiny_paths["models"] / Variant.FBC.filename
    expected = load_file(str(path))
    ours = read_offset(path)
    assert set(ours) == set(expected) and len(ours) == len(expected)
    for key, value in expected.items():
        assert ours.shape(key) == tuple(value.shape) and torch.equal(ours[key], value)


def test_fc_file_used_as_fbc_and_back_is_named(tiny_paths):
    fc = read_offset(tiny_paths["models"] / Variant.FC.filename)
    fbc = read_offset(tiny_paths["models"] / Variant.FBC.filename)
    path = tiny_paths["models"] / Variant.FC.filename
    with pytest.raises(
        IncompatibleModelError, match=r"8-channel conv_in \(an fc/fcon file\) but fbc needs 12"
    ) as info:
        check_offset_variant(fc, Variant.FBC, path)
    assert str(path) in str(info.value) and "replace it with iclight_sd15_fbc.safetensors" in str(info.value)
    with pytest.raises(IncompatibleModelError, match=r"12-channel conv_in \(an fbc file\) but fcon needs 8"):
        check_offset_variant(fbc, Variant.FCON, tiny_paths["models"] / Variant.FBC.filename)
    plain = {**fc, "conv_in.weight": fc["conv_in.weight"][:, :4]}
    with pytest.raises(IncompatibleModelError, match=r"4-channel conv_in \(not an IC-Light file\)"):
        check_offset_variant(plain, Variant.FC, path)


def test_manager_rejects_swapped_weight_files(tiny_paths, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(tiny_paths["models"] / Variant.FC.filename, models / Variant.FBC.filename)
    manager = ModelManager(ModelSettings(base_model=str(tiny_paths["base"]), models_dir=models, device="cpu"))
    with pytest.raises(IncompatibleModelError, match="an fc/fcon file.*replace it with iclight_sd15_fbc.safetensors"):
        manager.get("fbc")


def test_truncated_weights_are_reported_as_corrupt(tiny_paths, tmp_path):
    data = (tiny_paths["models"] / Variant.FC.filename).read_bytes()
    bad = tmp_path / Variant.FC.filename
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptWeightsError, match="truncated.*delete it"):
        read_offset(bad)
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CorruptWeightsError, match=str(len(b"not a safetensors file at all")) + " bytes"):
        read_offset(bad)


def test_weight_header_that_is_not_an_object_is_corrupt(tmp_path):
    bad = tmp_path / Variant.FC.filename
    bad.write_bytes(struct.pack("<Q", 2) + b"12")
    with pytest.raises(CorruptWeightsError, match="the header is a JSON int, not an object"):
        read_offset(bad)


def test_models_dir_that_is_a_file_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("ICLIGHT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    taken = tmp_path / "models"
    taken.write_text("not a folder")
    with pytest.raises(InvalidParameterError, match=f"models folder {taken} is a file"):
        ensure_iclight_weights(Variant.FC, taken, download=True)


def test_missing_weights_offline_name_file_and_folder(tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        ensure_iclight_weights(Variant.FBC, tmp_path, download=True)  # ICLIGHT_OFFLINE=1 in tests
    message = str(info.value)
    assert "iclight_sd15_fbc.safetensors" in message and str(tmp_path.resolve()) in message
    assert "huggingface.co/lllyasviel/ic-light" in message


def test_present_weights_are_never_downloaded_again(tiny_paths):
    path = tiny_paths["models"] / Variant.FC.filename
    mtime = path.stat().st_mtime_ns
    assert ensure_iclight_weights(Variant.FC, tiny_paths["models"], download=True) == path
    assert path.stat().st_mtime_ns == mtime


def test_default_models_dir_is_next_to_the_code_not_the_cwd(monkeypatch, tmp_path):
    monkeypatch.delenv("ICLIGHT_MODELS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_models_dir() == (default_models_dir().parent / "models")
    assert default_models_dir().parent.joinpath("core").is_dir()
    monkeypatch.setenv("ICLIGHT_MODELS_DIR", str(tmp_path / "w"))
    assert default_models_dir() == tmp_path / "w"


@pytest.mark.parametrize(
    ("value", "kind"), [("stablediffusionapi/realistic-vision-v51", "hub"), ("runwayml/stable-diffusion-v1-5", "hub")]
)
def test_hub_ids_are_recognised(value, kind):
    assert classify_base_source(value) == kind


@pytest.mark.parametrize("value", ["./nope", "/no/such/model.safetensors", "not-a-hub-id", "a/b/c", ""])
def test_wrong_base_paths_are_clear_errors(value):
    with pytest.raises(InvalidParameterError, match="base model"):
        classify_base_source(value)


def test_hub_base_model_offline_is_explained():
    with pytest.raises(WeightsNotFoundError, match="could not be loaded from the Hugging Face Hub.*--base-model"):
        load_base_components("someone/model-not-in-cache")


def test_sdxl_folder_is_rejected(tiny_paths, tmp_path):
    folder = tmp_path / "sdxl"
    shutil.copytree(tiny_paths["base"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionXLPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(IncompatibleModelError, match="StableDiffusionXLPipeline.*SD 1.5"):
        load_base_components(str(folder))


def test_sdxl_style_unet_is_rejected(tiny_paths, tmp_path):
    folder = tmp_path / "xlunet"
    shutil.copytree(tiny_paths["base"], folder)
    config_path = folder / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["cross_attention_dim"] = 64  # text encoder is 32 wide
    config_path.write_text(json.dumps(config))
    with pytest.raises(IncompatibleModelError, match="cross-attention width 64"):
        load_base_components(str(folder))


def test_folder_without_model_is_rejected(tmp_path):
    with pytest.raises(InvalidParameterError, match="not a diffusers model folder"):
        load_base_components(str(tmp_path))


@pytest.mark.parametrize(
    ("remove", "named"),
    [("tokenizer", "tokenizer/"), ("text_encoder", "text_encoder/config.json"), ("vae", "vae/config.json")],
)
def test_incomplete_base_folder_names_what_is_missing(tiny_paths, tmp_path, remove, named):
    folder = tmp_path / "partial"
    shutil.copytree(tiny_paths["base"], folder)
    shutil.rmtree(folder / remove)
    with pytest.raises(WeightsNotFoundError, match=f"{folder} is incomplete: missing {named}"):
        load_base_components(str(folder))


@pytest.mark.parametrize("component", ["unet", "text_encoder", "vae"])
def test_truncated_base_weights_are_reported_as_corrupt(tiny_paths, tmp_path, component):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_paths["base"], folder)
    weights = next((folder / component).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(CorruptWeightsError, match="broken.*(corrupt|truncated)"):
        load_base_components(str(folder))


def test_manager_caches_by_variant_device_dtype_and_unloads(tiny_settings):
    manager = ModelManager(tiny_settings)
    assert not manager.is_loaded("fc")
    first = manager.get("fc")
    assert manager.get("fc") is first and manager.is_loaded("fc")
    assert manager.cache_key("fc") == ("fc", "cpu", manager.placement.cache_key[1])
    fbc = manager.get("fbc")
    assert fbc.unet.in_channels == 12 and first.unet.in_channels == 8
    manager.unload("fc")
    assert not manager.is_loaded("fc") and manager.is_loaded("fbc")
    manager.unload()
    assert not manager.is_loaded("fbc")


def test_manager_from_in_memory_components(tiny_paths):
    from transformers import CLIPTokenizer

    text_encoder, vae, unet = build_components(seed=0)
    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_paths["base"]), subfolder="tokenizer")
    offsets = {Variant.FBC: make_offset(unet, Variant.FBC)}
    manager = ModelManager.from_components(tokenizer, text_encoder, vae, unet, offsets=offsets)
    models = manager.get("fbc")
    assert models.unet.in_channels == 12
    assert unet.conv_in.in_channels == 4  # the injected UNet stays pristine
    assert "in-memory" in models.describe()


def test_single_file_checkpoint_path_is_classified(tmp_path):
    ckpt = tmp_path / "model.safetensors"
    save_file({"x": torch.zeros(1)}, str(ckpt))
    assert classify_base_source(str(ckpt)) == "file"
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(InvalidParameterError, match=".safetensors or .ckpt"):
        classify_base_source(str(other))


def test_unreadable_single_file_checkpoint_is_explained(tmp_path, tiny_paths):
    ckpt = tmp_path / "not_sd15.safetensors"
    save_file({"x": torch.zeros(1)}, str(ckpt))
    with pytest.raises((IncompatibleModelError, WeightsNotFoundError, CorruptWeightsError), match="not_sd15"):
        load_base_components(str(ckpt), single_file_config=str(tiny_paths["base"]))


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_truncated_single_file_checkpoint_is_reported_as_corrupt(tmp_path, tiny_paths, suffix):
    ckpt = tmp_path / f"half_downloaded{suffix}"
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".ckpt":
        torch.save({"state_dict": {"x": torch.zeros(4096)}}, whole)
    else:
        save_file({"x": torch.zeros(4096)}, str(whole))
    ckpt.write_bytes(whole.read_bytes()[:200])
    with pytest.raises(CorruptWeightsError, match=r"half_downloaded.*truncated.*Delete it and download it again"):
        load_base_components(str(ckpt), single_file_config=str(tiny_paths["base"]))
