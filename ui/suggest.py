"""The prompt optimiser button (PromptCharm's "Prompt" button): the suggestion is shown as a word diff against the
prompt box; nothing changes until the user accepts it. Without a configured optimiser the button says why.

Optimise is a request (ui/actions.py, handled in ui/word_edits.py); Accept and Reject do no model work, so they are
plain callbacks."""
from __future__ import annotations

import streamlit as st

from engine import diff_markdown, optimiser_unavailable_reason
from ui import state
from ui.actions import submit
from ui.state import Keys


def _accept(page) -> None:
    session = state.session()
    pending, session.prompt_suggestion = session.prompt_suggestion, None
    if pending:
        st.session_state[Keys.PROMPT] = pending["suggestion"]  # a callback runs before the box is drawn
        page.event("suggest_accept", prompt=pending["prompt"], suggestion=pending["suggestion"])


def _reject(page) -> None:
    session = state.session()
    pending, session.prompt_suggestion = session.prompt_suggestion, None
    if pending:
        page.event("suggest_reject", prompt=pending["prompt"], suggestion=pending["suggestion"])


def suggest_panel(page) -> None:
    """The optimiser button under the prompt box, and a pending suggestion with Accept / Reject."""
    if not page.enabled("suggest"):
        return
    reason = optimiser_unavailable_reason()
    button_col, text_col = st.columns([1, 4], vertical_alignment="center")
    button_col.button("Optimise prompt", icon=":material/auto_fix_high:", key="suggest_request", on_click=submit,
                      args=(page, "suggest"), disabled=reason is not None,
                      help="Rewrite the prompt with a prompt optimiser LM")
    if reason:
        text_col.caption(reason)
    pending = state.session().prompt_suggestion
    if not pending:
        return
    with st.container(border=True, key="suggest_pending"):
        st.markdown("**Suggested prompt:** " + diff_markdown(pending["prompt"], pending["suggestion"]))
        if pending["prompt"] != " ".join(str(st.session_state.get(Keys.PROMPT) or "").split()):
            st.caption("The prompt box changed since this suggestion; accepting replaces the whole prompt.")
        accept_col, reject_col = st.columns(2)
        accept_col.button("Accept suggestion", type="primary", key="suggest_accept", on_click=_accept, args=(page,))
        reject_col.button("Reject suggestion", key="suggest_reject", on_click=_reject, args=(page,))
