"""Keeping the layout when words are reweighted: a reweight is an edit of its parent run (Prompt-to-Prompt).

Layout modes (`LAYOUT_MODES`):
- `free`: the plain re-run with the new weights; the whole picture may move (the behaviour before layouts).
- `blend`: LocalBlend. The parent's trajectory (its latents after every step and its cross-attention maps) is
  known: cached from the parent's own run, or recomputed with the same seed and parameters. After every step of the
  edit, x = x_parent + m·(x_edit − x_parent), where m is the union of the reweighted words' cross-attention in the
  parent and in the edit (maps summed over the steps so far, averaged over layers, min-max normalised, above
  BLEND_THRESHOLD), grown by BLEND_DILATE latent cells. Outside m the edit's latents are the parent's. The VAE
  decoder spreads any latent change a little over the whole image, so after decoding the parent's pixels are put
  back outside the last mask (feathered inside it, as inpainting does): outside it the edit is bit-identical.
- `inject`: Prompt-to-Prompt attention injection (engine/attention/injection.py): the edit re-runs with the parent's
  self-attention in the first steps and the parent's cross-attention for every token but the reweighted ones.
- `blend+inject`: both: injection inside LocalBlend, with the same paste-back.
The two injection modes run on the PyTorch backend only (the ONNX graphs have no inputs for the parent's attention;
chosen there, a reweight stops with a one-line error). docs/benchmarks.md compares the four on the tuning split.

Slider values are mapped to each method's internal scale (`slider_scale`) so that the labels hold at default
settings: 0 removes the word's object, 0.5 reduces it, 1 is the parent, 1.5 and 2 enlarge it.
The knots were measured on the refinement benchmark's tuning split (bench/refine.py --split tuning). Above 1 no
linear gain made growth monotone there (ABOVE_ONE_GAIN stays empty; docs/benchmarks.md).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import numpy as np

from engine.errors import AttuneError

LAYOUT_MODES = ("blend", "free", "inject", "blend+inject")
DEFAULT_LAYOUT = "blend"
TORCH_ONLY_LAYOUTS = ("inject", "blend+inject")  # attention injection (engine/attention/injection.py) has no ONNX graph inputs
PORTABLE_LAYOUTS = tuple(mode for mode in LAYOUT_MODES if mode not in TORCH_ONLY_LAYOUTS)  # every backend runs these
BLEND_THRESHOLD = 0.3  # share of the word's peak attention inside the blend mask
BLEND_DILATE = 1  # latent cells the mask grows by
PASTE_FEATHER = 4  # pixels: the edit fades in over 2x this inside the blend mask

# Slider value -> internal scale, piecewise linear through these knots; above 1 the scale is the slider value.
# Tuning split at guidance 4 (engine.defaults; bench/results/refine_guidance_tuning_knots_*.json, blend, 33 objects):
# with `score` an internal 0.75 / 0.8 / 0.82 / 0.84 / 0.88 left a median 0.77 / 0.74 / 0.77 / 0.86 / 0.95 of the
# object's area, found in 85 / 85 / 91 / 94 / 94% of cases, so slider 0.5 maps to 0.82; with `prob` an internal
# 0.4 / 0.6 left 0.84 / 0.93 (found in 91 / 97%), so slider 0.5 maps to 0.4 (its 0.25 knot is interpolated).
# `embed` keeps the knots measured at guidance 7.5 (bench/results/refine_tuning.json: an internal 0.5 erased most
# objects). Slider 0 stays 0 (the word's object removed).
SLIDER_KNOTS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "score": ((0.0, 0.25, 0.5, 1.0), (0.0, 0.75, 0.82, 1.0)),
    "prob": ((0.0, 0.25, 0.5, 1.0), (0.0, 0.2, 0.4, 1.0)),
    "embed": ((0.0, 0.25, 0.5, 1.0), (0.0, 0.75, 0.88, 1.0)),
}


# Above 1: internal scale = 1 + gain·(slider − 1) (no entry: gain 1, the scale is the slider value). Empty: on the
# tuning split (bench/results/refine_gain_tuning.json) score at gain 0.5 did not grow objects, prob at gain 3 broke
# them at 2. bench/refine.py --tune gain_above_one=METHOD:GAIN tries others.
ABOVE_ONE_GAIN: dict[str, float] = {}


def slider_scale(method: str, value: float) -> float:
    """The internal scale a slider value stands for, for a weighting method (1 -> 1 exactly)."""
    value = float(value)
    if value >= 1.0:
        return 1.0 + ABOVE_ONE_GAIN.get(method, 1.0) * (value - 1.0) if method in ABOVE_ONE_GAIN else value
    if method not in SLIDER_KNOTS:
        return value
    xs, ys = SLIDER_KNOTS[method]
    return float(np.interp(value, xs, ys))


def uses_blend(layout: str) -> bool:
    return layout in ("blend", "blend+inject")


def uses_injection(layout: str) -> bool:
    return layout in ("inject", "blend+inject")


def check_layout(layout) -> str:
    value = str(layout).strip().lower() if isinstance(layout, str) else layout
    if value not in LAYOUT_MODES:
        raise AttuneError(f"Unknown layout '{layout}': choose one of {', '.join(LAYOUT_MODES)}.")
    return value


@dataclass
class RunSpec:
    """How to reproduce a run: its parameters, its layout mode and (for blend) the run it was an edit of."""

    params: object  # engine.pipeline.attune.GenerateParams
    layout: str = "free"
    parent: "RunSpec | None" = None

    def key(self, backend: str) -> str:
        p = dataclasses.asdict(self.params)
        p["weights"] = {str(k).strip(): round(float(v), 6) for k, v in sorted((p.get("weights") or {}).items())
                        if float(v) != 1.0}
        if not p["weights"]:
            p["weight_mode"] = None  # no weights: the method does not matter
        parent = self.parent.key(backend) if (self.parent is not None and self.layout != "free") else None
        return json.dumps({"p": p, "layout": self.layout, "parent": parent, "backend": backend}, sort_keys=True,
                          default=str)


@dataclass
class Trajectory:
    """One run's latents after every step and its token maps (summed over steps 0..i, averaged over layers)."""

    latents: list[np.ndarray] = field(default_factory=list)  # (1, C, h, w) per step
    token_maps: list[np.ndarray] = field(default_factory=list)  # (n_tokens, h, w) per step, cumulative (fp16)
    image: np.ndarray | None = None  # the decoded image (H, W, 3) uint8
    attention: object | None = None  # engine.attention.injection.AttentionRecord, when an `inject` edit needed it

    @property
    def nbytes(self) -> int:
        return sum(int(t.nbytes) for t in self.latents + self.token_maps) + int(getattr(self.attention, "nbytes", 0))


