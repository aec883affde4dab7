"""Refine's side panels, beside the image: the attention sliders with Apply (method and layout in a popover), the
inpaint prompt with Inpaint (options in a popover), and the words tab (word cards, style keywords). The actions
are in ui/refine.py; which words get a slider is the engine's rule (engine.words.sliders)."""
from __future__ import annotations

import streamlit as st

from engine import (
    DEFAULT_LAYOUT, INPAINT_DEFAULTS, PORTABLE_LAYOUTS, SLIDER_MAX, WEIGHT_MODES, AttuneError, is_small_mask,
    parse_inpaint_instruction,
)
from ui import refine, refine_notes, state
from ui.actions import submit
from ui.cards import focus_badges
from ui.history import weight_marks
from ui.prompt_assist import word_cards
from ui.state import Keys

MARKS = "the word's weight: 0 off · 0.5 less · 1 unchanged · 1.5 more · 2 much more (measured effects under Method)"
SLIDER_COLUMNS = 3


def method_popover(page, version) -> tuple[str, str]:
    """Method and layout, with what the benchmark measured for each, and the phrase adder; returns both choices."""
    if Keys.METHOD not in st.session_state:
        st.session_state[Keys.METHOD] = version.weight_mode or "score"
    with st.popover("Method · layout", icon=":material/tune:"):
        layout = st.session_state.get(Keys.LAYOUT, DEFAULT_LAYOUT)
        method = st.radio("Method", list(WEIGHT_MODES), key=Keys.METHOD, horizontal=True,
                          captions=[refine_notes.method_caption(m, layout) for m in WEIGHT_MODES],
                          on_change=refine.log_method, args=(page,), persist_state="session")
        layouts = list(page.engine.layouts if page.engine is not None else PORTABLE_LAYOUTS)
        layout = st.selectbox("Layout", layouts, index=layouts.index(DEFAULT_LAYOUT), key=Keys.LAYOUT,
                              help="blend: a reweight is an edit of this version; free: the whole image is re-run; "
                                   "inject, blend+inject: reuse this version's attention (PyTorch backend only)",
                              persist_state="session")
        st.caption(refine_notes.layout_caption(layout, method))
        st.text_input("Add a phrase slider (consecutive words, e.g. “wolf sitting”)", key=Keys.PHRASE,
                      on_change=refine.add_phrase, args=(page,))
    return method, layout


def sliders_panel(page, version, word_tokens) -> None:
    words = refine.slider_words(page, version, word_tokens)
    refine.sync_sliders(version, words)
    head, toggle = st.columns([3, 2], vertical_alignment="center")
    head.markdown(f"**Attention** · same seed ({version.seed})", help=f"One slider per word or phrase, 0–2: {MARKS}. "
                  "Apply makes a new version with the same seed.")
    toggle.toggle("All words", key=Keys.ALL_WORDS, help="Also give function words (a, of, the, …) and each word "
                  "of a phrase a slider", persist_state="session")
    columns = st.columns(SLIDER_COLUMNS)
    for i, word in enumerate(words):
        columns[i % SLIDER_COLUMNS].slider(word, 0.0, SLIDER_MAX, step=0.1, key=Keys.weight(word), help=MARKS,
                                           on_change=refine.log_slider, args=(page, word))
    apply_col, method_col = st.columns([1, 2], vertical_alignment="center")
    with method_col:
        method, layout = method_popover(page, version)
    apply_col.button("Apply", type="primary", icon=":material/tune:", on_click=submit, args=(page, "apply"),
                     width="stretch")
    st.caption("To apply: " + (", ".join(weight_marks(refine.slider_weights(words))) or "all words at 1")
               + f" · {method} · {layout}")


def inpaint_options() -> None:
    with st.popover("Options", icon=":material/settings:"):
        st.slider("Mask blur", 0, 32, INPAINT_DEFAULTS.mask_blur, key=Keys.MASK_BLUR, persist_state="session")
        only_masked = st.checkbox("Only masked", key=Keys.ONLY_MASKED, persist_state="session",
                                  help="Crop the mask's box plus padding, work at full resolution, paste back")
        st.slider("Padding", 0, 64, INPAINT_DEFAULTS.padding, key=Keys.PADDING, disabled=not only_masked,
                  persist_state="session")
        st.checkbox("Auto crop small masks", value=INPAINT_DEFAULTS.auto_crop, key=Keys.AUTO_CROP,
                    persist_state="session",
                    help="A small mask is worked on as “only masked” anyway, so its region gets full resolution")


def will_run(typed: str, version) -> None:
    """What Inpaint will do with the box as typed and the mask as drawn (engine.parse_inpaint_instruction), the rule
    in the help."""
    drawn = state.session().mask_drawn
    mask = drawn["mask"] if drawn and drawn["version"] == version.id else None
    try:
        instruction = parse_inpaint_instruction(typed, version.prompt,
                                                small_mask=mask is not None and is_small_mask(mask))
    except AttuneError as error:
        st.caption(f":orange[{error}]")
        return
    ran = f"“{instruction.prompt}”" if instruction.prompt else "erase: fill from the surroundings"
    st.caption(f"will run: {ran}", help=instruction.rule)


def inpaint_panel(page, version) -> None:
    prompt = st.text_input("Inpaint prompt", key=Keys.INPAINT_PROMPT, placeholder="replace with misty forest",
                           persist_state="session")
    will_run(prompt, version)
    run_col, options_col = st.columns([1, 2], vertical_alignment="center")
    run_col.button("Inpaint", type="primary", icon=":material/brush:", on_click=submit, args=(page, "inpaint"),
                   width="stretch")
    with options_col:
        inpaint_options()


def words_tab(page, version) -> None:
    st.markdown(f"**Prompt:** {version.prompt}  \n**Seed:** {version.seed}")
    focus_badges(version)
    word_cards(page)
