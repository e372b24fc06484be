"""Preview relighter speed: median wall time for a 1-megapixel image, with and without a background.

Run: python -m bench.preview_speed
"""

from __future__ import annotations

import os
import statistics
import time

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from bench.scenes import render, textured_blob  # noqa: E402
from core.lighting.lights import Light  # noqa: E402
from core.lighting.preview import preview_relight  # noqa: E402

SIDE = 1024  # 1024 x 1024 = 1.05 megapixels
SCENE_SIZE = 256  # rendered small, then enlarged: the content does not change the cost
WARMUP, RUNS = 3, 21
TARGET_MS = 150.0
SOURCE = Light(azimuth=150.0, elevation=35.0, ambient=0.25, softness=0.3)
# A light sweep, as when the user drags the light across the pad.
LIGHTS = [Light(azimuth=float(az), elevation=30.0, color="#ffd8a8", ambient=0.1) for az in range(0, 360, 17)]


def time_runs(image: np.ndarray, matte: np.ndarray, background: np.ndarray | None) -> list[float]:
    """Milliseconds per call over RUNS calls, after WARMUP untimed ones."""
    for light in LIGHTS[:WARMUP]:
        preview_relight(image, matte, light, background)
    times = []
    for i in range(RUNS):
        light = LIGHTS[i % len(LIGHTS)]
        start = time.perf_counter()
        preview_relight(image, matte, light, background)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def main() -> None:
    small, small_matte = render(textured_blob(SCENE_SIZE), SOURCE)
    image = cv2.resize(small, (SIDE, SIDE), interpolation=cv2.INTER_LINEAR)
    matte = cv2.resize(small_matte.astype(np.float32), (SIDE, SIDE), interpolation=cv2.INTER_LINEAR)
    background = np.ascontiguousarray(image[::-1, ::-1])
    megapixels = SIDE * SIDE / 1e6
    print(f"image {SIDE}x{SIDE} ({megapixels:.2f} MP), {os.cpu_count()} CPU cores, {cv2.getNumThreads()} cv2 threads")
    for label, bg in (("no background", None), ("with background", background)):
        times = time_runs(image, matte, bg)
        median = statistics.median(times)
        verdict = "PASS" if median <= TARGET_MS else "FAIL"
        print(
            f"{label:<16} median {median:6.1f} ms  min {min(times):6.1f} ms  max {max(times):6.1f} ms"
            f"  (target <= {TARGET_MS:.0f} ms): {verdict}"
        )


if __name__ == "__main__":
    main()
