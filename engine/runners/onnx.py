"""ONNX Runtime UNet runner: same interface as the PyTorch runner, graphs from export/onnx.py.

- Two UNet graphs share one weights file: `unet/model.onnx` (noise only) for calls without maps and
  `unet/model_maps.onnx` (noise + head-averaged maps of the last `cond_rows` rows). Sessions are made on first use.
- Token scales are graph inputs (`key_scale` -> 'score', `value_scale` -> 'prob'); None is fed as ones, which is
  exact (x * 1.0 == x).
- Memory ("lean", the default; measured by bench.app (RSS)): no memory pattern (ORT would keep a
  planned block per input shape beside its arena), and `release_memory()` shrinks the arena once an image is done,
  so its working set goes back to the OS between images. "arena" ($ATTUNE_ORT_MEMORY=arena) keeps ORT's defaults.
- Providers: CUDAExecutionProvider with IO binding when onnxruntime-gpu is installed and the device is CUDA,
  else CPUExecutionProvider. ORT's spinning worker threads are turned off: on a shared host (Community Cloud)
  spinning threads steal the cores other work needs.
- Precision: an export made with `--dtype fp16` also holds fp16 UNet graphs (fp32 inputs and outputs: the noise and
  maps stay fp32). They run only with CUDA; on the CPU the fp32 graphs run (`precision` overrides, for tests).
- No torch: inputs and outputs are numpy arrays. Torch tensors are accepted too (the PyTorch fallback, tests);
  then the outputs are torch tensors as well.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.errors import AttuneError
from engine.model.onnx_components import OnnxComponents
from engine.model.onnx_files import TEXT_MASK_INPUT
from engine.model.ort_sessions import (MEMORY_MODES, add_shared_weights, choose_providers, default_memory,
                                       default_threads, new_session, onnxruntime_available, session_options,
                                       shared_weight_files, trim_heap)


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
        # Graphs whose maps are a MatMul head mean give each row the same bits whatever the row count (on CPU; CUDA
        # kernels are not checked): engine.runners.batching may stack requests on them.
        self.row_exact = bool(self.manifest.get("maps_row_exact")) and not self.use_cuda
        self._sessions: dict[bool, object] = {}
        self._ones: dict[tuple[int, int], np.ndarray] = {}

    # sessions ----------------------------------------------------------------------------------------------
    def graph_path(self, maps: bool) -> Path:
        """The maps graph (maps=True) or the noise-only graph, in this runner's precision."""
        name = ("model_maps" if maps else "model") + ("_fp16" if self.precision == "fp16" else "")
        return self.export_dir / self.subfolder / f"{name}.onnx"

    def session(self, maps: bool):
        """The ORT session of the maps graph (maps=True) or the noise-only graph, created on first use."""
        if maps not in self._sessions:
            path = self.graph_path(maps)
            try:
                self._sessions[maps] = new_session(path, self.options, self.providers)
            except Exception as e:
                first = (str(e).strip().splitlines() or [""])[0]
                raise AttuneError(f"ONNX Runtime could not load {path}: {first}") from e
        return self._sessions[maps]

    def warm_up(self, maps: bool = True) -> None:
        self.session(maps)

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

    def _feed(self, sample, timestep, encoder_hidden_states, key_scale, value_scale, cond_rows: int) -> dict:
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
    ):
        maps_on = bool(capture_maps) and int(cond_rows) > 0
        rows = int(cond_rows) if maps_on else 0
        if rows > int(sample.shape[0]):
            raise AttuneError(f"cond_rows ({rows}) is larger than the batch ({int(sample.shape[0])}).")
        expected = (int(encoder_hidden_states.shape[0]), int(encoder_hidden_states.shape[1]))
        for scale in (key_scale, value_scale):
            if scale is not None and tuple(scale.shape) != expected:
                raise AttuneError(f"Token scales must have shape {expected}, got {tuple(scale.shape)}.")
        if self.use_cuda:
            noise, maps = self._run_cuda(sample, timestep, encoder_hidden_states, key_scale, value_scale, rows)
            if not _is_torch(sample):  # numpy in, numpy out
                noise, maps = noise.cpu().numpy(), [m.cpu().numpy() for m in maps]
        else:
            feed = self._feed(sample, timestep, encoder_hidden_states, key_scale, value_scale, rows)
            names = [self.manifest["noise_output"], *(self.layer_names if maps_on else [])]
            outputs = self.session(maps_on).run(names, feed)
            noise, maps = outputs[0], outputs[1:]
            if _is_torch(sample):  # torch in, torch out (the PyTorch fallback's callers, tests)
                import torch

                noise = torch.from_numpy(noise).to(sample.device, sample.dtype)
                maps = [torch.from_numpy(m) for m in maps]
        return noise, (dict(zip(self.layer_names, maps)) if maps_on else {})

    def _run_cuda(
        self, sample, timestep, encoder_hidden_states, key_scale, value_scale, rows: int
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
        for maps, session in list(self._sessions.items()) if dim else []:
            feed = {
                "sample": np.zeros((1, self.in_channels, 8, 8), dtype=np.float32),
                "timestep": np.zeros((1,), dtype=np.float32),
                "encoder_hidden_states": np.zeros((1, 1, int(dim)), dtype=np.float32),
                "key_scale": np.ones((1, 1), dtype=np.float32),
                "value_scale": np.ones((1, 1), dtype=np.float32),
            }
            if maps:
                feed[self.manifest["map_rows_input"]] = np.zeros((1,), dtype=np.float32)
            try:
                session.run([self.manifest["noise_output"]], feed, options)
            except Exception:  # memory housekeeping only: a failure here must not fail the image
                pass
        trim_heap()

    def close(self) -> None:
        self._sessions.clear()

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
