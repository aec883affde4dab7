"""AppTest: the app on an SDXL folder (issue 23), beside the browser test tests/test_e2e_sdxl.py."""
from __future__ import annotations

from tests.app_support import app_env, click, go, open_page, studio, texts  # noqa: F401
from tests.tiny_model import build_sdxl_model


def test_switching_to_an_sdxl_model_resets_generate_to_its_defaults(app_env, tmp_path):
    sdxl = build_sdxl_model(tmp_path / "sdxl")
    at = open_page("pages/1_Generate.py")
    before = (at.selectbox(key="gen_width").value, at.number_input(key="gen_guidance").value,
              at.selectbox(key="gen_scheduler").value)
    at.text_input(key="sidebar_model").set_value(str(sdxl)).run()
    assert not at.exception and not at.error, texts(at.error)
    shown = (at.selectbox(key="gen_width").value, at.selectbox(key="gen_height").value,
             at.number_input(key="gen_guidance").value, at.selectbox(key="gen_scheduler").value)
    assert shown == (64, 64, 5.0, "euler") and before != (64, 5.0, "euler")  # the SDXL folder's, not the last model's
    assert any(c.value.startswith("SDXL: defaults from") for c in at.caption)
    # the user's own choice for this model stays across pages, and is what runs
    at.selectbox(key="gen_width").set_value(96).run()
    go(at, "pages/2_Inspect_Attention.py")
    go(at, "pages/1_Generate.py")
    assert at.selectbox(key="gen_width").value == 96
    click(at, "Generate")
    version = studio(at).current
    assert (version.width, version.height, version.guidance, version.scheduler) == (96, 64, 5.0, "euler")


def test_generate_offers_sdxl_sizes_around_its_1024_px(app_env, tmp_path, monkeypatch):
    import json

    sdxl = build_sdxl_model(tmp_path / "sdxl")
    (sdxl / "attune.json").write_text(json.dumps({"width": 1024, "height": 1024}))  # SDXL's own size
    monkeypatch.setenv("ATTUNE_MODEL", str(sdxl))
    at = open_page("pages/1_Generate.py")
    width = at.selectbox(key="gen_width")
    assert width.value == at.selectbox(key="gen_height").value == 1024
    assert {"832", "896", "1152", "1216", "64", "512", "1536"} <= set(width.options)  # AppTest gives them as text
