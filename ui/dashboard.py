"""Researcher dashboard: conditions side by side (versions, time per version, ratings, feature use), rank tests with
effect sizes (engine.study.analysis), and the tables as downloads."""
from __future__ import annotations

import streamlit as st

from engine import AttuneError
from ui import downloads


def dashboard(page, versions, events) -> None:
    from engine import compare_conditions, condition_summary, participant_table  # pandas and scipy: when shown

    st.subheader("Conditions compared")
    try:
        table = participant_table(versions, events)
    except AttuneError as error:
        st.info(str(error))
        return
    left, right = st.columns(2)
    left.download_button("Per-participant table (CSV)", data=downloads.table_bytes(table, "csv"),
                         file_name="attune_participants.csv", mime="text/csv", key="r_dl_participants")
    try:
        tests = compare_conditions(table)
    except AttuneError as error:  # one condition so far: nothing to compare side by side
        st.info(str(error))
        return
    st.dataframe(condition_summary(table), hide_index=True, key="r_condition_summary")
    st.caption("Mann-Whitney U with rank-biserial r for two conditions; Kruskal-Wallis H with epsilon² for more. "
               "One row per measure; p values are not corrected for multiple measures.")
    st.dataframe(tests, hide_index=True, key="r_condition_tests")
    with st.expander("Per participant"):
        st.dataframe(table, hide_index=True, key="r_participants")
    right.download_button("Condition tests (CSV)", data=downloads.table_bytes(tests, "csv"),
                          file_name="attune_condition_tests.csv", mime="text/csv", key="r_dl_tests")
