"""Masks: one rule for turning images, arrays and canvas strokes into a bool (H, W) array, True = change.

The one alpha rule: a pixel with an alpha channel counts as drawn where its alpha is above ALPHA_DRAWN. It serves
mask files with transparency (a stroke layer) and the Refine canvas, whose strokes are semi-transparent.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.errors import AttuneError

ALPHA_DRAWN = 32  # of 255: semi-transparent strokes (alpha 128) count, anti-aliasing fringes do not


def drawn(alpha: np.ndarray) -> np.ndarray:
    """Where an alpha channel (uint8) marks a drawn pixel."""
    return np.asarray(alpha) > ALPHA_DRAWN


def mask_array(mask, size: tuple[int, int]) -> np.ndarray:
    """A bool (H, W) array, True where the image is to change, from an array, a PIL image, a path or PNG bytes.

    White (> 127) means change; an image with transparency is a stroke layer: drawn (see `drawn`) means change.
    The size must match the image (width, height)."""
    if isinstance(mask, (str, Path, bytes, bytearray)):
        try:
            source = io.BytesIO(mask) if isinstance(mask, (bytes, bytearray)) else Path(mask)
            if isinstance(source, Path) and not source.is_file():
                raise AttuneError(f"No such mask file: {source}")
            with Image.open(source) as opened:
                mask = opened.copy()
        except Image.DecompressionBombError:
            from engine.study.pngmeta import too_large_message

            raise AttuneError(too_large_message("The mask")) from None
        except (UnidentifiedImageError, OSError) as error:
            raise AttuneError(f"The mask is not a readable image ({type(error).__name__}).") from None
    if isinstance(mask, Image.Image):
        if mask.mode in ("RGBA", "LA") and mask.getextrema()[-1][0] < 255:
            mask = drawn(np.asarray(mask.getchannel("A")))
        else:
            mask = np.asarray(mask.convert("L")) > 127
    array = np.asarray(mask)
    if array.ndim == 3:
        array = array.max(axis=2)
    if array.ndim != 2:
        raise AttuneError(f"The mask must be a 2-D image; got shape {tuple(array.shape)}.")
    if array.dtype != bool:
        array = array > (127 if array.dtype == np.uint8 or array.max(initial=0) > 1 else 0.5)
    width, height = size
    if array.shape != (height, width):
        raise AttuneError(f"The mask is {array.shape[1]}x{array.shape[0]} but the image is {width}x{height}.")
    if not array.any():
        raise AttuneError("The mask is empty: paint the area to change (white = change).")
    return array


def strokes_mask(rgba: np.ndarray | None, size: tuple[int, int], prefill: np.ndarray | None = None) -> np.ndarray:
    """Brush and eraser strokes read from canvas pixels, combined with a pre-filled mask, at image size (w, h).

    Brush strokes are red, eraser strokes white (both semi-transparent); whichever is on top wins a pixel."""
    width, height = size
    mask = np.zeros((height, width), bool) if prefill is None else np.asarray(prefill, bool).copy()
    if rgba is None or rgba.ndim != 3 or rgba.shape[2] < 4:
        return mask
    stroke = drawn(rgba[..., 3])
    painted = stroke & (rgba[..., 1] < 128)
    erased = stroke & ~painted

    def down(layer: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(layer.astype(np.uint8) * 255).resize((width, height), Image.BILINEAR)) >= 128

    return (mask | down(painted)) & ~down(erased)
