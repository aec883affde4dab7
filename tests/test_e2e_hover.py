"""Hover heatmaps in a real browser (Debian chromium via Playwright): DESIGN §1 step 2.

Generates the example image, opens Inspect Attention, and checks: hovering "wolf" then "moon" draws that word's
map (the canvas pixels are the engine's map for that word, computed here from the stored maps, through the colour
scale) within 50 ms and without a message to the server; a quick pass over other words logs nothing, a stay of
300 ms logs a `word_hover` row (sent in one batch); a click pins, Escape unpins, Tab moves the map like a hover.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.live_app import CHROMIUM, launch_chromium
from tests.test_e2e_browser import COLD_START_MS, TIMEOUT_MS, app_server  # noqa: F401 (the fixture)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium at /usr/bin/chromium")

ROOT = ".attune-hover"
OVERLAY = f"{ROOT} canvas.attune-hover-overlay"
CANVAS = """document.querySelector('[data-testid="stBidiComponentIsolated"]').shadowRoot
    .querySelector('canvas.attune-hover-overlay')"""
DRAWN = f"word => {{ const canvas = {CANVAS}; return canvas.dataset.drawn === word && !!canvas.dataset.latencyMs; }}"
CANVAS_PIXELS = f"""() => {{
  const canvas = {CANVAS};
  return {{word: canvas.dataset.drawn, latency: canvas.dataset.latencyMs, frame: canvas.dataset.frameMs,
          rgb: Array.from(canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data)
                 .filter((_, i) => i % 4 !== 3)}};
}}"""


def engine_levels(data_dir: Path, model: str, word: str) -> np.ndarray:
    """The engine's map of `word` with the default filters, as the bytes (0-255) the overlay must show."""
    from engine.attention.maps import AttentionMaps
    from engine.study.log import StudyLog
    from engine.words.prompt import tokenize_prompt
    from engine.words.tokenizer import load_tokenizer
    from ui.hover.payload import map_bytes, map_size

    version = StudyLog(data_dir / "attune_log.sqlite").versions_df().iloc[-1]
    tokens = tokenize_prompt(load_tokenizer(Path(model) / "tokenizer"), version.prompt, version.syntax)
    width, height = map_size(int(version.width), int(version.height))
    return map_bytes(AttentionMaps.load(version.maps_path).word_heatmap(tokens, word, size=(height, width))).ravel()


def canvas_levels(rgb: list[int]) -> np.ndarray:
    """The overlay's pixels read back through the colour scale: each pixel's nearest of its 256 colours."""
    from ui.hover.payload import colour_table

    table = np.frombuffer(bytes.fromhex(colour_table("Jet")), np.uint8).reshape(256, 3).astype(np.int32)
    pixels = np.array(rgb, np.int32).reshape(-1, 1, 3)
    return np.abs(pixels - table[None]).sum(axis=2).argmin(axis=1)


