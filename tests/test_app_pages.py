"""AppTest (streamlit.testing.v1) for every page: widgets, versions made, and the log rows with ids and condition."""
from __future__ import annotations

import json

import numpy as np

from tests.app_support import (  # noqa: F401
    EXAMPLE, REPO, app_env, button, click, generate_example, go, ids, log, open_page, studio, texts,
)

IDS = dict(pid="P01", study="moon-study", condition="full")


def plotly_array(value) -> np.ndarray:
    """Plotly JSON keeps arrays either as lists or as typed base64 ('bdata')."""
    if isinstance(value, dict) and "bdata" in value:
        import base64

        shape = [int(x) for x in str(value.get("shape", "-1")).split(",")]
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"])).reshape(shape)
    return np.asarray(value)


def page_after_example(script: str):
    """Home opened with the study ids, the example generated (v1), then the given page."""
    at = open_page("Home.py", **IDS)
    generate_example(at)
    return go(at, script)


def events(data_dir, action=None):
    frame = log(data_dir).events_df()
    return frame if action is None else frame[frame["action"] == action]


def test_home_example_makes_v1_and_logs_ids(app_env):
    at = open_page("Home.py", **IDS)
    assert "Try the example" in [b.label for b in at.button]
    assert [t.label for t in at.sidebar.text_input] == ["Model folder or hub id"]
    assert any("participant P01" in c.value for c in at.sidebar.caption)
    generate_example(at)
    assert any("Version 1 is ready" in s for s in texts(at.success))
    versions = log(app_env).versions_df()
    assert len(versions) == 1
    row = versions.iloc[0]
    assert (row.participant_id, row.study_id, row.condition) == ("P01", "moon-study", "full")
    assert row.prompt == EXAMPLE and row.seed == 7 and row.kind == "generate"
    assert row.session_id == ids(at).session_id
    ev = events(app_env)
    assert {"page_view", "try_example"} <= set(ev.action)
    assert set(ev.participant_id) == {"P01"} and set(ev.condition) == {"full"} and set(ev.study_id) == {"moon-study"}
    # the URL now carries the session, so a refresh can find it again
    assert at.query_params["sid"] == row.session_id and at.query_params["pid"] == "P01"


def test_generate_page_widgets_unknown_words_and_errors(app_env):
    at = open_page("pages/1_Generate.py", **IDS)
    labels = {w.label for w in list(at.number_input) + list(at.selectbox) + list(at.text_area) + list(at.radio)}
    assert {"Prompt", "Seed", "Steps", "Guidance", "Width", "Height", "Scheduler", "Emphasis syntax"} <= labels
    at.text_area[0].set_value("a painting of a zebra under the (moon:1.4)").run()
    assert any("zebra" in w for w in texts(at.warning)), texts(at.warning)
    assert not any("never closed" in i for i in texts(at.info))
    at.text_area[0].set_value("a painting of a wolf under the (moon:1.4").run()
    assert any("never closed" in i for i in texts(at.info)) and not at.error
    click(at, "Generate")  # an unclosed bracket still generates: A1111 weighs the rest of the prompt
    assert not at.error and studio(at).current.prompt == "a painting of a wolf under the (moon:1.4"
    at.text_area[0].set_value("a painting of a zebra under the (moon:1.4)").run()
    seed_before = at.number_input(key="gen_seed").value
    click(at, "Random")
    assert at.number_input(key="gen_seed").value != seed_before
    at.number_input(key="gen_seed").set_value(11)
    click(at, "Generate")
    assert not at.error, texts(at.error)
    current = studio(at).current
    assert current.number == 2 and current.seed == 11 and current.prompt.startswith("a painting of a zebra")
    assert current.steps == 2 and current.syntax == "a1111"
    at.text_area[0].set_value("   ").run()
    click(at, "Generate")
    assert any("prompt is empty" in e for e in texts(at.error)), texts(at.error)
    assert len(log(app_env).versions_df()) == 2
    assert set(events(app_env, "generate_click").participant_id) == {"P01"}


def hover_data(at) -> dict:
    """The data the hover component got on this run (ui/hover): image, every word's map, colours, prompt pieces."""
    components = at.get("bidi_component")
    assert len(components) == 1 and components[0].proto.component_name == "attune_hover"
    return json.loads(components[0].proto.json)


def sent_map(data: dict, word: str) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data["maps"][word]["png"]))))


