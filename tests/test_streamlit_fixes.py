"""The lost-click race (ui/streamlit_fixes.py): a run that is stopped before it applies a click's widget states
hands the click's trigger on to the run that replaces it."""
from __future__ import annotations

import pytest
import streamlit
from streamlit.proto.WidgetStates_pb2 import WidgetStates
from streamlit.runtime.scriptrunner_utils.exceptions import RerunException
from streamlit.runtime.scriptrunner_utils.script_requests import RerunData
from streamlit.runtime.state.safe_session_state import SafeSessionState
from streamlit.runtime.state.session_state import SessionState

from ui import streamlit_fixes


def states(**values) -> WidgetStates:
    out = WidgetStates()
    for widget_id, value in values.items():
        widget = out.widgets.add()
        widget.id = widget_id
        if isinstance(value, bool):
            widget.trigger_value = value
        else:
            widget.double_value = value
    return out


def widget_values(widget_states: WidgetStates) -> dict:
    return {w.id: getattr(w, w.WhichOneof("value")) for w in widget_states.widgets}


def test_applied_for_the_pinned_streamlit():
    assert streamlit.__version__ == streamlit_fixes.PATCHED_VERSION, "review ui/streamlit_fixes.py for this version"
    assert streamlit_fixes.install() and streamlit_fixes.install()  # idempotent
    assert SafeSessionState.on_script_will_rerun.attune_keeps_triggers


def test_a_preempted_click_reaches_the_next_run():
    streamlit_fixes.install()
    newer = RerunData(widget_states=states(brush=25.0), page_script_hash="refine")  # a slider moved right after

    def preempt():
        raise RerunException(newer)

    safe = SafeSessionState(SessionState(), yield_callback=preempt)
    with pytest.raises(RerunException) as stopped:
        safe.on_script_will_rerun(states(apply=True, brush=24.0))  # the click's run, stopped before it applies them
    handed_on = stopped.value.rerun_data
    assert widget_values(handed_on.widget_states) == {"brush": 25.0, "apply": True}  # newer values, the click kept
    assert handed_on.page_script_hash == "refine"


def test_an_inactive_trigger_is_not_revived():
    streamlit_fixes.install()
    newer = RerunData(widget_states=states(brush=25.0, apply=False))

    def preempt():
        raise RerunException(newer)

    safe = SafeSessionState(SessionState(), yield_callback=preempt)
    with pytest.raises(RerunException) as stopped:
        safe.on_script_will_rerun(states(apply=False, brush=24.0))
    assert widget_values(stopped.value.rerun_data.widget_states) == {"brush": 25.0, "apply": False}


def test_without_preemption_the_states_are_applied():
    streamlit_fixes.install()
    state = SessionState()
    SafeSessionState(state, yield_callback=lambda: None).on_script_will_rerun(states(brush=30.0))
    assert state._new_widget_state.states["brush"].value.double_value == 30.0
