"""Inpaint prompts as people type them: "replace with misty forest", "add a red house", "remove the moon", an empty box.

`parse_inpaint_instruction(typed, image_prompt)` turns the inpaint box into the prompt that runs (docs/app.md,
"Inpaint instructions"). Matching is case-insensitive and tolerates surrounding quotes, trailing punctuation and
a leading "please"; the object keeps its words as typed. "replace … with X", "make it X" and "add X" run X plus
the image prompt's time-of-day phrase when the mask is large ("misty forest, night sky"); plain text runs as
typed. "remove X" inpaints with the image's own prompt without X: on the built-in model's tuning split this
removed the object in 30 of 30 erases, a fill from the surroundings in 28 (an ad-hoc run before bench.refine had
erase rows). An empty box names nothing to take out of the prompt, so it fills the mask from its surroundings
(engine.sampling.masks.fill_from_surroundings): the image's prompt would paint the object back.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from engine.errors import AttuneError
from engine.words.prompt_edit import delete_word, prompt_words

KINDS = ("replace", "add", "make", "remove", "erase_empty", "plain")
MAX_INSTRUCTION_CHARS = 500  # an instruction is a sentence; longer text is almost surely a paste by mistake
ARTICLES = frozenset({"a", "an", "the", "some"})
_POINTERS = r"(?:it|this|that|these|those|here|there)"
# Words that end a noun phrase on its left: "in front of | the full moon", "sky with | a lone tree".
_PHRASE_STOPS = frozenset(
    "of in on at under above below beside near with and or next to front behind over by for from into onto "
    "is are sitting standing".split())
_MODIFIERS_MAX = 2  # words before a removed noun that go with it ("the bright full moon")
# Words that only joined the removed phrase to the rest: "a lake near | a tree" loses "near" too when the phrase ended
# the clause ("in front of", "next to": up to three words).
_CONNECTORS = _PHRASE_STOPS - {"is", "are", "sitting", "standing"}
_CONNECTORS_MAX = 3
# Words that set the image's time of day. "replace with X", "make it X" and "add X" keep the image prompt's phrase
# with one of them ("night sky", "at night") when the mask is large: run alone, "misty forest" over a night sky
# painted a day sky and suns. A small mask's surroundings show the time of day, and an added "night sky" could paint
# sky into a box on the ground.
TIME_OF_DAY = frozenset(
    "night nighttime midnight dusk evening twilight sunset sunrise dawn day daytime morning noon afternoon "
    "moonlit sunlit".split())
KEEP_TIME_OF_DAY = True  # bench.refine --tune inpaint_time_of_day=0 measures the rule's absence

_RULES = (  # (kind, pattern); the first that matches the whole (normalised) text wins
    ("replace", re.compile(rf"(?:replace|swap)\s+(?:{_POINTERS}\s+)?(?:with|by|for)\b\s*(?P<x>.*)")),
    ("replace", re.compile(r"(?:replace|swap)\s+(?P<y>.+?)\s+(?:with|by|for)\b\s*(?P<x>.*)")),
    ("replace", re.compile(rf"(?:change|turn)\s+(?:{_POINTERS}\s+)?(?:to|into)\b\s*(?P<x>.*)")),
    ("replace", re.compile(r"(?:change|turn)\s+(?P<y>.+?)\s+(?:to|into)\b\s*(?P<x>.*)")),
    ("make", re.compile(rf"make\s+(?:{_POINTERS}\b\s*(?:into\b\s*)?)?(?P<x>.*)")),
    ("add", re.compile(r"(?:add|put|insert|draw|paint|place)\b\s*(?P<x>.*?)(?:\s+(?:here|there|in it))?")),
    ("remove", re.compile(r"(?:remove|erase|delete|get\s+rid\s+of|take\s+(?:out|away)|clear)\b\s*(?P<x>.*)")),
)
_EXAMPLES = {"replace": "replace with misty forest", "make": "make it a misty forest", "add": "add a red house"}


@dataclass(frozen=True)
class InpaintInstruction:
    typed: str  # the inpaint box as typed
    kind: str  # one of KINDS
    prompt: str  # the prompt that will run; "" for an erase that fills the mask from its surroundings
    erase: bool  # the mask's content is to go (remove X, an empty box)
    target: str | None  # the X of "remove X" / the Y of "replace the Y with X", without its article; else None
    rule: str  # one line for the user: which rule made `prompt`


def _normalise(text: str) -> str:
    text = " ".join(str(text).split())
    text = text.strip(" \"'“”‘’`")
    text = re.sub(r"[\s.!?;:,]+$", "", text)
    return re.sub(r"^please\b[\s,]*", "", text, flags=re.IGNORECASE).strip(" \"'“”‘’`")


def _object(text: str) -> str:
    """The object's words as typed, tidied: no closing punctuation or quotes, no 'please' at the end."""
    text = re.sub(r"[\s,]*\bplease$", "", text.strip(), flags=re.IGNORECASE)
    return text.strip(" \"'“”‘’`.,;:!?")


def _bare(text: str) -> str:
    """Words without a leading article (for finding them in the image's prompt)."""
    words = text.split()
    while words and words[0].lower() in ARTICLES:
        words = words[1:]
    return " ".join(words)