def test_inspect_hover_component_gets_every_words_map_and_follows_the_filters(app_env):
    from ui.hover.payload import map_bytes, map_size

    at = page_after_example("pages/2_Inspect_Attention.py")
    assert not at.exception and not at.error, texts(at.error)
    data = hover_data(at)
    version = studio(at).current
    maps, tokens = studio(at).maps(version), studio(at).word_tokens(version)
    assert set(data["maps"]) == {w.lower() for w in tokens.display_words()}
    assert "".join(p["text"] for p in data["pieces"]) == tokens.text == EXAMPLE
    assert {p["word"] for p in data["pieces"]} >= {"wolf", "moon", None}
    assert data["pinned"] is None and data["version"] == version.id and len(data["colours"]) == 256 * 6
    width, height = map_size(version.width, version.height)
    engine_moon = map_bytes(maps.word_heatmap(tokens, "moon", size=(height, width)))
    assert (sent_map(data, "moon") == engine_moon).all()
    assert (sent_map(data, "wolf") != engine_moon).any()
    grid = json.loads(at.get("plotly_chart")[0].proto.spec)  # every word's map stays on the page
    assert sum(t["type"] == "heatmap" for t in grid["data"]) == len(data["maps"])
    # filters: the finest resolution only, and the first step only, send other maps
    resolutions = at.multiselect[0]
    assert len(resolutions.options) == 2
    resolutions.set_value([resolutions.value[0]]).run()
    at.slider(key=f"inspect_steps_{version.id}").set_value((0, 1)).run()
    assert not at.error, texts(at.error)
    filtered = sent_map(hover_data(at), "moon")
    assert filtered.shape == (height, width) and (filtered != engine_moon).any()
    filters = dict(resolutions=[resolutions.value[0]], step_range=(0, 1))
    assert (filtered == map_bytes(maps.word_heatmap(tokens, "moon", size=(height, width), **filters))).all()
    # the raw attention (not the share of the prompt's words) is another map; opacity and colours follow the display
    at.toggle(key="inspect_words_only").set_value(False).run()
    at.slider(key="inspect_opacity").set_value(0.8).run()
    at.selectbox(key="inspect_colorscale").set_value("Viridis").run()
    raw = hover_data(at)
    assert (sent_map(raw, "moon") != filtered).any()
    assert raw["opacity"] == 0.8 and raw["colours"] != data["colours"]


def test_inspect_layer_filter_lists_the_models_attn2_layers_by_resolution(app_env):
    from ui.hover.payload import map_bytes, map_size

    at = page_after_example("pages/2_Inspect_Attention.py")
    version = studio(at).current
    maps, tokens = studio(at).maps(version), studio(at).word_tokens(version)
    unet_layers = studio(at).engine.components.unet.attn_processors
    attn2 = [name for name in unet_layers if name.endswith("attn2.processor")]
    (layers,) = [m for m in at.multiselect if m.label == "Layers"]
    assert sorted(layers.options) == sorted(f"{h}×{w} · {name.removesuffix('.processor')}"
                                            for name, (h, w) in maps.layer_shapes().items())
    assert len(layers.options) == len(attn2) > 2 and layers.value == []  # empty: every layer
    heights = [int(label.split("×")[0]) for label in layers.options]
    assert heights == sorted(heights, reverse=True)  # grouped by resolution, largest first
    one = next(name for name in attn2 if name.startswith("up_blocks"))
    layers.select(one).run()
    assert not at.exception and not at.error, texts(at.error)
    width, height = map_size(version.width, version.height)
    assert (sent_map(hover_data(at), "moon") == map_bytes(maps.word_heatmap(tokens, "moon", size=(height, width),
                                                                             layers=[one]))).all()
    assert (sent_map(hover_data(at), "moon") != map_bytes(maps.word_heatmap(tokens, "moon",
                                                                             size=(height, width)))).any()


