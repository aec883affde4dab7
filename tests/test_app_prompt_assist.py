"""AppTest for word cards, Explore, the optimiser, ratings, the Compare prompt diff and the researcher dashboard, and
for the condition switches that turn each of them off."""
from __future__ import annotations

import json

from tests.app_support import EXAMPLE, app_env, generate_example, go, log, open_page, session, studio, texts  # noqa: F401
from tests.test_suggest import tiny_lm  # noqa: F401  (fixture)

IDS = dict(pid="P01", study="charm", condition="full")
CONDITIONS = """
default = "full"
[conditions.full]
rating = true
[conditions.no_prompt_assist]
word_cards = false
explore = false
suggest = false
[conditions.no_explanations]
heatmaps = false
"""
MOON = EXAMPLE.replace(",", "").split().index("moon")  # word index 11


def with_conditions(monkeypatch, tmp_path):
    path = tmp_path / "conditions.toml"
    path.write_text(CONDITIONS)
    monkeypatch.setenv("ATTUNE_CONDITIONS", str(path))


def generate_page(**ids):
    at = open_page("Home.py", **{**IDS, **ids})
    generate_example(at)
    return go(at, "pages/1_Generate.py")


def card(at, index: int, action: str):
    key = f"card_generate_{studio(at).current.id}_{index}_{action}"
    return at.button(key=key) if action in ("delete", "replace", "explore") else at.selectbox(key=key)


def actions(data_dir, name):
    frame = log(data_dir).events_df()
    return [json.loads(p) for p in frame[frame.action == name].payload]


def test_word_cards_delete_and_replace_make_same_seed_versions(app_env, monkeypatch):
    monkeypatch.delenv("ATTUNE_PROMPT_LM", raising=False)
    at = generate_page()
    v1 = studio(at).current
    assert len([b for b in at.button if b.label == "Delete"]) == len(EXAMPLE.replace(",", "").split())
    card(at, MOON, "pick").set_value("sun").run()
    card(at, MOON, "replace").click().run()
    assert not at.exception and not at.error, texts(at.error)
    v2 = studio(at).current
    assert (v2.kind, v2.parent_id, v2.seed) == ("edit", v1.id, v1.seed)
    assert v2.prompt == EXAMPLE.replace("moon", "sun") and v2.edit == "replace: moon → sun"
    assert any("v2 made from v1" in s for s in texts(at.success))
    assert at.text_area(key="gen_prompt").value == v2.prompt  # the prompt box follows the edit
    assert any("v2" in c.value and "edit" in c.value for c in at.caption)  # the strip lists it
    card(at, EXAMPLE.replace(",", "").split().index("wolf"), "delete").click().run()
    v3 = studio(at).current
    assert v3.parent_id == v2.id and "wolf" not in v3.prompt and v3.seed == v1.seed
    assert actions(app_env, "card_replace")[0]["replacement"] == "sun"
    assert actions(app_env, "card_replace")[0]["relation"] == "similar"
    assert actions(app_env, "card_delete")[0]["word"] == "wolf"
    assert list(log(app_env).versions_df().kind) == ["generate", "edit", "edit"]
    # the optimiser explains itself in one line when none is configured
    assert at.button(key="suggest_request").disabled
    assert any("ATTUNE_PROMPT_LM" in c.value for c in at.caption)
    # Compare renders the engine's word diff
    go(at, "pages/4_Compare.py")
    assert "Prompt changes" in texts(at.subheader)
    assert any(":red[~~moon~~]" in m.value for m in at.markdown)


def test_explore_grid_then_choose_an_alternative(app_env):
    at = generate_page()
    v1 = studio(at).current
    card(at, MOON, "explore").click().run()
    picker = at.multiselect(key=f"explore_pick_{v1.id}_{MOON}")
    assert picker.value[:2] == ["sun", "stars"]
    picker.set_value(["sun", "clouds"]).run()
    at.button(key="explore_run").click().run()
    assert not at.exception and not at.error, texts(at.error)
    cells = [v for v in studio(at).history if v.kind == "explore"]
    assert [c.prompt for c in cells] == [EXAMPLE.replace("moon", w) for w in ("sun", "clouds")]
    assert {c.seed for c in cells} == {v1.seed} and studio(at).current.id == v1.id
    at.button(key=f"explore_use_{cells[1].id}").click().run()
    assert studio(at).current.id == cells[1].id
    assert any("“clouds” for “moon”" in s for s in texts(at.success))
    assert actions(app_env, "explore")[0]["alternatives"] == ["sun", "clouds"]
    assert actions(app_env, "alternative_chosen")[0]["alternative"] == "clouds"


