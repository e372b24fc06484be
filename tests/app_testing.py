"""Helpers for the app tests: a step-counting Relighter over the tiny models, launching an app, test images."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.lighting.suggest import ENV_API_KEY, ENV_BASE_URL, SuggestConfig
from core.models.manager import ModelManager, ModelSettings
from core.service import Relighter
from ui.settings import AppSettings

SUBJECT_SIZE = 256


@dataclass
class JobRecord:
    """How one relight went, seen from inside the worker thread."""

    steps: int = 0
    total: int | None = None
    error: BaseException | None = None
    ended: threading.Event = field(default_factory=threading.Event)


class CountingRelighter(Relighter):
    """A real Relighter that also records, per job, the steps its worker ran and how the job ended."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.jobs: list[JobRecord] = []

    def relight(self, foreground, params, background=None, light_map=None, callback=None, cancel=None, save=True):
        """Relighter.relight, counting the steps and recording how the worker thread ended."""
        job = JobRecord()
        self.jobs.append(job)

        def counting(info) -> None:
            job.steps, job.total = job.steps + 1, info.overall_total
            if callback is not None:
                callback(info)

        try:
            return super().relight(foreground, params, background, light_map, counting, cancel, save)
        except BaseException as exc:
            job.error = exc
            raise
        finally:
            job.ended.set()


def tiny_model_settings(tiny_paths: dict[str, Path], models_dir: Path | None = None) -> ModelSettings:
    """CPU fp32 settings over the tiny test models (optionally another, e.g. empty, weights folder)."""
    return ModelSettings(
        base_model=str(tiny_paths["base"]),
        models_dir=models_dir or tiny_paths["models"],
        device="cpu",
        dtype="fp32",
        download=False,
    )


def app_settings(model: ModelSettings, outputs_dir: Path, concurrency: int = 1) -> AppSettings:
    """App settings for a test: results into `outputs_dir`, no suggestion server."""
    return AppSettings(model=model, outputs_dir=outputs_dir, concurrency=concurrency, suggest=SuggestConfig())


def free_port() -> int:
    """A local TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(demo) -> str:
    """Serve `demo` in the background on a free local port; returns its URL."""
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    return url


@dataclass
class RunningApp:
    """A launched app, a client connected to it and its step-counting engine."""

    demo: Any
    client: Any
    relighter: CountingRelighter
    root: Path


def start_app(create_demo: Callable[..., Any], tiny_paths: dict[str, Path], root: Path) -> RunningApp:
    """Build the app over the tiny models with no suggestion server in the environment, and launch it."""
    from gradio_client import Client

    with pytest.MonkeyPatch.context() as env:
        for name in (ENV_API_KEY, ENV_BASE_URL):
            env.delenv(name, raising=False)
        model = tiny_model_settings(tiny_paths)
        relighter = CountingRelighter(ModelManager(model), outputs_dir=root / "outputs")
        settings = AppSettings.from_env(model=model, outputs_dir=root / "outputs")
        demo = create_demo(relighter, settings)
    assert not settings.suggest.enabled
    return RunningApp(demo, Client(launch(demo), verbose=False), relighter, root)


def subject_image(path: Path, size: int = SUBJECT_SIZE, alpha: bool = False) -> Path:
    """A textured, evenly lit disc (the subject) on a dark backdrop, saved as PNG (with alpha if asked)."""
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.35) ** 2
    rgb = np.full((size, size, 3), 30, np.uint8)
    rgb[disc] = (rng.rand(int(disc.sum()), 3) * 40 + 150).astype(np.uint8)
    if alpha:
        rgba = np.dstack([rgb, np.where(disc, 255, 0).astype(np.uint8)])
        Image.fromarray(rgba, "RGBA").save(path)
    else:
        Image.fromarray(rgb).save(path)
    return path


def background_image(path: Path, width: int = 320, height: int = 256) -> Path:
    """A warm left-to-right gradient background."""
    ramp = np.linspace(40, 220, width, dtype=np.float32)[None, :, None]
    rgb = np.broadcast_to(ramp * np.array([1.0, 0.8, 0.6], np.float32), (height, width, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of an image file."""
    with Image.open(path) as image:
        return image.size


def read_rgb(path: str) -> np.ndarray:
    """An image file as HxWx3 uint8."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
