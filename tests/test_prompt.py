from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import AttuneError
from engine.words.prompt import MAX_CHUNKS, MAX_LENGTH, parse, parse_a1111, parse_compel, parse_with_notes, split_words, tokenize_prompt
from tests.tiny_model import TINY_WORDS, write_clip_vocab
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

    merges = ["m o", "mo o", "moo n</w>", "s k", "sk y</w>", "f u", "fu l", "ful l</w>", "' s</w>"]
    files = write_clip_vocab(tmp_path_factory.mktemp("clip-tokenizer"), merges)
    return CLIPTokenizer(*files, pad_token="<|endoftext|>")


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


@settings(max_examples=300, deadline=None)
@given(st.lists(A1111_ALPHABET, max_size=25).map("".join))
def test_a1111_equals_reference_on_random_prompts(text):
    assert parse_a1111(text) == [tuple(p) for p in reference_a1111(text)]


# ---- Compel ---------------------------------------------------------------------------------------------------
# Expected values: the cases of damian0815/compel's test/test_prompt_parser.py (its Fragment texts and weights; a
# swap keeps its original words, a blend its part of largest weight, .and() multiplies each part's weight in).
COMPEL_CASES = [
    ("", [("", 1.0)]),
    ("fire flames", [("fire flames", 1.0)]),
    ("fire (flames)", [("fire flames", 1.0)]),
    ("fire, flames", [("fire, flames", 1.0)]),
    ("fire, flames , fire", [("fire, flames , fire", 1.0)]),
    ("cat hot-dog eating", [("cat hot-dog eating", 1.0)]),
    ("Dalí", [("Dalí", 1.0)]),
    ("(flames)0.5", [("flames", 0.5)]),
    ("(flames).attend(0.5)", [("flames", 0.5)]),
    ("flames.attend(0.5)", [("flames", 0.5)]),
    ('"flames".attend(0.5)', [("flames", 0.5)]),
    ("(fire flames)0.5", [("fire flames", 0.5)]),
    ("(fire flames).attend(0.5)", [("fire flames", 0.5)]),
    ("(flames)+", [("flames", 1.1)]),
    ("flames+", [("flames", 1.1)]),
    ('"flames"+', [("flames", 1.1)]),
    ("flames.attend(+)", [("flames", 1.1)]),
    ("(flames).attend(+)", [("flames", 1.1)]),
    ("(flames)-", [("flames", 0.9)]),
    ("flames-", [("flames", 0.9)]),
    ('"flames"-', [("flames", 0.9)]),
    ("fire (flames)0.5", [("fire", 1.0), ("flames", 0.5)]),
    ("fire flames.attend(0.5)", [("fire", 1.0), ("flames", 0.5)]),
    ('fire "flames".attend(0.5)', [("fire", 1.0), ("flames", 0.5)]),
    ("(flames)++", [("flames", pow(1.1, 2))]),
    ("(flames)--", [("flames", pow(0.9, 2))]),
    ("(flowers)--- flames+++", [("flowers", pow(0.9, 3)), ("flames", pow(1.1, 3))]),
    ("(pretty flowers)+, the flames are too hot", [("pretty flowers", 1.1), (", the flames are too hot", 1.0)]),
    ("flowers fire++ flames", [("flowers", 1.0), ("fire", pow(1.1, 2)), ("flames", 1.0)]),
    ("flowers fire-- flames", [("flowers", 1.0), ("fire", pow(0.9, 2)), ("flames", 1.0)]),
    ("a badly formed +test prompt", [("a badly formed +test prompt", 1.0)]),
    ("a badly (formed test prompt", [("a badly (formed test prompt", 1.0)]),
    ("a badly (formed +test )prompt", [("a badly formed +test prompt", 1.0)]),
    ("(((a badly (formed +test )prompt", [("(((a badly formed +test prompt", 1.0)]),
    ("(a (ba)dly (f)ormed +test prompt", [("(a ba dly f ormed +test prompt", 1.0)]),
    ("hamburger ((kaiser roll))", [("hamburger kaiser roll", 1.0)]),
    ("fire (flames (trees)1.5)2.0", [("fire", 1.0), ("flames", 2.0), ("trees", 3.0)]),
    (r"mountain \(man\)", [("mountain (man)", 1.0)]),
    (r"mountain (\(man)\)", [("mountain (man )", 1.0)]),
    (r"mountain (\(man\))+", [("mountain", 1.0), ("(man)", 1.1)]),
    (r'"mountain" (\(man\))+', [("mountain", 1.0), ("(man)", 1.1)]),
    (r"hairy (mountain (\(man\))+)+", [("hairy", 1.0), ("mountain", 1.1), ("(man)", 1.1 * 1.1)]),
    ('hairy ("mountain, man")+', [("hairy", 1.0), ("mountain , man", 1.1)]),
    ('hairy ("mountain, man" with a beard+)+',
     [("hairy", 1.0), ("mountain , man with a", 1.1), ("beard", 1.1 * 1.1)]),
    # Quirks of its grammar, as Compel 2.5 gives them:
    ("(a)1.2.3", [("a", 1.2), (".3", 1.0)]),  # the number ends where a float ends
    ("moon+-", [("moon", 1.1), ("-", 1.0)]),
    ("a-b+", [("a-b", 1.1)]),  # '-' before a letter is part of the word
    ("(a)(b)", [("a b", 1.0)]),  # separate fragments: joined with a space
    ("(a)-1", [("a", 0.9), ("1", 1.0)]),  # '-' is the operator, then '1' is text
    ("moon (sky", [("moon (sky", 1.0)]),  # an unclosed group is text
    # What Attune's one span list cannot hold (see engine.words.compel_syntax):
    ("a cat.swap(dog) eating a hotdog", [("a", 1.0), ("cat", 1.0), ("eating a hotdog", 1.0)]),
    ("(mountain, man).blend()", [("mountain", 1.0)]),
    ('("fire", "fire flames (hot)++", "hi").blend(0.7, 0.3, 1.0)', [("hi", 1.0)]),
    ('("fire", "flames").and(2,1)', [("fire", 2.0), ("flames", 1.0)]),
    ('("mountain man", "a person with a hat (riding a bicycle)++").and(0.5, 0.5)',
     [("mountain man", 0.5), ("a person with a hat", 0.5), ("riding a bicycle", pow(1.1, 2) * 0.5)]),
    ("withLora(detail, 0.5) a cat", [("a cat", 1.0)]),
]


