"""End to end in a real browser (Debian chromium driven by Playwright, 1280x800): the design scenario of docs/app.md.

Starts `streamlit run Home.py` on a free localhost port, then: generate; hover "wolf", then "moon", and see each
heatmap, pin "moon";
on the one-screen Refine page (no scrolling: checked) move the "full moon" slider to 1.5 and apply, mask from word
"sky", inpaint "replace with misty forest"; compare v1-v3; restore v2, paint a mask with real mouse drags (and erase
a bit) and inpaint again (a branch); download the events log. It asserts on what the page shows, on the log rows,
and that each inpaint shown passes the benchmark's own check (train.segment.found_inside: the segmenter finds the
misty forest inside the mask). It runs at the model's default settings, so `ATTUNE_SCREENSHOTS=docs/screenshots`
(the README's screenshots; otherwise the test's temp folder) shows what it checks.
"""
from __future__ import annotations

import csv
import zipfile
import io
import json
import os
from pathlib import Path

import pytest

from bench.live_app import (
    CHROMIUM, REPO, free_port, start_streamlit, stop_streamlit, wait_until_up,
)
from tests.browser_support import browser_page

SCREENSHOTS = os.environ.get("ATTUNE_SCREENSHOTS")  # e.g. docs/screenshots (relative to the repository)
TIMEOUT_MS = int(os.environ.get("ATTUNE_E2E_TIMEOUT_MS", "90000"))
# The first page loads the model and, on the auto backend, exports its ONNX graphs: minutes on a busy machine
COLD_START_MS = max(TIMEOUT_MS, int(os.environ.get("ATTUNE_E2E_COLD_START_MS", "300000")))

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium at /usr/bin/chromium (apt-get install chromium)")


def e2e_model(tiny_model_dir) -> str:
    """ATTUNE_E2E_MODEL, else the built-in model when it is in the checkout, else the tiny random test model."""
    if os.environ.get("ATTUNE_E2E_MODEL"):
        return os.environ["ATTUNE_E2E_MODEL"]
    builtin = REPO / "models" / "tiny-scenes"
    return str(builtin) if (builtin / "model_index.json").exists() else str(tiny_model_dir)


def builtin_model_used() -> bool:
    return not os.environ.get("ATTUNE_E2E_MODEL") and (REPO / "models" / "tiny-scenes" / "model_index.json").exists()


@pytest.fixture
def app_server(tmp_path, tiny_model_dir):
    port = free_port()
    env = dict(os.environ, ATTUNE_MODEL=e2e_model(tiny_model_dir), ATTUNE_DATA_DIR=str(tmp_path / "data"),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", ATTUNE_RESEARCHER_PASSWORD="e2e-secret")
    for name in ("ATTUNE_CONDITIONS", "ATTUNE_DEFAULT_STEPS"):  # default settings: what the README shows
        env.pop(name, None)
    if builtin_model_used():  # the app's own default, as a new user starts it (the sidebar shows no local path)
        env.pop("ATTUNE_MODEL")
    log_file = open(tmp_path / "streamlit.log", "w")
    server = start_streamlit(port, env, log_file)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, server, tmp_path / "streamlit.log", poll_s=0.3, timeout_s=60)
        yield url, tmp_path / "data"
    finally:
        stop_streamlit(server)
        log_file.close()
        text = (tmp_path / "streamlit.log").read_text()
        assert "Traceback" not in text, text[-3000:]


VIEWPORT = {"width": 1280, "height": 800}
SCROLL_SLACK_PX = 4


def assert_one_screen(page, *elements) -> None:
    """Nothing to scroll (the document and Streamlit's main pane, which scrolls itself), each element inside."""
    for element in elements:
        element.wait_for(state="visible")  # e.g. the canvas of a new version may still be mounting
    sizes = page.evaluate("""() => {
        const main = document.querySelector('[data-testid="stMain"]');
        return {doc: document.scrollingElement.scrollHeight, main: main.scrollHeight, mainView: main.clientHeight,
                inner: window.innerHeight, innerWidth: window.innerWidth};
    }""")
    assert sizes["doc"] <= sizes["inner"] + SCROLL_SLACK_PX, sizes
    assert sizes["main"] <= sizes["mainView"] + SCROLL_SLACK_PX, sizes
    for element in elements:
        box = element.bounding_box()
        assert box is not None and box["y"] >= 0 and box["x"] >= 0, (element, box)
        assert box["y"] + box["height"] <= sizes["inner"] and box["x"] + box["width"] <= sizes["innerWidth"], (element, box)


