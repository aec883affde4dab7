"""The one-screen Refine page (AppTest): which sliders it offers (the model's known phrases whole, no function words
unless asked), and its compact version strip."""
from __future__ import annotations

import json
import shutil

import pytest

from tests.app_support import app_env, click, generate_example, go, open_page, studio, texts  # noqa: F401


@pytest.fixture
def phrase_model(app_env, tiny_model_dir, tmp_path, monkeypatch):
    """The tiny test model, told (attune.json) that it knows "full moon" and "night sky" as units."""
    folder = tmp_path / "phrase-model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "attune.json").write_text(json.dumps({"phrases": ["full moon", "night sky"]}))
    monkeypatch.setenv("ATTUNE_MODEL", str(folder))
    return app_env


def refine_after_example():
    at = open_page("Home.py")
    generate_example(at)
    return go(at, "pages/3_Refine.py")


def slider_names(at) -> set[str]:
    return {s.key[len("weight_"):] for s in at.slider if s.key and s.key.startswith("weight_")}


def test_known_phrases_get_one_slider_and_function_words_none(phrase_model):
    at = refine_after_example()
    assert slider_names(at) == {"painting", "wolf", "sitting", "full moon", "night sky"}
    at.toggle(key="refine_all_words").set_value(True).run()
    assert {"a", "of", "in", "front", "the", "full moon", "full", "moon", "sky"} <= slider_names(at)
    at.toggle(key="refine_all_words").set_value(False).run()
    at.slider(key="weight_full moon").set_value(1.5).run()
    click(at, "Apply")
    assert not at.error, texts(at.error)
    assert studio(at).current.weights == {"full moon": 1.5}
    assert any("more focus: full moon ×1.5" in s for s in texts(at.success)), texts(at.success)
    assert at.slider(key="weight_full moon").value == 1.5


def test_compact_strip_marks_the_current_version_and_restores(app_env):
    at = refine_after_example()
    at.slider(key="weight_moon").set_value(1.5).run()
    click(at, "Apply")
    first, second = at.button(key="strip_use_refine_1"), at.button(key="strip_use_refine_2")
    assert (first.label, first.disabled) == ("v1", False) and (second.label, second.disabled) == ("v2 ●", True)
    first.click().run()
    assert studio(at).current.number == 1
    assert at.button(key="strip_use_refine_1").label == "v1 ●"


def test_mask_from_word_uses_the_pinned_word(app_env):
    from tests.app_support import log, session

    at = refine_after_example()
    assert "word: “sky”" in texts(at.caption)  # nothing pinned or hovered: "sky"
    session(at).hover["refine_hover"] = {"pinned": "wolf"}  # what a click on "wolf" in the hover component leaves
    at.run()
    assert "word: “wolf”" in texts(at.caption)
    click(at, "Mask from word")
    events = log(app_env).events_df()
    assert json.loads(events[events["action"] == "mask_from_word"].payload.iloc[-1])["word"] == "wolf"
    assert session(at).mask_prefill["word"] == "wolf"


def test_the_inpaint_box_shows_the_prompt_it_will_run(app_env):
    at = refine_after_example()
    at.text_input(key="inpaint_prompt").input("replace with misty forest").run()
    assert "will run: “misty forest, night sky”" in texts(at.caption)
    at.text_input(key="inpaint_prompt").input("").run()
    assert "will run: erase: fill from the surroundings" in texts(at.caption)
    at.text_input(key="inpaint_prompt").input("replace with").run()
    assert any("does not say what to put in the mask" in c for c in texts(at.caption)), texts(at.caption)
    assert not at.exception
