"""Refine: per-word attention sliders (same seed), and mask + inpaint with a drawing canvas.

Apply and Inpaint are requests (ui/actions.py): the page setup runs them before anything below is drawn, so the
page already shows the new version. The actions themselves are in ui/refine.py.
"""
import streamlit as st
from PIL import Image

from engine import (DEFAULT_LAYOUT, INPAINT_DEFAULTS, PORTABLE_LAYOUTS, SLIDER_MAX, WEIGHT_MODES, AttuneError,
                    parse_inpaint_instruction)
from ui import canvas, refine, refine_notes
from ui.actions import submit
from ui.cards import focus_badges
from ui.history import weight_marks
from ui.page import app_page
from ui.prompt_assist import rating, word_cards
from ui.state import Keys

METHODS = WEIGHT_MODES
MARKS = "the word's weight: 0 off · 0.5 less · 1 unchanged · 1.5 more · 2 much more (measured effects under Method)"


def sliders_section(page, version, word_tokens) -> None:
    st.subheader("Attention sliders")
    st.caption(f"One slider per word, 0–2: {MARKS}. Apply makes a new version with the same seed "
               f"(v{version.number}'s seed {version.seed}).")
    with st.expander("Add a phrase slider (consecutive words, e.g. “full moon”)"):
        st.text_input("Phrase", key=Keys.PHRASE, on_change=refine.add_phrase, args=(page,))
    words = refine.slider_words(word_tokens)
    refine.sync_sliders(version, words)
    columns = st.columns(3)
    for i, word in enumerate(words):
        columns[i % 3].slider(word, 0.0, SLIDER_MAX, step=0.1, key=Keys.weight(word), help=MARKS,
                              on_change=refine.log_slider, args=(page, word))
    if Keys.METHOD not in st.session_state:
        st.session_state[Keys.METHOD] = version.weight_mode or "score"
    layout = st.session_state.get(Keys.LAYOUT, DEFAULT_LAYOUT)
    method = st.radio("Method", list(METHODS), key=Keys.METHOD, horizontal=True,
                      captions=[refine_notes.method_caption(m, layout) for m in METHODS],
                      on_change=refine.log_method, args=(page,), persist_state="session")
    layouts = list(page.engine.layouts if page.engine is not None else PORTABLE_LAYOUTS)
    layout = st.selectbox("Layout", layouts, index=layouts.index(DEFAULT_LAYOUT), key=Keys.LAYOUT,
                          help="blend: a reweight is an edit of this version; free: the whole image is re-run; "
                               "inject, blend+inject: reuse this version's attention (PyTorch backend only)",
                          persist_state="session")
    st.caption(refine_notes.layout_caption(layout, method))
    st.caption("To apply: " + (", ".join(weight_marks(refine.slider_weights(words))) or "all words at 1")
               + f" · method {method} · layout {layout}")
    st.button("Apply", type="primary", icon=":material/tune:", on_click=submit, args=(page, "apply"))


def inpaint_section(page, version, maps, word_tokens) -> None:
    st.subheader("Mask and inpaint")
    prefill = refine.prefill_for(version)
    prefill_mask = prefill["mask"] if prefill else None

    tools, drawing_col = st.columns([1, 2])
    with tools:
        mode = st.segmented_control("Tool", ["brush", "eraser"], default="brush", key=Keys.MASK_TOOL,
                                    format_func=str.capitalize) or "brush"
        st.caption("Eraser strokes remove from the mask" if mode == "eraser" else "Brush strokes add to the mask")
        brush = st.slider("Brush size", 2, 60, 24, key=Keys.BRUSH, persist_state="session")
        st.button("Clear mask", icon=":material/delete:", on_click=refine.clear_mask, args=(page,))
        if page.enabled("heatmaps") and maps is not None:
            words = word_tokens.display_words()
            if st.session_state.get(Keys.MASK_WORD) not in words:
                st.session_state[Keys.MASK_WORD] = "sky" if "sky" in words else words[0]
            st.selectbox("Word", words, key=Keys.MASK_WORD)
            st.button("Mask from word", icon=":material/auto_fix_high:", on_click=refine.mask_from_word,
                      args=(page, version, maps, word_tokens))
    with drawing_col:
        key = refine.canvas_key(version)
        drawing = canvas.mask_canvas(Image.open(version.image_path), key=key, brush_size=brush, mode=mode,
                                     prefill=prefill_mask)
        if drawing is None and prefill_mask is not None:
            drawing = canvas.MaskDrawing(mask=prefill_mask, strokes=0)
        refine.keep_drawing(page, version, drawing, key)
        if drawing is not None:
            st.caption(f"Mask covers {drawing.mask.mean():.0%} of the image · {drawing.strokes} strokes"
                       + (f" · pre-filled from “{prefill['word']}”" if prefill else ""))

    prompt = st.text_input("Inpaint prompt", key=Keys.INPAINT_PROMPT, placeholder="misty forest", persist_state="session")
    blur_col, only_col, pad_col, crop_col = st.columns(4)
    blur_col.slider("Mask blur", 0, 32, INPAINT_DEFAULTS.mask_blur, key=Keys.MASK_BLUR, persist_state="session")
    only_masked = only_col.checkbox("Only masked", key=Keys.ONLY_MASKED, persist_state="session",
                                    help="Crop the mask's box plus padding, work at full resolution, paste back")
    pad_col.slider("Padding", 0, 64, INPAINT_DEFAULTS.padding, key=Keys.PADDING, disabled=not only_masked, persist_state="session")
    crop_col.checkbox("Auto crop small masks", value=INPAINT_DEFAULTS.auto_crop, key=Keys.AUTO_CROP, persist_state="session",
                      help="A small mask is worked on as “only masked” anyway, so its region gets full resolution")
    try:  # what Inpaint will run (the Studio parses the box the same way)
        instruction = parse_inpaint_instruction(prompt, version.prompt)
        st.caption(f"Inpaint “{instruction.prompt or 'erase'}” inside the mask · {instruction.rule}")
    except AttuneError as error:
        st.caption(f":red[{error}]")
    st.button("Inpaint", type="primary", icon=":material/brush:", on_click=submit, args=(page, "inpaint"))


with app_page("refine", "Refine") as page:
    version = page.current
    if page.studio is None:
        st.stop()
    if version is None:
        st.info("No image yet. Generate one first (or use “Try the example” on Home).")
        st.stop()
    if not page.enabled("sliders") and not page.enabled("inpainting"):
        st.info("Refinement tools are turned off in this study condition.")
        st.stop()
    image_col, info_col = st.columns([1, 2])
    image_col.image(str(version.image_path), width=256, caption=f"v{version.number} (current)")
    with info_col:
        st.markdown(f"**Prompt:** {version.prompt}  \n**Seed:** {version.seed}")
        focus_badges(version)
        rating(page)
    word_cards(page)
    try:
        word_tokens = page.studio.word_tokens(version)
    except AttuneError as error:
        st.error(str(error))
        st.stop()
    try:
        maps = page.studio.maps(version)
    except AttuneError as error:  # e.g. a version imported from a PNG: sliders still work
        maps = None
        st.caption(f"No heatmaps for this version ({error}); “Mask from word” is off.")
    if page.enabled("sliders"):
        sliders_section(page, version, word_tokens)
    if page.enabled("inpainting"):
        inpaint_section(page, version, maps, word_tokens)
