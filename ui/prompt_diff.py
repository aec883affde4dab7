"""Compare: the word-level prompt changes between the first chosen version and each other one (engine diff)."""
from __future__ import annotations

import streamlit as st

from engine import diff_markdown
from ui import history


def prompt_diff(versions: list) -> None:
    if len(versions) < 2:
        return
    reference = versions[0]
    changed = [v for v in versions[1:] if v.prompt != reference.prompt]
    st.subheader("Prompt changes")
    if not changed:
        st.caption("Every version shown has the same prompt.")
        return
    for version in changed:
        st.markdown(f"**{history.label(reference)} → {history.label(version)}:** "
                    + diff_markdown(reference.prompt, version.prompt))
