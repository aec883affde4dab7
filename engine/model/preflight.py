"""Checks that need no loaded model: the sizes a model can serve and the weights a prompt may carry.

The CLI runs them before it loads a model (seconds) or creates a log, so bad input costs nothing and leaves nothing;
the engine runs the same rules again on every call (the app and the Python API go through it).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from engine.errors import AttuneError
from engine.words.prompt import WordTokens, is_break, parse, split_words

MAX_WEIGHT = 3.0  # the most a word's weight may come to: emphasis syntax x every --weight / slider that covers it
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


def model_max_side(components, cap: int) -> int:
    """max_side() for loaded components (their UNet config); `cap` when the UNet has no sample size."""
    config = getattr(getattr(components, "unet", None), "config", None)
    sample_size = getattr(config, "sample_size", None) if config is not None else None
    if sample_size is None:
        return cap
    return max_side(sample_size, components.vae_scale_factor, cap)


def local_model_folder(model) -> Path | None:
    """The folder a --model value (or a Version's model_id) names on this machine, without downloading anything;
    None when it is not a local folder (a hub id, a moved folder)."""
    from engine.model.loading import default_model_path

    text = "" if model is None else str(model).strip()
    if not text or text == BUILTIN_MODEL_ID:
        folder = default_model_path()
        return folder if folder.is_dir() else None
    folder = Path(text).expanduser()
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


def prompt_words(prompt: str, syntax: str) -> WordTokens:
    """The prompt's words and emphasis weights, without a tokenizer (each word stands for one token position)."""
    words: list[str] = []
    weights: list[float] = []
    for text, weight in parse(prompt, syntax):
        if is_break((text, weight)):  # A1111's chunk break: tokenize_prompt leaves it out, so no word here either
            continue
        for word in split_words(text):
            words.append(word)
            weights.append(weight if math.isfinite(weight) else 1.0)  # as tokenize_prompt reads it
    return WordTokens(text=prompt, words=words, token_indices=[[i] for i in range(len(words))], input_ids=[],
                      token_weights=list(weights), word_weights=weights)


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
