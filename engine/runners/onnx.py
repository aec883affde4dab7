"""ONNX Runtime UNet runner: same interface as the PyTorch runner, graphs from export/onnx.py.

- Two UNet graphs share one weights file: `unet/model.onnx` (noise only) for calls without maps and
  `unet/model_maps.onnx` (noise + head-averaged maps of the last `cond_rows` rows). Sessions are made on first use.
- SDXL: the UNet graphs also take `text_embeds` and `time_ids` (the manifest's "added_inputs"), fed from `added`.
- Token scales are graph inputs (`key_scale` -> 'score', `value_scale` -> 'prob'); None is fed as ones, which is
  exact (x * 1.0 == x).
- Memory ("lean", the default; measured by bench.app (RSS)): no memory pattern (ORT would keep a
  planned block per input shape beside its arena), and `release_memory()` shrinks the arena once an image is done,
  so its working set goes back to the OS between images. "arena" ($ATTUNE_ORT_MEMORY=arena) keeps ORT's defaults.
- Providers: CUDAExecutionProvider with IO binding when onnxruntime-gpu is installed and the device is CUDA,
  else CPUExecutionProvider. ORT's spinning worker threads are turned off: on a shared host (Community Cloud)
  spinning threads steal the cores other work needs.
- CFG lanes (CPU, 2+ intra-op threads): a two-row call ([uncond, cond]) can run as two one-row calls at once, each
  on its own core. One ORT call of the built-in UNet runs ~1,200 nodes, most of them small, and each parallel one
  wakes the other thread and waits for it; two lanes do not wait for each other (~17% less wall and CPU time per
  image on a free 2-core CPU: bench/results/engine_ab_lanes_always_fifo.json). The lanes share a session with one
  intra-op thread: on the multi-threaded session their nodes still queued for its one thread pool (a UNet call
  24-26 ms as lanes there, 18-20 ms on the one-thread session: bench/results/engine_ab_lane_session.json). On an
  oversubscribed host a lane waits to be scheduled and whole calls were faster, so in auto mode the runner times both
  ways and takes the faster (`LaneChooser`). Same bits either way: MLAS gives a row the same result alone as in a
  batch of two, and on one thread as on several (it splits outputs, not sums, between threads); a probe checks this
  when the runner warms up (`lanes_exact`). $ATTUNE_ORT_CFG_LANES: 0 = never, 1 = always, auto (default).
- Precision: an export made with `--dtype fp16` also holds fp16 UNet graphs (fp32 inputs and outputs: the noise and
  maps stay fp32). They run only with CUDA; on the CPU the fp32 graphs run (`precision` overrides, for tests).
- No torch: inputs and outputs are numpy arrays. Torch tensors are accepted too (the PyTorch fallback, tests);
  then the outputs are torch tensors as well.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from engine.errors import AttuneError
from engine.model.onnx_components import OnnxComponents
from engine.model.onnx_files import TEXT_MASK_INPUT
from engine.model.ort_sessions import (MEMORY_MODES, add_shared_weights, choose_providers, default_memory,
                                       default_threads, new_session, onnxruntime_available, session_options,
                                       shared_weight_files, trim_heap)
from engine.protocols import AddedConditioning


LANES_ENV = "ATTUNE_ORT_CFG_LANES"  # "0": two-row calls run whole; "1": always as lanes; "auto": the faster
LANE_MODES = ("auto", "0", "1")
LANE_EXPLORE = 8  # auto: the way not chosen is tried again after 8 calls of that shape, then after twice as many
LANE_EXPLORE_MAX = 256  # each time it loses again (a loser much slower, as lanes on a busy host, costs little)
LANE_WINDOW = 5  # auto: each way's time is the best of its last 5 calls of that shape
PROBE_HW = 8  # the lane probe's latent side: small, so the probe costs a few ms even on a full-size SD UNet


def lane_mode() -> str:
    """$ATTUNE_ORT_CFG_LANES: unset or empty -> "auto"; "0", "1" or "auto". AttuneError otherwise."""
    text = os.environ.get(LANES_ENV, "").strip().lower() or "auto"
    if text not in LANE_MODES:
        raise AttuneError(f"{LANES_ENV} must be 0 (two-row calls run whole), 1 (always as lanes) or auto, "
                          f"not '{text}'.")
    return text


class LaneChooser:
    """auto mode: per call shape, the way (lanes or whole) whose recent calls were faster. The other way is tried
    again after LANE_EXPLORE calls, and after twice as many each time it is still slower (at most
    LANE_EXPLORE_MAX), so a way that loses badly costs little. Both give the same bits: the choice changes only time.
    Each way's time is its best of the last LANE_WINDOW calls: other work on the host only ever adds time, so a
    median let a few lucky whole calls win (in the app it picked whole for 32% of the calls, the best-of rule for 9%:
    bench/results/lane_chooser_ab.json)."""

    def __init__(self) -> None:
        self.times: dict[tuple, dict[bool, deque]] = {}
        self.until_explore: dict[tuple, int] = {}
        self.interval: dict[tuple, int] = {}
        self.exploring: dict[tuple, bool] = {}

    def _faster(self, key: tuple) -> bool:
        seen = self.times[key]
        return min(seen[True]) <= min(seen[False])

    def lanes_now(self, key: tuple) -> bool:
        seen = self.times.setdefault(key, {True: deque(maxlen=LANE_WINDOW), False: deque(maxlen=LANE_WINDOW)})
        self.exploring[key] = False
        if not seen[True] or not seen[False]:  # try each way first
            return not seen[True]
        left = self.until_explore.get(key, LANE_EXPLORE) - 1
        self.until_explore[key] = left
        if left <= 0:
            self.exploring[key] = True
            return not self._faster(key)
        return self._faster(key)

    def record(self, key: tuple, lanes: bool, seconds: float) -> None:
        seen = self.times[key]
        if self.exploring.get(key):
            lost = seen[not lanes] and seconds > min(seen[not lanes])
            interval = self.interval.get(key, LANE_EXPLORE)
            self.interval[key] = min(2 * interval, LANE_EXPLORE_MAX) if lost else LANE_EXPLORE
            self.until_explore[key] = self.interval[key]
        seen[lanes].append(seconds)


def _is_torch(t) -> bool:
    return hasattr(t, "detach") and hasattr(t, "device")  # optional third-party: a torch tensor, torch not imported


def _numpy(t) -> np.ndarray:
    """float32 C-contiguous numpy from a numpy array, a number or a torch tensor (any device)."""
    if _is_torch(t):
        t = t.detach().float().cpu().numpy()
    return np.ascontiguousarray(t, dtype=np.float32)


class OnnxUNetRunner:
    """Runs the exported UNet. __call__ has the Runner signature (engine.protocols): numpy arrays in and out (or torch in and out)."""

    name = "onnx"

    def __init__(
        self,
        export_dir: str | Path,
        *,
        device: str = "cpu",
        threads: int | None = None,
        optimization: str = "all",
        spinning: bool = False,
        memory: str | None = None,
        providers: list[str] | None = None,
        subfolder: str = "unet",
        precision: str | None = None,
    ) -> None:
        """subfolder: "unet", or "unet_inpaint" for a model's extra 9-channel inpainting UNet (its manifest fields
        sit under manifest["unet_inpaint"]). precision: "fp32" or "fp16" graphs; None: fp16 when the export has
        them and the runner runs on CUDA, else fp32."""
        if not onnxruntime_available():
            raise AttuneError(
                "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu on CUDA hosts)."
            )
        from engine.model.onnx_files import read_manifest

        memory = memory or default_memory()
        if memory not in MEMORY_MODES:
            raise AttuneError(f"Unknown ONNX memory mode '{memory}': choose one of {', '.join(MEMORY_MODES)}.")
        self.export_dir = Path(export_dir)
        self.manifest = read_manifest(self.export_dir)
        if subfolder not in self.manifest.get("parts", []):
            raise AttuneError(f"The ONNX export in {self.export_dir} has no {subfolder}.")
        self.subfolder = subfolder
        if subfolder != "unet":  # its own fields; the shared ones (input and output names) stay at the top level
            self.manifest = {**self.manifest, **self.manifest[subfolder]}
        self.device = str(device)
        self.providers = providers or choose_providers(self.device)
        self.use_cuda = self.providers[0] == "CUDAExecutionProvider"
        has_fp16 = self.manifest.get("dtype") == "fp16"
        if precision is None:
            precision = "fp16" if has_fp16 and self.use_cuda else "fp32"
        if precision not in ("fp32", "fp16"):
            raise AttuneError(f"Unknown ONNX precision '{precision}': choose fp32 or fp16.")
        if precision == "fp16" and not has_fp16:
            raise AttuneError(f"The ONNX export in {self.export_dir} has no fp16 graphs (export with --dtype fp16).")
        self.precision = precision
        self.options = dict(threads=threads, optimization=optimization, spinning=spinning, memory=memory)
        self.in_channels = int(self.manifest["in_channels"])
        self.out_channels = int(self.manifest["out_channels"])
        self.layer_names: list[str] = list(self.manifest["map_layers"])
        self.added_widths: dict[str, int] = dict(self.manifest.get("added_inputs") or {})  # SDXL: name -> width
        # Graphs whose maps are a MatMul head mean give each row the same bits whatever the row count (on CPU; CUDA
        # kernels are not checked): engine.runners.batching may stack requests on them.
        self.row_exact = bool(self.manifest.get("maps_row_exact")) and not self.use_cuda
        self._sessions: dict[bool, object] = {}
        self._lane_sessions: dict[bool, object] = {}  # one intra-op thread: each lane runs on its caller's core
        self.lane_chooser = LaneChooser()
        # runs the unconditional lane beside the caller's (its thread starts at the first lane)
        self._lane_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attune-ort-lane")
        self.lanes_exact: bool | None = None  # None: not probed yet
        self._ones: dict[tuple[int, int], np.ndarray] = {}

    # sessions ----------------------------------------------------------------------------------------------
    def graph_path(self, maps: bool) -> Path:
        """The maps graph (maps=True) or the noise-only graph, in this runner's precision."""
        name = ("model_maps" if maps else "model") + ("_fp16" if self.precision == "fp16" else "")
        return self.export_dir / self.subfolder / f"{name}.onnx"

    def session(self, maps: bool):
        """The ORT session of the maps graph (maps=True) or the noise-only graph, created on first use."""
        return self._open(self._sessions, maps, self.options)

    def lane_session(self, maps: bool):
        """The one-thread session the CFG lanes share (ORT runs concurrent calls of one session side by side);
        $ATTUNE_ORT_LANE_SESSION=shared: the lanes run on the multi-threaded session instead (for A/B runs)."""
        if os.environ.get("ATTUNE_ORT_LANE_SESSION", "").strip().lower() == "shared":
            return self.session(maps)
        return self._open(self._lane_sessions, maps, {**self.options, "threads": 1})

    def _open(self, sessions: dict, maps: bool, options: dict):
        if maps not in sessions:
            path = self.graph_path(maps)
            try:
                sessions[maps] = new_session(path, options, self.providers)
            except Exception as e:
                first = (str(e).strip().splitlines() or [""])[0]
                raise AttuneError(f"ONNX Runtime could not load {path}: {first}") from e
        return sessions[maps]

    @functools.cached_property
    def graph_sha256(self) -> str:
        """The identity of this runner's UNet graphs (first 16 hex digits of a sha256 over both graph files), which
        a Version records: a re-shipped or re-exported graph can change an image at the same weights."""
        from engine.model.ort_cache import file_sha256

        digest = hashlib.sha256()
        for maps in (True, False):
            path = self.graph_path(maps)
            digest.update(f"{path.name}:{file_sha256(path) if path.is_file() else ''}\n".encode())
        return digest.hexdigest()[:16]

    def warm_up(self, maps: bool = True) -> None:
        self.session(maps)
        if self._lanes_possible():
            self.probe_lanes()

    # CFG lanes -----------------------------------------------------------------------------------------------
    def _lanes_possible(self) -> bool:
        return not self.use_cuda and int(self.options["threads"] or default_threads()) >= 2 and lane_mode() != "0"

    def probe_lanes(self) -> bool:
        """Whether a two-row call split into lanes gives the same bits as whole (noise and maps), on seeded random
        inputs at a small latent size; lanes run only where it does. Remembered in `lanes_exact`."""
        if self.lanes_exact is None:
            rng = np.random.default_rng(0)
            dim = int(self.manifest.get("cross_attention_dim") or 0)
            self.lanes_exact = False
            if dim:
                sample = rng.standard_normal((2, self.in_channels, PROBE_HW, PROBE_HW)).astype(np.float32)
                embeddings = rng.standard_normal((2, 8, dim)).astype(np.float32)
                scale = rng.uniform(0.5, 1.5, (2, 8)).astype(np.float32)
                timestep = np.array([501.0], dtype=np.float32)
                added = self._zero_added(2)
                whole = self._run_whole(sample, timestep, embeddings, scale, None, 1, added)  # a bad graph raises here
                try:
                    split = self._run_lanes(sample, timestep, embeddings, scale, None, 1, added)
                    self.lanes_exact = all(np.array_equal(a, b) for a, b in zip(whole, split))
                except Exception:  # a graph that fails to run fails the first image, as without lanes
                    self.lanes_exact = False
        return self.lanes_exact

    def _lanes_allowed(self, sample) -> bool:
        return int(sample.shape[0]) == 2 and not _is_torch(sample) and self._lanes_possible() and self.probe_lanes()

    def _zero_added(self, batch: int) -> AddedConditioning | None:
        """Zeros for SDXL's added inputs (the lane probe's and the arena shrink's calls); None for other graphs."""
        if not self.added_widths:
            return None
        return AddedConditioning(*(np.zeros((batch, self.added_widths[name]), dtype=np.float32)
                                   for name in ("text_embeds", "time_ids")))

    def _run_lanes(self, sample, timestep, encoder_hidden_states, key_scale, value_scale, rows: int,
                   added: AddedConditioning | None = None) -> list:
        """Row 0 and row 1 as two one-row calls at once on the lane session (the maps graph when any maps are wanted:
        a row whose maps are not wanted drops them); the outputs as the two-row call gives them."""
        sample, embeddings = _numpy(sample), _numpy(encoder_hidden_states)
        t = _numpy(timestep).reshape(-1)
        t = np.full((2,), t[0], dtype=np.float32) if t.size == 1 else t
        scales = [None if s is None else _numpy(s) for s in (key_scale, value_scale)]
        maps = rows > 0
        session = self.lane_session(maps)
        names = [self.manifest["noise_output"], *(self.layer_names if maps else [])]

        def lane(row: int) -> list:
            part = slice(row, row + 1)
            row_scales = (None if s is None else s[part] for s in scales)
            row_added = None if added is None else AddedConditioning(
                _numpy(added.text_embeds)[part], _numpy(added.time_ids)[part])
            feed = self._feed(sample[part], t[part], embeddings[part], *row_scales, 1 if maps else 0, row_added)
            return session.run(names, feed)

        pending = self._lane_pool.submit(lane, 0)
        second = lane(1)
        # Not started yet (a busy host has not scheduled the lane's thread): run it here rather than wait for it
        first = lane(0) if pending.cancel() else pending.result()
        noise = np.concatenate([first[0], second[0]], axis=0)
        if rows == 2:  # the maps of both rows, in row order
            return [noise, *(np.concatenate(pair, axis=0) for pair in zip(first[1:], second[1:]))]
        return [noise, *second[1:]]

    def _run_cpu(self, sample, timestep, encoder_hidden_states, key_scale, value_scale, rows: int,
                 added: AddedConditioning | None = None) -> list:
        """A call on the CPU: as lanes or whole (LaneChooser in auto mode), timed for the chooser."""
        args = (sample, timestep, encoder_hidden_states, key_scale, value_scale, rows, added)
        if not self._lanes_allowed(sample):
            return self._run_whole(*args)
        if lane_mode() == "1":
            return self._run_lanes(*args)
        key = (tuple(sample.shape), int(encoder_hidden_states.shape[1]), rows)
        lanes = self.lane_chooser.lanes_now(key)
        start = time.perf_counter()
        outputs = (self._run_lanes if lanes else self._run_whole)(*args)
        self.lane_chooser.record(key, lanes, time.perf_counter() - start)
        return outputs

    def _run_whole(self, sample, timestep, encoder_hidden_states, key_scale, value_scale, rows: int,
                   added: AddedConditioning | None = None) -> list:
        feed = self._feed(sample, timestep, encoder_hidden_states, key_scale, value_scale, rows, added)
        names = [self.manifest["noise_output"], *(self.layer_names if rows else [])]
        return self.session(rows > 0).run(names, feed)

    def set_threads(self, threads: int) -> None:
        """Intra-op threads of this runner's sessions from now on; the open ones are made again (from the cache of
        optimised graphs). Rows keep their bits: MLAS splits the output, not the sums, between threads."""
        threads = max(1, int(threads))
        if threads == int(self.options["threads"] or default_threads()):
            return
        self.options["threads"] = threads
        opened = list(self._sessions)
        self._sessions.clear()
        for maps in opened:
            self.session(maps)

    # calls ---------------------------------------------------------------------------------------------------
    def _scale(self, scale, batch: int, seq: int) -> np.ndarray:
        if scale is None:
            key = (batch, seq)
            if key not in self._ones:
                self._ones[key] = np.ones(key, dtype=np.float32)
            return self._ones[key]
        return _numpy(scale)

    def _feed(self, sample, timestep, encoder_hidden_states, key_scale, value_scale, cond_rows: int,
              added: AddedConditioning | None = None) -> dict:
        batch, seq = int(encoder_hidden_states.shape[0]), int(encoder_hidden_states.shape[1])
        t = _numpy(timestep).reshape(-1)
        if t.size == 1:
            t = np.full((int(sample.shape[0]),), t[0], dtype=np.float32)
        feed = {
            "sample": _numpy(sample),
            "timestep": t,
            "encoder_hidden_states": _numpy(encoder_hidden_states),
            "key_scale": self._scale(key_scale, batch, seq),
            "value_scale": self._scale(value_scale, batch, seq),
        }
        if cond_rows:
            feed[self.manifest["map_rows_input"]] = np.zeros((cond_rows,), dtype=np.float32)
        if added is not None:
            feed.update({name: _numpy(value) for name, value in added.as_kwargs().items()})
        return feed

    def __call__(
        self,
        sample,
        timestep,
        encoder_hidden_states,
        *,
        key_scale=None,
        value_scale=None,
        capture_maps=False,
        cond_rows=0,
        added=None,
    ):
        if bool(self.added_widths) != (added is not None):
            raise AttuneError("This SDXL UNet needs its pooled text embedding and size ids (added conditioning)."
                              if added is None else
                              f"The ONNX UNet in {self.export_dir} takes no added conditioning (it is not SDXL's).")
        maps_on = bool(capture_maps) and int(cond_rows) > 0
        rows = int(cond_rows) if maps_on else 0
        if rows > int(sample.shape[0]):
            raise AttuneError(f"cond_rows ({rows}) is larger than the batch ({int(sample.shape[0])}).")
        expected = (int(encoder_hidden_states.shape[0]), int(encoder_hidden_states.shape[1]))
        for scale in (key_scale, value_scale):
            if scale is not None and tuple(scale.shape) != expected:
                raise AttuneError(f"Token scales must have shape {expected}, got {tuple(scale.shape)}.")
        if self.use_cuda:
            noise, maps = self._run_cuda(sample, timestep, encoder_hidden_states, key_scale, value_scale, rows, added)
            if not _is_torch(sample):  # numpy in, numpy out
                noise, maps = noise.cpu().numpy(), [m.cpu().numpy() for m in maps]
        else:
            outputs = self._run_cpu(sample, timestep, encoder_hidden_states, key_scale, value_scale, rows, added)
            noise, maps = outputs[0], outputs[1:]
            if _is_torch(sample):  # torch in, torch out (the PyTorch fallback's callers, tests)
                import torch

                noise = torch.from_numpy(noise).to(sample.device, sample.dtype)
                maps = [torch.from_numpy(m) for m in maps]
        return noise, (dict(zip(self.layer_names, maps)) if maps_on else {})

    def _run_cuda(
        self, sample, timestep, encoder_hidden_states, key_scale, value_scale, rows: int, added=None
    ):  # pragma: no cover - needs onnxruntime-gpu
        """IO binding: ORT reads the torch CUDA tensors in place and writes the noise into a torch CUDA tensor."""
        import torch

        device = torch.device(self.device if ":" in self.device else "cuda:0")
        batch, seq = int(encoder_hidden_states.shape[0]), int(encoder_hidden_states.shape[1])

        def on_device(t):
            return torch.as_tensor(t).to(device, torch.float32).contiguous()

        t = on_device(timestep).reshape(-1)
        inputs = {
            "sample": on_device(sample),
            "timestep": t.expand(int(sample.shape[0])).contiguous() if t.numel() == 1 else t,
            "encoder_hidden_states": on_device(encoder_hidden_states),
            "key_scale": on_device(key_scale) if key_scale is not None else torch.ones(batch, seq, device=device),
            "value_scale": on_device(value_scale) if value_scale is not None else torch.ones(batch, seq, device=device),
        }
        if rows:
            inputs[self.manifest["map_rows_input"]] = torch.zeros(rows, device=device)
        if added is not None:
            inputs.update({name: on_device(value) for name, value in added.as_kwargs().items()})
        session = self.session(rows > 0)
        binding = session.io_binding()
        for name, tensor in inputs.items():  # `inputs` keeps the tensors alive until the run ends
            binding.bind_input(name, "cuda", device.index, np.float32, tuple(tensor.shape), tensor.data_ptr())
        b, _, h, w = inputs["sample"].shape
        noise = torch.empty((b, self.out_channels, h, w), dtype=torch.float32, device=device)
        binding.bind_output(
            self.manifest["noise_output"], "cuda", device.index, np.float32, tuple(noise.shape), noise.data_ptr()
        )
        for name in self.layer_names if rows else []:
            binding.bind_output(name, "cuda", device.index)  # ORT allocates; the maps are small
        torch.cuda.current_stream(device).synchronize()  # inputs written by torch must be ready for ORT's stream
        session.run_with_iobinding(binding)
        maps = [torch.from_numpy(v.numpy()).to(device) for v in binding.get_outputs()[1:]] if rows else []
        return noise, maps

    def release_memory(self) -> None:
        """Shrink each open session's arena to what it needs now, so the image's working set goes back to the OS.
        The engine calls this when an image is done. ORT shrinks an arena only at the end of a run, so this is a
        tiny run (batch 1, 8x8 latent, one token: a few ms) with the shrinkage run option."""
        if self.options["memory"] != "lean" or self.use_cuda:
            return
        import onnxruntime as ort

        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        dim = self.manifest.get("cross_attention_dim")
        sessions = [*self._sessions.items(), *self._lane_sessions.items()]
        for maps, session in sessions if dim else []:
            feed = {
                "sample": np.zeros((1, self.in_channels, 8, 8), dtype=np.float32),
                "timestep": np.zeros((1,), dtype=np.float32),
                "encoder_hidden_states": np.zeros((1, 1, int(dim)), dtype=np.float32),
                "key_scale": np.ones((1, 1), dtype=np.float32),
                "value_scale": np.ones((1, 1), dtype=np.float32),
            }
            if maps:
                feed[self.manifest["map_rows_input"]] = np.zeros((1,), dtype=np.float32)
            zeros = self._zero_added(1)
            if zeros is not None:
                feed.update(zeros.as_kwargs())
            try:
                session.run([self.manifest["noise_output"]], feed, options)
            except Exception:  # memory housekeeping only: a failure here must not fail the image
                pass
        trim_heap()

    def close(self) -> None:
        self._sessions.clear()
        self._lane_sessions.clear()
        self._lane_pool.shutdown(wait=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class OnnxPart:
    """One of the exported side graphs (text_encoder, vae_encoder, vae_decoder) as a callable on arrays."""

    def __init__(
        self,
        export_dir: str | Path,
        part: str,
        *,
        device: str = "cpu",
        threads: int | None = None,
        optimization: str = "all",
        memory: str | None = None,
    ) -> None:
        import onnxruntime as ort

        path = Path(export_dir) / part / "model.onnx"
        self.memory = memory or default_memory()
        try:
            options = session_options(threads=threads, optimization=optimization, memory=self.memory)
            alive = add_shared_weights(options, shared_weight_files(path))
            self.session = ort.InferenceSession(str(path), options, providers=choose_providers(device))
            del alive
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise AttuneError(f"ONNX Runtime could not load {path}: {first}") from e
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *tensors) -> list:
        feed = {}
        for name, t in zip(self.input_names, tensors):
            if name == "input_ids":
                feed[name] = np.asarray(t.detach().cpu().numpy() if _is_torch(t) else t, dtype=np.int64)
            else:
                feed[name] = _numpy(t)
        if TEXT_MASK_INPUT in self.input_names and TEXT_MASK_INPUT not in feed:  # the text encoder, every token seen
            feed[TEXT_MASK_INPUT] = np.ones_like(feed["input_ids"])
        outputs = self.session.run(None, feed)
        if tensors and _is_torch(tensors[0]):
            import torch

            return [torch.from_numpy(a) for a in outputs]
        return outputs