def test_hover_pin_and_logged_events_in_a_real_browser(app_server, tiny_model_dir):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    from engine.study.log import StudyLog
    from tests.test_e2e_browser import e2e_model

    url, data_dir = app_server
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)
        sent: list[str] = []  # every message the page sends to the server (a rerun request among them)
        received: list[int] = []  # the size of every message from the server
        page.on("websocket", lambda ws: (ws.on("framesent", lambda frame: sent.append(frame)),
                                         ws.on("framereceived", lambda frame: received.append(len(frame)))))
        try:
            page.goto(f"{url}/?pid=hover-P1")
            page.get_by_role("button", name="Try the example").click(timeout=COLD_START_MS)
            expect(page.get_by_text("Version 1 is ready")).to_be_visible()
            page.locator("[data-testid='stSidebarNav']").get_by_role("link", name="Inspect Attention").click()
            root = page.locator(ROOT)
            expect(root).to_have_attribute("data-ready", "true")
            expect(page.locator("[data-testid='stStatusWidget']")).to_be_hidden()
            page.wait_for_timeout(500)
            assert max(received) > 10_000  # the first draw sends the large elements: the maps, the image, the grid
            received.clear()
            word = lambda w: root.locator(f".attune-hover-word[data-word='{w}']").first  # noqa: E731

            shown = {}
            for name in ("wolf", "moon"):
                before = len(sent)
                if name == "wolf":
                    word(name).hover()
                else:  # straight along the words from "wolf": the words passed on the way do not count
                    page.mouse.move(*center(word(name)), steps=6)
                page.wait_for_function(DRAWN, arg=name, polling=5, timeout=5000)
                shown[name] = page.evaluate(CANVAS_PIXELS)
                assert len(sent) == before, f"hovering {name} sent a message to the server"
                assert float(shown[name]["latency"]) < 50, shown[name]["latency"]
                print(f"hover {name}: pointer event to the map on the canvas {shown[name]['latency']} ms, "
                      f"to the next frame {shown[name]['frame']} ms")
                page.wait_for_timeout(450)  # a stay long enough to count as a hover
                if name == "wolf":  # its batch went out and its run is over, so the next count starts clean
                    wait_for_rows(data_dir, lambda rows: len(rows) >= 1)
                    expect(page.locator("[data-testid='stStatusWidget']")).to_be_hidden()

            # The runs that took the two batches did not send the maps again (Streamlit sends a repeated element
            # of 10 kB or more as a reference to the browser's copy)
            assert [r["word"] for r in wait_for_rows(data_dir, lambda rows: len(rows) >= 2)] == ["wolf", "moon"]
            expect(page.locator("[data-testid='stStatusWidget']")).to_be_hidden()
            assert received and max(received) < 10_000, max(received)
            print(f"hover payload: largest message of the runs that took the batches {max(received)} B")
            # The overlay is the engine's map of that word (the log's maps are stored as fp16: one level off at most)
            for name in ("wolf", "moon"):
                drawn, engine = canvas_levels(shown[name]["rgb"]), engine_levels(data_dir, e2e_model(tiny_model_dir), name)
                assert np.abs(drawn - engine).max() <= 1 and (drawn == engine).mean() > 0.9, name
            assert np.abs(canvas_levels(shown["wolf"]["rgb"]) - canvas_levels(shown["moon"]["rgb"])).max() > 20

            # A click pins "wolf": it stays while the pointer is away, and the server keeps the pin
            word("wolf").click()
            page.mouse.move(5, 5)
            expect(root).to_have_attribute("data-pinned", "wolf")
            expect(page.locator(OVERLAY)).to_have_attribute("data-drawn", "wolf")
            expect(root).to_have_attribute("data-server-pinned", "wolf")  # redrawn by the run that logged the pin
            expect(page.locator(OVERLAY)).to_have_attribute("data-drawn", "wolf")
            # Keyboard focus works like a hover (Tab from "full" to "moon"); Escape unpins
            word("full").focus()
            page.keyboard.press("Tab")
            expect(page.locator(OVERLAY)).to_have_attribute("data-drawn", "moon")
            page.wait_for_timeout(450)
            word("moon").blur()
            expect(page.locator(OVERLAY)).to_have_attribute("data-drawn", "wolf")  # the pin shows again
            page.keyboard.press("Shift+Tab")
            page.keyboard.press("Tab")
            page.keyboard.press("Enter")  # the keyboard's click: pins "moon"; the redraw keeps the focus there
            expect(root).to_have_attribute("data-server-pinned", "moon")
            assert page.evaluate(f"() => {{ const canvas = {CANVAS}; return canvas.getRootNode().activeElement?.dataset.word; }}") == "moon"
            page.keyboard.press("Escape")
            expect(root).to_have_attribute("data-pinned", "")
            expect(page.locator(OVERLAY)).to_have_attribute("data-drawn", "moon")  # it still has the focus
            expect(root).to_have_attribute("data-server-pinned", "")
            word("moon").blur()
            expect(page.locator(OVERLAY)).to_have_attribute("data-drawn", "")
            rows = wait_for_rows(data_dir, lambda rows: rows and rows[-1]["action"] == "word_unpin")
        finally:
            browser.close()

    # "full" had the focus before Tab: on a slow machine it may have kept it 300 ms and count as a keyboard hover
    rows = [r for r in rows if (r["word"], r.get("via")) != ("full", "keyboard")]
    assert [(r["action"], r["word"]) for r in rows] == [
        ("word_hover", "wolf"), ("word_hover", "moon"), ("word_pin", "wolf"), ("word_hover", "moon"),
        ("word_pin", "moon"), ("word_unpin", "moon")]
    assert [r["via"] for r in rows if r["action"] == "word_hover"] == ["pointer", "pointer", "keyboard"]
    events = StudyLog(data_dir / "attune_log.sqlite").events_df()
    hovers = events[events.action.str.startswith("word_")]
    assert set(hovers.page) == {"inspect"} and set(hovers.participant_id) == {"hover-P1"}


def center(locator) -> tuple[float, float]:
    box = locator.bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def wait_for_rows(data_dir: Path, done, timeout_s: float = 30) -> list[dict]:
    """The hover and pin rows of the log, once `done(rows)` (or after timeout_s)."""
    import time

    from engine.study.log import StudyLog

    deadline = time.monotonic() + timeout_s
    while True:
        events = StudyLog(data_dir / "attune_log.sqlite").events_df()
        rows = [dict(json.loads(p), action=a) for a, p in zip(events.action, events.payload) if a.startswith("word_")]
        if done(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)
