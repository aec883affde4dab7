"""Attune: load a model and a UNet runner, then generate() / inpaint() with validated parameters.

Backends: "torch", "onnx", or "auto" (ONNX when it can run, else torch with `fallback_reason` set).
A runner module provides `create_runner(components, device) -> UNetRunner`, raising AttuneError when it cannot run;
`RUNNER_MODULES` names the module per backend, so a new backend is one line there.

Two kinds of components, one numpy interface (encode_text / encode_image / decode_latents, see engine/sampler.py):
- "onnx": engine.onnx_model.OnnxComponents, the light runtime: everything in ONNX Runtime, no torch imported. Graphs
  come shipped in the model folder or from the export cache; exporting (first use of another model) needs torch.
- "torch": engine.model.Components (diffusers/transformers modules), loaded only for the torch backend, for a
  model that must be exported first, or when an ONNX call fails and reruns on PyTorch (`_torch_components()`).
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import numbers
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from engine.defaults import DEFAULT_GUIDANCE
from engine.errors import AttuneError
from engine.heatmap import AttentionMaps
from engine.layout import (DEFAULT_LAYOUT, LAYOUT_MODES, PORTABLE_LAYOUTS, LocalBlend, RunSpec, Trajectory, changed_tokens,
                           check_layout, uses_blend, uses_injection)
from engine.model import Components, load_components
from engine.preflight import check_effective_weights, model_max_side
from engine.onnx_files import TORCH_MISSING, torch_available
from engine.prompt import SYNTAXES, WordTokens, tokenize_prompt, word_key
from engine.sampler import (WEIGHT_MODES, inpaint as sample_inpaint, prepare_conditioning, text_to_image,
                            token_weight_vector)
from engine.schedulers import SCHEDULERS

BACKENDS = ("auto", "torch", "onnx")
RUNNER_MODULES = {"torch": "engine.runners.torch", "onnx": "engine.runners.onnx"}
AUTO_ORDER = ("onnx", "torch")

MAX_STEPS = 150
MAX_SIDE = 2048
MAX_WEIGHT = 3.0
MAX_GUIDANCE = 30.0
MAX_SEED = 2**63 - 1
MAX_PROMPT_CHARS = 2000
MAX_MASK_BLUR = 64
MAX_PADDING = 512
TRAJECTORY_CACHE = 6  # recent runs kept for layout-keeping reweights (latents + token maps per step)
MAX_EDIT_DEPTH = 32

Progress = Callable[[int, int], None] | None


@dataclass
class GenerateParams:
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = DEFAULT_GUIDANCE
    width: int = 128
    height: int = 128
    scheduler: str = "ddim"
    syntax: str = "a1111"
    weights: dict[str, float] = field(default_factory=dict)  # word or phrase -> weight in [0, 3]
    weight_mode: str = "score"  # score | prob | embed | a1111 (engine.sampler.WEIGHT_METHODS)
    cond_only: bool = True

    def replace(self, **changes) -> "GenerateParams":
        return dataclasses.replace(self, **changes)


@dataclass
class InpaintParams:
    base: GenerateParams  # seed, steps, guidance, scheduler, weights...; base.prompt is the inpaint prompt
    image: Image.Image
    mask: np.ndarray  # (H, W) bool, True = change
    mask_blur: int = 4  # feather width inside the mask (px); outside the mask stays exactly the parent
    only_masked: bool = False
    padding: int = 16
    auto_crop: bool = True  # small masks work only-masked anyway (engine.sampler.auto_crops); info["auto_crop"]


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


def _choice(name: str, value, options) -> str:
    v = str(value).strip().lower() if isinstance(value, str) else value
    if v not in options:
        raise AttuneError(f"Unknown {name} '{value}': choose one of {', '.join(options)}.")
    return v


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


def validate_generate(params: GenerateParams, vae_scale_factor: int, max_side: int | None = None) -> GenerateParams:
    """A checked copy of params. max_side: the largest side the model serves (engine.preflight.max_side)."""
    if not isinstance(params, GenerateParams):
        raise AttuneError("generate() takes a GenerateParams.")
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
        scheduler=_choice("scheduler", params.scheduler, SCHEDULERS),
        syntax=_choice("prompt syntax", params.syntax, SYNTAXES),
        weight_mode=_choice("weight mode", params.weight_mode, WEIGHT_MODES),
        weights=dict(params.weights or {}) if isinstance(params.weights, dict) else params.weights,
    )


def validate_inpaint(params: InpaintParams, vae_scale_factor: int,
                     max_side: int | None = None) -> tuple[InpaintParams, np.ndarray]:
    if not isinstance(params, InpaintParams):
        raise AttuneError("inpaint() takes an InpaintParams.")
    if not isinstance(params.image, Image.Image):
        raise AttuneError("The image to inpaint must be a PIL image.")
    W, H = params.image.size
    try:
        mask = np.asarray(params.mask)
    except Exception:
        raise AttuneError("The mask must be an array of booleans (True = change).") from None
    if mask.ndim == 3:  # an RGB(A) mask image: any channel white
        mask = mask[..., :3].max(axis=-1)
    if mask.ndim != 2:
        raise AttuneError(f"The mask must be 2-D (height x width), got shape {mask.shape}.")
    if mask.dtype != bool:
        mask = mask > (127 if mask.dtype == np.uint8 or mask.max(initial=0) > 1 else 0.5)
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
        base=validate_generate(base, vae_scale_factor, max_side),
        mask_blur=_int("mask blur", params.mask_blur, 0, MAX_MASK_BLUR),
        padding=_int("padding", params.padding, 0, MAX_PADDING),
    )
    return out, mask


# ---------------------------------------------------------------------------------------------- runners
def create_runner(backend: str, components: Components, device: str):
    """Make the runner for a backend; AttuneError when that backend cannot run here."""
    module_name = RUNNER_MODULES[backend]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise AttuneError(f"The {backend} backend is not available yet.") from None
        raise AttuneError(f"The {backend} backend cannot start: missing package {e.name}.") from None
    try:
        return module.create_runner(components, device)
    except (ImportError, OSError) as e:  # the exporter's packages or the export's files, not the runtime itself
        raise AttuneError(f"The {backend} backend cannot start: {_failure(e)}.") from e


def _failure(error: BaseException) -> str:
    """What really failed, in a few words: a missing package, a file error, ONNX Runtime itself, or another error."""
    first = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, ImportError):
        return f"missing package {error.name or first}"
    if isinstance(error, OSError) and not _from_onnxruntime(error):
        return f"file error ({error.strerror or first}{': ' + str(error.filename) if error.filename else ''})"
    if _from_onnxruntime(error):
        return f"ONNX Runtime failed ({type(error).__name__}: {first})"
    return f"{type(error).__name__}: {first}"


def _from_onnxruntime(error: BaseException) -> bool:
    """Raised by ONNX Runtime's own code (its exception types, or a frame inside the onnxruntime package)."""
    if type(error).__module__.startswith("onnxruntime"):
        return True
    tb = error.__traceback__
    while tb is not None:
        if "onnxruntime" in Path(tb.tb_frame.f_code.co_filename).parts:
            return True
        tb = tb.tb_next
    return False


