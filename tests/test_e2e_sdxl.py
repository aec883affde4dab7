"""Issue 23's session scenario on SDXL, in a real browser, on the default backend.

A tiny random-weight SDXL-shaped folder (tests/tiny_model.build_sdxl_model; its attune.json asks for 3 steps) goes
through generate, inspect, reweight, inpaint (mask from word), compare and the app's replay. The locators are roles
and labels, not positions, so a relayout of a page does not break the test.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.live_app import CHROMIUM, free_port, start_streamlit, stop_streamlit, wait_until_up
from tests.browser_support import browser_page
from tests.tiny_model import build_sdxl_model, tiny_sdxl_unet

STEPS = 3
TIMEOUT_MS = int(os.environ.get("ATTUNE_E2E_TIMEOUT_MS", "90000"))
COLD_START_MS = max(TIMEOUT_MS, int(os.environ.get("ATTUNE_E2E_COLD_START_MS", "300000")))  # first page loads the model

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium at /usr/bin/chromium")


@pytest.fixture
def sdxl_app(tmp_path):
    model = build_sdxl_model(tmp_path / "sdxl")
    (model / "attune.json").write_text(json.dumps({"steps": STEPS}))
    port = free_port()
    env = dict(os.environ, ATTUNE_MODEL=str(model), ATTUNE_DATA_DIR=str(tmp_path / "data"), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1", ATTUNE_RESEARCHER_PASSWORD="e2e-secret")
    for name in ("ATTUNE_CONDITIONS", "ATTUNE_DEFAULT_STEPS", "ATTUNE_BACKEND"):  # the default backend and steps
        env.pop(name, None)
    log_path = tmp_path / "streamlit.log"
    with open(log_path, "w") as log_file:
        server = start_streamlit(port, env, log_file)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_up(url, server, log_path, poll_s=0.3, timeout_s=60)
            yield url, tmp_path / "data"
        finally:
            stop_streamlit(server)
    text = log_path.read_text()
    assert "Traceback" not in text, text[-3000:]


def sdxl_scenario(page, url, expect) -> None:
    def settled() -> None:
        page.wait_for_timeout(300)
        expect(page.locator("[data-testid='stStatusWidget']")).to_be_hidden()
        expect(page.locator("[data-stale='true']")).to_have_count(0)

    def nav(name: str) -> None:
        settled()  # a click while a run is going can be dropped
        page.locator("[data-testid='stSidebarNav']").get_by_role("link", name=name, exact=True).click()
        expect(page.get_by_role("heading", name=name, exact=True).first).to_be_visible()
        settled()

    # Generate: the widgets start at the SDXL folder's own defaults (attune.json's steps, its 64 px, guidance 5)
    page.goto(f"{url}/?pid=sdxl-P1")
    expect(page.get_by_role("button", name="Try the example")).to_be_enabled(timeout=COLD_START_MS)
    nav("Generate")
    expect(page.get_by_label("Steps")).to_have_value(str(STEPS))
    expect(page.get_by_label("Guidance", exact=True)).to_have_value("5.00")
    expect(page.get_by_text("SDXL: defaults from")).to_be_visible()
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_text("v1 (current)")).to_be_visible()

    # Inspect: the hover heatmap is drawn, and the layer filter lists SDXL's attention layers
    nav("Inspect Attention")
    hover = page.locator(".attune-hover")
    expect(hover).to_have_attribute("data-ready", "true")
    hover.locator(".attune-hover-word[data-word='moon']").hover()
    expect(hover.locator("canvas")).to_have_attribute("data-drawn", "moon")
    layers = page.get_by_label("Layers", exact=True)  # the filter lists the real attn2 layers (typing filters it)
    real = [name.removesuffix(".processor") for name in tiny_sdxl_unet().attn_processors if ".attn2." in name]
    assert len(real) == 11 and any("transformer_blocks.1" in name for name in real)  # several layers per block
    for name in real:
        layers.fill(name)
        expect(page.get_by_role("option").filter(has_text=name)).to_have_count(1)
    layers.fill("")
    page.keyboard.press("Escape")

    # Refine: "moon" to 1.2 (keyboard on the real slider), Apply -> v2
    nav("Refine")
    moon = page.get_by_text("moon", exact=True)  # the same locator as tests/test_e2e_browser.py's
    slider = page.locator("[data-testid='stSlider']").filter(has=moon).get_by_role("slider")
    slider.focus()
    for _ in range(2):
        slider.press("ArrowRight")
    expect(slider).to_have_value("1.2")
    settled()
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_text("v2 (current)")).to_be_visible()

    # Inpaint with the mask from a word -> v3
    settled()
    page.get_by_role("button", name="Mask from word").click()
    expect(page.get_by_text("pre-filled from")).to_be_visible()
    settled()
    inpaint_box = page.get_by_label("Inpaint prompt")  # a typed box runs the model (an empty one erases by fill)
    inpaint_box.fill("replace with a house")
    inpaint_box.press("Enter")
    expect(page.get_by_text("will run: “a house, night sky”")).to_be_visible()
    settled()
    page.get_by_role("button", name="Inpaint", exact=True).click()
    expect(page.get_by_text("v3 inpainted from v2.")).to_be_visible()

    # Compare: the three versions side by side
    nav("Compare")
    expect(page.get_by_text("v3 · inpaint · current")).to_be_visible()
    expect(page.get_by_text("difference from v1 (×2)")).to_have_count(2)

    # Replay from the log (Researcher): every version identical
    nav("Researcher")
    page.get_by_label("Password", exact=True).fill("e2e-secret")
    page.get_by_role("button", name="Open").click()
    page.get_by_role("button", name="Replay all versions").click()
    metric = page.locator("[data-testid='stMetric']").filter(has_text="Bit-identical")
    expect(metric.locator("[data-testid='stMetricValue']")).to_have_text("3 / 3")


def test_sdxl_session_in_a_real_browser(sdxl_app):
    from playwright.sync_api import expect

    url, data_dir = sdxl_app
    with browser_page({"width": 1360, "height": 1500}, TIMEOUT_MS, data_dir.parent) as page:
        sdxl_scenario(page, url, expect)

    from engine.study.log import StudyLog

    versions = StudyLog(data_dir / "attune_log.sqlite").versions_df().sort_values("number")
    assert list(versions["kind"]) == ["generate", "reweight", "inpaint"]
    assert set(versions["backend"]) == {"torch"} and set(versions["steps"]) == {STEPS}
    assert set(versions["width"]) == set(versions["height"]) == {64}
    assert json.loads(versions.iloc[1]["weights"]) == {"moon": 1.2}
