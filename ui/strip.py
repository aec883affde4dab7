"""The version strip shown on every page: thumbnails, the current one marked, branches, click to make current."""
from __future__ import annotations

import streamlit as st

from ui import history
from ui.errors import user_errors
from ui.images import display_image

PER_ROW = 8
THUMB_WIDTH = 72


def _restore(studio, version_id: str) -> None:
    with user_errors("Restore"):
        studio.restore(version_id)


def version_strip(studio, page: str) -> None:
    versions = history.all_versions(studio)
    if not versions:
        st.caption("No versions yet. Generate an image to start the version strip.")
        return
    current_id = studio.current.id if studio.current is not None else None
    tree = studio.history
    with st.expander(f"Versions ({len(versions)})", expanded=True):
        for start in range(0, len(versions), PER_ROW):
            row = versions[start : start + PER_ROW]
            columns = st.columns(PER_ROW)
            for column, version in zip(columns, row):
                is_current = version.id == current_id
                with column.container(border=True, key=f"strip_card_{version.number}"):
                    st.image(display_image(version.image_path, THUMB_WIDTH), width=THUMB_WIDTH)
                    parent = history.by_id(studio, version.parent_id)
                    forked = parent is not None and len(tree.children(parent.id)) > 1
                    name = f":primary[**{history.label(version)} ●**]" if is_current else f"**{history.label(version)}**"
                    text = f"{name} {version.kind}"
                    if parent is not None:
                        text += f" ← {history.label(parent)}" + (" · branch" if forked else "")
                    st.caption(text + ("  \ncurrent" if is_current else ""))
                    st.button(
                        "Use",
                        key=f"strip_use_{page}_{version.number}",
                        disabled=is_current,
                        help=f"Make {history.label(version)} the current version (the next edit branches from it)",
                        on_click=_restore,
                        args=(studio, version.id),
                    )
        paths = tree.branches()
        if len(paths) > 1:
            st.caption("Branches: " + " · ".join(" → ".join(history.label(v) for v in path) for path in paths))
