"""Masks: one rule for turning images, arrays and canvas strokes into a bool (H, W) array, True = change.

The one alpha rule: a pixel with an alpha channel counts as drawn where its alpha is above ALPHA_DRAWN. It serves
mask files with transparency (a stroke layer) and the Refine canvas, whose strokes are semi-transparent. Without
transparency, white (> 127 of 255, > 0.5 for floats in [0, 1]) means change. `bool_mask` is the rule for arrays;
`mask_array` reads files, PNG bytes and PIL images with it; the engine's inpaint checks call `bool_mask` too.
The paste-back rule lives here as well: `feather_alpha` and `paste_back` keep every pixel outside a mask exactly.
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


def bool_mask(mask) -> np.ndarray:
    """A (H, W) bool array from a 2-D array or an (H, W, C) image array, True = change. Colour channels: their max
    is white (> 127 for uint8 or values above 1, else > 0.5); 2 or 4 channels with some transparency: `drawn` alpha."""
    array = np.asarray(mask)
    if array.ndim == 3:
        alpha = array[..., -1] if array.shape[-1] in (2, 4) else None
        if alpha is not None and array.dtype == np.uint8 and alpha.min(initial=255) < 255:
            return drawn(alpha)
        array = array[..., : array.shape[-1] - (alpha is not None)].max(axis=-1)
    if array.ndim != 2:
        raise AttuneError(f"The mask must be 2-D (height x width), got shape {tuple(array.shape)}.")
    if array.dtype != bool:
        array = array > (127 if array.dtype == np.uint8 or array.max(initial=0) > 1 else 0.5)
    return array


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
            raise AttuneError(too_large_message("The mask")) from None
        except (UnidentifiedImageError, OSError) as error:
            raise AttuneError(f"The mask is not a readable image ({type(error).__name__}).") from None
    if isinstance(mask, Image.Image):
        if mask.mode in ("RGBA", "LA") and mask.getextrema()[-1][0] < 255:
            mask = drawn(np.asarray(mask.getchannel("A")))
        else:
            mask = np.asarray(mask.convert("L")) > 127
    array = bool_mask(mask)
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


def feather_alpha(mask: np.ndarray, blur: int) -> np.ndarray:
    """Paste-back weight in [0, 1], feathered INSIDE the mask (DESIGN §1: a version changes only inside the mask):
    exactly 0 outside it, rising smoothly (smoothstep of the distance to the mask's edge) to 1 at 2·blur pixels in.
    Thin masks reach 1 at their middle. blur 0 = the hard mask."""
    m = np.asarray(mask, dtype=bool)
    if blur <= 0 or m.all():
        return m.astype(np.float32)
    from scipy.ndimage import distance_transform_edt

    dist = distance_transform_edt(m)  # 1 on the mask's edge pixels, 0 outside
    t = np.clip(dist / min(2.0 * blur, float(dist.max())), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def paste_back(original: np.ndarray, generated: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """alpha·generated + (1−alpha)·original, exactly the original wherever alpha == 0."""
    a = alpha[..., None]
    out = np.rint(a * generated.astype(np.float32) + (1 - a) * original.astype(np.float32))
    out = np.clip(out, 0, 255).astype(np.uint8)
    return np.where(a > 0, out, original)


def too_large_message(name) -> str:
    """An image over Pillow's pixel limit (a decompression bomb, or just far too big to inpaint)."""
    return (f"{name} is too large to open: it declares more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels "
            "(a decompression bomb?).")


def fill_from_surroundings(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the mask's pixels filled from the pixels around it (an erase with no prompt to run).

    Push-pull: average the known pixels down an image pyramid, then fill each level's unknown pixels from the
    coarser level on the way back up; known pixels keep their values. Plain float64 numpy sums, so the same inputs
    give the same bits on any machine (replay)."""
    known = ~np.asarray(mask, dtype=bool)
    if not known.any():
        raise AttuneError("The mask covers the whole image, so there is nothing around it to fill from.")
    colour = np.asarray(image, dtype=np.float64)[..., :3] * known[..., None]
    weight = known.astype(np.float64)
    levels = []
    while max(weight.shape) > 1:
        levels.append((colour, weight))
        h, w = weight.shape
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        padded_c = np.zeros((h2 * 2, w2 * 2, 3))
        padded_c[:h, :w] = colour
        padded_w = np.zeros((h2 * 2, w2 * 2))
        padded_w[:h, :w] = weight
        colour = padded_c.reshape(h2, 2, w2, 2, 3).sum(axis=(1, 3))
        weight = padded_w.reshape(h2, 2, w2, 2).sum(axis=(1, 3))
    estimate = colour / np.maximum(weight, 1e-12)[..., None]
    for colour, weight in reversed(levels):
        h, w = weight.shape
        coarse = np.repeat(np.repeat(estimate, 2, axis=0), 2, axis=1)[:h, :w]
        share = np.clip(weight, 0.0, 1.0)[..., None]
        estimate = share * colour / np.maximum(weight, 1e-12)[..., None] + (1.0 - share) * coarse
    return np.clip(np.rint(estimate), 0, 255).astype(np.uint8)


def erase_by_fill(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """An erase with no prompt: the mask filled from its surroundings, pasted with the hard mask. The fill already
    meets its surroundings at the mask's edge; a feather would blend the erased object's own edge back in (on the
    built-in model's tuning split, 0.73 -> 0.85 of 60 erases had the background back; bench/erase_fill.py)."""
    original = np.asarray(image, dtype=np.uint8)[..., :3]
    return paste_back(original, fill_from_surroundings(original, mask), np.asarray(mask, dtype=np.float32))
