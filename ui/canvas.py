"""The mask canvas: the one place that imports streamlit-drawable-canvas.

The component only loads inside a Streamlit server, so it is imported here, inside `mask_canvas`. Tests replace
`mask_canvas` to feed a mask. Brush strokes are semi-transparent red, eraser strokes semi-transparent white; the
mask is read back from the canvas pixels by engine.strokes_mask (painted where red is on top, erased where white
is on top). A mask pre-filled from a word's heatmap is tinted into the background and combined with the strokes, so it stays editable.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st
from PIL import Image

from engine import strokes_mask
from ui.images import tint

BRUSH = "rgba(255, 0, 80, 0.5)"
ERASER = "rgba(255, 255, 255, 0.5)"
DISPLAY_SIDE = 384  # Refine shows the image large: it is the canvas


@dataclass
class MaskDrawing:
    mask: np.ndarray   # bool (H, W) at image size, True = change
    strokes: int       # objects drawn on the canvas


def display_size(width: int, height: int, side: int = DISPLAY_SIDE) -> tuple[int, int]:
    scale = side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def mask_canvas(image: Image.Image, *, key: str, brush_size: int, mode: str, prefill: np.ndarray | None = None) -> MaskDrawing | None:
    """Draw the canvas over the image; returns the current mask, or None when the component cannot load."""
    try:
        from streamlit_drawable_canvas import st_canvas
    except Exception as error:  # e.g. no Streamlit server (bare script) or the component is missing
        st.warning(f"The mask canvas could not load ({type(error).__name__}); use “Mask from word” instead.")
        return None
    width, height = display_size(*image.size)
    result = st_canvas(
        stroke_width=brush_size,
        stroke_color=ERASER if mode == "eraser" else BRUSH,
        background_image=tint(image, prefill).resize((width, height), Image.NEAREST),
        background_image_fit="stretch",
        drawing_mode="freedraw",
        width=width,
        height=height,
        return_image_data=True,
        key=key,
    )
    strokes = len((result.json_data or {}).get("objects", []))
    pixels = result.image_data if strokes else None
    return MaskDrawing(mask=strokes_mask(pixels, image.size, prefill), strokes=strokes)
