"""Small image utilities for the pages: difference image, mask tint, zip of PNGs (bytes as written, metadata kept)."""
from __future__ import annotations

import io
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
