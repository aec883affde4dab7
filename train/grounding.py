"""TokenCompose-style grounding for training: differentiable cross-attention maps and a loss against GT masks.

engine/attention/processor.py records *detached*, head-averaged sums over steps for inference (bounded memory, no graph).
Training needs the opposite: per-sample maps of this one UNet call that keep their autograd graph, so the loss
can push each object word's attention onto its object's pixels. Hence this separate processor.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class GroundingAttnProcessor:
    """Plain cross-attention (same math as diffusers' AttnProcessor) that keeps head-averaged probabilities."""

    def __init__(self, store: dict, name: str):
        self.store, self.name = store, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        batch, seq_q, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(context))
        v = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(q, k, None)  # (batch*heads, seq_q, seq_k)
        if self.store.get("_record", True):
            self.store[self.name] = probs.view(batch, attn.heads, seq_q, -1).mean(1)
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_grounding(unet) -> dict:
    """Put GroundingAttnProcessor on every attn2 (cross-attention); returns the dict the maps land in."""
    store: dict = {}
    procs = {}
    for name, proc in unet.attn_processors.items():
        procs[name] = GroundingAttnProcessor(store, name) if ".attn2." in name else proc
    unet.set_attn_processor(procs)
    return store


def grounding_loss(store: dict, token_object: torch.Tensor, masks: torch.Tensor,
                   token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(token term, pixel term), averaged over cross-attention layers and grounded tokens.

    token_object: (B, seq) long, index into masks' K axis for each token that names an object, -1 elsewhere.
    masks: (B, K, h, w) float in [0, 1], the share of each latent cell the object covers.
    Token term: (1 - attention mass inside the mask)^2. Pixel term: BCE of the max-normalised map vs the mask.
    token_weights: optional (B, seq) weights of the grounded tokens (e.g. more weight on a weak object's words).
    """
    valid = token_object >= 0
    maps = [v for k, v in store.items() if not k.startswith("_")]
    zero = masks.new_zeros(())
    if not valid.any() or not maps:
        return zero, zero
    idx = token_object.clamp(min=0)
    weights = torch.ones_like(masks[:, 0, 0, 0])[:, None].expand_as(token_object) if token_weights is None else token_weights

    def weighted_mean(x, v):
        w = weights[:, : v.shape[1]][v].to(x.dtype)
        return (x[v] * w).sum() / w.sum()
    tok_terms, pix_terms = [], []
    for a in maps:
        b, hw, seq = a.shape
        side = int(math.isqrt(hw))
        m = masks if masks.shape[-1] == side else F.adaptive_avg_pool2d(masks, side)
        m = m.flatten(2)  # (B, K, hw)
        target = torch.gather(m, 1, idx[:, :seq, None].expand(-1, -1, hw))  # (B, seq, hw)
        amap = a.float().transpose(1, 2)  # (B, seq, hw)
        v = valid[:, :seq]
        inside = (amap * target).sum(-1) / (amap.sum(-1) + 1e-6)
        tok_terms.append(weighted_mean((1 - inside) ** 2, v))
        norm = amap / (amap.amax(-1, keepdim=True) + 1e-6)
        norm = norm.clamp(1e-4, 1 - 1e-4)  # BCE written out: F.binary_cross_entropy refuses to run under autocast
        bce = -(target * norm.log() + (1 - target) * (1 - norm).log()).mean(-1)
        pix_terms.append(weighted_mean(bce, v))
    return torch.stack(tok_terms).mean(), torch.stack(pix_terms).mean()
