"""Compel's prompt syntax, read the way Compel's pyparsing grammar reads it, as weighted fragments.

Compel (damian0815/compel 2.5, `compel.prompt_parser`) parses with pyparsing: ordered choice, greedy repetition, no
backtracking into a choice once it matched, and whitespace skipped before most terminals. This module walks the same
grammar by hand with those rules, so that for every prompt Compel reads, the fragments and their weights are
Compel's: `word+` / `word--` (1.1^n / 0.9^n), `(words)1.3`, `(words)++`, `"quoted words"-`, `x.attend(1.2)`,
nesting (weights multiply outside in), `\\(` `\\)` `\\"` escapes, and neighbours of equal weight joined with a space.

What Attune's single list of (text, weight) cannot hold is read in a simpler way, with a note, never an error:
- `.swap()` (cross-attention control): the original words, which is the conditioning Compel itself builds;
- `.blend()`: the part with the largest blend weight;
- `.and()` / `.add()`: the parts one after another in one prompt, each part's weight multiplied into its words
  (what Compel's per-part weight does to a part's embedding under the `embed` method);
- `withLora()` / `useLora()`: left out (Attune loads no LoRA);
- text Compel itself cannot read (it raises): plain text at weight 1.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

COMPEL_UP = 1.1
COMPEL_DOWN = 0.9
MAX_DEPTH = 60  # nested groups / quotes

_SKIPPED = " \n\t\r"  # pyparsing's default whitespace, skipped before most terminals
_WHITE = " \t\r\n"  # what pyparsing's White() matches ...
_WHITE_SKIPPED = "\f\u00a0\u1680\u180e" + "".join(chr(c) for c in range(0x2000, 0x200C)) + "\u202f\u205f\u3000"
_SYNTAX = '()",.+-='  # Compel's syntactic characters; a backslash before one of them escapes it
_NOT_IN_WORD = string.whitespace + _SYNTAX
_REAL_RE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+)")
_INT_RE = re.compile(r"-?[0-9]+")
_KEYWORD_CHARS = set(string.ascii_letters + string.digits + "_-")
_QUOTED_RE = re.compile(r'"(?:(?:\\")|(?:[^"\n\r]))*"')
# pyparsing 3.3's unquoting pattern as it compiles (its f-string turns `{3}` into a literal 3, and so on).
_UNQUOTE_RE = re.compile(r"(\\t|\\n|\\f|\\r)|(\\[0-7]3|\\0|\\x[0-9a-fA-F]2|\\u[0-9a-fA-F]4)|(.)|(\n)")
_COMMA_RE = re.compile(r",(\S)")
_WS_ESCAPES = {r"\t": "\t", r"\n": "\n", r"\f": "\f", r"\r": "\r"}


class CompelUnreadable(Exception):
    """Compel itself raises on this text."""


@dataclass
class Fragment:
    text: str
    weight: float = 1.0


@dataclass
class Attention:
    weight: float
    children: list


@dataclass
class Swap:
    original: list
    edited: list


@dataclass
class Lora:
    name: str
    weight: float


@dataclass
class Blend:
    prompts: list  # each a list of nodes
    weights: list[float]


@dataclass
class Conjunction:
    prompts: list  # each a list of nodes, or a Blend
    weights: list[float] = field(default_factory=list)


def _fragment(text: str, weight: float = 1.0) -> Fragment:
    """Compel's Fragment(): `\\(` `\\)` `\\"` become the plain characters; other escapes keep their backslash.
    Compel makes a new Fragment when it parses, flattens and joins, so text may be unescaped more than once."""
    return Fragment(text.replace("\\(", "(").replace("\\)", ")").replace('\\"', '"'), weight)


def _unquote(body: str) -> str:
    """pyparsing QuotedString's unquoting: whitespace and numeric escapes, then \\" -> "."""
    out = []
    for found in _UNQUOTE_RE.finditer(body):
        if found.group(1):
            out.append(_WS_ESCAPES[found.group(1)])
        elif found.group(2):
            code = found.group(2)[1:]
            if code == "0":
                out.append("\0")
            elif code.isdigit() and len(code) == 3:
                out.append(chr(int(code, 8)))
            elif code[0] in "ux":
                out.append(chr(int(code[1:], 16)))
            else:
                out.append(code)
        else:
            out.append(found.group(3) or found.group(4))
    return "".join(out).replace('\\"', '"')


