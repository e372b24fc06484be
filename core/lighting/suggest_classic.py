"""Offline lighting suggestions: computed from the image and the mood, no server needed."""

from __future__ import annotations

import colorsys
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import InvalidParameterError
from core.lighting.lights import Light
from core.lighting.prompt_words import MAX_LIGHTING_WORDS

MOODS: tuple[str, ...] = ("dramatic", "warm", "cool", "cinematic", "calm", "mysterious", "natural")
NUM_SUGGESTIONS = 3


@dataclass(frozen=True)
class Suggestion:
    """One lighting idea: a short prompt and the light that goes with it."""

    prompt: str  # IC-Light lighting phrase of at most six words ("sunset over sea")
    light: Light  # direction and colour for the initial latent (fc) or background gradient (fbc)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "light": self.light.to_dict()}


# Input checks


def check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__)
        raise InvalidParameterError(f"image should be an HxWx3 uint8 array but is shape {shape}, dtype {dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidParameterError(f"image should not be empty but is shape {image.shape}")
    return image


def check_mood(mood: Any) -> str | None:
    if mood is None or (isinstance(mood, str) and not mood.strip()):
        return None
    key = mood.strip().lower() if isinstance(mood, str) else mood
    if key not in MOODS:
        raise InvalidParameterError(f"mood should be one of {', '.join(MOODS)} (or empty) but is {mood!r}")
    return key


def check_matte(matte: Any, image: np.ndarray) -> np.ndarray | None:
    """The matte as HxW float in [0, 1] (uint8 mattes are 0..255), or None."""
    if matte is None:
        return None
    if not isinstance(matte, np.ndarray) or matte.dtype.kind not in "buif":
        raise InvalidParameterError(f"matte should be a numeric HxW array but is {type(matte).__name__}")
    if matte.ndim == 3 and matte.shape[2] == 1:
        matte = matte[..., 0]
    if matte.shape != image.shape[:2]:
        raise InvalidParameterError(f"matte should be shape {image.shape[:2]} like the image but is {matte.shape}")
    scale = 255.0 if matte.dtype == np.uint8 else 1.0
    return np.clip(matte.astype(np.float32) / scale, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Offline: curated IC-Light prompts ranked by mood and by what the image looks like

TRAITS = frozenset("dark bright colourful grey warm-cast cool-cast contrasty flat portrait object scene".split())


@dataclass(frozen=True)
class LightingPreset:
    """A curated IC-Light lighting prompt, the light it implies, and when it suits."""

    prompt: str  # at most six words: the official demos' quick prompts and phrases in their style
    light: Light
    moods: frozenset[str]  # subset of MOODS
    suits: frozenset[str]  # subset of TRAITS: images this lighting flatters


# prompt | azimuth elevation colour intensity ambient softness | moods | image traits it suits
_PRESET_TABLE = """
sunshine from window | 180 30 #fff0d0 1.2 .25 .4 | warm natural calm | bright warm-cast portrait
shadow from window | 180 20 #fff4e0 1.3 .05 .2 | dramatic mysterious cinematic | bright grey
sunset over sea | 180 5 #ff9a5a 1.2 .2 .6 | warm cinematic calm | warm-cast colourful scene
golden time | 0 15 #ffb870 1.1 .3 .6 | warm natural cinematic | warm-cast bright portrait
neon light, city | 0 10 #ff3cc8 1.3 .15 .4 | cinematic dramatic | dark colourful cool-cast
sci-fi RGB glowing, cyberpunk | 180 5 #3cf0ff 1.4 .1 .3 | dramatic cinematic cool | dark colourful contrasty
soft studio lighting | 90 60 #ffffff 1.0 .45 .9 | calm natural | grey flat portrait object
natural lighting | 90 45 #fffaf0 1.0 .4 .8 | natural calm | bright flat scene
warm atmosphere, at home, bedroom | 180 25 #ffc88a .9 .35 .8 | warm calm | dark warm-cast portrait
home atmosphere, cozy bedroom illumination | 0 30 #ffb56b .9 .4 .85 | warm calm natural | warm-cast flat
magic lit | 270 20 #9a7bff 1.3 .15 .5 | mysterious dramatic | dark colourful
evil, gothic, Yharnam | 90 30 #aab8cc 1.1 .05 .3 | mysterious dramatic | dark grey contrasty
light and shadow | 0 20 #ffffff 1.4 .05 .2 | dramatic cinematic | grey contrasty object
neon, Wong Kar-wai, warm | 0 15 #ff5a3c 1.2 .2 .5 | cinematic warm mysterious | dark colourful warm-cast
moonlight through window | 180 40 #9fb8ff .8 .1 .5 | mysterious calm cool | dark cool-cast grey
blue hour, soft ambient light | 90 30 #8fb0ff .9 .4 .8 | calm cool cinematic | cool-cast flat scene
rim light, dark background | 0 0 #ffffff 1.5 0 .15 | dramatic cinematic mysterious | dark contrasty portrait object
spotlight from above, studio | 90 50 #ffffff 1.5 .05 .25 | dramatic | object contrasty dark
overcast daylight, soft shadows | 90 70 #eef2ff .9 .55 1.0 | calm natural cool | flat grey bright scene
campfire glow | 270 10 #ff8a3c 1.2 .1 .5 | warm mysterious dramatic | dark warm-cast
cold fluorescent light | 90 60 #dff4ff 1.0 .3 .7 | cool mysterious | cool-cast grey flat
teal and orange, cinematic lighting | 180 15 #ffa060 1.2 .25 .5 | cinematic warm | colourful scene
bright sunlight, hard shadows | 45 50 #fff6e0 1.5 .15 .15 | dramatic natural | bright contrasty scene
foggy morning, diffused light | 90 60 #e6ecf2 .8 .6 1.0 | calm mysterious cool | flat grey cool-cast
candlelight, warm glow | 270 15 #ffa64d 1.0 .15 .7 | warm calm mysterious | dark warm-cast portrait
"""


def _parse_presets(table: str) -> tuple[LightingPreset, ...]:
    """The preset table above as LightingPresets (a table reads better than 25 four-line constructor calls)."""
    presets = []
    for row in table.strip().splitlines():
        prompt, light, moods, suits = (cell.strip() for cell in row.split("|"))
        azimuth, elevation, color, intensity, ambient, softness = light.split()
        numbers = (float(value) for value in (azimuth, elevation, intensity, ambient, softness))
        azimuth, elevation, intensity, ambient, softness = numbers
        preset = LightingPreset(
            prompt,
            Light(azimuth, elevation, color, intensity, ambient, softness),
            frozenset(moods.split()),
            frozenset(suits.split()),
        )
        assert preset.moods <= set(MOODS) and preset.suits <= TRAITS, preset
        assert len(prompt.split()) <= MAX_LIGHTING_WORDS, preset
        presets.append(preset)
    return tuple(presets)


LIGHTING_PRESETS: tuple[LightingPreset, ...] = _parse_presets(_PRESET_TABLE)

MOOD_WEIGHT = 10.0  # more than all matching traits together: the user's mood always wins over image statistics
# Exposure matters most to what looks plausible (neon on a sunlit snapshot does not), so it counts double.
TRAIT_WEIGHTS = {"dark": 2.0, "bright": 2.0}
DIVERSITY_PENALTY = 0.5  # less than one trait: only breaks ties in favour of a different light direction

STATS_MAX_SIDE = 256  # statistics from every n-th pixel up to this size: the same answer in a fraction of the time
SUBJECT_ALPHA = 0.5  # matte value above which a pixel belongs to the subject
MIN_SUBJECT_FRACTION = 0.01  # a matte covering less than this is ignored (statistics of a handful of pixels lie)
LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601, as in JPEG / PIL's 'L'
DARK_LUMA, BRIGHT_LUMA = 0.3, 0.6
FLAT_CONTRAST, HIGH_CONTRAST = 0.12, 0.25  # standard deviation of luma
GREY_COLOURFULNESS, COLOURFUL = 8.0, 50.0  # Hasler & Suesstrunk 2003 metric: 'not colourful' .. 'quite colourful'
QUANT_SHIFT = 6  # 8-bit channels >> 6 = 4 levels each, 64 colour bins for the dominant colours
DOMINANT_BINS = 3
CAST_MIN_SATURATION, CAST_MIN_SHARE = 0.2, 0.15  # a dominant colour this saturated and common sets the colour cast
WARM_HUE_BELOW, WARM_HUE_ABOVE = 60.0, 330.0  # degrees: reds, oranges, yellows
COOL_HUES = (160.0, 280.0)  # degrees: cyans and blues
SIDE_LIT_BALANCE = 0.04  # right-minus-left luma above this: the photo is already lit from that side
SCENE_COVERAGE = 0.85  # a matte covering this much of the frame is the whole scene, not a cut-out subject
FULL_BODY_ASPECT = 1.6  # bounding box height / width of a standing person
HEAD_TO_SHOULDERS = 0.75  # head band narrower than this fraction of the shoulder band: a head-and-shoulders crop
BOTTOM_EDGE = 0.95  # a matte reaching this far down is cut by the frame, as portraits are


@dataclass(frozen=True)
class _ImageFacts:
    traits: frozenset[str]  # subset of TRAITS
    side_balance: float  # right-minus-left luma of the subject: > 0 lit from the right


def offline_suggestions(
    image: np.ndarray, mood: str | None = None, matte: np.ndarray | None = None
) -> tuple[Suggestion, ...]:
    """Three distinct lighting ideas picked from LIGHTING_PRESETS by mood and by what the image looks like."""
    return tuple(ranked_offline(image, mood, matte)[:NUM_SUGGESTIONS])


def ranked_offline(image: np.ndarray, mood: str | None, matte: np.ndarray | None) -> list[Suggestion]:
    """Every preset as a suggestion, best first, lights mirrored to agree with the photo's own shading."""
    image, mood, matte = check_image(image), check_mood(mood), check_matte(matte, image)
    facts = _image_facts(image, matte)
    candidates = [
        (_score(preset, mood, facts.traits), preset.prompt, _agree(preset, facts)) for preset in LIGHTING_PRESETS
    ]
    ranked: list[Suggestion] = []
    while candidates:
        # max() keeps the first of equals, so the table order settles exact ties deterministically.
        best = max(
            candidates,
            key=lambda c: c[0] - DIVERSITY_PENALTY * sum(s.light.azimuth == c[2].azimuth for s in ranked),
        )
        candidates.remove(best)
        ranked.append(Suggestion(best[1], best[2]))
    return ranked


def _score(preset: LightingPreset, mood: str | None, traits: frozenset[str]) -> float:
    matched = sum(TRAIT_WEIGHTS.get(trait, 1.0) for trait in preset.suits & traits)
    return MOOD_WEIGHT * (mood in preset.moods) + matched


def _agree(preset: LightingPreset, facts: _ImageFacts) -> Light:
    """Mirror a side light to the side the photo is already lit from, so relit shading does not fight the original."""
    light = preset.light
    horizontal = math.cos(math.radians(light.azimuth))
    if abs(facts.side_balance) < SIDE_LIT_BALANCE or abs(horizontal) < 1e-6:
        return light
    if (horizontal > 0) == (facts.side_balance > 0):
        return light
    return dataclasses.replace(light, azimuth=(180.0 - light.azimuth) % 360.0)


def _image_facts(image: np.ndarray, matte: np.ndarray | None) -> _ImageFacts:
    """Brightness, contrast, colourfulness, colour cast, lit side and subject shape, as traits."""
    step = math.ceil(max(image.shape[:2]) / STATS_MAX_SIDE)
    image = image[::step, ::step]
    matte = None if matte is None else matte[::step, ::step]
    mask = None if matte is None else matte > SUBJECT_ALPHA
    if mask is not None and mask.mean() < MIN_SUBJECT_FRACTION:
        mask = None
    subject = np.ones(image.shape[:2], bool) if mask is None else mask

    rgb = image[subject].astype(np.float64)  # N x 3, 0..255
    luma = rgb @ LUMA / 255.0
    traits: set[str] = set()
    brightness, contrast = float(luma.mean()), float(luma.std())
    traits |= {"dark"} if brightness < DARK_LUMA else {"bright"} if brightness > BRIGHT_LUMA else set()
    traits |= {"flat"} if contrast < FLAT_CONTRAST else {"contrasty"} if contrast > HIGH_CONTRAST else set()
    colourfulness = _colourfulness(rgb)
    traits |= {"grey"} if colourfulness < GREY_COLOURFULNESS else {"colourful"} if colourfulness > COLOURFUL else set()
    cast = _colour_cast(image[subject])
    traits |= {cast} if cast else set()
    kind = None if mask is None else _subject_kind(mask)
    traits |= {kind} if kind else set()

    columns = np.nonzero(subject)[1]
    right = columns >= columns.mean()
    balance = float(luma[right].mean() - luma[~right].mean()) if right.any() and (~right).any() else 0.0
    return _ImageFacts(frozenset(traits), balance)


def _colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003), 'Measuring colourfulness in natural images', on 0..255 RGB rows."""
    rg = rgb[:, 0] - rgb[:, 1]
    yb = 0.5 * (rgb[:, 0] + rgb[:, 1]) - rgb[:, 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _colour_cast(pixels: np.ndarray) -> str | None:
    """'warm-cast' / 'cool-cast' from the most common saturated dominant colour, None when neutral."""
    bins = pixels >> QUANT_SHIFT
    levels = 256 >> QUANT_SHIFT
    codes = (bins[:, 0].astype(np.int64) * levels + bins[:, 1]) * levels + bins[:, 2]
    counts = np.bincount(codes, minlength=levels**3)
    for code in np.argsort(counts)[::-1][:DOMINANT_BINS]:
        share = counts[code] / len(codes)
        if share < CAST_MIN_SHARE:
            break
        red, green, blue = pixels[codes == code].mean(axis=0) / 255.0
        hue, saturation, _ = colorsys.rgb_to_hsv(red, green, blue)
        if saturation < CAST_MIN_SATURATION:
            continue
        hue *= 360.0
        if hue < WARM_HUE_BELOW or hue >= WARM_HUE_ABOVE:
            return "warm-cast"
        if COOL_HUES[0] <= hue <= COOL_HUES[1]:
            return "cool-cast"
        return None  # greens and magentas: neither warm nor cool
    return None


def _subject_kind(mask: np.ndarray) -> str:
    """'portrait', 'object' or 'scene' from the matte's shape."""
    if mask.mean() >= SCENE_COVERAGE:
        return "scene"
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom = rows[0], rows[-1]
    box_height, box_width = bottom - top + 1, cols[-1] - cols[0] + 1
    widths = mask.sum(axis=1)[top : bottom + 1]
    head = widths[box_height // 10 : max(box_height * 3 // 10, box_height // 10 + 1)].mean()
    shoulders = widths[box_height * 7 // 10 : max(box_height * 9 // 10, box_height * 7 // 10 + 1)].mean()
    cut_by_frame = bottom >= BOTTOM_EDGE * (mask.shape[0] - 1)
    if box_height / box_width >= FULL_BODY_ASPECT or (cut_by_frame and head < HEAD_TO_SHOULDERS * shoulders):
        return "portrait"
    return "object"
