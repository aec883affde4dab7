"""Attune engine: generate, inspect cross-attention, reweight words, inpaint. Never imports streamlit.

Public names are imported lazily, so `python -m engine parse ...` and the app's first paint stay fast.
"""
from __future__ import annotations

import importlib
import os

from engine.errors import AttuneError

# Before torch loads MKL: GEMM results per row that do not depend on the number of rows, so a request batched with
# others (engine.runners.batching) gets the same bits as alone. Read by MKL once, at its first call.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

_EXPORTS = {
    "Attune": "engine.pipeline.attune",
    "GenerateParams": "engine.pipeline.params",
    "InpaintParams": "engine.pipeline.params",
    "Result": "engine.pipeline.params",
    "BACKENDS": "engine.pipeline.backend",
    "DEFAULT_GUIDANCE": "engine.defaults",
    "INPAINT_DEFAULTS": "engine.defaults",
    "Engine": "engine.protocols",
    "AttentionMaps": "engine.attention.maps",
    "mask_from_word": "engine.attention.maps",
    "normalize_map": "engine.attention.maps",
    "Components": "engine.model.loading",
    "load_components": "engine.model.loading",
    "default_model_path": "engine.model.loading",
    "weights_hash": "engine.model.loading",
    "SCHEDULERS": "engine.sampling.schedulers",
    "make_scheduler": "engine.sampling.schedulers",
    "WEIGHT_MODES": "engine.words.weights",
    "WEIGHT_METHODS": "engine.words.weights",
    "SLIDER_MAX": "engine.words.weights",
    "slider_terms": "engine.words.sliders",
    "AttentionControl": "engine.attention.processor",
    "WordTokens": "engine.words.prompt",
    "tokenize_prompt": "engine.words.prompt",
    "MAX_PROMPT_CHUNKS": "engine.words.prompt:MAX_CHUNKS",
    "BUILTIN_DEFAULTS": "engine.model.family",
    "parse": "engine.words.prompt",
    "parse_a1111": "engine.words.prompt",
    "parse_compel": "engine.words.prompt",
    "parse_with_notes": "engine.words.prompt",
    "Version": "engine.study.versions",
    "History": "engine.study.versions",
    "normalize_weights": "engine.words.weights",
    "mask_array": "engine.sampling.masks",
    "is_small_mask": "engine.sampling.loop",
    "strokes_mask": "engine.sampling.masks",
    "read_version": "engine.study.pngmeta",
    "StudyLog": "engine.study.log",
    "csv_bytes": "engine.study.log",
    "Studio": "engine.study.studio",
    "make_engine": "engine.remote.client",
    "DEFAULT_LAYOUT": "engine.sampling.layout",
    "LAYOUT_MODES": "engine.sampling.layout",
    "PORTABLE_LAYOUTS": "engine.sampling.layout",
    "replay_log": "engine.study.replay",
    # prompt assistance ("module:attribute" where the engine's own name would clash with a submodule's name)
    "prompt_words": "engine.words.prompt_edit",
    "parse_inpaint_instruction": "engine.words.inpaint_instruction",
    "InpaintInstruction": "engine.words.inpaint_instruction",
    "diff_markdown": "engine.words.prompt_edit",
    "word_alternatives": "engine.words.alternatives:alternatives",
    "explore_choices": "engine.words.alternatives",
    "style_keyword_list": "engine.words.alternatives",
    "known_words": "engine.study.explore",
    "MAX_GRID": "engine.study.explore",
    "delete_word_version": "engine.study.explore:delete",
    "replace_word_version": "engine.study.explore:replace",
    "add_keyword_version": "engine.study.explore:add_keyword",
    "explore_grid": "engine.study.explore:explore",
    "suggest_prompt": "engine.words.suggest:suggest",
    "optimiser_unavailable_reason": "engine.words.suggest:unavailable_reason",
    "participant_table": "engine.study.analysis",
    "compare_conditions": "engine.study.analysis",
    "condition_summary": "engine.study.analysis:summary",
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
