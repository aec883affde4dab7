"""PyTorch UNet runner: the diffusers UNet with the Attune cross-attention processor installed.

numpy arrays in -> numpy arrays out (the sampler's way); torch tensors in -> torch tensors out.
"""
from __future__ import annotations

import numpy as np

from engine.attention.processor import AttentionControl, cross_attention_names, install


class TorchUNetRunner:
    name = "torch"

    def __init__(self, unet, device: str | None = None) -> None:
        self.unet = unet
        self.device = str(device or next(unet.parameters()).device)
        self.dtype = next(unet.parameters()).dtype
        self.in_channels = int(unet.config.in_channels)
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
                 capture_maps=False, cond_rows=0):
        import torch

        as_numpy = not isinstance(sample, torch.Tensor)
        if as_numpy:
            sample = self._tensor(sample)
            encoder_hidden_states = self._tensor(encoder_hidden_states)
            key_scale, value_scale = self._tensor(key_scale), self._tensor(value_scale)
            timestep = torch.as_tensor(np.asarray(timestep)).to(self.device)
        self.control.reset(key_scale=key_scale, value_scale=value_scale, capture=capture_maps, cond_rows=cond_rows)
        try:
            with torch.no_grad():
                out = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
            maps = self.control.maps
        finally:
            self.control.reset()
        if as_numpy:
            out = out.float().cpu().numpy()
            maps = {k: v.float().cpu().numpy() for k, v in maps.items()}
        return out, maps

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
    if not hasattr(getattr(components, "unet", None), "parameters"):  # light components: no PyTorch modules loaded
        from engine.errors import AttuneError

        raise AttuneError("These components hold no PyTorch UNet (the light ONNX runtime loaded them).")
    return TorchUNetRunner(components.unet, device or components.device)
