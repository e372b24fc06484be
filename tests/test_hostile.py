"""A catalogue of hostile and broken input: the CLI, /relight, /normals, /preview, /suggest and settings from a PNG.

Each case asserts the exact one-line message a user or API client gets, and that the server answers afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import zlib
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from app_testing import background_image, start_app, subject_image, tiny_model_settings
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image, PngImagePlugin

from core.cli import main as cli_main
from core.errors import ICLightError
from core.imaging.outputs import PARAMS_KEY, read_params, remove_stale_temps
from core.lighting.suggest import MOODS
from core.models.manager import ModelManager
from core.params import MAX_PROMPT_CHARS, RelightParams
from core.service import Relighter
from ui.form import FBC_CHOICES, FC_CHOICES

FAST = {"steps": 2, "highres_scale": 1.0, "matting": "none", "width": 256, "height": 256}
NO_IMAGE = "no foreground image was given; upload (or paste) one first"
LONG = "x" * (MAX_PROMPT_CHARS + 1)
TOO_LONG = f"should be at most 4,000 characters but is {MAX_PROMPT_CHARS + 1:,} characters long"


def one_of(name: str, choices) -> str:
    return f"{name} should be one of {', '.join(repr(c) for c in choices)} but is"


@pytest.fixture(scope="module")
def fc(tiny_paths, tmp_path_factory):
    """One launched fc app for the whole catalogue."""
    from gradio_fc import create_demo

    app = start_app(create_demo, tiny_paths, tmp_path_factory.mktemp("hostile_fc"))
    notes = app.root / "notes.png"
    notes.write_text("this is not a picture")
    yield SimpleNamespace(
        **vars(app),
        subject=handle_file(str(subject_image(app.root / "subject.png"))),
        notes=handle_file(str(notes)),
    )
    app.demo.close()


@pytest.fixture(scope="module")
def fbc(tiny_paths, tmp_path_factory):
    """One launched fbc app, for /normals and the fbc form."""
    from gradio_fbc import create_demo

    app = start_app(create_demo, tiny_paths, tmp_path_factory.mktemp("hostile_fbc"))
    yield SimpleNamespace(
        **vars(app),
        subject=handle_file(str(subject_image(app.root / "subject.png", alpha=True))),
        background=handle_file(str(background_image(app.root / "background.png"))),
    )
    app.demo.close()


def answers(app) -> None:
    """The server still serves: an instant preview of the test subject comes back."""
    result = app.client.predict(image=app.subject, azimuth=90, api_name="/preview")
    assert Path(result).is_file()


def refused(app, api_name: str, message: str, **values) -> None:
    """`api_name` with `values` fails with exactly `message` (no traceback, no null error), then the app answers."""
    with pytest.raises(AppError) as info:
        app.client.predict(**values, api_name=api_name)
    assert str(info.value) == message
    answers(app)


# -- /relight (fc): strict types and ranges ------------------------------------------------------------------------

RELIGHT_CASES = [
    ({"keep_background": "false"}, "keep_background should be true or false but is 'false'"),
    ({"keep_background": "no"}, "keep_background should be true or false but is 'no'"),
    ({"restore_details": 1}, "restore_details should be true or false but is 1"),
    ({"randomize_seed": "yes"}, "randomize_seed should be true or false but is 'yes'"),
    ({"seed": 1.5}, "seed should be an integer in [0, 4294967295] but is 1.5"),
    ({"seed": -1}, "seed should be an integer in [0, 4294967295] but is -1"),
    ({"seed": 2**32}, "seed should be an integer in [0, 4294967295] but is 4294967296"),
    ({"seed": "12"}, "seed should be an integer in [0, 4294967295] but is '12'"),
    ({"seed": 10**30}, "seed should be an integer in [0, 4294967295] but is 1000000000000000000000000000000"),
    ({"width": 256.5}, "width should be an integer in [256, 1024] but is 256.5"),
    ({"width": 2048}, "width should be an integer in [256, 1024] but is 2048"),
    ({"width": "512"}, "width should be an integer in [256, 1024] but is '512'"),
    ({"width": True}, "width should be an integer in [256, 1024] but is True"),
    ({"height": 100}, "height should be an integer in [256, 1024] but is 100"),
    ({"num_images": 0}, "num_images should be an integer in [1, 12] but is 0"),
    ({"num_images": 13}, "num_images should be an integer in [1, 12] but is 13"),
    ({"steps": 2.5}, "steps should be an integer in [1, 100] but is 2.5"),
    ({"steps": 0}, "steps should be an integer in [1, 100] but is 0"),
    ({"cfg": "high"}, "cfg should be a number in [1, 32] but is 'high'"),
    ({"cfg": 0.5}, "cfg should be a number in [1, 32] but is 0.5"),
    ({"cfg": 33}, "cfg should be a number in [1, 32] but is 33"),
    ({"lowres_denoise": 0.05}, "lowres_denoise should be a number in [0.1, 1] but is 0.05"),
    ({"highres_scale": 5}, "highres_scale should be a number in [1, 3] but is 5"),
    ({"highres_denoise": None}, "highres_denoise should be a number in [0.1, 1] but is None"),
    ({"detail_radius": 0.5}, "detail_radius should be a number in [1, 20] but is 0.5"),
    ({"preserve_color": -0.1}, "preserve_color should be a number in [0, 1] but is -0.1"),
    ({"light_color": "#-f-f-f"}, "light_color should be a colour as #rrggbb (e.g. #ffb070) but is '#-f-f-f'"),
    ({"light_color": "red"}, "light_color should be a colour as #rrggbb (e.g. #ffb070) but is 'red'"),
    ({"light_color": "#fff"}, "light_color should be a colour as #rrggbb (e.g. #ffb070) but is '#fff'"),
    ({"light_color": 16777215}, "light_color should be a colour as #rrggbb (e.g. #ffb070) but is 16777215"),
    ({"azimuth": 400}, "azimuth should be a number in [0, 360] but is 400"),
    ({"elevation": -5}, "elevation should be a number in [0, 90] but is -5"),
    ({"light_intensity": 3}, "light_intensity should be a number in [0, 2] but is 3"),
    ({"ambient": "0.5"}, "ambient should be a number in [0, 1] but is '0.5'"),
    ({"light": "Sideways"}, one_of("light", FC_CHOICES) + " 'Sideways'"),
    (
        {"sampler": "plms"},
        one_of("sampler", ["dpmpp_2m_sde_karras", "dpmpp_2m_karras", "ddim", "euler_a"]) + " 'plms'",
    ),
    ({"matting": "magic"}, one_of("matting", ["rmbg", "birefnet", "alpha", "grabcut", "none"]) + " 'magic'"),
    ({"upscale": "x8"}, one_of("upscale", ["off", "x2", "x4", "1080p"]) + " 'x8'"),
    ({"prompt": LONG}, f"prompt {TOO_LONG}"),
    ({"negative_prompt": LONG}, f"negative_prompt {TOO_LONG}"),
    ({"added_prompt": 123}, "added_prompt should be a string but is 123"),
    ({"prompt": ["a", "ball"]}, "prompt should be a string but is ['a', 'ball']"),
]


def case_id(values: dict) -> str:
    return ",".join(f"{key}={str(value)[:12]}" for key, value in values.items())


@pytest.mark.parametrize(("values", "message"), RELIGHT_CASES, ids=[case_id(v) for v, _ in RELIGHT_CASES])
def test_relight_refuses_a_bad_value_by_name(fc, values, message):
    refused(fc, "/relight", message, **{"foreground": fc.subject, "prompt": "a ball", **FAST, **values})
    assert all(job.steps == 0 for job in fc.relighter.jobs)  # refused before any sampling


def test_relight_without_an_image_or_with_a_file_that_is_not_one(fc):
    refused(fc, "/relight", NO_IMAGE, prompt="a ball", **FAST)
    message = (
        "Foreground: cannot read the file as an image (cannot identify image file 'notes.png'); "
        "upload a PNG, JPEG, WebP image"
    )
    refused(fc, "/relight", message, foreground=fc.notes, prompt="a ball", **FAST)


def test_control_characters_never_reach_the_model_or_the_metadata(fc):
    result = fc.client.predict(foreground=fc.subject, prompt="a\x1b[2J ball\nlit\x07", **FAST, api_name="/relight")
    params = read_params(result[5][0])
    assert params.prompt == "a[2J ball lit"
    assert "\x1b" not in json.dumps(params.to_dict())
    answers(fc)


# -- /preview and /suggest -----------------------------------------------------------------------------------------

PREVIEW_CASES = [
    ({"color": "#-f-f-f"}, "light_color should be a colour as #rrggbb (e.g. #ffb070) but is '#-f-f-f'"),
    ({"azimuth": "left"}, "azimuth should be a number in [0, 360] but is 'left'"),
    ({"elevation": 91}, "elevation should be a number in [0, 90] but is 91"),
    ({"intensity": True}, "light_intensity should be a number in [0, 2] but is True"),
    ({"ambient": 2}, "ambient should be a number in [0, 1] but is 2"),
]


@pytest.mark.parametrize(("values", "message"), PREVIEW_CASES, ids=[case_id(v) for v, _ in PREVIEW_CASES])
def test_preview_refuses_a_bad_light_by_name(fc, values, message):
    refused(fc, "/preview", message, image=fc.subject, **values)


def test_preview_of_a_file_that_is_not_an_image(fc):
    message = (
        "Foreground: cannot read the file as an image (cannot identify image file 'notes.png'); "
        "upload a PNG, JPEG, WebP image"
    )
    refused(fc, "/preview", message, image=fc.notes)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mood": "furious"}, one_of("mood", ["", *MOODS]) + " 'furious'"),
        ({"mood": 5}, one_of("mood", ["", *MOODS]) + " 5"),
        ({"mood": ["warm"]}, one_of("mood", ["", *MOODS]) + " ['warm']"),
    ],
)
def test_suggest_refuses_a_mood_it_does_not_offer(fc, values, message):
    refused(fc, "/suggest", message, image=fc.subject, **values)


def test_suggest_without_an_image(fc):
    refused(fc, "/suggest", NO_IMAGE, image=None, mood="warm")


# -- /normals and the fbc form -------------------------------------------------------------------------------------

FBC_CASES = [
    ("/normals", {"bg_source": "Sideways"}, one_of("bg_source", FBC_CHOICES) + " 'Sideways'"),
    ("/normals", {"keep_background": "no"}, "keep_background should be true or false but is 'no'"),
    ("/normals", {"width": 300.5}, "width should be an integer in [256, 1024] but is 300.5"),
    ("/normals", {"prompt": LONG}, f"prompt {TOO_LONG}"),
    ("/relight", {"highres_denoise": 0.95}, "highres_denoise should be a number in [0.1, 0.9] but is 0.95"),
    (
        "/relight",
        {"light_color": "#12345g"},
        "light_color should be a colour as #rrggbb (e.g. #ffb070) but is '#12345g'",
    ),
]


@pytest.mark.parametrize(
    ("api_name", "values", "message"), FBC_CASES, ids=[f"{a}:{case_id(v)}" for a, v, _ in FBC_CASES]
)
def test_fbc_refuses_a_bad_value_by_name(fbc, api_name, values, message):
    form = {"foreground": fbc.subject, "background": fbc.background, "prompt": "a ball", **FAST}
    refused(fbc, api_name, message, **{**form, **values})


def test_normals_without_an_image(fbc):
    refused(fbc, "/normals", NO_IMAGE, background=fbc.background, prompt="a ball", **FAST)


# -- settings from a PNG (the apps' "Load settings" and the CLI's --from-png) --------------------------------------


def png_with_text(path: Path, text: dict[str, str], compressed: bool = False) -> Path:
    """A small PNG carrying `text` (zTXt chunks when `compressed`)."""
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value, zip=compressed)
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(path, pnginfo=info)
    return path


def ztxt_bomb(path: Path) -> Path:
    """A PNG whose zTXt chunk is 400 bytes on disk and 64 MB decompressed."""
    png_with_text(path, {})
    data = path.read_bytes()
    body = PARAMS_KEY.encode() + b"\0\0" + zlib.compress(b"{" * (64 * 1024 * 1024), 9)
    chunk = len(body).to_bytes(4, "big") + b"zTXt" + body
    chunk += zlib.crc32(b"zTXt" + body).to_bytes(4, "big")
    end = data.rindex(b"IEND") - 4
    path.write_bytes(data[:end] + chunk + data[end:])
    return path


def settings(params: dict) -> dict[str, str]:
    return {PARAMS_KEY: json.dumps({**RelightParams().to_dict(), **params})}


def digits_of(n: int) -> str:
    return f"an integer of about {int(n.bit_length() * 0.30102999566398120):,} digits"


PNG_CASES = [
    ("deep", lambda p: png_with_text(p, {PARAMS_KEY: "[" * 100_000 + "]" * 100_000}),
     "'deep.png' has IC-Light metadata nested too deeply to be settings"),
    ("deep_object", lambda p: png_with_text(p, {PARAMS_KEY: '{"a":' * 50_000 + "1" + "}" * 50_000}),
     "'deep_object.png' has IC-Light metadata nested too deeply to be settings"),
    ("huge_seed", lambda p: png_with_text(p, {PARAMS_KEY: '{"seed": ' + "9" * 5000 + "}"}),
     "'huge_seed.png' has IC-Light metadata that cannot be read (Exceeds the limit (4300 digits) for integer "
     "string conversion: value has 5000 digits)"),
    ("long_seed", lambda p: png_with_text(p, settings({"seed": 10**4000})),
     f"seed should be in [0, 4294967295] but is {digits_of(10**4000)}"),
    ("bomb", ztxt_bomb, "'bomb.png' has a PNG text chunk larger than 1 MB when decompressed; not reading it"),
    ("plain", lambda p: png_with_text(p, {}),
     "'plain.png' has no IC-Light metadata (no 'iclight_params' text chunk): only PNGs saved by this app, and not "
     "re-encoded since, can restore settings"),
    ("list", lambda p: png_with_text(p, {PARAMS_KEY: "[1, 2]"}),
     "'list.png' has IC-Light metadata that is not a JSON object: '[1, 2]'"),
    ("extra", lambda p: png_with_text(p, settings({"extra": 5})), "extra should be a mapping but is 5"),
    ("light", lambda p: png_with_text(p, settings({"light": "left"})),
     "light should be a Light or None but is 'left'"),
    ("bool", lambda p: png_with_text(p, settings({"keep_background": "yes"})),
     "keep_background should be true or false but is 'yes'"),
    ("prompt", lambda p: png_with_text(p, settings({"prompt": LONG}), compressed=True), f"prompt {TOO_LONG}"),
    ("colour", lambda p: png_with_text(p, settings({"light": {"color": "#-f-f-f"}})),
     "color should be a hex colour like '#ffcc88' but is '#-f-f-f'"),
    ("nan", lambda p: png_with_text(p, settings({"cfg": float("nan")})), "cfg should be in [1.0, 32.0] but is nan"),
]  # fmt: skip


@pytest.fixture(scope="module")
def hostile_pngs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hostile_pngs")
    return {name: make(folder / f"{name}.png") for name, make, _ in PNG_CASES}


@pytest.mark.parametrize(("name", "message"), [(n, m) for n, _, m in PNG_CASES], ids=[n for n, _, _ in PNG_CASES])
def test_settings_from_a_hostile_png_are_refused_in_one_line(fc, hostile_pngs, name, message):
    with pytest.raises(ICLightError) as info:
        read_params(hostile_pngs[name])
    assert str(info.value) == message
    from ui.handlers import AppHandlers

    handlers = AppHandlers(fc.relighter, "fc")
    with pytest.raises(gr.Error) as shown:  # the app's "Load settings": the same line
        handlers.read_settings(str(hostile_pngs[name]))
    assert shown.value.message == message
    answers(fc)


# -- the CLI ---------------------------------------------------------------------------------------------------------


def cli(args, capsys) -> tuple[int, str]:
    code = cli_main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", ["deep", "huge_seed", "bomb", "extra"])
def test_cli_from_a_hostile_png_is_one_line(hostile_pngs, tmp_path, capsys, name):
    fg = subject_image(tmp_path / "fg.png", size=64)
    code, err = cli(["relight", "--from-png", hostile_pngs[name], "--fg", fg, "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert err == f"error: {dict((n, m) for n, _, m in PNG_CASES)[name]}\n"


def test_cli_refuses_a_long_prompt_before_loading_anything(tmp_path, capsys):
    fg = subject_image(tmp_path / "fg.png", size=64)
    code, err = cli(["relight", "--fg", fg, "--prompt", LONG, "--out", tmp_path / "out"], capsys)
    assert (code, err) == (2, f"error: prompt {TOO_LONG}\n")


def test_cli_refuses_a_malformed_colour(tmp_path, capsys):
    fg = subject_image(tmp_path / "fg.png", size=64)
    args = ["relight", "--fg", fg, "--prompt", "a", "--light", "left", "--light-color", "#-f-f-f", "--out", tmp_path]
    assert cli(args, capsys) == (2, "error: color should be a hex colour like '#ffcc88' but is '#-f-f-f'\n")


def test_cli_escapes_control_characters_in_file_names(tmp_path, capsys):
    missing = tmp_path / "sneaky\x1b[2J.png"
    code, err = cli(["relight", "--fg", missing, "--prompt", "a", "--out", tmp_path / "out"], capsys)
    assert code == 2
    assert err == f"error: --fg {tmp_path}/sneaky\\x1b[2J.png does not exist or is not a file\n"


def test_a_killed_runs_temp_file_is_removed_by_the_next_run(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    dead = out / ".iclight_fc.999999999.k2j3.png.tmp"  # no such process
    alive = out / ".iclight_fc.1.a8d1.png.tmp"  # pid 1 runs: another writer, still busy
    other = out / "notes.png.tmp"  # not ours
    for path in (dead, alive, other):
        path.write_bytes(b"partial")
    fg = subject_image(tmp_path / "fg.png", size=64)
    cli(["relight", "--fg", fg, "--prompt", LONG, "--out", out], capsys)  # fails, but only after the clean-up
    assert not dead.exists() and alive.exists() and other.exists()
    old = os.path.getmtime(alive) - 7200
    os.utime(alive, (old, old))  # two hours old: left over, whoever wrote it
    assert remove_stale_temps(out) == [alive]


# -- start-up: settings and the port --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ICLIGHT_QUEUE_SIZE": "abc"}, "ICLIGHT_QUEUE_SIZE should be an integer but is 'abc'"),
        ({"ICLIGHT_QUEUE_SIZE": "0"}, "ICLIGHT_QUEUE_SIZE should be an integer >= 1 but is 0"),
        ({"ICLIGHT_CONCURRENCY": "-1"}, "ICLIGHT_CONCURRENCY should be an integer >= 1 but is -1"),
        ({"ICLIGHT_CONCURRENCY": "1.5"}, "ICLIGHT_CONCURRENCY should be an integer but is '1.5'"),
        ({"GRADIO_SERVER_PORT": "http"}, "GRADIO_SERVER_PORT should be an integer but is 'http'"),
        ({"GRADIO_SERVER_PORT": "70000"}, "GRADIO_SERVER_PORT should be an integer between 1 and 65535 but is 70000"),
    ],
)
def test_bad_start_up_settings_are_one_line(monkeypatch, capsys, env, message):
    from ui.settings import main

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        main(lambda settings: pytest.fail("no app is built with bad settings"), "test app", [])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_a_taken_port_is_one_line(tiny_paths, tmp_path, monkeypatch, capsys):
    from gradio_fc import create_demo
    from ui.settings import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flags = ["--port", str(port), "--server-name", "127.0.0.1", "--base-model", str(tiny_paths["base"]),
                 "--models-dir", str(tiny_paths["models"]), "--outputs-dir", str(tmp_path / "out")]  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(create_demo, "test app", flags)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: cannot serve on 127.0.0.1:{port}: ")


# -- the outputs folder --------------------------------------------------------------------------------------------


def test_an_unusable_outputs_folder_stops_the_run_before_sampling(tiny_paths, tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the folder should be")
    relighter = Relighter(ModelManager(tiny_model_settings(tiny_paths)), outputs_dir=blocker)
    fg = subject_image(tmp_path / "fg.png", size=64)
    params = RelightParams(prompt="a ball", matting="none", steps=2, width=64, height=64, highres_scale=1.0)
    with pytest.raises(ICLightError) as info:
        relighter.relight(fg, params)
    assert str(info.value) == (
        "the outputs folder 'results' is a file, not a folder; nothing was run (free space or fix the folder's "
        "permissions)"
    )


def test_a_failed_save_still_returns_the_images_with_a_notice(tiny_paths, tmp_path, monkeypatch):
    relighter = Relighter(ModelManager(tiny_model_settings(tiny_paths)), outputs_dir=tmp_path / "out")
    fg = subject_image(tmp_path / "fg.png", size=64)
    params = RelightParams(prompt="a ball", matting="none", steps=2, width=64, height=64, highres_scale=1.0)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(relighter, "save", full_disk)
    outcome = relighter.relight(fg, params)
    assert len(outcome.images) == 1 and outcome.images[0].shape == (64, 64, 3)
    assert outcome.paths == []
    assert outcome.notices == ["the results could not be saved (No space left on device); download them here"]


def test_uploads_over_the_cap_are_refused_before_gradio_stores_them(tmp_path, monkeypatch):
    import httpx

    from core.lighting.suggest import SuggestConfig
    from core.models.manager import ModelSettings
    from gradio_fc import create_demo
    from ui.settings import UPLOAD_CACHE, AppSettings, launch_options

    monkeypatch.setenv("ICLIGHT_MAX_UPLOAD_MB", "0.01")  # 10,485 bytes
    model = ModelSettings(base_model=str(tmp_path / "none"), models_dir=tmp_path, device="cpu", download=False)
    settings = AppSettings(model=model, outputs_dir=tmp_path / "out", suggest=SuggestConfig())
    demo = create_demo(settings=settings)
    assert demo.delete_cache == UPLOAD_CACHE  # uploads do not pile up in the server's cache
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = {**launch_options(settings), "server_name": "127.0.0.1", "server_port": port}
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **options)
    try:
        big = np.random.RandomState(0).randint(0, 255, (200, 200, 3), np.uint8)
        Image.fromarray(big).save(tmp_path / "big.png")
        upload = {"files": ("big.png", (tmp_path / "big.png").read_bytes(), "image/png")}
        refused = httpx.post(url + "gradio_api/upload", files=upload)
        assert (refused.status_code, refused.text) == (
            413,
            "File size exceeded maximum allowed size of 10485 bytes.",
        )
        small = subject_image(tmp_path / "small.png", size=32)
        accepted = httpx.post(url + "gradio_api/upload", files={"files": ("small.png", small.read_bytes())})
        assert accepted.status_code == 200  # and the server goes on answering
    finally:
        demo.close()
