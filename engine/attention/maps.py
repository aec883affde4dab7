"""DAAM-style word heatmaps from the cross-attention maps captured during sampling.

Maps are summed over steps into a few step buckets, so memory does not grow with the number of steps and a
step-range filter stays possible (at bucket granularity). Only the first `n_tokens` sequence positions are kept
(BOS, the prompt's tokens, EOS): padding positions carry no word.

Aggregation for a word (DAAM): each layer's map is upsampled bicubically to the latent grid (real H and W, so
non-square works), averaged over layers, averaged over the word's tokens (sub-words and repeats), clamped at ≥ 0
and min-max normalised. No magic shapes: each layer's (h, w) is inferred from its token count and the latent size.

Defaults chosen on the benchmark's tuning split (bench/heatmap_tuning.py, docs/benchmarks.md): only the last step
bucket, the last quarter of the steps (`default_step_range`; early steps place blobs before objects have their final
shape, and with few steps the last half still reaches back to noisy ones), and each pixel's
attention to the word divided by its attention to all the prompt's words (`DEFAULT_WORDS_ONLY`; the BOS token takes
most of the attention, by varying amounts, which dims or lights whole areas for every word alike). Explicit
`step_range=(0, total_steps)` and `words_only=False` give the plain DAAM sum.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from engine.errors import AttuneError

DEFAULT_BUCKETS = 4
DEFAULT_WORDS_ONLY = True  # default heatmaps renormalise attention over the prompt's words (BOS and EOS left out)
_CUBIC_A = -0.75  # PyTorch's bicubic kernel (F.interpolate(mode="bicubic", align_corners=False))


@functools.lru_cache(maxsize=64)  # a generation resizes the same few layer sizes every step (read-only result)
def _cubic_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of PyTorch's bicubic resampling along one axis (align_corners=False, edge clamped)."""
    a = _CUBIC_A
    scale = n_in / n_out
    real = scale * (np.arange(n_out) + 0.5) - 0.5
    base = np.floor(real)
    t = real - base
    x1, x2 = t + 1.0, 1.0 - t
    coeffs = np.stack([
        ((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a,
        ((a + 2) * t - (a + 3)) * t * t + 1,
        ((a + 2) * x2 - (a + 3)) * x2 * x2 + 1,
        ((a * (x2 + 1) - 5 * a) * (x2 + 1) + 8 * a) * (x2 + 1) - 4 * a,
    ], axis=1)
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    for k in range(4):
        idx = np.clip(base.astype(np.int64) - 1 + k, 0, n_in - 1)
        np.add.at(weights, (rows, idx), coeffs[:, k])
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def bicubic_resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (..., h, w) maps to (..., H, W) as PyTorch's bicubic F.interpolate does (numpy, no torch)."""
    h, w = maps.shape[-2:]
    out_h, out_w = int(size[0]), int(size[1])
    rows, cols = _cubic_weights(h, out_h), _cubic_weights(w, out_w)
    return (rows @ np.asarray(maps, dtype=np.float32) @ cols.T).astype(np.float32)


def _as_numpy(m) -> np.ndarray:
    if hasattr(m, "detach"):  # optional third-party type: a torch tensor (PyTorch runner), without importing torch
        m = m.detach().float().cpu().numpy()
    return np.asarray(m, dtype=np.float32)


def layer_hw(n_pixels: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) of a layer with n_pixels positions: the latent grid halved (rounding up) k times."""
    lh, lw = latent_hw
    h, w = lh, lw
    for _ in range(16):
        if h * w == n_pixels:
            return h, w
        if h * w < n_pixels or (h == 1 and w == 1):
            break
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    # Fall back to the aspect ratio (a UNet that rounds down instead of up).
    ratio = lw / lh
    h = max(1, round(math.sqrt(n_pixels / ratio)))
    if n_pixels % h == 0:
        return h, n_pixels // h
    raise AttuneError(f"Cannot infer a {n_pixels}-position layer's shape from a {lh}x{lw} latent grid.")


def bucket_ranges(total_steps: int, n_buckets: int = DEFAULT_BUCKETS) -> list[tuple[int, int]]:
    """[start, end) step ranges of the buckets: min(n_buckets, total_steps) near-equal splits."""
    total_steps = max(1, int(total_steps))
    n = max(1, min(int(n_buckets), total_steps))
    edges = [round(i * total_steps / n) for i in range(n + 1)]
    return [(edges[i], edges[i + 1]) for i in range(n)]


class AttentionMaps:
    """Cross-attention maps of one image, summed over steps per bucket."""

    def __init__(self, latent_hw: tuple[int, int], total_steps: int, *, image_hw: tuple[int, int] | None = None,
                 n_tokens: int | None = None, n_buckets: int = DEFAULT_BUCKETS) -> None:
        self.latent_hw = (int(latent_hw[0]), int(latent_hw[1]))
        self.image_hw = tuple(int(x) for x in image_hw) if image_hw else self.latent_hw
        self.total_steps = int(total_steps)
        self.bucket_steps = bucket_ranges(total_steps, n_buckets)
        self.n_tokens = n_tokens
        self.region: tuple[int, int, int, int] | None = None  # (x1, y1, x2, y2) image box the maps cover (only-masked)
        self.counts = np.zeros(len(self.bucket_steps), dtype=np.int64)  # UNet calls summed per bucket
        self._sums: dict[str, np.ndarray] = {}
        self._np: dict[str, np.ndarray] | None = None

    # ---------------------------------------------------------------- building
    def bucket_of(self, step: int) -> int:
        for i, (a, b) in enumerate(self.bucket_steps):
            if a <= step < b:
                return i
        return len(self.bucket_steps) - 1

    def add(self, step: int, maps: Mapping[str, np.ndarray], total_steps: int | None = None) -> None:
        """Add one UNet call's maps ({layer: (rows, HW, seq)}); rows are averaged (one image: rows == 1)."""
        if not maps:
            return
        if total_steps is not None and int(total_steps) != self.total_steps:
            raise ValueError("total_steps differs from the one this AttentionMaps was made for")
        b = self.bucket_of(int(step))
        for name, m in maps.items():
            t = _as_numpy(m)
            if t.ndim == 3:
                t = t[0] if t.shape[0] == 1 else t.mean(axis=0)
            if self.n_tokens is not None:
                t = t[:, : self.n_tokens]
            if name not in self._sums:
                self._sums[name] = np.zeros((len(self.bucket_steps),) + tuple(t.shape), dtype=np.float32)
            self._sums[name][b] += t
        self.counts[b] += 1
        self._np = None

    # ---------------------------------------------------------------- access
    @property
    def layers(self) -> dict[str, np.ndarray]:
        """layer name -> (n_buckets, H_l*W_l, seq) float32 sums."""
        if self._np is None:
            self._np = dict(self._sums)
        return self._np

    def __bool__(self) -> bool:
        return bool(self._sums)

    @property
    def nbytes(self) -> int:
        return sum(int(v.nbytes) for v in self._sums.values())

    @property
    def seq_len(self) -> int:
        return next(iter(self.layers.values())).shape[-1] if self._sums else 0

    def layer_shapes(self) -> dict[str, tuple[int, int]]:
        return {name: layer_hw(arr.shape[1], self.latent_hw) for name, arr in self.layers.items()}

    def resolutions(self) -> list[int]:
        """The layer heights (H_l) present, largest first."""
        return sorted({hw[0] for hw in self.layer_shapes().values()}, reverse=True)

    def layer_groups(self) -> dict[int, list[str]]:
        """The recorded cross-attention layers (the UNet's attn2 names, in its order) by resolution, largest first."""
        shapes = self.layer_shapes()
        return {r: [name for name, hw in shapes.items() if hw[0] == r] for r in self.resolutions()}

    def default_step_range(self) -> tuple[int, int]:
        """[start, end) steps a heatmap uses when no step range is given: the last bucket's (the last quarter)."""
        return self.bucket_steps[-1][0], self.total_steps

    def _select_buckets(self, step_range, all_by_default: bool = True) -> np.ndarray:
        n = len(self.bucket_steps)
        if step_range is None and not all_by_default:
            a, b = self.default_step_range()
            late = np.array([(s < b and e > a) for (s, e) in self.bucket_steps], dtype=bool) & (self.counts > 0)
            if late.any():
                return late
            # nothing recorded in the late steps: every recorded step (below)
        if step_range is None:
            sel = np.ones(n, dtype=bool)
        else:
            a, b = int(step_range[0]), int(step_range[1])
            if b <= a:
                raise AttuneError(f"Empty step range {a}-{b}: the end must be after the start.")
            sel = np.array([(s < b and e > a) for (s, e) in self.bucket_steps], dtype=bool)
        sel &= self.counts > 0
        if not sel.any():
            raise AttuneError(f"No attention maps were recorded in steps {step_range} (image has {self.total_steps} steps).")
        return sel

    def _select_layers(self, resolutions, layers=None) -> list[str]:
        """The layers at `resolutions` (heights; None: all) that are among `layers` (names; None: all)."""
        shapes = self.layer_shapes()
        if resolutions is None:
            names = list(shapes)
        else:
            wanted = {int(r) for r in ([resolutions] if isinstance(resolutions, int) else resolutions)}
            names = [n for n, hw in shapes.items() if hw[0] in wanted]
            if not names:
                raise AttuneError(
                    f"No attention layers at resolution {sorted(wanted)}: available {self.resolutions()}."
                )
        if layers is not None:
            chosen = {str(layers)} if isinstance(layers, str) else {str(n) for n in layers}
            unknown = sorted(chosen - set(shapes))
            if unknown:
                raise AttuneError(f"No attention layer named {unknown[0]} in these maps.")
            names = [n for n in names if n in chosen]
            if not names:
                raise AttuneError("None of the chosen attention layers is at the chosen resolutions.")
        if not names:
            raise AttuneError("No attention maps were recorded for this image.")
        return names

    def token_map(self, token_indices: Iterable[int], *, resolutions=None, step_range=None,
                  size: tuple[int, int] | None = None, words_only: bool | None = None,
                  word_positions: Iterable[int] | None = None, layers=None) -> np.ndarray:
        """Mean map over the given token positions (DAAM), clamped ≥ 0, not normalised. Shape latent_hw or size.

        step_range None: the default range (`default_step_range`). words_only (default DEFAULT_WORDS_ONLY): each
        layer's attention to the tokens divided, per pixel, by its attention to the prompt's word tokens:
        `word_positions` (WordTokens.word_positions: a long prompt's chunks each have their own BOS, EOS and padding),
        else the positions between the first BOS and the last EOS (one chunk); needs `n_tokens` (maps without it are
        left as they are)."""
        idx = sorted({int(i) for i in token_indices})
        if not idx:
            raise AttuneError("No tokens given for the heatmap.")
        if idx[0] < 0 or idx[-1] >= self.seq_len:
            raise AttuneError(f"Token index {idx[-1]} is outside the recorded maps (0-{self.seq_len - 1}).")
        sel = self._select_buckets(step_range, all_by_default=False)
        names = self._select_layers(resolutions, layers)
        counts = np.float32(max(1, int(self.counts[sel].sum())))
        words_only = DEFAULT_WORDS_ONLY if words_only is None else bool(words_only)
        n_tok = self.n_tokens
        renorm = words_only and n_tok is not None and 2 < n_tok <= self.seq_len
        if renorm:
            words = (sorted({int(i) for i in word_positions if 0 <= int(i) < self.seq_len})
                     if word_positions is not None else [])
            words = words or slice(1, n_tok - 1)
        lh, lw = self.latent_hw
        acc = np.zeros((lh, lw), dtype=np.float32)
        for name in names:
            summed = self._sums[name][sel].sum(axis=0)  # (HW, seq)
            if renorm:
                words_total = summed[:, words].sum(axis=1, keepdims=True)
                m = summed[:, idx] / np.maximum(words_total, np.float32(1e-8))
            else:
                m = summed[:, idx] / counts  # (HW, k)
            h, w = layer_hw(m.shape[0], self.latent_hw)
            m = np.ascontiguousarray(m.T).reshape(len(idx), h, w)
            if (h, w) != (lh, lw):
                m = bicubic_resize(m, (lh, lw))
            acc += m.mean(axis=0)
        out = np.maximum(acc / len(names), 0)
        if size is not None and tuple(size) != (lh, lw):
            out = np.maximum(bicubic_resize(out, tuple(int(x) for x in size)), 0)
        return out.astype(np.float32)

    def word_heatmap(self, word_tokens, word: str, *, resolutions=None, step_range=None,
                     size: tuple[int, int] | None = None, normalize: bool = True,
                     words_only: bool | None = None, layers=None) -> np.ndarray:
        """A word's (or phrase's) heatmap in [0, 1]; shape `size`, default the image size. Filters and defaults
        as in `token_map`; `layers` keeps only those layers (names from `layer_groups`).

        Maps of an only-masked inpaint cover a crop (`region`); by default they are placed in the full image (zeros
        outside the crop)."""
        indices = word_tokens.indices_for(word)
        if size is None and self.region is not None:
            x1, y1, x2, y2 = self.region
            m = self.token_map(indices, resolutions=resolutions, step_range=step_range, size=(y2 - y1, x2 - x1),
                               words_only=words_only, word_positions=word_tokens.word_positions, layers=layers)
            m = normalize_map(m) if normalize else m
            full = np.zeros(self.image_hw, dtype=np.float32)
            full[y1:y2, x1:x2] = m
            return full
        m = self.token_map(indices, resolutions=resolutions, step_range=step_range,
                           size=size if size is not None else self.image_hw, words_only=words_only,
                           word_positions=word_tokens.word_positions, layers=layers)
        return normalize_map(m) if normalize else m

    def word_totals(self, word_tokens, *, resolutions=None, step_range=None, layers=None) -> dict[str, float]:
        """Total attention per word: for each token of the word (all repeats), its mean attention over pixels,
        layers and steps (all of them unless step_range), summed. Keys are the words as in word_tokens.words
        (repeats merged)."""
        totals: dict[str, float] = {}
        sel = self._select_buckets(step_range)
        names = self._select_layers(resolutions, layers)
        counts = np.float32(max(1, int(self.counts[sel].sum())))
        per_token = np.zeros(self.seq_len, dtype=np.float32)
        for name in names:
            per_token += self._sums[name][sel].sum(axis=0).mean(axis=0) / counts
        per_token /= len(names)
        for word, indices in zip(word_tokens.words, word_tokens.token_indices):
            valid = [i for i in indices if 0 <= i < self.seq_len]
            if word not in totals:
                totals[word] = 0.0
            totals[word] += float(per_token[valid].sum()) if valid else 0.0
        return totals

    def mask_from_word(self, word_tokens, word: str, *, threshold: float | None = None, dilate: int | None = None,
                       size: tuple[int, int] | None = None, **filters) -> np.ndarray:
        """The word's heatmap (image size unless `size`), thresholded (default: its mean) and dilated by about
        one latent cell."""
        heat = self.word_heatmap(word_tokens, word, size=size, **filters)
        if dilate is None:
            covered_h = (self.region[3] - self.region[1]) if (self.region and size is None) else heat.shape[0]
            dilate = max(1, math.ceil(covered_h / self.latent_hw[0]))
        return mask_from_word(heat, threshold=threshold, dilate=dilate, latent_hw=self.latent_hw)

    # ---------------------------------------------------------------- files
    def save(self, path: str | Path) -> Path:
        """Compressed npz, fp16 sums (counts and geometry kept exact)."""
        path = Path(path)
        arrays = {f"layer::{name}": arr.astype(np.float16) for name, arr in self.layers.items()}
        np.savez_compressed(
            path,
            latent_hw=np.array(self.latent_hw, dtype=np.int64),
            image_hw=np.array(self.image_hw, dtype=np.int64),
            total_steps=np.array(self.total_steps, dtype=np.int64),
            bucket_steps=np.array(self.bucket_steps, dtype=np.int64).reshape(-1, 2),
            counts=self.counts,
            n_tokens=np.array(-1 if self.n_tokens is None else self.n_tokens, dtype=np.int64),
            region=np.array(self.region if self.region is not None else (-1, -1, -1, -1), dtype=np.int64),
            **arrays,
        )
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    @classmethod
    def load(cls, path: str | Path) -> "AttentionMaps":
        import zipfile

        try:
            return cls._load(path)
        except (zipfile.BadZipFile, KeyError, EOFError, TypeError, IndexError) as e:  # truncated or foreign npz
            raise AttuneError(f"{path} is not a readable attention-maps file ({type(e).__name__}).") from None

    @classmethod
    def _load(cls, path: str | Path) -> "AttentionMaps":
        try:
            data = np.load(Path(path), allow_pickle=False)
        except (OSError, ValueError) as e:
            raise AttuneError(f"Could not read attention maps from {path}: {e}") from e
        with data:
            n_tokens = int(data["n_tokens"])
            obj = cls(tuple(data["latent_hw"]), int(data["total_steps"]), image_hw=tuple(data["image_hw"]),
                      n_tokens=None if n_tokens < 0 else n_tokens)
            obj.bucket_steps = [tuple(int(x) for x in r) for r in data["bucket_steps"]]
            obj.counts = data["counts"].astype(np.int64)
            if "region" in data.files and int(data["region"][0]) >= 0:
                obj.region = tuple(int(x) for x in data["region"])
            for key in data.files:
                if key.startswith("layer::"):
                    obj._sums[key[len("layer::"):]] = data[key].astype(np.float32)
        return obj


def latent_token_maps(step_maps: dict, latent_hw: tuple[int, int], n_tokens: int) -> np.ndarray:
    """{layer: (rows, HW_l, seq)} -> (rows, n_tokens, h, w): each layer upsampled to the latent grid, layers averaged."""
    lh, lw = latent_hw
    acc = None
    for m in step_maps.values():
        t = np.asarray(m, dtype=np.float32)[:, :, :n_tokens]
        rows, hw, k = t.shape
        h, w = layer_hw(hw, latent_hw)
        t = t.transpose(0, 2, 1).reshape(rows, k, h, w)
        if (h, w) != (lh, lw):
            t = bicubic_resize(t, (lh, lw)).astype(np.float32)
        acc = t if acc is None else acc + t
    if acc is None:
        raise AttuneError("LocalBlend needs the cross-attention maps, but the UNet returned none.")
    return np.maximum(acc / np.float32(len(step_maps)), 0)


def normalize_map(m: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (an all-equal map becomes zeros)."""
    m = np.asarray(m, dtype=np.float32)
    lo, hi = float(m.min()), float(m.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo <= 1e-12:
        return np.zeros_like(m)
    return ((m - lo) / (hi - lo)).astype(np.float32)


def mask_from_word(heatmap: np.ndarray, threshold: float | None = None, dilate: int | None = None,
                   latent_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean mask: heatmap > threshold (default: its mean, as PromptCharm), dilated by `dilate` pixels
    (default: one latent cell = heatmap height / latent height, or 1 pixel when latent_hw is not given)."""
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise AttuneError(f"A heatmap must be 2-D, got shape {heat.shape}.")
    if threshold is None:
        threshold = float(heat.mean())
    elif not np.isfinite(threshold):
        raise AttuneError("The mask threshold must be a number.")
    mask = heat > float(threshold)
    if dilate is None:
        dilate = max(1, math.ceil(heat.shape[0] / latent_hw[0])) if latent_hw else 1
    dilate = int(dilate)
    if dilate < 0:
        raise AttuneError("Dilation must be ≥ 0 pixels.")
    if dilate > 0 and mask.any():
        from scipy.ndimage import binary_dilation

        mask = binary_dilation(mask, structure=np.ones((2 * dilate + 1, 2 * dilate + 1), dtype=bool))
    return mask
