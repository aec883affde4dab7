"""Screenshots of the word cards and an Explore grid for docs/prompt_assist.md, in a real browser.

    python -m bench.prompt_assist_shots            # writes docs/screenshots/1*_*.png

Starts the app (built-in model, 4 steps) on a free port, drives Debian chromium headless with Playwright through
`explore_flow` (which tests/test_e2e_explore.py runs too), and saves the pictures.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from bench.live_app import REPO, free_port, launch_chromium, start_streamlit, stop_streamlit, wait_until_up

SHOTS = REPO / "docs" / "screenshots"
MOON = 11  # word index of "moon" in the example prompt


def explore_flow(page, url: str, expect, shot=None) -> None:
    """Generate the example, open the "moon" card, explore sun/stars/clouds, use the second cell, see it current."""

    def settled() -> None:
        page.wait_for_timeout(300)
        expect(page.locator("[data-testid='stStatusWidget']")).to_be_hidden()
        expect(page.locator("[data-stale='true']")).to_have_count(0)

    def picture(name: str, target=None) -> None:
        if shot is not None:
            settled()
            (target or page.locator(".st-key-explore_panel")).evaluate("e => e.scrollIntoView({block: 'start'})")
            page.mouse.move(5, 5)  # no hover toolbar over the images
            page.wait_for_timeout(300)
            shot(name)

    page.goto(f"{url}/Generate?pid=e2e-explore&condition=full")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_text("v1 (current)")).to_be_visible()
    settled()
    card = page.locator(f".st-key-word_card_generate_{MOON}")
    expect(card.locator(".attune-chip")).to_have_text("moon")
    picture("10_word_cards", page.get_by_role("heading", name="Words"))
    card.get_by_role("button", name="Edit").click()
    page.locator(f"[class*='st-key-card_generate_'][class*='_{MOON}_explore'] button:visible").click()
    panel = page.locator(".st-key-explore_panel")
    expect(panel.get_by_text("Explore “moon”")).to_be_visible()
    settled()
    panel.get_by_role("button", name="Generate grid").click()
    expect(panel.get_by_text("v4: clouds")).to_be_visible()
    expect(panel.get_by_text("v2: sun")).to_be_visible()
    picture("11_explore_grid")
    panel.get_by_role("button", name="Use this", exact=True).nth(1).click()  # stars
    expect(page.get_by_text("v3 (“stars” for “moon”) is now the current version.")).to_be_visible()
    expect(page.get_by_text("v3 (current)")).to_be_visible()
    expect(page.get_by_text("v3 ●")).to_have_count(1)  # the strip marks it current
    expect(page.locator(".st-key-strip_card_3")).to_contain_text("explore ← v1")


def main() -> int:
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = dict(os.environ, ATTUNE_DATA_DIR=str(Path(tmp) / "data"), ATTUNE_DEFAULT_STEPS="4", PYTHONUNBUFFERED="1",
                   ATTUNE_BACKEND="torch")
        env.pop("ATTUNE_CONDITIONS", None)
        log_path = Path(tmp) / "streamlit.log"
        with open(log_path, "w") as log:
            server = start_streamlit(port, env, log)
            url = f"http://127.0.0.1:{port}"
            try:
                wait_until_up(url, server, log_path, poll_s=0.3, timeout_s=90)
                with sync_playwright() as playwright:
                    browser = launch_chromium(playwright)
                    page = browser.new_page(viewport={"width": 1360, "height": 1100})
                    page.set_default_timeout(120_000)
                    expect.set_options(timeout=120_000)
                    try:
                        explore_flow(page, url, expect, shot=lambda name: page.screenshot(path=str(SHOTS / f"{name}.png")))
                    finally:
                        browser.close()
            finally:
                stop_streamlit(server)
    print("\n".join(str(p) for p in sorted(SHOTS.glob("1[0-9]_*.png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
