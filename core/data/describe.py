"""Instruction text for a lighting: 'soft warm light from the upper left', from a template or a vision model."""

from __future__ import annotations

import logging
import math

import numpy as np

from core.lighting.lights import Light

logger = logging.getLogger(__name__)

# Direction: the eight 45-degree sectors of azimuth (0 = from the right, counter-clockwise), sector 0 centred on 0.
OCTANT_PHRASES = (
    "from the right",
    "from the upper right",
    "from above",
    "from the upper left",
    "from the left",
    "from the lower left",
    "from below",
    "from the lower right",
)
OCTANT_DEG = 45.0
FRONTAL_ELEVATION = 70.0  # degrees: a light this close to the camera axis is described as frontal
FRONTAL_PHRASE = "from the front"
HARD_BELOW, SOFT_ABOVE = 0.3, 0.6  # softness bounds of 'hard' and 'soft' light (between: no hardness word)
# Colour temperature from the light's red/blue balance (a 2:1 ratio is about 2700 K, candle to tungsten).
WARM_RATIO, COOL_RATIO = 1.15, 1.0 / 1.08  # red over blue above / below which a light is warm / cool
DIM_LEVEL = 0.55  # intensity * (1 - ambient) below which the light is called dim
VISION_PROMPT = (
    "Describe only the lighting of this photo in one short phrase of at most eight words, naming its softness, "
    "colour temperature and the direction it comes from as seen in the image, in the style of: soft warm light "
    "from the upper left; hard cool light from the right. Reply with the phrase only."
)
VISION_MAX_WORDS = 12  # longer replies are prose, not an instruction: the template is used instead


def direction_phrase(light: Light) -> str:
    """'from the upper left' etc. for the light's azimuth octant, or 'from the front' for a near-frontal light."""
    if light.elevation >= FRONTAL_ELEVATION:
        return FRONTAL_PHRASE
    sector = math.floor(((light.azimuth + OCTANT_DEG / 2) % 360.0) / OCTANT_DEG)
    return OCTANT_PHRASES[sector]


def hardness_word(light: Light) -> str:
    """'hard', 'soft' or '' from the light's softness."""
    if light.softness < HARD_BELOW:
        return "hard"
    if light.softness > SOFT_ABOVE:
        return "soft"
    return ""


def temperature_word(rgb: np.ndarray) -> str:
    """'warm', 'cool' or '' (neutral) from an RGB colour's red/blue balance."""
    red, blue = float(rgb[0]), float(rgb[2])
    ratio = red / max(blue, 1e-6)
    if ratio > WARM_RATIO:
        return "warm"
    if ratio < COOL_RATIO:
        return "cool"
    return ""


def describe_light(light: Light) -> str:
    """Template instruction for `light`: '[dim] [hard|soft] [warm|cool] light from <direction>'."""
    words = [
        "dim" if light.intensity * (1.0 - light.ambient) < DIM_LEVEL else "",
        hardness_word(light),
        temperature_word(light.rgb),
        "light",
        direction_phrase(light),
    ]
    return " ".join(word for word in words if word)


def white_balance_hex(linear: np.ndarray, matte: np.ndarray | None = None) -> str:
    """The light colour a photo suggests (grey world over the subject): mean linear RGB, brightest channel = 1."""
    pixels = linear.reshape(-1, 3) if matte is None else linear[np.asarray(matte) >= 0.5]
    if len(pixels) == 0:
        pixels = linear.reshape(-1, 3)
    mean = pixels.mean(axis=0).astype(np.float64)
    mean = mean / max(float(mean.max()), 1e-6)
    gamma = mean ** (1.0 / 2.2)  # Light colours are written gamma-encoded, as hex colours are
    return "#" + "".join(f"{round(255 * c):02x}" for c in gamma)


def describe_with_model(image: np.ndarray, config) -> str | None:
    """A vision model's phrase for the lighting of uint8 `image`, or None when it cannot be had (then: template)."""
    if config is None or not config.enabled:
        return None
    import openai

    from core.lighting.prompt_words import clean_lighting
    from core.lighting.suggest import DEFAULT_BASE_URL, LOCAL_SERVER_KEY, _data_url

    try:
        with openai.OpenAI(
            api_key=config.api_key or LOCAL_SERVER_KEY,
            base_url=config.base_url or DEFAULT_BASE_URL,
            timeout=config.timeout,
            max_retries=config.max_retries,
        ) as client:
            completion = client.chat.completions.create(
                model=config.model,
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": VISION_PROMPT},
                            {"type": "image_url", "image_url": {"url": _data_url(image), "detail": "low"}},
                        ],
                    }
                ],
            )
        text = completion.choices[0].message.content
    except (openai.OpenAIError, AttributeError, IndexError, TypeError) as exc:
        logger.warning(
            "Lighting description from %r failed (%s); using the template", config.model, type(exc).__name__
        )
        return None
    if not isinstance(text, str) or len(text.split()) > VISION_MAX_WORDS:
        return None
    phrase = " ".join(text.split()).strip(" .\"'")
    return phrase.lower() if clean_lighting(phrase) else None
