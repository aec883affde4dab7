"""Small image utilities for the pages: difference image, mask tint, zip of PNGs (bytes as written, metadata kept),
and the bytes st.image shows for a version's PNG (computed once per file and width)."""
from __future__ import annotations

import base64
import functools
import io
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def difference_image(a: Image.Image, b: Image.Image, gain: float = 4.0) -> Image.Image:
    """|a − b| per pixel, amplified so small changes are visible; b is resized to a if sizes differ."""
    a = a.convert("RGB")
    b = b.convert("RGB").resize(a.size)
    diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).astype(np.float32)
    return Image.fromarray(np.clip(diff * gain, 0, 255).astype(np.uint8))


def tint(image: Image.Image, mask: np.ndarray | None, color=(255, 0, 80), alpha: float = 0.45) -> Image.Image:
    """The image with the mask's pixels tinted, to show a pre-filled mask under the canvas strokes."""
    base = image.convert("RGB")
    if mask is None or not mask.any():
        return base
    mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(base.size, Image.NEAREST)) > 0
    pixels = np.asarray(base, dtype=np.float32)
    pixels[mask] = pixels[mask] * (1 - alpha) + np.array(color, dtype=np.float32) * alpha
    return Image.fromarray(pixels.astype(np.uint8))


def zip_files(paths: list[Path], names: list[str]) -> bytes:
    """A zip of the given files under the given names; PNGs are copied byte for byte so their metadata stays."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, name in zip(paths, names):
            archive.write(path, name)
    return buffer.getvalue()


def display_image(path, width: int) -> bytes | str:
    """What `st.image(path, width=width)` would send for a PNG on disk: at most `width` pixels wide (bilinear), JPEG
    quality 90 (PNG when it has alpha), as Streamlit makes it; cached per file (path, mtime, size) and width.

    Streamlit redoes that decode, resize and encode for every image on every page run: the version strip shows every
    version, so a long session at 512 px spent ~7 ms per thumbnail per run. A file that cannot be read gives the path
    back, so st.image reports it as before."""
    try:
        stat = os.stat(path)
    except OSError:
        return str(path)
    return _display_bytes(str(path), stat.st_mtime_ns, stat.st_size, int(width))


def display_data_url(path, width: int) -> str:
    """display_image as a data URL: st.image puts it in the page's message itself, so the browser draws the new
    version without a second request to the server (which answers it between the page run's own work)."""
    data = display_image(path, width)
    if isinstance(data, str):
        return data
    kind = "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"


@functools.lru_cache(maxsize=256)
def _display_bytes(path: str, mtime_ns: int, size: int, width: int) -> bytes:
    with Image.open(path) as opened:
        opened.load()
        picture = opened
        if picture.width > width:
            picture = picture.resize((width, int(picture.height * width / picture.width)), Image.BILINEAR)
        keeps_alpha = picture.mode in {"RGBA", "LA", "P"}
        if not keeps_alpha and picture.mode != "RGB":
            picture = picture.convert("RGB")
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG" if keeps_alpha else "JPEG", quality=90)
    return buffer.getvalue()
