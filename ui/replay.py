"""The Researcher page's replay: regenerate a study's versions from the log and show how close each came."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from ui.errors import user_errors

COLUMNS = ["number", "kind", "status", "max_abs_diff", "backend", "reason", "session_id", "id"]


def replay_frame(report) -> pd.DataFrame:
    """One row per version: its status (identical / different / not replayed), max abs pixel diff and why."""
    return pd.DataFrame([entry.to_dict() for entry in report.results], columns=COLUMNS)


def replay_section(page, study_id: str | None) -> None:
    """A button that replays the study (all versions when study_id is None) and the table of the last replay."""
    from engine import replay_log

    st.subheader("Replay")
    st.caption("Regenerates each version from its log row (parameters, parent image, mask, model hash, backend) "
               "and compares it with the stored image. Same machine and backend: every version should be identical.")
    if st.button("Replay this study" if study_id else "Replay all versions", key="r_replay"):
        bar = st.progress(0.0, text="Replaying…")
        with user_errors("Replay"):
            engines = [page.engine] if page.engine is not None else None  # reuse the loaded model when it matches
            report = replay_log(page.log, study_id=study_id, engines=engines,
                                progress=lambda done, total: bar.progress(done / total, text=f"{done} / {total}"))
            st.session_state.researcher_replay = (study_id, report.identical, report.versions, replay_frame(report))
            page.event("replay", study_id=study_id, versions=report.versions, identical=report.identical)
        bar.empty()
    shown = st.session_state.get("researcher_replay")
    if shown and shown[0] == study_id:
        _, identical, replayed, frame = shown
        st.metric("Bit-identical", f"{identical} / {len(frame)}", help=f"{replayed} versions could be replayed")
        st.dataframe(frame, hide_index=True)
