"""Word-level prompt edits (the word cards' Delete and Replace) and word diffs between two prompts.

Words are found in the raw prompt text, emphasis syntax included, so `(moon:1.5)` -> replace moon by sun gives
`(sun:1.5)`: the emphasis stays on the new word. Numbers (emphasis weights) are never words here.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from engine.errors import AttuneError

# A word starts with a letter; inner apostrophes and hyphens stay inside it (don't, blue-green).
WORD_RE = re.compile(r"[^\W\d_](?:[\w]|['’-](?=\w))*", re.UNICODE)


@dataclass(frozen=True)
class PromptWord:
    index: int  # position among the prompt's words (0-based)
    text: str
    start: int  # character span in the prompt
    end: int


def prompt_words(prompt: str) -> list[PromptWord]:
    """Each word of the prompt with its character span, in order (one entry per occurrence)."""
    return [PromptWord(i, m.group(0), m.start(), m.end()) for i, m in enumerate(WORD_RE.finditer(prompt or ""))]


def _word_at(prompt: str, index: int) -> PromptWord:
    words = prompt_words(prompt)
    if not words:
        raise AttuneError("The prompt has no words to edit.")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(words):
        raise AttuneError(f"Word number {index} is not in the prompt (it has {len(words)} words, numbered from 0).")
    return words[index]


def delete_word(prompt: str, index: int) -> str:
    """The prompt without its index-th word; the rest of the text is kept as typed. Emphasis that held only this
    word goes too ("(moon:1.5)", "[moon]", compel's "moon++"), and so does a comma left doubled."""
    word = _word_at(prompt, index)
    left, right = prompt[: word.start], prompt[word.end :]
    opening = re.search(r"[(\[]\s*$", left)
    closing = re.match(r"\s*(?::\s*[\d.]+\s*)?[)\]][\d.]*", right)
    if opening and closing:
        left, right = left[: opening.start()], right[closing.end() :]
    right = re.sub(r"^[+-]+(?=\s|,|$)", "", right)
    left = left.rstrip()
    if not left:
        right = re.sub(r"^[\s,;:]+", "", right)
    elif left[-1] in ",;:" and re.match(r"\s*[,;:]", right):
        right = re.sub(r"^\s*[,;:]", "", right)
    elif not left.endswith(("(", "[")) and right[:1].isalnum():
        right = " " + right
    result = (left + right).strip()
    if not prompt_words(result):
        raise AttuneError("Deleting that word would leave the prompt empty.")
    return result


def replace_word(prompt: str, index: int, replacement: str) -> str:
    """The prompt with its index-th word replaced (the replacement may be a phrase, e.g. 'golden hour')."""
    replacement = " ".join(str(replacement or "").split())
    if not prompt_words(replacement):
        raise AttuneError("The replacement must contain a word.")
    word = _word_at(prompt, index)
    return prompt[: word.start] + replacement + prompt[word.end :]


def find_word(prompt: str, word: str) -> int:
    """Index of the first occurrence of a word (case-insensitive), for the CLI's --word."""
    wanted = str(word or "").strip().lower()
    for item in prompt_words(prompt):
        if item.text.lower() == wanted:
            return item.index
    known = ", ".join(dict.fromkeys(w.text for w in prompt_words(prompt))) or "(none)"
    raise AttuneError(f"'{word}' is not a word of the prompt; its words are: {known}.")


@dataclass(frozen=True)
class DiffPart:
    op: str  # "same" | "removed" | "added"
    text: str


TOKEN_RE = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")


def _join(tokens: list[str]) -> str:
    """Tokens back to text: no space before closing punctuation or after an opening bracket."""
    text = ""
    for token in tokens:
        if text and not (token in ",.;:!?)]" or text[-1] in "([" or token.startswith(":")):
            text += " "
        text += token
    return text


def word_diff(old: str, new: str) -> list[DiffPart]:
    """Word-level diff from old to new (words and punctuation marks are the units)."""
    a, b = TOKEN_RE.findall(old or ""), TOKEN_RE.findall(new or "")
    parts: list[DiffPart] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            parts.append(DiffPart("same", _join(a[i1:i2])))
            continue
        if i2 > i1:
            parts.append(DiffPart("removed", _join(a[i1:i2])))
        if j2 > j1:
            parts.append(DiffPart("added", _join(b[j1:j2])))
    return parts


def diff_summary(old: str, new: str) -> str:
    """One line for the log and the version card: 'moon → sun', '− bright', '+ golden hour'."""
    parts = word_diff(old, new)
    pieces, i = [], 0
    while i < len(parts):
        part = parts[i]
        if part.op == "removed" and i + 1 < len(parts) and parts[i + 1].op == "added":
            pieces.append(f"{part.text} → {parts[i + 1].text}")
            i += 2
            continue
        if part.op != "same":
            pieces.append(("− " if part.op == "removed" else "+ ") + part.text)
        i += 1
    return "; ".join(pieces) or "no change"


def diff_markdown(old: str, new: str) -> str:
    """The diff for Streamlit markdown: removed words struck through in red, added words in green."""

    def escape(text: str) -> str:
        return re.sub(r"([\\`*_{}\[\]()#+\-.!|~<>:$])", r"\\\1", text)

    shown = ""
    for part in word_diff(old, new):
        if part.op == "same":
            piece = escape(part.text)
        elif part.op == "removed":
            piece = f":red[~~{escape(part.text)}~~]"
        else:
            piece = f":green[**{escape(part.text)}**]"
        shown += ("" if not shown or part.text[:1] in ",.;:!?)]" else " ") + piece
    return shown


def weights_after_replace(weights: dict[str, float] | None, old_word: str, replacement: str) -> dict[str, float]:
    """A word's focus weight moves to the word that replaces it (phrases holding the old word are kept as they are;
    the Studio then drops weights whose words left the prompt)."""
    moved = {}
    for key, value in (weights or {}).items():
        moved[replacement.lower() if key.lower() == old_word.lower() else key] = value
    return moved
