"""`python -m core relight|suggest` end to end on tiny models: outputs, metadata, re-runs and every error path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from core.cli import main
from core.imaging.outputs import MODEL_KEY, read_params, read_png_text

FAST = ["--width", "64", "--height", "64", "--steps", "2", "--highres-scale", "1", "--quiet"]


@pytest.fixture()
def fg_png(tmp_path, fg_image) -> Path:
    path = tmp_path / "fg.png"
    Image.fromarray(fg_image).save(path)
    return path


@pytest.fixture()
def model_flags(tiny_paths) -> list[str]:
    return ["--base-model", str(tiny_paths["base"]), "--models-dir", str(tiny_paths["models"]), "--device", "cpu",
            "--dtype", "fp32"]  # fmt: skip


def run(argv, capsys) -> tuple[int, list[str], str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, [line for line in out.splitlines() if line.strip()], err


def test_relight_writes_pngs_with_parameters_and_never_overwrites(tmp_path, fg_png, model_flags, capsys):
    out = tmp_path / "out"
    argv = ["relight", "--fg", fg_png, "--prompt", "a cat, sunset over sea", "--out", out, "--light", "left",
            "--num-images", "2", "--seed", "7", "--no-remove-bg", *FAST, *model_flags]  # fmt: skip
    code, paths, err = run(argv, capsys)
    assert code == 0, err
    assert err == ""  # --quiet: not even the model libraries' loading bars
    assert len(paths) == 2 and all(Path(p).is_file() and Path(p).parent == out for p in paths)
    params = read_params(paths[0])
    assert (params.prompt, params.seed, params.num_images, params.light.azimuth) == (
        "a cat, sunset over sea",
        7,
        2,
        180,
    )
    first_bytes = Path(paths[0]).read_bytes()
    code, again, _ = run(argv, capsys)
    assert code == 0 and set(again).isdisjoint(paths)
    assert Path(paths[0]).read_bytes() == first_bytes  # the earlier result is untouched
    assert Image.open(again[0]).size == (64, 64)
    assert np.array_equal(np.array(Image.open(again[0])), np.array(Image.open(paths[0])))  # same seed, same image


def test_from_png_reproduces_a_result(tmp_path, fg_png, model_flags, capsys):
    out = tmp_path / "out"
    code, paths, err = run(["relight", "--fg", fg_png, "--prompt", "neon light", "--out", out, "--seed", "3",
                            "--matting", "none", *FAST, *model_flags], capsys)  # fmt: skip
    assert code == 0, err
    code, again, err = run(["relight", "--from-png", paths[0], "--fg", fg_png, "--out", out, "--quiet",
                            *model_flags], capsys)  # fmt: skip
    assert code == 0, err
    assert np.array_equal(np.array(Image.open(again[0])), np.array(Image.open(paths[0])))
    assert read_params(again[0]) == read_params(paths[0])
    code, changed, _ = run(["relight", "--from-png", paths[0], "--fg", fg_png, "--out", out, "--quiet",
                            "--seed", "4", *model_flags], capsys)  # fmt: skip
    assert code == 0 and read_params(changed[0]).seed == 4 and read_params(changed[0]).prompt == "neon light"


def test_results_record_the_model_and_from_png_reruns_the_same_variant(tmp_path, fg_png, model_flags, capsys):
    out = tmp_path / "out"
    code, paths, err = run(["relight", "--fg", fg_png, "--prompt", "neon light", "--out", out, "--variant", "fcon",
                            "--matting", "none", *FAST, *model_flags], capsys)  # fmt: skip
    assert code == 0, err
    assert Path(paths[0]).name == "iclight_fcon_00001.png"
    model = json.loads(read_png_text(paths[0])[MODEL_KEY])
    # A local base model is recorded by its name: the server's folders stay out of shared files.
    assert model == {"variant": "fcon", "base_model": Path(model_flags[1]).name,
                     "placement": "cpu (UNet float32, text float32, VAE float32)"}  # fmt: skip
    code, again, err = run(["relight", "--from-png", paths[0], "--fg", fg_png, "--out", out, "--quiet",
                            *model_flags], capsys)  # fmt: skip
    assert code == 0 and Path(again[0]).name == "iclight_fcon_00002.png", err
    assert np.array_equal(np.array(Image.open(again[0])), np.array(Image.open(paths[0])))
    code, fc, err = run(["relight", "--from-png", paths[0], "--fg", fg_png, "--out", out, "--quiet", "--variant",
                         "fc", *model_flags], capsys)  # fmt: skip
    assert code == 0 and Path(fc[0]).name == "iclight_fc_00001.png", err
    assert not np.array_equal(np.array(Image.open(fc[0])), np.array(Image.open(paths[0])))  # other weights


def test_fbc_with_light_direction_and_upload(tmp_path, fg_png, model_flags, capsys, bg_image):
    bg = tmp_path / "bg.jpg"
    Image.fromarray(bg_image).save(bg)
    out = tmp_path / "out"
    code, paths, err = run(["relight", "--mode", "fbc", "--fg", fg_png, "--prompt", "a cat", "--out", out,
                            "--bg-source", "right", "--no-remove-bg", *FAST, *model_flags], capsys)  # fmt: skip
    assert code == 0, err
    assert read_params(paths[0]).bg_source.value == "right" and read_params(paths[0]).cfg == 7.0
    code, paths, err = run(["relight", "--mode", "fbc", "--fg", fg_png, "--bg", bg, "--prompt", "a cat", "--out",
                            out, "--no-remove-bg", *FAST, *model_flags], capsys)  # fmt: skip
    assert code == 0, err
    assert read_params(paths[0]).bg_source.value == "upload"


def test_preview_engine_needs_no_weights(tmp_path, fg_png, capsys):
    out = tmp_path / "out"
    code, paths, err = run(["relight", "--engine", "preview", "--fg", fg_png, "--prompt", "x", "--out", out,
                            "--light", "30", "--light-color", "#ffaa00", "--matting", "grabcut",
                            "--models-dir", tmp_path / "empty", "--offline", "--quiet"], capsys)  # fmt: skip
    assert code == 0, err
    assert len(paths) == 1 and Image.open(paths[0]).size == (80, 100)
    assert read_params(paths[0]).light.azimuth == 30 and read_params(paths[0]).light.color == "#ffaa00"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fg", "missing.png"], "--fg missing.png does not exist"),
        (["--light", "sideways"], "--light should be none, left, right, top, bottom or an angle"),
        (["--width", "70"], "width should be a multiple of 8"),
        (["--steps", "0"], "steps should be in"),
        (["--light-color", "orange"], "color should be a hex colour"),
        (["--mode", "fbc"], "fbc needs --bg"),
        (["--mode", "fbc", "--bg-source", "flip"], "--bg-source flip needs --bg BACKGROUND.png"),
        (["--device", "cpu:x"], "device 'cpu:x' is malformed"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, fg_png, model_flags, capsys, extra, message):
    argv = ["relight", "--fg", fg_png, "--prompt", "x", "--out", tmp_path / "o", *model_flags, *extra]
    code, _, err = run(argv, capsys)
    assert code != 0
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_not_an_image_and_missing_weights(tmp_path, fg_png, capsys):
    text = tmp_path / "notes.png"
    text.write_text("hello")
    code, _, err = run(["relight", "--fg", text, "--prompt", "x", "--out", tmp_path / "o", "--no-remove-bg"], capsys)
    assert code == 2 and "not an image" in err
    code, _, err = run(["relight", "--fg", fg_png, "--prompt", "x", "--out", tmp_path / "o", "--no-remove-bg",
                        "--models-dir", tmp_path / "empty", "--offline", *FAST], capsys)  # fmt: skip
    assert code == 1 and "iclight_sd15_fc.safetensors" in err and str((tmp_path / "empty").resolve()) in err


def test_bad_out_folder_fails_before_any_model_loads(tmp_path, fg_png, capsys):
    taken = tmp_path / "taken.txt"
    taken.write_text("not a folder")
    # No weights anywhere: reaching the model load would fail differently (exit 1, naming the weights).
    for out, message in [(taken, "is a file, not a folder"), (taken / "sub", "cannot be created")]:
        code, _, err = run(["relight", "--fg", fg_png, "--prompt", "x", "--out", out, "--models-dir",
                            tmp_path / "empty", "--offline"], capsys)  # fmt: skip
        assert code == 2 and f"--out {out} " in err and message in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert taken.read_text() == "not a folder"


def test_os_errors_mid_run_are_one_line(tmp_path, fg_png, capsys, monkeypatch):
    from core.service import Relighter

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "o" / "iclight_fc_00001.png"))

    monkeypatch.setattr(Relighter, "relight", full_disk)
    code, _, err = run(["relight", "--fg", fg_png, "--prompt", "x", "--out", tmp_path / "o", "--quiet"], capsys)
    assert code == 1 and err.strip() == f"error: No space left on device ({tmp_path / 'o' / 'iclight_fc_00001.png'})"


def test_unknown_choice_exits_with_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["relight", "--sampler", "plms"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_module_entry_point_with_progress_bar_and_suggest(tmp_path, fg_png, tiny_paths):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": ""}
    cmd = [sys.executable, "-m", "core", "relight", "--fg", str(fg_png), "--prompt", "a cat", "--out",
           str(tmp_path / "o"), "--base-model", str(tiny_paths["base"]), "--models-dir", str(tiny_paths["models"]),
           "--device", "cpu", "--no-remove-bg", "--width", "64", "--height", "64", "--steps", "2"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_file()
    assert "relight" in proc.stderr and "step" in proc.stderr  # tqdm bar on stderr
    proc = subprocess.run([sys.executable, "-m", "core", "suggest", "--image", str(fg_png), "--mood", "warm"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert len(data["suggestions"]) == 3


IMPORT_PROBE = """
import sys, torch
calls = []
torch.cuda.is_available = lambda: calls.append("cuda.is_available") or False
torch.accelerator.is_available = lambda *a: calls.append("accelerator.is_available") or False
import core.cli, core.models.manager, core.recipe.pipeline, core.service
heavy = [m for m in ("diffusers", "transformers", "gradio") if m in sys.modules]
print(calls, heavy, torch.cuda.is_initialized())
"""


def test_importing_the_engine_probes_no_device_and_loads_no_model_library():
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] [] False", out.stdout + out.stderr
