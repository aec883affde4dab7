"""Colour segmenter for scene-world images, rendered or generated.

Each pixel goes to the nearest colour family of train/world.py's palette (a base colour times a brightness in
the class's range), if it is within a colour-distance gate. An object counts only as a connected region whose
core has a minimum area, where the core is the region's flat (low colour gradient) pixels after a 3x3 opening.
Blurry edges are mixtures of two colours: most fail the gate, and the rest are steep, so they have no core.
A soft moon edge, whose colour passes through grey, is never a grey wolf.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from train.world import PALETTE, star_field

CLASSES = list(PALETTE)
SKY_CLASSES = ("night sky", "dusk sky", "day sky")
GATE = 40.0  # max RGB distance to a colour family
MIN_AREA = 64  # one latent cell of pixels
EDGE_SLOPE = 15.0  # RGB change per pixel above which a pixel is an edge, not an object's interior


def classify(image) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: class index into CLASSES (-1 = nothing within the gate), and the distance to that class."""
    px = np.asarray(image, dtype=np.float32)[..., :3]
    best_d = np.full(px.shape[:2], np.inf, np.float32)
    best = np.full(px.shape[:2], -1, np.int16)
    for k, name in enumerate(CLASSES):
        colours, (lo, hi) = PALETTE[name]
        for c in colours:
            c = np.asarray(c, np.float32)
            s = np.clip((px @ c) / float(c @ c), lo, hi)
            d = np.linalg.norm(px - np.clip(s[..., None] * c, 0, 255), axis=-1)
            better = d < best_d
            best_d[better] = d[better]
            best[better] = k
    best[best_d > GATE] = -1
    return best, best_d


def _flat(image) -> np.ndarray:
    """Pixels where the colour changes slowly: blur transitions between two colours are steep, object interiors flat."""
    px = np.asarray(image, dtype=np.float32)[..., :3]
    gy, gx = np.gradient(px, axis=(0, 1))
    return np.sqrt((gx ** 2 + gy ** 2).sum(-1)) < EDGE_SLOPE


def _regions(mask: np.ndarray, min_area: int, flat: np.ndarray | None = None) -> np.ndarray:
    """Connected regions whose core (flat pixels, after a 3x3 opening) has at least min_area pixels; the whole
    region's pixels are returned."""
    core = ndimage.binary_opening(mask if flat is None else mask & flat, structure=np.ones((3, 3), bool))
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    core_areas = ndimage.sum(core, labels, index=np.arange(1, n + 1))
    keep = np.zeros(n + 1, bool)
    keep[1:] = core_areas >= min_area
    return keep[labels]


def found_inside(image, name: str, mask: np.ndarray) -> bool:
    """The inpaint benchmark's check (bench.refine): the segmenter finds `name` with at least MIN_AREA pixels
    inside the mask."""
    found = segment(image).get(name)
    return found is not None and int((found & mask).sum()) >= MIN_AREA


def segment(image, *, min_area: int = MIN_AREA) -> dict[str, np.ndarray]:
    """Object name -> bool mask, for every object found. Names as in train.world.Scene.masks."""
    label, _ = classify(image)
    flat = _flat(image)
    out: dict[str, np.ndarray] = {}
    sky_idx = [CLASSES.index(s) for s in SKY_CLASSES]
    stars_idx = CLASSES.index("stars")
    for k, name in enumerate(CLASSES):
        if k in sky_idx or k == stars_idx:
            continue
        region = _regions(label == k, min_area, flat)
        if region.any():
            out[name] = region
    sky_px = np.isin(label, sky_idx)
    # Stars are small by nature, so no core test: a star is a blob of >= 4 star-coloured pixels with neither ground
    # nor clouds around it (blends of day sky with snow or clouds are pale cyan too, but lie on a boundary), and a
    # star field needs >= 2 stars.
    star_px = label == stars_idx
    blobs, n = ndimage.label(star_px)
    if n:
        idx = np.arange(1, n + 1)
        sizes = ndimage.sum(star_px, blobs, index=idx)
        grown = ndimage.grey_dilation(blobs, size=(7, 7))
        ring = (grown > 0) & ~star_px
        ground_px = np.isin(label, [CLASSES.index(g) for g in ("grass", "snow", "sand")])
        ring_size = np.maximum(ndimage.sum(ring, grown, index=idx), 1)
        ring_ground = ndimage.sum(ring & ground_px, grown, index=idx) / ring_size
        ring_clouds = ndimage.sum(ring & (label == CLASSES.index("clouds")), grown, index=idx) / ring_size
        good = np.zeros(n + 1, bool)
        good[1:] = (sizes >= 4) & (ring_ground < 0.15) & (ring_clouds < 0.1)
        if good.sum() >= 2:
            out["stars"] = star_field(good[blobs], sky_px | star_px)
    sky = _regions(sky_px, min_area, flat)
    if sky.any():
        out["sky"] = sky
    return out


def sky_kind(image) -> str | None:
    """The sky colour family that covers most pixels, as 'night' | 'dusk' | 'day', or None."""
    label, _ = classify(image)
    counts = [(label == CLASSES.index(s)).sum() for s in SKY_CLASSES]
    return SKY_CLASSES[int(np.argmax(counts))].split()[0] if max(counts) > 0 else None


def brightness(image, mask: np.ndarray) -> float:
    """Mean luminance (0-255) of the pixels in mask, 0 if empty."""
    if not mask.any():
        return 0.0
    px = np.asarray(image, dtype=np.float32)[..., :3][mask]
    return float((px @ np.array([0.299, 0.587, 0.114], np.float32)).mean())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
