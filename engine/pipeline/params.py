"""What the engine takes and gives: GenerateParams, InpaintParams, Result, and the checks that make a caller's values
safe (each a one-line AttuneError when not).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from engine.attention.maps import AttentionMaps
from engine.defaults import INPAINT_DEFAULTS
from engine.errors import AttuneError
from engine.model.family import BUILTIN_DEFAULTS, ModelDefaults
from engine.sampling.masks import bool_mask
from engine.sampling.schedulers import SCHEDULERS
from engine.words.prompt import SYNTAXES, WordTokens
from engine.words.weights import WEIGHT_MODES

MAX_STEPS = 150
MAX_SIDE = 2048
MAX_GUIDANCE = 30.0
MAX_SEED = 2**63 - 1
MAX_PROMPT_CHARS = 2000
MAX_MASK_BLUR = 64
MAX_PADDING = 512

@dataclass
class GenerateParams:
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    # None: the model's default (engine.model.family.ModelDefaults; Attune fills them in before validating)
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    scheduler: str | None = None
    syntax: str = "a1111"
    weights: dict[str, float] = field(default_factory=dict)  # word or phrase -> weight in [0, 3]
    weight_mode: str = "score"  # score | prob | embed | a1111 (engine.words.weights.WEIGHT_METHODS)
    cond_only: bool = True

    def replace(self, **changes) -> "GenerateParams":
        return dataclasses.replace(self, **changes)


@dataclass
class InpaintParams:
    base: GenerateParams  # seed, steps, guidance, scheduler, weights...; base.prompt is the inpaint prompt
    image: Image.Image
    mask: np.ndarray  # (H, W) bool, True = change
    mask_blur: int = INPAINT_DEFAULTS.mask_blur  # feather width inside the mask (px); outside it stays the parent
    only_masked: bool = INPAINT_DEFAULTS.only_masked
    padding: int = INPAINT_DEFAULTS.padding
    auto_crop: bool = INPAINT_DEFAULTS.auto_crop  # small masks work only-masked anyway (engine.sampling.loop)


@dataclass
class Result:
    image: Image.Image
    maps: AttentionMaps
    word_tokens: WordTokens
    backend: str
    device: str
    fallback_reason: str | None
    timings: dict[str, float]
    params: GenerateParams | None = None
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- validation
def _int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value.strip())
        else:
            raise AttuneError(f"{name} must be a whole number, got {value!r}.")
    value = int(value)
    if not lo <= value <= hi:
        raise AttuneError(f"{name} must be between {lo} and {hi}, got {value}.")
    return value


def _float(name: str, value, lo: float, hi: float) -> float:
    if isinstance(value, bool):
        raise AttuneError(f"{name} must be a number, got {value!r}.")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise AttuneError(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(value):
        raise AttuneError(f"{name} must be a finite number, got {value}.")
    if not lo <= value <= hi:
        raise AttuneError(f"{name} must be between {lo:g} and {hi:g}, got {value:g}.")
    return value


def check_choice(name: str, value, options) -> str:
    v = str(value).strip().lower() if isinstance(value, str) else value
    if v not in options:
        raise AttuneError(f"Unknown {name} '{value}': choose one of {', '.join(options)}.")
    return v


DEFAULTED = ("width", "height", "guidance", "steps", "scheduler")  # the values a model's defaults fill in


def unset_values(params: GenerateParams) -> list[str]:
    """The names of the values the caller left to the model (None)."""
    return [name for name in DEFAULTED if getattr(params, name) is None]


def with_defaults(params: GenerateParams, defaults: ModelDefaults) -> GenerateParams:
    """params with each value the caller left out (None) taken from the model's defaults."""
    if not isinstance(params, GenerateParams):
        return params  # validate_generate refuses it in one line
    values = defaults.values()
    return dataclasses.replace(params, **{name: values[name] for name in unset_values(params)})


