"""PyTorch UNet runner: the diffusers UNet with the Attune cross-attention processor installed."""
from __future__ import annotations

import torch

from engine.attention import AttentionControl, cross_attention_names, install


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

    @torch.no_grad()
    def __call__(self, sample, timestep, encoder_hidden_states, *, key_scale=None, value_scale=None,
                 capture_maps=False, cond_rows=0):
        self.control.reset(key_scale=key_scale, value_scale=value_scale, capture=capture_maps, cond_rows=cond_rows)
        try:
            out = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
            maps = self.control.maps
        finally:
            self.control.reset()
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
    return TorchUNetRunner(components.unet, device or components.device)
