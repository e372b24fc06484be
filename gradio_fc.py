"""IC-Light text-conditioned relighting app (fc): foreground + prompt + light direction."""

from __future__ import annotations

from collections.abc import Sequence

import gradio as gr

from core.params import LightDirection, Mode
from core.service import Relighter
from db_examples import fc_examples
from ui.form import FC_CHOICES
from ui.page import AppSpec, Page, build_demo, quick_list, set_lighting, set_subject
from ui.settings import AppSettings, main

TITLE = "IC-Light: relight with text"
INTRO = (
    "Upload a subject, describe the subject and the lighting, pick where the light comes from (or place it on the "
    "light pad) and press **Relight**. The light pad preview is instant; the diffusion result takes longer."
)
# The official fc demo's quick lists.
SUBJECTS = ("beautiful woman, detailed face", "handsome man, detailed face")
LIGHTINGS = (
    "sunshine from window",
    "neon light, city",
    "sunset over sea",
    "golden time",
    "sci-fi RGB glowing, cyberpunk",
    "natural lighting",
    "warm atmosphere, at home, bedroom",
    "magic lit",
    "evil, gothic, Yharnam",
    "light and shadow",
    "shadow from window",
    "soft studio lighting",
    "home atmosphere, cozy bedroom illumination",
    "neon, Wong Kar-wai, warm",
)


def _quick_lists(page: Page) -> None:
    """Subject and lighting quick lists: a subject click keeps the lighting, a lighting click keeps the subject."""
    prompt = page.inputs["prompt"]
    subjects = quick_list("Subject quick list", SUBJECTS)
    lightings = quick_list("Lighting quick list", LIGHTINGS)
    subjects.click(set_subject, inputs=[subjects, prompt], outputs=prompt, api_visibility="private", queue=False)
    lightings.click(set_lighting, inputs=[lightings, prompt], outputs=prompt, api_visibility="private", queue=False)


SPEC = AppSpec(
    mode=Mode.FC,
    title=TITLE,
    intro=INTRO,
    choice_label="Lighting preference (initial latent)",
    choices=FC_CHOICES,
    choice_default=LightDirection.NONE.label,
    examples=fc_examples,
    example_fields=("foreground", "prompt", "light", "width", "height", "seed"),
    add_quick_lists=_quick_lists,
)


def create_demo(relighter: Relighter | None = None, settings: AppSettings | None = None) -> gr.Blocks:
    """The fc app; nothing is loaded until the first request."""
    return build_demo(SPEC, relighter, settings)


def run(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    main(create_demo, TITLE, argv)


if __name__ == "__main__":
    run()