class _Reader:
    """One pass of the grammar over one string. Each rule takes a position and returns (nodes, end) or None."""

    def __init__(self, text: str) -> None:
        self.s = text.expandtabs()  # pyparsing's parse_string does this first
        self.n = len(self.s)
        self.depth = 0
        self.memo: dict = {}  # (rule, position) -> result: several rules try the same group at the same place

    # ---- terminals
    def skip(self, p: int) -> int:
        while p < self.n and self.s[p] in _SKIPPED:
            p += 1
        return p

    def literal(self, p: int, word: str) -> int | None:
        q = self.skip(p)
        return q + len(word) if self.s.startswith(word, q) else None

    def run_of(self, p: int, char: str) -> tuple[str, int] | None:
        q = end = self.skip(p)
        while end < self.n and self.s[end] == char:
            end += 1
        return (self.s[q:end], end) if end > q else None

    def number(self, p: int) -> tuple[float, int] | None:
        q = self.skip(p)
        found = _REAL_RE.match(self.s, q) or _INT_RE.match(self.s, q)
        return (float(found.group(0)), found.end()) if found else None

    def keyword(self, p: int) -> tuple[str, int] | None:
        q = end = self.skip(p)
        while end < self.n and self.s[end] in _KEYWORD_CHARS:
            end += 1
        return (self.s[q:end], end) if end > q else None

    def no_white_at(self, p: int) -> bool:
        """NotAny(White()): White first skips the Unicode spaces it does not match itself."""
        while p < self.n and self.s[p] in _WHITE_SKIPPED:
            p += 1
        return not (p < self.n and self.s[p] in _WHITE)

    def non_syntax_word(self, p: int):
        start = q = self.skip(p)
        s, n = self.s, self.n
        while q < n:
            c = s[q]
            if c == "\\" and q + 1 < n and s[q + 1] in _SYNTAX:
                q += 2
            elif c in "+-" and q + 1 < n and s[q + 1] not in _WHITE and s[q + 1] not in _SYNTAX:
                q += 1
            elif c not in _NOT_IN_WORD:
                q += 1
            else:
                break
        return ([_fragment(s[start:q])], q) if q > start else None

    def free_word(self, p: int):
        q = p
        while q < self.n and self.s[q] not in string.whitespace:
            q += 1
        return ([_fragment(self.s[p:q])], q) if q > p else None

    def white(self, p: int):
        q = p
        while q < self.n and self.s[q] in _WHITE_SKIPPED:
            q += 1
        end = q
        while end < self.n and self.s[end] in _WHITE:
            end += 1
        return ([], end) if end > q else None

    def quoted_body(self, p: int) -> tuple[str, int] | None:
        q = self.skip(p)
        found = _QUOTED_RE.match(self.s, q)
        return (_unquote(found.group(0)[1:-1]), found.end()) if found else None

    # ---- fragments
    def quoted(self, p: int, whole_prompt: bool = False):
        """A "quoted" fragment: its inside parsed again (as fragments, or as a whole prompt inside blends)."""
        key = ("quoted", p, whole_prompt)
        if key not in self.memo:
            self.memo[key] = self._quoted(p, whole_prompt)
        return self.memo[key]

    def _quoted(self, p: int, whole_prompt: bool):
        found = self.quoted_body(p)
        if found is None:
            return None
        body, end = found
        if not body.strip():
            return [Fragment("")], end
        inner = _Reader(body.replace('"', '\\"'))
        inner.depth = self.depth + 1
        if inner.depth > MAX_DEPTH:
            raise CompelUnreadable
        result = inner.prompt(0) if whole_prompt else inner.fragments(0, commas=True)
        if inner.skip(result[1]) != inner.n:
            return None
        return result[0], end

    def parenthesized(self, p: int):
        key = ("parenthesized", p)
        if key not in self.memo:
            self.memo[key] = self._parenthesized(p)
        return self.memo[key]

    def _parenthesized(self, p: int):
        q = self.literal(p, "(")
        if q is None:
            return None
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:  # Compel's pyparsing runs out of Python's recursion limit long before
                raise CompelUnreadable
            nodes, q = self.fragments(q, commas=True)
        finally:
            self.depth -= 1
        end = self.literal(q, ")")
        return (nodes, end) if end is not None else None

    def operator_target(self, p: int):
        return self.quoted(p) or self.parenthesized(p) or self.non_syntax_word(p)

    def fragments(self, p: int, commas: bool):
        """ZeroOrMore of: lora, attention, swap, (group), "quoted", word [, ',' '.' when commas]."""
        nodes: list = []
        while True:
            found = (self.lora(p) or self.attention(p) or self.swap(p) or self.parenthesized(p) or self.quoted(p)
                     or self.non_syntax_word(p) or (self.comma_or_period(p) if commas else None))
            if found is None:
                return nodes, p
            nodes += found[0]
            p = found[1]

    def comma_or_period(self, p: int):
        q = self.skip(p)
        if q < self.n and self.s[q] in ",.":
            return [Fragment(self.s[q])], q + 1
        return None

    # ---- operators
    def weight_operator(self, p: int) -> tuple[float, int] | None:
        for char, base in (("+", COMPEL_UP), ("-", COMPEL_DOWN)):
            found = self.run_of(p, char)
            if found:
                return pow(base, len(found[0])), found[1]
        return self.number(p)

    def attention(self, p: int):
        return self.attention_explicit(p) or self.attention_implicit(p)

    def attention_explicit(self, p: int):
        target = self.operator_target(p)
        if target is None:
            return None
        q = self.literal(target[1], ".attend")
        q = self.literal(q, "(") if q is not None else None
        weight = self.weight_operator(q) if q is not None else None
        end = self.literal(weight[1], ")") if weight is not None else None
        return ([Attention(weight[0], target[0])], end) if end is not None else None

    def attention_implicit(self, p: int):
        target = self.quoted(p) or self.parenthesized(p)
        if target is not None and self.no_white_at(target[1]):
            weight = self.weight_operator(target[1])
            if weight is not None:
                return [Attention(weight[0], target[0])], weight[1]
        word = self.non_syntax_word(p)
        if word is not None and self.no_white_at(word[1]):
            for char, base in (("+", COMPEL_UP), ("-", COMPEL_DOWN)):
                found = self.run_of(word[1], char)
                if found:
                    return [Attention(pow(base, len(found[0])), word[0])], found[1]
        return None

    def swap(self, p: int):
        target = self.operator_target(p)
        if target is None:
            return None
        q = self.literal(target[1], ".swap")
        q = self.literal(q, "(") if q is not None else None
        if q is None:
            return None
        edited, q = self.fragments(q, commas=False)
        after_comma = self.literal(q, ",")
        if after_comma is not None:
            q = self.options(after_comma)[1]
        end = self.literal(q, ")")
        return ([Swap(target[0] or [Fragment("")], edited or [Fragment("")])], end) if end is not None else None

    def lora(self, p: int):
        q = self.literal(p, "useLora")
        if q is None:
            q = self.literal(p, "withLora")
        q = self.literal(q, "(") if q is not None else None
        name = self.keyword(q) if q is not None else None
        if name is None:
            return None
        q, weight = name[1], 1.0
        comma = self.literal(q, ",")
        number = self.number(comma) if comma is not None else None
        if number is not None:
            weight, q = number
        end = self.literal(q, ")")
        return ([Lora(name[0], weight)], end) if end is not None else None

    def options(self, p: int) -> tuple[list[tuple[str, object]], int]:
        """delimited_list of `key=value`, a number, or a flag; may be empty. Numbers come back as strings."""
        items: list[tuple[str, object]] = []
        q = p
        while True:
            item = self.option(q)
            if item is None:
                return items, q
            items.append(item[0])
            q = item[1]
            comma = self.literal(q, ",")
            if comma is None or self.option(comma) is None:
                return items, q
            q = comma

    def option(self, p: int):
        key = self.keyword(p)
        if key is not None:
            equals = self.literal(key[1], "=")
            value = (self.number(equals) or self.keyword(equals)) if equals is not None else None
            if value is not None:
                return (key[0], value[0]), value[1]
        number = self.number(p)
        if number is not None:
            return (str(number[0]), ""), number[1]
        return ((key[0], ""), key[1]) if key is not None else None

    # ---- whole prompts
    def prompt(self, p: int):
        nodes: list = []
        while True:
            found = (self.swap(p) or self.lora(p) or self.attention(p) or self.quoted(p) or self.parenthesized(p)
                     or self.free_word(p) or self.white(p))
            if found is None:
                return nodes, p
            nodes += found[0]
            p = found[1]

    def prompt_list(self, p: int):
        """( target-or-"prompt", ... ) for .blend() and .and(): each item is one prompt."""
        q = self.literal(p, "(")
        if q is None:
            return None
        prompts = []
        while True:
            item = self.operator_target(q) or self.quoted(q, whole_prompt=True)
            if item is None:
                if not prompts:
                    return None
                break
            prompts.append(item[0])
            q = item[1]
            comma = self.literal(q, ",")
            if comma is None:
                break
            following = self.operator_target(comma) or self.quoted(comma, whole_prompt=True)
            if following is None:
                break
            q = comma
        end = self.literal(q, ")")
        return (prompts, end) if end is not None else None

    def operator_call(self, p: int, names: tuple[str, ...]):
        """.name( options ) after a prompt list: (options, end)."""
        for name in names:
            q = self.literal(p, name)
            if q is not None:
                break
        else:
            return None
        q = self.literal(q, "(")
        if q is None:
            return None
        options, q = self.options(q)
        end = self.literal(q, ")")
        return (options, end) if end is not None else None

    def conjunction(self) -> Conjunction:
        explicit = self.prompt_list(0)
        if explicit is not None:
            call = self.operator_call(explicit[1], (".and", ".add"))
            if call is not None:  # Compel ignores whatever follows
                weights = _weights(call[0])
                return Conjunction(explicit[0], _checked(weights, explicit[0]))
        parts: list = []
        p = self.leading_loras(0, parts)
        blend = self.prompt_list(p)
        call = self.operator_call(blend[1], (".blend",)) if blend is not None else None
        if call is not None:
            options = list(call[0])
            if options and options[-1][0] == "no_normalize":
                options = options[:-1]
            if any(isinstance(x, Swap) for prompt in blend[0] for x in prompt):
                raise CompelUnreadable  # Compel: "you cannot do .swap() as part of a Blend"
            parts.append(Blend(blend[0], _checked(_weights(options), blend[0])))
            p = call[1]
        else:
            nodes, p = self.prompt(p)
            parts.append(nodes)
        p = self.leading_loras(p, parts)
        if self.skip(p) != self.n:
            raise CompelUnreadable
        return Conjunction(parts, [1.0] * len(parts))

    def leading_loras(self, p: int, parts: list) -> int:
        loras = []
        while (found := self.lora(p)) is not None:
            loras += found[0]
            p = found[1]
        if loras:
            parts.append(loras)
        return p


