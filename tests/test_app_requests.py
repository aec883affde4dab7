"""No lost clicks: Apply / Inpaint / Generate are recorded by the button's callback and served by a later run when
the run the click started is stopped (Streamlit stops a run at its next st call when the user interacts)."""
from __future__ import annotations

import threading

import streamlit as st

from tests.app_support import app_env, button, generate_example, log, open_page, go, session, studio, texts  # noqa: F401

IDS = dict(pid="P01", study="s", condition="full")


def refine_with_moon_up():
    at = open_page("Home.py", **IDS)
    generate_example(at)
    go(at, "pages/3_Refine.py")
    at.slider(key="weight_moon").set_value(1.5).run()
    return at


def test_a_click_whose_run_stops_before_the_page_body_is_served_by_the_next_run(app_env, monkeypatch):
    from ui import actions

    at = refine_with_moon_up()
    v1 = studio(at).current
    real_serve = actions.serve
    monkeypatch.setattr(actions, "serve", lambda page: st.stop())  # the click's run ends right after its callbacks
    button(at, "Apply").click().run()
    assert studio(at).current.id == v1.id and [r.kind for r in session(at).requests] == ["apply"]
    monkeypatch.setattr(actions, "serve", real_serve)
    at.run()  # any later run (a slider, the canvas, a page switch) serves it
    assert not at.exception and not at.error, texts(at.error)
    v2 = studio(at).current
    assert v2.number == 2 and v2.parent_id == v1.id and v2.weights == {"moon": 1.5}
    assert any("v2 made from v1 with seed 7" in s for s in texts(at.success)), texts(at.success)
    assert not session(at).requests and len(log(app_env).versions_df()) == 2


def test_a_run_stopped_while_the_worker_runs_still_gets_the_result(app_env, monkeypatch):
    from ui import jobs

    at = refine_with_moon_up()
    engine_studio = studio(at)
    gate = threading.Event()
    real_reweight = engine_studio.reweight

    def slow_reweight(*args, **kwargs):
        gate.wait(timeout=60)
        return real_reweight(*args, **kwargs)

    monkeypatch.setattr(engine_studio, "reweight", slow_reweight)
    real_follow = jobs.follow

    def interrupted(session_state, engine, slot=None):  # the user interacts while the page polls the job
        if session_state.job is not None and not session_state.job.done.is_set():
            st.stop()
        real_follow(session_state, engine, slot)

    monkeypatch.setattr(jobs, "follow", interrupted)
    button(at, "Apply").click().run()
    job = session(at).job
    assert job is not None and not job.done.is_set() and studio(at).current.number == 1
    gate.set()
    assert job.done.wait(timeout=120)
    monkeypatch.setattr(jobs, "follow", real_follow)
    at.run()
    assert session(at).job is None and studio(at).current.number == 2
    assert any("v2 made from v1" in s for s in texts(at.success)), texts(at.success)
    assert len(log(app_env).versions_df()) == 2  # made once


def test_a_refused_request_says_why_and_the_reason_stays(app_env):
    at = refine_with_moon_up()
    state = session(at)
    button(at, "Apply").click().run()
    assert studio(at).current.number == 2
    button(at, "Apply").click().run()  # the sliders already hold v2's weights: nothing to do, and the page says so
    assert any("Nothing changed" in i.value for i in at.info) and not state.requests
    at.run()  # the reason outlives the extra reruns the canvas and sliders cause
    assert any("Nothing changed" in i.value for i in at.info)
    assert len(log(app_env).versions_df()) == 2


def test_a_callback_stopped_before_it_read_the_widgets_still_leaves_its_request(app_env, monkeypatch):
    """Streamlit can stop a run at any st.session_state access, inside callbacks too: the request is recorded
    first, and the widget values are read when it is served."""
    from ui import actions, refine

    at = refine_with_moon_up()
    calls = []

    def stopped_once(session_state):
        calls.append(1)
        if len(calls) == 1:
            st.rerun()  # raises inside the callback, as a stop at a yield point would
        return refine.apply_snapshot(session_state)

    monkeypatch.setitem(actions.ACTIONS, "apply", (stopped_once, refine.apply))
    button(at, "Apply").click().run()
    assert not at.exception, at.exception
    assert len(calls) == 2  # the callback's read died; serve() read the widgets instead
    assert studio(at).current.weights == {"moon": 1.5} and not session(at).requests


def test_request_handlers_make_no_streamlit_calls():
    """From taking a request off the queue to starting its job nothing may give Streamlit a point to stop the run."""
    import ast
    import inspect

    from ui import actions

    for _, handler in actions.ACTIONS.values():
        tree = ast.parse(inspect.getsource(handler))
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert "st" not in names, handler.__name__
        assert not any(isinstance(n, ast.Attribute) and n.attr == "session" and isinstance(n.value, ast.Name)
                       and n.value.id == "state" for n in ast.walk(tree)), handler.__name__


def test_two_runs_of_one_session_never_take_the_same_request(monkeypatch):
    """A stopped run can still be running when the next starts (Streamlit's fast reruns): one request, one outcome."""
    import time

    from ui import actions
    from ui.state import Note, Request, Session

    taken = []

    def slow_handler(page, request):
        taken.append(request)
        time.sleep(0.05)
        return Note(None, "info", "done")

    monkeypatch.setitem(actions.ACTIONS, "apply", (lambda session: {}, slow_handler))
    session = Session(requests=[Request(kind="apply", page="refine", values={})])

    class Page:
        current = None

    outcomes = []
    threads = [threading.Thread(target=lambda: outcomes.append(actions._take(Page, session))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(taken) == 1 and sum(o is not None for o in outcomes) == 1 and not session.requests
    assert session.notes["refine"].text == "done"


def test_the_app_config_turns_fast_reruns_off():
    """With fast reruns a new interaction starts a second run at once and stops the first, even before its button
    callbacks ran: the click is lost. The app's config keeps Streamlit from doing that."""
    import tomllib
    from pathlib import Path

    config = tomllib.loads((Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["fastReruns"] is False


def test_a_card_click_stopped_before_it_read_its_picker_still_leaves_its_request(monkeypatch):
    """Replace / Add keyword / Explore read their picker after the request is recorded; a stop there (at the
    st.session_state access) leaves the request, and serving it reads the picker then."""
    from types import SimpleNamespace

    from ui import actions
    from ui.state import Session

    session_state = Session()
    page = SimpleNamespace(name="generate", session=session_state)
    widgets = {"card_pick": "crescent moon"}

    class StoppedOnce(dict):
        stops = 1

        def get(self, key, default=None):
            if self.stops:
                self.stops -= 1
                raise RuntimeError("stopped")  # as Streamlit's stop at a yield point
            return widgets.get(key, default)

    monkeypatch.setattr(actions.st, "session_state", StoppedOnce())
    try:
        actions.submit(page, "card_replace", {"version_id": "v1", "index": 3, "word": "moon"},
                       reads={"replacement": "card_pick"})
    except RuntimeError:
        pass
    [request] = session_state.requests
    assert request.reads == {"replacement": "card_pick"} and "replacement" not in request.values
    actions._read_widgets(session_state, request)  # what serving it does first
    assert request.values == {"version_id": "v1", "index": 3, "word": "moon", "replacement": "crescent moon"}
    assert request.reads == {}
