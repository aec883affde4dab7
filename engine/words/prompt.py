"""Prompt text -> weighted spans (A1111 / Compel emphasis) -> words -> token indices in the 77-position sequence.

Each parser gives exactly what its anchor gives (A1111's `parse_prompt_attention`; Compel's grammar, in
engine/words/compel_syntax.py), quirks included, and never raises on user text; `parse_with_notes` also says, in one line
each, where the reading may surprise or where Attune reads the syntax more simply than the anchor.
Words are `\\w+` runs (apostrophes inside a word stay in it) and single punctuation characters. Each word is
tokenized on its own and the ids are concatenated, which equals whole-text tokenization for CLIP BPE and for
word-level tokenizers, and tells us exactly which token positions belong to which word.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from engine.words.compel_syntax import COMPEL_DOWN, COMPEL_UP, read_compel  # noqa: F401
from engine.errors import AttuneError

Span = tuple[str, float]

MAX_LENGTH = 77
MAX_CONTENT_TOKENS = MAX_LENGTH - 2  # BOS and EOS take the other two positions
SYNTAXES = ("none", "a1111", "compel")

A1111_UP = 1.1
A1111_DOWN = 1 / 1.1
BREAK = ("BREAK", -1.0)  # A1111's chunk-break marker in the span list

# Splitting prompt text into words, the three rules in one place (each pinned by its tests):
WORD_RE = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")  # the engine's words: weights, sliders, heatmaps (split_words)
CARD_WORD_RE = re.compile(r"[^\W\d_](?:[\w]|['’-](?=\w))*", re.UNICODE)  # word cards: letters first, hyphens kept
DIFF_TOKEN_RE = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")  # word diffs: card words plus the punctuation between

# One A1111 emphasis token per match, tried in this order (the tokens A1111's `parse_prompt_attention` reads):
_A1111_TOKEN_RE = re.compile(
    r"\\[()\[\]\\]"  # an escaped bracket or backslash: the character itself
    r"|\\"  # any other backslash: dropped
    r"|[(\[]"  # openers
    r"|:\s*([+-]?[.\d]+)\s*\)"  # `:1.3)` closes a round bracket with that factor
    r"|[)\]]"  # closers
    r"|[^\\()\[\]:]+"  # plain text
    r"|:"
)
_A1111_BREAK_RE = re.compile(r"\s*\bBREAK\b\s*", re.S)


def is_break(span: Span) -> bool:
    """A1111's chunk break. Brackets around it scale its -1 like any weight; Attune still reads it as the break."""
    return span[0] == "BREAK" and span[1] < 0


def _a1111_pieces(text: str) -> tuple[list[list], list[int], list[int]]:
    """[text, weight] pieces before merging, and the positions of the round / square brackets never closed."""
    pieces: list[list] = []
    open_round: list[int] = []
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for found in _A1111_TOKEN_RE.finditer(text):
        token, number = found.group(0), found.group(1)
        if token[0] == "\\":
            pieces.append([token[1:], 1.0])
        elif token == "(":
            open_round.append(len(pieces))
        elif token == "[":
            open_square.append(len(pieces))
        elif number is not None and open_round:
            try:
                factor = float(number)
            except ValueError:  # `(x:1.2.3)`: A1111 raises here; Attune keeps ':1.2.3' as text and closes as ')'
                pieces.append([token[:-1], 1.0])
                factor = A1111_UP
            scale_from(open_round.pop(), factor)
        elif token == ")" and open_round:
            scale_from(open_round.pop(), A1111_UP)
        elif token == "]" and open_square:
            scale_from(open_square.pop(), A1111_DOWN)
        else:
            for index, part in enumerate(_A1111_BREAK_RE.split(token)):
                if index:
                    pieces.append(list(BREAK))
                pieces.append([part, 1.0])
    return pieces, open_round, open_square


def parse_a1111(text) -> list[Span]:
    """Exactly A1111's `parse_prompt_attention`: (x) ×1.1, [x] ×1/1.1, (x:1.3), nesting multiplies, escapes
    \\( \\) \\[ \\] \\\\, a bracket never closed weighs the rest of the prompt, BREAK -> ("BREAK", -1), neighbours of
    exactly equal weight merge, and the empty prompt is [("", 1.0)]."""
    return _read_a1111("" if text is None else str(text))[0]


