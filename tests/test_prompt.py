import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import AttuneError
from engine.prompt import MAX_LENGTH, parse, parse_a1111, parse_compel, split_words, tokenize_prompt
from tests.tiny_model import TINY_WORDS
from train.tokenizer import build_word_tokenizer


def approx_spans(spans):
    return [(text, pytest.approx(weight, abs=1e-6)) for text, weight in spans]


@pytest.fixture(scope="module")
def word_tokenizer():
    return build_word_tokenizer(list(TINY_WORDS))


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    """A tiny byte-level BPE CLIP tokenizer built from a hand-written vocab (no download)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder = tmp_path_factory.mktemp("clip-tokenizer")
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = ["m o", "mo o", "moo n</w>", "s k", "sk y</w>", "f u", "fu l", "ful l</w>", "' s</w>"]
    for merge in merges:
        vocab["".join(merge.split())] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>")


# ---- A1111 ----------------------------------------------------------------------------------------------------
# Expected values: the doctests of parse_prompt_attention in AUTOMATIC1111/stable-diffusion-webui
# (modules/prompt_parser.py), exact floats included, then cases that follow from its algorithm.
A1111_DOCTESTS = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    (r"\(literal\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
]

A1111_CASES = [
    ("", [("", 1.0)]),  # the empty prompt is one empty span
    ("()", [("", 1.0)]),
    ("(moon)", [("moon", 1.1)]),
    ("[moon]", [("moon", 1 / 1.1)]),
    ("((moon))", [("moon", 1.1 * 1.1)]),
    ("(full moon:1.3) sky", [("full moon", 1.3), (" sky", 1.0)]),
    ("(moon: 0.5 )", [("moon", 0.5)]),  # spaces around the number
    ("(moon:.5)", [("moon", 0.5)]),
    ("(moon:-1)", [("moon", -1.0)]),
    ("((moon:1.5))", [("moon", 1.5 * 1.1)]),
    ("x ([moon])", [("x moon", 1.0)]),  # 1.1 · (1/1.1) is exactly 1.0 in floats: merged
    ("x [[[(((moon)))]]]", [("x ", 1.0), ("moon", 1.0000000000000002)]),  # ... three of each are not: no merge
    ("(a (b:2) c)", [("a ", 1.1), ("b", 2.2), (" c", 1.1)]),
    ("(moon:abc)", [("moon:abc", 1.1)]),  # not a number: text, and the bracket still counts
    ("(moon:1.2:1.3)", [("moon:1.2", 1.3)]),  # only a number right before ')' is a weight
    ("[moon:1.5]", [("moon:1.5", 1 / 1.1)]),  # weights only close round brackets
    ("moon:1.5)", [("moon:1.5)", 1.0)]),  # ... that are open
    ("((moon)", [("moon", 1.1 * 1.1)]),  # the unclosed outer bracket weighs the rest
    ("(a (b", [("a ", 1.1), ("b", 1.1 * 1.1)]),
    ("a [b (c", [("a ", 1.0), ("b ", 1 / 1.1), ("c", 1.1 * (1 / 1.1))]),  # round ones first, then square
    ("moon)", [("moon)", 1.0)]),  # a stray closer is text
    ("(moon]", [("moon]", 1.1)]),
    ("([a)b]", [("a", 1.1 * (1 / 1.1)), ("b", 1 / 1.1)]),  # round and square brackets pair separately
    (r"\(moon\) \[x\] \\", [("(moon) [x] \\", 1.0)]),
    (r"a \b", [("a b", 1.0)]),  # a backslash before anything else is dropped
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("BREAK", [("", 1.0), ("BREAK", -1.0), ("", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]),  # the marker is scaled like any weight
    ("aBREAK b, BREAKfast", [("aBREAK b, BREAKfast", 1.0)]),  # only the whole word
    ("(BREAK:0)", [("BREAK", 0.0)]),  # 0.0 == -0.0: A1111 merges the marker into text
]


@pytest.mark.parametrize("text, expected", A1111_DOCTESTS + A1111_CASES)
def test_a1111_cases(text, expected):
    assert parse_a1111(text) == expected


def test_a1111_bad_number_degrades_instead_of_raising():
    # A1111 raises ValueError on float('1.2.3'); Attune reads the ':1.2.3' as text and the ')' as a plain closer.
    assert parse_a1111("(moon:1.2.3)") == [("moon:1.2.3", 1.1)]
    assert parse_a1111("a (moon: . ) b") == [("a ", 1.0), ("moon: . ", 1.1), (" b", 1.0)]


def reference_a1111(text: str) -> list[list]:
    """parse_prompt_attention's semantics, written out character by character (no regex), for the fuzz test."""
    pieces, rounds, squares = [], [], []

    def scale(start, factor):
        for piece in pieces[start:]:
            piece[1] *= factor

    def is_word(c):
        return c.isalnum() or c == "_"

    def add_text(run):
        # Split at each whole-word BREAK (with the whitespace around it), leftmost first, within this run only.
        parts, last, i = [], 0, 0
        while i < len(run):
            if (run.startswith("BREAK", i) and (i == 0 or not is_word(run[i - 1]))
                    and (i + 5 == len(run) or not is_word(run[i + 5]))):
                left = i
                while left > last and run[left - 1].isspace():
                    left -= 1
                right = i + 5
                while right < len(run) and run[right].isspace():
                    right += 1
                parts.append(run[last:left])
                last = i = right
            else:
                i += 1
        parts.append(run[last:])
        for k, part in enumerate(parts):
            if k:
                pieces.append(["BREAK", -1.0])
            pieces.append([part, 1.0])

    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 < len(text) and text[i + 1] in "()[]\\":
                pieces.append([text[i + 1], 1.0])
                i += 2
            else:
                pieces.append(["", 1.0])
                i += 1
        elif c in "([":
            (rounds if c == "(" else squares).append(len(pieces))
            i += 1
        elif c == ":":
            j = i + 1
            while j < len(text) and text[j].isspace():
                j += 1
            k = j + 1 if j < len(text) and text[j] in "+-" else j
            n = k
            while n < len(text) and (text[n].isdigit() or text[n] == "."):
                n += 1
            m = n
            while m < len(text) and text[m].isspace():
                m += 1
            if n > k and m < len(text) and text[m] == ")":
                if rounds:
                    try:
                        factor = float(text[j:n])
                    except ValueError:
                        pieces.append([text[i:m], 1.0])
                        factor = 1.1
                    scale(rounds.pop(), factor)
                else:
                    add_text(text[i:m + 1])
                i = m + 1
            else:
                add_text(":")
                i += 1
        elif c == ")" and rounds:
            scale(rounds.pop(), 1.1)
            i += 1
        elif c == "]" and squares:
            scale(squares.pop(), 1 / 1.1)
            i += 1
        elif c in ")]":
            add_text(c)
            i += 1
        else:
            j = i
            while j < len(text) and text[j] not in "\\()[]:":
                j += 1
            add_text(text[i:j])
            i = j
    for start in rounds:
        scale(start, 1.1)
    for start in squares:
        scale(start, 1 / 1.1)
    if not pieces:
        pieces = [["", 1.0]]
    merged = [pieces[0]]
    for piece in pieces[1:]:
        if merged[-1][1] == piece[1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return merged


@pytest.mark.parametrize("text, expected", A1111_DOCTESTS + A1111_CASES)
def test_reference_a1111_agrees_with_the_table(text, expected):
    assert [tuple(p) for p in reference_a1111(text)] == expected


A1111_ALPHABET = st.sampled_from(list("()[]:\\ abc1.2+-") + ["BREAK", " BREAK ", "\\(", "\\]", ":1.2)", ":.5)"])


@settings(max_examples=400, deadline=None)
@given(st.lists(A1111_ALPHABET, max_size=25).map("".join))
def test_a1111_equals_reference_on_random_prompts(text):
    assert parse_a1111(text) == [tuple(p) for p in reference_a1111(text)]


# ---- Compel ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, expected",
    [
        ("moon+", [("moon", 1.1)]),
        ("moon++ sky", [("moon", 1.21), (" sky", 1.0)]),
        ("a moon-", [("a ", 1.0), ("moon", 0.9)]),
        ("moon--", [("moon", 0.81)]),
        ("(full moon)1.3", [("full moon", 1.3)]),
        ("(full moon)++", [("full moon", 1.21)]),
        ("(full moon)-", [("full moon", 0.9)]),
        ("(a (b)2)0.5", [("a ", 0.5), ("b", 1.0)]),
        ("(a b+)1.2", [("a ", 1.2), ("b", 1.32)]),
        ("(moon)", [("moon", 1.0)]),  # plain parentheses only group
        ("moon+, sky", [("moon", 1.1), (", sky", 1.0)]),
        ("(sky)1.2. end", [("sky", 1.2), (". end", 1.0)]),
        ("dog's+ day", [("dog's", 1.1), (" day", 1.0)]),
    ],
)
def test_compel_cases(text, expected):
    assert parse_compel(text) == approx_spans(expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("well-known", [("well-known", 1.0)]),  # a hyphen inside a word is not a weight
        ("a + b", [("a + b", 1.0)]),
        ("moon+-", [("moon+-", 1.0)]),
        ("(moon", [("(moon", 1.0)]),
        ("moon)1.2", [("moon)1.2", 1.0)]),
        (r"\(moon\)1.2", [("(moon)1.2", 1.0)]),
        ("(a)1.2.3", [("a1.2.3", 1.0)]),
    ],
)
def test_compel_malformed_is_literal(text, expected):
    assert parse_compel(text) == approx_spans(expected)


