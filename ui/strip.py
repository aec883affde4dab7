"""The version strip shown on every page: thumbnails, the current one marked, branches, click to make current."""
from __future__ import annotations

import streamlit as st

from ui import history
from ui.errors import user_errors
from ui.images import display_image

PER_ROW = 8
THUMB_WIDTH = 72
COMPACT_THUMB = 52  # Refine's strip, beside the image: a thumbnail and a "vN" button per version, wrapping


def _restore(studio, version_id: str) -> None:
    with user_errors("Restore"):
        studio.restore(version_id)


def version_strip(studio, page: str, *, compact: bool = False) -> None:
    versions = history.all_versions(studio)
    if not versions:
        st.caption("No versions yet. Generate an image to start the version strip.")
        return
    current_id = studio.current.id if studio.current is not None else None
    tree = studio.history
    if compact:
        _compact_strip(studio, page, versions, current_id)
        return
    with st.expander(f"Versions ({len(versions)})", expanded=True):
        for start in range(0, len(versions), PER_ROW):
            row = versions[start : start + PER_ROW]
            columns = st.columns(PER_ROW)
            for column, version in zip(columns, row):
                is_current = version.id == current_id
                with column.container(border=True, key=f"strip_card_{version.number}"):
                    st.image(display_image(version.image_path, THUMB_WIDTH), width=THUMB_WIDTH)
                    name = f":primary[**{history.label(version)} ●**]" if is_current else f"**{history.label(version)}**"
                    st.caption(f"{name} {version.kind}{_origin(studio, version)}" + ("  \ncurrent" if is_current else ""))
                    st.button(
                        "Use",
                        key=f"strip_use_{page}_{version.number}",
                        disabled=is_current,
                        help=f"Make {history.label(version)} the current version (the next edit branches from it)",
                        on_click=_restore,
                        args=(studio, version.id),
                    )
        _branches(tree)


def _origin(studio, version) -> str:
    """' ← v2' (' · branch' when the parent has other children), or '' for a root."""
    parent = history.by_id(studio, version.parent_id)
    if parent is None:
        return ""
    forked = len(studio.history.children(parent.id)) > 1
    return f" ← {history.label(parent)}" + (" · branch" if forked else "")


def _compact_strip(studio, page: str, versions, current_id) -> None:
    """One wrapping row of small cards: the thumbnail and a button named after the version (● marks the current)."""
    st.caption("**Versions** · click one to make it current (the next edit branches from it)")
    with st.container(horizontal=True, gap="small", key="strip_compact"):
        for version in versions:
            is_current = version.id == current_id
            label = history.label(version)
            with st.container(width=COMPACT_THUMB + 12, gap=None, key=f"strip_card_{version.number}"):
                st.image(display_image(version.image_path, COMPACT_THUMB), width=COMPACT_THUMB)
                st.button(f"{label} ●" if is_current else label, key=f"strip_use_{page}_{version.number}",
                          disabled=is_current, type="tertiary", on_click=_restore, args=(studio, version.id),
                          help=f"{version.kind}{_origin(studio, version)}" + (" · current" if is_current else
                                                                              " · click: make it current (the next "
                                                                              "edit branches from it)"))
    _branches(studio.history)


def _branches(tree) -> None:
    paths = tree.branches()
    if len(paths) > 1:
        st.caption("Branches: " + " · ".join(" → ".join(history.label(v) for v in path) for path in paths))
