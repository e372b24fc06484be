"""`python -m core edit`: an InstructPix2Pix folder exported by `train --kind ip2p`, saved like relight results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_testing import train_args, write_dataset

from core.cli import main


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 72, 3), dtype=np.uint8)).save(path)
    return path


def test_ip2p_trains_exports_a_folder_and_edit_runs_it(tmp_path, tiny_paths, photo):
    from core.imaging.outputs import read_params

    dataset = write_dataset(tmp_path / "data", rows=4)
    out = tmp_path / "run"
    args = train_args(dataset, out, tiny_paths["base"], "--kind", "ip2p", "--conditioning-dropout", "0.2",
                      "--validate-every", "4", "--validation-image", str(photo), "--validation-prompt", "make it warm",
                      "--validation-steps", "2")  # fmt: skip
    assert main(args) == 0
    assert (out / "validation" / "step-000004.png").is_file()
    assert (out / "model" / "model_index.json").is_file()
    assert json.loads((out / "model" / "unet" / "config.json").read_text())["in_channels"] == 8
    results = tmp_path / "edits"
    args = ["edit", "--model", str(out), "--image", str(photo), "--instruction", "make it warm", "--steps", "2",
            "--out", str(results), "--quiet"]  # fmt: skip
    assert main(args) == 0 and main(args) == 0
    files = sorted(results.glob("*.png"))
    assert [f.name for f in files] == ["edit_00001.png", "edit_00002.png"]  # never overwritten
    params = read_params(files[0])
    assert params.prompt == "make it warm" and params.extra["engine"] == "edit"
    assert params.extra["image_guidance"] == 1.5 and (params.width, params.height) == (72, 64)
    assert np.array_equal(np.asarray(Image.open(files[0])), np.asarray(Image.open(files[1])))  # same seed

    # --lora: fused into the exported UNet at its scale, recorded in the metadata; scale 0 is the plain edit.
    from diffusers import UNet2DConditionModel
    from lora_files import UNET_TARGETS, diffusers_file, lora_tensors

    unet = UNet2DConditionModel.from_pretrained(str(out / "model" / "unet"))
    lora = diffusers_file(lora_tensors(unet, UNET_TARGETS, seed=5), None, tmp_path / "style.safetensors")
    for spec in (f"{lora}:1.5", f"{lora}:0"):
        assert main([*args, "--lora", spec]) == 0
    with_lora, at_zero = sorted(results.glob("*.png"))[2:]
    plain = np.asarray(Image.open(files[0]))
    assert not np.array_equal(np.asarray(Image.open(with_lora)), plain)
    assert np.array_equal(np.asarray(Image.open(at_zero)), plain)
    assert [spec.to_text() for spec in read_params(with_lora).loras] == [f"{lora}:1.5"]


def test_edit_refuses_a_model_that_is_not_instruct_pix2pix(tmp_path, tiny_paths, photo, capsys):
    args = ["edit", "--model", str(tiny_paths["base"]), "--image", str(photo), "--instruction", "warm",
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 1
    assert "4 input channels, not an InstructPix2Pix model" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image-guidance", "0.5"], "--image-guidance should be in [1, 10] but is 0.5"),
        (["--width", "60"], "--width should be a multiple of 8"),
        (["--steps", "0"], "steps should be"),
    ],
)
def test_edit_flag_errors_are_one_line(tmp_path, tiny_paths, photo, capsys, extra, message):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("{}")
    (model / "unet").mkdir()
    (model / "unet" / "config.json").write_text(json.dumps({"in_channels": 8}))
    args = ["edit", "--model", str(model), "--image", str(photo), "--instruction", "warm", "--out",
            str(tmp_path / "o"), *extra]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # nothing written, no model loaded


def test_edit_without_a_model_folder_says_what_to_give(tmp_path, photo, capsys):
    (tmp_path / "empty").mkdir()
    args = ["edit", "--model", str(tmp_path / "empty"), "--image", str(photo), "--instruction", "warm", "--out",
            str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 1
    assert "holds no model_index.json" in capsys.readouterr().err
