"""Alternatives for a word of the prompt: similar words to swap in (Replace, Explore) and a few different ones.

Two sources, both shipped as data under engine/words/data/:
- alternatives.json: the built-in model's scene grammar (synonyms: house/cottage; siblings: moon/sun/stars),
  written from train/world.py by `python -m train.export_alternatives`;
- style_keywords.json: style keywords grouped by kind (medium, lighting, colour, mood, composition, detail).
Each alternative says whether the model's vocabulary knows every word of it (word-level tokenizers only, as the
built-in model has; None where the tokenizer can spell any word, so there is nothing to check).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from engine.errors import AttuneError
from engine.words.prompt_edit import WORD_RE

DATA = Path(__file__).resolve().parent / "data"
RELATIONS = ("synonym", "similar", "different")
MAX_DIFFERENT = 6


@dataclass(frozen=True)
class Alternative:
    text: str
    relation: str  # synonym | similar (same group) | different (another group of the same source)
    group: str  # e.g. "sky object", "lighting"
    known: bool | None  # the model knows every word of it; None = not checked (not a word-level vocabulary)

    def to_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=1)
def grammar() -> dict:
    return json.loads((DATA / "alternatives.json").read_text())


@lru_cache(maxsize=1)
def style_keywords() -> dict[str, list[str]]:
    return json.loads((DATA / "style_keywords.json").read_text())["keywords"]


def style_keyword_list() -> list[str]:
    """Every style keyword, for autocomplete."""
    return [keyword for words in style_keywords().values() for keyword in words]


def is_known(text: str, known_words: set[str] | frozenset | None) -> bool | None:
    if known_words is None:
        return None
    return all(word.lower() in known_words for word in WORD_RE.findall(text))


def _groups_of(word: str, groups: dict[str, list[str]]) -> list[str]:
    return [name for name, words in groups.items() if word in words]


def _from_source(word: str, groups: dict[str, list[str]], synonyms: dict[str, list[str]],
                 families: list[list[str]]) -> list[tuple[str, str, str]]:
    """(text, relation, group) from one source: synonyms, then the word's groups, then other groups of its family."""
    found: list[tuple[str, str, str]] = []
    names = _groups_of(word, groups)
    for synonym in synonyms.get(word, []):
        found.append((synonym, "synonym", (_groups_of(synonym, groups) or names or ["synonym"])[0]))
        names += [n for n in _groups_of(synonym, groups) if n not in names]  # cottage -> house's group
    for name in names:
        found.extend((other, "similar", name) for other in groups[name])
    if names:
        family = {g for f in families if set(names) & set(f) for g in f}
        others = [name for name in groups if name in family and name not in names]
        different = [(w, "different", name) for i in range(max((len(groups[n]) for n in others), default=0))
                     for name in others if i < len(groups[name]) for w in [groups[name][i]]]
        found.extend(different[:MAX_DIFFERENT])  # round-robin over the other groups: one of each kind first
    return found


def alternatives(word: str, known_words: set[str] | frozenset | None = None, *, include_different: bool = True,
                 limit: int | None = None) -> list[Alternative]:
    """Alternatives for a word or a style keyword, synonyms first, then similar, then different ones.

    Known words come first within each relation. An empty list means neither source has the word."""
    key = " ".join(str(word or "").lower().split())
    if not key:
        raise AttuneError("No word given to find alternatives for.")
    grammar_data = grammar()
    candidates = _from_source(key, grammar_data["groups"], grammar_data["synonyms"], grammar_data["families"])
    candidates += _from_source(key, style_keywords(), {}, [])
    seen = {key}
    result = []
    for text, relation, group in candidates:
        if relation == "different" and not include_different:
            continue
        if text.lower() in seen:
            continue
        seen.add(text.lower())
        result.append(Alternative(text=text, relation=relation, group=group, known=is_known(text, known_words)))
    order = {relation: i for i, relation in enumerate(RELATIONS)}
    result.sort(key=lambda a: (order[a.relation], a.known is False))
    return result[:limit] if limit is not None else result


def explore_choices(word: str, known_words=None, n: int = 4) -> list[Alternative]:
    """The default alternatives for an Explore grid: the first n similar ones the model knows (or cannot check)."""
    if n < 1:
        raise AttuneError("The explore grid needs at least one alternative (n >= 1).")
    usable = [a for a in alternatives(word, known_words, include_different=False) if a.known is not False]
    if not usable:
        raise AttuneError(f"No alternatives known for '{word}': type your own (e.g. --alternatives a,b,c).")
    return usable[:n]


def keyword_suggestions(prefix: str, limit: int = 8) -> list[str]:
    """Style keywords starting with (then containing) the typed text, for autocomplete."""
    typed = " ".join(str(prefix or "").lower().split())
    if not typed:
        return []
    keywords = style_keyword_list()
    starts = [k for k in keywords if k.startswith(typed)]
    contains = [k for k in keywords if typed in k and k not in starts]
    return (starts + contains)[:limit]
