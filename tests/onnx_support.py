"""Shared by the ONNX tests: one export cache per test process, so each tiny model is exported once (seconds)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_cache: list[Path] = []


def cache_dir() -> Path:
    """This test process's ATTUNE_CACHE (a temp folder, removed at exit): exports never land in ~/.cache."""
    if not _cache:
        _cache.append(Path(tempfile.mkdtemp(prefix="attune-test-cache-")))
        atexit.register(shutil.rmtree, _cache[0], True)
    return _cache[0]


def exported(model_dir: Path) -> Path:
    """The export of model_dir in cache_dir(), where Attune(backend='onnx') finds it; made on first use. It holds
    the parts `--ship` would (unet_inpaint too when the folder has one)."""
    from engine.model.loading import load_components
    from export.onnx import ensure_exported, model_parts

    components = load_components(model_dir)
    folder = cache_dir() / "onnx" / components.weights_hash
    return ensure_exported(components, parts=model_parts(model_dir), folder=folder, progress=lambda *a: None)
