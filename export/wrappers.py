"""nn.Module wrappers that give each exported graph plain tensor inputs and outputs.

The UNet wrapper installs the engine's own cross-attention processor (engine/attention/processor.py). With
maps_path="separate" the graph is exactly that processor: key/value row scaling for `score`/`prob`, fused attention
for the output, and the head-averaged maps of the conditional rows on a separate small path. The default "shared"
puts SharedProbsCrossAttnProcessor on plain layers: the same math with one softmax per layer, which is cheaper in
ONNX Runtime (docs/onnx.md). The parity tests hold both to the PyTorch runner.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.attention.processor import AttentionControl, cross_attention_names, install


class _MultiHeadAttention(torch.autograd.Function):
    """softmax(q kᵀ · scale) v on (B, S, heads·dim) tensors. Exports as ONNX Runtime's fused MultiHeadAttention
    (com.microsoft) instead of the MatMul/Softmax/MatMul chain; computes the same thing in PyTorch while tracing."""

    @staticmethod
    def forward(ctx, query, key, value, heads: int, scale: float):
        b = query.shape[0]
        q, k, v = (x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2) for x in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        return out.transpose(1, 2).reshape(b, -1, query.shape[-1])

    @staticmethod
    def symbolic(g, query, key, value, heads: int, scale: float):
        return g.op("com.microsoft::MultiHeadAttention", query, key, value, num_heads_i=heads, scale_f=scale)


def _is_plain_layer(attn, hidden_states, attention_mask) -> bool:
    """True when the layer uses none of the features the export-only processors leave to the stock path."""
    return (
        attention_mask is None
        and hidden_states.ndim == 3
        and attn.spatial_norm is None
        and attn.group_norm is None
        and attn.norm_q is None
        and attn.norm_k is None
        and not attn.residual_connection
    )


class FusedSelfAttnProcessor:
    """Export-only processor for self-attention (attn1): the stock computation, emitted as one fused ORT op.
    Layers with features it does not cover (masks, norms, 4-D input) keep the stock processor."""

    def __init__(self, stock) -> None:
        self.stock = stock

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        if not (encoder_hidden_states is None and _is_plain_layer(attn, hidden_states, attention_mask)):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        scale = float(attn.scale) if attn.scale is not None else (query.shape[-1] // attn.heads) ** -0.5
        out = _MultiHeadAttention.apply(query, key, value, int(attn.heads), scale)
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor


def fuse_self_attention(unet):
    """Install FusedSelfAttnProcessor on every attn1 layer; returns a function that restores the processors."""
    original = dict(unet.attn_processors)
    unet.set_attn_processor(
        {
            name: (FusedSelfAttnProcessor(proc) if name.endswith("attn1.processor") else proc)
            for name, proc in original.items()
        }
    )
    return lambda: unet.set_attn_processor(dict(original))


def head_mean(probs):
    """Mean over heads of (rows, heads, HW, seq) probabilities, as a product with a row of 1/heads. ONNX Runtime's
    ReduceMean adds the heads in another order when the graph has one map row than when it has several (~1e-7
    apart); a MatMul gives each row the same bits whatever the row count, so engine.runners.batching can stack requests'
    map rows on this graph (manifest "maps_row_exact")."""
    weights = torch.full((1, probs.shape[1]), 1.0 / probs.shape[1], dtype=probs.dtype, device=probs.device)
    return torch.matmul(weights, probs.flatten(2)).view_as(probs[:, 0])


class SharedProbsCrossAttnProcessor:
    """Export-only cross-attention processor: the engine's math with one softmax for output and maps.

    The engine's processor keeps PyTorch's fused SDPA and computes the maps' softmax again on the conditional rows.
    In an ONNX graph attention is MatMul/Softmax/MatMul anyway, so here the maps reuse the probabilities:
    out = P·(v*value_scale), maps = mean over heads of P[cond rows] * value_scale (head_mean),
    with P = softmax(q·(k*key_scale)ᵀ·scale).
    Layers it does not cover (masks, norms, 4-D input) keep the engine's processor."""

    def __init__(self, name: str, control: AttentionControl, engine_processor) -> None:
        self.name = name
        self.control = control
        self.engine_processor = engine_processor

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        if not (
            encoder_hidden_states is not None
            and not attn.norm_cross
            and _is_plain_layer(attn, hidden_states, attention_mask)
        ):
            return self.engine_processor(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        control = self.control
        b = hidden_states.shape[0]
        heads = attn.heads
        query, key, value = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        q, k, v = (x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2) for x in (query, key, value))
        if control.key_scale is not None:
            k = k * control.key_scale[:, None, :, None]
        if control.value_scale is not None:
            v = v * control.value_scale[:, None, :, None]
        scale = attn.scale if attn.scale is not None else q.shape[-1] ** -0.5
        probs = (torch.matmul(q, k.transpose(-1, -2)) * scale).softmax(dim=-1)  # (B, heads, HW, seq)
        if control.capture:
            n = control.cond_rows
            # the head mean of every row, then the cond rows of that: slicing the probabilities first copies them
            # (ORT has no views), which cost more than averaging the unconditional rows too (docs/onnx.md)
            maps = head_mean(probs)[-n:]
            if control.value_scale is not None:
                maps = maps * control.value_scale[-n:, None, :]
            control.maps[self.name] = maps
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, -1, query.shape[-1])
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor


