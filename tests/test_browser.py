"""Headless Chromium against the running fc app: examples, relight, one message per error, Stop, missing models."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from app_testing import app_settings, launch, start_app, subject_image, tiny_model_settings

from core.errors import CancelledError
from core.lighting.prompt_words import replace_lighting
from db_examples import fc_examples
from gradio_fc import create_demo

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
VIEWPORT = {"width": 1400, "height": 1000}
PHONE = {"width": 390, "height": 844}
PAGE_TIMEOUT_MS = 60_000
RUN_TIMEOUT_MS = 120_000
# Leaf elements reading just "Error" outside the message toasts: the badges Gradio paints on failed outputs.
ERROR_BADGES_JS = """() => [...document.querySelectorAll('body *')].filter(e => e.childElementCount === 0
    && e.textContent.trim() === 'Error' && !e.closest('[data-testid="toast-body"]')).length"""


@pytest.fixture(scope="module")
def fc_app(tiny_paths, tmp_path_factory):
    app = start_app(create_demo, tiny_paths, tmp_path_factory.mktemp("browser"))
    yield app
    app.demo.close()


def _set_number(page, label: str, value: float) -> None:
    """Type into the number box of a slider, as a user would."""
    box = page.get_by_label(f"number input for {label}")
    box.fill(str(value))
    box.press("Enter")


def _launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def _one_message(page, expect, text: str) -> None:
    """Exactly one toast, saying `text`, and no output box marked "Error"; then close the toast."""
    toast = page.locator('[data-testid="toast-body"]')
    expect(toast).to_have_count(1)
    expect(toast).to_contain_text(text)
    assert page.evaluate(ERROR_BADGES_JS) == 0
    page.locator('[data-testid="toast-close"]').click()
    expect(toast).to_have_count(0)


def _wait_until(condition: Callable[[], bool]) -> bool:
    """Poll `condition` until it holds or the run timeout passes."""
    deadline = time.monotonic() + RUN_TIMEOUT_MS / 1000
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_fc_page_loads_an_example_relights_and_stops(fc_app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = _launch_chromium(playwright)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(fc_app.demo.local_url, timeout=PAGE_TIMEOUT_MS)
            page.wait_for_selector("#relight", timeout=PAGE_TIMEOUT_MS)
            expect(page.locator("#status")).to_contain_text("Ready · fc · CPU fp32")
            expect(page.locator("#stop")).to_be_disabled()  # nothing runs, so Stop is not armed
            # 1. Handled errors are one message each and change no output: Relight without an image, a PNG
            #    without our settings.
            page.locator("#relight").click()
            _one_message(page, expect, "no foreground image was given")
            plain = subject_image(tmp_path / "plain.png", size=16)
            page.locator("input[type=file]").last.set_input_files(str(plain))
            _one_message(page, expect, "no IC-Light metadata")
            assert fc_app.relighter.jobs == []
            # 2. An example (a strip under the foreground) fills the form without running anything.
            image, prompt, light, width, height, seed = fc_examples[0]
            page.locator("#examples button").first.click()
            expect(page.get_by_label("Prompt", exact=True)).to_have_value(prompt)
            expect(page.get_by_label(light, exact=True)).to_be_checked()
            expect(page.get_by_label("number input for Width")).to_have_value(str(width))
            expect(page.locator("#results img")).to_have_count(0)
            expect(page.locator("#seed-used")).to_be_hidden()  # no run, no seed (rather than a 0)
            # 3. Keep the tiny-model run short, then relight.
            page.get_by_text("Advanced").click()
            _set_number(page, "Steps", 2)
            _set_number(page, "Highres scale", 1)
            expect(page.locator("#planned-size")).to_contain_text(f"Result: {width}×{height} px")
            page.locator("#relight").click()
            expect(page.get_by_text("Saved:")).to_be_visible(timeout=RUN_TIMEOUT_MS)
            expect(page.locator("#results img").first).to_be_visible()
            expect(page.get_by_label("Seed used")).to_have_value(str(seed))
            expect(page.locator("#stop")).to_be_disabled()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser_fc.png"), full_page=True)
            # 4. Stop really stops a long run between two steps and says where; the noisy preview goes.
            _set_number(page, "Steps", 100)
            page.locator("#relight").click()
            assert _wait_until(lambda: len(fc_app.relighter.jobs) == 2)
            job = fc_app.relighter.jobs[-1]
            assert _wait_until(lambda: job.steps >= 2)
            expect(page.locator("#stop")).to_be_enabled()
            page.locator("#stop").click()
            assert job.ended.wait(RUN_TIMEOUT_MS / 1000), "the job kept running after Stop"
            assert isinstance(job.error, CancelledError) and job.steps < job.total
            stopped = f"Stopped at step {job.steps} of {job.total}; nothing was saved."
            expect(page.locator("#run-info")).to_have_text(stopped, timeout=PAGE_TIMEOUT_MS)
            expect(page.locator("#results img")).to_have_count(0)
            expect(page.get_by_label("Seed used")).to_have_value(str(seed))  # the last real seed stays
            expect(page.locator("#stop")).to_be_disabled()
            # 5. Suggestions (offline here) appear as chips; a chip replaces the lighting part of the prompt.
            page.get_by_role("button", name="Suggest lighting").click()
            expect(page.get_by_text("Offline suggestions")).to_be_visible(timeout=PAGE_TIMEOUT_MS)
            chip = page.locator("#suggestions button").first
            lighting = chip.inner_text().strip()
            chip.click()
            expect(page.get_by_label("Prompt", exact=True)).to_have_value(replace_lighting(prompt, lighting))
            # 6. On a phone the results follow the Relight button, before the light pad.
            page.set_viewport_size(PHONE)
            relight, results, pad = (page.locator(key).bounding_box() for key in ("#stop", "#results", "#light-pad"))
            assert relight["y"] + relight["height"] <= results["y"] < pad["y"]
        finally:
            browser.close()
    assert errors == []


def test_missing_models_banner_and_a_relight_button_that_says_why(tiny_paths, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from gradio_fc import create_demo as create_fc

    model = tiny_model_settings(tiny_paths, models_dir=tmp_path / "empty")
    demo = create_fc(None, app_settings(model, tmp_path / "outputs"))
    try:
        url = launch(demo)
        with sync_playwright() as playwright:
            browser = _launch_chromium(playwright)
            try:
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(url, timeout=PAGE_TIMEOUT_MS)
                banner = page.locator("#weights-banner")
                expect(banner).to_contain_text("Relighting needs models that are not on this machine")
                expect(banner).to_contain_text("iclight_sd15_fc.safetensors")
                expect(banner).to_contain_text(str((tmp_path / "empty").resolve()))
                relight = page.locator("#relight")
                expect(relight).to_have_text("Relight (models missing, see above)")
                expect(relight).to_be_disabled()
                expect(page.locator("#status")).to_contain_text("Weights missing · fc")
            finally:
                browser.close()
    finally:
        demo.close()
