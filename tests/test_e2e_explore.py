"""End to end in a real browser: a word card's Explore -> a same-seed grid -> use one cell -> it is current in the
strip and in the log. Uses the app server fixture of tests/test_e2e_browser.py and the flow the docs screenshots use."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.live_app import CHROMIUM, free_port, start_streamlit, stop_streamlit, wait_until_up
from bench.prompt_assist_shots import explore_flow
from tests import test_e2e_browser as base
from tests.browser_support import browser_page

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium at /usr/bin/chromium")


@pytest.fixture
def app_server(tmp_path, tiny_model_dir):
    """The app on a free port with the built-in (or tiny) model on PyTorch: no ONNX export to wait for."""
    port = free_port()
    env = dict(os.environ, ATTUNE_MODEL=base.e2e_model(tiny_model_dir), ATTUNE_DATA_DIR=str(tmp_path / "data"),
               ATTUNE_BACKEND="torch", ATTUNE_DEFAULT_STEPS="4", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("ATTUNE_CONDITIONS", None)
    with open(tmp_path / "streamlit.log", "w") as log_file:
        server = start_streamlit(port, env, log_file)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(url, server, tmp_path / "streamlit.log", poll_s=0.3, timeout_s=60)
            yield url, tmp_path / "data"
        finally:
            stop_streamlit(server)
    text = (tmp_path / "streamlit.log").read_text()
    assert "Traceback" not in text, text[-3000:]


def test_explore_then_choose_an_alternative(app_server):
    from playwright.sync_api import expect

    url, data_dir = app_server
    with browser_page({"width": 1360, "height": 1100}, base.TIMEOUT_MS, data_dir.parent) as page:
        explore_flow(page, url, expect)

    from engine.study.log import StudyLog

    log = StudyLog(data_dir / "attune_log.sqlite")
    versions = log.versions_df().sort_values("number")
    assert list(versions.kind) == ["generate", "explore", "explore", "explore"]
    assert set(versions.seed) == {7} and set(versions.parent_id.iloc[1:]) == {versions.id.iloc[0]}
    assert [p.split(" the full ")[1].split(",")[0] for p in versions.prompt.iloc[1:]] == ["sun", "stars", "clouds"]
    events = log.events_df()
    chosen = [json.loads(p) for p in events[events.action == "alternative_chosen"].payload]
    assert [c["alternative"] for c in chosen] == ["stars"]
    assert "explore" in set(events.action)
