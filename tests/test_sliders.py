"""Which words get a Refine slider (engine.words.sliders): function words none by default, the model's known phrases
one slider each, covering all the phrase's tokens."""
from pathlib import Path

import pytest

from engine.model.family import model_defaults
from engine.words.prompt import tokenize_prompt
from engine.words.sliders import FUNCTION_WORDS, slider_terms
from engine.words.tokenizer import LightTokenizer
from engine.words.weights import token_weight_vector

MODEL = Path(__file__).resolve().parents[1] / "models" / "tiny-scenes"
DESIGN_PROMPT = "a painting of a wolf sitting in front of the full moon, night sky"


@pytest.fixture(scope="module")
def tokens():
    return tokenize_prompt(LightTokenizer(MODEL / "tokenizer"), DESIGN_PROMPT, syntax="none")


@pytest.fixture(scope="module")
def phrases():
    return model_defaults(MODEL).phrases


def test_builtin_model_knows_its_phrases(phrases):
    assert {"full moon", "misty forest", "night sky"} <= set(phrases)


def test_function_words_get_no_slider_and_known_phrases_one(tokens, phrases):
    assert slider_terms(tokens, phrases) == ["painting", "wolf", "sitting", "full moon", "night sky"]


def test_without_known_phrases_each_content_word_has_its_slider(tokens):
    assert slider_terms(tokens) == ["painting", "wolf", "sitting", "full", "moon", "night", "sky"]


def test_show_all_gives_every_word_a_slider(tokens, phrases):
    terms = slider_terms(tokens, phrases, show_all=True)
    assert terms[:4] == ["a", "painting", "of", "wolf"]
    assert {"in", "front", "the", "full moon", "full", "moon", "night sky", "night", "sky"} <= set(terms)
    assert {"a", "of", "in", "the"} <= FUNCTION_WORDS


def test_weighted_words_keep_their_slider(tokens, phrases):
    terms = slider_terms(tokens, phrases, weighted=["the", "Wolf  Moon"])
    assert terms[-2:] == ["the", "wolf moon"] and terms.count("wolf") == 1


def test_a_phrase_slider_scales_all_its_tokens(tokens):
    plain = token_weight_vector(tokens, {})
    scaled = token_weight_vector(tokens, {"full moon": 1.5})
    changed = [i for i, (a, b) in enumerate(zip(plain, scaled)) if a != b]
    assert changed == tokens.indices_for("full") + tokens.indices_for("moon")
    assert all(scaled[i] == 1.5 for i in changed)
