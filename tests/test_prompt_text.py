"""Tests for core/lighting/prompt_words.py: swapping the lighting part of a prompt and cleaning model phrases."""

from __future__ import annotations

import pytest

from core.lighting.prompt_words import MAX_LIGHTING_WORDS, clean_lighting, lighting_key, replace_lighting, split_items


def _official(prompt: str, lighting: str) -> str:
    """What the official demos' quick-prompt buttons do."""
    return ", ".join(prompt.split(", ")[:2] + [lighting])


@pytest.mark.parametrize(
    "prompt",
    [
        "beautiful woman, detailed face, sunshine from window",
        "handsome man, detailed face, neon light, city",
        "a cat, fluffy fur",
        "beautiful woman, detailed face, warm atmosphere, at home, bedroom",
    ],
)
def test_replace_lighting_matches_the_official_demo_on_ordinary_prompts(prompt: str) -> None:
    for lighting in ("golden time", "sci-fi RGB glowing, cyberpunk"):
        assert replace_lighting(prompt, lighting) == _official(prompt, lighting)


def test_replace_lighting_keeps_exactly_the_subject_items() -> None:
    assert replace_lighting("a man, detailed face, old light, more", "sunset over sea") == (
        "a man, detailed face, sunset over sea"
    )
    assert replace_lighting("a vase", "soft studio lighting") == "a vase, soft studio lighting"


def test_replace_lighting_tolerates_sloppy_commas_and_empty_parts() -> None:
    # The official one-liner would give ", golden time" and keep the odd spacing.
    assert replace_lighting("", "golden time") == "golden time"
    assert (
        replace_lighting("  a man ,detailed face,,  x ", " neon light ,city ")
        == "a man, detailed face, neon light, city"
    )
    assert replace_lighting("a man, detailed face, old", "") == "a man, detailed face"


def test_split_items_strips_and_drops_empty_items() -> None:
    assert split_items(" a , b,,c ,") == ["a", "b", "c"]
    assert split_items("   ") == []


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  golden time  ", "golden time"),
        ('"Sunset over sea."', "Sunset over sea"),
        ("1. neon light, city", "neon light, city"),
        ("- soft studio lighting", "soft studio lighting"),
        ("Prompt: shadow from window", "shadow from window"),
        ("sunshine\nfrom\twindow", "sunshine from window"),
        ("neon light ,city", "neon light, city"),
        ("sci-fi RGB glowing, cyberpunk", "sci-fi RGB glowing, cyberpunk"),
        # Capped at six words, and the dangling "with" left by the cut is dropped.
        ("neon light, city, rainy night with reflections everywhere", "neon light, city, rainy night"),
        ("one two three four five six seven eight", "one two three four five six"),
    ],
)
def test_clean_lighting(raw: str, clean: str) -> None:
    assert clean_lighting(raw) == clean
    assert len(clean_lighting(raw).split()) <= MAX_LIGHTING_WORDS


@pytest.mark.parametrize("raw", [None, 42, ["golden time"], "", "   ", '""', "...", "x" * 200])
def test_clean_lighting_rejects_what_is_not_a_phrase(raw: object) -> None:
    assert clean_lighting(raw) == ""


def test_lighting_key_ignores_case_and_punctuation() -> None:
    assert lighting_key("Golden  Time!") == lighting_key("golden time")
    assert lighting_key("neon light, city") == lighting_key("Neon Light City")
    assert lighting_key("golden time") != lighting_key("golden hour")
