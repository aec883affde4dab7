"""Per-browser-session state in one typed object, and the names of the widget keys the app reads.

`session()` is this browser session's `Session` (one st.session_state entry). Widget values live under the widget
keys in `Keys`; widgets whose value must survive a page switch use Streamlit's `persist_state="session"`.
The URL carries pid / study / condition / sid, so a refresh rebuilds the same session: a new Streamlit session
reads the ids back from the URL and reloads that session's versions from the log.
"""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import streamlit as st

from ui import settings

QUERY_KEYS = {"participant_id": "pid", "study_id": "study", "condition": "condition", "session_id": "sid"}
SESSION_KEY = "attune"


@dataclass(frozen=True)
class StudyIds:
    participant_id: str = "anonymous"
    study_id: str = ""
    condition: str = ""
    session_id: str = ""


@dataclass
class Note:
    """A result message that stays on its page while its version is current (extra reruns would wipe a message
    written only once) and until the page's next request."""
    version_id: str | None
    kind: str  # an st function: success, info, warning, error
    text: str


@dataclass
class Request:
    """A user's Generate / Apply / Inpaint, recorded by the button's callback before any work runs."""
    kind: str
    page: str  # whose note reports the outcome
    values: dict[str, Any]  # the widget values at the click
    reads: dict[str, str] = field(default_factory=dict)  # value name -> widget key, still to be read into values


@dataclass
class Session:
    ids: StudyIds | None = None
    model: str | None = None  # None: not chosen yet (ATTUNE_MODEL applies); "" the built-in model
    studio: Any = None  # engine.Studio of this session
    studio_key: tuple | None = None
    last_page: str = ""
    notes: dict[str, Note] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)  # waiting, oldest first
    job: Any = None  # ui.jobs.Job: the request running on a worker thread
    lock: Any = field(default_factory=threading.Lock, repr=False, compare=False)  # taking a request off the queue
    generate_defaults: tuple | None = None  # the model defaults the Generate widgets started at (ui/generate.py)
    # Refine
    phrases: list[str] = field(default_factory=list)
    sliders_version: str | None = None  # the version whose weights the sliders were set from
    sliders_logged: dict[str, float] = field(default_factory=dict)
    canvas_nonce: int = 0
    mask_prefill: dict | None = None  # {"version", "mask", "word"}
    mask_drawn: dict | None = None  # {"version", "mask", "strokes"}
    strokes_seen: dict[str, int] = field(default_factory=dict)
    # Hover heatmaps (ui/hover): component key -> {"pinned", "mount", "seq", "events"}
    hover: dict[str, dict] = field(default_factory=dict)
    # Prompt assistance (word cards, Explore, the optimiser)
    prompt_update: str | None = None  # a prompt for the Generate box, set before the box is drawn (ui/actions.serve)
    explore_target: dict | None = None  # {"version_id", "index", "word"}: the word whose Explore panel is open
    explore_grid: dict | None = None  # {"parent_id", "word", "cells": [(version id, alternative)]}
    prompt_suggestion: dict | None = None  # the optimiser's pending suggestion (engine Suggestion.to_dict())
    # Researcher
    researcher_ok: bool = False


class Keys:
    """Widget keys read outside their widget's own line."""
    PROMPT, NEGATIVE, SYNTAX = "gen_prompt", "gen_negative", "gen_syntax"
    SEED, STEPS, GUIDANCE = "gen_seed", "gen_steps", "gen_guidance"
    WIDTH, HEIGHT, SCHEDULER = "gen_width", "gen_height", "gen_scheduler"
    METHOD, PHRASE, LAYOUT, ALL_WORDS = "refine_method", "refine_phrase", "refine_layout", "refine_all_words"
    MASK_WORD, MASK_TOOL, BRUSH = "mask_word", "mask_tool", "mask_brush"
    INPAINT_PROMPT, MASK_BLUR, ONLY_MASKED, PADDING, AUTO_CROP = (
        "inpaint_prompt", "inpaint_mask_blur", "inpaint_only_masked", "inpaint_padding", "inpaint_auto_crop")
    COMPARE_PICK, COMPARE_UPLOAD = "compare_pick", "compare_upload"
    SIDEBAR_MODEL = "sidebar_model"

    @staticmethod
    def weight(word: str) -> str:
        return f"weight_{word}"


def session() -> Session:
    if SESSION_KEY not in st.session_state:
        st.session_state[SESSION_KEY] = Session()
    return st.session_state[SESSION_KEY]


def new_session_id() -> str:
    return uuid.uuid4().hex


def study_ids() -> StudyIds:
    """This session's ids; on its first run they come from the URL (a study link or a refresh)."""
    state = session()
    if state.ids is None:
        params = st.query_params
        state.ids = StudyIds(
            participant_id=(params.get("pid") or "anonymous").strip()[:64] or "anonymous",
            study_id=(params.get("study") or "").strip()[:64],
            condition=(params.get("condition") or "").strip()[:64],
            session_id=_clean_session_id(params.get("sid")) or new_session_id(),
        )
    return state.ids


def _clean_session_id(value: str | None) -> str:
    value = (value or "").strip().lower()
    return value if value and len(value) <= 64 and all(c in "0123456789abcdef-" for c in value) else ""


def set_study_ids(participant_id: str, study_id: str, condition: str) -> StudyIds:
    """Home's 'start session': new ids mean a new session id, so the log keeps sessions apart."""
    state = session()
    state.ids = StudyIds(
        participant_id=participant_id.strip()[:64] or "anonymous",
        study_id=study_id.strip()[:64],
        condition=condition.strip()[:64],
        session_id=new_session_id(),
    )
    state.last_page = ""
    return state.ids


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
    state = session()
    if state.model is None:
        state.model = settings.model_setting() or ""
    return state.model or None


def with_condition(ids: StudyIds, condition: str) -> StudyIds:
    return replace(ids, condition=condition)
