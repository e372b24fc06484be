"""Tests for db_examples/: every example row points at a real image with valid labels, sizes and credits."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import db_examples
from core.params import MAX_SEED, BGSource, LightDirection, Mode, RelightParams

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = {".jpg", ".png"}
SIZE_BUDGET = 2_500_000  # bytes for the whole folder; these files are committed
MIN_SIDE, MAX_SIDE, SIDE_STEP = 256, 1024, 64  # the apps' width/height sliders
ASPECT_TOLERANCE = 0.12  # an example's width/height should roughly match its foreground's shape
HEAVY_MODULES = ("numpy", "PIL", "cv2", "skimage", "torch", "gradio")

LIGHT_LABELS = {direction.label for direction in LightDirection}
# 'Custom Light' needs a Light object that an example row cannot carry, so rows use the official choices only.
BG_LABELS = {source.label for source in BGSource if source is not BGSource.LIGHT}


def image_files() -> list[Path]:
    return sorted(p for p in db_examples.EXAMPLES_DIR.iterdir() if p.suffix in IMAGE_SUFFIXES)


def referenced_paths() -> list[str]:
    paths = [row[0] for row in db_examples.fc_examples]
    paths += [row[0] for row in db_examples.fbc_examples] + [row[1] for row in db_examples.fbc_examples]
    return paths + db_examples.background_gallery


def load_prepare_script(monkeypatch):
    """scripts/prepare_examples.py as a module (its heavy imports happen inside functions only)."""
    spec = importlib.util.spec_from_file_location("prepare_examples", ROOT / "scripts" / "prepare_examples.py")
    module = importlib.util.module_from_spec(spec)
    # Dataclasses look their module up in sys.modules while the class body runs.
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_import_is_light():
    code = f"import sys, db_examples; print([m for m in {HEAVY_MODULES!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_examples_dir_is_this_package():
    assert isinstance(db_examples.EXAMPLES_DIR, Path)
    assert db_examples.EXAMPLES_DIR == (ROOT / "db_examples").resolve()


@pytest.mark.parametrize("path", sorted(set(referenced_paths())), ids=lambda p: Path(p).name)
def test_referenced_file_is_an_image(path):
    assert isinstance(path, str)
    file = Path(path)
    assert file.is_absolute() and file.parent == db_examples.EXAMPLES_DIR
    with Image.open(file) as image:
        image.load()  # decodes the whole file, so a truncated one fails here
        assert image.mode in ("RGB", "RGBA"), image.mode
        assert all(MIN_SIDE <= side <= MAX_SIDE for side in image.size), image.size


@pytest.mark.parametrize("row", db_examples.fc_examples, ids=lambda row: Path(row[0]).stem)
def test_fc_row(row):
    assert len(row) == 6
    image, prompt, light, width, height, seed = row
    assert isinstance(prompt, str) and prompt.strip()
    assert light in LIGHT_LABELS
    _check_size(width, height, image)
    # The engine accepts the row as it stands.
    RelightParams(mode=Mode.FC, prompt=prompt, width=width, height=height, seed=seed)
    assert isinstance(seed, int) and 0 <= seed <= MAX_SEED


@pytest.mark.parametrize("row", db_examples.fbc_examples, ids=lambda row: Path(row[0]).stem)
def test_fbc_row(row):
    assert len(row) == 7
    image, background, prompt, source, width, height, seed = row
    assert Path(image).name.startswith("fg_") and Path(background).name.startswith("bg_")
    assert isinstance(prompt, str) and prompt.strip()
    assert source in BG_LABELS
    _check_size(width, height, image)
    RelightParams(mode=Mode.FBC, prompt=prompt, width=width, height=height, seed=seed)
    assert isinstance(seed, int) and 0 <= seed <= MAX_SEED


def _check_size(width: int, height: int, image: str) -> None:
    for side in (width, height):
        assert isinstance(side, int) and not isinstance(side, bool)
        assert side % SIDE_STEP == 0 and MIN_SIDE <= side <= MAX_SIDE, side
    with Image.open(image) as opened:
        image_aspect = opened.width / opened.height
    assert abs(width / height - image_aspect) / image_aspect < ASPECT_TOLERANCE, (width, height, opened.size)


def test_example_counts_and_variety():
    assert 6 <= len(db_examples.fc_examples) <= 12
    assert 5 <= len(db_examples.fbc_examples) <= 10
    assert 8 <= len(db_examples.background_gallery) <= 12
    assert len(set(db_examples.background_gallery)) == len(db_examples.background_gallery)
    # Both apps show the alpha-matting path on a real cut-out and several light directions.
    assert any(row[0].endswith(".png") for row in db_examples.fc_examples)
    assert any(row[0].endswith(".png") for row in db_examples.fbc_examples)
    assert len({row[2] for row in db_examples.fc_examples}) >= 4
    assert len({row[3] for row in db_examples.fbc_examples}) >= 3


def test_every_background_file_is_in_the_gallery():
    backgrounds = {str(p) for p in image_files() if p.name.startswith("bg_")}
    assert backgrounds == set(db_examples.background_gallery)


@pytest.mark.parametrize("path", [p for p in image_files() if p.suffix == ".png"], ids=lambda p: p.name)
def test_cutouts_have_a_real_alpha(path):
    with Image.open(path) as image:
        assert image.mode == "RGBA"
        alpha = np.asarray(image)[..., 3]
    covered = float((alpha > 127).mean())
    assert 0.05 < covered < 0.95, covered  # neither empty nor the whole frame
    assert alpha.min() == 0 and alpha.max() == 255
    assert ((alpha > 0) & (alpha < 255)).any()  # feathered edges, not a hard staircase


def test_credits_name_every_file():
    credits = (db_examples.EXAMPLES_DIR / "CREDITS.md").read_text(encoding="utf-8")
    for path in image_files():
        assert f"`{path.name}`" in credits, path.name
    named = set(re.findall(r"`((?:fg|bg)_[\w.-]+)`", credits))
    assert named == {p.name for p in image_files()}  # no credit for a file that is gone
    for line in credits.splitlines():
        if line.startswith("| `"):
            assert re.search(r"\| (Public domain|CC0 1\.0) \|", line), line


def test_folder_fits_the_size_budget():
    total = sum(p.stat().st_size for p in db_examples.EXAMPLES_DIR.iterdir() if p.is_file())
    assert total < SIZE_BUDGET, total


def test_prepare_script_makes_exactly_these_files(monkeypatch):
    script = load_prepare_script(monkeypatch)
    assert {asset.name for asset in script.ASSETS} == {p.name for p in image_files()}
    assert script.OUT_DIR == db_examples.EXAMPLES_DIR
    for asset in script.ASSETS:
        assert asset.sample is None or asset.sample in script.SKIMAGE_SOURCES, asset