@pytest.mark.parametrize("text, expected", COMPEL_CASES)
def test_compel_cases(text, expected):
    assert parse_compel(text) == expected


@pytest.mark.parametrize("text, note", [
    ("a cat.swap(dog)", ".swap()"),
    ("(a, b).blend(0.3, 0.7)", "part 2"),
    ('("a", "b").and()', ".and()"),
    ("withLora(x) a", "LoRA"),
    ('("fire", "flames").and(2)', "Compel cannot read"),  # Compel raises: mismatched weights
    ("(a, b).blend(heavy)", "Compel cannot read"),
])
def test_compel_degrades_with_a_note(text, note):
    spans, notes = parse_with_notes(text, "compel")
    assert spans and any(note in n for n in notes), notes


def _compel_reference():
    """Compel's own parser module (compel.prompt_parser), loaded without the package's torch imports."""
    import importlib.util

    spec = importlib.util.find_spec("compel")
    if spec is None:
        pytest.skip("compel is not installed (requirements-dev.txt)")
    path = f"{spec.submodule_search_locations[0]}/prompt_parser.py"
    module_spec = importlib.util.spec_from_file_location("compel_prompt_parser_reference", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compel_reference():
    return _compel_reference()


def compel_reference_spans(module, text):
    """Compel's reading mapped to Attune's span list as documented; None where Compel itself raises."""
    try:
        conjunction = module.PromptParser().parse_conjunction(text)
    except Exception:
        return None
    spans = []
    for part, part_weight in zip(conjunction.prompts, conjunction.weights):
        if isinstance(part, module.Blend):
            best = max(range(len(part.weights)), key=lambda i: (part.weights[i], -i))
            part = part.prompts[best]
        for child in part.children:
            if isinstance(child, module.CrossAttentionControlSubstitute):
                spans += [(f.text, f.weight * part_weight) for f in child.original]
            else:
                spans.append((child.text, child.weight * part_weight))
    return spans or [("", 1.0)]


@pytest.mark.parametrize("text, expected", [case for case in COMPEL_CASES if not case[0].startswith("(((")])
def test_compel_table_is_what_compel_gives(compel_reference, text, expected):
    # (Left out: "(((a badly ..." takes Compel's backtracking grammar seconds.)
    assert compel_reference_spans(compel_reference, text) == expected


COMPEL_ALPHABET = st.sampled_from(
    list('ab (),.+-"\\12=') + ["1.2", ")1.5", ")++", "+", "--", "\\(", '\\"', ", ", " ", ".attend(", ".swap(",
                                ".blend(", ".and(", "withLora("])


@settings(max_examples=100, deadline=None)  # Compel's own grammar backtracks a lot: keep the prompts short
@given(st.lists(COMPEL_ALPHABET, max_size=8).map("".join))
def test_compel_equals_compel_on_random_prompts(compel_reference, text):
    expected = compel_reference_spans(compel_reference, text)
    spans = parse_compel(text)
    if expected is not None:
        assert spans == expected
    assert spans and all(isinstance(t, str) and isinstance(w, float) for t, w in spans)


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


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list("ab (){}[]:+-.,1\\'3 \"") + ["BREAK", ".and(", ".blend("]) | st.characters(),
                max_size=40).map("".join))
