"""Run one engine request on a worker thread; past SHOW_AFTER_SECONDS the page shows 'queued (n ahead)', then a progress
bar with an ETA.

The Job lives in the session state, not in the page run: Streamlit stops a page run at its next st call when the
user interacts, but the worker keeps going, writes its outcome (a Note) into the session state itself, and the
next page run finds the job and follows it to the end. So a result is never lost with the run that started it.
The engine serialises generations with its lock; the page thread only polls shared numbers, so every Streamlit
call stays on the script thread.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import streamlit as st

from engine import AttuneError
from ui import settings
from ui.state import Note, Session

POLL_SECONDS = 0.05
# The bar is redrawn at most this often while steps count up: each redraw is a message the browser re-renders the
# page for, and on a small server that CPU is taken from the engine (20 redraws for 20 steps slowed the image).
REDRAW_SECONDS = 0.25
# The bar appears only for work that outlasts this: under about a second people need no progress feedback (Nielsen's
# response-time limits), and on 2 cores the bar's messages and the browser's re-renders slowed a 10-step image by
# about 0.1 s (bench/results/app_progress_delay.json).
SHOW_AFTER_SECONDS = 0.5  # $ATTUNE_PROGRESS_AFTER overrides it
logger = logging.getLogger("attune.app")


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


def redraw_due(fraction: float, since_last_draw: float) -> bool:
    """Whether a changed bar is drawn now: at once while queued or preparing (0) and at decoding (1), otherwise
    once REDRAW_SECONDS have passed since the last draw."""
    return fraction <= 0.0 or fraction >= 1.0 or since_last_draw >= REDRAW_SECONDS


def failure_note(what: str, error: BaseException, version_id: str | None) -> Note:
    """An AttuneError shows its own message, anything else a one-line summary (details go to the server log)."""
    if isinstance(error, AttuneError):
        return Note(version_id, "error", str(error))
    logger.error("%s failed", what, exc_info=error)
    return Note(version_id, "error", f"{what} failed: {type(error).__name__}: {error}")


class Job:
    """work(progress) on a daemon thread; describe(result) -> Note, also on the thread, into session.notes[page].
    A failure becomes an error note "{what} failed: …" shown while `failed_version` is current."""

    def __init__(self, session: Session, page: str, label: str, work: Callable, describe: Callable[[object], Note],
                 *, what: str, failed_version: str | None = None):
        self.label, self.page, self.what = label, page, what
        self.step = self.total = self.first_step = 0
        self.first_step_at: float | None = None
        self.done = threading.Event()
        self._session, self._work, self._describe, self._failed_version = session, work, describe, failed_version
        self.thread = threading.Thread(target=self._run, name=f"attune-{label}", daemon=True)

    def start(self) -> "Job":
        self._session.job = self
        self.thread.start()
        return self

    def progress(self, step: int, total: int) -> None:
        if self.first_step_at is None:  # the clock starts at the first report (the engine lock is ours by then)
            self.first_step_at, self.first_step = time.monotonic(), int(step)
        self.step, self.total = int(step), int(total)

    def _run(self) -> None:
        try:
            note = self._describe(self._work(self.progress))
        except BaseException as error:  # reported as the page's note; the page thread shows it
            note = failure_note(self.what, error, self._failed_version)
        self._session.notes[self.page] = note
        self.done.set()


def follow(session: Session, engine, slot=None) -> None:
    """Show the running job's progress until it is done, then forget it (its note stays in the session). `slot`: an
    st.empty() every run has at the same place, so the bar never shifts the page's later elements (a shift leaves
    the last run's copies on screen, stale, until the run ends)."""
    job = session.job
    if job is None:
        return
    if not job.done.wait(settings.progress_after(SHOW_AFTER_SECONDS)):  # short work finishes without a bar
        bar = (slot if slot is not None else st).progress(0.0, text=f"{job.label}: preparing")
        shown, drawn_at = None, float("-inf")
        while not job.done.wait(POLL_SECONDS):
            now = time.monotonic()
            elapsed = now - job.first_step_at if job.first_step_at else 0.0
            # queue_depth counts the calls waiting for the engine plus the one running, so "ahead" = depth
            ahead = int(engine.queue_depth) if engine is not None else 0
            fraction, text = status(job.label, job.step, job.total, elapsed, job.step - job.first_step, ahead)
            if (fraction, text) != shown and redraw_due(fraction, now - drawn_at):
                bar.progress(fraction, text=text)
                shown, drawn_at = (fraction, text), now
        bar.empty()
    if session.job is job:
        session.job = None
