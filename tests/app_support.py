"""Helpers for the Streamlit AppTest suites: an isolated app environment and short-hands for widgets and the log."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = "a painting of a wolf sitting in front of the full moon, night sky"


@pytest.fixture
def app_env(monkeypatch, tmp_path, tiny_model_dir):
    """Tiny random model on the torch backend, 2 steps, data and log in a fresh folder."""
    monkeypatch.setenv("ATTUNE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("ATTUNE_BACKEND", "torch")
    monkeypatch.setenv("ATTUNE_DEFAULT_STEPS", "2")
    monkeypatch.setenv("ATTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("ATTUNE_RESEARCHER_PASSWORD", raising=False)
    monkeypatch.delenv("ATTUNE_CONDITIONS", raising=False)
    return tmp_path / "data"


def open_page(script: str, **query):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "Home.py"), default_timeout=120)
    for key, value in query.items():
        at.query_params[key] = value
    if script != "Home.py":  # a browser opening that page's URL directly
        at.switch_page(script)
    at.run()
    assert not at.exception, at.exception
    return at


def go(at, script: str):
    at.switch_page(script).run()
    assert not at.exception, at.exception
    return at


def button(at, label: str):
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; have {[b.label for b in at.button]}"
    return matches[0]


def click(at, label: str):
    button(at, label).click().run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def session(at):
    """The app's typed session state (ui.state.Session)."""
    return at.session_state["attune"]


def studio(at):
    return session(at).studio


def ids(at):
    return session(at).ids


def log(data_dir):
    from engine.study.log import StudyLog

    return StudyLog(Path(data_dir) / "attune_log.sqlite")


def generate_example(at):
    """Home's one-click example; returns the AppTest (now on Home with v1)."""
    click(at, "Try the example")
    assert not at.error, texts(at.error)
    return at
