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
POLL_SECONDS = 0.05


def progress_text(step: int, total: int, elapsed: float, steps_timed: int) -> str:
    """'Step 3/20 · about 4 s left': the ETA is the time per step so far (elapsed over steps_timed) times the rest."""
    if step >= total:
        return f"Step {total}/{total} · decoding"
    if steps_timed <= 0:
        return f"Step {step}/{total}"
    left = elapsed / steps_timed * (total - step)
    return f"Step {step}/{total} · about {left:.0f} s left"


def status(label: str, step: int, total: int, elapsed: float, steps_timed: int, ahead: int) -> tuple[float, str]:
    """What the bar shows: queued while the engine runs others' work, then steps with an ETA."""
    if total:
        return min(1.0, step / total), f"{label}: " + progress_text(step, total, elapsed, steps_timed)
    if ahead > 0:
        return 0.0, f"{label}: queued ({ahead} ahead)"
    return 0.0, f"{label}: preparing"


def run_with_progress(engine, work: Callable[[Callable[[int, int], None]], T], label: str,
                      on_done: Callable[[T], None] | None = None) -> T:
    """Call work(progress) on a thread; poll its progress and the engine's queue depth until it is done.

    on_done(result) runs on the worker right after the work, without Streamlit calls: if the user interacts
    meanwhile, Streamlit stops this page run at its next st call, but the work and on_done still complete."""
    state = {"step": 0, "total": 0, "first_step": 0, "first_step_at": None}
    outcome: dict[str, object] = {}

    def progress(step: int, total: int) -> None:
        if state["first_step_at"] is None:  # the clock starts at the first report (the lock is ours by then)
            state["first_step_at"], state["first_step"] = time.monotonic(), int(step)
        state["step"], state["total"] = int(step), int(total)

    def target() -> None:
        try:
            outcome["value"] = work(progress)
            if on_done is not None:
                on_done(outcome["value"])
        except BaseException as error:  # re-raised on the page thread, where st.error can show it
            outcome["error"] = error

    worker = threading.Thread(target=target, name=f"attune-{label}", daemon=True)
    worker.start()
    bar = st.progress(0.0, text=f"{label}: preparing")
    shown = None
    while worker.is_alive():
        worker.join(POLL_SECONDS)
        elapsed = time.monotonic() - state["first_step_at"] if state["first_step_at"] else 0.0
        # queue_depth counts the calls waiting for the engine, this one included, plus one runs: so "ahead" = depth
        ahead = int(getattr(engine, "queue_depth", 0) or 0)
        fraction, text = status(label, state["step"], state["total"], elapsed, state["step"] - state["first_step"], ahead)
        if (fraction, text) != shown:
            bar.progress(fraction, text=text)
            shown = (fraction, text)
    bar.empty()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
