"""Surface normals for synthesis: a monocular depth model through transformers, else the silhouette estimate."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import CorruptWeightsError, IncompatibleModelError, InvalidParameterError, WeightsNotFoundError

logger = logging.getLogger(__name__)

NORMALS_MODES = ("auto", "depth", "silhouette")
DEPTH_HUB_ID = "depth-anything/Depth-Anything-V2-Small-hf"
DEPTH_LOCAL_NAME = "Depth-Anything-V2-Small-hf"  # folder name under --models-dir
DEPTH_ENV = "ICLIGHT_DEPTH_MODEL"
# Depth Anything predicts relative inverse depth with no unit; its gradients are scaled so that the steepest few
# percent of the subject lean about RELIEF_LEAN from the camera axis, which looks like real relief on faces and
# products alike.
RELIEF_PERCENTILE = 95.0
RELIEF_LEAN = 1.0  # tan of the lean at that percentile (45 degrees)
DEPTH_SMOOTH = 1.0  # px blur of the depth map before differentiating (its upsampling leaves a grid)


def depth_source(models_dir: Path | None, override: str | None = None) -> str:
    """Where the depth model comes from: --depth-model, $ICLIGHT_DEPTH_MODEL, <models_dir>/<name>, else the Hub."""
    if override:
        return override
    env = os.environ.get(DEPTH_ENV, "").strip()
    if env:
        return env
    if models_dir is not None and (Path(models_dir) / DEPTH_LOCAL_NAME).is_dir():
        return str(Path(models_dir) / DEPTH_LOCAL_NAME)
    return DEPTH_HUB_ID


def load_depth_pipeline(source: str, device: str = "cpu") -> Any:
    """transformers' depth-estimation pipeline for a Hub id or local folder; WeightsNotFoundError when not had."""
    from transformers import pipeline

    from core.data.hub import resolve_folder

    folder = resolve_folder(source, "depth model")
    try:
        return pipeline("depth-estimation", model=folder, device=device)
    except OSError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise WeightsNotFoundError(f"depth model {source} cannot be loaded: {first}") from exc
    except (ValueError, KeyError, RuntimeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise IncompatibleModelError(f"depth model {source} is not a depth-estimation model: {first}") from exc


def normals_from_depth(inverse_depth: np.ndarray, matte: np.ndarray | None = None) -> np.ndarray:
    """HxWx3 unit normals (x right, y up, z to camera) from relative inverse depth (larger = nearer)."""
    field = cv2.GaussianBlur(inverse_depth.astype(np.float32), (0, 0), DEPTH_SMOOTH, borderType=cv2.BORDER_REPLICATE)
    gx = cv2.Sobel(field, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8, borderType=cv2.BORDER_REPLICATE)
    gy = -cv2.Sobel(field, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8, borderType=cv2.BORDER_REPLICATE)  # y up
    slope = np.hypot(gx, gy)
    region = slope if matte is None or not (np.asarray(matte) >= 0.5).any() else slope[np.asarray(matte) >= 0.5]
    scale = RELIEF_LEAN / max(float(np.percentile(region, RELIEF_PERCENTILE)), 1e-6)
    # Nearer is larger: the surface rises toward the camera where the field grows, so the normal leans against it.
    normals = np.stack([-gx * scale, -gy * scale, np.ones_like(field)], axis=-1)
    return (normals / np.linalg.norm(normals, axis=-1, keepdims=True)).astype(np.float32)


def silhouette_normals(image: np.ndarray, matte: np.ndarray) -> np.ndarray:
    """The preview relighter's estimate: the matte's silhouette inflated, plus luminance relief."""
    from core.lighting.preview import estimate_normals

    return estimate_normals(matte, image)


class NormalEstimator:
    """Normals per image by `mode`: 'depth' (model, or an error), 'silhouette', or 'auto' (depth, else silhouette)."""

    def __init__(self, mode: str, source: str, device: str = "cpu") -> None:
        if mode not in NORMALS_MODES:
            raise InvalidParameterError(f"normals should be one of {', '.join(NORMALS_MODES)} but is {mode!r}")
        self.mode, self.source, self.device = mode, source, device
        self.notice: str | None = None  # set when 'auto' fell back to the silhouette estimate
        self._pipe: Any = None
        if mode != "silhouette":
            try:
                self._pipe = load_depth_pipeline(source, device)
            except (WeightsNotFoundError, CorruptWeightsError, IncompatibleModelError) as exc:
                if mode == "depth":
                    raise
                self.notice = f"normals from the silhouette estimate: the depth model could not be used ({exc})"
                logger.info("%s", self.notice)

    @property
    def method(self) -> str:
        """'depth' or 'silhouette': what estimate() uses."""
        return "depth" if self._pipe is not None else "silhouette"

    def estimate(self, image: np.ndarray, matte: np.ndarray) -> np.ndarray:
        """HxWx3 float32 unit normals for uint8 `image`; outside the matte the surface faces the camera."""
        if self._pipe is None:
            return silhouette_normals(image, matte)
        from PIL import Image

        result = self._pipe(Image.fromarray(image))
        depth = result["predicted_depth"]
        depth = depth.squeeze().float().cpu().numpy() if hasattr(depth, "cpu") else np.asarray(depth, np.float32)
        height, width = image.shape[:2]
        if depth.shape != (height, width):
            depth = cv2.resize(depth, (width, height), interpolation=cv2.INTER_LINEAR)
        return normals_from_depth(depth, matte)
