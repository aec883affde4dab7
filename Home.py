"""Attune home: what it does, model status, study session, and a one-click example."""
import streamlit as st

from ui import generate, settings, state
from ui.actions import submit
from ui.cards import version_card
from ui.conditions import load_conditions
from ui.errors import user_errors
from ui.page import app_page

EXAMPLE_READY = "Version {number} is ready. Open **Inspect Attention** to see where each word went."


def model_status(page) -> None:
    st.subheader("Model and backend")
    if page.engine is None:
        st.info("Set a model folder in the sidebar (empty = built-in model).")
        return
    components = page.engine.components
    st.markdown(
        f"- model: `{components.model_id}`\n- weights: `{components.weights_hash}`\n"
        f"- UNet channels: {components.unet_in_channels} ({'inpainting' if components.unet_in_channels == 9 else 'plain'})\n"
        f"- backend: **{page.engine.backend_name}**"
    )
    known = components.known_words
    if known:
        st.caption(f"This model knows {len(known)} words; others are flagged as unknown.")


def study_session(page) -> None:
    st.subheader("Study session")
    conditions = None
    with user_errors("Reading the conditions file"):
        conditions = load_conditions(settings.conditions_path())
    names = [""] + sorted(conditions.by_name) if conditions else [""]
    with st.form("study_form"):
        pid = st.text_input("Participant id", value=page.ids.participant_id)
        study = st.text_input("Study id", value=page.ids.study_id)
        condition = st.selectbox(
            "Condition", names, index=names.index(page.ids.condition) if page.ids.condition in names else 0,
            format_func=lambda n: n or "(none: all features)",
        )
        if st.form_submit_button("Start a new session"):
            state.set_study_ids(pid, study, condition)
            st.rerun()
    if conditions and page.condition.name:
        st.caption(f"Condition **{page.condition.name}**: {page.condition.description}")
    st.caption("Study links set these from the URL: `?pid=P01&study=NAME&condition=full`.")


with app_page("home", "Attune") as page:
    st.markdown(
        "Attune shows **where each word of your prompt lands** in the image (attention heatmaps), "
        "lets you **turn a word up or down** and regenerate with the same seed, and **repaint a region** from a mask.  \n"
        "Every version is kept in a tree you can compare and roll back, and every action is logged for user studies.  \n"
        "Start with the example below, or go to **Generate**."
    )
    status_col, session_col = st.columns(2)
    with status_col:
        model_status(page)
    with session_col:
        study_session(page)

    st.subheader("Try the example")
    st.write(f"“{settings.EXAMPLE_PROMPT}”, seed {settings.EXAMPLE_SEED}.")
    st.button("Try the example", type="primary", disabled=page.studio is None, on_click=submit,
              args=(page, "generate", generate.example(EXAMPLE_READY)))
    if page.current is not None:
        version_card(page.current, page.studio, image_width=256)
        st.page_link("pages/2_Inspect_Attention.py", label="Inspect attention", icon=":material/visibility:")
