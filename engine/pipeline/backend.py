"""Backend choice: which components and UNet runners an engine runs on, and the PyTorch they fall back to.

Backends: "torch", "onnx", or "auto" (ONNX when it can run, else torch with `fallback_reason` set). Only "auto" falls
back: with "onnx" asked for by name, an ONNX failure (at start or during a call) is an AttuneError. A runner module
provides `create_runner(components, device) -> Runner`, raising AttuneError when it cannot run; `RUNNER_MODULES`
names the module per backend, so a new backend is one line there.

Two kinds of components, one numpy interface (engine.protocols.Components):
- "onnx": engine.model.onnx_components.OnnxComponents, the light runtime: everything in ONNX Runtime, no torch.
  Graphs come shipped in the model folder or from the export cache.
- "torch": engine.model.loading.Components (diffusers/transformers modules), loaded only for the torch backend, for
  a model that must be exported first, or when an ONNX call fails and reruns on PyTorch (`torch_components()`).

This is the one engine module that exports a model (on first use): through the `export` hook its caller passes
(export.onnx.ensure_exported, handed in by the CLI's entry and the app). The engine never imports `export`.
"""
from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Callable

from engine.errors import AttuneError
from engine.model.loading import Components as TorchComponents, load_components
from engine.model.onnx_components import OnnxComponents, load_onnx_components
from engine.model.onnx_files import TORCH_MISSING, export_parts, find_export, torch_available
from engine.model.ort_sessions import choose_providers
from engine.protocols import Components, Runner

BACKENDS = ("auto", "torch", "onnx")
RUNNER_MODULES = {"torch": "engine.runners.torch", "onnx": "engine.runners.onnx"}
AUTO_ORDER = ("onnx", "torch")

# An SDXL export traces a ~10 GB fp32 UNet and needs several times that in RAM: "auto" never starts one unasked
SDXL_AUTO_NO_EXPORT = ("This SDXL model has no ONNX graphs, and auto does not export one (it needs several times the "
                       "weights' size in RAM): export it ahead of time (python -m export.onnx --model PATH) or ask "
                       "for the onnx backend.")
Exporter = Callable[..., Path]  # (torch components, progress=None) -> the folder of the model's ONNX graphs


def create_runner(backend: str, components: Components, device: str) -> Runner:
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
        raise AttuneError(f"The {backend} backend cannot start: {describe_failure(e)}.") from e


def describe_failure(error: BaseException) -> str:
    """What really failed, in a few words: a missing package, a file error, ONNX Runtime itself, or another error."""
    first = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, ImportError):
        return f"missing package {error.name or first}"
    if isinstance(error, OSError) and not _from_onnxruntime(error):
        return f"file error ({error.strerror or first}{': ' + str(error.filename) if error.filename else ''})"
    if _from_onnxruntime(error):
        return f"ONNX Runtime failed ({type(error).__name__}: {first})"
    return f"{type(error).__name__}: {first}"


def onnx_failure(error: BaseException) -> str:
    """The first half of a fallback reason: what failed during an ONNX call."""
    what = describe_failure(error)
    return what if what.startswith("ONNX Runtime") else "The ONNX call failed: " + what


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


