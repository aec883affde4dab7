"""Seeded Gaussian noise without torch: the same numbers as `torch.randn(shape, generator=torch.Generator("cpu")
.manual_seed(seed))` up to float32 rounding, so a seed gives the same image on every backend and in every install.

torch's CPU generator is a standard MT19937 seeded with init_genrand(seed & 0xffffffff). For a float32 tensor of at
least 16 values it draws one 24-bit uniform per value, then turns each block of 16 into normals with Box-Muller
(values j and j+8 of a block share a pair); a size that is not a multiple of 16 redraws 16 fresh uniforms for the
last block. (Smaller tensors use a different path: Attune's latents always have more than 16 values.)
"""
from __future__ import annotations

import numpy as np

_MT_N = 624


def _mt19937(seed: int) -> np.random.MT19937:
    """numpy's MT19937 in the state torch's `manual_seed(seed)` leaves its CPU generator in."""
    state = np.empty(_MT_N, dtype=np.uint32)
    x = int(seed) & 0xFFFFFFFF
    state[0] = x
    for i in range(1, _MT_N):
        x = (1812433253 * (x ^ (x >> 30)) + i) & 0xFFFFFFFF
        state[i] = x
    bitgen = np.random.MT19937(0)
    bitgen.state = {"bit_generator": "MT19937", "state": {"key": state, "pos": _MT_N}}
    return bitgen


def _uniform24(bitgen: np.random.MT19937, n: int) -> np.ndarray:
    raw = bitgen.random_raw(n).astype(np.uint32)  # 32-bit outputs, as torch's generator->random()
    return ((raw & np.uint32(0xFFFFFF)).astype(np.float32) * np.float32(2.0**-24)).astype(np.float32)


def _box_muller16(u: np.ndarray) -> np.ndarray:
    """u: (k, 16) uniforms -> (k, 16) normals, laid out as torch's normal_fill_16."""
    u1 = (np.float32(1.0) - u[:, :8]).astype(np.float64)
    u2 = u[:, 8:].astype(np.float64)
    radius = np.sqrt(-2.0 * np.log(u1))
    theta = 2.0 * np.pi * u2
    return np.concatenate([radius * np.cos(theta), radius * np.sin(theta)], axis=1).astype(np.float32)


def randn(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """float32 normals of `shape` (at least 16 values), matching torch.randn on a CPU generator seeded with `seed`."""
    shape = tuple(int(s) for s in shape)
    size = int(np.prod(shape))
    if size < 16:
        raise ValueError("randn needs at least 16 values (torch uses another method below that).")
    bitgen = _mt19937(seed)
    u = _uniform24(bitgen, size)
    full = size // 16 * 16
    out = np.empty(size, dtype=np.float32)
    out[:full] = _box_muller16(u[:full].reshape(-1, 16)).reshape(-1)
    if size % 16:
        tail = _uniform24(bitgen, 16)
        out[size - 16:] = _box_muller16(tail[None])[0]
    return out.reshape(shape)
