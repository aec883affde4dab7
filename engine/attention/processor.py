"""One cross-attention processor: record DAAM maps and scale tokens, keeping the main attention fused.

Installed on `attn2` (cross-attention) layers only, through the public `unet.set_attn_processor`; self-attention
keeps its stock processor, except during attention injection (engine/attention/injection.py, PyTorch only), which puts this
processor on self-attention too for the run and computes those layers' attention through `control.injection`.
Reweighting uses the DESIGN §3 identities, which keep `F.scaled_dot_product_attention`:

- `score` (PromptCharm): q·(w kⱼ) = w (q·kⱼ)           -> multiply key rows by `key_scale`
- `prob`  (Prompt-to-Prompt): Σ pᵢⱼ wⱼ vⱼ              -> multiply value rows by `value_scale`

Scales are per batch row, shape (B, seq), so the unconditional half of a CFG batch keeps 1.

Capture computes the head-averaged softmax(q·kᵀ) of the last `cond_rows` batch rows only, on a separate small
path (the fused output is untouched). The value recorded is the effective weight on vⱼ:
softmax(q·(k*key_scale)ᵀ) * value_scale.

The processor is traceable for `torch.onnx.export`: it branches only on Python values (None / flags / ints),
never on tensor values, and derives shapes from tensors.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F


class AttentionControl:
    """Per-call settings shared by every installed processor. Set the fields before each UNet call."""

    def __init__(self) -> None:
        self.key_scale: torch.Tensor | None = None  # (B, seq) 'score'
        self.value_scale: torch.Tensor | None = None  # (B, seq) 'prob'
        self.capture: bool = False
        self.cond_rows: int = 0  # maps kept for the LAST cond_rows rows of the batch ([uncond..., cond...])
        self.maps: dict[str, torch.Tensor] = {}  # layer name -> (cond_rows, H_l*W_l, seq), filled per UNet call
        self.injection = None  # engine.attention.injection.AttentionInjection while a run records or injects (PyTorch only)

    def reset(self, *, key_scale=None, value_scale=None, capture=False, cond_rows=0) -> None:
        self.key_scale = key_scale
        self.value_scale = value_scale
        self.capture = bool(capture)
        self.cond_rows = int(cond_rows)
        self.maps = {}

    @property
    def active(self) -> bool:
        return self.key_scale is not None or self.value_scale is not None or (self.capture and self.cond_rows > 0)


def _row_scale(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, seq) -> (B, 1, seq, 1) in like's dtype/device, to multiply (B, heads, seq, head_dim) rows."""
    return scale.to(device=like.device, dtype=like.dtype)[:, None, :, None]


class AttuneAttnProcessor:
    """AttnProcessor2_0 plus key/value row scaling and map capture, for one named cross-attention layer."""

    def __init__(self, name: str, control: AttentionControl) -> None:
        self.name = name
        self.control = control

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        control = self.control
        cross = encoder_hidden_states is not None  # self-attention layers get this processor only for injection
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)

        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)

        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if control.key_scale is not None and cross:
            key = key * _row_scale(control.key_scale, key)
        if control.value_scale is not None and cross:
            value = value * _row_scale(control.value_scale, value)

        if control.capture and control.cond_rows > 0 and cross:
            self._capture(attn, query, key, attention_mask)

        if control.injection is not None:  # a Python value: the exported graph never takes this branch
            hidden_states = control.injection.attend(self.name, cross, attn, query, key, value, attention_mask)
        else:
            hidden_states = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
            )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor
        return hidden_states

    def _capture(self, attn, query, key, attention_mask) -> None:
        control = self.control
        n = control.cond_rows
        q = query[-n:].float()
        k = key[-n:].float()
        scale = attn.scale if attn.scale is not None else q.shape[-1] ** -0.5
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (n, heads, HW, seq)
        if attention_mask is not None:
            scores = scores + attention_mask[-n:].float()
        probs = scores.softmax(dim=-1)
        if control.value_scale is not None:
            probs = probs * control.value_scale[-n:].to(device=probs.device, dtype=probs.dtype)[:, None, None, :]
        control.maps[self.name] = probs.mean(dim=1)  # (n, HW, seq)


def cross_attention_names(unet) -> list[str]:
    """The processor names of the cross-attention layers, in the UNet's order."""
    return [name for name in unet.attn_processors if name.endswith("attn2.processor")]


def install(unet, control: AttentionControl) -> Callable[[], None]:
    """Put an AttuneAttnProcessor on every attn2 layer (attn1 keeps its own). Returns a function that restores."""
    original = dict(unet.attn_processors)
    processors = {
        name: (AttuneAttnProcessor(name, control) if name.endswith("attn2.processor") else proc)
        for name, proc in original.items()
    }
    unet.set_attn_processor(processors)

    def restore() -> None:
        unet.set_attn_processor(dict(original))

    return restore


@contextlib.contextmanager
def attention_control(unet, control: AttentionControl | None = None):
    """`with attention_control(unet) as control:` installs the processors and restores the originals on exit."""
    control = control or AttentionControl()
    restore = install(unet, control)
    try:
        yield control
    finally:
        restore()
