"""What every page does first: page config, study ids, condition, shared engine and log, this user's Studio,
the sidebar, a page-view event, and a slot for the version strip (filled last, so it shows this run's new version)."""
from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from engine.errors import AttuneError
from ui import settings, state
from ui.conditions import ALL_ON, Condition, load_conditions
from ui.engine_cache import shared_engine, shared_log
from ui.strip import version_strip


@dataclass
class AppPage:
    name: str
    ids: state.StudyIds
    condition: Condition
    engine: object | None      # engine.pipeline.Attune, or None when the model failed to load
    log: object                # engine.log.StudyLog
    studio: object | None      # engine.studio.Studio for this browser session
    strip_slot: object

    def event(self, action: str, **payload) -> None:
        """One events-table row for this page (ids and condition are added by the Studio)."""
        if self.studio is not None:
            self.studio.event(self.name, action, **payload)

    def enabled(self, feature: str) -> bool:
        return self.condition.enabled(feature)


def load_condition(ids: state.StudyIds) -> Condition:
    try:
        return load_conditions(settings.conditions_path()).get(ids.condition)
    except AttuneError as error:
        st.error(str(error))
        return ALL_ON


def _studio_for(engine, log, ids: state.StudyIds, model: str | None):
    """This session's Studio; a new one when the ids or the model change. A refresh resumes from the log."""
    key = (ids, model)
    if st.session_state.get("studio_key") != key or st.session_state.get("studio") is None:
        from engine.studio import Studio

        out_dir = settings.data_dir() / "sessions" / ids.session_id
        studio = Studio(
            engine, log, out_dir,
            participant_id=ids.participant_id, session_id=ids.session_id,
            study_id=ids.study_id, condition=ids.condition,
        )
        resume = getattr(studio, "resume", None)
        if resume is not None:  # the URL carried a session id: bring its versions back
            try:
                resume()
            except AttuneError as error:
                st.warning(f"Could not reload this session's history: {error}")
        st.session_state.studio = studio
        st.session_state.studio_key = key
    return st.session_state.studio


def setup(name: str, title: str) -> AppPage:
    st.set_page_config(page_title=f"Attune · {title}", page_icon=":material/tune:", layout="wide")
    st.title(title)
    strip_slot = st.container()
    ids = state.study_ids()
    condition = load_condition(ids)
    if not ids.condition and condition.name:  # no condition in the URL: the file's default applies and is logged
        ids = st.session_state.study_ids = state.with_condition(ids, condition.name)
    try:
        log = shared_log(str(settings.log_path()))
    except AttuneError as error:  # e.g. a read-only ATTUNE_DATA_DIR: say which folder, not a redacted traceback
        st.error(str(error), icon=":material/error:")
        st.stop()
    model = state.chosen_model()
    engine = None
    try:
        engine = shared_engine(model, settings.backend_setting())
    except AttuneError as error:
        st.error(f"The model could not be loaded: {error}")
    except Exception as error:  # a broken folder can fail deep inside diffusers; say so in one line
        st.error(f"The model could not be loaded: {type(error).__name__}: {error}")
    studio = _studio_for(engine, log, ids, model) if engine is not None else None
    state.sync_url(ids)
    page = AppPage(name=name, ids=ids, condition=condition, engine=engine, log=log, studio=studio, strip_slot=strip_slot)
    if st.session_state.get("last_page") != name and studio is not None:
        page.event("page_view")
        st.session_state.last_page = name
    shown = st.session_state.get("notes", {}).get(name)
    if shown and studio is not None and studio.current is not None and studio.current.id == shown[0]:
        getattr(st, shown[1])(shown[2])
    return page


def note(page: str, version, message: str, kind: str = "success") -> None:
    """A result message that stays on this page while its version is current (the canvas and other components
    trigger extra reruns, which would wipe a message written only once)."""
    notes()[page] = (version.id, kind, message)


def notes() -> dict:
    """The session's notes dict itself: a worker thread may fill it (no Streamlit call needed)."""
    return st.session_state.setdefault("notes", {})


def finish(page: AppPage) -> None:
    """Fill the sidebar and the version strip at the top now that this run's actions are done."""
    from ui.sidebar import sidebar

    sidebar(page, state.chosen_model())
    if page.studio is not None:
        with page.strip_slot:
            version_strip(page.studio, page.name)
