"""IC-Light background-conditioned relighting app (fbc): foreground + background + prompt."""

from __future__ import annotations

from collections.abc import Sequence

import gradio as gr

from core.params import BGSource, Mode
from core.service import Relighter
from db_examples import background_gallery, fbc_examples
from ui.form import FBC_CHOICES
from ui.page import (
    AppSpec,
    Page,
    build_demo,
    image_input,
    quick_list,
    set_prompt,
    wire_normals,
)
from ui.settings import AppSettings, main

TITLE = "IC-Light: relight with a background"
INTRO = (
    "Upload a subject and a background (or pick one below), describe them and press **Relight**: the subject is "
    "lit to match the background. A light direction or the light pad's **Custom Light** can replace the "
    "background. **Compute Normal** estimates a normal map from four relights."
)
# The official fbc demo's prompt quick list.
PROMPTS = (
    "beautiful woman",
    "handsome man",
    "beautiful woman, cinematic lighting",
    "handsome man, cinematic lighting",
    "beautiful woman, natural lighting",
    "handsome man, natural lighting",
    "beautiful woman, neo punk lighting, cyberpunk",
    "handsome man, neo punk lighting, cyberpunk",
)
IMAGE_SOURCES = (BGSource.UPLOAD.label, BGSource.FLIP.label)  # choices that use the background image


def _background_input(page: Page) -> None:
    """The background image beside the foreground."""
    page.inputs["background"] = image_input("Background")


def _normals_button(page: Page) -> None:
    """'Compute Normal' beside Relight."""
    page.parts["normals"] = gr.Button("Compute Normal")


def pick_background(choice: str, evt: gr.SelectData) -> tuple[str, str]:
    """A background gallery click: use that image, and switch the source to it if a light was chosen."""
    return evt.value["image"]["path"], choice if choice in IMAGE_SOURCES else BGSource.UPLOAD.label


def _quick_lists(page: Page) -> None:
    """Prompt quick list and background gallery."""
    prompt, background, source = page.inputs["prompt"], page.inputs["background"], page.inputs["bg_source"]
    prompts = quick_list("Prompt quick list", PROMPTS)
    prompts.click(set_prompt, inputs=prompts, outputs=prompt, api_visibility="private", queue=False)
    gallery = gr.Gallery(
        background_gallery,
        label="Background quick list (click to use)",
        columns=5,
        height=220,
        allow_preview=False,
        object_fit="cover",
    )
    gallery.select(pick_background, inputs=source, outputs=[background, source], api_visibility="private", queue=False)


SPEC = AppSpec(
    mode=Mode.FBC,
    title=TITLE,
    intro=INTRO,
    choice_label="Background source",
    choices=FBC_CHOICES,
    choice_default=BGSource.UPLOAD.label,
    examples=fbc_examples,
    example_fields=("foreground", "background", "prompt", "bg_source", "width", "height", "seed"),
    add_inputs=_background_input,
    add_actions=_normals_button,
    add_quick_lists=_quick_lists,
    add_events=lambda page, settings: wire_normals(page, page.parts["normals"], settings),
)


def create_demo(relighter: Relighter | None = None, settings: AppSettings | None = None) -> gr.Blocks:
    """The fbc app; nothing is loaded until the first request."""
    return build_demo(SPEC, relighter, settings)


def run(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    main(create_demo, TITLE, argv)


if __name__ == "__main__":
    run()