def showcase_check(data_dir: Path, number: int) -> None:
    """The inpaint benchmark's own check on a version the README shows: the misty forest inside its mask."""
    from engine import StudyLog, mask_array
    from PIL import Image
    from train.segment import found_inside

    versions = StudyLog(data_dir / "attune_log.sqlite").versions_df()
    row = versions[versions["number"] == number].iloc[0]
    image = Image.open(row["image_path"]).convert("RGB")
    mask = mask_array(row["mask_path"], image.size)
    assert found_inside(image, "misty forest", mask), f"v{number}: no misty forest inside the mask"


def drag(page, box, points) -> None:
    """A real mouse stroke through the given (fraction x, fraction y) points of the box."""
    x0, y0 = points[0]
    page.mouse.move(box["x"] + x0 * box["width"], box["y"] + y0 * box["height"])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=8)
    page.mouse.up()


HOVER_DWELL_MS = 450  # ui/hover/hover.js logs a word shown for 300 ms
TYPED, WILL_RUN = "replace with misty forest", "misty forest, night sky"  # the box, and the prompt that runs (time of day kept)


def scenario(page, url, expect, shots: Path, data_dir: Path, showcase: bool) -> list[dict]:
    """The design scenario's steps; returns the downloaded events log rows. `showcase`: the built-in model, whose
    inpaints are checked with the benchmark's segmenter."""

    def settled() -> None:
        """Wait until the script run is over: a click during a run can hit an element the run then replaces."""
        page.wait_for_timeout(300)
        expect(page.locator("[data-testid='stStatusWidget']")).to_be_hidden()
        expect(page.locator("[data-stale='true']")).to_have_count(0)

    def nav(name: str) -> None:
        page.locator("[data-testid='stSidebarNav']").get_by_role("link", name=name, exact=True).click()
        expect(page.get_by_role("heading", name=name, exact=True).first).to_be_visible()
        settled()

    def shot(name: str, *, top: bool = False, at=None) -> None:
        """A screenshot once the run has settled: no stale (greyed) elements, the canvas mounted where there is one."""
        settled()
        if page.get_by_role("heading", name="Refine", exact=True).count():
            expect(page.locator("canvas.upper-canvas")).to_have_count(1)  # the old canvas is gone, the new one mounted
            expect(page.locator("canvas.upper-canvas").last).to_be_visible()  # .last: a remount may have begun
        if top:
            page.locator("h1").first.scroll_into_view_if_needed()
        if at is not None:  # a tall page: start the picture at this element
            at.evaluate("e => { e.scrollIntoView({block: 'start'});"
                        " document.querySelector('[data-testid=\"stMain\"]').scrollBy(0, -80); }")  # below the header
        page.wait_for_timeout(300)
        page.screenshot(path=str(shots / f"{name}.png"))

    # 1. Generate (the study link carries the participant, study and condition)
    page.goto(f"{url}/?pid=e2e-P1&study=e2e-study&condition=full")
    expect(page.get_by_role("button", name="Try the example")).to_be_enabled(timeout=COLD_START_MS)
    expect(page.get_by_text("participant e2e-P1")).to_be_visible()
    shot("00_home")
    nav("Generate")
    prompt = page.get_by_label("Prompt", exact=True)
    expect(prompt).to_have_value("a painting of a wolf sitting in front of the full moon, night sky")
    expect(page.get_by_label("Seed")).to_have_value("7")
    page.get_by_role("button", name="Generate", exact=True).click()
    expect(page.get_by_text("v1 (current)")).to_be_visible()
    expect(page.get_by_text("v1 ●")).to_have_count(1)
    assert "sid=" in page.url and "pid=e2e-P1" in page.url
    shot("01_generate")

    # 2. Inspect: hover "wolf", then "moon", in the prompt under the image: each word's heatmap over the image; a
    # click pins "moon"
    nav("Inspect Attention")
    hover = page.locator(".attune-hover")
    expect(hover).to_have_attribute("data-ready", "true")
    hover.locator(".attune-hover-word[data-word='wolf']").hover()
    expect(hover.locator("canvas")).to_have_attribute("data-drawn", "wolf")
    page.wait_for_timeout(HOVER_DWELL_MS)  # a word counts as hovered (a log row) after 300 ms
    moon = hover.locator(".attune-hover-word[data-word='moon']")
    moon.hover()
    expect(hover.locator("canvas")).to_have_attribute("data-drawn", "moon")
    page.wait_for_timeout(HOVER_DWELL_MS)
    moon.click()
    expect(hover).to_have_attribute("data-server-pinned", "moon")  # the run that logged the pin drew it pinned
    expect(page.locator(".js-plotly-plot")).to_have_count(1)  # the grid of every word's map
    shot("02_inspect_moon")

    # 3. Refine, on one screen: the "full moon" slider (one slider for the phrase) to 1.5, Apply -> v2, same seed
    nav("Refine")
    canvas = page.locator("canvas.upper-canvas")
    expect(canvas).to_be_visible()
    full_moon = page.locator("[data-testid='stSlider']").filter(has=page.get_by_text("full moon", exact=True)).get_by_role("slider")
    expect(page.locator("[data-testid='stSlider']").filter(has=page.get_by_text("the", exact=True))).to_have_count(0)
    inpaint_box = page.get_by_label("Inpaint prompt")
    apply_button = page.get_by_role("button", name="Apply")
    inpaint_button = page.get_by_role("button", name="Inpaint", exact=True)
    settled()
    assert_one_screen(page, canvas, full_moon, apply_button, inpaint_box, inpaint_button)
    full_moon.focus()
    for _ in range(5):
        full_moon.press("ArrowRight")
    expect(full_moon).to_have_value("1.5")
    expect(page.get_by_text("To apply: more focus: full moon ×1.5")).to_be_visible()  # the app has the new value
    brush = page.locator("[data-testid='stSlider']").filter(has=page.get_by_text("Brush size", exact=True)).get_by_role("slider")
    # Clicked at once, while the slider's run may still be going, and followed at once by another widget change:
    # the race that used to drop this click (ui/streamlit_fixes.py). The click must still count.
    apply_button.click()
    brush.press("ArrowRight")
    expect(page.get_by_text("v2 made from v1 with seed 7: more focus: full moon ×1.5")).to_be_visible()
    settled()
    expect(page.get_by_text("v2 (current)")).to_be_visible()
    shot("03_refine_slider")

    # 4. Mask from word "sky", "replace with misty forest", Inpaint -> v3, still on one screen
    expect(page.get_by_text("· 0 strokes")).to_be_visible()
    words = page.locator(".attune-hover")  # the prompt's words beside the canvas: a click pins one
    expect(words).to_have_attribute("data-ready", "true")
    words.locator(".attune-hover-word[data-word='sky']").click()
    expect(words).to_have_attribute("data-server-pinned", "sky")
    expect(page.get_by_text("word: “sky”")).to_be_visible()
    page.get_by_role("button", name="Mask from word").click()
    expect(page.get_by_text("pre-filled from “sky”")).to_be_visible()
    inpaint_box.fill(TYPED)
    inpaint_box.press("Enter")
    expect(page.get_by_text(f"will run: “{WILL_RUN}”")).to_be_visible()
    shot("04_mask")
    inpaint_button.click()
    expect(page.get_by_text("v3 inpainted from v2.")).to_be_visible()
    settled()
    assert_one_screen(page, canvas, apply_button, inpaint_box, inpaint_button)  # v3's sliders: its inpaint prompt's words
    shot("05_inpaint")
    if showcase:
        showcase_check(data_dir, 3)

    # 5. Compare v1-v3, then restore v2 and inpaint again from a painted mask (a branch)
    nav("Compare")
    expect(page.get_by_text("v3 · inpaint · current")).to_be_visible()
    expect(page.get_by_text("difference from v1 (×2)")).to_have_count(2)
    table = page.locator("[data-testid='stDataFrame']")
    expect(table).to_be_visible()
    shot("06_compare", at=page.locator("[data-testid='stMultiSelect']"))
    page.get_by_role("button", name="Restore").nth(1).click()  # v2's column (v1, v2, v3)
    expect(page.get_by_text("v2 is current again")).to_be_visible()
    nav("Refine")
    expect(page.get_by_text("v2 (current)")).to_be_visible()
    expect(page.get_by_text("· 0 strokes")).to_be_visible()
    brush.focus()
    brush.press("End")  # the widest brush: the strokes below cover the sky down to the horizon
    expect(brush).to_have_value("60")

    def stroke(points, count: int) -> int:
        """Drag on the canvas until the app reports `count` strokes; returns the mask coverage in percent.
        A drag that lands while the freshly mounted canvas is still initialising draws nothing, so retry that."""
        for _ in range(3):
            settled()  # a run still going (the brush size, the tool) re-renders the canvas under the drag
            expect(canvas).to_have_count(1)
            page.wait_for_timeout(500)
            drag(page, canvas.bounding_box(), points)
            try:
                expect(page.get_by_text(f"· {count} strokes")).to_be_visible(timeout=8000)
                break
            except AssertionError:
                expect(page.get_by_text(f"· {count - 1} strokes")).to_be_visible(timeout=1000)  # nothing drawn: retry
        else:
            raise AssertionError(f"the canvas never reported {count} strokes")
        text = page.get_by_text("Mask covers").inner_text()
        return int(text.split("%")[0].split()[-1])

    first = stroke([(0.03, 0.33), (0.5, 0.33), (0.97, 0.33)], 1)
    covered = stroke([(0.03, 0.45), (0.5, 0.46), (0.97, 0.45)], 2)
    assert 0 < first < covered
    page.locator("[data-testid='stButtonGroup']").get_by_text("Eraser", exact=True).click()
    expect(page.get_by_text("Eraser strokes remove from the mask")).to_be_visible()
    after_erase = stroke([(0.5, 0.36), (0.5, 0.5)], 3)  # a gap through the lower band
    assert 0 < after_erase < covered
    expect(inpaint_box).to_have_value(TYPED)  # the box keeps its text across pages
    inpaint_button.click()
    expect(page.get_by_text("v4 inpainted from v2.")).to_be_visible()
    expect(page.get_by_text("Branches: v1 → v2 → v3 · v1 → v2 → v4")).to_be_visible()
    shot("07_branch")
    if showcase:
        showcase_check(data_dir, 4)

    # 6. Download the events log as CSV from Compare
    nav("Compare")
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Events log (CSV)").click()
    rows = list(csv.DictReader(io.StringIO(Path(download_info.value.path()).read_text())))
    with page.expect_download() as zip_info:
        page.get_by_role("button", name="Images (zip of PNGs with parameters)").click()
    with zipfile.ZipFile(zip_info.value.path()) as archive:
        names = sorted(archive.namelist())
        assert len(names) == 4 and names[1].startswith("v2_reweight")
        v2_png = archive.read(names[1])

    # 7. Upload v2's PNG: its parameters come back as a new version
    upload = Path(zip_info.value.path()).with_name("from_zip_v2.png")
    upload.write_bytes(v2_png)
    page.locator("[data-testid='stFileUploader'] input[type='file']").set_input_files(str(upload))
    expect(page.get_by_text("from_zip_v2.png")).to_be_visible()
    page.get_by_role("button", name="Restore from PNG").click()
    expect(page.get_by_text("Parameters restored from from_zip_v2.png as v5.")).to_be_visible()

    # 8. The researcher view: password, then the log's tables and summaries
    nav("Researcher")
    page.get_by_label("Password", exact=True).fill("e2e-secret")
    page.get_by_role("button", name="Open").click()
    expect(page.get_by_text("Versions per participant")).to_be_visible()
    expect(page.locator("[data-testid='stMetricValue']").nth(2)).to_have_text("5")  # versions
    shot("08_researcher", top=True)
    return rows


