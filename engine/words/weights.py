"""Word weights, one home: the methods, the limits, validation, the slider mapping and the per-token weights.

A weight comes from two places: the prompt's emphasis syntax and the sliders / `--weight` (a word or phrase ->
weight). Both multiply per token position; the product must stay in [0, MAX_WEIGHT]. Light module (numpy only):
the CLI's help and the pages list the methods without loading a model library.
"""
from __future__ import annotations

import math

import numpy as np

from engine.errors import AttuneError
from engine.words.prompt import WordTokens, split_words, word_key

WEIGHT_METHODS = {
    "score": "PromptCharm-style: scales the word's attention scores before softmax",
    "prob": "Prompt-to-Prompt-style: scales the word's attention probabilities after softmax",
    "embed": "Compel-style: interpolates the word's embedding away from the empty prompt's",
    "a1111": "A1111 'Original' emphasis: multiplies token embeddings, restores the mean",
}
WEIGHT_MODES = tuple(WEIGHT_METHODS)
MAX_WEIGHT = 3.0  # the most a word's weight may come to: emphasis syntax x every weight / slider that covers it
SLIDER_MAX = 2.0  # the Refine page's sliders go from 0 to this


# Slider value -> internal scale, piecewise linear through these knots; above 1 the scale is the slider value.
# Tuning split at guidance 4 (engine.defaults; bench/results/refine_guidance_tuning_knots_*.json, blend, 33 objects):
# with `score` an internal 0.75 / 0.8 / 0.82 / 0.84 / 0.88 left a median 0.77 / 0.74 / 0.77 / 0.86 / 0.95 of the
# object's area, found in 85 / 85 / 91 / 94 / 94% of cases, so slider 0.5 mapped to 0.82 at DDIM 20. At the default
# DPM++ 10 steps 0.82 left 0.89 and 0.8 left 0.71 (found in 85%; refine_steps_v3_tuning_knots_score.json): the
# largest scale at or below 0.77, so now 0.8. With `prob` an internal
# 0.4 / 0.6 left 0.84 / 0.93 (found in 91 / 97%), so slider 0.5 maps to 0.4 (its 0.25 knot is interpolated).
# `embed` (Compel's, below 1 too; bench/results/refine_tuning_knots_embed_compel*.json, blend, 33 objects): an
# internal 0.8 / 0.84 / 0.86 / 0.88 / 0.91 / 0.94 left a median 0.58 / 0.69 / 0.75 / 0.80 / 0.89 / 0.93 of the area,
# found in 58 / 64 / 73 / 76 / 91 / 91%, so slider 0.5 maps to 0.91 (found as often as score's) and 0.25 to 0.8
# (about half the object); 0.7 and below erased most objects. Slider 0 stays 0 (the word's object removed).
SLIDER_KNOTS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "score": ((0.0, 0.25, 0.5, 1.0), (0.0, 0.75, 0.8, 1.0)),
    "prob": ((0.0, 0.25, 0.5, 1.0), (0.0, 0.2, 0.4, 1.0)),
    "embed": ((0.0, 0.25, 0.5, 1.0), (0.0, 0.8, 0.91, 1.0)),
}


# Above 1: internal scale = 1 + gain·(slider − 1) (no entry: gain 1, the scale is the slider value). Empty: on the
# tuning split (bench/results/refine_gain_tuning.json) score at gain 0.5 did not grow objects, prob at gain 3 broke
# them at 2. bench/refine.py --tune gain_above_one=METHOD:GAIN tries others.
ABOVE_ONE_GAIN: dict[str, float] = {}


def slider_scale(method: str, value: float, model_knots: dict | None = None, model_gains: dict | None = None) -> float:
    """The internal scale a slider value stands for, for a weighting method (1 -> 1 exactly). A model folder's own
    mapping (attune.json "slider_knots", "slider_gain": ModelDefaults) replaces these for the methods it names."""
    value = float(value)
    if value >= 1.0:
        gain = (model_gains or {}).get(method, ABOVE_ONE_GAIN.get(method))
        return value if gain is None else 1.0 + gain * (value - 1.0)
    knots = (model_knots or {}).get(method, SLIDER_KNOTS.get(method))
    if knots is None:
        return value
    xs, ys = knots
    return float(np.interp(value, xs, ys))


