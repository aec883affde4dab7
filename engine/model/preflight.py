"""Checks that need no loaded model: the sizes a model can serve and the weights a prompt may carry.

The CLI runs them before it loads a model (seconds) or creates a log, so bad input costs nothing and leaves nothing;
the engine runs the same rules again on every call (the app and the Python API go through it).
"""
from __future__ import annotations

import json
from pathlib import Path

from engine.protocols import Components

SIZE_SCALE = 6  # a model serves up to this many times the side it was trained at (built-in: 128 px -> 768 px)
BUILTIN_MODEL_ID = "tiny-scenes"  # the model_id Versions record for the built-in model


def max_side(sample_size, vae_scale_factor: int, cap: int) -> int:
    """The largest width or height a model serves: SIZE_SCALE x its trained size, at most `cap`.

    Bigger images make the self-attention of the top UNet level grow with the fourth power of the side (ONNX Runtime
    asked for a 1 TiB buffer at 2048x2048 on the built-in model), and the model draws nothing useful there anyway."""
    size = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
    try:
        trained = int(size) * int(vae_scale_factor)
    except (TypeError, ValueError):
        return cap
    return min(cap, SIZE_SCALE * trained) if trained > 0 else cap


def model_max_side(components: Components, cap: int) -> int:
    """max_side() for loaded components (their UNet's trained size); `cap` when the UNet has no sample size."""
    if components.sample_size is None:
        return cap
    return max_side(components.sample_size, components.vae_scale_factor, cap)


def local_model_folder(model) -> Path | None:
    """The folder a --model value (or a Version's model_id) names on this machine, without downloading anything;
    None when it is not a local folder (a hub id, a moved folder)."""
    from engine.model.loading import default_model_path

    text = "" if model is None else str(model).strip()
    if not text or text == BUILTIN_MODEL_ID:
        folder = default_model_path()
        return folder if folder.is_dir() else None
    folder = Path(text).expanduser()
    if folder.is_file():  # a single-file checkpoint converted before (engine.model.single_file)
        from engine.model.single_file import converted_folder

        try:
            converted = converted_folder(folder)
        except OSError:
            return None
        return converted if converted.is_dir() else None
    return folder if folder.is_dir() else None


def model_limits(model, cap: int) -> tuple[int, int] | None:
    """(VAE factor, largest side) read from a local model folder's configs; None when they cannot be read here
    (the engine checks again once the model is loaded)."""
    folder = local_model_folder(model)
    if folder is None:
        return None
    try:
        vae = json.loads((folder / "vae" / "config.json").read_text())
        unet = json.loads((folder / "unet" / "config.json").read_text())
        factor = 2 ** (len(vae["block_out_channels"]) - 1)
        return factor, max_side(unet.get("sample_size"), factor, cap)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def defaults_for(model):
    """engine.model.family.model_defaults() of a --model value that names a local folder (or the built-in model);
    None when the folder is not here (a hub id not fetched yet, a remote engine's model)."""
    from engine.model.family import model_defaults

    folder = local_model_folder(model)
    return model_defaults(folder) if folder is not None else None