def test_deep_nesting_does_not_raise():
    deep = "(" * 3000 + "moon" + ")" * 3000
    for parser in (parse_a1111, parse_compel):
        spans = parser(deep)
        assert "".join(t for t, _ in spans).count("moon") == 1
    assert parse_a1111(deep) == [tuple(p) for p in reference_a1111(deep)]  # A1111 has no depth limit


def test_parse_dispatch_and_unknown_syntax():
    assert parse("(moon)", "none") == [("(moon)", 1.0)]
    assert parse("(moon)", "a1111") == approx_spans([("moon", 1.1)])
    assert parse("(moon)1.5", "compel") == approx_spans([("moon", 1.5)])
    with pytest.raises(AttuneError, match="Unknown prompt syntax 'bbcode'"):
        parse("x", "bbcode")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab (){}[]:+-.,1\\'3 ")) | st.characters(), max_size=60))
def test_parsers_never_raise_and_keep_text(text):
    for parser in (parse_a1111, parse_compel):
        spans = parser(text)
        assert all(isinstance(t, str) and t and isinstance(w, float) for t, w in spans)
        # Only syntax is removed: every character of the clean text comes from the input.
        clean = Counter("".join(t for t, _ in spans))
        assert not clean - Counter(text)


# ---- words and tokens -----------------------------------------------------------------------------------------

