"""Refine's image: the mask canvas itself (the image, scaled up), with its tools beside it: brush / eraser, brush
size, clear, and "mask from word". The actions are in ui/refine.py."""
from __future__ import annotations

import streamlit as st
from PIL import Image

from ui import canvas, refine
from ui.state import Keys


def mask_word_picker(page, maps, word_tokens) -> None:
    """The word "Mask from word" uses ("sky" first when the prompt has it)."""
    words = word_tokens.display_words()
    if st.session_state.get(Keys.MASK_WORD) not in words:
        st.session_state[Keys.MASK_WORD] = "sky" if "sky" in words else words[0]
    st.selectbox("Word", words, key=Keys.MASK_WORD, help="The word whose heatmap becomes the mask")


def tools(page, version, maps, word_tokens) -> tuple[str, int]:
    """The tool column; returns (mode, brush size)."""
    mode = st.segmented_control("Tool", ["brush", "eraser"], default="brush", key=Keys.MASK_TOOL,
                                format_func=str.capitalize) or "brush"
    st.caption("Eraser strokes remove from the mask" if mode == "eraser" else "Brush strokes add to the mask")
    brush = st.slider("Brush size", 2, 60, 24, key=Keys.BRUSH, persist_state="session")
    st.button("Clear mask", on_click=refine.clear_mask, args=(page,), width="stretch")
    if page.enabled("heatmaps") and maps is not None:
        mask_word_picker(page, maps, word_tokens)
        st.button("Mask from word", on_click=refine.mask_from_word,
                  args=(page, version, maps, word_tokens), width="stretch")
    return mode, brush


def image_canvas(page, version, *, mode: str, brush: int, enabled: bool) -> None:
    """The current version as the canvas (or as a plain image when inpainting is off), and the mask's coverage."""
    if not enabled:
        st.image(str(version.image_path), width=canvas.DISPLAY_SIDE)
        return
    prefill = refine.prefill_for(version)
    prefill_mask = prefill["mask"] if prefill else None
    key = refine.canvas_key(version)
    drawing = canvas.mask_canvas(Image.open(version.image_path), key=key, brush_size=brush, mode=mode,
                                 prefill=prefill_mask)
    if drawing is None and prefill_mask is not None:
        drawing = canvas.MaskDrawing(mask=prefill_mask, strokes=0)
    refine.keep_drawing(page, version, drawing, key)
    if drawing is not None:
        st.caption(f"Mask covers {drawing.mask.mean():.0%} of the image · {drawing.strokes} strokes"
                   + (f" · pre-filled from “{prefill['word']}”" if prefill else ""))
