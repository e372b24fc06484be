"""`python -m core batch` on tiny models: folders and manifests with good and bad rows, both engines (Ray for real),
resume after SIGKILL, no overwriting, and the errors that stop a batch at once."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image
from ray_testing import ray_cluster  # noqa: F401  (session fixture)

from core.cli import main
from core.imaging.outputs import read_params

FAST = ["--width", "64", "--height", "64", "--steps", "2", "--highres-scale", "1", "--matting", "none", "--quiet"]
SUMMARY = "{} done, {} failed, {} already done (skipped) in "


@pytest.fixture()
def model_flags(tiny_paths) -> list[str]:
    return ["--base-model", str(tiny_paths["base"]), "--models-dir", str(tiny_paths["models"]), "--device", "cpu",
            "--dtype", "fp32"]  # fmt: skip


def _image(path: Path, seed: int, size=(72, 56)) -> Path:
    pixels = (np.random.RandomState(seed).rand(size[0], size[1], 3) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture()
def folder(tmp_path) -> Path:
    """Two photos and a text file named .png (sorted: a.png, b photo.png, c_broken.png), plus a non-image."""
    shots = tmp_path / "shots"
    shots.mkdir()
    _image(shots / "a.png", 1)
    _image(shots / "b photo.png", 2)
    (shots / "c_broken.png").write_text("this is text, not a PNG")
    (shots / "notes.txt").write_text("not an image: ignored")
    return shots


@pytest.fixture()
def manifest(tmp_path, folder) -> Path:
    """Good and bad rows; paths relative to the manifest's folder."""
    _image(folder / "sky.png", 3, size=(50, 90))
    rows = [
        {"foreground": "shots/a.png", "prompt": "a toy, sunset", "light": "left", "seed": "7"},
        {"foreground": "shots/missing.png"},
        {"foreground": "shots/c_broken.png"},
        {"foreground": "shots/a.png", "steps": "0"},
        {"foreground": "shots/b photo.png", "mode": "fbc", "bg_source": "upload"},
        {"foreground": "shots/b photo.png", "mode": "fbc", "bg_source": "upload", "background": "shots/sky.png",
         "cfg": "3", "keep_background": "yes"},
    ]  # fmt: skip
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["foreground", "background", "prompt", "light", "seed", "steps", "mode",
                                         "bg_source", "cfg", "keep_background"])  # fmt: skip
        writer.writeheader()
        writer.writerows(rows)
    return path


