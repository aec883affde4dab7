"""Refine's image: the mask canvas itself (the image, scaled up), with its tools beside it: brush / eraser, brush
size, clear, and "mask from word" with the prompt's words to hover and pin (ui.hover, over a small copy of the
image). The actions are in ui/refine.py."""
from __future__ import annotations

import streamlit as st
from PIL import Image

from ui import canvas, refine
from ui.hover import map_size, word_hover
from ui.state import Keys

HOVER_HEIGHT = 120  # px: the small copy under the words; the canvas is the big one


def mask_word_picker(page, version, maps, word_tokens) -> str:
    """The prompt's words over a small copy of the image: hovering one shows its heatmap, a click pins it. Returns the
    word "Mask from word" uses: the pinned one, else the last hovered, else "sky" (or the first word)."""
    image = Image.open(version.image_path)
    width, height = map_size(*image.size)
    words = word_tokens.display_words()
    hover = word_hover(image, word_tokens.words,
                       {w: maps.word_heatmap(word_tokens, w, size=(height, width)) for w in words},
                       maps.word_totals(word_tokens), key="refine_hover", height=HOVER_HEIGHT, text=word_tokens.text,
                       unknown={w.lower() for w in word_tokens.unknown_words}, version=version.id, log=page.event)
    hovered = [event["word"] for event in hover.events if event["action"] == "word_hover"]
    if hovered:
        st.session_state[Keys.MASK_WORD] = hovered[-1]
    if hover.pinned:
        return hover.pinned
    last = st.session_state.get(Keys.MASK_WORD)
    return last if last in words else ("sky" if "sky" in words else words[0])


def tools(page, version, maps, word_tokens) -> tuple[str, int]:
    """The tool column; returns (mode, brush size)."""
    mode = st.segmented_control("Tool", ["brush", "eraser"], default="brush", key=Keys.MASK_TOOL,
                                format_func=str.capitalize) or "brush"
    st.caption("Eraser strokes remove from the mask" if mode == "eraser" else "Brush strokes add to the mask")
    brush = st.slider("Brush size", 2, 60, 24, key=Keys.BRUSH, persist_state="session")
    st.button("Clear mask", on_click=refine.clear_mask, args=(page,), width="stretch")
    if page.enabled("heatmaps") and maps is not None:
        word = mask_word_picker(page, version, maps, word_tokens)
        st.button("Mask from word", on_click=refine.mask_from_word, args=(page, version, maps, word_tokens, word),
                  width="stretch", help="The heatmap of the word pinned (or last hovered) above becomes the mask")
        st.caption(f"word: “{word}”")
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
