"""Researcher view: the whole log as tables, simple summaries, downloads. Gated by a password."""
import hmac

import streamlit as st

from ui import downloads, settings
from ui.page import app_page
from ui.prompt_assist import dashboard
from ui.plots import feature_use, time_between_versions, versions_per_participant
from ui.state import session


def login(page, password: str) -> None:
    with st.form("researcher_login"):
        typed = st.text_input("Password", type="password", key="researcher_password")
        if st.form_submit_button("Open"):
            if hmac.compare_digest(typed.encode(), password.encode()):
                session().researcher_ok = True
                page.event("researcher_login")
                st.rerun()
            else:
                st.error("Wrong password.")


def tables(page) -> None:
    versions = downloads.table(page.log, "versions")
    events = downloads.table(page.log, "events")
    studies = sorted({s for s in versions.get("study_id", []) if s} | {s for s in events.get("study_id", []) if s})
    study = st.selectbox("Study", ["(all)"] + studies)
    if study != "(all)":
        versions = versions[versions["study_id"] == study]
        events = events[events["study_id"] == study]
    a, b, c, d = st.columns(4)
    a.metric("Participants", versions["participant_id"].nunique() if len(versions) else 0)
    b.metric("Sessions", events["session_id"].nunique() if len(events) else 0)
    c.metric("Versions", len(versions))
    d.metric("Events", len(events))
    if len(versions):
        left, right = st.columns(2)
        left.plotly_chart(versions_per_participant(versions), key="r_versions")
        right.plotly_chart(time_between_versions(versions), key="r_times")
    if len(events):
        st.plotly_chart(feature_use(events), key="r_features")
    dashboard(page, versions, events)
    st.subheader("Versions")
    st.dataframe(versions, hide_index=True)
    st.subheader("Events")
    st.dataframe(events, hide_index=True)
    fmt_name = st.radio("Format", list(downloads.FORMATS), horizontal=True, key="researcher_format")
    ext, mime = downloads.FORMATS[fmt_name]
    left, right = st.columns(2)
    left.download_button(f"All versions ({fmt_name})", data=downloads.table_bytes(versions, ext),
                         file_name=f"attune_versions.{ext}", mime=mime, key="r_dl_versions")
    right.download_button(f"All events ({fmt_name})", data=downloads.table_bytes(events, ext),
                          file_name=f"attune_events.{ext}", mime=mime, key="r_dl_events")
    from ui.replay import replay_section

    replay_section(page, None if study == "(all)" else study)
    if st.button("Lock"):
        session().researcher_ok = False
        st.rerun()


with app_page("researcher", "Researcher") as page:
    password = settings.researcher_password()
    if password is None:
        st.info("The researcher view is off. Set `researcher_password` in `.streamlit/secrets.toml` "
                "(or the env var `ATTUNE_RESEARCHER_PASSWORD`) to turn it on.")
    elif not session().researcher_ok:
        login(page, password)
    else:
        tables(page)
