"""The prompt optimiser button (PromptCharm's "Prompt" button): the suggestion is shown as a word diff against the
prompt box; nothing changes until the user accepts it. Without a configured optimiser the button says why."""
from __future__ import annotations

import streamlit as st

from engine.errors import AttuneError
from engine.prompt_edit import diff_markdown
from ui.errors import user_errors
from ui.state import remember

PROMPT_KEY = "w_prompt"


def _request(page) -> None:
    from engine.suggest import suggest

    prompt = str(st.session_state.get(PROMPT_KEY) or "")
    page.event("suggest_request", prompt=prompt)
    st.session_state.pop("prompt_suggestion", None)
    with user_errors("Prompt optimiser"):
        with st.spinner("The optimiser is rewriting the prompt…"):
            result = suggest(prompt)
        if not result.suggestion or result.suggestion == result.prompt:
            raise AttuneError("The optimiser suggested no change to this prompt.")
        st.session_state["prompt_suggestion"] = result.to_dict()
        page.event("suggest_ready", prompt=result.prompt, suggestion=result.suggestion, lm=result.lm)


def _accept(page) -> None:
    pending = st.session_state.pop("prompt_suggestion", None)
    if pending:
        st.session_state[PROMPT_KEY] = pending["suggestion"]
        remember("prompt", pending["suggestion"])
        page.event("suggest_accept", prompt=pending["prompt"], suggestion=pending["suggestion"])


def _reject(page) -> None:
    pending = st.session_state.pop("prompt_suggestion", None)
    if pending:
        page.event("suggest_reject", prompt=pending["prompt"], suggestion=pending["suggestion"])


def suggest_panel(page) -> None:
    """The optimiser button under the prompt box, and a pending suggestion with Accept / Reject."""
    if not page.enabled("suggest"):
        return
    from engine.suggest import unavailable_reason

    reason = unavailable_reason()
    button_col, text_col = st.columns([1, 4], vertical_alignment="center")
    button_col.button("Optimise prompt", icon=":material/auto_fix_high:", key="suggest_request", on_click=_request,
                      args=(page,), disabled=reason is not None, help="Rewrite the prompt with a prompt optimiser LM")
    if reason:
        text_col.caption(reason)
    pending = st.session_state.get("prompt_suggestion")
    if not pending:
        return
    with st.container(border=True, key="suggest_pending"):
        st.markdown("**Suggested prompt:** " + diff_markdown(pending["prompt"], pending["suggestion"]))
        if pending["prompt"] != " ".join(str(st.session_state.get(PROMPT_KEY) or "").split()):
            st.caption("The prompt box changed since this suggestion; accepting replaces the whole prompt.")
        accept_col, reject_col = st.columns(2)
        accept_col.button("Accept suggestion", type="primary", key="suggest_accept", on_click=_accept, args=(page,))
        reject_col.button("Reject suggestion", key="suggest_reject", on_click=_reject, args=(page,))
