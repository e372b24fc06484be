"""Preview relighter accuracy: PSNR against ground-truth renders, versus two baselines from the same run.

Each scene is photographed under a source light A; that image and its matte (never light A) go to `preview_relight`
with a target light B; the result is compared, inside the matte, with the scene photographed under light B.
Baselines: (a) the input unchanged, (b) the input multiplied by light B's gradient (the fc initial-latent image).
The gain is the preview's PSNR minus the better baseline's, scene by scene.

1. Independent scenes (the score that counts): `bench.photo_scenes`, a renderer that shares nothing with the
   preview (square soft boxes and point lights, cast shadows, sRGB), six shapes times three albedos.
2. Self-consistent scenes (for reference only): `bench.scenes`, drawn with the preview's own disc-light model and
   gamma, so the preview's assumptions hold exactly there and its score is an upper bound.

Run: python -m bench.preview_accuracy [--size 256]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable

import numpy as np

from bench import photo_scenes, scenes
from core.lighting.lights import Light, fc_initial_image
from core.lighting.preview import preview_relight

SIZE = 256  # output size of each rendered scene (the preview estimates on a 256-pixel copy anyway)
TARGET_GAIN_DB = 6.0  # the preview must beat the better baseline by this much on average on independent scenes
UINT8_MAX = 255
COLUMNS = ("input", "gradient", "preview", "gain")
WIDTHS = (8, 10, 9, 8)
# Light A, the photo's own light: the relighter never sees it. Hard and soft, white and warm, side and front,
# and a hard light with no fill at all (half the subject black: nothing there to keep, everything to guess).
SOURCE_LIGHTS = (
    Light(azimuth=150.0, elevation=35.0, ambient=0.15, softness=0.0),
    Light(azimuth=160.0, elevation=20.0, ambient=0.0, softness=0.0),
    Light(azimuth=20.0, elevation=50.0, ambient=0.2, softness=0.7, color="#fff1e0"),
    Light(azimuth=290.0, elevation=65.0, ambient=0.3, softness=0.3),
)
# Light B, asked for: the official directions (hard grazing light, no ambient), coloured and soft lights.
TARGET_LIGHTS = (
    Light.named("left"),
    Light.named("right", softness=0.0),
    Light.named("top"),
    Light(azimuth=45.0, elevation=30.0, color="#ffb070", ambient=0.2, softness=0.1),
    Light(azimuth=250.0, elevation=60.0, softness=0.8, ambient=0.3, color="#a0c8ff"),
    Light(azimuth=0.0, elevation=90.0, ambient=0.1, softness=0.3),
    Light(azimuth=315.0, elevation=20.0, intensity=1.4, ambient=0.05, softness=0.0),
)
# The self-consistent scenes keep the light set they were published with.
SELF_SOURCES = (
    Light(azimuth=150.0, elevation=35.0, ambient=0.25, softness=0.3),
    Light(azimuth=20.0, elevation=55.0, ambient=0.15, softness=0.6, color="#fff1e0"),
)
SELF_TARGETS = (
    Light.named("left"),
    Light.named("right"),
    Light.named("top"),
    Light(azimuth=45.0, elevation=30.0, color="#ffb070", ambient=0.2),
    Light(azimuth=250.0, elevation=60.0, softness=0.8, ambient=0.3, color="#a0c8ff"),
    Light(azimuth=0.0, elevation=90.0, ambient=0.1),
    Light(azimuth=315.0, elevation=20.0, intensity=1.4, ambient=0.05, softness=0.2),
)

Photographer = Callable[[Light], tuple[np.ndarray, np.ndarray]]


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


def score_scene(photograph: Photographer, sources: Iterable[Light], targets: Iterable[Light]) -> np.ndarray:
    """Rows of (input, gradient, preview, gain) PSNRs, one per (source, target) pair."""
    truths = {target: photograph(target)[0] for target in targets}
    rows = []
    for source in sources:
        image, matte = photograph(source)
        for target, truth in truths.items():
            scores = [
                masked_psnr(candidate, truth, matte)
                for candidate in (image, gradient_baseline(image, target), preview_relight(image, matte, target))
            ]
            rows.append(scores + [scores[2] - max(scores[0], scores[1])])
    return np.array(rows)


def describe(light: Light) -> str:
    """A short name for a light: its direction, fill and softness."""
    return f"{light.azimuth:.0f}/{light.elevation:.0f} amb {light.ambient:g} soft {light.softness:g}"


def _line(label: str, values: np.ndarray, width: int = 34) -> str:
    return f"{label:<{width}}" + "".join(f"{v:>{w}.2f}" for v, w in zip(values, WIDTHS, strict=True))


def _header(first: str, width: int = 34) -> str:
    header = f"{first:<{width}}" + "".join(f"{c:>{w}}" for c, w in zip(COLUMNS, WIDTHS, strict=True))
    return header + "\n" + "-" * len(header)


def independent(size: int) -> float:
    """Print the independent-scene table; returns the mean gain in dB."""
    print(f"Independent scenes ({size} px): sRGB photos, square soft boxes / point lights, cast shadows")
    print(_header("scene"))
    by_scene: dict[str, np.ndarray] = {}
    for shape in photo_scenes.SHAPES:
        for albedo in photo_scenes.ALBEDOS:
            scene = photo_scenes.build(shape, albedo, size)
            rows = score_scene(lambda light, s=scene: photo_scenes.photograph(s, light), SOURCE_LIGHTS, TARGET_LIGHTS)
            by_scene[scene.name] = rows
            print(_line(scene.name, rows.mean(axis=0)))
    every = np.concatenate(list(by_scene.values()))
    print("-" * 69)
    for shape in photo_scenes.SHAPES:
        shape_rows = np.concatenate([r for name, r in by_scene.items() if name.startswith(shape + " /")])
        print(_line(f"mean {shape}", shape_rows.mean(axis=0)))
    per_source = every.reshape(-1, len(SOURCE_LIGHTS), len(TARGET_LIGHTS), len(COLUMNS))
    for index, source in enumerate(SOURCE_LIGHTS):
        print(_line(f"mean, A = {describe(source)}", per_source[:, index].reshape(-1, len(COLUMNS)).mean(axis=0)))
    per_target = every.reshape(-1, len(TARGET_LIGHTS), len(COLUMNS))
    hard = [i for i, t in enumerate(TARGET_LIGHTS) if t.softness == 0.0]
    soft = [i for i in range(len(TARGET_LIGHTS)) if i not in hard]
    print(_line("mean, hard light B", per_target[:, hard].reshape(-1, len(COLUMNS)).mean(axis=0)))
    print(_line("mean, soft light B", per_target[:, soft].reshape(-1, len(COLUMNS)).mean(axis=0)))
    means = every.mean(axis=0)
    print(_line("mean (all)", means))
    verdict = "PASS" if means[3] >= TARGET_GAIN_DB else "FAIL"
    print(f"preview gain over the better baseline: {means[3]:+.2f} dB (target >= +{TARGET_GAIN_DB:.1f} dB): {verdict}")
    return float(means[3])


def self_consistent(size: int) -> float:
    """Print the self-consistent table (the preview's own light model); returns the mean gain in dB."""
    print(f"\nSelf-consistent scenes ({size} px, drawn with the preview's own disc lights and gamma; reference only)")
    print(_header("scene"))
    every = []
    for name, make in scenes.SCENES.items():
        scene = make(size)
        rows = score_scene(lambda light, s=scene: scenes.render(s, light), SELF_SOURCES, SELF_TARGETS)
        every.append(rows)
        print(_line(name, rows.mean(axis=0)))
    means = np.concatenate(every).mean(axis=0)
    print(_line("mean (all)", means))
    print(f"self-consistent gain over the better baseline: {means[3]:+.2f} dB")
    return float(means[3])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=SIZE, help="side of each rendered scene in pixels")
    parser.add_argument("--independent-only", action="store_true", help="skip the self-consistent scenes")
    args = parser.parse_args(argv)
    independent(args.size)
    if not args.independent_only:
        self_consistent(args.size)


if __name__ == "__main__":
    main()
