"""`python -m core train`: learning, resume, export into the relight loader, two real processes, every early error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from train_testing import ROOT, SIZE, final_weights, log_of, train_args, write_dataset

from core.cli import main
from core.models.loading import Variant


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("triplets") / "data")


def test_loss_falls_on_a_learnable_dataset(tmp_path, dataset, tiny_paths):
    out = tmp_path / "run"
    args = train_args(dataset, out, tiny_paths["base"], "--batch-size", "4", "--init", "base",
                      "--checkpoint-every", "100", steps=40)  # fmt: skip
    assert main(args) == 0
    losses = [row["loss"] for row in log_of(out)]
    assert len(losses) == 40
    first, last = np.mean(losses[:5]), np.mean(losses[-10:])
    assert last < 0.6 * first, (first, last)
    row = log_of(out)[-1]
    assert row["step"] == 40 and row["lr"] == pytest.approx(1e-3)
    assert row["seconds_per_step"] > 0 and row["peak_memory_mb"] > 0


def test_a_stopped_run_resumed_equals_an_uninterrupted_one(tmp_path, dataset, tiny_paths):
    whole, split = tmp_path / "whole", tmp_path / "split"
    common = ("--batch-size", "2", "--grad-accum", "2", "--checkpoint-every", "3", "--lr-scheduler", "cosine",
              "--warmup", "2", "--ema", "--ema-decay", "0.9", "--export-dtype", "fp32")  # fmt: skip
    assert main(train_args(dataset, whole, tiny_paths["base"], *common, steps=6)) == 0
    assert main(train_args(dataset, split, tiny_paths["base"], *common, "--stop-after", "3", steps=6)) == 0
    assert not (split / Variant.FC.filename).exists()  # not finished: nothing exported yet
    # The same command again continues the run in the folder by itself, as after a kill.
    assert main(train_args(dataset, split, tiny_paths["base"], *common, steps=6)) == 0
    assert [r["step"] for r in log_of(split)] == list(range(1, 7))
    for a, b in zip(log_of(whole), log_of(split), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["lr"] == pytest.approx(b["lr"])
    left, right = final_weights(whole), final_weights(split)
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=1e-5, atol=1e-6)
    exported = [load_file(str(out / Variant.FC.filename)) for out in (whole, split)]
    for key in exported[0]:
        torch.testing.assert_close(exported[0][key], exported[1][key], rtol=1e-5, atol=1e-6)


def test_resume_from_a_named_checkpoint(tmp_path, dataset, tiny_paths):
    out = tmp_path / "run"
    assert main(train_args(dataset, out, tiny_paths["base"], "--checkpoint-every", "2", steps=4)) == 0
    first = sorted((out / "checkpoints").iterdir())[0]
    assert first.name == "checkpoint-000002"
    assert main(train_args(dataset, out, tiny_paths["base"], "--resume", str(first), steps=4)) == 0
    assert [r["step"] for r in log_of(out)] == [1, 2, 3, 4]


def test_checkpoints_past_the_kept_number_are_pruned(tmp_path, dataset, tiny_paths):
    out = tmp_path / "run"
    args = train_args(dataset, out, tiny_paths["base"], "--checkpoint-every", "1", "--keep-checkpoints", "2", steps=4)
    assert main(args) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-000003", "checkpoint-000004"]


def test_exported_offset_round_trips_through_the_loader_and_relights(tmp_path, dataset, tiny_paths):
    from core.models.manager import ModelManager, ModelSettings

    out = tmp_path / "run"
    args = train_args(dataset, out, tiny_paths["base"], "--init", "iclight", "--models-dir", str(tiny_paths["models"]),
                      "--export-dtype", "fp32", steps=3)  # fmt: skip
    assert main(args) == 0
    trained = {k.removeprefix("unet."): v for k, v in final_weights(out).items()}
    assert trained["conv_in.weight"].shape[1] == 8
    settings = ModelSettings(base_model=str(tiny_paths["base"]), models_dir=out, device="cpu", dtype="fp32",
                             download=False)  # fmt: skip
    loaded = ModelManager(settings).get(Variant.FC).unet.unet.state_dict()
    assert set(loaded) == set(trained)
    for key, value in trained.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=1e-6)
    # Training started from the IC-Light fc weights: their offset is inside what was trained.
    fc = load_file(str(tiny_paths["models"] / Variant.FC.filename))
    exported = load_file(str(out / Variant.FC.filename))
    assert (exported["conv_in.weight"][:, 4:].float() - fc["conv_in.weight"][:, 4:].float()).abs().max() < 0.05

    foreground = tmp_path / "fg.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(foreground)
    results = []
    for models_dir in (out, tiny_paths["models"]):
        folder = tmp_path / f"relit_{len(results)}"
        code = main(["relight", "--fg", str(foreground), "--out", str(folder), "--prompt", "warm light",
                     "--base-model", str(tiny_paths["base"]), "--models-dir", str(models_dir), "--width", "64",
                     "--height", "64", "--steps", "2", "--highres-scale", "1", "--matting", "none", "--device", "cpu",
                     "--dtype", "float32", "--offline", "--quiet"])  # fmt: skip
        assert code == 0
        results.append(np.asarray(Image.open(next(folder.glob("*.png")))))
    assert not np.array_equal(results[0], results[1])  # the trained file, not the original, made the first


def test_lora_export_is_a_merged_offset_on_attention_and_conv_in_only(tmp_path, dataset, tiny_paths):
    out = tmp_path / "run"
    args = train_args(dataset, out, tiny_paths["base"], "--init", "base", "--lora-rank", "4", "--export-dtype", "fp32",
                      steps=3)  # fmt: skip
    assert main(args) == 0
    offset = load_file(str(out / Variant.FC.filename))
    base = load_file(str(tiny_paths["base"] / "unet" / "diffusion_pytorch_model.safetensors"))
    assert set(offset) == set(base)
    changed = {key for key, value in offset.items() if value.abs().max() > 0}
    attention = {key for key in changed if any(f".{t}." in key for t in ("to_q", "to_k", "to_v", "to_out.0"))}
    assert attention and "conv_in.weight" in changed
    assert changed - attention <= {"conv_in.weight", "conv_in.bias"}


def test_validation_images_are_written(tmp_path, dataset, tiny_paths):
    out = tmp_path / "run"
    args = train_args(dataset, out, tiny_paths["base"], "--validate-every", "2", "--validation-image",
                      str(dataset / "in_0.png"), "--validation-prompt", "warm light", "--validation-steps", "2",
                      "--init", "base", steps=4)  # fmt: skip
    assert main(args) == 0
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-000002.png", "step-000004.png"]
    assert Image.open(out / "validation" / "step-000004.png").size == (64, 64)


def test_two_processes_under_accelerate_launch_match_one_process(tmp_path, dataset, tiny_paths):
    """Real data parallelism: two gloo processes with batch 1 each = one process with batch 2."""
    single, double = tmp_path / "single", tmp_path / "double"
    common = ("--grad-accum", "2", "--init", "base", "--checkpoint-every", "1", "--keep-checkpoints", "3")
    assert main(train_args(dataset, single, tiny_paths["base"], "--batch-size", "2", *common, steps=3)) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # accelerate starts torchrun workers for --multi_gpu; without a GPU our Accelerator joins them over gloo on CPU.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               "29517", "-m", "core", *train_args(dataset, double, tiny_paths["base"], "--batch-size", "1", *common,
                                                   steps=3)]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((double / "train_config.json").read_text())["num_processes"] == 2
    for a, b in zip(log_of(single), log_of(double), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    # Adam moves every weight by about the learning rate whatever its gradient's size, so a gradient that is zero up
    # to rounding can move either way: compare the runs' difference with what training changed (steps 1 to 3).
    first = load_file(str(single / "checkpoints" / "checkpoint-000001" / "trainable.safetensors"))
    left, right = final_weights(single), final_weights(double)
    assert set(left) == set(right)
    moved = torch.cat([(left[k] - first[k]).flatten() for k in left]).norm()
    apart = torch.cat([(left[k] - right[k]).flatten() for k in left]).norm()
    assert moved > 0 and apart < 1e-2 * moved, (float(apart), float(moved))


def test_bf16_autocast_lora_ema_and_gradient_checkpointing_together(tmp_path, dataset, tiny_paths):
    out = tmp_path / "run"
    args = train_args(dataset, out, tiny_paths["base"], "--mixed-precision", "bf16", "--gradient-checkpointing",
                      "--lora-rank", "4", "--ema", "--init", "base", steps=2)  # fmt: skip
    assert main(args) == 0
    assert all(np.isfinite(row["loss"]) for row in log_of(out))
    assert (out / Variant.FC.filename).is_file()
    saved = final_weights(out)  # a LoRA checkpoint holds the adapters and conv_in, not the frozen UNet
    assert saved and all("lora_" in key or key.startswith("unet.conv_in.") for key in saved)


def test_rows_from_a_datasets_table_decode_as_from_the_folder(dataset):
    """The Hub path: a real `datasets.Dataset` with Image columns gives the same triplets as the folder."""
    import datasets

    from core.train.data import check_rows, decode_row, load_rows, rows_from_table

    local = load_rows(str(dataset))
    columns = {
        "input_image": [str(row.input_image) for row in local],
        "edit_prompt": [row.edit_prompt for row in local],
        "edited_image": [str(row.edited_image) for row in local],
    }
    table = datasets.Dataset.from_dict(columns)
    for column in ("input_image", "edited_image"):
        table = table.cast_column(column, datasets.Image())
    rows = rows_from_table(table, "a table")
    good, bad = check_rows(rows, 0.0, "a table")
    assert len(good) == len(local) and not bad
    for hub_row, folder_row in zip(rows, local, strict=True):
        a, b = decode_row(hub_row, SIZE), decode_row(folder_row, SIZE)
        assert np.array_equal(a.input_image, b.input_image) and np.array_equal(a.edited_image, b.edited_image)


# -- errors, all before the first step ---------------------------------------------------------------------------


def run_error(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_missing_columns_are_named_with_the_found_ones(tmp_path, tiny_paths, capsys):
    data = write_dataset(tmp_path / "data", rows=2, columns=("input_image", "edit_prompt"))
    code, err = run_error(train_args(data, tmp_path / "run", tiny_paths["base"]), capsys)
    assert code == 2
    assert "lacks the column(s) edited_image" in err and "input_image_file_name" in err and "edit_prompt" in err
    assert not (tmp_path / "run" / "train_log.jsonl").exists()


def test_undecodable_images_are_skipped_up_to_the_share_then_fatal(tmp_path, tiny_paths, capsys):
    data = write_dataset(tmp_path / "data", rows=8)
    (data / "out_3.png").write_bytes(b"not a png")
    args = train_args(data, tmp_path / "ok", tiny_paths["base"], "--max-bad-share", "0.2", steps=1)
    code, err = run_error(args, capsys)
    assert code == 0 and "skipped 1 of 8 rows" in err and "out_3.png" in err
    (data / "in_5.png").write_bytes((data / "in_5.png").read_bytes()[:60])  # truncated
    code, err = run_error(train_args(data, tmp_path / "bad", tiny_paths["base"], "--max-bad-share", "0.2"), capsys)
    assert code == 2 and "2 of 8 rows" in err and "25%" in err and "--max-bad-share 20%" in err


def test_an_unreachable_hub_dataset_is_named(tmp_path, tiny_paths, capsys):
    code, err = run_error(train_args("nobody/no-such-triplets", tmp_path / "run", tiny_paths["base"]), capsys)
    assert code == 1 and "'nobody/no-such-triplets' could not be loaded from the Hub or its cache" in err


def test_a_base_model_that_is_not_sd15_is_refused(tmp_path, dataset, tiny_paths, capsys):
    base = tmp_path / "base"
    shutil.copytree(tiny_paths["base"], base)
    config = json.loads((base / "unet" / "config.json").read_text())
    (base / "unet" / "config.json").write_text(json.dumps({**config, "cross_attention_dim": 64}))
    code, err = run_error(train_args(dataset, tmp_path / "run", base), capsys)
    assert code == 1 and "is not SD 1.5" in err


def test_an_out_folder_holding_another_run_is_refused_unless_overwrite(tmp_path, dataset, tiny_paths, capsys):
    out = tmp_path / "run"
    assert main(train_args(dataset, out, tiny_paths["base"], "--init", "base", steps=1)) == 0
    code, err = run_error(train_args(dataset, out, tiny_paths["base"], "--init", "base", "--lr", "2e-3"), capsys)
    assert code == 2 and "holds a different training run" in err and "lr 0.001 there, 0.002 here" in err
    assert main(train_args(dataset, out, tiny_paths["base"], "--init", "base", "--lr", "2e-3", "--overwrite",
                           steps=1)) == 0  # fmt: skip
    assert [r["lr"] for r in log_of(out)] == [pytest.approx(2e-3)]


def test_flag_errors_are_one_line(tmp_path, dataset, tiny_paths, capsys):
    base = tiny_paths["base"]
    cases = [
        (["--resolution", "30"], "--resolution should be a multiple of 8"),
        (["--mixed-precision", "fp16"], "fp16 needs a GPU"),
        (["--resume", "latest"], "holds no complete checkpoint"),
        (["--kind", "ip2p", "--init", "iclight"], "--init iclight applies to --kind iclight-fc only"),
        (["--validate-every", "2"], "--validate-every needs --validation-image"),
        (["--conditioning-dropout", "0.5"], "--conditioning-dropout should be in [0, 0.333333]"),
    ]
    for extra, message in cases:
        args = train_args(dataset, tmp_path / "run", base, *extra)  # the last --resolution wins
        code, err = run_error(args, capsys)
        assert code == 2 and message in err, (extra, err)
        assert len(err.strip().splitlines()) == 1


def test_out_of_memory_names_the_knobs(tmp_path, dataset, tiny_paths, capsys, monkeypatch):
    """The allocator's error (simulated: this CPU does not run out) becomes one line naming what helps."""
    from core.train import loop

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "_loss", out_of_memory)
    code, err = run_error(train_args(dataset, tmp_path / "run", tiny_paths["base"], "--init", "base"), capsys)
    assert code == 1
    for knob in ("--batch-size", "--gradient-checkpointing", "--lora-rank", "--mixed-precision"):
        assert knob in err


