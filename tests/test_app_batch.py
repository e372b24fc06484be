"""The Batch tab and /batch API of both apps, launched for real over the tiny models and driven with gradio_client."""

from __future__ import annotations

import json
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from app_testing import background_image, read_rgb, start_app, subject_image, tiny_model_settings
from gradio_client import handle_file
from PIL import Image

from core.imaging.outputs import read_params
from core.models.manager import ModelManager
from core.params import Mode
from core.service import Relighter

FAST = {"steps": 2, "highres_scale": 1.0, "matting": "none", "width": 256, "height": 256}


def _inputs(root: Path) -> SimpleNamespace:
    """Two subjects, a second look, and a text file named .png."""
    root.mkdir(parents=True, exist_ok=True)
    broken = root / "broken.png"
    broken.write_text("not a PNG")
    second = root / "second.png"
    Image.fromarray(np.asarray(Image.open(subject_image(root / "one.png", size=96)))[::-1].copy()).save(second)
    return SimpleNamespace(one=root / "one.png", second=second, broken=broken)


def _zip_names(path: str) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return sorted(archive.namelist())


def test_fc_batch_endpoint_relights_every_file_and_reports_the_bad_one(tiny_paths, tmp_path):
    from gradio_fc import create_demo

    app = start_app(create_demo, tiny_paths, tmp_path / "fc")
    try:
        api = app.client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/batch"]
        assert [p["parameter_name"] for p in api["parameters"]][:3] == ["foregrounds", "manifest", "prompt"]
        files = _inputs(tmp_path / "in")
        uploads = [handle_file(str(p)) for p in (files.one, files.broken, files.second)]
        archive, results, gallery, progress, failed = app.client.predict(
            foregrounds=uploads, prompt="a toy, window light", light="Left Light", seed=40, **FAST, api_name="/batch"
        )
    finally:
        app.demo.close()
    assert [r["status"] for r in results] == ["done", "failed", "done"]
    assert progress.startswith("2 of 3 rows done, 1 failed")
    assert failed["data"] == [[1, "broken.png", results[1]["error"]]] and "broken.png" in results[1]["error"]
    assert [Path(g["image"]).name for g in gallery] == ["one_fc_00001.png", "second_fc_00001.png"]
    assert _zip_names(archive) == ["one_fc_00001.png", "results.jsonl", "second_fc_00001.png"]
    for record, seed in ((results[0], 40), (results[2], 42)):  # seed + row index
        params = read_params(record["outputs"][0])
        assert (params.seed, params.light.azimuth, params.steps) == (seed, 180, 2)
        assert params.prompt == "a toy, window light"
        assert record["params"] == params.to_dict()
    with zipfile.ZipFile(archive) as bundle:
        lines = [json.loads(line) for line in bundle.read("results.jsonl").decode().splitlines()]
        assert [line["row"] for line in lines] == [0, 1, 2]
        assert bundle.read("one_fc_00001.png") == Path(results[0]["outputs"][0]).read_bytes()


def test_fbc_batch_with_a_manifest_uses_each_rows_background(tiny_paths, tmp_path):
    from gradio_fbc import create_demo

    files = _inputs(tmp_path / "in")
    dark = background_image(tmp_path / "in" / "dark.png", width=96, height=96)
    warm = background_image(tmp_path / "in" / "warm.png")
    manifest = tmp_path / "in" / "rows.csv"
    lines = ["foreground,background,prompt", "one.png,dark.png,", 'second.png,,"a toy, sunset"', "missing.png,,"]
    manifest.write_text("\n".join(lines) + "\n")
    app = start_app(create_demo, tiny_paths, tmp_path / "fbc")
    try:
        uploads = [handle_file(str(p)) for p in (files.one, files.second, dark)]
        archive, results, _, progress, failed = app.client.predict(
            foregrounds=uploads, background=handle_file(str(warm)), manifest=handle_file(str(manifest)),
            prompt="a toy", bg_source="Use Background Image", **FAST, api_name="/batch",
        )  # fmt: skip
    finally:
        app.demo.close()
    assert [r["status"] for r in results] == ["done", "done", "failed"]
    assert Path(results[0]["background"]).name == "dark.png" and Path(results[1]["background"]).name == "warm.png"
    assert results[1]["params"]["prompt"] == "a toy, sunset" and results[0]["params"]["prompt"] == "a toy"
    assert "missing.png does not exist" in failed["data"][0][2] and "rows.csv line 4" in failed["data"][0][2]
    assert [Path(r["outputs"][0]).name for r in results[:2]] == ["one_fbc_00001.png", "second_fbc_00001.png"]
    assert "results.jsonl" in _zip_names(archive)
    # The two rows differ only in background and prompt; the conditions reached the model.
    assert not np.array_equal(read_rgb(results[0]["outputs"][0]), read_rgb(results[1]["outputs"][0]))


def test_stop_ends_the_batch_and_keeps_the_rows_already_done(tiny_paths, tmp_path):
    from ui.batch_tab import BatchHandlers

    files = _inputs(tmp_path / "in")
    relighter = Relighter(ModelManager(tiny_model_settings(tiny_paths)), outputs_dir=tmp_path / "out")
    handlers = BatchHandlers(relighter, Mode.FC, tmp_path / "out")
    request = SimpleNamespace(session_hash="session-1")
    values = {"prompt": "a toy", "light": "None", "seed": 1, **FAST}
    updates = handlers.run([str(files.one), str(files.second), str(files.one)], request=request,
                           progress=lambda *a, **k: None, **values)  # fmt: skip
    first = next(updates)
    assert first[3].startswith("1 of 3 rows done")
    stopper = threading.Timer(0.5, handlers.stop, kwargs={"request": request})  # lands while row 1 samples
    stopper.start()
    *_, last = updates
    archive, results, gallery, progress, failed = last
    assert "stopped" in progress and len(results) < 3 and failed == []
    assert _zip_names(archive) == sorted([*(Path(r["outputs"][0]).name for r in results), "results.jsonl"])
    assert len(gallery) == len(results) >= 1


def test_a_batch_with_no_files_is_one_message(tiny_paths, tmp_path):
    import gradio as gr

    from ui.batch_tab import BatchHandlers

    relighter = Relighter(ModelManager(tiny_model_settings(tiny_paths)), outputs_dir=tmp_path / "out")
    handlers = BatchHandlers(relighter, Mode.FC, tmp_path / "out")
    with pytest.raises(gr.Error, match="no foreground images were given"):
        next(handlers.run([], prompt="x", light="None", seed=1, **FAST))
