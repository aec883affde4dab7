"""End to end in a real browser: a word card's Explore -> a same-seed grid -> use one cell -> it is current in the
strip and in the log. Uses the app server fixture of tests/test_e2e_browser.py and the flow the docs screenshots use."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.live_app import CHROMIUM, launch_chromium
from bench.prompt_assist_shots import explore_flow
from tests import test_e2e_browser as base

app_server = base.app_server  # the fixture: streamlit on a free port with the built-in (or tiny) model
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium at /usr/bin/chromium")


def test_explore_then_choose_an_alternative(app_server):
    from playwright.sync_api import expect, sync_playwright

    url, data_dir = app_server
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1360, "height": 1100})
        page.set_default_timeout(base.TIMEOUT_MS)
        expect.set_options(timeout=base.TIMEOUT_MS)
        try:
            explore_flow(page, url, expect)
        except BaseException:
            page.screenshot(path=str(data_dir.parent / "failure.png"))
            print("failure screenshot:", data_dir.parent / "failure.png")
            raise
        finally:
            browser.close()

    from engine.log import StudyLog

    log = StudyLog(data_dir / "attune_log.sqlite")
    versions = log.versions_df().sort_values("number")
    assert list(versions.kind) == ["generate", "explore", "explore", "explore"]
    assert set(versions.seed) == {7} and set(versions.parent_id.iloc[1:]) == {versions.id.iloc[0]}
    assert [p.split(" the full ")[1].split(",")[0] for p in versions.prompt.iloc[1:]] == ["sun", "stars", "clouds"]
    events = log.events_df()
    chosen = [json.loads(p) for p in events[events.action == "alternative_chosen"].payload]
    assert [c["alternative"] for c in chosen] == ["stars"]
    assert "explore" in set(events.action)