def test_split_words():
    assert split_words("a wolf's den, under the moon!!") == ["a", "wolf's", "den", ",", "under", "the", "moon", "!", "!"]


def test_tokenize_layout_with_word_tokenizer(word_tokenizer):
    wt = tokenize_prompt(word_tokenizer, "a painting of wolf, moon", syntax="none")
    assert wt.words == ["a", "painting", "of", "wolf", ",", "moon"]
    assert wt.token_indices == [[1], [2], [3], [4], [5], [6]]
    assert len(wt.input_ids) == MAX_LENGTH and len(wt.token_weights) == MAX_LENGTH
    assert wt.input_ids[0] == word_tokenizer.bos_token_id
    assert wt.input_ids[7] == word_tokenizer.eos_token_id
    assert set(wt.input_ids[8:]) == {word_tokenizer.pad_token_id}
    # Same ids as tokenizing the whole text at once.
    whole = word_tokenizer("a painting of wolf, moon")["input_ids"]
    assert wt.input_ids[: len(whole)] == whole
    assert wt.unknown_words == [] and wt.truncated_words == []


def test_tokenize_matches_whole_text_clip_bpe(clip_tokenizer):
    text = "the full moon, sky's glow over the moon"
    wt = tokenize_prompt(clip_tokenizer, text)
    whole = clip_tokenizer(text)["input_ids"]
    assert wt.input_ids[: len(whole)] == whole
    # Multi-token words own all their tokens: "the" is three byte tokens, "moon" is one merged token.
    assert len(wt.token_indices[0]) == 3
    assert wt.indices_for("moon") == [i for k, w in enumerate(wt.words) if w == "moon" for i in wt.token_indices[k]]
    assert len(wt.indices_for("moon")) == 2
    assert all(whole[i] == clip_tokenizer.convert_tokens_to_ids("moon</w>") for i in wt.indices_for("moon"))
    # Without a pad token the EOS pads, like SD.
    assert wt.input_ids[-1] == clip_tokenizer.pad_token_id


