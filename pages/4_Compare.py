"""Compare: 2–4 versions side by side, difference images, changed parameters, restore, downloads, PNG import."""
import streamlit as st
from PIL import Image

from ui import downloads, history, page as app
from ui.cards import focus_badges
from ui.errors import user_errors
from ui.images import difference_image
from ui.prompt_assist import prompt_diff

page = app.setup("compare", "Compare")
DIFF_GAIN = 2.0
FIELDS = ("kind", "prompt", "negative_prompt", "seed", "steps", "guidance", "scheduler", "width", "height", "syntax",
          "weights", "weight_mode", "inpaint_prompt", "mask_hash", "mask_blur", "only_masked", "padding", "backend")


def log_compare() -> None:
    page.event("compare", versions=list(st.session_state.get("compare_pick", [])))


def restore(version_id: str) -> None:
    with user_errors("Restore"):
        version = page.studio.restore(version_id)
        app.note("compare", version, f"{history.label(version)} is current again; the next edit starts a branch from it.")


def log_download(what: str, fmt: str = "") -> None:
    page.event("download", what=what, format=fmt)


def import_png() -> None:
    upload = st.session_state.get("compare_upload")
    if upload is None:
        return
    with user_errors("Reading the PNG"):
        version = page.studio.import_png(upload.getvalue())
        app.note("compare", version, f"Parameters restored from {upload.name} as {history.label(version)}.")


studio = page.studio
versions = history.all_versions(studio)
if studio is None:
    pass
elif not page.enabled("compare"):
    st.info("Compare is turned off in this study condition.")
elif len(versions) < 2:
    st.info("Compare needs at least two versions. Generate, then refine or inpaint.")
else:
    labels = {history.label(v): v for v in versions}
    if "compare_pick" not in st.session_state or not set(st.session_state.compare_pick) <= set(labels):
        st.session_state.compare_pick = list(labels)[-3:] if len(labels) >= 3 else list(labels)
    picked = st.multiselect("Versions to compare (2–4)", list(labels), key="compare_pick", max_selections=4,
                            on_change=log_compare)
    chosen = [labels[name] for name in picked]
    if len(chosen) < 2:
        st.warning("Pick at least two versions.")
    else:
        reference = chosen[0]
        current_id = studio.current.id if studio.current else None
        reference_image = Image.open(reference.image_path)
        for column, version in zip(st.columns(len(chosen)), chosen):
            with column:
                st.image(str(version.image_path), caption=f"{history.label(version)} · {version.kind}"
                         + (" · current" if version.id == current_id else ""), width="stretch")
                st.button("Restore", key=f"compare_restore_{version.id}", disabled=version.id == current_id,
                          on_click=restore, args=(version.id,), help="Make this version current; the next edit branches from it")
                if version is not reference:
                    st.image(difference_image(reference_image, Image.open(version.image_path), gain=DIFF_GAIN), width="stretch",
                             caption=f"difference from {history.label(reference)} (×{DIFF_GAIN:g})")
                focus_badges(version)
        rows = history.changed_parameters(chosen, FIELDS)
        st.subheader("Parameters that changed")
        if rows:
            st.dataframe(rows, hide_index=True, width="stretch")
        else:
            st.caption("No parameter differs between these versions.")
        prompt_diff(chosen)

if studio is not None:
    st.divider()
    st.subheader("Downloads")
    fmt_name = st.radio("Log format", list(downloads.FORMATS), horizontal=True, key="compare_format")
    ext, mime = downloads.FORMATS[fmt_name]
    sid = page.ids.session_id
    images_col, versions_col, events_col = st.columns(3)
    images_col.download_button(
        "Images (zip of PNGs with parameters)", data=lambda: downloads.versions_zip(studio), file_name=f"attune_{sid[:8]}_images.zip",
        mime="application/zip", disabled=not versions, on_click=log_download, args=("images", "zip"), key="dl_images",
    )
    versions_col.download_button(
        f"Versions log ({fmt_name})", data=lambda: downloads.table_bytes(downloads.table(page.log, "versions", session_id=sid), ext),
        file_name=f"attune_{sid[:8]}_versions.{ext}", mime=mime, on_click=log_download, args=("versions", ext), key="dl_versions",
    )
    events_col.download_button(
        f"Events log ({fmt_name})", data=lambda: downloads.table_bytes(downloads.table(page.log, "events", session_id=sid), ext),
        file_name=f"attune_{sid[:8]}_events.{ext}", mime=mime, on_click=log_download, args=("events", ext), key="dl_events",
    )
    st.subheader("Restore parameters from a PNG")
    st.file_uploader("An Attune PNG (its parameters are stored inside)", type=["png"], key="compare_upload")
    st.button("Restore from PNG", on_click=import_png, disabled=st.session_state.get("compare_upload") is None)

app.finish(page)