def test_inspect_grid_of_every_words_map_is_sent_small_in_image_coordinates(app_env):
    from ui.hover.payload import map_size
    from ui.plots import GRID_SIDE

    at = open_page("pages/1_Generate.py")
    at.selectbox(key="gen_width").set_value(256)
    at.selectbox(key="gen_height").set_value(192)
    click(at, "Generate")
    go(at, "pages/2_Inspect_Attention.py")
    version = studio(at).current
    maps, tokens = studio(at).maps(version), studio(at).word_tokens(version)
    width, height = map_size(256, 192, side=GRID_SIDE)
    assert (version.width, version.height) == (256, 192) and (width, height) == (GRID_SIDE, 120)
    grid = json.loads(at.get("plotly_chart")[0].proto.spec)
    images = [t for t in grid["data"] if t["type"] == "image"]
    heatmaps = [t for t in grid["data"] if t["type"] == "heatmap"]
    assert all(plotly_array(t["z"]).shape == (height, width, 3) for t in images)
    moon = next(t for t in heatmaps if t["hovertemplate"].startswith("moon<"))
    np.testing.assert_allclose(plotly_array(moon["z"]), maps.word_heatmap(tokens, "moon", size=(height, width)),
                               atol=1e-6)
    assert moon["dx"] == images[0]["dx"] == 256 / width and moon["dy"] == 192 / height  # the image's pixel axes


def test_refine_slider_apply_makes_same_seed_version_with_focus_mark(app_env):
    at = page_after_example("pages/3_Refine.py")
    v1 = studio(at).current
    slider = at.slider(key="weight_moon")
    assert (slider.min, slider.max, slider.step) == (0.0, 2.0, 0.1)
    assert "0.5" in slider.help and "1.5" in slider.help
    assert set(at.radio(key="refine_method").options) == {"score", "prob", "embed", "a1111"}
    slider.set_value(1.5).run()
    click(at, "Apply")
    assert not at.error, texts(at.error)
    v2 = studio(at).current
    assert v2.number == 2 and v2.kind == "reweight" and v2.parent_id == v1.id
    assert v2.seed == v1.seed and v2.weights == {"moon": 1.5} and v2.weight_mode == "score"
    assert any("more focus: moon ×1.5" in s for s in texts(at.success)), texts(at.success)
    assert any("more focus: moon ×1.5" in m.value for m in at.markdown)
    changed = events(app_env, "slider_change")
    assert json.loads(changed.payload.iloc[-1]) == {"word": "moon", "value": 1.5}
    assert set(events(app_env, "apply").session_id) == {v1.session_id}
    # applying again without a change makes nothing
    click(at, "Apply")
    assert len(log(app_env).versions_df()) == 2


def test_refine_phrase_slider_and_a_phrase_not_in_the_prompt(app_env):
    at = page_after_example("pages/3_Refine.py")
    v1 = studio(at).current
    at.text_input(key="refine_phrase").input("Full  Moon").run()
    at.slider(key="weight_full moon").set_value(1.5).run()
    click(at, "Apply")
    assert not at.error, texts(at.error)
    assert studio(at).current.weights == {"full moon": 1.5}
    v2 = studio(at).current
    at.text_input(key="refine_phrase").input("blue cat").run()
    at.slider(key="weight_blue cat").set_value(0.5).run()
    click(at, "Apply")
    assert any("blue cat" in e for e in texts(at.error)), texts(at.error)  # a clear message, no traceback
    assert not at.exception and len(log(app_env).versions_df()) == 2