def test_design_scenario_in_a_real_browser(app_server):
    from playwright.sync_api import expect

    url, data_dir = app_server
    shots = (REPO / SCREENSHOTS) if SCREENSHOTS else data_dir.parent / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with browser_page(VIEWPORT, TIMEOUT_MS, data_dir.parent) as page:
        rows = scenario(page, url, expect, shots, data_dir, showcase=builtin_model_used())

    actions = [row["action"] for row in rows]
    for needed in ("page_view", "generate_click", "word_pin", "slider_change", "apply", "mask_strokes", "inpaint",
                   "restore", "mask_from_word"):
        assert needed in actions, (needed, actions)
    assert {row["participant_id"] for row in rows} == {"e2e-P1"}
    assert {row["study_id"] for row in rows} == {"e2e-study"} and {row["condition"] for row in rows} == {"full"}
    assert len({row["session_id"] for row in rows}) == 1
    hovered = [json.loads(row["payload"]).get("word") for row in rows if row["action"] == "word_hover"]
    assert hovered[:2] == ["wolf", "moon"], hovered
    strokes = [json.loads(row["payload"])["strokes"] for row in rows if row["action"] == "mask_strokes"]
    assert strokes[:3] == [1, 2, 3]

    from engine.study.log import StudyLog

    versions = StudyLog(data_dir / "attune_log.sqlite").versions_df().sort_values("number")
    assert list(versions["kind"]) == ["generate", "reweight", "inpaint", "inpaint", "restore"]
    by_number = {row.number: row for row in versions.itertuples()}
    assert by_number[2].seed == by_number[1].seed == 7 and json.loads(by_number[2].weights) == {"full moon": 1.5}
    assert by_number[2].weight_mode == "score"
    assert by_number[3].parent_id == by_number[2].id and by_number[4].parent_id == by_number[2].id
    assert by_number[3].inpaint_prompt == by_number[4].inpaint_prompt == WILL_RUN
    assert by_number[3].inpaint_typed == by_number[4].inpaint_typed == TYPED
    assert json.loads(by_number[5].weights) == {"full moon": 1.5} and by_number[5].seed == 7  # read back from the PNG
    assert set(versions["participant_id"]) == {"e2e-P1"} and set(versions["session_id"]) == {rows[0]["session_id"]}
    events = StudyLog(data_dir / "attune_log.sqlite").events_df()
    assert "download" in set(events["action"])
