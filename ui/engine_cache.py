"""Process-wide heavy objects, shared by every browser session through st.cache_resource.

The Attune engine is thread-safe (it serialises generations with a lock and reports queue depth); the StudyLog is
SQLite, safe with several sessions writing at once. Per-user state (the Studio) lives in st.session_state instead.
"""
from __future__ import annotations

import streamlit as st


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def shared_engine(model: str | None, backend: str = "auto"):
    from engine.remote import make_engine

    return make_engine(model, backend=backend)  # $ATTUNE_SERVER set: an HTTP client of engine.serve


@st.cache_resource
def shared_log(db_path: str):
    from engine.log import StudyLog

    return StudyLog(db_path)