def _weights(options) -> list[float]:
    try:
        return [float(key) for key, _ in options]
    except ValueError:
        raise CompelUnreadable from None


def _checked(weights: list[float], prompts: list) -> list[float]:
    if not weights:
        return [1.0] * len(prompts)
    if len(weights) != len(prompts):
        raise CompelUnreadable  # Compel: mismatched prompts/weights counts
    return weights


# ---- flattening: nested nodes -> fused fragments, as Compel's PromptParser.flatten does
def _flat(nodes, scale: float, loras: list) -> list:
    out: list = []
    for node in nodes:
        if isinstance(node, Fragment):
            out.append(_fragment(node.text, node.weight * scale))
        elif isinstance(node, Attention):
            out += _flat(node.children, scale * node.weight, loras)
        elif isinstance(node, Swap):
            original = _fuse(_flat(node.original, scale, loras)) or [Fragment("")]
            out.append(Swap(original, _fuse(_flat(node.edited, scale, loras)) or [Fragment("")]))
        elif isinstance(node, Lora):
            loras.append(node)
    return out


def _fuse(items: list) -> list:
    fused: list = []
    for item in items:
        if (isinstance(item, Fragment) and fused and isinstance(fused[-1], Fragment)
                and fused[-1].weight == item.weight):
            fused[-1] = _fragment(fused[-1].text + " " + item.text, fused[-1].weight)
        else:
            fused.append(item)
    return fused