def test_weights_per_token(word_tokenizer):
    wt = tokenize_prompt(word_tokenizer, "a (full moon:1.5) [sky]", syntax="a1111")
    assert wt.text == "a full moon sky"
    assert wt.words == ["a", "full", "moon", "sky"]
    moon, sky, a = wt.indices_for("moon")[0], wt.indices_for("sky")[0], wt.indices_for("a")[0]
    assert wt.token_weights[moon] == pytest.approx(1.5)
    assert wt.token_weights[sky] == pytest.approx(1 / 1.1)
    assert wt.token_weights[a] == 1.0
    assert wt.token_weights[0] == 1.0 and wt.token_weights[-1] == 1.0
    compel = tokenize_prompt(word_tokenizer, "a moon++ sky", syntax="compel")
    assert compel.token_weights[compel.indices_for("moon")[0]] == pytest.approx(1.21)


def test_indices_for_phrases_repeats_case(word_tokenizer):
    wt = tokenize_prompt(word_tokenizer, "Moon and full moon, the full moon")
    assert wt.indices_for("moon") == [1, 4, 8]
    assert wt.indices_for("MOON") == [1, 4, 8]
    assert wt.indices_for("full moon") == [3, 4, 7, 8]
    assert wt.indices_for(",") == [5]
    with pytest.raises(AttuneError, match=r"'sun' is not in the prompt; its words are: Moon, and, full, moon, the"):
        wt.indices_for("sun")
    with pytest.raises(AttuneError, match="not in the prompt"):
        wt.indices_for("moon full")  # not consecutive in that order
    with pytest.raises(AttuneError, match="No word given"):
        wt.indices_for("  ")


def test_unknown_and_truncated_words(word_tokenizer):
    wt = tokenize_prompt(word_tokenizer, "a zebra on the moon")
    assert wt.unknown_words == ["zebra"]
    long = " ".join(["moon"] * 74 + ["sky", "wolf", "lake"])
    wt = tokenize_prompt(word_tokenizer, long)
    assert wt.truncated_words == ["wolf", "lake"]
    assert wt.input_ids[75] == word_tokenizer.convert_tokens_to_ids("sky")
    assert wt.input_ids[76] == word_tokenizer.eos_token_id
    assert wt.token_indices[-1] == []
    with pytest.raises(AttuneError, match="beyond the 75-token limit"):
        wt.indices_for("lake")


def test_empty_prompt(word_tokenizer):
    wt = tokenize_prompt(word_tokenizer, "")
    assert wt.words == [] and wt.input_ids[:2] == [word_tokenizer.bos_token_id, word_tokenizer.eos_token_id]
    with pytest.raises(AttuneError, match=r"its words are: \(none\)"):
        wt.indices_for("moon")


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80), st.sampled_from(["none", "a1111", "compel"]))
def test_tokenize_never_raises(word_tokenizer, text, syntax):
    wt = tokenize_prompt(word_tokenizer, text, syntax)
    assert len(wt.input_ids) == MAX_LENGTH
    assert len(wt.words) == len(wt.token_indices)