class Attune:
    """The engine: one model, one runner. generate()/inpaint() are serialised by a lock (safe from threads)."""

    def __init__(self, model: str | Path | None = None, backend: str = "auto", device: str = "cpu",
                 dtype=None, components: Components | None = None,
                 batch_window_ms: float | None = None) -> None:
        backend = _choice("backend", backend, BACKENDS)
        self._model, self._dtype = model, dtype
        self.device = str(getattr(components, "device", None) or device)
        given = components
        self._torch_comps = given if getattr(given, "backend", "torch") == "torch" else None
        self.fallback_reason: str | None = None
        if backend == "auto":
            reasons = []
            for name in AUTO_ORDER:
                try:
                    self.components, self.runner = self._open(name, given)
                    break
                except Exception as e:  # any failure of a preferred backend falls through to the next one
                    first = (str(e).strip().splitlines() or [""])[0]
                    reasons.append(first if isinstance(e, AttuneError) else f"{name}: {type(e).__name__}: {first}")
            else:
                raise AttuneError("No backend can run: " + " ".join(reasons))
            self.fallback_reason = " ".join(reasons) or None
        else:
            self.components, self.runner = self._open(backend, given)
        self.backend_name: str = self.runner.name
        self.max_side = model_max_side(self.components, MAX_SIDE)
        self._torch_runner = None  # made when an ONNX call fails (per-call fallback)
        self._inpaint_runner = None  # the model's 9-channel inpainting UNet's runner (ONNX or PyTorch), on first use
        self._inpaint_torch_runner = None  # its PyTorch runner when its ONNX graph fails (per-call fallback)
        self._trajectories: OrderedDict[str, object] = OrderedDict()  # recent runs, for layout-keeping reweights
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._waiting = 0
        self.batcher = None  # engine.batching: concurrent calls share UNet calls instead of taking turns
        self._inpaint_batcher = None  # the same for the inpainting UNet's calls
        self._fallback_lock = threading.Lock()
        self.batching_reason: str | None = None
        self._start_batching(batch_window_ms)

    def _start_batching(self, window_ms: float | None) -> None:
        from engine.batching import BATCHABLE_RUNNERS, Batcher, window_from_env

        window_ms = window_from_env() if window_ms is None else window_ms
        if window_ms is None:
            return
        if self.runner.name not in BATCHABLE_RUNNERS:
            self.batching_reason = f"the {self.runner.name} backend is not batched; calls take turns."
            return
        self.batcher = Batcher(self.runner, window_ms=window_ms)
        if self.batcher.lanes > 1:  # requests decode side by side too: their graphs get a lane's share of cores
            from engine.batching import share_cores

            share_cores(self.components, self.batcher.lanes)
        if not self.batcher.stacking:
            why = ("this ONNX export's maps are not row-exact (exported before maps_row_exact; export it again)"
                   if self.runner.name == "onnx" else "MKL_CBWR not in effect")
            self.batching_reason = f"batched rows would not be bit-exact here ({why}); calls run one by one."

    # ------------------------------------------------------------------ loading
    def _torch_components(self) -> Components:
        """The PyTorch components, loaded on first need; AttuneError (one line) when torch is not installed."""
        if self._torch_comps is None:
            model = self._model
            if model is None and getattr(self, "components", None) is not None:
                model = self.components.path
            self._torch_comps = load_components(model, device=self.device, dtype=self._dtype)
        return self._torch_comps

    def _onnx_components(self, given):
        """Light components: the given ones, the model's shipped or cached graphs, or (torch installed) an export."""
        from engine.onnx_model import OnnxComponents, load_onnx_components

        if isinstance(given, OnnxComponents):
            return given
        if self.device.startswith("cuda"):
            from engine.runners.onnx import choose_providers

            if choose_providers(self.device)[0] != "CUDAExecutionProvider":
                raise AttuneError("onnxruntime-gpu is not installed (pip install -r requirements-gpu.txt), "
                                  "so ONNX cannot use the GPU.")
        if given is None:
            try:
                return load_onnx_components(self._model, device=self.device)
            except AttuneError:
                if not torch_available():
                    raise
        from engine.onnx_files import find_export

        torch_comps = self._torch_components()
        folder = find_export(torch_comps.path, torch_comps.weights_hash)  # shipped or cached
        if folder is None:
            from engine.exporter import ensure_exported  # needs torch: this model's graphs are exported on first use

            folder = ensure_exported(torch_comps)
        comps = load_onnx_components(torch_comps.path or self._model, export_dir=folder, device=self.device)
        comps.model_id = torch_comps.model_id
        return comps

    def _open(self, backend: str, given):
        """(components, runner) for a backend."""
        if backend == "torch":
            if self._torch_comps is None and not torch_available():
                raise AttuneError(f"The PyTorch backend cannot run: {TORCH_MISSING}.")
            comps = self._torch_components()
            return comps, create_runner("torch", comps, self.device)
        comps = self._onnx_components(given)
        return comps, create_runner(backend, comps, self.device)

    # ------------------------------------------------------------------ info
    @property
    def queue_depth(self) -> int:
        """Calls waiting for the engine (not counting the one running)."""
        return self._waiting

    @property
    def busy(self) -> bool:
        return self._lock.locked() or (self.batcher is not None and self.batcher.active > 0)

    @property
    def model_id(self) -> str:
        return self.components.model_id

    @property
    def weights_hash(self) -> str:
        return self.components.weights_hash

    def tokenize(self, prompt: str, syntax: str = "a1111") -> WordTokens:
        return tokenize_prompt(self.components.tokenizer, prompt, _choice("prompt syntax", syntax, SYNTAXES))

    def close(self) -> None:
        for batcher in (self.batcher, self._inpaint_batcher):
            if batcher is not None:
                batcher.close()
        for runner in (self.runner, self._torch_runner, self._inpaint_runner, self._inpaint_torch_runner):
            close = getattr(runner, "close", None)
            if close:
                close()

    # ------------------------------------------------------------------ work
    def _serialised(self, fn):
        if self.batcher is not None:  # no lock: the batcher stacks the concurrent calls' UNet steps
            return self.batcher.run(fn)
        with self._count_lock:
            self._waiting += 1
        acquired = False
        try:
            self._lock.acquire()
            acquired = True
            with self._count_lock:
                self._waiting -= 1
            return fn()
        finally:
            if acquired:
                self._lock.release()
            else:  # interrupted while waiting
                with self._count_lock:
                    self._waiting -= 1

    def _sample(self, sample):
        """sample(components, runner) on this engine's components and runner. An ONNX failure reruns the whole call
        on PyTorch (never a mixed image) and records why. Returns (output, backend name, fallback reason)."""
        runner = self.batcher.runner if self.batcher is not None else self.runner
        if self.runner.name != "onnx":
            return sample(self.components, runner), self.backend_name, self.fallback_reason
        try:
            return sample(self.components, runner), self.backend_name, self.fallback_reason
        except Exception as e:
            what = _failure(e)  # ONNX Runtime's own failure, or what else failed during the ONNX call
            failure = what if what.startswith("ONNX Runtime") else "The ONNX call failed: " + what
            reason = f"{failure}; this call ran on PyTorch."
        finally:  # the image is done: the runtime may hand its freed working memory back to the OS
            if self.batcher is None or self.batcher.active <= 1:  # not while other requests' calls are running
                for part in (self.runner, self.components):
                    release = getattr(part, "release_memory", None)
                    if release is not None:
                        release()
        with self._fallback_lock:  # batching runs requests side by side: the fallback runner takes one at a time
            if self._torch_runner is None:
                if self._torch_comps is None and not torch_available():
                    raise AttuneError(f"{failure}, and the PyTorch fallback cannot run: {TORCH_MISSING}.")
                self._torch_runner = create_runner("torch", self._torch_components(), self.device)
            return sample(self._torch_comps, self._torch_runner), self._torch_runner.name, reason

    def _sample_inpaint_unet(self, sample):
        """sample(components, runner) on the model's 9-channel inpainting UNet, or None when the model ships none (or
        only PyTorch could run it, and PyTorch is missing: see _inpaint_unet_skipped). On the ONNX backend it runs the
        export's unet_inpaint graph when there is one, else PyTorch; the returned reason says so when that is not the
        engine's backend. Returns (output, backend name, reason) or None."""
        if self.runner.name == "onnx" and "unet_inpaint" in getattr(self.components, "manifest", {}).get("parts", []):
            return self._sample_inpaint_unet_onnx(sample)
        return self._sample_inpaint_unet_torch(sample, None)

    def _sample_inpaint_unet_torch(self, sample, failure: str | None):
        """The inpainting UNet on PyTorch. failure: why its ONNX graph could not run (this call then runs unbatched)."""
        comps = self.components if getattr(self.components, "inpaint_unet", None) is not None else self._torch_comps
        folder = getattr(self.components, "path", None)
        if comps is None and folder and (Path(folder) / "unet_inpaint").is_dir() and torch_available():
            comps = self._torch_components()  # the light runtime: the inpainting UNet is loaded in PyTorch
        if comps is None or getattr(comps, "inpaint_unet", None) is None:
            if failure is not None:
                raise AttuneError(f"{failure}, and the PyTorch fallback cannot run: {TORCH_MISSING}.")
            return None
        if failure is not None:
            with self._fallback_lock:  # one call at a time on the fallback runner
                if self._inpaint_torch_runner is None:
                    from engine.runners.torch import TorchUNetRunner

                    self._inpaint_torch_runner = TorchUNetRunner(comps.inpaint_unet, self.device)
                runner = self._inpaint_torch_runner
                return sample(comps, runner), runner.name, f"{failure}; this call ran on PyTorch."
        with self._count_lock:  # batching runs requests side by side: one runner (one processor install) only
            if self._inpaint_runner is None:
                from engine.runners.torch import TorchUNetRunner

                self._inpaint_runner = TorchUNetRunner(comps.inpaint_unet, self.device)
        reason = self.fallback_reason
        if self.runner.name != self._inpaint_runner.name:
            reason = (f"The model's inpainting UNet has no {self.runner.name} graph; inpainting ran on PyTorch "
                      "with it.")
        if self.batcher is not None:  # no engine lock when batching: this UNet's calls need a batcher of their own
            batcher = self._inpaint_batcher_for()
            out = self.batcher.run_elsewhere(lambda: batcher.run(lambda: sample(comps, batcher.runner)))
            return out, self._inpaint_runner.name, reason
        return sample(comps, self._inpaint_runner), self._inpaint_runner.name, reason

    def _sample_inpaint_unet_onnx(self, sample):
        """The inpainting UNet's graph (unet_inpaint/ of the engine's export) on ONNX Runtime. An ONNX failure reruns
        the whole call on the PyTorch inpainting UNet (never a mixed image) and records why, as _sample does."""
        try:
            with self._count_lock:  # one runner, made on first use
                if self._inpaint_runner is None:
                    from engine.runners.onnx import OnnxUNetRunner

                    runner = OnnxUNetRunner(self.components.export_dir, device=self.device, subfolder="unet_inpaint")
                    runner.warm_up(maps=True)  # a damaged graph fails here
                    self._inpaint_runner = runner
            runner = self._inpaint_runner
            if self.batcher is not None:
                batcher = self._inpaint_batcher_for()
                out = self.batcher.run_elsewhere(lambda: batcher.run(lambda: sample(self.components, batcher.runner)))
            else:
                out = sample(self.components, runner)
            return out, runner.name, self.fallback_reason
        except Exception as e:
            what = _failure(e)
            failure = what if what.startswith("ONNX Runtime") else "The ONNX call failed: " + what
        finally:
            if self.batcher is None or self.batcher.active <= 1:  # as _sample: hand freed working memory back
                for part in (self._inpaint_runner, self.components):
                    release = getattr(part, "release_memory", None)
                    if release is not None:
                        release()
        return self._sample_inpaint_unet_torch(sample, failure)

    def _inpaint_unet_skipped(self) -> str | None:
        """Why a model that ships a 9-channel inpainting UNet inpainted with the base UNet: its ONNX graph is missing
        and PyTorch is not installed. None when the model ships none (or it ran)."""
        folder = getattr(self.components, "path", None)
        if not folder or not (Path(folder) / "unet_inpaint").is_dir() or torch_available():
            return None
        return (f"The model's inpainting UNet has no {self.runner.name} graph and {TORCH_MISSING}; inpainting "
                "blended with the base UNet.")

    def _inpaint_batcher_for(self):
        """The batcher of the 9-channel inpainting UNet's calls (made on first use, same window as the engine's)."""
        with self._count_lock:
            if self._inpaint_batcher is None:
                from engine.batching import Batcher

                self._inpaint_batcher = Batcher(self._inpaint_runner, window_ms=self.batcher.window_s * 1000.0)
            return self._inpaint_batcher

    def _conditioning(self, p: GenerateParams):
        comps = self.components
        word_tokens = tokenize_prompt(comps.tokenizer, p.prompt, p.syntax)
        if not word_tokens.words:
            raise AttuneError("The prompt has no words.")
        weights = validate_weights(p.weights, word_tokens)
        check_effective_weights(word_tokens, weights)
        negative = tokenize_prompt(comps.tokenizer, p.negative_prompt, p.syntax)
        check_effective_weights(negative, None, "negative prompt")
        cond = prepare_conditioning(comps, word_tokens, negative, guidance=p.guidance, weights=weights,
                                    weight_mode=p.weight_mode, cond_only=p.cond_only)
        return word_tokens, dataclasses.replace(p, weights=weights), cond

    def generate(self, params: GenerateParams, progress: Progress = None) -> Result:
        p = validate_generate(params, self.components.vae_scale_factor, self.max_side)
        return self._serialised(lambda: self._generate(RunSpec(p), progress))

    @property
    def layouts(self) -> tuple[str, ...]:
        """The layout modes this engine can run: attention injection needs the unbatched PyTorch runner."""
        return LAYOUT_MODES if self.runner.name == "torch" and self.batcher is None else PORTABLE_LAYOUTS

    def reweight(self, parent, weights: dict[str, float], weight_mode: str = "score", layout: str = DEFAULT_LAYOUT,
                 progress: Progress = None) -> Result:
        """A reweight as an edit of `parent` (GenerateParams of a plain run, or a RunSpec): same seed and
        parameters, new word weights and method. layout "blend" keeps everything outside the reweighted words'
        attention as in the parent (engine.layout); "free" is the plain re-run; "inject" and "blend+inject" also reuse
        the parent's attention (engine.injection; unbatched PyTorch only). result.info["layout"] says which."""
        layout = check_layout(layout)
        if layout not in self.layouts:
            raise AttuneError(f"Layout '{layout}' (attention injection) runs on the unbatched PyTorch backend only; "
                              f"this engine runs {self.runner.name}{' batched' if self.batcher else ''}: use blend.")
        spec = parent if isinstance(parent, RunSpec) else RunSpec(parent)
        base = validate_generate(spec.params, self.components.vae_scale_factor, self.max_side)
        spec = RunSpec(base, check_layout(spec.layout), spec.parent)
        edit = validate_generate(dataclasses.replace(base, weights=weights, weight_mode=weight_mode),
                                 self.components.vae_scale_factor, self.max_side)
        return self._serialised(lambda: self._generate(RunSpec(edit, layout, spec), progress))

    def _trajectory(self, spec: RunSpec, backend: str):
        """The cached trajectory of a run, or None."""
        key = spec.key(backend)
        if key in self._trajectories:
            self._trajectories.move_to_end(key)
            return self._trajectories[key]
        return None

    def _remember_trajectory(self, spec: RunSpec, backend: str, trajectory) -> None:
        if getattr(trajectory, "attention", None) is not None:  # attention records are large: keep the newest only
            for other in self._trajectories.values():
                other.attention = None
        self._trajectories[spec.key(backend)] = trajectory
        while len(self._trajectories) > TRAJECTORY_CACHE:
            self._trajectories.popitem(last=False)

    def _generate(self, spec: RunSpec, progress: Progress = None) -> Result:
        """Run `spec` on this engine's runner (ONNX falls back to PyTorch per call). Caller holds the lock."""
        t0 = time.perf_counter()
        state: dict = {}
        out, backend, reason = self._sample(lambda comps, runner: self._run_on(comps, runner, spec, progress, state=state))
        word_tokens, p2 = state["word_tokens"], state["params"]
        info = dict(out.info)
        if spec.parent is not None:
            info["layout"] = spec.layout
        timings = {"encode": state["encode"], **out.timings, "total": time.perf_counter() - t0}
        return Result(out.image, out.maps, word_tokens, backend, self.device, reason, timings, p2, info)

    def _blend_tokens(self, spec: RunSpec, word_tokens, p2, cond) -> list[int]:
        """Token positions the edit reweights relative to its parent (they make the LocalBlend mask)."""
        parent_params = spec.parent.params
        keep = {f.name for f in dataclasses.fields(GenerateParams)} - {"weights", "weight_mode"}
        differs = [k for k in sorted(keep) if getattr(parent_params, k) != getattr(p2, k)]
        if differs:
            raise AttuneError(f"A layout-keeping reweight needs the parent's settings; these differ: {', '.join(differs)}.")
        parent_w = token_weight_vector(word_tokens, validate_weights(parent_params.weights, word_tokens),
                                       parent_params.weight_mode)
        if parent_params.weight_mode != p2.weight_mode:  # another method: every weighted word is part of the edit
            return [i for i, (a, b) in enumerate(zip(parent_w, cond.token_weights)) if a != 1 or b != 1]
        return changed_tokens(parent_w, cond.token_weights)

    def _run_on(self, comps, runner, spec: RunSpec, progress: Progress = None, depth: int = 0,
                state: dict | None = None, record_attention: bool = False):
        """Sample `spec` on `runner`, recording its trajectory; an edit first recomputes its parent's trajectory
        when it is not cached (recursively, on the same runner). record_attention: also record the run's attention
        (engine.injection) for an `inject` edit of it."""
        t0 = time.perf_counter()
        word_tokens, p2, cond = self._conditioning(spec.params)
        if state is not None:
            state.update(word_tokens=word_tokens, params=p2, encode=time.perf_counter() - t0)
        local_blend = injection = None
        if spec.layout != "free" and spec.parent is not None:
            inject = uses_injection(spec.layout)
            tokens = self._blend_tokens(spec, word_tokens, p2, cond)
            parent_traj = self._trajectory(spec.parent, runner.name)
            if inject and parent_traj is not None:
                from engine import injection as inj

                if parent_traj.attention is None or not parent_traj.attention.covers(*inj.steps_needed(p2.steps)):
                    parent_traj = None  # cached without (enough) attention: run the parent again, recording it
            if parent_traj is None:
                if depth >= MAX_EDIT_DEPTH:
                    raise AttuneError("This chain of edits is too long to recompute its layout; use layout free.")
                self._run_on(comps, runner, spec.parent, None, depth + 1, record_attention=inject)
                parent_traj = self._trajectory(spec.parent, runner.name)
            if uses_blend(spec.layout):
                local_blend = LocalBlend(parent_traj, tokens)
            if inject:
                from engine.injection import AttentionInjection

                injection = AttentionInjection(p2.steps, source=parent_traj.attention, keep_tokens=tokens,
                                               record=record_attention)
        if record_attention and injection is None:
            from engine.injection import AttentionInjection

            injection = AttentionInjection(p2.steps, record=True)
        trajectory = Trajectory()
        sample = lambda: text_to_image(comps, runner, cond, seed=p2.seed, steps=p2.steps, guidance=p2.guidance,  # noqa: E731
                                       width=p2.width, height=p2.height, scheduler=p2.scheduler, progress=progress,
                                       record=trajectory, local_blend=local_blend, injection=injection)
        if injection is None:
            out = sample()
        else:
            from engine.injection import injecting

            with injecting(runner, injection):
                out = sample()
            if record_attention:
                trajectory.attention = injection.record
        self._remember_trajectory(spec, runner.name, trajectory)
        return out

    def inpaint(self, params: InpaintParams, progress: Progress = None) -> Result:
        p, mask = validate_inpaint(params, self.components.vae_scale_factor, self.max_side)

        def run() -> Result:
            t0 = time.perf_counter()
            word_tokens, base, cond = self._conditioning(p.base)
            t1 = time.perf_counter()
            def sample(comps, runner):
                return sample_inpaint(
                    comps, runner, cond, image=p.image, mask=mask, seed=base.seed, steps=base.steps,
                    guidance=base.guidance, scheduler=base.scheduler, mask_blur=p.mask_blur, only_masked=p.only_masked,
                    padding=p.padding, auto_crop=p.auto_crop, progress=progress)

            # A model that ships a 9-channel inpainting UNet inpaints with it; otherwise the base UNet (blend path).
            dedicated = self._sample_inpaint_unet(sample)
            out, backend, reason = dedicated if dedicated is not None else self._sample(sample)
            skipped = self._inpaint_unet_skipped() if dedicated is None else None
            if skipped is not None:
                reason = f"{reason} {skipped}" if reason else skipped
            out.info["unet"] = "inpaint-9ch" if dedicated is not None else "base"
            timings = {"encode": t1 - t0, **out.timings, "total": time.perf_counter() - t0}
            return Result(out.image, out.maps, word_tokens, backend, self.device, reason, timings, base, out.info)

        return self._serialised(run)
