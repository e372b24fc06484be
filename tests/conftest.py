"""Shared fixtures: tiny SD 1.5 + IC-Light models written to a temp folder in the real layouts."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# No test may touch the network: make every Hub lookup fail fast instead of retrying for half a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ICLIGHT_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# The AMX attention kernel is compiled on first use: build it in a throwaway folder, not the user's cache.
if "ICLIGHT_CACHE_DIR" not in os.environ:
    os.environ["ICLIGHT_CACHE_DIR"] = tempfile.mkdtemp(prefix="iclight-test-cache-")
    atexit.register(shutil.rmtree, os.environ["ICLIGHT_CACHE_DIR"], ignore_errors=True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

from core.models.synthetic import write_base_model, write_offsets  # noqa: E402


@pytest.fixture
def native_cache(monkeypatch, tmp_path):
    """A private build folder for the native kernels, with their cached loaders cleared before and after."""
    from core.accel import attention, norms

    monkeypatch.setenv(attention.CACHE_ENV, str(tmp_path / "cache"))
    loaders = (attention.load_kernel, norms.load_ops)
    for loader in loaders:
        loader.cache_clear()
    yield tmp_path / "cache"
    for loader in loaders:
        loader.cache_clear()


@pytest.fixture
def broken_cc(tmp_path):
    """A C compiler that answers --version but fails every build with 'error: no'."""
    import stat

    compiler = tmp_path / "broken-cc"
    compiler.write_text("#!/bin/sh\necho 'fake 1.0'\n[ \"$1\" = --version ] && exit 0\necho 'error: no' >&2\nexit 1\n")
    compiler.chmod(compiler.stat().st_mode | stat.S_IEXEC)
    return compiler


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory) -> dict[str, Path]:
    """{'base': diffusers folder, 'models': folder with iclight_sd15_{fc,fcon,fbc}.safetensors}."""
    from diffusers import UNet2DConditionModel

    root = tmp_path_factory.mktemp("tiny")
    base = write_base_model(root / "base")
    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")
    write_offsets(unet, root / "models")
    return {"base": base, "models": root / "models"}


@pytest.fixture(scope="session")
def tiny_settings(tiny_paths):
    from core.models.manager import ModelSettings

    return ModelSettings(
        base_model=str(tiny_paths["base"]), models_dir=tiny_paths["models"], device="cpu", dtype="fp32", download=False
    )


@pytest.fixture(scope="session")
def manager(tiny_settings):
    from core.models.manager import ModelManager

    return ModelManager(tiny_settings)


@pytest.fixture(scope="session")
def fc_models(manager):
    return manager.get("fc")


@pytest.fixture(scope="session")
def fbc_models(manager):
    return manager.get("fbc")


@pytest.fixture()
def fg_image() -> np.ndarray:
    """A deterministic 'subject': a bright disc on grey with texture, 100x80."""
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[:100, :80]
    disc = ((yy - 50) ** 2 + (xx - 40) ** 2) < 30**2
    img = np.full((100, 80, 3), 127, np.uint8)
    img[disc] = (rng.rand(int(disc.sum()), 3) * 120 + 100).astype(np.uint8)
    return img


@pytest.fixture()
def bg_image() -> np.ndarray:
    return (np.random.RandomState(1).rand(70, 90, 3) * 255).astype(np.uint8)
