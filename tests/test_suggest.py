"""The prompt optimiser on a tiny random GPT-2 built from a config (no downloads): protocol, input stripping, errors."""
from __future__ import annotations

import json

import pytest
import torch

from engine.words import suggest
from engine.errors import AttuneError

WORDS = "a painting of wolf moon night sky sun stars bright highly detailed digital art Rephrase : ,".split()


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-lm")
    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    # no end-of-text token: the random model cannot stop early, so the suggestion has words to check
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_positions=128, n_embd=16, n_layer=1, n_head=2,
                        bos_token_id=None, eos_token_id=None)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def test_protocol_rephrase_suffix_eight_beams_77_tokens_first_result(tiny_lm, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    suggest._cache.clear()
    calls = []
    original = type(AutoModelForCausalLM.from_pretrained(tiny_lm)).generate

    def spy(self, input_ids, **kwargs):
        calls.append((input_ids.clone(), kwargs))
        return original(self, input_ids, **kwargs)

    monkeypatch.setattr(type(AutoModelForCausalLM.from_pretrained(tiny_lm)), "generate", spy)
    result = suggest.suggest("  a painting of   wolf ", lm=str(tiny_lm))
    assert result.prompt == "a painting of wolf" and result.lm == str(tiny_lm)
    (input_ids, kwargs), = calls
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    assert input_ids[0].tolist() == tokenizer("a painting of wolf Rephrase:")["input_ids"]
    assert (kwargs["num_beams"], kwargs["max_new_tokens"], kwargs["do_sample"]) == (8, 77, False)
    # the same search run by hand: the suggestion is the first beam's new tokens, never the input again
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    beams = original(model, input_ids, **{**kwargs, "num_return_sequences": 8})
    expected = tokenizer.decode(beams[0][input_ids.shape[1]:], skip_special_tokens=True)
    assert result.suggestion == " ".join(expected.split())
    assert result.suggestion and not result.suggestion.startswith("a painting of wolf Rephrase")


def test_bad_input_and_missing_models_are_one_line_errors(tiny_lm, monkeypatch, tmp_path):
    with pytest.raises(AttuneError, match="Type a prompt first"):
        suggest.suggest("   ", lm=str(tiny_lm))
    with pytest.raises(AttuneError, match="too long"):
        suggest.suggest("moon " * 500, lm=str(tiny_lm))
    with pytest.raises(AttuneError, match="neither a local folder nor a hub id"):
        suggest.suggest("a moon", lm=str(tmp_path / "missing"))
    suggest._cache.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AttuneError, match="offline, and it is not in the local cache"):
        suggest.suggest("a moon", lm="attune-tests/no-such-optimiser")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: fails at once, no retries
    with pytest.raises(AttuneError, match="the hub is not reachable, and it is not in the local cache"):
        suggest.suggest("a moon", lm="attune-tests/no-such-optimiser")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AttuneError, match="could not be loaded"):
        suggest.suggest("a moon", lm=str(empty))


def test_the_app_explains_when_no_optimiser_is_configured(monkeypatch):
    monkeypatch.delenv("ATTUNE_PROMPT_LM", raising=False)
    assert "ATTUNE_PROMPT_LM" in suggest.unavailable_reason()
    monkeypatch.setenv("ATTUNE_PROMPT_LM", "some/model")
    assert suggest.unavailable_reason() is None and suggest.configured_lm() == "some/model"


def test_cli_suggest_prints_prompt_and_suggestion(tiny_lm, monkeypatch, capsys):
    from engine.cli import main

    assert main(["suggest", "--prompt", "a wolf", "--lm", str(tiny_lm)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["prompt"] == "a wolf" and printed["suggestion"] and printed["lm"] == str(tiny_lm)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["suggest", "--prompt", "a wolf", "--lm", "x/none"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ") and "could not be loaded" in error


def test_a_prompt_near_the_context_limit_gets_fewer_new_tokens_then_a_clear_error(tiny_lm):
    near = " ".join(["moon"] * 120)  # 120 + 2 suffix tokens of the tiny LM's 128 positions
    assert len(suggest.suggest(near, lm=str(tiny_lm)).suggestion.split()) <= 6
    with pytest.raises(AttuneError, match="too long for the optimiser"):
        suggest.suggest(" ".join(["moon"] * 130), lm=str(tiny_lm))
