"""Prompt text helpers: swap the lighting part of a prompt and clean lighting phrases that come from a model."""

from __future__ import annotations

import re

SUBJECT_ITEMS = 2  # the official demos keep the first two comma-separated items as the subject
MAX_LIGHTING_WORDS = 6  # IC-Light lighting prompts are short phrases; longer model output is cut, not rejected
MAX_LIGHTING_CHARS = 80  # six "words" longer than this are not a prompt (base64, a URL, run-on text)
_ITEM_SPLIT = re.compile(r"\s*,\s*")
_LIST_MARKER = re.compile(r"^(?:[-*\u2022]|\d+[.)])\s+")  # "1. ", "- ", "* " from models that answer as a list
_LABEL = re.compile(r"^(?:lighting|prompt|suggestion)\s*:\s*", re.IGNORECASE)  # "Prompt: golden time"
_EDGE_JUNK = " \t\"'`\u201c\u201d\u2018\u2019.;:!,"  # quotes and sentence punctuation around a phrase
_NON_WORD = re.compile(r"[^0-9a-z]+")
# Cutting at six words can leave "rainy night with"; a dangling function word reads as a broken prompt.
_DANGLING = frozenset("a an and at by for from in into of on or the to with".split())


def split_items(prompt: str) -> list[str]:
    """The comma-separated items of a prompt, stripped, empty ones dropped."""
    return [item for item in _ITEM_SPLIT.split(prompt.strip()) if item]


def replace_lighting(prompt: str, lighting: str) -> str:
    """Keep the subject (the first two items, as the official demos do) and put `lighting` after it."""
    items = split_items(prompt)[:SUBJECT_ITEMS] + split_items(lighting)
    return ", ".join(items)


def clean_lighting(text: object) -> str:
    """A model's lighting phrase as a prompt: one line, no quotes or list marker, at most six words; '' if unusable."""
    if not isinstance(text, str):
        return ""
    text = " ".join(text.split())  # newlines, tabs and runs of spaces become single spaces
    text = _LABEL.sub("", _LIST_MARKER.sub("", text)).strip(_EDGE_JUNK)
    words = text.split(" ")[:MAX_LIGHTING_WORDS]
    while len(words) > 1 and words[-1].strip(_EDGE_JUNK).lower() in _DANGLING:
        words.pop()
    text = " ".join(words).strip(_EDGE_JUNK)
    text = ", ".join(split_items(text))  # "neon light ,city" -> "neon light, city"
    return text if len(text) <= MAX_LIGHTING_CHARS else ""


def lighting_key(text: str) -> str:
    """Case- and punctuation-insensitive form of a lighting phrase, for spotting duplicates."""
    return _NON_WORD.sub(" ", text.casefold()).strip()