def test_suggestion_is_a_diff_until_accepted(app_env, monkeypatch, tiny_lm):
    monkeypatch.setenv("ATTUNE_PROMPT_LM", str(tiny_lm))
    at = open_page("pages/1_Generate.py", **IDS)
    at.text_area(key="gen_prompt").set_value("a painting of wolf").run()
    at.button(key="suggest_request").click().run()
    assert not at.exception and not at.error, texts(at.error)
    pending = session(at).prompt_suggestion
    assert pending["prompt"] == "a painting of wolf" and pending["suggestion"]
    assert at.text_area(key="gen_prompt").value == "a painting of wolf"  # nothing changes before Accept
    assert any(m.value.startswith("**Suggested prompt:**") for m in at.markdown)
    at.button(key="suggest_accept").click().run()
    assert at.text_area(key="gen_prompt").value == pending["suggestion"]
    at.button(key="suggest_request").click().run()
    at.button(key="suggest_reject").click().run()
    assert at.text_area(key="gen_prompt").value == pending["suggestion"]
    assert [len(actions(app_env, a)) for a in ("suggest_request", "suggest_accept", "suggest_reject")] == [2, 1, 1]


def test_conditions_switch_each_control_off(app_env, monkeypatch, tmp_path):
    with_conditions(monkeypatch, tmp_path)
    at = generate_page(condition="no_prompt_assist")
    labels = {b.label for b in at.button}
    assert not {"Delete", "Replace", "Explore", "Add keyword", "Optimise prompt"} & labels
    assert "Words" not in texts(at.subheader)
    assert not at.get("feedback")  # rating is off unless a condition asks for it
    at = generate_page(condition="full")
    assert {"Delete", "Replace", "Explore", "Add keyword", "Optimise prompt"} <= {b.label for b in at.button}
    stars = at.get("feedback")
    assert len(stars) == 1
    version = studio(at).current
    stars[0].set_value(3).run()
    assert actions(app_env, "rate") == [{"version_id": version.id, "stars": 4}]
    at = generate_page(condition="no_explanations")
    assert "Delete" in {b.label for b in at.button}
    chips = [m.value for m in at.markdown if "attune-chip" in m.value]
    assert chips and not any("total attention" in c for c in chips)  # no attention shading without explanations
    at = generate_page(condition="full")
    assert any("total attention" in m.value for m in at.markdown if "attune-chip" in m.value)


def test_researcher_dashboard_compares_conditions(app_env, monkeypatch, tmp_path):
    with_conditions(monkeypatch, tmp_path)
    monkeypatch.setenv("ATTUNE_RESEARCHER_PASSWORD", "pw")
    for pid, condition in (("A1", "full"), ("A2", "full"), ("B1", "no_prompt_assist"), ("B2", "no_prompt_assist")):
        generate_page(pid=pid, condition=condition)
    at = open_page("pages/5_Researcher.py", **IDS)
    at.text_input(key="researcher_password").set_value("pw")
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert "Conditions compared" in texts(at.subheader)
    summary, tests = at.dataframe[0].value, at.dataframe[1].value
    assert list(summary.condition) == ["full", "no_prompt_assist"] and list(summary.participants) == [2, 2]
    assert {"versions", "seconds_per_version", "mean_rating", "use_word_cards"} <= set(tests.measure)
    assert {"Per-participant table (CSV)", "Condition tests (CSV)"} <= {b.label for b in at.get("download_button")}


def test_a_card_edit_whose_run_stops_is_served_by_the_next_run(app_env, monkeypatch):
    import streamlit as st

    from ui import actions

    at = generate_page()
    v1 = studio(at).current
    card(at, MOON, "pick").set_value("sun").run()
    real_serve = actions.serve
    monkeypatch.setattr(actions, "serve", lambda page: st.stop())  # the click's run ends right after its callbacks
    card(at, MOON, "replace").click().run()
    assert studio(at).current.id == v1.id and [r.kind for r in session(at).requests] == ["card_replace"]
    assert session(at).requests[0].values["replacement"] == "sun"  # taken at the click
    monkeypatch.setattr(actions, "serve", real_serve)
    at.run()
    assert not at.exception and not at.error, texts(at.error)
    v2 = studio(at).current
    assert v2.parent_id == v1.id and v2.prompt == EXAMPLE.replace("moon", "sun")
    assert at.text_area(key="gen_prompt").value == v2.prompt
    assert not session(at).requests and list(log(app_env).versions_df().kind) == ["generate", "edit"]