def test_refine_inpaint_with_a_fed_mask_and_mask_from_word(app_env, monkeypatch):
    from ui import canvas

    fed = {}

    def fake_canvas(image, *, key, brush_size, mode, prefill=None):
        mask = np.zeros((image.height, image.width), bool)
        mask[: image.height // 3] = True
        if prefill is not None:
            fed["prefill"] = prefill.copy()
            mask |= prefill
        return canvas.MaskDrawing(mask=mask, strokes=2)

    monkeypatch.setattr(canvas, "mask_canvas", fake_canvas)
    at = page_after_example("pages/3_Refine.py")
    v1 = studio(at).current
    assert "word: “sky”" in texts(at.caption)  # nothing pinned or hovered yet: "sky"
    click(at, "Mask from word")
    assert fed["prefill"].shape == (v1.height, v1.width) and fed["prefill"].any()
    at.text_input(key="inpaint_prompt").set_value("replace with").run()
    assert any("does not say what to put in the mask" in c.value for c in at.caption), [c.value for c in at.caption]
    at.text_input(key="inpaint_prompt").set_value("replace with misty forest").run()
    will_run = [c for c in at.caption if c.value == "will run: “misty forest, night sky”"]
    assert will_run and will_run[0].help.startswith("'replace"), texts(at.caption)
    at.slider(key="inpaint_mask_blur").set_value(2)
    auto_crop = at.checkbox(key="inpaint_auto_crop")
    assert auto_crop.label == "Auto crop small masks" and auto_crop.value is True
    auto_crop.uncheck()
    asked = {}
    real_inpaint = studio(at).inpaint
    monkeypatch.setattr(studio(at), "inpaint", lambda *a, **kw: asked.update(kw) or real_inpaint(*a, **kw))
    click(at, "Inpaint")
    assert not at.error, texts(at.error)
    assert asked["auto_crop"] is False and asked["mask_blur"] == 2
    v2 = studio(at).current
    assert v2.kind == "inpaint" and v2.parent_id == v1.id and v2.inpaint_prompt == "misty forest, night sky" and v2.mask_blur == 2
    assert v2.inpaint_typed == "replace with misty forest"
    actions = list(events(app_env).action)
    assert {"mask_from_word", "mask_strokes", "inpaint"} <= set(actions)
    payload = json.loads(events(app_env, "inpaint").payload.iloc[-1])
    assert payload["strokes"] == 2 and payload["prompt"] == "replace with misty forest" and payload["auto_crop"] is False


def test_refine_empty_mask_shows_error_not_traceback(app_env, monkeypatch):
    from ui import canvas

    monkeypatch.setattr(canvas, "mask_canvas", lambda image, **kw: canvas.MaskDrawing(np.zeros((image.height, image.width), bool), 0))
    at = page_after_example("pages/3_Refine.py")
    click(at, "Inpaint")
    assert any("mask is empty" in e for e in texts(at.error)), texts(at.error)
    assert len(log(app_env).versions_df()) == 1


def test_compare_side_by_side_changed_params_restore_branch_downloads(app_env):
    at = page_after_example("pages/3_Refine.py")
    v1 = studio(at).current
    at.slider(key="weight_moon").set_value(1.5).run()
    click(at, "Apply")
    v2 = studio(at).current
    at.slider(key="weight_sky").set_value(0.5).run()
    click(at, "Apply")
    go(at, "pages/4_Compare.py")
    assert at.multiselect(key="compare_pick").value == ["v1", "v2", "v3"]
    captions = [c for image in at.image for c in image.captions]
    assert [c for c in captions if "· reweight" in c or "· generate" in c] == ["v1 · generate", "v2 · reweight", "v3 · reweight · current"]
    assert sum(c.startswith("difference from v1") for c in captions) == 2
    table = at.dataframe[0].value
    assert set(table["parameter"]) == {"kind", "weights", "layout"}  # v2 is a blended edit of v1
    assert list(table.columns) == ["parameter", "v1", "v2", "v3"]
    assert {b.label for b in at.get("download_button")} >= {"Images (zip of PNGs with parameters)", "Versions log (CSV)", "Events log (CSV)"}
    # restore v1 (its Restore button is the first enabled one) and edit: a branch from v1
    restore = [b for b in at.button if b.label == "Restore" and not b.disabled][0]
    restore.click().run()
    assert studio(at).current.id == v1.id
    assert any("current again" in s for s in texts(at.success))
    go(at, "pages/3_Refine.py")
    at.slider(key="weight_wolf").set_value(1.2).run()
    click(at, "Apply")
    v4 = studio(at).current
    assert v4.number == 4 and v4.parent_id == v1.id
    go(at, "pages/4_Compare.py")
    assert any("Branches:" in c.value for c in at.caption)
    restores = events(app_env, "restore")
    assert len(restores) == 1 and json.loads(restores.payload.iloc[0])["number"] == 1
    versions = log(app_env).versions_df()
    assert list(versions.sort_values("number").parent_id.fillna("")) == ["", v1.id, v2.id, v1.id]


def test_compare_compare_event_and_log_bytes(app_env):
    from ui import downloads

    at = page_after_example("pages/3_Refine.py")
    v1 = studio(at).current
    at.slider(key="weight_moon").set_value(1.5).run()
    click(at, "Apply")
    go(at, "pages/4_Compare.py")
    at.multiselect(key="compare_pick").set_value(["v2", "v1"]).run()
    assert json.loads(events(app_env, "compare").payload.iloc[-1]) == {"versions": ["v2", "v1"]}
    sid = ids(at).session_id
    csv = downloads.table_bytes(downloads.table(log(app_env), "events", session_id=sid), "csv").decode()
    assert "compare" in csv and "P01" in csv
    parquet = downloads.table_bytes(downloads.table(log(app_env), "versions", session_id=sid), "parquet")
    assert parquet[:4] == b"PAR1"
    zipped = downloads.versions_zip(studio(at))
    import io, zipfile

    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        names = archive.namelist()
        assert len(names) == 2
        from engine.study.pngmeta import read_version

        record = read_version(archive.read(names[1]))
        assert record.weights == {"moon": 1.5} and record.seed == 7


def test_png_upload_restores_its_parameters_as_a_new_version(app_env):
    at = open_page("Home.py", **IDS)
    generate_example(at)
    v1 = studio(at).current
    go(at, "pages/4_Compare.py")
    png = open(v1.image_path, "rb").read()
    at.file_uploader(key="compare_upload").upload("v1.png", png, "image/png").run()
    click(at, "Restore from PNG")
    assert not at.error, texts(at.error)
    imported = studio(at).current
    assert imported.number == 2 and imported.kind == "restore" and imported.parent_id is None
    assert (imported.prompt, imported.seed, imported.steps) == (v1.prompt, v1.seed, v1.steps)
    assert any("Parameters restored from v1.png as v2" in s for s in texts(at.success))
    assert list(events(app_env, "import_png").participant_id) == ["P01"]
    at.file_uploader(key="compare_upload").upload("junk.png", b"not a png", "image/png").run()
    click(at, "Restore from PNG")
    assert at.error and not at.exception  # a clear message, not a traceback
    assert len(log(app_env).versions_df()) == 2


def test_home_start_new_session_changes_ids_and_logs_under_them(app_env):
    at = open_page("Home.py", **IDS)
    first = ids(at).session_id
    form_inputs = {t.label: t for t in at.text_input}
    form_inputs["Participant id"].input("P77")
    form_inputs["Study id"].input("other-study")
    at.selectbox[0].select("partial")
    button(at, "Start a new session").click().run()
    new = ids(at)
    assert (new.participant_id, new.study_id, new.condition) == ("P77", "other-study", "partial")
    assert new.session_id != first
    assert at.query_params["pid"] == "P77" and at.query_params["sid"] == new.session_id
    generate_example(at)
    row = log(app_env).versions_df().iloc[-1]
    assert (row.participant_id, row.study_id, row.condition, row.session_id) == ("P77", "other-study", "partial", new.session_id)


def test_baseline_condition_turns_tools_off_and_is_logged(app_env):
    at = open_page("pages/1_Generate.py", pid="P02", study="moon-study", condition="baseline")
    assert "Emphasis syntax" not in [r.label for r in at.radio]
    click(at, "Generate")
    assert studio(at).current.syntax == "none"
    go(at, "pages/2_Inspect_Attention.py")
    assert any("turned off" in i.value for i in at.info)
    go(at, "pages/3_Refine.py")
    assert any("turned off" in i.value for i in at.info)
    assert not [s for s in at.slider if s.key and s.key.startswith("weight_")]
    versions, ev = log(app_env).versions_df(), events(app_env)
    assert set(versions.condition) == {"baseline"} and set(ev.condition) == {"baseline"}


def test_unknown_condition_and_bad_model_show_errors(app_env, monkeypatch):
    from ui.safe_text import markdown_literal

    at = open_page("Home.py", pid="P03", condition="nonsense")
    assert any(markdown_literal("Unknown study condition 'nonsense'") in e for e in texts(at.error))
    monkeypatch.setenv("ATTUNE_MODEL", str(app_env / "no-such-model"))
    at = open_page("pages/1_Generate.py")
    assert any("could not be loaded" in e for e in texts(at.error)), texts(at.error)
    assert not at.exception


def test_ids_from_the_url_reach_markdown_as_text(app_env):
    """A study link's ids are shown (sidebar, the unknown-condition error) as the text they are: no link, emphasis,
    code span or HTML made from them."""
    from markdown_it import MarkdownIt

    from ui.safe_text import markdown_literal

    hostile = {"pid": "P1](javascript:alert(1))*<b>x</b>", "study": "s` <b>y</b> `", "condition": "[a](https://e.example)*c*"}
    at = open_page("Home.py", **hostile)
    shown = [c.value for c in at.sidebar.caption if c.value.startswith("participant")] + texts(at.error)
    assert len(shown) == 2, shown  # the study session's caption and the unknown condition's error
    html = "".join(MarkdownIt("commonmark").render(text) for text in shown)
    for markup in ("<a ", "<b>", "<em>", "<code>"):
        assert markup not in html, (markup, html)
    for value in hostile.values():
        assert any(markdown_literal(value) in text for text in shown), (value, shown)
    assert "P1](javascript:alert(1))*&lt;b&gt;x&lt;/b&gt;" in html  # the id as it is, every character shown


def test_refresh_with_session_in_url_reloads_history(app_env):
    at = open_page("Home.py", **IDS)
    generate_example(at)
    sid = ids(at).session_id
    again = open_page("pages/4_Compare.py", sid=sid, **IDS)  # a new browser session, same URL
    assert ids(again).session_id == sid
    assert [v.number for v in studio(again).history] == [1]
    assert studio(again).current.prompt == EXAMPLE


def test_researcher_view_is_gated(app_env, monkeypatch):
    at = open_page("pages/5_Researcher.py")
    assert any("researcher view is off" in i.value for i in at.info)
    from streamlit.testing.v1 import AppTest

    with_secret = AppTest.from_file(str(REPO / "Home.py"), default_timeout=60)
    with_secret.secrets["researcher_password"] = "from-secrets"
    with_secret.switch_page("pages/5_Researcher.py").run()
    with_secret.text_input(key="researcher_password").input("from-secrets")
    button(with_secret, "Open").click().run()
    assert len(with_secret.dataframe) == 2 and not with_secret.error
    monkeypatch.setenv("ATTUNE_RESEARCHER_PASSWORD", "s3cret")
    home = open_page("Home.py", **IDS)
    generate_example(home)
    at = open_page("pages/5_Researcher.py")
    assert not at.dataframe
    at.text_input(key="researcher_password").input("wrong")
    button(at, "Open").click().run()
    assert any("Wrong password" in e for e in texts(at.error))
    at.text_input(key="researcher_password").input("s3cret")
    button(at, "Open").click().run()
    assert not at.exception
    assert len(at.dataframe) == 2
    assert len(at.get("plotly_chart")) == 3
    assert at.metric[2].value == "1"  # versions


def test_generate_waits_in_the_queue_then_shows_steps(app_env, tiny_model_dir, monkeypatch):
    """While another session's image holds the shared engine, the page says 'queued (1 ahead)', then counts steps."""
    import threading

    from engine.pipeline.params import GenerateParams
    from ui import jobs
    from ui.engine_cache import shared_engine

    shown = []
    real_status = jobs.status
    monkeypatch.setattr(jobs, "status", lambda *args: shown.append(real_status(*args)[1]) or real_status(*args))
    at = open_page("pages/1_Generate.py", **IDS)
    at.number_input(key="gen_steps").set_value(30)  # long enough (~0.5 s) for the page to poll a few steps
    engine = shared_engine(str(tiny_model_dir), "torch")  # the very engine the page uses (st.cache_resource)
    holding, release = threading.Event(), threading.Event()

    def other_session_step(step, total):  # the other image keeps the engine until this page has shown the queue
        holding.set()
        release.wait(timeout=60)

    def release_once_queued():
        while not release.is_set():
            if "Generating: queued (1 ahead)" in shown:
                release.set()
            release.wait(0.01)

    other = threading.Thread(target=engine.generate, args=(GenerateParams(prompt="a wolf", steps=2, width=64, height=64),),
                             kwargs={"progress": other_session_step})
    watcher = threading.Thread(target=release_once_queued)
    other.start()
    assert holding.wait(timeout=60) and engine.busy
    watcher.start()
    try:
        click(at, "Generate")
    finally:
        release.set()
        other.join()
        watcher.join()
    assert not at.error, texts(at.error)
    assert studio(at).current.number == 1
    assert "Generating: queued (1 ahead)" in shown, shown[:5]
    after = shown[shown.index("Generating: queued (1 ahead)"):]
    assert any(text.startswith("Generating: Step ") for text in after), after


def test_every_page_run_sends_the_no_fade_stale_style(app_env):
    """Each page's setup sends the style that dims stale elements in one step (no full-page fade while the engine
    runs); it is style-only, so it takes no space on the page."""
    from ui.page_style import STYLE

    for script in ("Home.py", "pages/1_Generate.py", "pages/3_Refine.py"):
        at = open_page(script, **IDS)
        styles = [element.proto.body for element in at.get("html")]
        assert STYLE in styles, (script, styles)
    assert '[data-stale="true"]' in STYLE and "transition: opacity 0s linear 0.5s" in STYLE
