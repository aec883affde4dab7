"""Metrics of the refinement benchmark (bench/refine.py), on plain numpy arrays so they can be tested on synthetic
inputs: IoU, top-k masks, PSNR, locality, area ratio, extra copies, Spearman.

Conventions: images are (H, W, 3) uint8; masks are (H, W) bool. A pixel "changes" when any channel moves by more
than CHANGE_LEVEL (20/255). "Far" pixels lie more than FAR_PX pixels from the object, in the parent or the result.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

CHANGE_LEVEL = 20  # of 255
FAR_PX = 8
NEAR_PX = 16  # the object's area is counted within this many pixels of its place in the parent


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def topk_mask(heat: np.ndarray, k: int) -> np.ndarray:
    """The k highest pixels of a map (ties broken by position)."""
    flat = np.asarray(heat).ravel()
    out = np.zeros(flat.shape, bool)
    if k > 0:
        out[np.argsort(-flat, kind="stable")[:k]] = True
    return out.reshape(np.asarray(heat).shape)


def grow(mask: np.ndarray, px: int) -> np.ndarray:
    """The mask and every pixel within px (Euclidean) of it."""
    mask = np.asarray(mask, bool)
    if px <= 0 or not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask) <= px


def changed(a: np.ndarray, b: np.ndarray, level: int = CHANGE_LEVEL) -> np.ndarray:
    """Pixels where any channel differs by more than `level`."""
    return (np.abs(a.astype(np.int16) - b.astype(np.int16)) > level).any(axis=-1)


def far_region(object_parent: np.ndarray | None, object_result: np.ndarray | None, shape, px: int = FAR_PX):
    """Pixels farther than px from the object in the parent or the result."""
    near = np.zeros(shape, bool)
    for m in (object_parent, object_result):
        if m is not None:
            near |= np.asarray(m, bool)
    return ~grow(near, px)


def locality(parent: np.ndarray, result: np.ndarray, object_parent, object_result, px: int = FAR_PX,
             level: int = CHANGE_LEVEL) -> float:
    """Share of far pixels (see far_region) that change by more than `level`: 0 = the background is kept."""
    far = far_region(object_parent, object_result, parent.shape[:2], px)
    if not far.any():
        return 0.0
    return float(changed(parent, result, level)[far].mean())


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR in dB over `where` (all pixels when None); inf when identical there, nan when `where` is empty."""
    diff = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if where is not None:
        if not np.asarray(where).any():
            return float("nan")
        diff = diff[np.asarray(where, bool)]
    mse = float(diff.mean())
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def near_area(object_mask: np.ndarray | None, parent_object: np.ndarray, px: int = NEAR_PX) -> int:
    """The object's pixels within px of where the parent had it."""
    if object_mask is None:
        return 0
    return int((np.asarray(object_mask, bool) & grow(parent_object, px)).sum())


def area_ratio(object_mask: np.ndarray | None, parent_object: np.ndarray, px: int = NEAR_PX) -> float:
    """Object area near its original place, over the parent's area there (0 when the object is gone)."""
    base = near_area(parent_object, parent_object, px)
    return near_area(object_mask, parent_object, px) / base if base else float("nan")


def extra_copies(object_mask: np.ndarray | None, parent_object: np.ndarray, min_area: int = 64,
                 px: int = NEAR_PX) -> int:
    """Pieces of the object of at least min_area pixels that lie wholly away from its original place, beyond those
    the parent already had."""
    def count(m):
        if m is None or not np.asarray(m).any():
            return 0
        labels, n = ndimage.label(np.asarray(m, bool))
        if n == 0:
            return 0
        near = grow(parent_object, px)
        idx = np.arange(1, n + 1)
        sizes = ndimage.sum(np.ones_like(labels), labels, idx)
        touching = ndimage.maximum(near, labels, idx)
        return int(((sizes >= min_area) & (touching == 0)).sum())

    return max(0, count(object_mask) - count(parent_object))


def spearman(x, y) -> float:
    """Rank correlation; 0 when y never changes (an object that does not respond scores 0, it is not dropped)."""
    y = np.asarray(y, dtype=np.float64)
    if len(np.unique(np.round(y, 9))) < 2:
        return 0.0
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)
