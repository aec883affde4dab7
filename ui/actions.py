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

from ui import generate, jobs, refine, word_edits
from ui.state import Note, Request

# kind -> (snapshot(session) of the widget values at the click, handler(page, request) -> a started Job or a Note;
# handlers make no Streamlit call)
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


def submit(page, kind: str, values: dict | None = None, reads: dict[str, str] | None = None) -> None:
    """The on_click callback of a Generate / Apply / Inpaint button: record the request, nothing else.

    Any st.session_state access is a point where Streamlit may stop the run (callbacks included), so the request
    is recorded first, through the page's Session object (no Streamlit call); the widget values follow: the
    action's snapshot when `values` is None, then `reads` (value name -> widget key). If the callback is stopped
    while reading them, the request stays, and serve() reads what is missing when it runs it."""
    request = Request(kind=kind, page=page.name, values=values, reads=dict(reads or {}))
    page.session.requests.append(request)
    page.session.notes.pop(page.name, None)  # the last outcome on this page no longer applies
    _read_widgets(page.session, request)


def _read_widgets(session, request: Request) -> None:
    """Fill in the request's widget values that are still unread (Streamlit calls: a run may stop here)."""
    if request.values is None:
        request.values = ACTIONS[request.kind][0](session)
    for name, key in list(request.reads.items()):
        request.values[name] = st.session_state.get(key)
        del request.reads[name]


def serve(page) -> None:
    """Follow a running job to its end, run the waiting requests in order, then show this page's note (a one-screen
    page shows it itself, inside its layout)."""
    session = page.session
    jobs.follow(session, page.engine, page.progress_slot)
    while page.studio is not None and (outcome := _take(page, session)) is not None:
        if not isinstance(outcome, Note):
            jobs.follow(session, page.engine, page.progress_slot)
    word_edits.apply_prompt_update(session)  # a word edit's prompt, before the Generate page draws its box
    if not page.one_screen:
        show_note(page)


def _take(page, session):
    """Run the oldest waiting request: its started Job or its Note; None when none waits.

    Under the session's lock, so two page runs of one session never take the same request. From the handler to the
    dequeue no Streamlit call is made, so a stop cannot start a job and keep its request (or lose it)."""
    with session.lock:
        if not session.requests:
            return None
        request = session.requests[0]
        handler = ACTIONS[request.kind][1]
        _read_widgets(session, request)  # its callback may have been stopped before it read the widgets
        current = page.current
        try:
            outcome = handler(page, request)
        except Exception as error:
            outcome = jobs.failure_note(request.kind.capitalize(), error, current.id if current else None)
        session.requests.pop(0)
        if isinstance(outcome, Note):
            session.notes[request.page] = outcome
        return outcome


def show_note(page) -> None:
    page.note_shown = True
    note = page.session.notes.get(page.name)
    current = page.current
    if note is not None and (note.version_id is None or (current is not None and current.id == note.version_id)):
        getattr(st, note.kind)(note.text)
