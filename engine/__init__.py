"""Attune engine: generate, inspect cross-attention, reweight words, inpaint. Never imports streamlit.

Public names are imported lazily, so `python -m engine parse ...` and the app's first paint stay fast.
"""
from __future__ import annotations

import importlib
import os

from engine.errors import AttuneError

# Before torch loads MKL: GEMM results per row that do not depend on the number of rows, so a request batched with
# others (engine.batching) gets the same bits as alone. Read by MKL once, at its first call.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

_EXPORTS = {
    "Attune": "engine.pipeline",
    "GenerateParams": "engine.pipeline",
    "InpaintParams": "engine.pipeline",
    "Result": "engine.pipeline",
    "BACKENDS": "engine.pipeline",
    "DEFAULT_GUIDANCE": "engine.defaults",
    "AttentionMaps": "engine.heatmap",
    "mask_from_word": "engine.heatmap",
    "normalize_map": "engine.heatmap",
    "Components": "engine.model",
    "load_components": "engine.model",
    "default_model_path": "engine.model",
    "weights_hash": "engine.model",
    "SCHEDULERS": "engine.schedulers",
    "make_scheduler": "engine.schedulers",
    "WEIGHT_MODES": "engine.sampler",
    "WEIGHT_METHODS": "engine.methods",
    "AttentionControl": "engine.attention",
    "WordTokens": "engine.prompt",
    "tokenize_prompt": "engine.prompt",
    "parse": "engine.prompt",
    "parse_a1111": "engine.prompt",
    "parse_compel": "engine.prompt",
    "parse_with_notes": "engine.prompt",
    "Version": "engine.versions",
    "History": "engine.versions",
    "normalize_weights": "engine.versions",
    "mask_array": "engine.masks",
    "strokes_mask": "engine.masks",
    "read_version": "engine.pngmeta",
    "StudyLog": "engine.log",
    "csv_bytes": "engine.log",
    "Studio": "engine.studio",
    "set_exporter": "engine.exporter",
    "make_engine": "engine.remote",
    "DEFAULT_LAYOUT": "engine.layout",
    "LAYOUT_MODES": "engine.layout",
    "PORTABLE_LAYOUTS": "engine.layout",
    "replay_log": "engine.replay",
    # prompt assistance ("module:attribute" where the engine's own name would clash with a submodule's name)
    "prompt_words": "engine.prompt_edit",
    "diff_markdown": "engine.prompt_edit",
    "word_alternatives": "engine.alternatives:alternatives",
    "explore_choices": "engine.alternatives",
    "style_keyword_list": "engine.alternatives",
    "known_words": "engine.explore",
    "MAX_GRID": "engine.explore",
    "delete_word_version": "engine.explore:delete",
    "replace_word_version": "engine.explore:replace",
    "add_keyword_version": "engine.explore:add_keyword",
    "explore_grid": "engine.explore:explore",
    "suggest_prompt": "engine.suggest:suggest",
    "optimiser_unavailable_reason": "engine.suggest:unavailable_reason",
    "participant_table": "engine.analysis",
    "compare_conditions": "engine.analysis",
    "condition_summary": "engine.analysis:summary",
}

__all__ = ["AttuneError", *_EXPORTS]


def __getattr__(name: str):
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value
    return value
