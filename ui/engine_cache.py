"""Process-wide heavy objects, shared by every browser session through st.cache_resource.

The Attune engine is thread-safe (it serialises generations with a lock and reports queue depth); the StudyLog is
SQLite, safe with several sessions writing at once. Per-user state (the Studio) lives in st.session_state instead.
"""
from __future__ import annotations

import threading

import streamlit as st


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def shared_engine(model: str | None, backend: str = "auto"):
    from engine import make_engine, set_exporter

    set_exporter(export_onnx)
    return make_engine(model, backend=backend)  # $ATTUNE_SERVER set: an HTTP client of engine.remote.server


def export_onnx(components, progress=None):
    """The exporter the engine's ONNX runner uses: export/onnx.py, imported only when a model must be exported."""
    from export.onnx import ensure_exported

    return ensure_exported(components, progress=progress)


@st.cache_resource
def shared_log(db_path: str):
    from engine import StudyLog

    return StudyLog(db_path)


@st.cache_resource(show_spinner=False)
def warm_imports() -> threading.Thread:
    """Once per process, after the first page is drawn: import pandas and pyarrow on a background thread. The
    tables of Compare, Researcher and replay need them (~0.3 s of CPU), and the first page does not, so neither
    waits for that import. (The version card's parameters no longer use st.table: ui/cards.py.)"""
    thread = threading.Thread(target=_import_table_libraries, name="attune-warm-imports", daemon=True)
    thread.start()
    return thread


def _import_table_libraries() -> None:
    try:
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:  # st.table says so itself when it runs
        pass
