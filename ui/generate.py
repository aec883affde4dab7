"""Shared 'generate' action used by Home's example button and the Generate page."""
from __future__ import annotations

import streamlit as st

from ui import page as app
from ui.errors import user_errors
from ui.jobs import run_with_progress


def generate(page, params, *, message: str = "Version {number} is ready.") -> object | None:
    """Run one text-to-image through the Studio with queue/progress display; returns the new Version or None.
    The result message is kept as the page's note, so it survives the reruns that follow."""
    store = app.notes()

    def done(version) -> None:
        store[page.name] = (version.id, "success", message.format(number=version.number))

    with user_errors("Generate"):
        version = run_with_progress(page.engine, lambda progress: page.studio.generate(params, progress=progress),
                                    "Generating", done)
        st.success(store[page.name][2])
        return version
    return None
