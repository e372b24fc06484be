"""Regenerate db_examples/: foregrounds and backgrounds from scikit-image sample data plus generated backdrops.

Run once and commit the output; run again to rebuild it the same way:

    python scripts/prepare_examples.py            # writes into db_examples/
    python scripts/prepare_examples.py --out DIR  # somewhere else, e.g. to compare
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

OUT_DIR = Path(__file__).resolve().parents[1] / "db_examples"
SIZE_BUDGET = 2_500_000  # bytes for the whole folder: these files are committed to the repository
JPEG_QUALITY = 88  # visually clean on gradients and skin at a fraction of PNG's size
PORTRAIT, LANDSCAPE, SQUARE = (512, 640), (768, 512), (512, 512)  # (width, height) of the saved images
DITHER = 1.5  # grey levels of seeded noise on generated images; breaks up 8-bit banding before JPEG
FEATHER_PX = 1.0  # Gaussian sigma softening cut-out edges so the alpha is not a hard staircase
SEED = 20240501  # one seed for every random choice, so reruns rebuild the same bytes

PUBLIC_DOMAIN = "Public domain"
CC0 = "CC0 1.0"


@dataclass(frozen=True)
class Asset:
    """One file of db_examples/: how to make it and whom to credit."""

    name: str  # file name inside db_examples/; the suffix picks the format
    make: Callable[[], np.ndarray]  # HxWx3 (or HxWx4 with alpha) uint8 image
    sample: str | None  # the `skimage.data` function it comes from; None when drawn from scratch
    changes: str  # what this script did to the source, for CREDITS.md


# ---------------------------------------------------------------------------------------------------------------
# Small image helpers
# ---------------------------------------------------------------------------------------------------------------


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Lanczos resize to (width, height)."""
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def _cover(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale to cover (width, height) and centre-crop, the way the apps fit images."""
    width, height = size
    src_height, src_width = image.shape[:2]
    scale = max(width / src_width, height / src_height)
    scaled = _resize(image, (max(width, round(src_width * scale)), max(height, round(src_height * scale))))
    top, left = (scaled.shape[0] - height) // 2, (scaled.shape[1] - width) // 2
    return scaled[top : top + height, left : left + width]


def _rgb(gray: np.ndarray) -> np.ndarray:
    """Greyscale to 3-channel RGB, so every example loads the same way."""
    return np.repeat(gray[..., None], 3, axis=2)


def _duotone(gray: np.ndarray, dark: tuple[int, int, int], light: tuple[int, int, int]) -> np.ndarray:
    """Colour a greyscale texture by mapping black to `dark` and white to `light`."""
    t = gray.astype(np.float32)[..., None] / 255.0
    out = np.asarray(dark, np.float32) + (np.asarray(light, np.float32) - np.asarray(dark, np.float32)) * t
    return out.clip(0, 255).astype(np.uint8)


def _grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates x, y in [0, 1] (x right, y down) for a (width, height) canvas."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return (xs + 0.5) / width, (ys + 0.5) / height


def _finish(rgb: np.ndarray, seed_offset: int) -> np.ndarray:
    """Float RGB in 0..255 to uint8, with a little seeded dither against banding."""
    rng = np.random.default_rng(SEED + seed_offset)
    noisy = rgb + rng.normal(0.0, DITHER, size=rgb.shape)
    return noisy.clip(0, 255).astype(np.uint8)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a float or uint8 image (sigma in pixels)."""
    import cv2

    return cv2.GaussianBlur(image, (0, 0), sigma)


def _mix(colour_a: tuple[int, int, int], colour_b: tuple[int, int, int], t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of two colours by t in [0, 1] (HxW), as HxWx3 float."""
    a, b = np.asarray(colour_a, np.float32), np.asarray(colour_b, np.float32)
    return a + (b - a) * np.clip(t, 0.0, 1.0)[..., None]


# ---------------------------------------------------------------------------------------------------------------
# Cut-outs: a seeded GrabCut started from a hand-placed trimap, or a colour key, then cleaned
# ---------------------------------------------------------------------------------------------------------------


def _largest_region(mask: np.ndarray, fill_holes: bool = True) -> np.ndarray:
    """Keep the largest 8-connected region of a 0/1 mask and, optionally, fill the holes enclosed by it."""
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count < 2:
        raise RuntimeError("cut-out mask is empty; the trimap no longer fits the image")
    mask = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    if not fill_holes:
        return mask
    # Background pockets that do not touch the border are GrabCut's misses inside the subject.
    count, labels, stats, _ = cv2.connectedComponentsWithStats(1 - mask, connectivity=4)
    height, width = mask.shape
    for label in range(1, count):
        x, y, w, h, _ = stats[label]
        if x > 0 and y > 0 and x + w < width and y + h < height:
            mask[labels == label] = 1
    return mask


def _grabcut(image: np.ndarray, trimap: np.ndarray, iterations: int = 5) -> np.ndarray:
    """0/1 foreground mask from OpenCV GrabCut seeded with a GC_* trimap."""
    import cv2

    cv2.setRNGSeed(SEED)  # GrabCut's GMM initialisation draws random numbers
    mask = trimap.copy()
    background, foreground = np.zeros((1, 65)), np.zeros((1, 65))
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    cv2.grabCut(bgr, mask, None, background, foreground, iterations, cv2.GC_INIT_WITH_MASK)
    return ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.uint8)


def _with_alpha(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGBA from RGB and a 0/1 mask, edges feathered; fully transparent pixels zeroed so the PNG stays small."""
    alpha = (_blur(mask.astype(np.float32), FEATHER_PX) * 255.0).round().clip(0, 255).astype(np.uint8)
    rgb = np.where(alpha[..., None] > 0, image, 0).astype(np.uint8)
    return np.dstack([rgb, alpha])


def _astronaut_mask() -> np.ndarray:
    """Eileen Collins without the flag, the shuttle model and the table (GrabCut from a hand trimap)."""
    import cv2
    from skimage import data

    image = data.astronaut()
    trimap = np.full(image.shape[:2], cv2.GC_PR_BGD, np.uint8)
    trimap[:, :12] = trimap[:8, :] = cv2.GC_BGD  # flag edge and top border
    trimap[:345, 362:] = trimap[:380, 472:] = trimap[:420, 492:] = cv2.GC_BGD  # shuttle model and table
    cv2.ellipse(trimap, (226, 100), (70, 85), 0, 0, 360, cv2.GC_PR_FGD, -1)  # head and hair
    body = np.array([[130, 160], [320, 160], [370, 330], [365, 512], [20, 512], [25, 300]], np.int32)
    cv2.fillPoly(trimap, [body], cv2.GC_PR_FGD)
    cv2.ellipse(trimap, (225, 110), (45, 60), 0, 0, 360, cv2.GC_FGD, -1)  # face
    # The neck ring's grey lining matches the backdrop, so GrabCut must be told it is foreground.
    cv2.ellipse(trimap, (210, 215), (85, 55), 0, 0, 360, cv2.GC_FGD, -1)
    cv2.rectangle(trimap, (60, 300), (330, 500), cv2.GC_FGD, -1)  # suit
    cv2.ellipse(trimap, (390, 440), (95, 70), 0, 0, 360, cv2.GC_FGD, -1)  # helmet
    return _largest_region(_grabcut(image, trimap))


SAUCER = ((277, 229), (202, 159))  # centre and semi-axes of the saucer's rim in skimage's coffee image
CUP = ((290, 110), (118, 95))


def _coffee_mask() -> np.ndarray:
    """Cup, spoon and saucer off the wooden table (GrabCut, with the saucer's fitted ellipse added back)."""
    import cv2
    from skimage import data

    image = data.coffee()
    trimap = np.full(image.shape[:2], cv2.GC_BGD, np.uint8)
    (sx, sy), (sa, sb) = SAUCER
    (cx, cy), (ca, cb) = CUP
    cv2.ellipse(trimap, (sx, sy), (sa + 12, sb + 11), 0, 0, 360, cv2.GC_PR_BGD, -1)
    cv2.ellipse(trimap, (cx, cy), (ca + 12, cb + 10), 0, 0, 360, cv2.GC_PR_BGD, -1)
    cv2.ellipse(trimap, (sx, sy), (sa, sb), 0, 0, 360, cv2.GC_PR_FGD, -1)
    cv2.ellipse(trimap, (cx, cy), (ca, cb), 0, 0, 360, cv2.GC_PR_FGD, -1)
    cv2.rectangle(trimap, (395, 62), (428, 110), cv2.GC_PR_FGD, -1)  # spoon handle above the rim
    cv2.ellipse(trimap, (sx, sy + 11), (sa - 32, sb - 34), 0, 0, 360, cv2.GC_FGD, -1)
    cv2.ellipse(trimap, (cx, cy), (ca - 23, cb - 20), 0, 0, 360, cv2.GC_FGD, -1)
    mask = _grabcut(image, trimap)
    # The rim in the cup's shadow is as dark as the wood, so GrabCut nibbles it; the saucer is an ellipse.
    cv2.ellipse(mask, (sx, sy), (sa - 3, sb - 3), 0, 0, 360, 1, -1)
    return _largest_region(mask)


ROCKET_CROP = (160, 27, 480, 427)  # left, top, right, bottom: a 4:5 portrait around the launch tower
# Where the rocket, strongback and pad can be: a trapezoid widening to the pad, in full-image pixels.
ROCKET_REGION = [(300, 118), (345, 118), (345, 345), (362, 405), (374, 405), (374, 427)]
ROCKET_REGION += [(266, 427), (266, 405), (283, 405), (300, 345)]
SKY_BLUE_EXCESS = 15  # blue minus red above this is evening sky; the white rocket is well below it


def _rocket_mask() -> np.ndarray:
    """Falcon 9 and its pad, keyed out of the blue evening sky inside a hand-drawn region."""
    import cv2
    from skimage import data

    image = data.rocket().astype(np.int16)
    region = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(region, [np.array(ROCKET_REGION, np.int32)], 1)
    not_sky = (image[..., 2] - image[..., 0] < SKY_BLUE_EXCESS).astype(np.uint8)
    mask = cv2.morphologyEx(not_sky & region, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    # Sky seen through the launch tower's lattice is real background: keep those holes open.
    return _largest_region(mask, fill_holes=False)


# ---------------------------------------------------------------------------------------------------------------
# Foregrounds
# ---------------------------------------------------------------------------------------------------------------


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def astronaut_portrait() -> np.ndarray:
    """Head and shoulders, 4:5."""
    from skimage import data

    return _resize(data.astronaut()[0:400, 72:392], PORTRAIT)


def astronaut_cutout() -> np.ndarray:
    from skimage import data

    return _with_alpha(data.astronaut(), _astronaut_mask())


def cameraman() -> np.ndarray:
    """The man behind the tripod, 4:5, as RGB."""
    from skimage import data

    return _resize(_rgb(data.camera()[12:512, 0:400]), PORTRAIT)


def chelsea() -> np.ndarray:
    from skimage import data

    return _cover(data.chelsea(), LANDSCAPE)


def coffee() -> np.ndarray:
    from skimage import data

    return _cover(data.coffee(), LANDSCAPE)


COFFEE_CUT_BOX = (55, 0, 505, 400)  # left, top, right, bottom: the saucer with a margin


def coffee_cutout() -> np.ndarray:
    """Cup and saucer on transparency, cropped to the saucer and scaled to 576x512."""
    from skimage import data

    left, top, right, bottom = COFFEE_CUT_BOX
    rgba = _with_alpha(data.coffee(), _coffee_mask())[top:bottom, left:right]
    return _resize(rgba, (576, 512))


def rocket() -> np.ndarray:
    from skimage import data

    left, top, right, bottom = ROCKET_CROP
    return _resize(data.rocket()[top:bottom, left:right], PORTRAIT)


def rocket_cutout() -> np.ndarray:
    """The rocket on transparency, framed exactly like fg_rocket.jpg."""
    from skimage import data

    left, top, right, bottom = ROCKET_CROP
    rgba = _with_alpha(data.rocket(), _rocket_mask())[top:bottom, left:right]
    return _resize(rgba, PORTRAIT)


# ---------------------------------------------------------------------------------------------------------------
# Backgrounds from photos and textures
# ---------------------------------------------------------------------------------------------------------------


def hubble() -> np.ndarray:
    from skimage import data

    return _cover(data.hubble_deep_field(), LANDSCAPE)


def brick() -> np.ndarray:
    """skimage's brick texture turned back to horizontal courses and coloured like red brick."""
    from skimage import data

    wall = np.rot90(data.brick()).copy()
    return _cover(_duotone(wall, (52, 20, 14), (214, 128, 96)), LANDSCAPE)


def grass() -> np.ndarray:
    from skimage import data

    return _cover(_duotone(data.grass(), (12, 34, 8), (176, 226, 110)), LANDSCAPE)


def gravel() -> np.ndarray:
    from skimage import data

    return _cover(_duotone(data.gravel(), (30, 26, 22), (222, 210, 190)), LANDSCAPE)


CAFE_BLUR_SIGMA = 14.0  # px at 600x400: enough to turn wood grain and cup into soft café bokeh


def cafe_blur() -> np.ndarray:
    """The coffee photo defocused into a warm café backdrop."""
    from skimage import data

    return _cover(_blur(data.coffee(), CAFE_BLUR_SIGMA), LANDSCAPE)


# ---------------------------------------------------------------------------------------------------------------
# Generated backgrounds
# ---------------------------------------------------------------------------------------------------------------


def sunset() -> np.ndarray:
    """Sky from deep blue to orange, a low sun disc with a glow, and a sea reflecting it."""
    x, y = _grid(LANDSCAPE)
    horizon, sun_x, sun_y, sun_r = 0.66, 0.62, 0.58, 0.055
    sky_t = y / horizon
    sky = np.where(
        (sky_t < 0.55)[..., None],
        _mix((24, 36, 92), (196, 84, 120), sky_t / 0.55),
        _mix((196, 84, 120), (255, 196, 110), (sky_t - 0.55) / 0.45),
    )
    aspect = LANDSCAPE[0] / LANDSCAPE[1]
    dist = np.hypot((x - sun_x) * aspect, y - sun_y)
    glow = np.exp(-((dist / 0.22) ** 2))[..., None] * np.array([70, 50, 10], np.float32)
    disc = np.clip((sun_r - dist) / 0.004, 0.0, 1.0)[..., None]
    sky = sky + glow
    sky = sky * (1 - disc) + np.array([255, 240, 200], np.float32) * disc
    sea_t = (y - horizon) / (1 - horizon)
    sea = _mix((150, 70, 80), (20, 16, 40), sea_t)
    # The sun's path on the water: a column of glints that widens toward the viewer.
    streak = np.exp(-(((x - sun_x) / (0.02 + 0.06 * sea_t)) ** 2)) * (0.5 + 0.5 * np.sin(y * 900.0) ** 2)
    sea = sea + streak[..., None] * np.array([200, 140, 60], np.float32) * (1 - sea_t[..., None] * 0.6)
    return _finish(np.where((y < horizon)[..., None], sky, sea), 1)


def neon() -> np.ndarray:
    """Dark night scene split between magenta and cyan neon, with two glowing tubes."""
    x, y = _grid(LANDSCAPE)
    base = np.zeros((*x.shape, 3), np.float32) + np.array([12, 6, 30], np.float32)
    magenta = np.exp(-(((x - 0.15) / 0.35) ** 2 + ((y - 0.45) / 0.6) ** 2))[..., None] * np.array([255, 40, 170])
    cyan = np.exp(-(((x - 0.88) / 0.35) ** 2 + ((y - 0.5) / 0.6) ** 2))[..., None] * np.array([30, 220, 255])
    tubes = np.zeros_like(x)
    tubes += np.exp(-(((x - 0.08) / 0.004) ** 2)) * ((y > 0.1) & (y < 0.8))
    tubes_cyan = np.exp(-(((x - 0.93) / 0.004) ** 2)) * ((y > 0.2) & (y < 0.9))
    tube_glow = _blur(tubes.astype(np.float32), 10.0) * 6.0 + tubes
    cyan_glow = _blur(tubes_cyan.astype(np.float32), 10.0) * 6.0 + tubes_cyan
    image = base + magenta * 0.75 + cyan * 0.7
    image += tube_glow[..., None] * np.array([255, 120, 220]) + cyan_glow[..., None] * np.array([160, 250, 255])
    return _finish(image, 2)


def studio() -> np.ndarray:
    """Grey-blue seamless paper backdrop: bright centre, floor sweep and a vignette."""
    x, y = _grid(LANDSCAPE)
    aspect = LANDSCAPE[0] / LANDSCAPE[1]
    wall = _mix((70, 80, 92), (168, 176, 186), np.exp(-((np.hypot((x - 0.5) * aspect, y - 0.42) / 0.55) ** 2)))
    floor_t = np.clip((y - 0.72) / 0.28, 0.0, 1.0)
    image = wall * (1.0 - 0.25 * floor_t[..., None] ** 0.7)
    vignette = 1.0 - 0.45 * np.clip(np.hypot((x - 0.5) * 1.2, y - 0.5) / 0.75, 0.0, 1.0) ** 2.5
    return _finish(image * vignette[..., None], 3)


def window_light() -> np.ndarray:
    """Warm sunlight through a six-pane window falling slanted on a dim wall."""
    import cv2

    width, height = LANDSCAPE
    x, y = _grid(LANDSCAPE)
    wall = _mix((44, 34, 30), (70, 56, 46), 1.0 - y)
    light = np.zeros((height, width), np.float32)
    # Each pane is a parallelogram: sunlight from high on the left shears the window's rectangle.
    shear, pane_w, pane_h, gap = 0.35, 110, 120, 14
    origin_x, origin_y = 250, 80
    for row in range(2):
        for col in range(3):
            x0, y0 = origin_x + col * (pane_w + gap), origin_y + row * (pane_h + gap)
            corners = [(x0, y0), (x0 + pane_w, y0), (x0 + pane_w, y0 + pane_h), (x0, y0 + pane_h)]
            pts = np.array([(px + shear * (py - origin_y), py) for px, py in corners], np.int32)
            cv2.fillPoly(light, [pts], 1.0)
    light = _blur(light, 3.0)
    falloff = np.exp(-((np.hypot(x - 0.55, y - 0.45) / 0.6) ** 2))
    haze = _blur(light, 40.0) * 0.5
    lit = (light * 0.85 + haze) * falloff
    image = wall + lit[..., None] * np.array([255, 214, 160], np.float32)
    return _finish(image, 4)


def bokeh() -> np.ndarray:
    """Night-city bokeh: defocused warm and teal lights over a dark blue gradient."""
    import cv2

    width, height = LANDSCAPE
    _, y = _grid(LANDSCAPE)
    image = _mix((8, 10, 26), (30, 22, 40), y)
    rng = np.random.default_rng(SEED + 5)
    palette = np.array([[255, 170, 80], [255, 210, 140], [255, 110, 70], [80, 200, 220]], np.float32)
    lights = np.zeros((height, width, 3), np.float32)
    for _ in range(70):
        layer = np.zeros((height, width), np.float32)
        centre = (int(rng.uniform(0, width)), int(rng.uniform(height * 0.15, height * 0.85)))
        cv2.circle(layer, centre, int(rng.uniform(10, 34)), 1.0, -1, lineType=cv2.LINE_AA)
        lights += layer[..., None] * palette[rng.integers(len(palette))] * rng.uniform(0.15, 0.45)
    lights = _blur(lights, 1.5)  # defocused discs have soft rims
    return _finish(image + lights, 5)


# ---------------------------------------------------------------------------------------------------------------
# The table of files
# ---------------------------------------------------------------------------------------------------------------

# Original author and licence of each scikit-image sample, as its `skimage.data` docstring states them.
SKIMAGE_SOURCES = {
    "astronaut": (
        "NASA, photo of astronaut Eileen Collins, NASA Great Images (https://flic.kr/p/r9qvLn)",
        PUBLIC_DOMAIN,
    ),
    "camera": ("photo by Lav Varshney", CC0),
    "chelsea": ("photo of Chelsea the cat by Stefan van der Walt", CC0),
    "coffee": ("photo by Rachel Michetti, courtesy of Pikolo Espresso Bar", CC0),
    "rocket": ("SpaceX, DSCOVR on Falcon 9 (https://www.flickr.com/photos/spacexphotos/16511594820/)", PUBLIC_DOMAIN),
    "hubble_deep_field": ("NASA, Hubble eXtreme Deep Field (hubblesite.org, release 2012-37)", PUBLIC_DOMAIN),
    "brick": ("CC0Textures Bricks25 (https://cc0textures.com/view.php?tex=Bricks25)", CC0),
    "grass": ("linolafett, Grass-01 (https://www.deviantart.com/linolafett/art/Grass-01-434853879)", CC0),
    "gravel": ("CC0Textures Gravel04 (https://cc0textures.com/view.php?tex=Gravel04)", CC0),
}
GENERATED = None  # `Asset.sample` for images drawn from scratch by this script

ASSETS = [
    Asset("fg_astronaut.jpg", astronaut, "astronaut", "as is"),
    Asset("fg_astronaut_portrait.jpg", astronaut_portrait, "astronaut", "cropped to head and shoulders"),
    Asset("fg_astronaut_cutout.png", astronaut_cutout, "astronaut", "alpha from a seeded GrabCut"),
    Asset("fg_cameraman.jpg", cameraman, "camera", "cropped to the man, greyscale saved as RGB"),
    Asset("fg_chelsea.jpg", chelsea, "chelsea", "scaled"),
    Asset("fg_coffee.jpg", coffee, "coffee", "scaled"),
    Asset("fg_coffee_cutout.png", coffee_cutout, "coffee", "alpha from a seeded GrabCut, cropped to the saucer"),
    Asset("fg_rocket.jpg", rocket, "rocket", "cropped to the launch tower"),
    Asset("fg_rocket_cutout.png", rocket_cutout, "rocket", "alpha keyed out of the sky, framed as fg_rocket.jpg"),
    Asset("bg_hubble.jpg", hubble, "hubble_deep_field", "cropped and scaled"),
    Asset("bg_brick.jpg", brick, "brick", "rotated to horizontal courses, tinted brick red"),
    Asset("bg_grass.jpg", grass, "grass", "tinted green"),
    Asset("bg_gravel.jpg", gravel, "gravel", "tinted warm grey"),
    Asset("bg_cafe_blur.jpg", cafe_blur, "coffee", "heavily blurred into a café backdrop"),
    Asset("bg_sunset.jpg", sunset, GENERATED, "sunset gradient with a sun disc over the sea"),
    Asset("bg_neon.jpg", neon, GENERATED, "magenta/cyan neon duo-tone with two tubes"),
    Asset("bg_studio.jpg", studio, GENERATED, "studio paper backdrop with a vignette"),
    Asset("bg_window_light.jpg", window_light, GENERATED, "six-pane window light on a dim wall"),
    Asset("bg_bokeh.jpg", bokeh, GENERATED, "night-city bokeh"),
]

CREDITS_HEADER = """# Credits for db_examples/

Every image here was made by `scripts/prepare_examples.py`, either from the sample images bundled with
scikit-image {version} (`skimage.data`) or drawn from scratch by that script. Authors and licences of the
samples are as each `skimage.data` function's documentation states them. Generated images are ours,
dedicated to the public domain under CC0 1.0. Derived files (crops, tints, blurs, cut-outs) keep the
licence of their source.

| File | Made from | Original author / source | Licence | Changes |
| --- | --- | --- | --- | --- |
"""


def _encode(name: str, image: np.ndarray) -> bytes:
    """Encode by suffix: JPEG for photos and gradients, PNG for anything with alpha."""
    buffer = io.BytesIO()
    pil = Image.fromarray(image)
    if name.endswith(".jpg"):
        if pil.mode != "RGB":
            raise ValueError(f"{name} should be RGB for JPEG but is {pil.mode}")
        pil.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True)
    elif name.endswith(".png"):
        pil.save(buffer, format="PNG", optimize=True)
    else:
        raise ValueError(f"unsupported suffix in {name!r}; use .jpg or .png")
    return buffer.getvalue()


def credits_markdown() -> str:
    """CREDITS.md text: one table row per asset."""
    import skimage

    rows = []
    for asset in ASSETS:
        if asset.sample is GENERATED:
            made_from, author, licence = "generated", "this repository, `scripts/prepare_examples.py`", CC0
        else:
            made_from = f"`skimage.data.{asset.sample}()`"
            author, licence = SKIMAGE_SOURCES[asset.sample]
        rows.append(f"| `{asset.name}` | {made_from} | {author} | {licence} | {asset.changes} |")
    return CREDITS_HEADER.format(version=skimage.__version__) + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Write every asset and CREDITS.md; report sizes and fail when over the size budget."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder to write into (default: db_examples/)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    total = 0
    for asset in ASSETS:
        data = _encode(asset.name, asset.make())
        (args.out / asset.name).write_bytes(data)
        total += len(data)
        print(f"{asset.name:28s} {len(data) / 1024:7.1f} KiB")
    (args.out / "CREDITS.md").write_text(credits_markdown(), encoding="utf-8")
    print(f"{'total images':28s} {total / 1024:7.1f} KiB")
    if total > SIZE_BUDGET:
        raise SystemExit(f"images take {total} bytes, over the {SIZE_BUDGET}-byte budget; lower JPEG_QUALITY")


if __name__ == "__main__":
    main()
