"""Example inputs for both apps: gr.Examples rows and the fbc background gallery (see CREDITS.md)."""

from __future__ import annotations

from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent


def _path(name: str) -> str:
    """Absolute path of an example file, as the string Gradio components take."""
    return str(EXAMPLES_DIR / name)


# Labels exactly as core.params spells them (LightDirection.label, BGSource.label); kept as plain strings so
# importing the examples stays free of the engine.
NO_LIGHT, LEFT, RIGHT, TOP, BOTTOM = "None", "Left Light", "Right Light", "Top Light", "Bottom Light"
UPLOAD, FLIP = "Use Background Image", "Use Flipped Background Image"
# (width, height) in pixels: multiples of 64 matching each image's aspect.
PORTRAIT, SQUARE, LANDSCAPE, PRODUCT = (512, 640), (512, 512), (768, 512), (576, 512)


def _fc(image: str, prompt: str, light: str, size: tuple[int, int], seed: int) -> list:
    """One fc row: [foreground, prompt, light direction label, width, height, seed]."""
    return [_path(image), prompt, light, *size, seed]


def _fbc(image: str, background: str, prompt: str, source: str, size: tuple[int, int], seed: int) -> list:
    """One fbc row: [foreground, background, prompt, background source label, width, height, seed]."""
    return [_path(image), _path(background), prompt, source, *size, seed]


fc_examples: list[list] = [
    _fc("fg_astronaut_portrait.jpg", "beautiful woman, detailed face, sunshine from window", LEFT, PORTRAIT, 12345),
    _fc("fg_astronaut.jpg", "beautiful woman, detailed face, warm atmosphere, at home", RIGHT, SQUARE, 2024),
    _fc("fg_cameraman.jpg", "handsome man, detailed face, neon light, city", RIGHT, PORTRAIT, 88888),
    _fc("fg_cameraman.jpg", "handsome man, detailed face, sunset over sea, golden time", LEFT, PORTRAIT, 4242),
    _fc("fg_chelsea.jpg", "a cat, warm atmosphere, at home, bedroom", LEFT, LANDSCAPE, 777),
    _fc("fg_coffee.jpg", "a cup of espresso on a wooden table, morning sunlight, cafe", TOP, LANDSCAPE, 31415),
    _fc("fg_coffee_cutout.png", "a cup of espresso, product photo, soft studio light", NO_LIGHT, PRODUCT, 1234),
    _fc("fg_rocket.jpg", "rocket on the launch pad, dramatic sunset, golden light", RIGHT, PORTRAIT, 5050),
    _fc("fg_rocket_cutout.png", "a rocket, neo punk lighting, cyberpunk, magic lit", BOTTOM, PORTRAIT, 9001),
]

fbc_examples: list[list] = [
    _fbc("fg_astronaut_portrait.jpg", "bg_window_light.jpg", "beautiful woman, window light", UPLOAD, PORTRAIT, 12345),
    _fbc("fg_cameraman.jpg", "bg_neon.jpg", "handsome man, neo punk lighting, cyberpunk", UPLOAD, PORTRAIT, 2718),
    _fbc("fg_astronaut_cutout.png", "bg_hubble.jpg", "beautiful woman, astronaut, starlight", UPLOAD, SQUARE, 606),
    _fbc("fg_coffee_cutout.png", "bg_cafe_blur.jpg", "a cup of espresso, cafe, warm light", FLIP, PRODUCT, 31415),
    _fbc("fg_rocket_cutout.png", "bg_sunset.jpg", "a rocket, sunset, natural lighting", UPLOAD, PORTRAIT, 5050),
    _fbc("fg_chelsea.jpg", "bg_grass.jpg", "a cat, natural lighting, garden", LEFT, LANDSCAPE, 777),
    _fbc("fg_astronaut.jpg", "bg_studio.jpg", "beautiful woman, studio lighting", TOP, SQUARE, 99),
]

# Backgrounds offered as a quick list in the fbc app: generated light setups first, then photos and textures.
background_gallery: list[str] = [
    _path(name)
    for name in (
        "bg_sunset.jpg",
        "bg_window_light.jpg",
        "bg_neon.jpg",
        "bg_studio.jpg",
        "bg_bokeh.jpg",
        "bg_cafe_blur.jpg",
        "bg_hubble.jpg",
        "bg_brick.jpg",
        "bg_grass.jpg",
        "bg_gravel.jpg",
    )
]
