"""Shared 'generate' action used by Home's example button and the Generate page."""
from __future__ import annotations

import streamlit as st

from ui.errors import user_errors
from ui.jobs import run_with_progress


def generate(page, params, *, source: str) -> object | None:
    """Run one text-to-image through the Studio with queue/progress display; returns the new Version or None."""
    version = None
    with user_errors("Generate"):
        version = run_with_progress(page.engine, lambda progress: page.studio.generate(params, progress=progress), "Generating")
        st.session_state["last_generated"] = version.id
    return version
