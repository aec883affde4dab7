"""Ask the participant to rate the current version 1-5 (a study condition with `rating = true`); each rating is an
event row ("rate", version_id, stars) that the researcher dashboard reads."""
from __future__ import annotations

import streamlit as st


def _log(page, version_id: str, key: str) -> None:
    value = st.session_state.get(key)
    if value is not None:
        page.event("rate", version_id=version_id, stars=int(value) + 1)


def rating(page) -> None:
    studio = page.studio
    version = studio.current if studio is not None else None
    if version is None or not page.enabled("rating"):
        return
    key = f"rating_{version.id}"
    st.caption(f"How well does v{version.number} match what you want? (1–5 stars)")
    st.feedback("stars", key=key, on_change=_log, args=(page, version.id, key))