def parse_inpaint_instruction(text: str, image_prompt: str, *, small_mask: bool = False) -> InpaintInstruction:
    """The prompt an inpaint box runs, and the rule that made it (see the module doc and docs/app.md). small_mask:
    the mask is small (engine.sampling.loop.is_small_mask), so the image's time of day is not added."""
    if text is not None and not isinstance(text, str):
        raise AttuneError("The inpaint prompt must be text.")
    typed = text or ""
    if len(typed) > MAX_INSTRUCTION_CHARS:
        raise AttuneError(f"The inpaint prompt is too long ({len(typed)} characters; the limit is "
                          f"{MAX_INSTRUCTION_CHARS}): describe what goes in the mask in a few words.")
    image_prompt = str(image_prompt or "")
    said = _normalise(typed)
    if not prompt_words(said):
        return InpaintInstruction(typed, "erase_empty", *_erase(None, image_prompt))
    lowered = said.lower()
    for kind, pattern in _RULES:
        match = pattern.fullmatch(lowered)
        if match is None:
            continue
        obj = _object(said[match.start("x"):match.end("x")])
        target = _bare(_object(said[match.start("y"):match.end("y")])) if "y" in match.re.groupindex \
            and match.group("y") else None
        if kind == "remove":
            obj = _bare(obj)
            named = obj if prompt_words(obj) and not re.fullmatch(_POINTERS, obj.lower()) else None
            return InpaintInstruction(typed, "remove", *_erase(named, image_prompt))
        if not prompt_words(obj):
            verb = said.split()[0].lower()
            raise AttuneError(f"'{said}' does not say what to put in the mask: try e.g. "
                              f"'{_EXAMPLES.get(kind, 'replace with misty forest')}'"
                              f"{'' if verb in ('replace', 'make', 'add') else f' (after {verb!r})'}.")
        kept = time_of_day_phrase(image_prompt) if KEEP_TIME_OF_DAY and not small_mask else None
        if kept and not any(w.text.lower() in TIME_OF_DAY for w in prompt_words(obj)):
            return InpaintInstruction(typed, kind, f"{obj}, {kept}", False, target or None,
                                      _RULE_LINES[kind].format(x=obj) + f", keeping the image's '{kept}'")
        return InpaintInstruction(typed, kind, obj, False, target or None, _RULE_LINES[kind].format(x=obj))
    return InpaintInstruction(typed, "plain", said, False, None, f"plain text: the mask is painted as '{said}'")


_RULE_LINES = {
    "replace": "'replace … with X': the mask is painted as '{x}'",
    "make": "'make it X': the mask is painted as '{x}'",
    "add": "'add X': '{x}' is painted into the mask",
}


def time_of_day_phrase(prompt: str) -> str | None:
    """The prompt's first phrase that sets the time of day: the word, the noun right after it ("night sky") and a
    "at"/"by" before it ("at night"); None when no word of TIME_OF_DAY is in the prompt."""
    words = prompt_words(prompt)
    lowered = [w.text.lower() for w in words]

    def joined(a: int, b: int) -> bool:  # no punctuation between words a and b
        return not prompt[words[a].end:words[b].start].strip()

    for i, word in enumerate(lowered):
        if word not in TIME_OF_DAY:
            continue
        start, end = i, i + 1
        if end < len(words) and joined(i, end) and lowered[end] not in _PHRASE_STOPS | ARTICLES:
            end += 1
        if i > 0 and lowered[i - 1] in ("at", "by") and joined(i - 1, i):
            start = i - 1
        return prompt[words[start].start:words[end - 1].end]
    return None


def _erase(target: str | None, image_prompt: str) -> tuple[str, bool, str | None, str]:
    """(prompt, erase, target, rule) of an erase: the image's prompt without the target's words, or "" (fill)."""
    if target is None:
        return "", True, None, "erase: the mask is filled from its surroundings (no prompt runs)"
    without = remove_phrase(image_prompt, target)
    if without is None:
        return ("", True, target, f"erase: '{target}' is not in the image's prompt, so the mask is filled from its "
                                  "surroundings (no prompt runs)")
    return without, True, target, f"'remove X': the image's prompt without '{target}'"


def remove_phrase(prompt: str, phrase: str) -> str | None:
    """The prompt without the phrase's words (its first occurrence, plurals tolerated) and the article and up to
    two modifiers before it ("the bright full moon" for "moon"); None when the phrase is not in the prompt or
    nothing would be left."""
    words = prompt_words(prompt)
    wanted = [w.text.lower() for w in prompt_words(_bare(phrase))]
    if not wanted:
        return None
    lowered = [w.text.lower() for w in words]
    span = _find(lowered, wanted)
    if span is None and len(wanted) > 1:
        span = _find(lowered, wanted[-1:])  # "remove the bright moon" -> the prompt's "moon"
    if span is None:
        return None
    start, end = span
    for _ in range(_MODIFIERS_MAX + 1):
        before = start - 1
        if before < 0 or lowered[before] in _PHRASE_STOPS or prompt[words[before].end:words[start].start].strip():
            break
        start = before
        if lowered[before] in ARTICLES:
            break
    clause_ends = not prompt[words[end - 1].end:].strip() or prompt[words[end - 1].end:].lstrip()[:1] in ",;."
    for _ in range(_CONNECTORS_MAX if clause_ends else 0):
        before = start - 1
        if before < 0 or lowered[before] not in _CONNECTORS or prompt[words[before].end:words[start].start].strip():
            break
        start = before
    if start == 0 and end == len(words):
        return None
    result = prompt
    for index in range(end - 1, start - 1, -1):
        try:
            result = delete_word(result, index)
        except AttuneError:
            return None
    return result.rstrip(" ,;:")


def _find(lowered: list[str], wanted: list[str]) -> tuple[int, int] | None:
    def same(a: str, b: str) -> bool:
        return a == b or a.rstrip("s") == b.rstrip("s")

    n = len(wanted)
    for i in range(len(lowered) - n + 1):
        if all(same(lowered[i + k], wanted[k]) for k in range(n)):
            return i, i + n
    return None
