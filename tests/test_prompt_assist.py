"""Word cards, alternatives and Explore in the engine: prompt edits, word diffs, grammar data, same-seed grids."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.study import explore
from engine.words import prompt_edit
from engine.words.alternatives import alternatives, explore_choices, keyword_suggestions, style_keywords
from engine.errors import AttuneError
from engine.study.log import StudyLog
from engine.pipeline.attune import Attune, GenerateParams
from engine.study.studio import Studio
from tests.app_support import REPO

PROMPT = "a painting of a wolf sitting in front of the (moon:1.5), night sky"


# ---- prompt edits and diffs ------------------------------------------------------------------------------------

def test_words_skip_emphasis_numbers_and_keep_spans():
    words = prompt_edit.prompt_words(PROMPT)
    assert [w.text for w in words] == "a painting of a wolf sitting in front of the moon night sky".split()
    moon = words[prompt_edit.find_word(PROMPT, "MOON")]
    assert PROMPT[moon.start:moon.end] == "moon"
    with pytest.raises(AttuneError, match="not a word of the prompt"):
        prompt_edit.find_word(PROMPT, "zebra")


@pytest.mark.parametrize("prompt, word, expected", [
    (PROMPT, "moon", "a painting of a wolf sitting in front of the, night sky"),
    (PROMPT, "wolf", "a painting of a sitting in front of the (moon:1.5), night sky"),
    ("moon, wolf, night sky", "moon", "wolf, night sky"),
    ("a wolf, moon, night sky", "moon", "a wolf, night sky"),
    ("a wolf moon++ sky", "moon", "a wolf sky"),
    ("a (wolf) under the sky", "wolf", "a under the sky"),
])
def test_delete_word(prompt, word, expected):
    assert prompt_edit.delete_word(prompt, prompt_edit.find_word(prompt, word)) == expected


def test_delete_last_word_and_bad_index_are_clear_errors():
    with pytest.raises(AttuneError, match="empty"):
        prompt_edit.delete_word("moon", 0)
    with pytest.raises(AttuneError, match="Word number 9"):
        prompt_edit.delete_word("a moon", 9)


def test_replace_keeps_the_emphasis_on_the_new_word():
    index = prompt_edit.find_word(PROMPT, "moon")
    assert prompt_edit.replace_word(PROMPT, index, "  golden   sun ") == PROMPT.replace("(moon:1.5)", "(golden sun:1.5)")
    with pytest.raises(AttuneError, match="must contain a word"):
        prompt_edit.replace_word(PROMPT, index, " , ")
    assert prompt_edit.weights_after_replace({"moon": 1.5, "sky": 0.5}, "Moon", "sun") == {"sun": 1.5, "sky": 0.5}


def test_word_diff_summary_and_markdown():
    new = prompt_edit.replace_word(PROMPT, prompt_edit.find_word(PROMPT, "moon"), "sun")
    parts = prompt_edit.word_diff(PROMPT, new)
    assert [(p.op, p.text) for p in parts if p.op != "same"] == [("removed", "moon"), ("added", "sun")]
    assert prompt_edit.diff_summary(PROMPT, new) == "moon → sun"
    assert prompt_edit.diff_summary("a wolf, night sky", "a grey wolf, sky") == "+ grey; − night"
    assert prompt_edit.diff_summary("same", "same") == "no change"
    assert prompt_edit.diff_markdown("a moon, sky", "a sun, sky") == "a :red[~~moon~~] :green[**sun**], sky"


# ---- alternatives data -------------------------------------------------------------------------------------------

def test_alternatives_file_matches_the_scene_grammar():
    from train import world
    from train.export_alternatives import render

    assert (REPO / "engine" / "words" / "data" / "alternatives.json").read_text() == render()
    data = json.loads(render())
    vocabulary = set(world.vocabulary())
    words = {w for group in data["groups"].values() for w in group} | set(data["synonyms"])
    assert words <= vocabulary, words - vocabulary
    assert set(data["groups"]["sky object"]) == set(world.SKY_OBJECTS)
    assert "cottage" in data["synonyms"]["house"]


def test_style_keywords_are_many_grouped_and_without_artists():
    keywords = style_keywords()
    assert set(keywords) == {"medium", "lighting", "colour", "mood", "composition", "detail"}
    flat = [k for group in keywords.values() for k in group]
    assert len(flat) >= 150 and len(flat) == len(set(flat))
    assert not [k for k in flat if " by " in f" {k} " or "style of" in k]
    assert keyword_suggestions("gold")[0] == "golden hour"
    assert keyword_suggestions("") == []


def test_alternatives_come_from_the_grammar_and_are_flagged_by_the_vocabulary():
    from train import world

    vocabulary = set(world.vocabulary())
    moon = alternatives("moon", vocabulary)
    similar = [a.text for a in moon if a.relation == "similar"]
    assert similar == ["sun", "stars", "clouds"]
    assert all(a.known for a in moon)
    assert {a.relation for a in moon} == {"similar", "different"}
    house = alternatives("house", vocabulary)
    assert house[0].text == "cottage" and house[0].relation == "synonym"
    # a vocabulary without "stars" flags it (and Explore's defaults skip it)
    flagged = {a.text: a.known for a in alternatives("moon", vocabulary - {"stars"})}
    assert flagged["stars"] is False and flagged["sun"] is True
    assert [a.text for a in explore_choices("moon", vocabulary - {"stars"}, 2)] == ["sun", "clouds"]
    # style keywords: the built-in vocabulary knows few of them; a BPE model cannot be checked (None)
    lighting = alternatives("golden hour", vocabulary)
    assert lighting and all(a.group == "lighting" for a in lighting)
    assert any(a.known is False for a in lighting)
    assert {a.known for a in alternatives("golden hour", None)} == {None}
    assert alternatives("zebra", vocabulary) == []
    with pytest.raises(AttuneError, match="No alternatives known"):
        explore_choices("zebra", vocabulary)


# ---- on a Studio ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Attune(tiny_model_dir, backend="torch")


@pytest.fixture
def studio(engine, tmp_path):
    return Studio(engine, StudyLog(tmp_path / "study.db"), tmp_path / "out", participant_id="p1", session_id="s1")


def first(studio, prompt="a wolf sitting in front of the full moon , night sky", **extra):
    return studio.generate(GenerateParams(prompt=prompt, seed=11, steps=2, width=64, height=64, **extra))


def test_delete_and_replace_make_same_seed_edit_versions(studio):
    v1 = first(studio, weights={"moon": 1.5, "wolf": 0.7})
    v2 = explore.replace(studio, "moon", "sun")
    assert (v2.kind, v2.parent_id, v2.seed, v2.steps) == ("edit", v1.id, v1.seed, v1.steps)
    assert v2.prompt == "a wolf sitting in front of the full sun , night sky"
    assert v2.weights == {"sun": 1.5, "wolf": 0.7}  # the focus moved with the word
    assert v2.edit == "replace: moon → sun"
    assert v2.changed_fields(v1) == {"prompt": (v1.prompt, v2.prompt), "weights": (v1.weights, v2.weights)}
    v3 = explore.delete(studio, "wolf")
    assert v3.parent_id == v2.id and v3.prompt == "a sitting in front of the full sun , night sky"
    assert v3.weights == {"sun": 1.5} and v3.edit == "delete: wolf"
    assert studio.current.id == v3.id
    rows = studio.log.versions_df()
    assert list(rows.kind) == ["generate", "edit", "edit"] and list(rows.edit)[1:] == [v2.edit, v3.edit]
    with pytest.raises(AttuneError, match="already there"):
        explore.replace(studio, "sun", "SUN")


def test_explore_grid_shares_the_seed_logs_children_and_keeps_the_parent_current(studio, engine):
    parent = first(studio)
    seen = []
    cells = explore.explore(studio, "moon", ["sun", "clouds"], progress=lambda s, t: seen.append((s, t)))
    assert [c.prompt.split()[-4] for c in cells] == ["sun", "clouds"]
    assert {c.seed for c in cells} == {parent.seed} and {c.parent_id for c in cells} == {parent.id}
    assert {c.kind for c in cells} == {"explore"} and cells[0].edit == "explore: moon → sun"
    assert studio.current.id == parent.id  # nothing changes until the user picks one
    assert seen[-1] == (4, 4) and [s for s, _ in seen] == sorted(s for s, _ in seen)
    assert len(studio.log.versions_df()) == 3
    # a cell equals a plain generation of its prompt with the same seed
    alone = engine.generate(GenerateParams(prompt=cells[1].prompt, seed=parent.seed, steps=2, width=64, height=64))
    assert np.array_equal(np.asarray(Image.open(cells[1].image_path).convert("RGB")), np.asarray(alone.image))
    studio.restore(cells[1].id)
    assert studio.current.prompt.endswith("full clouds , night sky")


def test_explore_defaults_and_errors(studio):
    first(studio)
    cells = explore.explore(studio, "moon", n=2)  # the tiny model knows sun and stars
    assert [c.edit for c in cells] == ["explore: moon → sun", "explore: moon → stars"]
    with pytest.raises(AttuneError, match="No alternatives to explore"):
        explore.explore(studio, "moon", ["moon", " "])
    with pytest.raises(AttuneError, match="at most 8"):
        explore.explore(studio, "moon", [f"w{i}" for i in range(9)])
    with pytest.raises(AttuneError, match="not a word of the prompt"):
        explore.explore(studio, "zebra", ["sun"])


def test_cli_explore_prints_children_of_the_png_with_its_seed(studio, tiny_model_dir, tmp_path, capsys):
    from engine.cli import main

    parent = first(studio)
    out = tmp_path / "grid"
    code = main(["explore", "--from", parent.image_path, "--word", "moon", "--alternatives", "sun, stars",
                 "--model", str(tiny_model_dir), "--backend", "torch", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = json.loads(captured.out)
    assert [p["alternative"] for p in printed] == ["sun", "stars"]
    assert {p["seed"] for p in printed} == {parent.seed}
    assert all(Path(p["image_path"]).is_file() for p in printed)
    rows = StudyLog(out / "attune.db").versions_df()
    root = rows[rows.kind == "restore"].iloc[0]
    assert root.prompt == parent.prompt and list(rows[rows.kind == "explore"].parent_id) == [root.id, root.id]
    assert main(["explore", "--from", parent.image_path, "--word", "zebra", "--out", str(out)]) == 1
    assert "not a word of the prompt" in capsys.readouterr().err
