"""One headless chromium page for the browser tests: Debian's chromium through Playwright, the tests' timeouts, and a
screenshot of the page when the scenario fails."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from bench.live_app import launch_chromium


@contextmanager
def browser_page(viewport: dict, timeout_ms: int, failure_dir: Path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport=viewport)
        page.set_default_timeout(timeout_ms)
        expect.set_options(timeout=timeout_ms)
        try:
            yield page
        except BaseException:
            page.screenshot(path=str(failure_dir / "failure.png"))
            print("failure screenshot:", failure_dir / "failure.png")
            raise
        finally:
            browser.close()
