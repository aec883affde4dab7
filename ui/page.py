"""Every page runs inside `with app_page(name, title) as page:`.

On entry: page config, study ids, condition, the shared engine and log, this user's Studio, a page-view event, a
slot for the version strip, then the session's requests (a running job is followed to its end, waiting Generate /
Apply / Inpaint requests are run) and this page's note. On a normal exit, and on `st.stop()` (so guard clauses
work): the sidebar and the version strip (filled last, so it shows this run's new version).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import streamlit as st
from streamlit.runtime.scriptrunner_utils.exceptions import StopException

from engine import AttuneError
from ui import actions, page_style, settings, state, streamlit_fixes
from ui.conditions import ALL_ON, Condition, load_conditions
from ui.engine_cache import shared_engine, shared_log, warm_imports
from ui.safe_text import markdown_literal
from ui.strip import version_strip

if TYPE_CHECKING:  # engine.Studio is imported when first needed, after the title is painted
    from engine import Studio


@dataclass
class AppPage:
    name: str
    ids: state.StudyIds
    condition: Condition
    engine: Any | None      # engine.Attune, or None when the model failed to load
    log: Any                # engine.StudyLog
    studio: "Studio | None"  # this browser session's Studio
    strip_slot: Any
    session: state.Session  # this browser session's state; callbacks use it without touching st.session_state
    progress_slot: Any = None  # a running job's progress bar (ui/jobs.follow), at the same place every run
    one_screen: bool = False  # Refine: compact style; the page places its note and the (compact) version strip
    note_shown: bool = False

    def event(self, action: str, **payload) -> None:
        """One events-table row for this page (ids and condition are added by the Studio)."""
        if self.studio is not None:
            self.studio.event(self.name, action, **payload)

    def enabled(self, feature: str) -> bool:
        return self.condition.enabled(feature)

    @property
    def current(self):
        return self.studio.current if self.studio is not None else None


def load_condition(ids: state.StudyIds) -> Condition:
    try:
        return load_conditions(settings.conditions_path()).get(ids.condition)
    except AttuneError as error:  # names the condition the URL asked for: shown as text, never as Markdown
        st.error(markdown_literal(str(error)))
        return ALL_ON


def _studio_for(engine, log, ids: state.StudyIds, model: str | None) -> "Studio":
    """This session's Studio; a new one when the ids or the model change. A refresh resumes from the log."""
    session = state.session()
    key = (ids, model)
    if session.studio_key != key or session.studio is None:
        from engine import Studio

        out_dir = settings.data_dir() / "sessions" / ids.session_id
        studio = Studio(
            engine, log, out_dir,
            participant_id=ids.participant_id, session_id=ids.session_id,
            study_id=ids.study_id, condition=ids.condition,
        )
        try:  # the URL carried a session id: bring its versions back
            studio.resume()
        except AttuneError as error:
            st.warning(f"Could not reload this session's history: {error}")
        session.studio, session.studio_key = studio, key
    return session.studio


def _load_engine(model: str | None):
    try:
        return shared_engine(model, settings.backend_setting())
    except AttuneError as error:
        st.error(f"The model could not be loaded: {error}")
    except Exception as error:  # a broken folder can fail deep inside diffusers; say so in one line
        st.error(f"The model could not be loaded: {type(error).__name__}: {error}")
    return None


def setup(name: str, title: str, one_screen: bool = False) -> AppPage:
    streamlit_fixes.install()  # once per process: a click is never dropped by a rerun race (ui/streamlit_fixes.py)
    st.set_page_config(page_title=f"Attune · {title}", page_icon=":material/tune:", layout="wide")
    page_style.apply()  # before the engine work below: the page dims without a fade while it waits
    if one_screen:
        page_style.compact()
    st.title(title)
    progress_slot = st.empty()
    strip_slot = st.container()
    session = state.session()
    ids = state.study_ids()
    condition = load_condition(ids)
    if not ids.condition and condition.name:  # no condition in the URL: the file's default applies and is logged
        ids = session.ids = state.with_condition(ids, condition.name)
    try:
        log = shared_log(str(settings.log_path()))
    except AttuneError as error:  # e.g. a read-only ATTUNE_DATA_DIR: say which folder, not a redacted traceback
        st.error(str(error), icon=":material/error:")
        st.stop()
    model = state.chosen_model()
    engine = _load_engine(model)
    studio = _studio_for(engine, log, ids, model) if engine is not None else None
    state.sync_url(ids)
    page = AppPage(name=name, ids=ids, condition=condition, engine=engine, log=log, studio=studio, strip_slot=strip_slot,
                   session=session, progress_slot=progress_slot, one_screen=one_screen)
    if session.last_page != name and studio is not None:
        page.event("page_view")
        session.last_page = name
    actions.serve(page)
    return page


def finish(page: AppPage) -> None:
    """Fill the sidebar and the version strip at the top now that this run's actions are done."""
    from ui.sidebar import sidebar

    sidebar(page, state.chosen_model())
    if not page.note_shown:  # a one-screen page stopped before the place it shows its note
        actions.show_note(page)
    if page.studio is not None:
        with page.strip_slot:
            version_strip(page.studio, page.name, compact=page.one_screen)
    warm_imports()  # the page is drawn: what the first image needs loads in the background


@contextmanager
def app_page(name: str, title: str, *, one_screen: bool = False):
    """`with app_page("refine", "Refine") as page:` the page body; `st.stop()` inside still draws sidebar and strip.
    `one_screen`: a page laid out to fit 1280x800 without scrolling; it sets `strip_slot` and shows its note itself."""
    page = setup(name, title, one_screen)
    try:
        yield page
    except StopException:
        finish(page)
        raise
    finish(page)
