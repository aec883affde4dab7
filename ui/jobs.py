"""Run one generation on a worker thread while the page shows 'queued (n ahead)', then a progress bar with an ETA.

The engine serialises generations with its lock; the page thread only polls shared numbers, so every Streamlit call
stays on the script thread and a waiting user sees the queue move instead of a frozen page.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

import streamlit as st

T = TypeVar("T")
POLL_SECONDS = 0.1


def progress_text(step: int, total: int, elapsed: float) -> str:
    """'Step 3/20 · about 4 s left' from the time the first steps took."""
    if step <= 0 or total <= 0:
        return f"Step 0/{total} · starting"
    left = elapsed / step * (total - step)
    return f"Step {step}/{total} · about {left:.0f} s left" if step < total else f"Step {total}/{total} · decoding"


def run_with_progress(engine, work: Callable[[Callable[[int, int], None]], T], label: str) -> T:
    """Call work(progress) on a thread; poll its progress and the engine's queue depth until it is done."""
    state = {"step": 0, "total": 0, "first_step_at": None}
    outcome: dict[str, object] = {}

    def progress(step: int, total: int) -> None:
        if state["first_step_at"] is None:
            state["first_step_at"] = time.monotonic()
        state["step"], state["total"] = int(step), int(total)

    def target() -> None:
        try:
            outcome["value"] = work(progress)
        except BaseException as error:  # re-raised on the page thread, where st.error can show it
            outcome["error"] = error

    worker = threading.Thread(target=target, name=f"attune-{label}", daemon=True)
    worker.start()
    bar = st.progress(0.0, text=f"{label}: preparing")
    shown = None
    while worker.is_alive():
        worker.join(POLL_SECONDS)
        if state["total"]:
            elapsed = time.monotonic() - state["first_step_at"]
            fraction = min(1.0, state["step"] / state["total"])
            text = f"{label}: " + progress_text(state["step"], state["total"], elapsed)
        else:
            ahead = int(getattr(engine, "queue_depth", 0) or 0)
            fraction = 0.0
            text = f"{label}: queued ({ahead} ahead)" if ahead > 0 else f"{label}: preparing"
        if (fraction, text) != shown:
            bar.progress(fraction, text=text)
            shown = (fraction, text)
    bar.empty()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
