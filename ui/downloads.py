"""Bytes for the download buttons: the log tables as CSV or Parquet, and the version PNGs as a zip."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING

from ui import history
from ui.images import zip_files

if TYPE_CHECKING:  # pandas loads when a table is downloaded, not with the page
    import pandas as pd

FORMATS = {"CSV": ("csv", "text/csv"), "Parquet": ("parquet", "application/vnd.apache.parquet")}


def table(log, name: str, *, session_id: str | None = None) -> pd.DataFrame:
    """The versions or events table, optionally only one session's rows."""
    frame = log.versions_df() if name == "versions" else log.events_df()
    if session_id is not None and "session_id" in frame.columns:
        frame = frame[frame["session_id"] == session_id]
    return frame.reset_index(drop=True)


def table_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    if fmt == "parquet":
        buffer = io.BytesIO()
        # object columns may mix dicts/None; store them as text so Parquet has one type per column
        safe = frame.copy()
        for column in safe.columns:
            if safe[column].dtype == object:
                safe[column] = safe[column].map(lambda v: v if v is None or isinstance(v, str) else str(v))
        safe.to_parquet(buffer, index=False)
        return buffer.getvalue()
    from engine import csv_bytes  # the one CSV writer: formula cells neutralised (engine/study/log.py)

    return csv_bytes(frame)


def versions_zip(studio) -> bytes:
    versions = history.all_versions(studio)
    return zip_files([v.image_path for v in versions], [f"v{v.number}_{v.kind}_{v.id[:8]}.png" for v in versions])


def on_demand(page, what: str, fmt: str, make):
    """A download_button's data, made when the user clicks (Streamlit runs it on a server thread) and logged then.

    Used with on_click="ignore": a rerun on the click would replace the button's deferred data while the browser
    still fetches it, and the download would never arrive."""
    def data():
        page.event("download", what=what, format=fmt)
        return make()

    return data
