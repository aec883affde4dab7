"""The app's pure pieces: canvas pixels -> mask, progress/queue text, conditions file, history views."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.errors import AttuneError

REPO = Path(__file__).resolve().parent.parent


def over(top_rgba, bottom_rgba):
    """Porter-Duff 'over' with un-premultiplied output, as the canvas getImageData returns."""
    tc, ta = np.array(top_rgba[:3], float), top_rgba[3]
    bc, ba = np.array(bottom_rgba[:3], float), bottom_rgba[3]
    alpha = ta + ba * (1 - ta)
    color = (tc * ta + bc * ba * (1 - ta)) / alpha if alpha else tc * 0
    return (*color, alpha)


def pixel(rgba):
    return np.array([*np.round(rgba[:3]), round(rgba[3] * 255)], dtype=np.uint8)


def test_mask_from_canvas_pixels_brush_then_eraser_and_prefill():
    from engine import strokes_mask as mask_from_pixels

    red, white, clear = (255, 0, 80, 0.5), (255, 255, 255, 0.5), (0, 0, 0, 0.0)
    canvas = np.zeros((8, 8, 4), np.uint8)  # an 8x8 canvas over a 4x4 image
    canvas[0:4, :] = pixel(over(red, clear))                 # brush over the top half
    canvas[0:4, 4:] = pixel(over(white, over(red, clear)))   # eraser on top of the brush, right side
    canvas[6:8, 0:2] = pixel(over(red, over(white, clear)))  # brush over an eraser stroke: painted again
    prefill = np.zeros((4, 4), bool)
    prefill[3, 3] = True
    mask = mask_from_pixels(canvas, (4, 4), prefill)
    expected = np.zeros((4, 4), bool)
    expected[0:2, 0:2] = True
    expected[3, 0] = True
    expected[3, 3] = True
    assert (mask == expected).all(), mask.astype(int)
    # erasing over the pre-filled cell removes it
    canvas[6:8, 6:8] = pixel(over(white, clear))
    assert not mask_from_pixels(canvas, (4, 4), prefill)[3, 3]
    # no drawing: only the pre-fill
    assert (mask_from_pixels(None, (4, 4), prefill) == prefill).all()


def test_display_size_keeps_aspect():
    from ui.canvas import display_size

    assert display_size(128, 128) == (384, 384)
    assert display_size(256, 128) == (384, 192)


def test_progress_and_queue_text():
    from ui.jobs import progress_text, status

    assert status("Generating", 0, 0, 0.0, 0, 2) == (0.0, "Generating: queued (2 ahead)")
    assert status("Generating", 0, 0, 0.0, 0, 0) == (0.0, "Generating: preparing")
    fraction, text = status("Generating", 5, 20, 2.0, 4, 0)  # 4 steps timed in 2 s -> 0.5 s/step, 15 left
    assert fraction == 0.25 and text == "Generating: Step 5/20 · about 8 s left"
    assert progress_text(20, 20, 9.0, 19) == "Step 20/20 · decoding"
    assert progress_text(1, 20, 0.0, 0) == "Step 1/20"


def test_progress_bar_redraws_at_most_every_redraw_interval(monkeypatch):
    """follow() polls often but redraws the bar (a message the browser re-renders the page for) at most every
    REDRAW_SECONDS while steps count up; 'queued'/'preparing' and 'decoding' are drawn as soon as they change."""
    import threading
    import time

    from ui import jobs
    from ui.state import Note

    monkeypatch.setattr(jobs, "POLL_SECONDS", 0.002)
    monkeypatch.setattr(jobs, "REDRAW_SECONDS", 0.04)
    monkeypatch.setattr(jobs, "SHOW_AFTER_SECONDS", 0.0)
    draws = []

    class Bar:
        def progress(self, fraction, text):
            draws.append((time.monotonic(), fraction, text))

        def empty(self):
            pass

    class FakeStreamlit:
        @staticmethod
        def progress(fraction, text):
            return Bar()

    monkeypatch.setattr(jobs, "st", FakeStreamlit)
    decoding = threading.Event()

    def work(progress):
        for step in range(1, 41):  # 40 steps in ~0.2 s: ~100 polls
            progress(step, 40)
            time.sleep(0.005)
        decoding.wait(0.1)  # 'decoding' stays until the page has drawn it (or 0.1 s)
        return "image"

    class Session:
        job = None
        notes: dict = {}

    session = Session()
    real_status = jobs.status

    def status(*args):
        result = real_status(*args)
        if result[0] >= 1.0 and draws and draws[-1][1] >= 1.0:
            decoding.set()
        return result

    monkeypatch.setattr(jobs, "status", status)
    jobs.Job(session, "generate", "Generating", work, lambda image: Note(None, "success", image), what="Generate").start()
    jobs.follow(session, None)

    steps = [(t, fraction) for t, fraction, _ in draws if 0.0 < fraction < 1.0]
    assert len(steps) >= 2, draws  # the bar still moves
    gaps = [b[0] - a[0] for a, b in zip(steps, steps[1:])]
    assert min(gaps) >= 0.04 - 1e-3, gaps
    assert len(steps) < 40 / 2, len(steps)  # far fewer redraws than steps
    assert draws[-1][2] == "Generating: Step 40/40 · decoding"
    assert session.job is None and session.notes["generate"].text == "image"


def test_progress_bar_appears_only_for_work_longer_than_show_after(monkeypatch):
    """A job that ends within SHOW_AFTER_SECONDS draws no bar at all; a longer one draws it (and empties it)."""
    import threading

    from ui import jobs
    from ui.state import Note

    monkeypatch.setattr(jobs, "POLL_SECONDS", 0.002)
    monkeypatch.setattr(jobs, "SHOW_AFTER_SECONDS", 0.1)
    calls = []

    class Bar:
        def progress(self, fraction, text):
            calls.append(("progress", text))

        def empty(self):
            calls.append(("empty", None))

    class FakeStreamlit:
        @staticmethod
        def progress(fraction, text):
            calls.append(("bar", text))
            return Bar()

    monkeypatch.setattr(jobs, "st", FakeStreamlit)

    class Session:
        job = None
        notes: dict = {}

    def run(seconds):
        calls.clear()
        finish = threading.Event()

        def work(progress):
            progress(1, 2)
            finish.wait(seconds)
            return "image"

        session = Session()
        jobs.Job(session, "generate", "Generating", work, lambda image: Note(None, "success", image),
                 what="Generate").start()
        jobs.follow(session, None)
        assert session.job is None and session.notes["generate"].text == "image"
        return list(calls)

    assert run(0.0) == []
    shown = run(0.4)
    assert shown[0] == ("bar", "Generating: preparing") and shown[-1] == ("empty", None), shown
    assert ("progress", "Generating: Step 1/2") in [(kind, (text or "").split(" · ")[0]) for kind, text in shown]

    monkeypatch.setattr(jobs, "SHOW_AFTER_SECONDS", 10.0)
    monkeypatch.setenv("ATTUNE_PROGRESS_AFTER", "0")  # a deployment that wants the bar at once
    assert run(0.2)[0] == ("bar", "Generating: preparing")
    monkeypatch.setenv("ATTUNE_PROGRESS_AFTER", "soon")  # not a number: the default
    assert run(0.2) == []


def test_parameters_table_is_escaped_html_on_one_line():
    """The version card's parameters: one HTML table, every cell escaped, line breaks kept as <br>, no blank line
    (a blank line would end markdown's HTML block and let markdown read the rest)."""
    from ui.cards import parameters_table_html

    table = parameters_table_html({"prompt": "a <b>wolf</b> & (moon:1.5)\n\n[sky] | $x$", "seed": "7"})
    assert table.startswith("<table") and table.endswith("</table>") and "\n" not in table
    assert "<td>a &lt;b&gt;wolf&lt;/b&gt; &amp; (moon:1.5)<br><br>[sky] | $x$</td>" in table
    assert "<tr><td>seed</td><td>7</td></tr>" in table
    assert table.count("<tr>") == 3  # the header and two rows


def test_generate_starts_the_engine_before_logging_the_click():
    """The Generate click's event row is written after the job has started (its SQLite commit overlaps the engine),
    and it is written."""
    import threading
    from types import SimpleNamespace

    from ui import generate
    from ui.state import Request

    started, order = threading.Event(), []

    class Studio:
        def generate(self, params, progress=None):
            order.append("engine")
            started.set()
            return SimpleNamespace(id="v", number=1)

    class Page:
        current = None
        studio = Studio()
        session = SimpleNamespace(job=None, notes={})

        def event(self, action, **payload):
            assert self.session.job is not None  # the job was started first
            order.append(action)

    page = Page()
    request = Request(kind="generate", page="generate",
                      values={"params": {"prompt": "a wolf", "steps": 2}, "event": "generate_click", "payload": {"steps": 2}})
    job = generate.run(page, request)
    assert job.done.wait(10) and started.is_set()
    assert sorted(order) == ["engine", "generate_click"]
    assert page.session.notes["generate"].text == "Version 1 is ready."


def test_display_image_is_what_st_image_would_send_and_is_made_once(tmp_path):
    """A version's PNG as shown: no wider than asked (bilinear), JPEG q90 like Streamlit's own conversion; made once
    per file and width, again when the file changes; a missing file gives its path back for st.image to report."""
    import io
    import os

    from PIL import Image
    from streamlit.elements.lib.image_utils import _ensure_image_size_and_format
    from streamlit.elements.lib.layout_utils import LayoutConfig

    from ui import images

    path = tmp_path / "v001.png"
    pixels = np.linspace(0, 255, 128 * 96 * 3).reshape(96, 128, 3).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    thumb = images.display_image(path, 72)
    with Image.open(io.BytesIO(thumb)) as shown:
        assert shown.format == "JPEG" and shown.size == (72, 54)
    # Streamlit's own resize and re-encode of the file gives the same bytes, and passes ours through unchanged
    assert _ensure_image_size_and_format(path.read_bytes(), LayoutConfig(width=72), "JPEG") == thumb
    assert _ensure_image_size_and_format(thumb, LayoutConfig(width=72), "JPEG") == thumb
    card = images.display_image(path, 384)  # narrower than asked: only re-encoded
    with Image.open(io.BytesIO(card)) as shown:
        assert shown.size == (128, 96)

    hits = images._display_bytes.cache_info().hits
    assert images.display_image(path, 72) is thumb and images._display_bytes.cache_info().hits == hits + 1
    Image.fromarray(255 - pixels).save(path)
    os.utime(path, ns=(1, 1))  # a rewritten file (here with an older time) is read again
    assert images.display_image(path, 72) != thumb
    assert images.display_image(tmp_path / "missing.png", 72) == str(tmp_path / "missing.png")


def test_redraw_due():
    from ui.jobs import REDRAW_SECONDS, redraw_due

    assert redraw_due(0.0, 0.0) and redraw_due(1.0, 0.0)  # queued / preparing, decoding: at once
    assert not redraw_due(0.5, REDRAW_SECONDS / 2)
    assert redraw_due(0.5, REDRAW_SECONDS)


def test_example_conditions_file_defines_the_promptcharm_arms():
    from ui.conditions import ALL_ON, load_conditions

    conditions = load_conditions(REPO / "study" / "conditions.example.toml")
    assert set(conditions.by_name) == {"baseline", "partial", "full", "no_prompt_assist", "no_explanations"}
    assert conditions.get(None).name == "full"
    baseline = conditions.get("baseline")
    assert not any(baseline.enabled(f) for f in ("heatmaps", "sliders", "inpainting", "prompt_syntax"))
    partial = conditions.get("partial")
    assert partial.heatmaps and not partial.sliders and not partial.inpainting
    with pytest.raises(AttuneError, match="Unknown study condition 'x'"):
        conditions.get("x")
    assert load_conditions(REPO / "no-such-file.toml").get("") is ALL_ON
    assist = ("word_cards", "explore", "suggest")
    assert all(conditions.get("full").enabled(f) for f in assist + ("heatmaps", "rating"))
    assert not any(conditions.get("no_prompt_assist").enabled(f) for f in assist)
    no_explanations = conditions.get("no_explanations")
    assert not no_explanations.heatmaps and all(no_explanations.enabled(f) for f in assist)


def test_conditions_file_errors_are_clear(tmp_path):
    from ui.conditions import load_conditions

    bad = tmp_path / "c.toml"
    bad.write_text("[conditions.a]\nheatmap = false\n")
    with pytest.raises(AttuneError, match="unknown keys \\['heatmap'\\]"):
        load_conditions(bad)
    bad.write_text("[conditions.a\n")
    with pytest.raises(AttuneError, match="not valid TOML"):
        load_conditions(bad)
    bad.write_text('default = "b"\n[conditions.a]\n')
    with pytest.raises(AttuneError, match="default 'b'"):
        load_conditions(bad)


def test_history_views_branches_marks_and_changed_parameters():
    from engine.study.versions import History, Version
    from ui import history

    h = History()
    v1 = h.add(Version(prompt="p", seed=7))
    v2 = h.add(Version(parent_id=v1.id, kind="reweight", prompt="p", seed=7, weights={"moon": 1.5}))
    v3 = h.add(Version(parent_id=v1.id, kind="reweight", prompt="p", seed=7, weights={"sky": 0.5}))

    class FakeStudio:  # the one attribute of engine.Studio these views read
        history = h

    versions = history.all_versions(FakeStudio)
    assert [v.number for v in versions] == [1, 2, 3]
    assert history.by_id(FakeStudio, v2.id) is v2 and history.by_id(FakeStudio, None) is None
    assert history.focus_marks(v2) == ["more focus: moon ×1.5"] and history.focus_marks(v3) == ["less focus: sky ×0.5"]
    rows = history.changed_parameters([v1, v2, v3])
    assert rows == [
        {"parameter": "kind", "v1": "generate", "v2": "reweight", "v3": "reweight"},
        {"parameter": "weights", "v1": "", "v2": "moon=1.5", "v3": "sky=0.5"},
    ]


@pytest.mark.parametrize("hostile", ["P1](javascript:alert(1))*<b>x</b>", "x` [a](https://e.example) `", "&lt;b&gt; $x$",
                                     "# heading\n- item", "[a]: https://e.example\n[a]", ":red[alert] _u_ ~~s~~ \\*"])
def test_an_id_escaped_for_markdown_renders_as_itself(hostile):
    """CommonMark (as Streamlit's Markdown reads it) turns the escaped id into its own text, nothing else."""
    import html

    from markdown_it import MarkdownIt

    from ui.safe_text import markdown_literal

    one_line = " ".join(hostile.split("\n"))
    assert MarkdownIt("commonmark").render(markdown_literal(hostile)) == f"<p>{html.escape(one_line, quote=False)}</p>\n"


def test_display_data_url_carries_the_display_image(tmp_path):
    import base64

    from PIL import Image

    from ui import images

    path = tmp_path / "v.png"
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(path)
    url = images.display_data_url(path, 384)
    head, _, body = url.partition(",")
    assert head == "data:image/jpeg;base64" and base64.b64decode(body) == images.display_image(path, 384)
    assert images.display_data_url(tmp_path / "missing.png", 384) == str(tmp_path / "missing.png")
