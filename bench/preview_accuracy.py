"""Preview relighter accuracy: PSNR against ground-truth renders of synthetic scenes, versus two baselines.

Each scene (known albedo and normals) is rendered under a source light; that image and its matte (never the
source light) go to `preview_relight` with a target light; the result is compared, inside the matte, with the
scene rendered under the target light. Baselines from the same run: the unchanged input, and the input
multiplied by the light's gradient (the fc initial-latent image). For reference, a naive relighter that shades
the inflated silhouette but ignores the source light is printed too.

Run: python -m bench.preview_accuracy
"""

from __future__ import annotations

import numpy as np  # noqa: E402

from bench.scenes import SCENES, render  # noqa: E402
from core.lighting.lights import Light, fc_initial_image  # noqa: E402
from core.lighting.preview import GAMMA, estimate_normals, preview_relight, shade  # noqa: E402

SIZE = 384  # output size of each rendered scene
TARGET_GAIN_DB = 6.0  # the preview must beat the better baseline by this much on average
UINT8_MAX = 255
COLUMNS = ("input", "gradient", "naive", "preview", "gain")
WIDTHS = (8, 10, 8, 9, 7)
# Input photos: key light up and to one side, some fill, one slightly warm. The relighter never sees these.
SOURCE_LIGHTS = (
    Light(azimuth=150.0, elevation=35.0, ambient=0.25, softness=0.3),
    Light(azimuth=20.0, elevation=55.0, ambient=0.15, softness=0.6, color="#fff1e0"),
)
TARGET_LIGHTS = (
    Light.named("left"),
    Light.named("right"),
    Light.named("top"),
    Light(azimuth=45.0, elevation=30.0, color="#ffb070", ambient=0.2),
    Light(azimuth=250.0, elevation=60.0, softness=0.8, ambient=0.3, color="#a0c8ff"),
    Light(azimuth=0.0, elevation=90.0, ambient=0.1),
    Light(azimuth=315.0, elevation=20.0, intensity=1.4, ambient=0.05, softness=0.2),
)


def masked_psnr(result: np.ndarray, truth: np.ndarray, matte: np.ndarray) -> float:
    """PSNR in dB over the subject, each pixel weighted by its matte coverage."""
    error = (result.astype(np.float64) - truth.astype(np.float64)) ** 2
    mse = float((error.mean(axis=-1) * matte).sum() / max(float(matte.sum()), 1e-9))
    return 10.0 * np.log10(UINT8_MAX**2 / max(mse, 1e-12))


def gradient_baseline(image: np.ndarray, light: Light) -> np.ndarray:
    """The input multiplied by the light's gradient (fc initial-latent image, scaled to [0, 1])."""
    height, width = image.shape[:2]
    gradient = fc_initial_image(light, width, height).astype(np.float64) / UINT8_MAX
    return np.clip(np.rint(image * gradient), 0, UINT8_MAX).astype(np.uint8)


def naive_relight(image: np.ndarray, matte: np.ndarray, light: Light) -> np.ndarray:
    """Shade the inflated silhouette with the target light, assuming the input was lit evenly."""
    gain = shade(estimate_normals(matte), light) ** (1.0 / GAMMA)
    relit = image * gain
    out = matte[..., None] * relit + (1.0 - matte[..., None]) * image
    return np.clip(np.rint(out), 0, UINT8_MAX).astype(np.uint8)


def describe(light: Light) -> str:
    return light.named_direction or f"az{light.azimuth:.0f}/el{light.elevation:.0f}"


def main() -> None:
    columns = "".join(f"{label:>{width}}" for label, width in zip(COLUMNS, WIDTHS, strict=True))
    header = f"{'scene':<14}{'source':<11}{'target':<11}{columns}"
    print(header)
    print("-" * len(header))
    rows = []
    for name, build in SCENES.items():
        scene = build(SIZE)
        for source in SOURCE_LIGHTS:
            image, matte = render(scene, source)
            for target in TARGET_LIGHTS:
                truth, _ = render(scene, target)
                scores = [
                    masked_psnr(candidate, truth, matte)
                    for candidate in (
                        image,
                        gradient_baseline(image, target),
                        naive_relight(image, matte, target),
                        preview_relight(image, matte, target),
                    )
                ]
                gain = scores[3] - max(scores[0], scores[1])
                rows.append(scores + [gain])
                print(
                    f"{name:<14}{describe(source):<11}{describe(target):<11}"
                    + "".join(f"{s:>{w}.2f}" for s, w in zip(scores + [gain], WIDTHS, strict=True))
                )
    means = np.mean(rows, axis=0)
    print("-" * len(header))
    per_scene = len(SOURCE_LIGHTS) * len(TARGET_LIGHTS)
    for index, name in enumerate(SCENES):
        scene_means = np.mean(rows[index * per_scene : (index + 1) * per_scene], axis=0)
        print(f"{'mean ' + name:<36}" + "".join(f"{s:>{w}.2f}" for s, w in zip(scene_means, WIDTHS, strict=True)))
    print(f"{'mean PSNR (dB)':<36}" + "".join(f"{s:>{w}.2f}" for s, w in zip(means, WIDTHS, strict=True)))
    naive_gain = float(np.mean([r[2] - max(r[0], r[1]) for r in rows]))
    print(f"naive relighter gain over the better baseline: {naive_gain:+.2f} dB")
    verdict = "PASS" if means[4] >= TARGET_GAIN_DB else "FAIL"
    print(f"preview gain over the better baseline: {means[4]:+.2f} dB (target >= +{TARGET_GAIN_DB:.1f} dB): {verdict}")


if __name__ == "__main__":
    main()
