"""Attune's tokens equal transformers' CLIPTokenizer's for every prompt (issue 21, item 3).

No CLIP vocabulary is on disk, so the test trains a small one in CLIP's format (byte-level BPE with `</w>` word ends,
CLIP's normaliser and pre-tokenizer) on sample captions rich in punctuation runs, writes vocab.json + merges.txt, and
builds transformers.CLIPTokenizer from those files. (transformers 5 has one CLIPTokenizer, backed by `tokenizers`; it
is the tokenizer diffusers and Compel use.) Attune is checked with that tokenizer and with its own LightTokenizer on the
tokenizer.json the same tokenizer saves.
"""
import json
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.words.prompt import MAX_LENGTH, parse, is_break, tokenize_prompt
from engine.words.tokenizer import load_tokenizer

CAPTIONS = [
    "a wolf under the full moon... so quiet!!", "wow :) a red fox, in the snow!!!", "night sky... stars, moon :)",
    "a café by the lake; misty morning...", "ein Mädchen im Schnee, sehr schön!!", "the cat's toy :) so cute!!",
    "a house (on a hill), sunset... golden light", "élan, crème brûlée... delicious :)", "🙂 happy dog!! 🐶...",
]


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    trainer_tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    trainer_tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                                   r"""[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(vocab_size=700, end_of_word_suffix="</w>", show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    trainer_tok.train_from_iterator(CAPTIONS * 20, trainer)
    merges = [" ".join(m) if isinstance(m, (list, tuple)) else m
              for m in json.loads(trainer_tok.to_str())["model"]["merges"]]
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}  # CLIP's layout: bytes, bytes + </w>, merges, specials
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    for merge in merges:
        vocab.setdefault("".join(merge.split()), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder = tmp_path_factory.mktemp("clip-format")
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


@pytest.fixture(scope="module")
def reference(clip_files):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(clip_files))


@pytest.fixture(scope="module")
def light(reference, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip-saved")
    reference.save_pretrained(str(folder))
    return load_tokenizer(folder)


def reference_ids(reference, text: str, syntax: str) -> list[int]:
    """What A1111 / Compel feed CLIP: each emphasis span tokenized whole by CLIPTokenizer, ids concatenated."""
    ids: list[int] = []
    for span_text, weight in parse(text, syntax):
        if not is_break((span_text, weight)):
            ids += reference(span_text, add_special_tokens=False)["input_ids"]
    return ids


def content_ids(wt) -> list[int]:
    return [wt.input_ids[i] for start, end in wt.chunks for i in range(start, end)]


def test_punctuation_runs_are_one_token(reference, light):
    for tokenizer in (reference, light):
        wt = tokenize_prompt(tokenizer, "moon... wow!! :)")
        assert content_ids(wt) == reference("moon... wow!! :)", add_special_tokens=False)["input_ids"]
        dots = reference.convert_tokens_to_ids("...</w>")
        assert dots != reference.unk_token_id and dots in wt.input_ids
        # the three words `.` `.` `.` share CLIP's one `...` token: each of them maps to it
        assert wt.words[1:4] == [".", ".", "."]
        assert wt.token_indices[1] == wt.token_indices[2] == wt.token_indices[3] == [wt.input_ids.index(dots)]
        assert wt.indices_for("moon") == [1] and wt.input_ids[1] == reference.convert_tokens_to_ids("moon</w>")


def test_a1111_span_boundary_splits_merges(reference):
    # A1111 tokenizes `(moon)` and `...` apart, so `moon` and `...` stay whole but the run `!!` over a span boundary
    # splits into `!` `!`.
    wt = tokenize_prompt(reference, "wow!(!)", syntax="a1111")
    assert content_ids(wt) == reference_ids(reference, "wow!(!)", "a1111")
    assert content_ids(wt) != reference("wow!!", add_special_tokens=False)["input_ids"]


PIECES = ["moon", "wolf", "café", "Mädchen", "crème", "brûlée", "🙂", "🐶", "...", "..", "!!", "!!!", ":)", ",", ";",
          "(", ")", "[", "]", "(moon:1.3)", "+", "-", "++", "\"", "'s", "BREAK", "élan", "x", "7", "  ", " ", "\u00e9",
          "e\u0301", "sky", "a"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(PIECES) | st.text(alphabet="abcé.!:),( 🙂'", max_size=6), max_size=25),
       st.sampled_from(["none", "a1111", "compel"]))
def test_ids_equal_clip_tokenizer(reference, light, pieces, syntax):
    text = "".join(pieces)
    expected = reference_ids(reference, text, syntax)
    for tokenizer in (reference, light):
        wt = tokenize_prompt(tokenizer, text, syntax)
        assert content_ids(wt) == expected
        assert len(wt.input_ids) == MAX_LENGTH * len(wt.chunks)
        # every word points at tokens that carry its characters: the token's text contains the word's (lowercased)
        for word, indices in zip(wt.words, wt.token_indices):
            assert indices, word
            tokens = reference.convert_ids_to_tokens([wt.input_ids[i] for i in indices])
            spelt = reference.convert_tokens_to_string(tokens).replace("</w>", "").replace(" ", "")
            assert unicodedata.normalize("NFD", word.lower()) in unicodedata.normalize("NFD", spelt)
