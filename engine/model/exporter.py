"""The engine's one door to the ONNX exporter (export/onnx.py, which imports the engine: a cycle otherwise).

Runners call `ensure_exported(components, progress=...)`. What runs is the callable handed in with
`set_exporter` by the layer above (the app, the CLI, a benchmark); with none handed in, export.onnx's own
`ensure_exported`, imported at the call, so no engine module imports `export` when it loads.
"""
from __future__ import annotations

import importlib
from typing import Callable

Exporter = Callable[..., object]  # (components, progress=None) -> folder of the exported graphs
_exporter: Exporter | None = None


def set_exporter(exporter: Exporter | None) -> None:
    """Use this exporter from now on (None: back to export.onnx.ensure_exported)."""
    global _exporter
    _exporter = exporter


def ensure_exported(components, progress=None):
    exporter = _exporter or importlib.import_module("export.onnx").ensure_exported
    return exporter(components, progress=progress)