def run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def records(out: Path) -> dict[int, dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return {r["row"]: r for r in map(json.loads, lines)}


def pixels(path) -> np.ndarray:
    return np.array(Image.open(path))


def test_folder_batch_writes_named_results_and_resumes(tmp_path, folder, model_flags, capsys):
    out = tmp_path / "out"
    argv = ["batch", "--input", folder, "--out", out, "--prompt", "a toy, soft light", *FAST, *model_flags]
    code, stdout, err = run(argv, capsys)
    assert code == 1, err  # the text file named .png failed
    assert stdout.startswith(SUMMARY.format(2, 1, 0)) and stdout.endswith(" s\n")
    rows = records(out)
    assert [rows[i]["status"] for i in range(3)] == ["done", "done", "failed"]
    assert "c_broken.png" in rows[2]["error"] and "\n" not in rows[2]["error"]
    assert rows[0]["outputs"] == [str(out / "a_fc_00001.png")]
    assert rows[1]["outputs"] == [str(out / "b_photo_fc_00001.png")]
    for i in (0, 1):
        stored = read_params(rows[i]["outputs"][0])
        assert stored.to_dict() == rows[i]["params"]
        assert stored.seed == rows[i]["seed"] == 12345 + i  # --seed default plus the row index
        assert stored.prompt == "a toy, soft light"
        assert set(rows[i]) >= {"row", "foreground", "background", "params", "outputs", "seed", "status", "error",
                                "seconds", "worker"}  # fmt: skip
    first = {p: p.read_bytes() for p in out.glob("*.png")}

    # The same command again: done rows skipped, the failed row retried, nothing new written.
    code, stdout, _ = run(argv, capsys)
    assert code == 1 and stdout.startswith(SUMMARY.format(0, 1, 2))
    assert set(out.glob("*.png")) == set(first)
    # --force redoes every row under new numbers; the earlier files are untouched, the images the same.
    code, stdout, _ = run([*argv, "--force"], capsys)
    assert stdout.startswith(SUMMARY.format(2, 1, 0))
    assert all(p.read_bytes() == data for p, data in first.items())
    assert np.array_equal(pixels(out / "a_fc_00002.png"), pixels(out / "a_fc_00001.png"))


def test_a_batch_row_is_the_single_relight_with_its_seed(tmp_path, folder, model_flags, capsys):
    out = tmp_path / "out"
    code, _, err = run(["batch", "--input", folder / "*.png", "--out", out, "--prompt", "a toy", "--seed", "100",
                        *FAST, *model_flags], capsys)  # fmt: skip
    assert code == 1, err
    code, single, err = run(["relight", "--fg", folder / "b photo.png", "--out", tmp_path / "single", "--prompt",
                             "a toy", "--seed", "101", *FAST, *model_flags], capsys)  # fmt: skip
    assert code == 0, err
    assert np.array_equal(pixels(records(out)[1]["outputs"][0]), pixels(single.strip()))


def _check_manifest_records(rows: dict[int, dict], folder: Path) -> None:
    assert [rows[i]["status"] for i in range(6)] == ["done", "failed", "failed", "failed", "failed", "done"]
    assert rows[0]["seed"] == 7 and rows[0]["params"]["light"]["azimuth"] == 180  # cells override the flags
    assert rows[0]["params"]["prompt"] == "a toy, sunset" and rows[0]["params"]["steps"] == 2
    assert "missing.png does not exist" in rows[1]["error"] and "manifest.csv line 3" in rows[1]["error"]
    assert "c_broken.png" in rows[2]["error"]
    assert "steps" in rows[3]["error"] and "0" in rows[3]["error"]
    assert "upload" in rows[4]["error"] and "background" in rows[4]["error"].lower()
    assert rows[5]["params"]["mode"] == "fbc" and rows[5]["params"]["cfg"] == 3 and rows[5]["seed"] == 12345 + 5
    assert rows[5]["params"]["keep_background"] is True and rows[5]["background"] == str(folder / "sky.png")
    assert Path(rows[5]["outputs"][0]).name == "b_photo_fbc_00001.png"
    assert all(rows[i]["outputs"] == [] for i in range(1, 5))


@pytest.mark.slow
def test_manifest_through_both_engines_gives_identical_images(tmp_path, folder, manifest, model_flags, capsys,
                                                              ray_cluster):  # noqa: F811  # fmt: skip
    base = ["batch", "--input", manifest, "--prompt", "a toy", *FAST, *model_flags]
    code, stdout, err = run([*base, "--out", tmp_path / "local"], capsys)
    assert code == 1 and stdout.startswith(SUMMARY.format(2, 4, 0)), err
    local = records(tmp_path / "local")
    _check_manifest_records(local, folder)

    code, stdout, err = run([*base, "--out", tmp_path / "ray", "--engine", "ray", "--workers", "1"], capsys)
    assert code == 1 and stdout.startswith(SUMMARY.format(2, 4, 0)), err
    remote = records(tmp_path / "ray")
    _check_manifest_records(remote, folder)
    for i in (0, 5):
        assert remote[i]["worker"] != local[i]["worker"]
        assert remote[i]["params"] == local[i]["params"]
        assert np.array_equal(pixels(remote[i]["outputs"][0]), pixels(local[i]["outputs"][0]))


def test_prompts_file_crosses_images_and_prompts(tmp_path, folder, model_flags, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a toy, neon light\n\na toy, window light\n")
    out = tmp_path / "out"
    code, stdout, err = run(["batch", "--input", folder / "[ab]*.png", "--out", out, "--prompts", prompts,
                             "--seed", "5", *FAST, *model_flags], capsys)  # fmt: skip
    assert code == 0, err
    rows = records(out)
    assert [(Path(rows[i]["foreground"]).name, rows[i]["params"]["prompt"], rows[i]["seed"]) for i in range(4)] == [
        ("a.png", "a toy, neon light", 5),
        ("a.png", "a toy, window light", 6),
        ("b photo.png", "a toy, neon light", 7),
        ("b photo.png", "a toy, window light", 8),
    ]
    assert sorted(p.name for p in out.glob("*.png")) == ["a_fc_00001.png", "a_fc_00002.png", "b_photo_fc_00001.png",
                                                         "b_photo_fc_00002.png"]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "nothing-here", "--input {d}/nothing-here does not exist"),
        (lambda d: d / "*.jpg", "--input {d}/*.jpg matches no files"),
        (lambda d: _write(d / "m.csv", "foreground,colour\na.png,red\n"), "unknown column 'colour'"),
        (lambda d: _write(d / "m.csv", "image\na.png\n"), "has no 'foreground' column"),
        (lambda d: _write(d / "m.csv", "foreground,variant\na.png,fcon\n"), "column 'variant' is batch-wide"),
        (lambda d: _write(d / "m.jsonl", '{"foreground": "a.png"}\n{oops\n'), "m.jsonl line 2 is not JSON"),
        (lambda d: _write(d / "m.csv", "foreground,steps\na.png,many\n"), None),  # a bad cell fails only its row
    ],
)
def test_what_stops_a_batch_at_once(tmp_path, folder, model_flags, capsys, make, message):
    source = make(folder)
    code, stdout, err = run(["batch", "--input", source, "--out", tmp_path / "out", "--prompt", "x", *FAST,
                             *model_flags], capsys)  # fmt: skip
    if message is None:
        assert code == 1 and "column steps should be a int but is 'many'" in records(tmp_path / "out")[0]["error"]
        return
    assert code == 2 and stdout == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message.format(d=folder) in err, err


