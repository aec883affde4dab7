"""The prompt-assist requests (see ui/actions.py): word-card edits (Delete, Replace, add a style keyword), the
Explore grid and the prompt optimiser. Each handler logs its event row, then returns a started Job or a Note.

A request's values are taken at the click (the card's version and word, the picked replacement or alternatives), so
a card edit branches from the version whose card was clicked even if another version became current meanwhile.
"""
from __future__ import annotations

import streamlit as st

from engine import AttuneError
from ui import jobs, state
from ui.state import Keys, Note


def no_snapshot(session=None) -> dict:
    """These requests pass their values to `submit` (the clicked card's word and version)."""
    return {}


def prompt_snapshot(session=None) -> dict:
    return {"prompt": str(st.session_state.get(Keys.PROMPT) or "")}


def follow_prompt(prompt: str, session: state.Session | None = None) -> None:
    """The Generate page's prompt box follows word edits and chosen alternatives; the next page setup sets it
    (before the box is drawn). A worker thread passes the session it was started from (it has no session state)."""
    (session or state.session()).prompt_update = prompt


def apply_prompt_update(session: state.Session) -> None:
    """Called by every page's setup, before any widget: hand a pending prompt to the Generate page's box."""
    if session.prompt_update is not None:
        st.session_state[Keys.PROMPT], session.prompt_update = session.prompt_update, None


def _edit(page, request, action: str, label: str, work, **payload):
    """One word edit as a Job: the new version (same seed) becomes current and the note says what changed."""
    studio, values = page.studio, request.values
    parent = studio.history.get(values["version_id"]) if values.get("version_id") in studio.history else studio.current
    if parent is None:
        return Note(None, "info", "No image yet. Generate one first.")
    page.event(action, version_id=parent.id, **payload)
    session = page.session

    def describe(new) -> Note:
        follow_prompt(new.prompt, session)
        return Note(new.id, "success", f"v{new.number} made from v{parent.number} with seed {new.seed} ({new.edit}).")

    return jobs.Job(session, request.page, label, lambda progress: work(studio, parent, progress), describe,
                    what=label, failed_version=page.current.id if page.current else None).start()


def card_delete(page, request):
    from engine import delete_word_version

    values = request.values
    return _edit(page, request, "card_delete", "Delete",
                 lambda studio, parent, progress: delete_word_version(
                     studio, values["index"], parent=parent, progress=progress),
                 word=values["word"], index=values["index"])


def card_replace(page, request):
    from engine import known_words, replace_word_version, word_alternatives

    values = request.values
    word, replacement = values["word"], values.get("replacement")
    current = page.current
    if not replacement:
        return Note(current.id if current else None, "warning", f"Pick or type a word to replace “{word}” with.")
    found = {a.text: a for a in word_alternatives(word, known_words(page.studio))}.get(replacement)
    return _edit(page, request, "card_replace", "Replace",
                 lambda studio, parent, progress: replace_word_version(
                     studio, values["index"], replacement, parent=parent, progress=progress),
                 word=word, index=values["index"], replacement=replacement,
                 relation=found.relation if found else "typed")


def card_add_keyword(page, request):
    from engine import add_keyword_version, style_keyword_list

    keyword = request.values.get("keyword")
    current = page.current
    if not keyword:
        return Note(current.id if current else None, "warning", "Pick or type a style keyword to add.")
    return _edit(page, request, "card_add_keyword", "Add keyword",
                 lambda studio, parent, progress: add_keyword_version(
                     studio, keyword, parent=parent, progress=progress),
                 keyword=keyword, listed=keyword in style_keyword_list())


def explore(page, request):
    """The Explore grid: one same-seed version per picked alternative; the parent stays current."""
    from engine import explore_grid

    studio, values = page.studio, request.values
    picked = list(values.get("alternatives") or [])
    page.event("explore", version_id=values.get("version_id"), word=values.get("word"), alternatives=picked)
    current = page.current
    if not picked:
        return Note(current.id if current else None, "error", "Pick at least one alternative for the grid.")
    if values.get("version_id") not in studio.history:
        return Note(current.id if current else None, "error", "The version to explore is no longer in this session.")
    parent = studio.history.get(values["version_id"])
    session = page.session

    def describe(cells):
        session.explore_grid = {"parent_id": parent.id, "word": values["word"],
                                "cells": [(c.id, a) for c, a in zip(cells, picked)]}
        return None  # the grid itself is the outcome: no note

    return jobs.Job(session, request.page, f"Exploring {len(picked)} alternatives",
                    lambda progress: explore_grid(studio, values["index"], picked, parent=parent, progress=progress),
                    describe, what="Explore", failed_version=current.id if current else None).start()


def suggest(page, request):
    """The prompt optimiser's rewrite, kept as a pending suggestion until the user accepts or rejects it."""
    from engine import suggest_prompt

    prompt = request.values["prompt"]
    page.event("suggest_request", prompt=prompt)
    session = page.session
    session.prompt_suggestion = None
    current = page.current

    def describe(result):
        if not result.suggestion or result.suggestion == result.prompt:
            raise AttuneError("The optimiser suggested no change to this prompt.")
        session.prompt_suggestion = result.to_dict()
        page.event("suggest_ready", prompt=result.prompt, suggestion=result.suggestion, lm=result.lm)
        return None  # the suggestion panel is the outcome: no note

    return jobs.Job(session, request.page, "Optimising the prompt", lambda progress: suggest_prompt(prompt), describe,
                    what="Prompt optimiser", failed_version=current.id if current else None).start()

