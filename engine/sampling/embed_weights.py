"""The `embed` weighting method: Compel's conditioning (compel 2.5, EmbeddingsProvider, DownweightMode.MASK).

- Every position with weight w ≠ 1: z_empty + (z − z_empty)·w (the empty prompt's encoding under every chunk).
- Each fragment below 1 (a run of neighbouring tokens of one weight < 1, which is how Compel's fragments come out:
  it joins neighbours of equal weight) also gets the prompt encoded again with that fragment hidden from the text
  encoder by its attention mask (the BOS and the last position of every chunk stay visible), weighted as above.
  The result is the normalised blend of the prompt (weight 1) and each such version (weight tan((1 − w)·π/2), with
  w at least 1e-5): w 0.5 lies half-way to the prompt without the fragment, w 0 (almost) at it.
Numpy only (float32), as the rest of the sampling path.
"""
from __future__ import annotations

import math

import numpy as np

from engine.words.prompt import MAX_LENGTH

MIN_DOWNWEIGHT = 1e-5  # Compel's epsilon: weight 0 would be an infinite blend weight


def reweight(z: np.ndarray, z_empty: np.ndarray, w: list[float]) -> np.ndarray:
    """z_empty + (z − z_empty)·w at positions with w ≠ 1; other positions keep z exactly (no rounding drift)."""
    wt = np.asarray(w, dtype=z.dtype)[None, :, None]
    z_empty = np.tile(z_empty, (1, z.shape[1] // z_empty.shape[1], 1))  # the empty prompt's chunk under every chunk
    return np.where(wt != 1, z_empty + (z - z_empty) * wt, z).astype(z.dtype)


def downweighted_fragments(chunks: list[tuple[int, int]], w: list[float]) -> list[tuple[int, int, float]]:
    """(first, last, weight) of each run of content tokens with one weight below 1, in prompt order; `first` and
    `last` are positions in the 77-per-chunk layout, so a run across a chunk break spans that chunk's EOS and pads
    and the next chunk's BOS, as Compel's fragment ranges do."""
    runs: list[tuple[int, int, float]] = []
    previous = None  # the last content position seen
    for start, end in chunks:
        for i in range(start, end):
            weight = float(w[i])
            if runs and previous is not None and runs[-1][1] == previous and runs[-1][2] == weight:
                runs[-1] = (runs[-1][0], i, weight)
            elif weight < 1.0:
                runs.append((i, i, weight))
            previous = i
    return runs


def fragment_mask(n_positions: int, first: int, last: int) -> np.ndarray:
    """The attention mask hiding positions first..last, except each chunk's first and last positions (Compel keeps
    its chunk markers visible)."""
    mask = np.ones(n_positions, dtype=np.int64)
    mask[first : last + 1] = 0
    mask[0::MAX_LENGTH] = 1
    mask[MAX_LENGTH - 1 :: MAX_LENGTH] = 1
    return mask


def embed_conditioning(encode, input_ids: list[int], chunks: list[tuple[int, int]], w: list[float],
                       z: np.ndarray, z_empty: np.ndarray) -> np.ndarray:
    """The `embed` conditioning of one prompt. `encode(ids, mask)` encodes the ids of one 77-position chunk with an
    attention mask (None: all visible); `z` is the prompt's plain encoding, chunk by chunk."""
    weighted = reweight(z, z_empty, w)
    fragments = downweighted_fragments(chunks, w)
    if not fragments:
        return weighted
    versions = [weighted]
    blend = [1.0]
    for first, last, weight in fragments:
        mask = fragment_mask(len(input_ids), first, last)
        parts = []
        for c in range(0, len(input_ids), MAX_LENGTH):
            chunk_mask = mask[c : c + MAX_LENGTH]
            if chunk_mask.all():  # this chunk sees every token: its encoding is the plain one
                parts.append(z[:, c : c + MAX_LENGTH])
            else:
                parts.append(np.asarray(encode(input_ids[c : c + MAX_LENGTH], chunk_mask), dtype=np.float32))
        versions.append(reweight(np.concatenate(parts, axis=1), z_empty, w))
        blend.append(math.tan((1.0 - max(MIN_DOWNWEIGHT, weight)) * math.pi / 2))
    factors = np.asarray(blend, dtype=np.float32)
    factors = factors / factors.sum(dtype=np.float32)  # float32 throughout, as Compel's tensors
    out = versions[0] * factors[0]
    for version, factor in zip(versions[1:], factors[1:]):
        out = out + version * factor
    return out.astype(np.float32)
