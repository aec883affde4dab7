"""Word cards and Explore on a Studio: Delete or Replace one word (a new version, same seed), and a grid of
alternatives for one word (same prompt, same seed, the word replaced by each alternative).

The grid runs its cells one after another through the engine, each with the usual progress callback folded into
one (step, total) count for the whole grid. A batched grid would need the sampler's latents, attention processors
and maps to carry several prompts at once; sequential cells reuse the engine unchanged.
"""
from __future__ import annotations

from engine.words import prompt_edit
from engine.words.alternatives import explore_choices
from engine.errors import AttuneError

MAX_GRID = 8


def known_words(studio):
    """The model's word-level vocabulary (built-in model), or None where any word can be spelled."""
    return getattr(getattr(studio.engine, "components", None), "known_words", None)


def _index(prompt: str, word) -> int:
    return word if isinstance(word, int) and not isinstance(word, bool) else prompt_edit.find_word(prompt, str(word))


def delete(studio, word, *, parent=None, progress=None):
    """A new version (kind "edit") without the word (an index among the prompt's words, or the word itself)."""
    parent = studio._parent(parent)
    index = _index(parent.prompt, word)
    removed = prompt_edit.prompt_words(parent.prompt)[index].text
    prompt = prompt_edit.delete_word(parent.prompt, index)
    return studio.edit_prompt(prompt, edit=f"delete: {removed}", parent=parent, progress=progress)


def replace(studio, word, replacement: str, *, parent=None, progress=None, kind: str = "edit", make_current=True):
    """A new version with the word replaced; the word's focus weight moves to its replacement."""
    parent = studio._parent(parent)
    index = _index(parent.prompt, word)
    old = prompt_edit.prompt_words(parent.prompt)[index].text
    replacement = " ".join(str(replacement or "").split())
    if replacement.lower() == old.lower():
        raise AttuneError(f"'{replacement}' is the word already there: pick a different one.")
    prompt = prompt_edit.replace_word(parent.prompt, index, replacement)
    weights = prompt_edit.weights_after_replace(parent.weights, old, replacement)
    return studio.edit_prompt(prompt, edit=f"{'explore' if kind == 'explore' else 'replace'}: {old} → {replacement}",
                              kind=kind, parent=parent, weights=weights, progress=progress, make_current=make_current)


def explore(studio, word, alternatives: list[str] | None = None, *, n: int = 4, parent=None, progress=None):
    """One version (kind "explore", child of the parent, same seed) per alternative; the parent stays current, so
    the user picks one afterwards (Studio.restore). Alternatives default to the first n the model knows."""
    parent = studio._parent(parent)
    index = _index(parent.prompt, word)
    old = prompt_edit.prompt_words(parent.prompt)[index].text
    if alternatives is None:
        alternatives = [a.text for a in explore_choices(old, known_words(studio), n)]
    alternatives = list(dict.fromkeys(" ".join(str(a).split()) for a in alternatives if str(a).strip()))
    alternatives = [a for a in alternatives if a.lower() != old.lower()]
    if not alternatives:
        raise AttuneError(f"No alternatives to explore for '{old}'.")
    if len(alternatives) > MAX_GRID:
        raise AttuneError(f"An explore grid holds at most {MAX_GRID} alternatives; got {len(alternatives)}.")
    versions = []
    for cell, alternative in enumerate(alternatives):
        def cell_progress(step, total, cell=cell):
            if progress is not None:
                progress(cell * total + step, len(alternatives) * total)

        versions.append(replace(studio, index, alternative, parent=parent, progress=cell_progress, kind="explore",
                                make_current=False))
    return versions


def add_keyword(studio, keyword: str, *, parent=None, progress=None):
    """A new version (kind "edit") with a style keyword appended to the prompt (", golden hour")."""
    parent = studio._parent(parent)
    keyword = " ".join(str(keyword or "").split())
    if not prompt_edit.prompt_words(keyword):
        raise AttuneError("Pick or type a style keyword to add.")
    prompt = parent.prompt.rstrip().rstrip(",").rstrip() + ", " + keyword
    return studio.edit_prompt(prompt, edit=f"add: {keyword}", parent=parent, progress=progress)
