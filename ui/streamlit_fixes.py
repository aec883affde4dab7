"""A fix for a Streamlit race that dropped button clicks (found with a traced browser run; docs/app.md).

The race: a click reaches the server while a page run is going. At its next `st` call the run stops and Streamlit
starts a new run with the click's widget states (the button's trigger set). The new run's first step,
`SafeSessionState.on_script_will_rerun`, checks for pending requests *before* it applies those states. If the user
(or a component, such as the mask canvas) sent another interaction in that gap, that check stops the new run too
and starts one from the newer request alone. The newer request never carried the trigger (the browser sends a
trigger once), and Streamlit merges triggers only between requests that are both still waiting, not with one it
has already taken. So the click is gone: its callback never runs. Under CPU load the gap lasted over a second; a
click followed by a slider move was lost in about 1 of 12 tries.

The fix: when that first check stops the run, the click's active triggers are merged into the newer request, with
Streamlit's own merge (the one it uses for two waiting requests), so the next run calls the button's callback.
It patches one private method, so it is applied only to the Streamlit version it was written and tested against
(`PATCHED_VERSION`, pinned in requirements.txt); with any other version `install()` changes nothing and says so in
the server log, and tests/test_streamlit_fixes.py fails, so an upgrade gets reviewed. `ATTUNE_STREAMLIT_FIX=0` leaves
Streamlit as it is (`python -m bench.click_race` compares both).
"""
from __future__ import annotations

import functools
import logging
import os

import streamlit

PATCHED_VERSION = "1.67.0"
logger = logging.getLogger("attune.app")


def keep_triggers(preempted_states, replay_trigger_states, replay_trigger_values, newer):
    """`newer` (RerunData) with the preempted run's active triggers merged in, as Streamlit merges two waiting
    requests."""
    from streamlit.runtime.scriptrunner_utils.script_requests import RerunData, ScriptRequests

    merged = ScriptRequests()
    merged.request_rerun(RerunData(query_string=newer.query_string, widget_states=preempted_states,
                                   page_script_hash=newer.page_script_hash, page_name=newer.page_name,
                                   replay_trigger_states=replay_trigger_states,
                                   replay_trigger_values=replay_trigger_values))
    merged.request_rerun(newer)
    return merged._rerun_data


def install() -> bool:
    """Patch SafeSessionState.on_script_will_rerun once per process; True when the fix is active."""
    from streamlit.runtime.scriptrunner_utils.exceptions import RerunException
    from streamlit.runtime.state.safe_session_state import SafeSessionState

    original = SafeSessionState.on_script_will_rerun
    if getattr(original, "attune_keeps_triggers", False):
        return True
    if os.environ.get("ATTUNE_STREAMLIT_FIX") == "0":  # bench/click_race.py measures the app without the fix
        return False
    if streamlit.__version__ != PATCHED_VERSION:
        logger.warning("Streamlit %s: the lost-click fix (ui/streamlit_fixes.py) is for %s and is not applied",
                       streamlit.__version__, PATCHED_VERSION)
        return False

    @functools.wraps(original)
    def on_script_will_rerun(self, fresh_widget_states, *, replay_trigger_states=None, replay_trigger_values=None,
                             is_history_navigation=False):
        # The same two steps as Streamlit's own method, with the preemption caught between them.
        try:
            self._yield_callback()
        except RerunException as newer:
            newer.rerun_data = keep_triggers(fresh_widget_states, replay_trigger_states, replay_trigger_values,
                                             newer.rerun_data)
            raise
        with self._lock:
            self._state.on_script_will_rerun(
                fresh_widget_states, replay_trigger_states=replay_trigger_states,
                replay_trigger_values=replay_trigger_values, is_history_navigation=is_history_navigation)

    on_script_will_rerun.attune_keeps_triggers = True
    SafeSessionState.on_script_will_rerun = on_script_will_rerun
    return True