class Backend:
    """One model in the runtimes an engine uses. `components` and `runner`: the backend chosen at start
    (`fallback_reason` says why it is not the one asked for). The PyTorch components and runners that an ONNX
    failure reruns on, and the runners of the model's 9-channel inpainting UNet, are made on first need."""

    def __init__(self, model: str | Path | None, backend: str, device: str, dtype=None,
                 components: Components | None = None, export: Exporter | None = None) -> None:
        self.model, self.dtype, self.export = model, dtype, export
        self.requested = backend
        self.device = str((components.device if components is not None else "") or device)
        self.torch = components if isinstance(components, TorchComponents) else None  # loaded on first need
        self.fallback_reason: str | None = None
        self.components: Components | None = None  # set just below; torch_components() reads its path meanwhile
        if backend == "auto":
            reasons = []
            for name in AUTO_ORDER:
                try:
                    self.components, self.runner = self._open(name, components)
                    break
                except Exception as e:  # any failure of a preferred backend falls through to the next one
                    first = (str(e).strip().splitlines() or [""])[0]
                    reasons.append(first if isinstance(e, AttuneError) else f"{name}: {type(e).__name__}: {first}")
            else:
                raise AttuneError("No backend can run: " + " ".join(reasons))
            self.fallback_reason = " ".join(reasons) or None
        else:
            self.components, self.runner = self._open(backend, components)
        self.fallback_lock = threading.Lock()  # the fallback runners take one call at a time
        self.torch_runner: Runner | None = None  # made when an ONNX call fails (per-call fallback)
        self.inpaint_runner: Runner | None = None  # the 9-channel inpainting UNet's runner (ONNX or PyTorch)
        self.inpaint_torch_runner: Runner | None = None  # its PyTorch runner when its ONNX graph fails

    # ------------------------------------------------------------------ loading
    def torch_components(self) -> TorchComponents:
        """The PyTorch components, loaded on first need; AttuneError (one line) when torch is not installed."""
        if self.torch is None:
            model = self.model if self.model is not None else self._loaded_path()
            self.torch = load_components(model, device=self.device, dtype=self.dtype)
        return self.torch

    def _loaded_path(self) -> Path | None:
        return self.components.path if self.components is not None else None

    def _onnx_components(self, given: Components | None) -> OnnxComponents:
        """Light components: the given ones, the model's shipped or cached graphs, or (torch installed) an export."""
        if isinstance(given, OnnxComponents):
            return given
        if self.device.startswith("cuda") and choose_providers(self.device)[0] != "CUDAExecutionProvider":
            raise AttuneError("onnxruntime-gpu is not installed (pip install -r requirements-gpu.txt), "
                              "so ONNX cannot use the GPU.")
        if given is None:
            try:
                return load_onnx_components(self.model, device=self.device)
            except AttuneError:
                if not torch_available():
                    raise
        torch_comps = self.torch_components()
        folder = find_export(torch_comps.path, torch_comps.weights_hash,  # shipped or cached
                             export_parts(torch_comps.text_time is not None))
        if folder is None:
            if self.requested == "auto" and torch_comps.text_time is not None:
                raise AttuneError(SDXL_AUTO_NO_EXPORT)
            if self.export is None:
                raise AttuneError("This model has no ONNX graphs yet: export them first (python -m export.onnx "
                                  "--model PATH); the app and the CLI do it on first use.")
            try:  # needs torch: this model's graphs are exported on first use
                folder = self.export(torch_comps)
            except (ImportError, OSError) as e:  # the exporter's packages or files, not the runtime itself
                raise AttuneError(f"The onnx backend cannot start: {describe_failure(e)}.") from e
        comps = load_onnx_components(torch_comps.path or self.model, export_dir=folder, device=self.device)
        comps.model_id = torch_comps.model_id
        return comps

    def _open(self, backend: str, given: Components | None) -> tuple[Components, Runner]:
        if backend == "torch":
            if self.torch is None and not torch_available():
                raise AttuneError(f"The PyTorch backend cannot run: {TORCH_MISSING}.")
            comps = self.torch_components()
            return comps, create_runner("torch", comps, self.device)
        comps = self._onnx_components(given)
        return comps, create_runner(backend, comps, self.device)

    # ------------------------------------------------------------------ fallbacks
    def check_fallback(self, failure: str) -> None:
        """An ONNX call failed: AttuneError when the engine was asked for "onnx" by name, so it never runs on PyTorch
        unseen; "auto" (the only backend that falls back) reruns the call on PyTorch."""
        if self.requested == "onnx":
            raise AttuneError(f"{failure}. The onnx backend was asked for by name, so this call did not fall back to "
                              "PyTorch (backend auto does).")

    def fallback_runner(self, failure: str) -> Runner:
        """The PyTorch runner an ONNX call reruns on (only for backend "auto"). Caller holds fallback_lock."""
        self.check_fallback(failure)
        if self.torch_runner is None:
            if self.torch is None and not torch_available():
                raise AttuneError(f"{failure}, and the PyTorch fallback cannot run: {TORCH_MISSING}.")
            self.torch_runner = create_runner("torch", self.torch_components(), self.device)
        return self.torch_runner

    def ships_inpaint_unet(self) -> bool:
        folder = self.components.path
        return bool(folder) and (Path(folder) / "unet_inpaint").is_dir()

    def inpaint_unet_graph(self) -> bool:
        """The ONNX backend runs an export that holds the inpainting UNet's graph."""
        return isinstance(self.components, OnnxComponents) and "unet_inpaint" in self.components.manifest.get(
            "parts", [])

    def inpaint_torch_components(self) -> TorchComponents | None:
        """PyTorch components with the model's inpainting UNet, loaded when needed and possible; else None."""
        if isinstance(self.components, TorchComponents) and self.components.inpaint_unet is not None:
            return self.components
        comps = self.torch
        if comps is None and self.ships_inpaint_unet() and torch_available():
            comps = self.torch_components()  # the light runtime: the inpainting UNet is loaded in PyTorch
        return comps if comps is not None and comps.inpaint_unet is not None else None

    def inpaint_unet_skipped(self) -> str | None:
        """Why a model that ships a 9-channel inpainting UNet inpainted with the base UNet: its ONNX graph is missing
        and PyTorch is not installed. None when the model ships none (or it ran)."""
        if not self.ships_inpaint_unet() or torch_available():
            return None
        return (f"The model's inpainting UNet has no {self.runner.name} graph and {TORCH_MISSING}; inpainting "
                "blended with the base UNet.")

    def release_memory(self, *parts) -> None:
        """An image is done: the runtime may hand its freed working memory back to the OS."""
        for part in parts:
            if part is not None:
                part.release_memory()

    def close(self) -> None:
        for runner in (self.runner, self.torch_runner, self.inpaint_runner, self.inpaint_torch_runner):
            if runner is not None:
                runner.close()