def latent_token_maps(step_maps: dict, latent_hw: tuple[int, int], n_tokens: int) -> np.ndarray:
    """{layer: (rows, HW_l, seq)} -> (rows, n_tokens, h, w): each layer upsampled to the latent grid, layers averaged."""
    from engine.attention.maps import bicubic_resize, layer_hw

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


def _grow(mask: np.ndarray, cells: int) -> np.ndarray:
    """Binary dilation by a (2·cells+1)² square (a max filter; edges do not wrap)."""
    h, w = mask.shape
    padded = np.pad(mask, cells)
    out = np.zeros_like(mask)
    for dy in range(2 * cells + 1):
        for dx in range(2 * cells + 1):
            out = np.maximum(out, padded[dy:dy + h, dx:dx + w])
    return out


def blend_mask(maps: np.ndarray, token_indices: list[int], threshold: float = BLEND_THRESHOLD,
               dilate: int = BLEND_DILATE) -> np.ndarray:
    """(rows, n_tokens, h, w) token maps -> (1, 1, h, w) float mask: the union over rows of the mean map of the
    tokens, min-max normalised per row, above threshold, grown by `dilate` cells."""
    maps = np.asarray(maps, dtype=np.float32)
    if not token_indices:
        return np.zeros((1, 1) + tuple(maps.shape[-2:]), dtype=np.float32)
    m = maps[:, token_indices].mean(axis=1)  # (rows, h, w)
    flat = m.reshape(m.shape[0], -1)
    lo, hi = flat.min(axis=1)[:, None, None], flat.max(axis=1)[:, None, None]
    norm = (m - lo) / np.maximum(hi - lo, 1e-12)
    mask = (norm > threshold).any(axis=0).astype(np.float32)
    if dilate > 0:
        mask = _grow(mask, dilate)
    return mask[None, None]


