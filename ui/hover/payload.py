"""What the hover component gets, once per version and filter setting: the image, each word's map as an 8-bit
greyscale PNG, a 256-colour table for the colour scale, and the prompt as a run of word and text pieces.

The maps travel at most MAP_SIDE pixels on the long side (the tiny model's 16×16 latent grid, bicubic-upsampled by
the engine, looks the same at 64 px as at 128 px, for a fifth of the bytes); the browser stretches them over the
image with smoothing. The image goes as PNG up to IMAGE_SIDE px, larger ones are shrunk to that and sent as JPEG.
No streamlit here, so the tests can check the payload without a server.
"""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image
from plotly.colors import get_colorscale, sample_colorscale

MAP_SIDE = 64
IMAGE_SIDE = 512


def map_size(width: int, height: int, side: int = MAP_SIDE) -> tuple[int, int]:
    """(width, height) of the maps sent: the image's aspect, at most `side` px long and never larger than the image."""
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def map_bytes(heat: np.ndarray) -> np.ndarray:
    """A [0, 1] map as the uint8 values the browser receives (rounded, clipped)."""
    return np.clip(np.rint(np.asarray(heat, dtype=np.float32) * 255), 0, 255).astype(np.uint8)


def png_base64(image: Image.Image, format: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **({"optimize": True} if format == "PNG" else {"quality": 90}))
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def image_url(image: Image.Image, side: int = IMAGE_SIDE) -> str:
    image = image.convert("RGB")
    if max(image.size) <= side:
        return "data:image/png;base64," + png_base64(image)
    scale = side / max(image.size)
    small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
    return "data:image/jpeg;base64," + png_base64(small, "JPEG")


def colour_table(colorscale: str) -> str:
    """The colour scale sampled at 256 levels, as 768 hex digits per level r, g, b (plotly's own interpolation)."""
    colours = sample_colorscale(get_colorscale(colorscale), [i / 255 for i in range(256)], colortype="tuple")
    return "".join(f"{round(c * 255):02x}" for rgb in colours for c in rgb)


def prompt_pieces(text: str | None, words: list[str], mapped: set[str]) -> list[dict]:
    """The prompt as shown: [{"text", "word"}], where "word" (lower case) names the map of a word that has one and
    is None for spaces, punctuation and words without a map. Words are found in `text` in order; without a text
    (or a word that is not in it) the words are shown one space apart."""
    pieces: list[dict] = []
    position = 0
    source = text or ""
    for word in words:
        found = source.find(word, position) if source else -1
        if found < 0:
            gap = " " if pieces else ""
        else:
            gap, position = source[position:found], found + len(word)
        if gap:
            pieces.append({"text": gap, "word": None})
        pieces.append({"text": word, "word": word.lower() if word.lower() in mapped else None})
    if source and position < len(source) and pieces:
        pieces.append({"text": source[position:], "word": None})
    return pieces


def hover_payload(image: Image.Image, words: list[str], heatmaps: dict[str, np.ndarray], totals: dict[str, float], *,
                  text: str | None = None, unknown=(), pinned: str | None = None, opacity: float = 0.55,
                  colorscale: str = "Jet", version: str | None = None) -> dict:
    """The component's data (JSON). `heatmaps` (word -> [0, 1] map) should be at `map_size(*image.size)`; a map of
    another size is resized (bilinear)."""
    width, height = map_size(*image.size)
    top = max([float(totals.get(w, 0.0)) for w in heatmaps] + [1e-12])
    unknown = {str(w).lower() for w in unknown}
    maps = {}
    for word, heat in heatmaps.items():
        pixels = map_bytes(heat)
        picture = Image.fromarray(pixels, "L")
        if picture.size != (width, height):
            picture = picture.resize((width, height), Image.BILINEAR)
        maps[word.lower()] = {
            "label": word,
            "png": png_base64(picture),
            "shade": round(float(totals.get(word, 0.0)) / top, 4),
            "total": float(totals.get(word, 0.0)),
            "unknown": word.lower() in unknown,
        }
    pinned = pinned.lower() if pinned and pinned.lower() in maps else None
    return {
        "image": image_url(image),
        "aspect": [image.width, image.height],
        "map_size": [width, height],
        "maps": maps,
        "pieces": prompt_pieces(text, list(words), set(maps)),
        "colours": colour_table(colorscale),
        "opacity": float(opacity),
        "pinned": pinned,
        "version": version,
    }
