"""Self-attention head counts that differ from the UNet config's (attune.json "self_attention_heads").

diffusers' `attention_head_dim` gives every attention layer of a block the same head count, self- and
cross-attention alike. The built-in model has 32 heads everywhere; at 16x16 (64 channels) that is 32 heads of width
2, and its three self-attention layers there computed 32 softmaxes over 256x256 scores per row: a third of a UNet
call on the CPU. Regrouped into 2 heads of width 32, the same projections (same weight shapes) cost a tenth as much,
while cross-attention, whose head-averaged probabilities are the heatmaps, keeps its heads.

    "self_attention_heads": {"down_blocks.0": 2, "up_blocks.2": 2}

runs every self-attention layer (attn1) under those blocks with that many heads. The layout changes what the layers
compute, so only weights trained for it (train/tiny_scenes.py --distill-from) may name it, and every loader of the
folder's text-to-image UNet applies it (engine.model.loading.apply_head_layout): the engine, the ONNX export and the
trainer. Plain diffusers does not read attune.json: it would run such a UNet with the config's heads, and paint
other images.
"""
from __future__ import annotations

from engine.errors import AttuneError

KEY = "self_attention_heads"


def check(value, where: str) -> dict[str, int]:
    """{block prefix: head count}, each count a positive whole number; AttuneError naming `where` otherwise."""
    if (not isinstance(value, dict) or not value
            or not all(isinstance(k, str) and k.strip() and isinstance(v, int) and not isinstance(v, bool) and v > 0
                       for k, v in value.items())):
        raise AttuneError(f"{where}: '{KEY}' must map UNet blocks to head counts, e.g. {{\"down_blocks.0\": 2}}.")
    return {k.strip(): v for k, v in value.items()}


def self_attention_layers(unet, block: str) -> list[tuple[str, object]]:
    """(name, module) of every self-attention layer under `block` (e.g. "down_blocks.0")."""
    return [(name, module) for name, module in unet.named_modules()
            if name.startswith(block + ".") and name.endswith(".attn1")]


def apply(unet, heads: dict[str, int], where: str = KEY) -> list[str]:
    """Run the named blocks' self-attention with those head counts (in place); returns the layers changed."""
    changed = []
    for block, count in heads.items():
        layers = self_attention_layers(unet, block)
        if not layers:
            raise AttuneError(f"{where}: '{KEY}' names '{block}', which has no self-attention layer in this UNet.")
        for name, attn in layers:
            width = attn.to_q.out_features
            if width % count:
                raise AttuneError(f"{where}: '{KEY}' gives {name} {count} heads, which do not split its {width} "
                                  "channels.")
            attn.heads = count
            attn.scale = (width // count) ** -0.5  # what the layer's processors scale the scores by
            changed.append(name)
    return changed