MAPS_PATHS = ("separate", "shared")


class UNetWithMaps(torch.nn.Module):
    """forward(sample, timestep, encoder_hidden_states, key_scale, value_scale, map_rows[, text_embeds, time_ids])
    -> (noise, *maps). SDXL's UNet also takes text_embeds and time_ids (diffusers' added_cond_kwargs).

    `map_rows` is a marker: only its length matters. It is the number of conditional rows (the last rows of the
    batch) whose maps are returned. Passing it as a tensor length keeps that count dynamic in the traced graph.
    """

    def __init__(self, unet, maps_path: str = "separate") -> None:
        super().__init__()
        if maps_path not in MAPS_PATHS:
            raise ValueError(f"maps_path must be one of {MAPS_PATHS}")
        self.unet = unet
        self.maps_path = maps_path
        self.control = AttentionControl()
        self.layer_names = cross_attention_names(unet)
        self._restore = None

    def __enter__(self):
        """'separate': the engine's processor as is. 'shared': SharedProbsCrossAttnProcessor on attn2 layers."""
        self._restore = install(self.unet, self.control)
        if self.maps_path == "shared":
            self.unet.set_attn_processor(
                {
                    name: (
                        SharedProbsCrossAttnProcessor(name, self.control, proc) if name in self.layer_names else proc
                    )
                    for name, proc in self.unet.attn_processors.items()
                }
            )
        return self

    def __exit__(self, *exc) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None

    def forward(self, sample, timestep, encoder_hidden_states, key_scale, value_scale, map_rows, text_embeds=None,
                time_ids=None):
        control = self.control
        control.key_scale = key_scale
        control.value_scale = value_scale
        control.capture = True
        control.cond_rows = map_rows.shape[0]  # a traced size while exporting: the row count stays an input
        control.maps = {}
        try:
            added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}
            noise = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                              added_cond_kwargs=added, return_dict=False)[0]
            maps = [control.maps[name] for name in self.layer_names]
        finally:
            control.reset()
        return (noise, *maps)


class TextEncoder(torch.nn.Module):
    """forward(input_ids, attention_mask) -> (last_hidden_state, pooler_output), as optimum's text_encoder graph
    (attention_mask: 1 = visible, 0 = hidden from the other tokens; the `embed` method's Compel masking needs it)."""

    def __init__(self, text_encoder) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids, attention_mask):
        out = self.text_encoder(input_ids, attention_mask=attention_mask, return_dict=True)
        return out.last_hidden_state, out.pooler_output


class SdxlTextEncoder(torch.nn.Module):
    """SDXL's text encoders: forward(input_ids, attention_mask) -> (pooled, last_hidden_state, penultimate hidden
    state). The UNet is conditioned on the penultimate states (diffusers' StableDiffusionXLPipeline); pooled is
    CLIPTextModel's pooler_output, or CLIPTextModelWithProjection's text_embeds (the second encoder)."""

    def __init__(self, text_encoder) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids, attention_mask):
        out = self.text_encoder(input_ids, attention_mask=attention_mask, output_hidden_states=True, return_dict=True)
        pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
        return pooled, out.last_hidden_state, out.hidden_states[-2]


class VaeEncoder(torch.nn.Module):
    """forward(sample) -> latent_parameters (mean and log-variance, concatenated on channels), unscaled."""

    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        return self.vae.encode(sample).latent_dist.parameters


class VaeDecoder(torch.nn.Module):
    """forward(latent_sample) -> sample in [-1, 1]; the caller divides by the scaling factor first, as diffusers."""

    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample, return_dict=False)[0]