def test_data_filter_then_synth_then_train_then_relight(tmp_path, tiny_paths):
    """The whole training pipeline on tiny models: pick photos, synthesise triplets, train, relight with the result."""
    from data_models import write_photos

    write_photos(tmp_path / "photos")
    filtered, triplets, run = tmp_path / "filtered", tmp_path / "triplets", tmp_path / "run"
    assert main(["data-filter", "--images", str(tmp_path / "photos"), "--out", str(filtered), "--scorer", "classic",
                 "--keep", "2", "--quiet"]) == 0  # fmt: skip
    assert main(["data-synth", "--images", str(filtered / "kept.txt"), "--out", str(triplets), "--per-image", "1",
                 "--matting", "grabcut", "--normals", "silhouette", "--models-dir", str(tmp_path / "no-models"),
                 "--quiet"]) == 0  # fmt: skip
    assert main(train_args(triplets, run, tiny_paths["base"], "--init", "base", "--batch-size", "2", steps=2)) == 0
    assert [row["step"] for row in log_of(run)] == [1, 2]
    code = main(["relight", "--fg", str(tmp_path / "photos" / "coffee.png"), "--out", str(tmp_path / "relit"),
                 "--prompt", "soft light", "--base-model", str(tiny_paths["base"]), "--models-dir", str(run),
                 "--width", "64", "--height", "64", "--steps", "2", "--highres-scale", "1", "--matting", "none",
                 "--device", "cpu", "--dtype", "float32", "--offline", "--quiet"])  # fmt: skip
    assert code == 0 and len(list((tmp_path / "relit").glob("*.png"))) == 1
