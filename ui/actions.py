"""User requests that run the engine (Generate, Apply, Inpaint): recorded at the click, then served.

A button's on_click callback records the request in the session state before any work (`submit`). Streamlit runs
callbacks at the start of the run the click triggers, before the page body; if that run is stopped (the user moved
a slider, the canvas sent its size, a widget remounted), the request is still in the session state and the next
run serves it (`serve`, called by every page's setup). A request either runs as a Job or leaves a note saying why
it did not, so no click is dropped silently.
"""
from __future__ import annotations

from typing import Callable

import streamlit as st

from ui import generate, jobs, refine, state, word_edits
from ui.state import Note, Request

# kind -> (snapshot of the widget values at the click, handler returning a started Job or a Note)
ACTIONS: dict[str, tuple[Callable[[], dict], Callable]] = {
    "generate": (generate.snapshot, generate.run),
    "apply": (refine.apply_snapshot, refine.apply),
    "inpaint": (refine.inpaint_snapshot, refine.inpaint),
    "card_delete": (word_edits.no_snapshot, word_edits.card_delete),
    "card_replace": (word_edits.no_snapshot, word_edits.card_replace),
    "card_add_keyword": (word_edits.no_snapshot, word_edits.card_add_keyword),
    "explore": (word_edits.no_snapshot, word_edits.explore),
    "suggest": (word_edits.prompt_snapshot, word_edits.suggest),
}


def submit(kind: str, page: str, values: dict | None = None) -> None:
    """The on_click callback of a button that runs the engine: record the request, nothing else."""
    session = state.session()
    session.notes.pop(page, None)  # the last outcome on this page no longer applies
    snapshot, _ = ACTIONS[kind]
    session.requests.append(Request(kind=kind, page=page, values=values if values is not None else snapshot()))


def serve(page) -> None:
    """Follow a running job to its end, run the waiting requests in order, then show this page's note."""
    session = state.session()
    jobs.follow(session, page.engine)
    while session.requests and page.studio is not None:
        request = session.requests.pop(0)
        _, handler = ACTIONS[request.kind]
        current = page.current
        try:
            outcome = handler(page, request)  # no Streamlit calls before the job starts: nothing can stop it midway
        except Exception as error:
            outcome = jobs.failure_note(request.kind.capitalize(), error, current.id if current else None)
        if isinstance(outcome, Note):
            session.notes[request.page] = outcome
        else:
            jobs.follow(session, page.engine)
    word_edits.apply_prompt_update()  # a word edit's prompt, before the Generate page draws its box
    show_note(page)


def show_note(page) -> None:
    note = state.session().notes.get(page.name)
    current = page.current
    if note is not None and (note.version_id is None or (current is not None and current.id == note.version_id)):
        getattr(st, note.kind)(note.text)
