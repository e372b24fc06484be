"""Classic lighting score: does it rank a photo above its own under-exposed, over-exposed, flat and noisy versions?

The photos are the public-domain photographs scikit-image ships (`skimage.data`). Each is degraded four ways,
in linear light where exposure is concerned: under-exposed (x UNDER, two and a half stops down), over-exposed
(x OVER, clipped), flat (contrast crushed around the mean by FLAT) and noisy (Gaussian noise of NOISE_SIGMA).
A ranking is correct when the original scores strictly higher. The baseline from the same run is a plain
global-contrast score (the standard deviation of luma), which the flat and under-exposed versions already fool.

Run: python -m bench.lighting_filter
"""

from __future__ import annotations

import time

import numpy as np

from core.data.filter import classic_score

PHOTOS = (
    "astronaut",
    "camera",
    "coffee",
    "chelsea",
    "rocket",
    "coins",
    "moon",
    "grass",
    "gravel",
    "brick",
    "clock",
    "page",
)
UNDER, OVER = 0.18, 3.0  # linear exposure factors
FLAT = 0.35  # contrast kept around the mean
NOISE_SIGMA = 0.06  # in [0, 1] units of the 8-bit values
SEED = 0
GAMMA = 2.2


def degrade(image: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The four degraded versions of a uint8 RGB photo."""
    values = image.astype(np.float64) / 255.0
    linear = values**GAMMA
    mean = values.mean()
    versions = {
        "under": (linear * UNDER) ** (1 / GAMMA),
        "over": np.clip(linear * OVER, 0, 1) ** (1 / GAMMA),
        "flat": mean + (values - mean) * FLAT,
        "noisy": values + rng.normal(0.0, NOISE_SIGMA, values.shape),
    }
    return {name: np.rint(np.clip(v, 0, 1) * 255).astype(np.uint8) for name, v in versions.items()}


def _std_score(image: np.ndarray) -> float:
    return float((image.astype(np.float64) / 255.0).std())


def main() -> None:
    import skimage.data

    rng = np.random.default_rng(SEED)
    correct, baseline, total, seconds = {}, {}, 0, 0.0
    print(f"{'photo':<12}{'score':>7}{'under':>7}{'over':>7}{'flat':>7}{'noisy':>7}")
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        image = image[..., :3]
        start = time.perf_counter()
        original, _ = classic_score(image)
        seconds += time.perf_counter() - start
        scores = {}
        for kind, version in degrade(image, rng).items():
            scores[kind], _ = classic_score(version)
            correct[kind] = correct.get(kind, 0) + (original > scores[kind])
            baseline[kind] = baseline.get(kind, 0) + (_std_score(image) > _std_score(version))
        total += 1
        print(
            f"{name:<12}{original:>7.3f}" + "".join(f"{scores[k]:>7.3f}" for k in ("under", "over", "flat", "noisy"))
        )
    right, base = sum(correct.values()), sum(baseline.values())
    print("correct rankings per degradation: " + ", ".join(f"{k} {v}/{total}" for k, v in correct.items()))
    print(f"classic score: {right}/{4 * total} = {100 * right / (4 * total):.1f} % correct")
    print(f"baseline (luma standard deviation): {base}/{4 * total} = {100 * base / (4 * total):.1f} % correct")
    print(f"classic score: {1000 * seconds / total:.1f} ms per photo")


if __name__ == "__main__":
    main()