class LocalBlend:
    """Blends an edit's latents with its parent's after every step (see the module docstring)."""

    def __init__(self, parent: Trajectory, token_indices: list[int], *, threshold: float = BLEND_THRESHOLD,
                 dilate: int = BLEND_DILATE) -> None:
        self.parent = parent
        self.token_indices = sorted(set(int(i) for i in token_indices))
        self.threshold = float(threshold)
        self.dilate = int(dilate)
        self._edit_sum: np.ndarray | None = None
        self.last_mask: np.ndarray | None = None

    def __call__(self, step: int, x: np.ndarray, edit_maps: np.ndarray) -> np.ndarray:
        """x: the edit's latents after `step`; edit_maps: this step's (1, n_tokens, h, w) token maps of the edit."""
        if step >= len(self.parent.latents):
            raise AttuneError("The parent run has fewer steps than this edit; reweight needs the same settings.")
        self._edit_sum = edit_maps if self._edit_sum is None else self._edit_sum + edit_maps
        parent_maps = self.parent.token_maps[step].astype(np.float32)[None]
        n = min(parent_maps.shape[1], self._edit_sum.shape[1])
        both = np.concatenate([parent_maps[:, :n], self._edit_sum[:, :n]], axis=0)
        idx = [i for i in self.token_indices if i < n]
        mask = blend_mask(both, idx, self.threshold, self.dilate).astype(x.dtype)
        self.last_mask = mask
        x_parent = self.parent.latents[step].astype(x.dtype)
        return x_parent + mask * (x - x_parent)

    def pixel_mask(self, image_hw: tuple[int, int]) -> np.ndarray:
        """The last blend mask at image size (each latent cell covers its pixels), bool."""
        if self.last_mask is None:
            return np.zeros(image_hw, bool)
        m = np.asarray(self.last_mask)[0, 0] > 0
        fy, fx = image_hw[0] // m.shape[0], image_hw[1] // m.shape[1]
        return np.kron(m, np.ones((fy, fx), bool))[: image_hw[0], : image_hw[1]]

    def paste(self, image: np.ndarray) -> np.ndarray:
        """The edit's pixels inside the last blend mask (feathered inside it), the parent's exactly outside it.
        Outside the mask the latents already are the parent's; the VAE decoder still spreads a change a little
        everywhere, so the parent's decoded pixels are put back there."""
        from engine.sampling.loop import feather_alpha, paste_back

        if self.parent.image is None or self.parent.image.shape != image.shape:
            return image
        mask = self.pixel_mask(image.shape[:2])
        if not mask.any():  # nothing reweighted: the parent itself
            return self.parent.image.copy()
        return paste_back(self.parent.image, image, feather_alpha(mask, PASTE_FEATHER))


def changed_tokens(parent_weights: list[float], edit_weights: list[float]) -> list[int]:
    """Token positions whose effective weight differs between the parent and the edit."""
    n = max(len(parent_weights), len(edit_weights))
    pw = list(parent_weights) + [1.0] * (n - len(parent_weights))
    ew = list(edit_weights) + [1.0] * (n - len(edit_weights))
    return [i for i in range(n) if abs(pw[i] - ew[i]) > 1e-9]