def test_parsers_never_raise_and_keep_text(text):
    for syntax in ("a1111", "compel", "none"):
        spans, notes = parse_with_notes(text, syntax)
        assert spans and all(isinstance(t, str) and isinstance(w, float) for t, w in spans)
        assert all(isinstance(note, str) and note for note in notes)
    # A1111 only removes syntax: every character it keeps comes from the input.
    assert not Counter("".join(t for t, _ in parse_a1111(text))) - Counter(text)
    # Compel also adds the spaces it joins fragments with (and unquotes escapes inside "...").
    if '"' not in text:
        kept = Counter(c for t, _ in parse_compel(text) for c in t if not c.isspace())
        assert not kept - Counter(text)


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


def test_tokenize_reads_syntax_notes_break_and_compel_fragments(word_tokenizer):
    wt = tokenize_prompt(word_tokenizer, "a wolf BREAK (full moon", syntax="a1111")
    assert wt.words == ["a", "wolf", "full", "moon"]  # the BREAK marker has no tokens
    assert wt.token_weights[wt.indices_for("moon")[0]] == pytest.approx(1.1)  # unclosed: weighs the rest
    assert any("never closed" in n for n in wt.notes)
    assert wt.chunks == [(1, 3), (78, 80)] and len(wt.input_ids) == 2 * MAX_LENGTH  # BREAK starts a chunk, as A1111
    huge = tokenize_prompt(word_tokenizer, "(moon:" + "9" * 400 + ")", syntax="a1111")  # float('99...9') is inf
    assert huge.token_weights[huge.indices_for("moon")[0]] == 1.0 and huge.notes
    compel = tokenize_prompt(word_tokenizer, "(wolf)(moon)++ sky", syntax="compel")
    assert compel.text == "wolf moon sky" and compel.words == ["wolf", "moon", "sky"] and compel.notes == []
    assert compel.word_weights == [1.0, pytest.approx(1.21), 1.0]
    assert tokenize_prompt(word_tokenizer, "a wolf", syntax="a1111").notes == []


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


def test_unknown_words_and_long_prompts_chunked_not_cut(word_tokenizer):
    wt = tokenize_prompt(word_tokenizer, "a zebra on the moon")
    assert wt.unknown_words == ["zebra"]
    long = " ".join(["moon"] * 74 + ["sky", "wolf", "lake"])
    wt = tokenize_prompt(word_tokenizer, long)
    assert wt.truncated_words == [] and wt.chunks == [(1, 76), (78, 80)]
    assert wt.input_ids[75] == word_tokenizer.convert_tokens_to_ids("sky")
    assert wt.input_ids[76] == word_tokenizer.eos_token_id
    assert wt.indices_for("lake") == [79] and wt.input_ids[77] == word_tokenizer.bos_token_id
    huge = tokenize_prompt(word_tokenizer, " ".join(["moon"] * (75 * MAX_CHUNKS) + ["lake"]))
    assert huge.truncated_words == ["lake"] and len(huge.input_ids) == MAX_CHUNKS * MAX_LENGTH
    assert any("left out" in note for note in huge.notes)
    with pytest.raises(AttuneError, match="beyond the 8 x 75-token limit"):
        huge.indices_for("lake")


def test_empty_prompt(word_tokenizer):
    wt = tokenize_prompt(word_tokenizer, "")
    assert wt.words == [] and wt.input_ids[:2] == [word_tokenizer.bos_token_id, word_tokenizer.eos_token_id]
    with pytest.raises(AttuneError, match=r"its words are: \(none\)"):
        wt.indices_for("moon")


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80), st.sampled_from(["none", "a1111", "compel"]))
def test_tokenize_never_raises(word_tokenizer, text, syntax):
    wt = tokenize_prompt(word_tokenizer, text, syntax)
    assert len(wt.input_ids) == MAX_LENGTH * len(wt.chunks)
    assert len(wt.words) == len(wt.token_indices)
