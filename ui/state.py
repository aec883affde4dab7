"""Per-browser-session state: study ids (URL query params or Home), the chosen model, and this user's Studio.

The URL carries pid / study / condition / sid, so a refresh rebuilds the same session: a new Streamlit session
reads the ids back from the URL and reloads that session's versions from the log.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

import streamlit as st

from ui import settings

QUERY_KEYS = {"participant_id": "pid", "study_id": "study", "condition": "condition", "session_id": "sid"}


@dataclass(frozen=True)
class StudyIds:
    participant_id: str = "anonymous"
    study_id: str = ""
    condition: str = ""
    session_id: str = ""


def new_session_id() -> str:
    return uuid.uuid4().hex


def study_ids() -> StudyIds:
    """This session's ids; on its first run they come from the URL (a study link or a refresh)."""
    if "study_ids" not in st.session_state:
        params = st.query_params
        st.session_state.study_ids = StudyIds(
            participant_id=(params.get("pid") or "anonymous").strip()[:64] or "anonymous",
            study_id=(params.get("study") or "").strip()[:64],
            condition=(params.get("condition") or "").strip()[:64],
            session_id=_clean_session_id(params.get("sid")) or new_session_id(),
        )
    return st.session_state.study_ids


def _clean_session_id(value: str | None) -> str:
    value = (value or "").strip().lower()
    return value if value and len(value) <= 64 and all(c in "0123456789abcdef-" for c in value) else ""


def set_study_ids(participant_id: str, study_id: str, condition: str) -> StudyIds:
    """Home's 'start session': new ids mean a new session id, so the log keeps sessions apart."""
    ids = StudyIds(
        participant_id=participant_id.strip()[:64] or "anonymous",
        study_id=study_id.strip()[:64],
        condition=condition.strip()[:64],
        session_id=new_session_id(),
    )
    st.session_state.study_ids = ids
    return ids


def sync_url(ids: StudyIds) -> None:
    """Write the ids into the URL (only when they differ, to avoid needless browser history entries)."""
    wanted = {QUERY_KEYS[k]: v for k, v in ids.__dict__.items() if v and not (k == "participant_id" and v == "anonymous")}
    current = {k: st.query_params.get(k) for k in QUERY_KEYS.values()}
    if any(current.get(k) != wanted.get(k) for k in QUERY_KEYS.values()):
        for key in QUERY_KEYS.values():
            if key not in wanted and key in st.query_params:
                del st.query_params[key]
        st.query_params.update(wanted)


def chosen_model() -> str | None:
    """The model this session uses: the sidebar's choice, else ATTUNE_MODEL, else the engine's built-in default."""
    if "model" not in st.session_state:
        st.session_state.model = settings.model_setting() or ""
    return st.session_state.model or None


def with_condition(ids: StudyIds, condition: str) -> StudyIds:
    return replace(ids, condition=condition)


def remembered(key: str, default):
    """Widget key for a value that survives page switches (Streamlit drops widget state of pages not shown)."""
    store = st.session_state.setdefault("remembered", {})
    widget_key = f"w_{key}"
    if widget_key not in st.session_state:
        st.session_state[widget_key] = store.get(key, default)
    return widget_key


def remember(key: str, value) -> None:
    st.session_state.setdefault("remembered", {})[key] = value