def validate_weights(weights, word_tokens: WordTokens) -> dict[str, float]:
    if weights is None:
        return {}
    if not isinstance(weights, dict):
        raise AttuneError("weights must be a mapping of word -> weight.")
    out: dict[str, float] = {}
    for word, w in weights.items():
        if not isinstance(word, str) or not word.strip():
            raise AttuneError(f"A weight needs a word from the prompt, got {word!r}.")
        if isinstance(w, bool):
            raise AttuneError(f"The weight of '{word}' must be a number, got {w!r}.")
        try:
            wf = float(w)
        except (TypeError, ValueError):
            raise AttuneError(f"The weight of '{word}' must be a number, got {w!r}.") from None
        if math.isnan(wf) or math.isinf(wf):
            raise AttuneError(f"The weight of '{word}' must be a finite number, got {wf}.")
        if not 0.0 <= wf <= MAX_WEIGHT:
            raise AttuneError(f"The weight of '{word}' must be between 0 and {MAX_WEIGHT:g}, got {wf:g}.")
        word_tokens.indices_for(word)  # AttuneError when the word is not in the prompt
        same = [key for key in out if word_key(key) == word_key(word)]
        for key in same:  # the same word given twice (moon, MOON): the last one wins, as with a repeated key
            del out[key]
        out[word.strip()] = wf
    return out


def effective_weights(word_tokens: WordTokens, weights: dict[str, float] | None) -> list[float]:
    """Each word's weight as the sampler applies it: its emphasis times every weight whose word/phrase covers it."""
    result = list(word_tokens.word_weights or [1.0] * len(word_tokens.words))
    lowered = [w.lower() for w in word_tokens.words]
    for phrase, value in (weights or {}).items():
        wanted = [w.lower() for w in split_words(str(phrase))]
        covered: set[int] = set()
        for start in range(len(lowered) - len(wanted) + 1) if wanted else ():
            if lowered[start : start + len(wanted)] == wanted:
                covered.update(range(start, start + len(wanted)))
        for k in covered:  # once per word, as the sampler scales each token position once per weight
            result[k] *= float(value)
    return result


def check_effective_weights(word_tokens: WordTokens, weights: dict[str, float] | None, what: str = "prompt") -> None:
    """AttuneError when a word's emphasis x weights leaves [0, MAX_WEIGHT] (e.g. `moon+` x 1900, or `moon` and
    `MOON` both weighted): such weights drive the image to NaN (an all-black PNG)."""
    for word, weight in zip(word_tokens.words, effective_weights(word_tokens, weights)):
        if not 0.0 <= weight <= MAX_WEIGHT + 1e-9:
            raise AttuneError(
                f"The weight of '{word}' in the {what} comes to {weight:.4g} (emphasis syntax x weights); "
                f"it must be between 0 and {MAX_WEIGHT:g}."
            )


def token_weight_vector(word_tokens: WordTokens, weights: dict[str, float] | None,
                        weight_mode: str | None = None, model_knots: dict | None = None,
                        model_gains: dict | None = None) -> list[float]:
    """Per-position weights: the prompt's emphasis weights times the slider weights of each word/phrase. With a
    weight_mode, slider values are mapped to that method's internal scale (slider_scale, the model's own if set)."""
    w = [float(x) for x in word_tokens.token_weights]
    for word, value in (weights or {}).items():
        scale = slider_scale(weight_mode, value, model_knots, model_gains) if weight_mode else float(value)
        for i in word_tokens.indices_for(word):
            w[i] *= scale
    return w


def normalize_weights(weights: dict | None, places: int = 2) -> dict[str, float]:
    """Word weights as a version records them: rounded, and words at 1 (no change) left out."""
    rounded = {str(word): round(float(weight), places) for word, weight in (weights or {}).items()}
    return {word: weight for word, weight in rounded.items() if abs(weight - 1.0) > 1e-6}
