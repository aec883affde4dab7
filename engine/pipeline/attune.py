"""Attune, the engine: one model on one backend; generate(), reweight() and inpaint(), each a few numbered steps.

The steps read as a diffusers pipeline's __call__: check the parameters, encode the prompt with its word weights,
denoise (engine.sampling.loop), decode, return a Result. What runs them (backend choice, the PyTorch fallback when an
ONNX call fails, the model's inpainting UNet) is engine.pipeline.backend; taking turns or sharing UNet calls across
threads is engine.runners.batching. Parameters and their checks: engine.pipeline.params.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.defaults import InpaintSettings
from engine.errors import AttuneError
from engine.model.family import BUILTIN_DEFAULTS, ModelDefaults, model_defaults
from engine.model.onnx_files import TORCH_MISSING
from engine.model.preflight import model_max_side
from engine.pipeline.backend import BACKENDS, Backend, Exporter, onnx_failure
from engine.pipeline.params import (MAX_SIDE, GenerateParams, InpaintParams, Result, check_choice, unset_values,
                                    validate_generate, validate_inpaint)
from engine.protocols import Components, Progress, Runner
from engine.sampling.layout import (DEFAULT_LAYOUT, LAYOUT_MODES, PORTABLE_LAYOUTS, LocalBlend, RunSpec, Trajectory,
                                    changed_tokens, check_layout, uses_blend, uses_injection)
from engine.sampling.loop import (Conditioning, SampleOutput, Sampling, StepHooks, inpaint as sample_inpaint,
                                  prepare_conditioning, text_to_image)
from engine.words.prompt import SYNTAXES, WordTokens, tokenize_prompt
from engine.words.weights import check_effective_weights, token_weight_vector, validate_weights

# Recent runs kept for layout-keeping reweights (latents + token maps per step): one per participant of a batched
# 8-person session, twice over, so a reweight finds its parent instead of re-running it; bounded in bytes for large models.
TRAJECTORY_CACHE = 16
TRAJECTORY_CACHE_BYTES = 512 * 2**20
MAX_EDIT_DEPTH = 32


@dataclass
class Encoded:
    """The text side of one run: the prompt's words, the checked parameters, the conditioning."""

    word_tokens: WordTokens
    params: GenerateParams  # with the validated weights
    cond: Conditioning
    seconds: float

    @property
    def sampling(self) -> Sampling:
        p = self.params
        return Sampling(p.seed, p.steps, p.guidance, p.scheduler)


@dataclass
class TextJob:
    """Text to image (a plain run, or an edit of a parent run that keeps its layout)."""

    spec: RunSpec
    progress: Progress = None


@dataclass
class InpaintJob:
    encoded: Encoded
    params: InpaintParams
    mask: np.ndarray
    progress: Progress = None


@dataclass
class Ran:
    """A job's image, and where it ran."""

    out: SampleOutput
    encoded: Encoded
    backend: str
    reason: str | None


# An image's freed working memory goes back to the OS once the engine has been idle this long: off the path of the
# click that made the image (the shrinking runs and malloc_trim took 17 ms of a 0.3 s image), and skipped while
# calls follow each other.
RELEASE_IDLE_S = 0.3


