"""Prompt text -> weighted spans (A1111 / Compel emphasis) -> words -> token indices in the 77-position sequence.

The parsers never raise on user text: anything malformed (unbalanced brackets, bad numbers) stays literal text.
Words are `\\w+` runs (apostrophes inside a word stay in it) and single punctuation characters. Each word is
tokenized on its own and the ids are concatenated, which equals whole-text tokenization for CLIP BPE and for
word-level tokenizers, and tells us exactly which token positions belong to which word.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from engine.errors import AttuneError

Span = tuple[str, float]

MAX_LENGTH = 77
MAX_CONTENT_TOKENS = MAX_LENGTH - 2  # BOS and EOS take the other two positions
SYNTAXES = ("none", "a1111", "compel")

MAX_NESTING = 32
A1111_UP = 1.1
COMPEL_UP = 1.1
COMPEL_DOWN = 0.9

WORD_RE = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_A1111_WEIGHT_RE = re.compile(r":\s*(" + _NUMBER + r")\s*$")
_COMPEL_SUFFIX_RE = re.compile(r"\++|-+|(?:\d+(?:\.\d+)?|\.\d+)(?!\w)(?!\.\d)")
_COMPEL_WORD_RE = re.compile(r"(?<![\w'’])(\w[\w'’]*)(\++|-+)(?=$|[\s,.;:!?\"])")


def _clean_weight(weight: float) -> float:
    return round(weight, 6)


def _merge(spans: list[Span]) -> list[Span]:
    """Drop empty spans and merge neighbours with the same weight."""
    merged: list[Span] = []
    for text, weight in spans:
        if not text:
            continue
        weight = _clean_weight(weight)
        if merged and math.isclose(merged[-1][1], weight, rel_tol=0, abs_tol=1e-9):
            merged[-1] = (merged[-1][0] + text, merged[-1][1])
        else:
            merged.append((text, weight))
    return merged


def _scan(text: str, pairs: dict[str, str]) -> tuple[list[tuple[int, str]], dict[int, int]]:
    """Split text into (position, char-or-escape) atoms and match brackets with one stack.

    Returns atoms and a map opener-atom-index -> closer-atom-index. Escaped brackets are literal atoms;
    closers without a matching opener and openers never closed are left out of the map (so they stay literal).
    """
    atoms: list[tuple[int, str]] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "()[]\\":
            atoms.append((i, text[i : i + 2]))
            i += 2
        else:
            atoms.append((i, text[i]))
            i += 1
    closers = {v: k for k, v in pairs.items()}
    stack: list[int] = []
    matches: dict[int, int] = {}
    for index, (_, atom) in enumerate(atoms):
        if atom in pairs:
            if len(stack) < MAX_NESTING:  # deeper openers stay literal (and keep the parsers' recursion bounded)
                stack.append(index)
        elif atom in closers and stack and atoms[stack[-1]][1] == closers[atom]:
            matches[stack.pop()] = index
    return atoms, matches


def _literal(atom: str) -> str:
    return atom[1] if len(atom) == 2 and atom[0] == "\\" else atom


def parse_a1111(text) -> list[Span]:
    """A1111 emphasis: (x) ×1.1, [x] ÷1.1, (x:1.3) sets the factor, nesting multiplies, \\( \\) \\[ \\] escape."""
    text = "" if text is None else str(text)
    atoms, matches = _scan(text, {"(": ")", "[": "]"})

    def group(start: int, end: int, weight: float) -> list[Span]:
        """Spans for atoms[start:end] at the given weight."""
        spans: list[Span] = []
        buffer: list[str] = []
        i = start
        while i < end:
            atom = atoms[i][1]
            if i in matches:
                spans.append(("".join(buffer), weight))
                buffer = []
                close = matches[i]
                if atom == "[":
                    spans += group(i + 1, close, weight / A1111_UP)
                else:
                    spans += paren(i + 1, close, weight)
                i = close + 1
                continue
            buffer.append(_literal(atom))
            i += 1
        spans.append(("".join(buffer), weight))
        return spans

    def paren(start: int, end: int, weight: float) -> list[Span]:
        # `(x:1.3)`: a number after the group's last top-level colon overrides the ×1.1.
        colon = None
        i = start
        while i < end:
            if i in matches:
                i = matches[i] + 1
                continue
            if atoms[i][1] == ":":
                colon = i
            i += 1
        if colon is not None:
            found = _A1111_WEIGHT_RE.match("".join(atoms[i][1] for i in range(colon, end)))
            if found and math.isfinite(float(found.group(1))):
                return group(start, colon, weight * float(found.group(1)))
        return group(start, end, weight * A1111_UP)

    return _merge(group(0, len(atoms), 1.0))


def parse_compel(text) -> list[Span]:
    """Compel emphasis: word+ ×1.1 per +, word- ×0.9 per -, (words)1.2, (words)++ / (words)--, nesting multiplies."""
    text = "" if text is None else str(text)
    atoms, matches = _scan(text, {"(": ")"})

    def words(chunk: str, weight: float) -> list[Span]:
        """Plain text with `word+` / `word--` suffixes."""
        spans: list[Span] = []
        last = 0
        for found in _COMPEL_WORD_RE.finditer(chunk):
            spans.append((chunk[last : found.start()], weight))
            suffix = found.group(2)
            factor = COMPEL_UP ** len(suffix) if suffix[0] == "+" else COMPEL_DOWN ** len(suffix)
            spans.append((found.group(1), weight * factor))
            last = found.end()
        spans.append((chunk[last:], weight))
        return spans

    def group(start: int, end: int, weight: float) -> list[Span]:
        spans: list[Span] = []
        buffer: list[str] = []
        i = start
        while i < end:
            atom = atoms[i][1]
            if i in matches:
                spans += words("".join(buffer), weight)
                buffer = []
                close = matches[i]
                factor, after = _compel_suffix(close + 1, end)
                spans += group(i + 1, close, weight * factor)
                i = after
                continue
            buffer.append(_literal(atom))
            i += 1
        spans += words("".join(buffer), weight)
        return spans

    def _compel_suffix(i: int, end: int) -> tuple[float, int]:
        """Weight suffix right after a closing paren: ++, --, or a number; 1.0 when there is none."""
        tail = "".join(atoms[j][1] if len(atoms[j][1]) == 1 else "\0" for j in range(i, min(end, i + 32)))
        found = _COMPEL_SUFFIX_RE.match(tail)
        if not found:
            return 1.0, i
        suffix = found.group(0)
        if suffix[0] == "+":
            factor = COMPEL_UP ** len(suffix)
        elif suffix[0] == "-":
            factor = COMPEL_DOWN ** len(suffix)
        else:
            factor = float(suffix)
        return factor, i + len(suffix)

    return _merge(group(0, len(atoms), 1.0))


def parse(text, syntax: str = "a1111") -> list[Span]:
    """Weighted spans for text under the given emphasis syntax ("none" keeps every character at weight 1)."""
    if syntax == "a1111":
        return parse_a1111(text)
    if syntax == "compel":
        return parse_compel(text)
    if syntax == "none":
        return _merge([("" if text is None else str(text), 1.0)])
    raise AttuneError(f"Unknown prompt syntax '{syntax}'; use one of: {', '.join(SYNTAXES)}.")


def split_words(text: str) -> list[str]:
    """Words as Attune counts them: `\\w+` runs (with inner apostrophes) and single punctuation characters."""
    return WORD_RE.findall(text or "")


@dataclass
class WordTokens:
    text: str
    words: list[str]
    token_indices: list[list[int]]
    input_ids: list[int]
    token_weights: list[float]
    unknown_words: list[str] = field(default_factory=list)
    truncated_words: list[str] = field(default_factory=list)
    word_weights: list[float] = field(default_factory=list)  # emphasis weight of each word

    def display_words(self) -> list[str]:
        """The words a user can pick (chips, sliders, mask from word): each once, first spelling, no punctuation."""
        seen: dict[str, str] = {}
        for word in self.words:
            if any(c.isalnum() for c in word):
                seen.setdefault(word.lower(), word)
        return list(seen.values())

    def indices_for(self, word_or_phrase: str) -> list[int]:
        """Token indices of every occurrence of a word or a phrase of consecutive words (case-insensitive)."""
        wanted = [w.lower() for w in split_words(str(word_or_phrase or ""))]
        if not wanted:
            raise AttuneError(f"No word given; the prompt's words are: {self._word_list()}.")
        lowered = [w.lower() for w in self.words]
        found: set[int] = set()
        matched = False
        for start in range(len(lowered) - len(wanted) + 1):
            if lowered[start : start + len(wanted)] == wanted:
                matched = True
                for k in range(start, start + len(wanted)):
                    found.update(self.token_indices[k])
        if not matched:
            raise AttuneError(f"'{word_or_phrase}' is not in the prompt; its words are: {self._word_list()}.")
        if not found:
            if any(w.lower() in wanted for w in self.truncated_words):
                raise AttuneError(f"'{word_or_phrase}' is beyond the {MAX_CONTENT_TOKENS}-token limit of the prompt.")
            raise AttuneError(f"'{word_or_phrase}' has no tokens in this model's tokenizer.")
        return sorted(found)

    def _word_list(self) -> str:
        unique = list(dict.fromkeys(w for w in self.words if re.match(r"\w", w)))
        return ", ".join(unique) if unique else "(none)"


def _special_id(tokenizer, name: str) -> int | None:
    value = getattr(tokenizer, name, None)
    return int(value) if value is not None else None


def tokenize_prompt(tokenizer, text, syntax: str = "none") -> WordTokens:
    """Parse emphasis, split words, tokenize word by word, and lay out the 77 positions (BOS, content, EOS, pad)."""
    spans = parse(text, syntax)
    bos = _special_id(tokenizer, "bos_token_id")
    eos = _special_id(tokenizer, "eos_token_id")
    pad = _special_id(tokenizer, "pad_token_id")
    unk = _special_id(tokenizer, "unk_token_id")
    if eos is None:
        raise AttuneError("The tokenizer has no end-of-text token; it is not a Stable Diffusion tokenizer.")
    if pad is None:
        pad = eos

    input_ids: list[int] = [bos] if bos is not None else []
    token_weights: list[float] = [1.0] * len(input_ids)
    words: list[str] = []
    word_weights: list[float] = []
    token_indices: list[list[int]] = []
    unknown: list[str] = []
    truncated: list[str] = []
    limit = len(input_ids) + MAX_CONTENT_TOKENS
    for span_text, weight in spans:
        for word in split_words(span_text):
            ids = list(tokenizer(word, add_special_tokens=False)["input_ids"])
            words.append(word)
            word_weights.append(weight)
            if unk is not None and unk in ids and word not in unknown:
                unknown.append(word)
            room = max(0, limit - len(input_ids))
            kept = ids[:room]
            if len(kept) < len(ids):
                truncated.append(word)
            token_indices.append(list(range(len(input_ids), len(input_ids) + len(kept))))
            input_ids += kept
            token_weights += [weight] * len(kept)
    input_ids.append(eos)
    token_weights.append(1.0)
    input_ids += [pad] * (MAX_LENGTH - len(input_ids))
    token_weights += [1.0] * (MAX_LENGTH - len(token_weights))
    return WordTokens(
        text="".join(t for t, _ in spans),
        words=words,
        token_indices=token_indices,
        input_ids=input_ids,
        token_weights=token_weights,
        unknown_words=unknown,
        truncated_words=truncated,
        word_weights=word_weights,
    )