def create_runner(components, device: str | None = None, **options) -> OnnxUNetRunner:
    """A runner on the components' UNet graphs: the light runtime's export folder (engine/model/onnx_components.py),
    else the shipped or cached export of PyTorch components (engine.pipeline.backend exports on first use)."""
    if not onnxruntime_available():
        raise AttuneError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu on CUDA hosts).")
    device = str(device or components.device)
    if isinstance(components, OnnxComponents):
        runner = OnnxUNetRunner(components.export_dir, device=device, **options)
        runner.warm_up(maps=True)
        return runner
    if device.startswith("cuda") and choose_providers(device)[0] != "CUDAExecutionProvider":
        # ORT would run the UNet on the CPU while the rest runs on the GPU: PyTorch on CUDA is the faster choice
        raise AttuneError(
            "onnxruntime-gpu is not installed (pip install -r requirements-gpu.txt), so ONNX cannot use the GPU."
        )
    from engine.model.onnx_files import find_export

    folder = find_export(components.path, components.weights_hash)  # shipped or cached
    if folder is None:
        raise AttuneError("This model has no ONNX graphs yet: export them first (python -m export.onnx --model "
                          "PATH); the app and the CLI do it on first use.")
    runner = OnnxUNetRunner(folder, device=device, **options)
    runner.warm_up(maps=True)  # a damaged graph fails here, so `auto` can pick PyTorch before any image
    if runner.in_channels != int(components.unet_in_channels):
        raise AttuneError(
            f"The ONNX export in {folder} has a {runner.in_channels}-channel UNet, "
            f"the model has {components.unet_in_channels}."
        )
    return runner
