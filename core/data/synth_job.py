"""`data-synth` as a job: per image a matte, albedo, normals and K relit versions, written as training triplets."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DIRECTIONS = ("degrade", "relight")  # degrade: synthetic relight -> original photo; relight: the reverse
DESCRIBE_MODES = ("template", "vision")
DEFAULT_MAX_SIDE = 1024  # photos are scaled down to this longer side (0 = keep their size)
SEED_WORDS = 4  # 64-bit words of the image's sha256 mixed into its random stream
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
STEM_CHARS = 40


def image_stem(index: int, path: str) -> str:
    """'00003_my_photo': the row number keeps names unique, the cleaned file stem keeps them readable."""
    stem = _UNSAFE.sub("_", Path(path).stem).strip("_")[:STEM_CHARS] or "image"
    return f"{index:05d}_{stem}"


class SynthWorker:
    """Builds the matting, depth and description helpers once per process; one call per photo."""

    def __init__(self, config: dict) -> None:
        from core.data.geometry import NormalEstimator
        from core.finishing.matting import Matter
        from core.lighting.suggest import SuggestConfig
        from core.models.devices import resolve_placement

        self.config = config
        self.out = Path(config["out"])
        device = resolve_placement(config["device"]).device
        self.matter = Matter(Path(config["models_dir"]), device=device)
        self.normals = NormalEstimator(config["normals"], config["depth_source"], device)
        self.vision = SuggestConfig.from_env() if config["describe"] == "vision" else None

    def __call__(self, row, progress) -> dict[str, Any]:
        import cv2

        from core.data.albedo import extract_albedo, to_linear, to_uint8
        from core.data.dataset import IMAGES_DIR, metadata_row, write_png
        from core.data.describe import describe_light, white_balance_hex
        from core.data.sources import file_digest
        from core.data.synth import relight, sample_recipe
        from core.imaging.inputs import LoadedImage, load_image
        from core.lighting.lights import Light
        from core.lighting.preview import estimate_source_light

        config, path = self.config, row.payload["path"]
        total = 4 + config["per_image"]
        # 1. The photo, scaled to the working size.
        loaded = load_image(path)
        rgb, alpha = loaded.rgb, loaded.alpha
        height, width = rgb.shape[:2]
        scale = 1.0 if not config["max_side"] else min(1.0, config["max_side"] / max(height, width))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            alpha = None if alpha is None else cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)
        _step(progress, 1, total)
        # 2. Subject matte (GrabCut when the model cannot be had, with a notice).
        matting = self.matter.extract(LoadedImage(rgb, alpha), config["matting"], keep_background=True)
        matte = matting.matte
        _step(progress, 2, total)
        # 3. Albedo and normals.
        albedo = extract_albedo(rgb)
        normals = self.normals.estimate(rgb, matte)
        _step(progress, 3, total)
        # 4. The photo's own lighting, for its description.
        linear = to_linear(rgb)
        found = estimate_source_light(rgb, matte, normals)
        original_light = Light(
            azimuth=found.azimuth,
            elevation=found.elevation,
            ambient=found.ambient,
            softness=found.softness,
            color=white_balance_hex(linear, matte),
        )
        _step(progress, 4, total)
        # 5. Files shared by the K samples.
        stem = image_stem(row.index, path)
        folder = self.out / IMAGES_DIR
        photo = write_png(folder / f"{stem}_photo.png", rgb)
        albedo_file = write_png(folder / f"{stem}_albedo.png", to_uint8(albedo))
        matte_file = write_png(folder / f"{stem}_matte.png", np.rint(matte * 255).astype(np.uint8))
        outputs = [photo, albedo_file, matte_file]
        photo_text = self._describe(rgb, describe_light(original_light))
        # 6. K new lightings from this image's own random stream (its content and the seed decide it).
        digest = file_digest(Path(path))
        words = [int(digest[i * 16 : (i + 1) * 16], 16) for i in range(SEED_WORDS)]
        rng = np.random.default_rng([config["seed"], *words])
        rows = []
        for k in range(config["per_image"]):
            recipe = sample_recipe(rng, config["mix"])
            relit = to_uint8(relight(albedo, normals, recipe, rng, linear))
            relit_file = write_png(folder / f"{stem}_k{k}_{recipe.kind}.png", relit)
            outputs.append(relit_file)
            if config["direction"] == "degrade":
                pair, text = (relit_file, photo), photo_text
            else:
                pair, text = (photo, relit_file), self._describe(relit, describe_light(recipe.light))
            files = {"input_image": pair[0], "edited_image": pair[1], "albedo": albedo_file, "matte": matte_file}
            relative = {name: file.relative_to(self.out).as_posix() for name, file in files.items()}
            rows.append(metadata_row(relative, text, recipe.to_dict(), path))
            _step(progress, 5 + k, total)
        notices = [n for n in (matting.notice, self.normals.notice) if n]
        return {
            "outputs": [str(p) for p in outputs],
            "rows": rows,
            "matting": matting.method.value,
            "normals": self.normals.method,
            "original_light": original_light.to_dict(),
            "notices": notices,
        }

    def _describe(self, image: np.ndarray, template: str) -> str:
        """The vision model's phrase when configured and working, else the template."""
        from core.data.describe import describe_with_model

        if self.vision is None:
            return template
        return describe_with_model(image, self.vision) or template


def _step(progress, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


def build_rows(paths: Sequence[Path], params: dict[str, Any]) -> list:
    """One job row per photo, keyed by its bytes and every parameter that changes what is written."""
    import os

    from core.jobs import JobRow, job_key

    rows = []
    for index, path in enumerate(paths):
        readable = path.is_file() and os.access(path, os.R_OK)
        error = None if readable else f"{path} does not exist or cannot be read"
        key = job_key([path if readable else None], {**params, "path": str(path), "index": index})
        rows.append(JobRow(index, key, {"path": str(path)}, error))
    return rows