@dataclass
class CompelReading:
    spans: list[tuple[str, float]]
    notes: list[str]


def read_compel(text: str) -> CompelReading:
    """Compel's fragments as (text, weight) spans, with notes where Attune reads Compel's syntax more simply."""
    text = _COMMA_RE.sub(r", \1", text)  # Compel puts a space after every comma first
    if not text.strip():
        return CompelReading([("", 1.0)], [])
    try:
        root = _Reader(text).conjunction()
    except (CompelUnreadable, RecursionError):
        return CompelReading([(text, 1.0)], ["Compel cannot read this prompt (it raises an error); Attune reads it "
                                             "as plain text."])
    notes: list[str] = []
    loras: list = []
    spans: list[tuple[str, float]] = []
    kept = 0
    for part, part_weight in zip(root.prompts, root.weights):
        if isinstance(part, Blend):
            flattened = [_fuse(_flat(p, 1.0, loras)) for p in part.prompts]
            best = max(range(len(part.weights)), key=lambda i: (part.weights[i], -i))
            notes.append(f".blend() mixes whole prompts, which Attune cannot; it uses part {best + 1}, the one with "
                         "the largest blend weight.")
            items = flattened[best]
        else:
            items = _fuse(_flat(part, 1.0, loras))
        if not items:
            continue  # Compel drops a part with no fragments (e.g. only withLora())
        kept += 1
        for item in items:
            if isinstance(item, Swap):
                if not any("swap" in note for note in notes):
                    notes.append(".swap() is cross-attention control, which Attune does not do; it uses the "
                                 "original words, as Compel's own conditioning does.")
                spans += [(f.text, f.weight * part_weight) for f in item.original]
            else:
                spans.append((item.text, item.weight * part_weight))
    if kept > 1:
        notes.append(".and() encodes each part on its own in Compel; Attune reads the parts as one prompt, each "
                     "part's weight multiplied into its words.")
    if loras:
        notes.append("withLora()/useLora() is left out: Attune loads no LoRA.")
    return CompelReading(spans or [("", 1.0)], notes)