def validate_generate(params: GenerateParams, vae_scale_factor: int, max_side: int | None = None,
                      defaults: ModelDefaults | None = None) -> GenerateParams:
    """A checked copy of params. max_side: the largest side the model serves (engine.model.preflight.max_side).
    Values left out take `defaults` (the model's; without them, the built-in model's)."""
    if not isinstance(params, GenerateParams):
        raise AttuneError("generate() takes a GenerateParams.")
    params = with_defaults(params, defaults or BUILTIN_DEFAULTS)
    if not isinstance(params.prompt, str):
        raise AttuneError("The prompt must be text.")
    if not params.prompt.strip():
        raise AttuneError("The prompt is empty: describe the image to generate.")
    if len(params.prompt) > MAX_PROMPT_CHARS:
        raise AttuneError(f"The prompt is too long ({len(params.prompt)} characters; the limit is {MAX_PROMPT_CHARS}).")
    neg = params.negative_prompt if params.negative_prompt is not None else ""
    if not isinstance(neg, str):
        raise AttuneError("The negative prompt must be text.")
    if len(neg) > MAX_PROMPT_CHARS:
        raise AttuneError(f"The negative prompt is too long (limit {MAX_PROMPT_CHARS} characters).")
    f = int(vae_scale_factor)
    width = _int("width", params.width, f * 2, MAX_SIDE)
    height = _int("height", params.height, f * 2, MAX_SIDE)
    for name, side in (("width", width), ("height", height)):
        if side % f:
            raise AttuneError(f"{name} must be a multiple of {f} (the VAE's factor), got {side}.")
        if max_side and side > max_side:
            raise AttuneError(f"{name} {side} px is more than this model can serve: at most {max_side} px per side "
                              "(a few times the size it was trained at).")
    if not isinstance(params.cond_only, bool):
        raise AttuneError("cond_only must be true or false.")
    return dataclasses.replace(
        params,
        negative_prompt=neg,
        seed=_int("seed", params.seed, 0, MAX_SEED),
        steps=_int("steps", params.steps, 1, MAX_STEPS),
        guidance=_float("guidance", params.guidance, 0.0, MAX_GUIDANCE),
        width=width,
        height=height,
        scheduler=check_choice("scheduler", params.scheduler, SCHEDULERS),
        syntax=check_choice("prompt syntax", params.syntax, SYNTAXES),
        weight_mode=check_choice("weight mode", params.weight_mode, WEIGHT_MODES),
        weights=dict(params.weights or {}) if isinstance(params.weights, dict) else params.weights,
    )


def validate_inpaint(params: InpaintParams, vae_scale_factor: int, max_side: int | None = None,
                     defaults: ModelDefaults | None = None) -> tuple[InpaintParams, np.ndarray]:
    if not isinstance(params, InpaintParams):
        raise AttuneError("inpaint() takes an InpaintParams.")
    if not isinstance(params.image, Image.Image):
        raise AttuneError("The image to inpaint must be a PIL image.")
    W, H = params.image.size
    try:
        mask = bool_mask(params.mask)
    except (TypeError, ValueError) as e:
        if isinstance(e, AttuneError):
            raise
        raise AttuneError("The mask must be an array of booleans (True = change).") from None
    if mask.shape != (H, W):
        raise AttuneError(f"The mask is {mask.shape[1]}x{mask.shape[0]} but the image is {W}x{H}; they must match.")
    if not mask.any():
        raise AttuneError("The mask is empty: paint the area to change first.")
    if not isinstance(params.only_masked, bool):
        raise AttuneError("only_masked must be true or false.")
    if not isinstance(params.auto_crop, bool):
        raise AttuneError("auto_crop must be true or false.")
    f = int(vae_scale_factor)
    if not params.only_masked and (W % f or H % f):
        raise AttuneError(f"The image is {W}x{H}; its sides must be multiples of {f} (or use only-masked).")
    base = dataclasses.replace(params.base, width=W - W % f, height=H - H % f)  # the working size
    out = dataclasses.replace(
        params,
        base=validate_generate(base, vae_scale_factor, max_side, defaults),
        mask_blur=_int("mask blur", params.mask_blur, 0, MAX_MASK_BLUR),
        padding=_int("padding", params.padding, 0, MAX_PADDING),
    )
    return out, mask
