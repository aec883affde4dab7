"""Inpaint prompts as people type them (engine/words/inpaint_instruction.py): the rules, bad input, and the Version."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from engine import parse_inpaint_instruction
from engine.sampling.loop import is_small_mask
from engine.words.inpaint_instruction import remove_phrase, time_of_day_phrase
from engine.errors import AttuneError
from engine.sampling.masks import erase_by_fill, fill_from_surroundings
from engine.study.pngmeta import read_png
from engine.study.log import StudyLog
from engine.study.studio import Studio
from engine.pipeline.attune import Attune
from engine.pipeline.params import GenerateParams

IMAGE = "a painting of a wolf sitting in front of the full moon, night sky"


@pytest.mark.parametrize("typed, kind, prompt, target", [
    ("replace with misty forest", "replace", "misty forest", None),
    ("Replace with misty forest.", "replace", "misty forest", None),
    ("  REPLACE   WITH  Misty Forest!! ", "replace", "Misty Forest", None),
    ("replace it with a misty forest", "replace", "a misty forest", None),
    ("replace the sky with misty forest", "replace", "misty forest", "sky"),
    ("Replace the night sky by a misty forest, please", "replace", "a misty forest", "night sky"),
    ("change it to misty forest", "replace", "misty forest", None),
    ("turn the sky into snow", "replace", "snow", "sky"),
    ("add a red house", "add", "a red house", None),
    ("please add a tree here", "add", "a tree", None),
    ("make it a misty forest", "make", "a misty forest", None),
    ("Make it snowy.", "make", "snowy", None),
    ("misty forest", "plain", "misty forest", None),
    ("“misty forest”", "plain", "misty forest", None),
    ("a replacement moon", "plain", "a replacement moon", None),  # a word that starts like a verb is no instruction
])
def test_instruction_rules(typed, kind, prompt, target):
    got = parse_inpaint_instruction(typed, IMAGE)
    runs = prompt if kind == "plain" else f"{prompt}, night sky"  # instructions keep the image's time of day
    assert (got.typed, got.kind, got.prompt, got.target, got.erase) == (typed, kind, runs, target, False)
    assert prompt in got.rule and "\n" not in got.rule


@pytest.mark.parametrize("typed, image_prompt, runs, kept", [
    ("replace with misty forest", "a wolf under a pink dusk sky, snowy ground", "misty forest, dusk sky", "dusk sky"),
    ("add a red house", "a lone wolf at night", "a red house, at night", "at night"),
    ("make it a misty forest", "an evening sky above a lake", "a misty forest, evening sky", "evening sky"),
    ("add a tree", "a wolf, (night sky:1.3)", "a tree, night sky", "night sky"),  # the words, not the emphasis
    ("replace with a day sky", "the night sky with a wolf", "a day sky", None),  # X sets its own time of day
    ("add a red house", "a wolf in a misty forest", "a red house", None),  # no time of day to keep
    ("misty forest", "a wolf, night sky", "misty forest", None),  # plain text runs as typed
])
def test_instructions_keep_the_images_time_of_day(typed, image_prompt, runs, kept):
    got = parse_inpaint_instruction(typed, image_prompt)
    assert got.prompt == runs
    assert ("keeping the image's" in got.rule) == (kept is not None)
    assert kept is None or f"'{kept}'" in got.rule


def test_a_small_mask_adds_no_time_of_day():
    got = parse_inpaint_instruction("add a red house", IMAGE, small_mask=True)
    assert got.prompt == "a red house" and "keeping" not in got.rule
    assert parse_inpaint_instruction("add a red house", IMAGE).prompt == "a red house, night sky"


def test_is_small_mask_is_the_auto_crop_rule():
    mask = np.zeros((128, 128), bool)
    assert not is_small_mask(mask)  # empty
    mask[40:80, 10:74] = True  # the box spans half the width: small
    assert is_small_mask(mask)
    mask[40:80, 10:75] = True  # a pixel wider than half: not small
    assert not is_small_mask(mask)
    assert not is_small_mask(np.ones((128, 128), bool))


def test_time_of_day_phrase():
    assert time_of_day_phrase("a painting of a wolf sitting in front of the full moon, night sky") == "night sky"
    assert time_of_day_phrase("the night, a wolf") == "night"  # punctuation ends the phrase
    assert time_of_day_phrase("a wolf at dawn") == "at dawn"
    assert time_of_day_phrase("a wolf in a misty forest") is None


@pytest.mark.parametrize("typed, prompt, target", [
    ("remove the moon", "a painting of a wolf sitting, night sky", "moon"),
    ("Erase the full moon!", "a painting of a wolf sitting, night sky", "full moon"),
    ("delete the wolf", "a painting of sitting in front of the full moon, night sky", "wolf"),
    ("get rid of the moons", "a painting of a wolf sitting, night sky", "moons"),  # plural tolerated
])
def test_remove_takes_the_object_out_of_the_image_prompt(typed, prompt, target):
    got = parse_inpaint_instruction(typed, IMAGE)
    assert (got.kind, got.prompt, got.target, got.erase) == ("remove", prompt, target, True)


def test_remove_keeps_emphasis_syntax_tidy():
    got = parse_inpaint_instruction("remove moon", "(full moon:1.5), night sky")
    assert got.prompt == "night sky"


@pytest.mark.parametrize("typed", ["", "   ", " . ", None, "remove it", "erase", "remove the house"])
def test_empty_box_and_unknown_targets_erase_by_filling(typed):
    got = parse_inpaint_instruction(typed, IMAGE)
    assert got.erase and got.prompt == ""
    assert got.kind == ("erase_empty" if not (typed or "").strip(" .") else "remove")
    assert "filled from its surroundings" in got.rule
    assert got.target == ("house" if typed == "remove the house" else None)


@pytest.mark.parametrize("typed, hint", [
    ("replace with", "replace with misty forest"), ("Replace it with...", "replace with misty forest"),
    ("add", "add a red house"), ("make it", "make it a misty forest"), ("change it to", "(after 'change')"),
])
def test_an_instruction_without_its_object_is_one_line(typed, hint):
    with pytest.raises(AttuneError) as error:
        parse_inpaint_instruction(typed, IMAGE)
    assert hint in str(error.value) and "\n" not in str(error.value)


def test_too_long_or_not_text_is_one_line():
    with pytest.raises(AttuneError, match=r"too long \(5001 characters"):
        parse_inpaint_instruction("replace with " + "x" * 4988, IMAGE)
    with pytest.raises(AttuneError, match="must be text"):
        parse_inpaint_instruction(42, IMAGE)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.text(max_size=80))
def test_any_text_parses_or_says_one_line(typed, image_prompt):
    try:
        got = parse_inpaint_instruction(typed, image_prompt)
    except AttuneError as error:
        assert "\n" not in str(error)
        return
    assert got.kind in ("replace", "add", "make", "remove", "erase_empty", "plain") and got.typed == typed
    assert got.erase == (got.kind in ("remove", "erase_empty"))
    assert got.prompt == got.prompt.strip() and "\n" not in got.rule
    assert got.erase or got.prompt  # only an erase may run no prompt


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["replace with {}", "REPLACE WITH {}!", "add {}", "make it {}", "{}", "change it to {}."]),
       st.lists(st.sampled_from(["misty", "forest", "red", "house", "snow", "moon"]), min_size=1, max_size=3))
def test_the_object_keeps_its_words_whatever_the_phrasing(template, words):
    obj = " ".join(words)
    runs = obj if template == "{}" else f"{obj}, night sky"  # instructions add the image's time of day after it
    assert parse_inpaint_instruction(template.format(obj), IMAGE).prompt == runs


def test_fill_from_surroundings_keeps_the_outside_and_fills_flat_colour():
    image = np.zeros((32, 48, 3), np.uint8)
    image[:] = (20, 30, 90)
    image[10:20, 10:20] = (250, 240, 200)  # a moon in a flat sky
    mask = np.zeros((32, 48), bool)
    mask[8:22, 8:22] = True
    filled = fill_from_surroundings(image, mask)
    assert np.array_equal(filled[~mask], image[~mask])
    assert np.array_equal(filled[mask], np.broadcast_to((20, 30, 90), (int(mask.sum()), 3)))
    with pytest.raises(AttuneError, match="whole image"):
        fill_from_surroundings(image, np.ones((32, 48), bool))


def test_an_erase_by_fill_leaves_none_of_the_object_inside_a_tight_mask():
    image = np.zeros((32, 32, 3), np.uint8)
    image[:] = (20, 30, 90)
    image[8:24, 8:24] = (250, 240, 200)
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True  # exactly the object: a feathered paste would keep its edge
    out = erase_by_fill(image, mask)
    assert np.array_equal(out, np.broadcast_to(np.array((20, 30, 90), np.uint8), image.shape))


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Attune(tiny_model_dir, backend="torch")


def test_studio_records_typed_text_and_the_prompt_that_ran(engine, tmp_path):
    log = StudyLog(tmp_path / "study.db")
    studio = Studio(engine, log, tmp_path / "out", participant_id="p1", session_id="s1")
    v1 = studio.generate(GenerateParams(prompt=IMAGE, seed=7, steps=3, width=64, height=64))
    mask = np.zeros((64, 64), bool)
    mask[0:24, 8:56] = True
    v2 = studio.inpaint(mask, "replace with misty forest", parent=v1.id)
    v3 = studio.inpaint(mask, "", parent=v1.id)
    assert (v2.inpaint_typed, v2.inpaint_prompt, v2.prompt) == ("replace with misty forest", "misty forest, night sky", IMAGE)
    assert studio.word_tokens(v2).words == ["misty", "forest", ",", "night", "sky"]  # "replace", "with" are not sent
    assert (v3.inpaint_typed, v3.inpaint_prompt, v3.unet, v3.maps_path) == ("", "", "fill", None)
    before = np.asarray(studio.image(v1))
    after = np.asarray(studio.image(v3))
    assert np.array_equal(after[~mask], before[~mask]) and not np.array_equal(after[mask], before[mask])
    for version in (v2, v3):
        logged = {v.id: v for v in log.versions(session_id="s1")}[version.id]
        _, from_png = read_png(version.image_path)
        for record in (logged, from_png):
            assert (record.inpaint_typed, record.inpaint_prompt, record.unet) == (
                version.inpaint_typed, version.inpaint_prompt, version.unet)
    with pytest.raises(AttuneError, match="no prompt whose words could be reweighted"):
        studio.reweight({"moon": 1.5}, parent=v3.id)
    with pytest.raises(AttuneError, match="does not say what to put"):
        studio.inpaint(mask, "replace with", parent=v1.id)
    assert len(log.versions(session_id="s1")) == 3  # the bad box left no row
    small = np.zeros((64, 64), bool)
    small[40:56, 10:30] = True  # its surroundings show the night: nothing added
    assert studio.inpaint(small, "add a red house", parent=v1.id).inpaint_prompt == "a red house"


@pytest.mark.parametrize("prompt, target, left", [
    ("a lake near a tree", "tree", "a lake"),  # the connector went with the phrase that ended the clause
    ("the stars and some clouds, and a red house, beautiful painting", "house",
     "the stars and some clouds, beautiful painting"),
    ("a wolf, the full moon", "moon", "a wolf"),  # no comma left hanging
    ("a tree and a house near the lake", "house", "a tree and near the lake"),  # mid-clause: only the phrase goes
])
def test_remove_leaves_no_dangling_connector(prompt, target, left):
    assert remove_phrase(prompt, target) == left
