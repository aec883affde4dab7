"""Explore: for one word, a grid of the same prompt and seed with the word replaced by each alternative; picking a
cell makes it the current version. The grid's cells are logged as child versions (kind "explore") as they are made.

Generate grid is a request (ui/actions.py, handled in ui/word_edits.py); opening, closing and choosing a cell that is
already made do no engine work, so they are plain callbacks."""
from __future__ import annotations

import streamlit as st

from engine import MAX_GRID, AttuneError, explore_choices, known_words, word_alternatives
from ui import state
from ui.actions import submit
from ui.state import Note
from ui.word_edits import follow_prompt

PER_ROW = 4


def open_explore(page, version_id: str, index: int, word: str) -> None:
    state.session().explore_target = {"version_id": version_id, "index": index, "word": word}
    page.event("explore_open", version_id=version_id, word=word, index=index)


def _close(page) -> None:
    session = state.session()
    session.explore_target = session.explore_grid = None
    page.event("explore_close")


def _run_grid(page, key: str) -> None:
    """Generate grid's click: the request carries the target word and the alternatives picked now."""
    target = page.session.explore_target or {}  # no st call before the request is recorded (ui/actions.py)
    submit(page, "explore", dict(target), reads={"alternatives": key})


def _choose(page, version_id: str, alternative: str, word: str) -> None:
    session = state.session()
    try:
        version = page.studio.restore(version_id)
    except AttuneError as error:
        current = page.current
        session.notes[page.name] = Note(current.id if current else None, "error", str(error))
        return
    page.event("alternative_chosen", version_id=version_id, word=word, alternative=alternative,
               parent_id=version.parent_id)
    follow_prompt(version.prompt)
    session.notes[page.name] = Note(version.id, "success",
                                    f"v{version.number} (“{alternative}” for “{word}”) is now the current version.")


def explore_panel(page) -> None:
    studio = page.studio
    session = state.session()
    target = session.explore_target
    if not target or target["version_id"] not in studio.history:
        return
    parent = studio.history.get(target["version_id"])
    word = target["word"]
    known = known_words(studio)
    with st.container(border=True, key="explore_panel"):
        st.markdown(f"**Explore “{word}”** in v{parent.number}'s prompt, seed {parent.seed}")
        options = {a.text: a for a in word_alternatives(word, known)}
        try:
            default = [a.text for a in explore_choices(word, known, 4)]
        except AttuneError:
            default = []
        key = f"explore_pick_{parent.id}_{target['index']}"

        def show(text: str) -> str:
            found = options.get(text)
            return text + (" (unknown to this model)" if found is not None and found.known is False else "")

        st.multiselect("Alternatives (type to add your own)", list(options), default=default, key=key,
                       max_selections=MAX_GRID, accept_new_options=True, format_func=show)
        if not options:
            st.caption(f"No alternatives known for “{word}”: type your own.")
        go_col, close_col = st.columns([1, 1])
        go_col.button("Generate grid", type="primary", icon=":material/grid_view:", key="explore_run",
                      on_click=_run_grid, args=(page, key))
        close_col.button("Close", key="explore_close", on_click=_close, args=(page,))
        grid = session.explore_grid
        if not grid or grid["parent_id"] != parent.id:
            return
        current = studio.current.id if studio.current is not None else None
        cells = [(studio.history.get(vid), alt) for vid, alt in grid["cells"] if vid in studio.history]
        st.caption(f"Same prompt and seed as v{parent.number}, “{grid['word']}” replaced. Pick one to continue from it.")
        for start in range(0, len(cells), PER_ROW):
            for column, (cell, alternative) in zip(st.columns(PER_ROW), cells[start:start + PER_ROW]):
                with column:
                    st.image(str(cell.image_path), caption=f"v{cell.number}: {alternative}", width="stretch")
                    st.button("Use this" if cell.id != current else "Current", key=f"explore_use_{cell.id}",
                              disabled=cell.id == current, on_click=_choose, args=(page, cell.id, alternative, grid["word"]))