class Attune:
    """The engine: one model, one runner. generate()/reweight()/inpaint() take turns (or share batched UNet calls),
    so it is safe from threads. `export`: how to export a model's ONNX graphs on first use (export.onnx's
    ensure_exported; the app and the CLI pass it); without it a model with no graphs runs on PyTorch (auto)."""

    def __init__(self, model: str | Path | None = None, backend: str = "auto", device: str = "cpu", dtype=None,
                 components: Components | None = None, batch_window_ms: float | None = None,
                 export: Exporter | None = None) -> None:
        self.backend = Backend(model, check_choice("backend", backend, BACKENDS), device, dtype, components, export)
        self.components: Components = self.backend.components
        self.runner: Runner = self.backend.runner
        self.device = self.backend.device
        self.fallback_reason: str | None = self.backend.fallback_reason
        self.backend_name: str = self.runner.name
        self.max_side = model_max_side(self.components, MAX_SIDE)
        # What a call's left-out values take (engine.model.family): the folder's size, scheduler, guidance, steps.
        path = self.components.path
        self.model_defaults: ModelDefaults = model_defaults(path) if path is not None else BUILTIN_DEFAULTS
        self._trajectories: OrderedDict[str, Trajectory] = OrderedDict()  # recent runs, for layout-keeping edits
        self._lock = threading.Lock()  # one call at a time (without batching)
        self._count_lock = threading.Lock()
        self._waiting = 0
        self._release_timer: threading.Timer | None = None
        self._to_release: dict[int, object] = {}  # runners and components whose memory goes back when idle
        self.batcher = None  # engine.runners.batching: concurrent calls share UNet calls instead of taking turns
        self._inpaint_batcher = None  # the same for the inpainting UNet's calls
        self.batching_reason: str | None = None
        self._start_batching(batch_window_ms)

    # ================================================================== the calls
    def generate(self, params: GenerateParams, progress: Progress = None) -> Result:
        # 1. Check the parameters (values left out take the model's defaults)
        p = self._validate(params)
        # 2. Encode, denoise, decode: on this engine's backend, in turn
        with self._turn():
            result = self._text_to_image(TextJob(RunSpec(p), progress))
        return self._note_defaults(result, params)

    def reweight(self, parent, weights: dict[str, float], weight_mode: str = "score", layout: str = DEFAULT_LAYOUT,
                 progress: Progress = None) -> Result:
        """A reweight as an edit of `parent` (GenerateParams of a plain run, or a RunSpec): same seed and
        parameters, new word weights and method. layout "blend" keeps everything outside the reweighted words'
        attention as in the parent (engine.sampling.layout); "free" is the plain re-run; "inject" and "blend+inject"
        also reuse the parent's attention (engine.attention.injection; unbatched PyTorch only). result.info["layout"]
        says which."""
        # 1. Check the layout against this engine
        layout = check_layout(layout)
        if layout not in self.layouts:
            raise AttuneError(f"Layout '{layout}' (attention injection) runs on the unbatched PyTorch backend only; "
                              f"this engine runs {self.runner.name}{' batched' if self.batcher else ''}: use blend.")
        # 2. Check the parent's parameters and the edit's
        spec = parent if isinstance(parent, RunSpec) else RunSpec(parent)
        base = self._validate(spec.params)
        spec = RunSpec(base, check_layout(spec.layout), spec.parent)
        edit = self._validate(dataclasses.replace(base, weights=weights, weight_mode=weight_mode))
        # 3. Encode, denoise (keeping the parent's layout), decode, in turn
        with self._turn():
            return self._text_to_image(TextJob(RunSpec(edit, layout, spec), progress))

    def inpaint(self, params: InpaintParams, progress: Progress = None) -> Result:
        # 1. Check the parameters and the mask
        p, mask = validate_inpaint(params, self.components.vae_scale_factor, self.max_side, self.model_defaults)
        with self._turn():
            t0 = time.perf_counter()
            # 2. Encode the inpaint prompt
            job = InpaintJob(self._encode(p.base), p, mask, progress)
            # 3. Denoise and paste back: with the model's 9-channel inpainting UNet when it ships one, else the base
            #    UNet (blending the known region back each step)
            ran = self._on_inpaint_unet(job)
            dedicated = ran is not None
            if ran is None:
                ran = self._on_backend(job)
            reason = ran.reason
            skipped = None if dedicated else self.backend.inpaint_unet_skipped()
            if skipped is not None:
                reason = f"{reason} {skipped}" if reason else skipped
            # 4. The result
            ran.out.info["unet"] = "inpaint-9ch" if dedicated else "base"
            timings = {"encode": job.encoded.seconds, **ran.out.timings, "total": time.perf_counter() - t0}
            result = Result(ran.out.image, ran.out.maps, job.encoded.word_tokens, ran.backend, self.device, reason,
                            timings, job.encoded.params, ran.out.info)
        return self._note_defaults(result, params.base, image_sized=True)

    def _validate(self, params: GenerateParams) -> GenerateParams:
        return validate_generate(params, self.components.vae_scale_factor, self.max_side, self.model_defaults)

    def _note_defaults(self, result: Result, given: GenerateParams, image_sized: bool = False) -> Result:
        """result.info["defaults"]: which values came from the model's defaults, and from where (the Version's record).
        image_sized: an inpaint, whose size is its image's."""
        filled = [name for name in unset_values(given) if not (image_sized and name in ("width", "height"))]
        if filled:
            result.info["defaults"] = self.model_defaults.describe(filled)
        return result

    # ================================================================== facts
    @property
    def layouts(self) -> tuple[str, ...]:
        """The layout modes this engine can run: attention injection needs the unbatched PyTorch runner."""
        return LAYOUT_MODES if self.runner.name == "torch" and self.batcher is None else PORTABLE_LAYOUTS

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
        return tokenize_prompt(self.components.tokenizer, prompt, check_choice("prompt syntax", syntax, SYNTAXES))

    def close(self) -> None:
        with self._count_lock:
            if self._release_timer is not None:
                self._release_timer.cancel()
        for batcher in (self.batcher, self._inpaint_batcher):
            if batcher is not None:
                batcher.close()
        self.backend.close()

    # ================================================================== text to image
    def _text_to_image(self, job: TextJob) -> Result:
        """Run a text job on this engine's runner (ONNX falls back to PyTorch per call). Caller holds a turn."""
        t0 = time.perf_counter()
        ran = self._on_backend(job)
        info = dict(ran.out.info)
        if job.spec.parent is not None:
            info["layout"] = job.spec.layout
        timings = {"encode": ran.encoded.seconds, **ran.out.timings, "total": time.perf_counter() - t0}
        return Result(ran.out.image, ran.out.maps, ran.encoded.word_tokens, ran.backend, self.device, ran.reason,
                      timings, ran.encoded.params, info)

    def _sample_spec(self, comps: Components, runner: Runner, spec: RunSpec, progress: Progress = None,
                     depth: int = 0, record_attention: bool = False) -> tuple[SampleOutput, Encoded]:
        """Sample `spec` on `runner`, recording its trajectory; an edit first recomputes its parent's trajectory
        when it is not cached (recursively, on the same runner). record_attention: also record the run's attention
        (engine.attention.injection) for an `inject` edit of it."""
        # 1. Encode the prompt with its word weights
        encoded = self._encode(spec.params)
        p = encoded.params
        # 2. An edit keeps its parent's layout: LocalBlend and/or attention injection from the parent's trajectory
        hooks = StepHooks(progress=progress, record=Trajectory())
        if spec.layout != "free" and spec.parent is not None:
            hooks.local_blend, hooks.injection = self._layout_hooks(comps, runner, spec, encoded, depth,
                                                                    record_attention)
        if record_attention and hooks.injection is None:
            from engine.attention.injection import AttentionInjection

            hooks.injection = AttentionInjection(p.steps, record=True)
        # 3. Denoise and decode
        with self._injecting(runner, hooks.injection):
            out = text_to_image(comps, runner, encoded.cond, encoded.sampling, width=p.width, height=p.height,
                                hooks=hooks)
        if record_attention:
            hooks.record.attention = hooks.injection.record
        # 4. Remember the trajectory, for edits of this run
        self._remember_trajectory(spec, runner.name, hooks.record)
        return out, encoded

    def _layout_hooks(self, comps: Components, runner: Runner, spec: RunSpec, encoded: Encoded, depth: int,
                      record_attention: bool):
        """(LocalBlend or None, AttentionInjection or None) for an edit of spec.parent."""
        inject = uses_injection(spec.layout)
        tokens = self._blend_tokens(spec, encoded)
        parent_traj = self._trajectory(spec.parent, runner.name)
        if inject and parent_traj is not None:
            from engine.attention.injection import steps_needed

            if parent_traj.attention is None or not parent_traj.attention.covers(*steps_needed(encoded.params.steps)):
                parent_traj = None  # cached without (enough) attention: run the parent again, recording it
        if parent_traj is None:
            if depth >= MAX_EDIT_DEPTH:
                raise AttuneError("This chain of edits is too long to recompute its layout; use layout free.")
            self._sample_spec(comps, runner, spec.parent, None, depth + 1, record_attention=inject)
            parent_traj = self._trajectory(spec.parent, runner.name)
        local_blend = LocalBlend(parent_traj, tokens) if uses_blend(spec.layout) else None
        injection = None
        if inject:
            from engine.attention.injection import AttentionInjection

            injection = AttentionInjection(encoded.params.steps, source=parent_traj.attention, keep_tokens=tokens,
                                           record=record_attention)
        return local_blend, injection

    @staticmethod
    def _injecting(runner: Runner, injection):
        if injection is None:
            return nullcontext()
        from engine.attention.injection import injecting

        return injecting(runner, injection)

    def _blend_tokens(self, spec: RunSpec, encoded: Encoded) -> list[int]:
        """Token positions the edit reweights relative to its parent (they make the LocalBlend mask)."""
        parent_params, p2, word_tokens = spec.parent.params, encoded.params, encoded.word_tokens
        keep = {f.name for f in dataclasses.fields(GenerateParams)} - {"weights", "weight_mode"}
        differs = [k for k in sorted(keep) if getattr(parent_params, k) != getattr(p2, k)]
        if differs:
            raise AttuneError(f"A layout-keeping reweight needs the parent's settings; these differ: {', '.join(differs)}.")
        parent_w = token_weight_vector(word_tokens, validate_weights(parent_params.weights, word_tokens),
                                       parent_params.weight_mode, self.model_defaults.slider_knots,
                                       self.model_defaults.slider_gains)
        if parent_params.weight_mode != p2.weight_mode:  # another method: every weighted word is part of the edit
            return [i for i, (a, b) in enumerate(zip(parent_w, encoded.cond.token_weights)) if a != 1 or b != 1]
        return changed_tokens(parent_w, encoded.cond.token_weights)

    def _trajectory(self, spec: RunSpec, backend: str) -> Trajectory | None:
        """The cached trajectory of a run, or None."""
        key = spec.key(backend)
        if key in self._trajectories:
            self._trajectories.move_to_end(key)
            return self._trajectories[key]
        return None

    def _remember_trajectory(self, spec: RunSpec, backend: str, trajectory: Trajectory) -> None:
        if trajectory.attention is not None:  # attention records are large: keep the newest only
            for other in self._trajectories.values():
                other.attention = None
        self._trajectories[spec.key(backend)] = trajectory
        while len(self._trajectories) > 1 and (
                len(self._trajectories) > TRAJECTORY_CACHE
                or sum(t.nbytes for t in self._trajectories.values()) > TRAJECTORY_CACHE_BYTES):
            self._trajectories.popitem(last=False)

    # ================================================================== shared steps
    def _encode(self, p: GenerateParams) -> Encoded:
        """The prompt and the negative prompt, tokenized and encoded with their word weights (checked)."""
        t0 = time.perf_counter()
        comps = self.components
        word_tokens = tokenize_prompt(comps.tokenizer, p.prompt, p.syntax)
        if not word_tokens.words:
            raise AttuneError("The prompt has no words.")
        weights = validate_weights(p.weights, word_tokens)
        check_effective_weights(word_tokens, weights)
        negative = tokenize_prompt(comps.tokenizer, p.negative_prompt, p.syntax)
        check_effective_weights(negative, None, "negative prompt")
        cond = prepare_conditioning(comps, word_tokens, negative, guidance=p.guidance, weights=weights,
                                    weight_mode=p.weight_mode, cond_only=p.cond_only,
                                    slider_knots=self.model_defaults.slider_knots,
                                    slider_gains=self.model_defaults.slider_gains)
        return Encoded(word_tokens, dataclasses.replace(p, weights=weights), cond, time.perf_counter() - t0)

    def _sample_on(self, job: TextJob | InpaintJob, comps: Components, runner: Runner) -> tuple[SampleOutput, Encoded]:
        if isinstance(job, TextJob):
            return self._sample_spec(comps, runner, job.spec, job.progress)
        p = job.params
        settings = InpaintSettings(p.mask_blur, p.only_masked, p.padding, p.auto_crop)
        out = sample_inpaint(comps, runner, job.encoded.cond, job.encoded.sampling, image=p.image, mask=job.mask,
                             settings=settings, progress=job.progress)
        return out, job.encoded

    # ================================================================== where a job runs
    def _on_backend(self, job: TextJob | InpaintJob) -> Ran:
        """The job on this engine's components and runner. An ONNX failure reruns the whole job on PyTorch (never a
        mixed image) and records why; only with backend "auto" (an explicit "onnx" raises: Backend.check_fallback)."""
        runner = self.batcher.runner if self.batcher is not None else self.runner
        if self.runner.name != "onnx":
            return Ran(*self._sample_on(job, self.components, runner), self.backend_name, self.fallback_reason)
        try:
            ran = Ran(*self._sample_on(job, self.components, runner), self.backend_name, self.fallback_reason)
            ran.out.info["unet_graph"] = self.runner.graph_sha256  # the Version's record of which graph ran
            return ran
        except Exception as e:
            failure = onnx_failure(e)  # ONNX Runtime's own failure, or what else failed during the ONNX call
        finally:  # the image is done: its freed working memory goes back
            self._release_when_idle(self.runner, self.components)
        with self.backend.fallback_lock:  # batching runs requests side by side: the fallback takes one at a time
            runner = self.backend.fallback_runner(failure)
            return Ran(*self._sample_on(job, self.backend.torch, runner), runner.name,
                       f"{failure}; this call ran on PyTorch.")

    def _on_inpaint_unet(self, job: InpaintJob) -> Ran | None:
        """The job on the model's 9-channel inpainting UNet, or None when the model ships none (or only PyTorch could
        run it, and PyTorch is missing: Backend.inpaint_unet_skipped). On the ONNX backend it runs the export's
        unet_inpaint graph when there is one, else PyTorch; the reason says so when that is not the engine's backend."""
        if self.runner.name == "onnx" and self.backend.inpaint_unet_graph():
            return self._on_inpaint_unet_onnx(job)
        return self._on_inpaint_unet_torch(job, None)

    def _on_inpaint_unet_torch(self, job: InpaintJob, failure: str | None) -> Ran | None:
        """The inpainting UNet on PyTorch. failure: why its ONNX graph could not run (this call then runs unbatched)."""
        comps = self.backend.inpaint_torch_components()
        if comps is None:
            if failure is not None:
                raise AttuneError(f"{failure}, and the PyTorch fallback cannot run: {TORCH_MISSING}.")
            return None
        from engine.runners.torch import TorchUNetRunner

        if failure is not None:
            with self.backend.fallback_lock:  # one call at a time on the fallback runner
                if self.backend.inpaint_torch_runner is None:
                    self.backend.inpaint_torch_runner = TorchUNetRunner(comps.inpaint_unet, self.device)
                runner = self.backend.inpaint_torch_runner
                return Ran(*self._sample_on(job, comps, runner), runner.name, f"{failure}; this call ran on PyTorch.")
        with self._count_lock:  # batching runs requests side by side: one runner (one processor install) only
            if self.backend.inpaint_runner is None:
                self.backend.inpaint_runner = TorchUNetRunner(comps.inpaint_unet, self.device)
        runner = self.backend.inpaint_runner
        reason = self.fallback_reason
        if self.runner.name != runner.name:
            reason = (f"The model's inpainting UNet has no {self.runner.name} graph; inpainting ran on PyTorch "
                      "with it.")
        return Ran(*self._sample_inpaint_unet(job, comps, runner), runner.name, reason)

    def _on_inpaint_unet_onnx(self, job: InpaintJob) -> Ran | None:
        """The inpainting UNet's graph (unet_inpaint/ of the engine's export) on ONNX Runtime. An ONNX failure reruns
        the whole call on the PyTorch inpainting UNet (never a mixed image) and records why, as _on_backend does."""
        try:
            with self._count_lock:  # one runner, made on first use
                if self.backend.inpaint_runner is None:
                    from engine.runners.onnx import OnnxUNetRunner

                    runner = OnnxUNetRunner(self.components.export_dir, device=self.device, subfolder="unet_inpaint")
                    runner.warm_up(maps=True)  # a damaged graph fails here
                    self.backend.inpaint_runner = runner
            runner = self.backend.inpaint_runner
            ran = Ran(*self._sample_inpaint_unet(job, self.components, runner), runner.name, self.fallback_reason)
            ran.out.info["unet_graph"] = runner.graph_sha256
            return ran
        except Exception as e:
            failure = onnx_failure(e)
        finally:
            self._release_when_idle(self.backend.inpaint_runner, self.components)
        self.backend.check_fallback(failure)
        return self._on_inpaint_unet_torch(job, failure)

    def _sample_inpaint_unet(self, job: InpaintJob, comps: Components, runner: Runner) -> tuple[SampleOutput, Encoded]:
        if self.batcher is None:
            return self._sample_on(job, comps, runner)
        # no engine lock when batching: this UNet's calls go through a batcher of their own
        batcher = self._inpaint_batcher_for()
        with self.batcher.elsewhere(), batcher.request():
            return self._sample_on(job, comps, batcher.runner)

    # ================================================================== taking turns
    def _release_when_idle(self, *parts) -> None:
        """An image is done: hand its freed working memory back to the OS once the engine has been idle for
        RELEASE_IDLE_S (a timer). With batching, at once, unless other requests' calls are running."""
        if self.batcher is not None:
            if self.batcher.active <= 1:
                self.backend.release_memory(*parts)
            return
        with self._count_lock:
            self._to_release.update((id(part), part) for part in parts if part is not None)
            if self._release_timer is not None:
                self._release_timer.cancel()
            self._release_timer = threading.Timer(RELEASE_IDLE_S, self._release_now_if_idle)
            self._release_timer.daemon = True
            self._release_timer.start()

    def _release_now_if_idle(self) -> None:
        if self._waiting or not self._lock.acquire(blocking=False):
            return  # a call is running or waiting: the release is scheduled again when it ends
        try:
            with self._count_lock:
                parts, self._to_release = list(self._to_release.values()), {}
            self.backend.release_memory(*parts)
        finally:
            self._lock.release()

    @contextmanager
    def _turn(self):
        """One call at a time; with batching, side by side (the batcher stacks the concurrent calls' UNet steps)."""
        if self.batcher is not None:
            with self.batcher.request():
                yield
            return
        with self._count_lock:
            self._waiting += 1
        acquired = False
        try:
            self._lock.acquire()
            acquired = True
            with self._count_lock:
                self._waiting -= 1
            yield
        finally:
            if acquired:
                self._lock.release()
            else:  # interrupted while waiting
                with self._count_lock:
                    self._waiting -= 1

    def _start_batching(self, window_ms: float | None) -> None:
        from engine.runners.batching import BATCHABLE_RUNNERS, Batcher, share_cores, window_from_env

        window_ms = window_from_env() if window_ms is None else window_ms
        if window_ms is None:
            return
        if self.runner.name not in BATCHABLE_RUNNERS:
            self.batching_reason = f"the {self.runner.name} backend is not batched; calls take turns."
            return
        self.batcher = Batcher(self.runner, window_ms=window_ms)
        if self.batcher.lanes > 1:  # requests decode side by side too: their graphs get a lane's share of cores
            share_cores(self.components, self.batcher.lanes)
        if not self.batcher.stacking:
            why = ("this ONNX export's maps are not row-exact (exported before maps_row_exact; export it again)"
                   if self.runner.name == "onnx" else "MKL_CBWR not in effect")
            self.batching_reason = f"batched rows would not be bit-exact here ({why}); calls run one by one."

    def _inpaint_batcher_for(self):
        """The batcher of the 9-channel inpainting UNet's calls (made on first use, same window as the engine's)."""
        with self._count_lock:
            if self._inpaint_batcher is None:
                from engine.runners.batching import Batcher

                self._inpaint_batcher = Batcher(self.backend.inpaint_runner, window_ms=self.batcher.window_s * 1000.0)
            return self._inpaint_batcher
