"""Headless Chromium against the running fc app: the page loads, an example fills the form, Relight shows a result."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from app_testing import start_app

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
PAGE_TIMEOUT_MS = 60_000
RUN_TIMEOUT_MS = 120_000


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


def _wait_until(condition: Callable[[], bool]) -> bool:
    """Poll `condition` until it holds or the run timeout passes."""
    deadline = time.monotonic() + RUN_TIMEOUT_MS / 1000
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_fc_page_loads_an_example_relights_and_stops(fc_app):
    from playwright.sync_api import expect, sync_playwright

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(fc_app.demo.local_url, timeout=PAGE_TIMEOUT_MS)
            page.wait_for_selector("#relight", timeout=PAGE_TIMEOUT_MS)
            expect(page.locator("#status")).to_contain_text("IC-Light fc")
            # 1. An example fills the form (image, prompt, light, size, seed) without running anything.
            image, prompt, light, width, height, seed = fc_examples[0]
            page.locator("tbody tr").first.click()
            expect(page.get_by_label("Prompt", exact=True)).to_have_value(prompt)
            expect(page.get_by_label(light, exact=True)).to_be_checked()
            expect(page.get_by_label("number input for Width")).to_have_value(str(width))
            expect(page.locator("#results img")).to_have_count(0)
            # 2. Keep the tiny-model run short, then relight.
            page.get_by_text("Advanced").click()
            _set_number(page, "Steps", 2)
            _set_number(page, "Highres scale", 1)
            page.locator("#relight").click()
            expect(page.get_by_text("Saved:")).to_be_visible(timeout=RUN_TIMEOUT_MS)
            expect(page.locator("#results img").first).to_be_visible()
            expect(page.get_by_label("Seed used")).to_have_value(str(seed))
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser_fc.png"), full_page=True)
            # 3. Stop really stops a long run: its worker thread ends between two steps.
            _set_number(page, "Steps", 100)
            page.locator("#relight").click()
            assert _wait_until(lambda: len(fc_app.relighter.jobs) == 2)
            job = fc_app.relighter.jobs[-1]
            assert _wait_until(lambda: job.steps >= 2)
            page.get_by_role("button", name="Stop").click()
            assert job.ended.wait(RUN_TIMEOUT_MS / 1000), "the job kept running after Stop"
            assert isinstance(job.error, CancelledError) and job.steps < job.total
            # 4. Suggestions (offline here) appear as chips; a chip replaces the lighting part of the prompt.
            page.get_by_role("button", name="Suggest lighting").click()
            expect(page.get_by_text("Offline suggestions")).to_be_visible(timeout=PAGE_TIMEOUT_MS)
            chip = page.locator("#suggestions button").first
            lighting = chip.inner_text().strip()
            chip.click()
            expect(page.get_by_label("Prompt", exact=True)).to_have_value(replace_lighting(prompt, lighting))
        finally:
            browser.close()
    assert errors == []
