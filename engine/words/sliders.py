"""Which words and phrases of a prompt get a slider (one home for the rule; the Refine page only draws them).

- Function words (articles, prepositions, conjunctions, pronouns, auxiliaries) and function phrases ("in front of")
  get none by default: their attention carries no object to strengthen. `show_all` gives every word one.
- A phrase the model knows as one unit ("full moon", "night sky": ModelDefaults.phrases, from the model folder's
  attune.json) gets one slider for the whole phrase, and its words none of their own; the weight covers all its
  tokens (engine.words.weights). CLIP's BPE splits on whitespace before merging, so its vocabulary holds no
  multi-word token: for SD checkpoints the phrases come from attune.json alone.
- A word or phrase the version already weights always keeps its slider, so Apply never drops a weight unseen.
"""
from __future__ import annotations

from collections.abc import Iterable

from engine.words.prompt import WordTokens, split_words

FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every no its it his her their my your our
of in on at to for with by from into onto upon over under above below beneath behind beside besides between beyond
near through across along around toward towards within without off up down out inside outside about against among
and or but nor so yet as than then while if
is are was were be been being am has have had do does did will would can could should may might must
""".split())
FUNCTION_PHRASES = ("in front of", "next to", "on top of", "in the middle of", "out of", "close to")


def phrase_key(text: str) -> str:
    """A phrase as a slider names it: its words, lower case, one space apart."""
    return " ".join(w.lower() for w in split_words(str(text)))


def is_function_word(word: str) -> bool:
    return word.lower() in FUNCTION_WORDS


def _spans(words: list[str], phrases: Iterable[str]) -> dict[int, tuple[str, int]]:
    """Start index -> (phrase, length) for each non-overlapping occurrence, longest phrase first, left to right."""
    lowered = [w.lower() for w in words]
    wanted = sorted({tuple(phrase_key(p).split()) for p in phrases if len(split_words(p)) > 1}, key=len, reverse=True)
    found: dict[int, tuple[str, int]] = {}
    taken: set[int] = set()
    for parts in wanted:
        for start in range(len(lowered) - len(parts) + 1):
            span = range(start, start + len(parts))
            if tuple(lowered[start:start + len(parts)]) == parts and not taken.intersection(span):
                found[start] = (" ".join(parts), len(parts))
                taken.update(span)
    return found


def slider_terms(word_tokens: WordTokens, phrases: Iterable[str] = (), *, show_all: bool = False,
                 weighted: Iterable[str] = ()) -> list[str]:
    """The prompt's slider names in prompt order, each once: known phrases whole, content words, and (with
    `show_all`) every word; then `weighted` names not yet listed (a version's weights, user-added phrases)."""
    words = word_tokens.words
    known = _spans(words, phrases)
    function = _spans(words, FUNCTION_PHRASES)
    terms: list[str] = []
    i = 0
    while i < len(words):
        if i in known:
            phrase, length = known[i]
            terms.append(phrase)
            if show_all:
                terms += [w.lower() for w in words[i:i + length]]
            i += length
            continue
        if i in function and not show_all:
            i += function[i][1]
            continue
        word = words[i]
        if any(c.isalnum() for c in word) and (show_all or not is_function_word(word)):
            terms.append(word.lower())
        i += 1
    terms += [phrase_key(w) for w in weighted]
    return [t for t in dict.fromkeys(terms) if t]
