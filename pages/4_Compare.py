"""Compare: 2–4 versions side by side, difference images, changed parameters, restore, downloads, PNG import."""
import streamlit as st
from PIL import Image

from ui import downloads, history
from ui.cards import focus_badges
from ui.errors import user_errors
from ui.images import difference_image
from ui.page import app_page
from ui.prompt_assist import prompt_diff
from ui.state import Keys, Note

DIFF_GAIN = 2.0


def note(page, version, text: str) -> None:
    page.session.notes["compare"] = Note(version.id, "success", text)


def log_compare(page) -> None:
    page.event("compare", versions=list(st.session_state.get(Keys.COMPARE_PICK, [])))


def restore(page, version_id: str) -> None:
    with user_errors("Restore"):
        version = page.studio.restore(version_id)
        note(page, version, f"{history.label(version)} is current again; the next edit starts a branch from it.")


def import_png(page) -> None:
    upload = st.session_state.get(Keys.COMPARE_UPLOAD)
    if upload is None:
        return
    with user_errors("Reading the PNG"):
        version = page.studio.import_png(upload.getvalue())
        note(page, version, f"Parameters restored from {upload.name} as {history.label(version)}.")


def compare(page, versions) -> None:
    studio = page.studio
    labels = {history.label(v): v for v in versions}
    picked = st.session_state.get(Keys.COMPARE_PICK)
    if picked is None or not set(picked) <= set(labels):
        st.session_state[Keys.COMPARE_PICK] = list(labels)[-3:]
    picked = st.multiselect("Versions to compare (2–4)", list(labels), key=Keys.COMPARE_PICK, max_selections=4,
                            on_change=log_compare, args=(page,))
    chosen = [labels[name] for name in picked]
    if len(chosen) < 2:
        st.warning("Pick at least two versions.")
        return
    reference = chosen[0]
    current_id = studio.current.id if studio.current else None
    reference_image = Image.open(reference.image_path)
    for column, version in zip(st.columns(len(chosen)), chosen):
        with column:
            st.image(str(version.image_path), caption=f"{history.label(version)} · {version.kind}"
                     + (" · current" if version.id == current_id else ""), width="stretch")
            st.button("Restore", key=f"compare_restore_{version.id}", disabled=version.id == current_id,
                      on_click=restore, args=(page, version.id), help="Make this version current; the next edit branches from it")
            if version is not reference:
                st.image(difference_image(reference_image, Image.open(version.image_path), gain=DIFF_GAIN), width="stretch",
                         caption=f"difference from {history.label(reference)} (×{DIFF_GAIN:g})")
            focus_badges(version)
    rows = history.changed_parameters(chosen)
    st.subheader("Parameters that changed")
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch")
    else:
        st.caption("No parameter differs between these versions.")
    prompt_diff(chosen)


def downloads_section(page, versions) -> None:
    studio = page.studio
    st.subheader("Downloads")
    fmt_name = st.radio("Log format", list(downloads.FORMATS), horizontal=True, key="compare_format")
    ext, mime = downloads.FORMATS[fmt_name]
    sid = page.ids.session_id
    images_col, versions_col, events_col = st.columns(3)
    images_col.download_button(
        "Images (zip of PNGs with parameters)", file_name=f"attune_{sid[:8]}_images.zip", mime="application/zip",
        data=downloads.on_demand(page, "images", "zip", lambda: downloads.versions_zip(studio)),
        disabled=not versions, on_click="ignore", key="dl_images",
    )
    for column, table in ((versions_col, "versions"), (events_col, "events")):
        column.download_button(
            f"{table.capitalize()} log ({fmt_name})", file_name=f"attune_{sid[:8]}_{table}.{ext}", mime=mime,
            data=downloads.on_demand(page, table, ext, lambda table=table: downloads.table_bytes(
                downloads.table(page.log, table, session_id=sid), ext)),
            on_click="ignore", key=f"dl_{table}",
        )
    st.subheader("Restore parameters from a PNG")
    st.file_uploader("An Attune PNG (its parameters are stored inside)", type=["png"], key=Keys.COMPARE_UPLOAD)
    st.button("Restore from PNG", on_click=import_png, args=(page,),
              disabled=st.session_state.get(Keys.COMPARE_UPLOAD) is None)


with app_page("compare", "Compare") as page:
    if page.studio is None:
        st.stop()
    versions = history.all_versions(page.studio)
    if not page.enabled("compare"):
        st.info("Compare is turned off in this study condition.")
    elif len(versions) < 2:
        st.info("Compare needs at least two versions. Generate, then refine or inpaint.")
    else:
        compare(page, versions)
    st.divider()
    downloads_section(page, versions)
