"""Where a model's ONNX graphs are, without torch: shipped in the model folder or exported into the cache.

- Shipped: `<model>/onnx/` (optimum's layout plus Attune's manifest), made by
  `python -m export.onnx --model <model> --ship`. Used when its manifest's weights hash equals the folder's.
- Cache: `$ATTUNE_CACHE/onnx/<weights hash>/` (default ~/.cache/attune), exported on first use (needs torch).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from engine.errors import AttuneError

FORMAT_VERSION = 4  # bump when the graphs change meaning or layout: old caches are exported again (4: text mask)
MANIFEST = "attune_onnx.json"
SHIPPED_DIR = "onnx"
PARTS = ("unet", "text_encoder", "vae_encoder", "vae_decoder")
OPTIONAL_PARTS = ("unet_inpaint",)  # exported when the model folder has it
TEXT_MASK_INPUT = "attention_mask"  # the text encoder's token mask (since format 4; the `embed` method needs it)
SDXL_EXPORT_PARTS = ("text_encoder_2",)  # what an SDXL export holds besides PARTS
PENULTIMATE_OUTPUT = "penultimate_hidden_state"  # SDXL's text encoders: the states its UNet is conditioned on
ADDED_INPUTS = ("text_embeds", "time_ids")  # SDXL's UNet inputs besides the SD ones (diffusers' added_cond_kwargs)


def export_parts(sdxl: bool) -> tuple[str, ...]:
    """The parts an export must hold to run a model: SDXL's also has its second text encoder."""
    return PARTS + (SDXL_EXPORT_PARTS if sdxl else ())


def cache_root() -> Path:
    """$ATTUNE_CACHE if set, else ~/.cache/attune. ONNX graphs live in its onnx/ folder."""
    env = os.environ.get("ATTUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "attune"


def export_dir_for(weights_hash: str) -> Path:
    return cache_root() / "onnx" / weights_hash


def shipped_dir(model_folder: str | Path) -> Path:
    return Path(model_folder) / SHIPPED_DIR


def read_manifest(folder: str | Path) -> dict:
    """The manifest of an export folder; AttuneError when the folder is not a complete, current export."""
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AttuneError(f"No usable ONNX export in {folder} ({MANIFEST} missing or unreadable).") from e
    if manifest.get("format") != FORMAT_VERSION:
        raise AttuneError(
            f"The ONNX export in {folder} has format {manifest.get('format')}, expected {FORMAT_VERSION}."
        )
    for rel, size in manifest.get("files", {}).items():
        f = folder / rel
        if not f.is_file():
            raise AttuneError(f"The ONNX export in {folder} is incomplete: {rel} is missing.")
        if f.stat().st_size != size:
            raise AttuneError(f"The ONNX export in {folder} is damaged: {rel} has the wrong size.")
    return manifest


def usable_export(folder: str | Path, weights_hash: str, parts=PARTS) -> bool:
    """True when `folder` holds a complete, current export of these weights with all `parts`."""
    try:
        manifest = read_manifest(folder)
    except AttuneError:
        return False
    return set(parts) <= set(manifest.get("parts", [])) and manifest.get("weights_hash") == weights_hash


def find_export(model_folder: str | Path | None, weights_hash: str, parts=PARTS) -> Path | None:
    """The shipped graphs when they match the weights, else the cache's export, else None."""
    candidates = [shipped_dir(model_folder)] if model_folder is not None else []
    candidates.append(export_dir_for(weights_hash))
    for folder in candidates:
        if usable_export(folder, weights_hash, parts):
            return folder
    return None


def torch_available() -> bool:
    """Whether the PyTorch stack (torch, diffusers, transformers) can be imported, without importing it."""
    from importlib.util import find_spec

    return all(find_spec(name) is not None for name in ("torch", "diffusers", "transformers"))


TORCH_MISSING = "PyTorch is not installed (pip install -r requirements-torch.txt)"
