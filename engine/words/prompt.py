"""Prompt text -> weighted spans (A1111 / Compel emphasis) -> words -> token indices in the 77-position sequence.

Each parser gives exactly what its anchor gives (A1111's `parse_prompt_attention`; Compel's grammar, in
engine/words/compel_syntax.py), quirks included, and never raises on user text; `parse_with_notes` also says, in one line
each, where the reading may surprise or where Attune reads the syntax more simply than the anchor.
Words are `\\w+` runs (apostrophes inside a word stay in it) and single punctuation characters. Tokens are CLIP's
own: each emphasis span is tokenized as a whole, as A1111 and Compel do (a span boundary splits BPE merges; syntax
"none" is one span), and each token is mapped back to the words whose characters it covers. A token shared by
several words (CLIP's `...` over the words `.` `.` `.`) belongs to each of them. Prompts over 75 tokens become 77-position
chunks, split by each anchor's rule (a1111_chunks, compel_chunks).
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
COMMA_BACKTRACK = 20  # A1111's opts.comma_padding_backtrack (its default)
MAX_CHUNKS = 8  # 8 x 75 tokens; beyond that the text encoder's output grows past what a study needs (noted)
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
    chunks: list[tuple[int, int]] = field(default_factory=list)  # each 77-position chunk's content positions [a, b)
    pooled_ids: list[int] = field(default_factory=list)  # the 77 ids SDXL's pooled embedding reads (pooled_ids())

    @property
    def n_chunks(self) -> int:
        return max(1, len(self.input_ids) // MAX_LENGTH)

    @property
    def word_positions(self) -> list[int]:
        """The sequence positions of the prompt's own tokens: every chunk's, without its BOS, EOS and padding."""
        return [i for start, end in self.chunks for i in range(start, end)]

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
                raise AttuneError(f"'{word_or_phrase}' is beyond the {MAX_CHUNKS} x {MAX_CONTENT_TOKENS}-token limit "
                                  "of the prompt.")
            raise AttuneError(f"'{word_or_phrase}' has no tokens in this model's tokenizer.")
        return sorted(found)

    def _word_list(self) -> str:
        unique = list(dict.fromkeys(w for w in self.words if re.match(r"\w", w)))
        return ", ".join(unique) if unique else "(none)"


def _special_id(tokenizer, name: str) -> int | None:
    value = getattr(tokenizer, name, None)  # optional third-party: a tokenizer may lack a special token (e.g. pad)
    return int(value) if value is not None else None


@dataclass
class _Token:
    id: int
    weight: float
    words: list[int]  # indices into WordTokens.words of the words whose characters this token covers
    text: str = ""  # the tokenizer's spelling of the token (Compel's split points read it)


def _is_word_level(tokenizer) -> bool:
    from engine.words.tokenizer import word_level_vocab

    return word_level_vocab(tokenizer) is not None


def _span_tokens(tokenizer, text: str, first_word: int, word_level: bool) -> tuple[list[str], list[_Token]]:
    """The span's words and its tokens, the span tokenized as a whole as the anchors do (one tokenizer call per
    emphasis span). Each token belongs to every word whose characters it covers (token offsets), so a token shared
    by two words, e.g. CLIP's `!!` over the words `!` and `!`, belongs to both. Word-level tokenizers (the built-in
    model) get one call per word: their pre-tokenizer would turn a punctuation run into one unknown token."""
    found = list(WORD_RE.finditer(text))
    words = [m.group(0) for m in found]
    backend = getattr(tokenizer, "backend_tokenizer", None)  # optional third-party: fast tokenizers have offsets
    tokens: list[_Token] = []
    if word_level or backend is None:
        for k, word in enumerate(words):
            for token_id in tokenizer(word, add_special_tokens=False)["input_ids"]:
                tokens.append(_Token(int(token_id), 1.0, [first_word + k]))
    else:
        encoding = backend.encode(text, add_special_tokens=False)
        for token_id, token_text, (start, end) in zip(encoding.ids, encoding.tokens, encoding.offsets):
            owners = [first_word + k for k, m in enumerate(found) if m.start() < end and start < m.end()]
            tokens.append(_Token(int(token_id), 1.0, owners, token_text))
        # A character the normaliser folds into its neighbour (NFC: `e` + U+0301 -> `é`) has no token of its own:
        # its word joins the tokens that took it in: those of the nearest character starting before it.
        owned = {k for token in tokens for k in token.words}
        for k, m in enumerate(found):
            if first_word + k not in owned and tokens:
                before = [off for off in encoding.offsets if off[0] <= m.start()]
                host = before[-1] if before else encoding.offsets[0]
                for token, off in zip(tokens, encoding.offsets):
                    if off == host:
                        token.words.append(first_word + k)
    if word_level or backend is None:
        to_text = getattr(tokenizer, "convert_ids_to_tokens", None)  # optional third-party: token text, for display
        for token in tokens:
            token.text = str(to_text(token.id)) if to_text is not None else ""
    return words, tokens


def _comma_id(tokenizer, word_level: bool) -> int | None:
    """A1111's comma token (`,</w>` in CLIP's vocabulary): the id the tokenizer gives a lone comma."""
    ids = list(tokenizer(",", add_special_tokens=False)["input_ids"])
    return int(ids[0]) if len(ids) == 1 else None


def a1111_chunks(pieces: list, comma: int | None, chunk_length: int = MAX_CONTENT_TOKENS,
                 backtrack: int = COMMA_BACKTRACK) -> list[list]:
    """A1111's `tokenize_line` rule: tokens fill 75-token chunks; BREAK (None in `pieces`) ends the chunk now; when a
    chunk is full and the next token is not a comma, the tokens after the chunk's last comma move to the next chunk,
    if that comma is within the last `backtrack` tokens. A chunk that ends on BREAK is kept even when empty."""
    chunks: list[list] = []
    chunk: list = []
    last_comma = -1
    for piece in pieces:
        if piece is None:
            chunks.append(chunk)
            chunk, last_comma = [], -1
            continue
        if comma is not None and piece.id == comma:
            last_comma = len(chunk)
        elif backtrack and len(chunk) == chunk_length and last_comma != -1 and len(chunk) - last_comma <= backtrack:
            chunks.append(chunk[: last_comma + 1])
            chunk, last_comma = chunk[last_comma + 1 :], -1
        if len(chunk) == chunk_length:
            chunks.append(chunk)
            chunk, last_comma = [], -1
        chunk.append(piece)
    if chunk or not chunks:
        chunks.append(chunk)
    return chunks


_COMPEL_SENTENCE_ENDS = (".</w>",)
_COMPEL_PHRASE_ENDS = (".</w>", ",</w>", ";</w>", ":</w>")


def compel_chunks(tokens: list, chunk_length: int = MAX_CONTENT_TOKENS) -> list[list]:
    """Compel's rule with truncate_long_prompts=False and its default SplitLongTextMode.SENTENCES: a chunk of at
    most 75 tokens ends after its last `.`; without one, after its last phrase mark (. , ; :); without one, after its
    last word end (a token spelt `...</w>`); without one, at 75 tokens."""
    chunks: list[list] = []
    rest = list(tokens)
    while True:
        split = chunk_length
        if len(rest) > chunk_length:
            head = [t.text for t in rest[:chunk_length]]
            for found in (lambda s: s in _COMPEL_SENTENCE_ENDS, lambda s: s in _COMPEL_PHRASE_ENDS,
                          lambda s: s.endswith("</w>")):
                ends = [i for i, s in enumerate(head) if found(s)]
                if ends:
                    split = ends[-1] + 1
                    break
        chunks.append(rest[:split])
        rest = rest[split:]
        if not rest:
            return chunks


def tokenize_prompt(tokenizer, text, syntax: str = "none") -> WordTokens:
    """Parse emphasis, tokenize each span as the anchor does, split the tokens into 75-token chunks by the anchor's
    rule (A1111's for "a1111" and "none", Compel's for "compel") and lay out 77 positions per chunk (BOS, content,
    EOS, pad). Beyond MAX_CHUNKS chunks the rest is left out, with a note."""
    spans, notes = parse_with_notes(text, syntax)
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
    word_level = _is_word_level(tokenizer)

    words: list[str] = []
    word_weights: list[float] = []
    pieces: list = []  # tokens in order, None where A1111's BREAK ends a chunk
    unknown: list[str] = []
    for span_text, weight in spans:
        if is_break((span_text, weight)):
            pieces.append(None)
            continue
        span_words, tokens = _span_tokens(tokenizer, span_text, len(words), word_level)
        words += span_words
        word_weights += [weight] * len(span_words)
        for token in tokens:
            token.weight = weight
            if unk is not None and token.id == unk:
                for k in token.words:
                    if words[k] not in unknown:
                        unknown.append(words[k])
        pieces += tokens
    if syntax == "compel":
        chunks = compel_chunks([p for p in pieces if p is not None])
    else:
        chunks = a1111_chunks(pieces, _comma_id(tokenizer, word_level))
    truncated: list[str] = []
    if len(chunks) > MAX_CHUNKS:
        dropped = {k for chunk in chunks[MAX_CHUNKS:] for token in chunk for k in token.words}
        kept = {k for chunk in chunks[:MAX_CHUNKS] for token in chunk for k in token.words}
        truncated = [words[k] for k in sorted(dropped - kept)]
        notes.append(f"The prompt is longer than {MAX_CHUNKS} chunks of {MAX_CONTENT_TOKENS} tokens; "
                     f"{len(chunks) - MAX_CHUNKS} more chunk(s) are left out"
                     + (f", from '{truncated[0]}' on." if truncated else "."))
        chunks = chunks[:MAX_CHUNKS]

    input_ids: list[int] = []
    token_weights: list[float] = []
    token_indices: list[list[int]] = [[] for _ in words]
    chunk_ranges: list[tuple[int, int]] = []
    for chunk in chunks:
        start = len(input_ids)
        head = [bos] if bos is not None else []
        input_ids += head
        token_weights += [1.0] * len(head)
        for token in chunk:
            for k in token.words:
                token_indices[k].append(len(input_ids))
            input_ids.append(token.id)
            token_weights.append(token.weight)
        chunk_ranges.append((start + len(head), len(input_ids)))
        input_ids.append(eos)
        token_weights.append(1.0)
        input_ids += [pad] * (start + MAX_LENGTH - len(input_ids))
        token_weights += [1.0] * (start + MAX_LENGTH - len(token_weights))
    return WordTokens(
        pooled_ids=pooled_ids(tokenizer, text, syntax, input_ids, (bos, eos, pad)),
        text=(" " if syntax == "compel" else "").join(t for t, w in spans if t and not is_break((t, w))),
        words=words,
        token_indices=token_indices,
        input_ids=input_ids,
        token_weights=token_weights,
        unknown_words=unknown,
        truncated_words=truncated,
        word_weights=word_weights,
        notes=notes,
        chunks=chunk_ranges,
    )


def pooled_ids(tokenizer, text, syntax: str, input_ids: list[int], specials: tuple) -> list[int]:
    """The 77 ids whose pooled embedding SDXL conditions on, by each anchor's rule: A1111 (and syntax "none") pools
    the first chunk (`zs[0].pooled`); Compel's SDXL mode pools the prompt text as typed, emphasis marks included,
    truncated to 75 tokens (`get_pooled_embeddings([text])`, truncation on)."""
    if syntax != "compel":
        return list(input_ids[:MAX_LENGTH])
    bos, eos, pad = specials
    ids = list(tokenizer("" if text is None else str(text), add_special_tokens=False)["input_ids"])
    ids = ([bos] if bos is not None else []) + ids[:MAX_CONTENT_TOKENS] + [eos]
    return ids + [pad] * (MAX_LENGTH - len(ids))


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
