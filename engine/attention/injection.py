"""Attention injection (Prompt-to-Prompt): an edit reuses its parent run's attention, PyTorch backend only.

The parent run records its attention probabilities (head by head, conditional batch row): self-attention of the layers
with at most SELF_MAX_CELLS query cells (16x16 latent cells and coarser, as Prompt-to-Prompt) for the first
`self_fraction` of the steps, cross-attention of every layer for the first `cross_fraction`. Recording computes the
probabilities on a side path; the layer's output stays the fused kernel's, so a recorded run is bit-identical to
a plain one.

During the edit, at those layers and steps, the layer's probabilities are replaced: self-attention by the
parent's, cross-attention by the parent's for every token except the reweighted ones (those keep the edit's own,
so the new weight still acts), and the layer's output is probs @ values (the edit's values, so `prob` scaling still
acts). Only the conditional half of the CFG batch is replaced, as in Prompt-to-Prompt.

Memory: the built-in model has 32 heads per layer; a record of its 20 steps (float16) is about 180 MB, so only the
runs an `inject` edit needs are recorded and the engine keeps one record at a time. This module imports torch: only
the PyTorch path loads it.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from engine.errors import AttuneError

SELF_MAX_CELLS = 256  # self-attention layers at 16x16 latent cells or coarser
SELF_FRACTION = 0.4  # share of the steps whose self-attention is the parent's
CROSS_FRACTION = 0.8  # share of the steps whose cross-attention (other tokens) is the parent's


def is_cross(name: str) -> bool:
    return name.endswith("attn2.processor")


def step_count(fraction: float, steps: int) -> int:
    return int(math.ceil(float(fraction) * int(steps) - 1e-9))


@dataclass
class AttentionRecord:
    """One run's attention probabilities per step: {layer: (1, heads, cells, keys) float16, the conditional row}."""

    steps: int
    self_steps: int
    cross_steps: int
    self_probs: list[dict] = field(default_factory=list)
    cross_probs: list[dict] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(int(t.numel() * t.element_size()) for step in self.self_probs + self.cross_probs
                   for t in step.values())

    def covers(self, self_steps: int, cross_steps: int) -> bool:
        return self.self_steps >= self_steps and self.cross_steps >= cross_steps


def steps_needed(steps: int, self_fraction: float | None = None, cross_fraction: float | None = None):
    """(self-attention steps, cross-attention steps) an injection of `steps` steps takes from its parent."""
    return (step_count(SELF_FRACTION if self_fraction is None else self_fraction, steps),
            step_count(CROSS_FRACTION if cross_fraction is None else cross_fraction, steps))


class AttentionInjection:
    """Set on a runner's AttentionControl (`control.injection`); `step` is set by the sampler before each UNet call.

    source: the parent's record to inject (None: nothing injected), keeping the edit's own cross-attention at
    `keep_tokens`. record: also record the probabilities this run uses (for an edit of this run)."""

    def __init__(self, steps: int, *, source: AttentionRecord | None = None, keep_tokens=(), record: bool = False,
                 self_fraction: float | None = None, cross_fraction: float | None = None) -> None:
        self.steps = int(steps)
        self.self_steps, self.cross_steps = steps_needed(self.steps, self_fraction, cross_fraction)
        self.keep_tokens = sorted(set(int(i) for i in keep_tokens))
        if source is not None and (source.steps != self.steps or not source.covers(self.self_steps, self.cross_steps)):
            raise AttuneError("The parent's recorded attention does not cover this edit's steps.")
        self.source = source
        self.record = AttentionRecord(self.steps, self.self_steps, self.cross_steps) if record else None
        self.step = 0

    def _active(self, cross: bool, cells: int) -> bool:
        if cross:
            return self.step < self.cross_steps
        return self.step < self.self_steps and cells <= SELF_MAX_CELLS

    @staticmethod
    def _slot(record: AttentionRecord, cross: bool) -> list[dict]:
        return record.cross_probs if cross else record.self_probs

    def attend(self, name: str, cross: bool, attn, query, key, value, attention_mask):
        """The layer's attention output (B, heads, cells, head_dim), injecting and recording as this step asks."""
        def fused():
            return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                  is_causal=False)

        if not self._active(cross, query.shape[-2]) or (self.source is None and self.record is None):
            return fused()
        scale = attn.scale if attn.scale is not None else query.shape[-1] ** -0.5
        scores = torch.matmul(query, key.transpose(-1, -2)) * scale
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = scores.softmax(dim=-1)
        if self.source is not None:
            store = self._slot(self.source, cross)
            parent = store[self.step].get(name) if self.step < len(store) else None
            if parent is None or parent.shape[1:] != probs.shape[1:]:
                raise AttuneError("The parent's recorded attention does not match this edit (another model or "
                                  "size).")
            parent = parent.to(probs.dtype)
            mixed = probs.clone()
            mixed[-1:] = parent
            if cross and self.keep_tokens:  # the reweighted tokens keep the edit's own attention
                keep = [i for i in self.keep_tokens if i < probs.shape[-1]]
                mixed[-1:, ..., keep] = probs[-1:, ..., keep]
            probs = mixed
        if self.record is not None:
            store = self._slot(self.record, cross)
            while len(store) <= self.step:
                store.append({})
            store[self.step][name] = probs[-1:].detach().to(torch.float16)  # the row an edit replaces
        if self.source is None:  # recording only: the output stays the fused kernel's (bit-identical run)
            return fused()
        return torch.matmul(probs, value)


@contextlib.contextmanager
def injecting(runner, injection: AttentionInjection):
    """`runner` (engine.runners.torch.TorchUNetRunner) records or injects while inside; self-attention layers get
    the Attune processor for the run only."""
    from engine.attention.processor import AttuneAttnProcessor

    control = getattr(runner, "control", None)
    unet = getattr(runner, "unet", None)
    if control is None or unet is None:
        raise AttuneError("Attention injection needs the PyTorch runner.")
    original = dict(unet.attn_processors)
    unet.set_attn_processor({name: (proc if is_cross(name) else AttuneAttnProcessor(name, control))
                             for name, proc in original.items()})
    control.injection = injection
    try:
        yield injection
    finally:
        control.injection = None
        unet.set_attn_processor(dict(original))
