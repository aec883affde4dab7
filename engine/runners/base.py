"""The UNet runner interface shared by the PyTorch and ONNX backends."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

Array = Any  # a numpy array (the sampler's), or a torch tensor: each runner returns the kind it was given


@runtime_checkable
class UNetRunner(Protocol):
    """Runs one UNet call. Both backends use the diffusers processor names as map keys.

    `key_scale` / `value_scale`: (B, seq) tensors or None ('score' / 'prob' reweighting; None = no scaling).
    `capture_maps`: return head-averaged cross-attention maps of the last `cond_rows` batch rows.
    Returns (noise_pred, maps) with maps = {layer name: (cond_rows, H_l*W_l, seq)} ({} when capture is off).
    """

    name: str  # "torch" | "onnx"
    device: str
    in_channels: int

    def __call__(
        self,
        sample: Array,
        timestep: Array | float | int,
        encoder_hidden_states: Array,
        *,
        key_scale: Array | None = None,
        value_scale: Array | None = None,
        capture_maps: bool = False,
        cond_rows: int = 0,
    ) -> tuple[Array, dict[str, Array]]: ...

    def close(self) -> None: ...