def _read_a1111(text: str) -> tuple[list[Span], list[str]]:
    pieces, open_round, open_square = _a1111_pieces(text)
    notes = []
    if open_round or open_square:
        notes.append("A bracket that is never closed weighs the rest of the prompt, as in A1111.")
    for start in open_round:
        for piece in pieces[start:]:
            piece[1] *= A1111_UP
    for start in open_square:
        for piece in pieces[start:]:
            piece[1] *= A1111_DOWN
    if not pieces:
        return [("", 1.0)], notes
    spans: list[Span] = [(pieces[0][0], pieces[0][1])]
    for piece_text, weight in pieces[1:]:
        if spans[-1][1] == weight:
            spans[-1] = (spans[-1][0] + piece_text, spans[-1][1])
        else:
            spans.append((piece_text, weight))
    return spans, notes


def parse_compel(text) -> list[Span]:
    """Exactly Compel's fragments and weights (engine.words.compel_syntax): word+ ×1.1 per +, word- ×0.9 per -,
    (words)1.2, (words)++, "quoted"+, x.attend(w), nesting multiplies; equal neighbours joined with a space."""
    return read_compel("" if text is None else str(text)).spans


def parse(text, syntax: str = "a1111") -> list[Span]:
    """Weighted spans for text under the given emphasis syntax ("none" keeps the whole text at weight 1)."""
    return parse_with_notes(text, syntax)[0]


def parse_with_notes(text, syntax: str = "a1111") -> tuple[list[Span], list[str]]:
    """Spans plus one-line notes on syntax the anchor reads in a way the user may not expect, or that Attune
    cannot represent and reads in a simpler way (never an error)."""
    text = "" if text is None else str(text)
    if syntax == "a1111":
        return _read_a1111(text)
    if syntax == "compel":
        reading = read_compel(text)
        return reading.spans, reading.notes
    if syntax == "none":
        return [(text, 1.0)], []
    raise AttuneError(f"Unknown prompt syntax '{syntax}'; use one of: {', '.join(SYNTAXES)}.")


def split_words(text: str) -> list[str]:
    """Words as Attune counts them: `\\w+` runs (with inner apostrophes) and single punctuation characters."""
    return WORD_RE.findall(text or "")


def word_key(text) -> tuple[str, ...]:
    """What makes two weight keys the same word or phrase: its words, case-insensitive (moon, MOON, ' moon')."""
    return tuple(word.lower() for word in split_words(str(text)))


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
    notes: list[str] = field(default_factory=list)  # how the emphasis syntax was read, where it may surprise

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
    value = getattr(tokenizer, name, None)  # optional third-party: a tokenizer may lack a special token (e.g. pad)
    return int(value) if value is not None else None


def tokenize_prompt(tokenizer, text, syntax: str = "none") -> WordTokens:
    """Parse emphasis, split words, tokenize word by word, and lay out the 77 positions (BOS, content, EOS, pad)."""
    spans, notes = parse_with_notes(text, syntax)
    if any(is_break(span) for span in spans):
        notes.append("BREAK starts a new 75-token chunk in A1111; Attune encodes one chunk, so it is left out.")
        spans = [span for span in spans if not is_break(span)]
    if any(not math.isfinite(weight) for _, weight in spans):
        notes.append("A weight too large to be a number is read as 1.")
        spans = [(t, w if math.isfinite(w) else 1.0) for t, w in spans]
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
        text=(" " if syntax == "compel" else "").join(t for t, _ in spans if t),
        words=words,
        token_indices=token_indices,
        input_ids=input_ids,
        token_weights=token_weights,
        unknown_words=unknown,
        truncated_words=truncated,
        word_weights=word_weights,
        notes=notes,
    )


def untokenized_words(prompt: str, syntax: str) -> WordTokens:
    """The prompt's words and emphasis weights, without a tokenizer (each word stands for one token position)."""
    words: list[str] = []
    weights: list[float] = []
    for text, weight in parse(prompt, syntax):
        if is_break((text, weight)):  # A1111's chunk break: tokenize_prompt leaves it out, so no word here either
            continue
        for word in split_words(text):
            words.append(word)
            weights.append(weight if math.isfinite(weight) else 1.0)  # as tokenize_prompt reads it
    return WordTokens(text=prompt, words=words, token_indices=[[i] for i in range(len(words))], input_ids=[],
                      token_weights=list(weights), word_weights=weights)
