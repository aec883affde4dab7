"""PyTorch UNet runner: the diffusers UNet with the Attune cross-attention processor installed.

numpy arrays in -> numpy arrays out (the sampler's way); torch tensors in -> torch tensors out.
"""
from __future__ import annotations

import numpy as np

from engine.attention.processor import AttentionControl, cross_attention_names, install
from engine.errors import AttuneError
from engine.model.loading import Components
from engine.protocols import AddedConditioning


class TorchUNetRunner:
    name = "torch"

    def __init__(self, unet, device: str | None = None) -> None:
        self.unet = unet
        self.device = str(device or next(unet.parameters()).device)
        self.dtype = next(unet.parameters()).dtype
        self.in_channels = int(unet.config.in_channels)
        self.text_time = unet.config.addition_embed_type == "text_time"
        self.control = AttentionControl()
        self.layer_names = cross_attention_names(unet)
        self._restore = install(unet, self.control)

    def _tensor(self, a, dtype=None):
        import torch

        if a is None:
            return None
        if not isinstance(a, torch.Tensor):
            a = torch.from_numpy(np.ascontiguousarray(a))
        return a.to(self.device, dtype or self.dtype)

    def __call__(self, sample, timestep, encoder_hidden_states, *, key_scale=None, value_scale=None,
                 capture_maps=False, cond_rows=0, added: AddedConditioning | None = None):
        import torch

        as_numpy = not isinstance(sample, torch.Tensor)
        if as_numpy:
            sample = self._tensor(sample)
            encoder_hidden_states = self._tensor(encoder_hidden_states)
            key_scale, value_scale = self._tensor(key_scale), self._tensor(value_scale)
            timestep = torch.as_tensor(np.asarray(timestep)).to(self.device)
        added_kwargs = None
        if added is not None:  # SDXL (diffusers' added_cond_kwargs)
            added_kwargs = {k: self._tensor(v) for k, v in added.as_kwargs().items()}
        elif self.text_time:
            raise AttuneError("This SDXL UNet needs its pooled text embedding and size ids (added conditioning).")
        self.control.reset(key_scale=key_scale, value_scale=value_scale, capture=capture_maps, cond_rows=cond_rows)
        try:
            with torch.no_grad():
                out = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                                added_cond_kwargs=added_kwargs, return_dict=False)[0]
            maps = self.control.maps
        finally:
            self.control.reset()
        if as_numpy:
            out = out.float().cpu().numpy()
            maps = {k: v.float().cpu().numpy() for k, v in maps.items()}
        return out, maps

    def release_memory(self) -> None:  # PyTorch's caching allocator keeps its blocks: nothing to hand back
        pass

    def close(self) -> None:
        """Give the UNet its original processors back."""
        if self._restore is not None:
            self._restore()
            self._restore = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def create_runner(components, device: str | None = None) -> TorchUNetRunner:
    if not isinstance(components, Components):  # light components: no PyTorch modules loaded
        raise AttuneError("These components hold no PyTorch UNet (the light ONNX runtime loaded them).")
    return TorchUNetRunner(components.unet, device or components.device)