def test_unwritable_out_and_bad_flags_stop_before_any_work(tmp_path, folder, model_flags, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for extra, message in [
        (["--out", blocker], "is a file, not a folder"),
        (["--out", tmp_path / "o", "--workers", "2"], "--workers needs --engine ray"),
        (["--out", tmp_path / "o", "--prompts", tmp_path / "none.txt"], "--prompts"),
    ]:
        code, _, err = run(["batch", "--input", folder, "--prompt", "x", *extra, *FAST, *model_flags], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o" / "results.jsonl").exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.slow
def test_a_killed_batch_resumes_where_it_stopped(tmp_path, model_flags, capsys):
    shots = tmp_path / "shots"
    shots.mkdir()
    for i in range(3):
        _image(shots / f"p{i}.png", 10 + i)
    out = tmp_path / "out"
    argv = ["batch", "--input", str(shots), "--out", str(out), "--prompt", "a toy", *FAST, *model_flags]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "core", *argv]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if results.exists() and results.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # mid-batch: no chance to clean up
    process.wait()
    done_before = len(records(out))
    assert 1 <= done_before < 3, "the batch should have been killed part-way"
    assert all(p.suffix == ".png" and Image.open(p).size == (64, 64) for p in out.glob("*.png"))

    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.startswith(SUMMARY.format(3 - done_before, 0, done_before))
    rows = records(out)
    assert sorted(rows) == [0, 1, 2] and all(r["status"] == "done" for r in rows.values())
    for row in rows.values():
        assert read_params(row["outputs"][0]).seed == 12345 + row["row"]
    code, stdout, _ = run(argv, capsys)  # nothing left to do: no model loads
    assert code == 0 and stdout.startswith(SUMMARY.format(0, 0, 3))


def test_cells_override_flags_both_ways(tmp_path, folder):
    from core.batch.rows import build_rows, read_sources
    from core.cli import build_parser

    lines = ['{"foreground": "shots/a.png", "keep_background": "no"}',
             '{"foreground": "shots/a.png", "keep_background": false, "steps": 3, "light": 30}',
             '{"foreground": "shots/a.png", "seed": 12345}']  # fmt: skip
    manifest = _write(tmp_path / "m.jsonl", "\n".join(lines) + "\n")
    args = build_parser().parse_args(["batch", "--input", str(manifest), "--out", str(tmp_path / "o"), "--prompt",
                                      "x", "--keep-background", "--steps", "2", "--matting", "none"])  # fmt: skip
    rows = build_rows(args, read_sources(manifest), None, "fc")
    params = [row.payload["params"] for row in rows]
    assert [p["keep_background"] for p in params] == [False, False, True]
    assert [p["steps"] for p in params] == [2, 3, 2] and [p["seed"] for p in params] == [12345, 12346, 12345]
    assert params[1]["light"]["azimuth"] == 30 and params[0]["light"] is None
    assert len({row.key for row in rows}) == 3  # different parameters: different resume keys


def test_an_uploaded_manifest_only_reaches_the_uploaded_files(tmp_path, folder):
    from core.batch.uploads import new_job_folder, prepare_upload_batch
    from core.params import RelightParams

    manifest = _write(tmp_path / "rows.csv", f"foreground\n{folder / 'a.png'}\n../../shots/b photo.png\na.png\n")
    job = new_job_folder(tmp_path / "jobs")
    params = RelightParams(prompt="x", matting="none")
    rows = prepare_upload_batch(job, [folder / "a.png"], params, "fc", manifest=manifest)
    assert [row.error is None for row in rows] == [True, False, True]
    assert "b photo.png does not exist" in rows[1].error
    assert all(Path(row.payload["foreground"]).parent == job / "inputs" for row in rows)
    assert [row.payload["seed"] for row in rows] == [12345, 12346, 12347]
