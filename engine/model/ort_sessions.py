"""ONNX Runtime sessions for Attune's graphs: providers, threads, memory mode, session options, the shared weight files
of shipped graphs, and the cache of optimised graphs (engine/model/ort_cache.py). Used by the ONNX components (text
encoder, VAE) and by the ONNX UNet runner (engine/runners/onnx.py). No torch.
"""
from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path

import numpy as np

from engine.errors import AttuneError

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
MEMORY_MODES = ("lean", "arena")


def trim_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc's malloc_trim; a no-op elsewhere). glibc keeps freed
    blocks of the sizes it has seen freed before, so a shrunk arena would otherwise stay in the process."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        pass


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def choose_providers(device: str = "cpu", available: list[str] | None = None) -> list[str]:
    """Execution providers for a device string: CUDA first when asked for and installed, CPU always last."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """ORT intra-op threads: $ATTUNE_ORT_THREADS, else the cores this process may use (at most 8)."""
    env = os.environ.get("ATTUNE_ORT_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise AttuneError(f"ATTUNE_ORT_THREADS must be a whole number, not '{env}'.") from None
    return min(8, usable_cores())


def default_memory() -> str:
    """ORT memory mode: $ATTUNE_ORT_MEMORY (lean or arena), else lean."""
    return os.environ.get("ATTUNE_ORT_MEMORY", "").strip().lower() or "lean"


def session_options(
    *, threads: int | None = None, optimization: str = "all", spinning: bool = False, memory: str | None = None
):
    import onnxruntime as ort

    if optimization not in OPTIMIZATION_LEVELS:
        raise AttuneError(
            f"Unknown ONNX optimisation level '{optimization}': choose one of {', '.join(OPTIMIZATION_LEVELS)}."
        )
    memory = memory or default_memory()
    if memory not in MEMORY_MODES:
        raise AttuneError(f"Unknown ONNX memory mode '{memory}': choose one of {', '.join(MEMORY_MODES)}.")
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    so.intra_op_num_threads = int(threads or default_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # ORT's default order runs a branch that only feeds a graph output (the maps) after everything else, so every
    # cross-attention's probabilities stayed alive to the end of the UNet: +15-20% per call. Priority order runs the
    # maps right after their softmax (bench/results/onnx_speed_*.json: maps_overhead).
    so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    # fatal only: an error reaches the caller as the exception (one AttuneError line); ORT would also print it, and
    # its warnings about unused initializers, to stderr
    so.log_severity_level = 4
    value = "1" if spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", value)
    so.add_session_config_entry("session.inter_op.allow_spinning", value)
    if memory == "lean":
        # A memory pattern is planned per input shape and kept beside the arena (+55 MB on the built-in model)
        so.enable_mem_pattern = False
    return so


def shared_weight_files(graph: str | Path) -> list[tuple[str, Path]]:
    """(location as the graph names it, file) for each file of a shipped graph's weights that lives outside its
    folder: the model's safetensors (export/share_weights.py). [] for a self-contained graph."""
    from engine.model.onnx_files import MANIFEST

    graph = Path(graph)
    try:
        manifest = json.loads((graph.parent.parent / MANIFEST).read_text())
    except (OSError, ValueError):
        return []
    files = []
    for location in manifest.get("shared_weights", {}).get(f"{graph.parent.name}/{graph.name}", []):
        path = graph.parent / location
        if not path.is_file():
            raise AttuneError(f"ONNX graph {graph} reads its weights from {path.resolve()}, which is missing.")
        files.append((location, path))
    return files


def add_shared_weights(options, files: list[tuple[str, Path]]) -> list:
    """Hand ORT the weight files a graph names (it refuses to open files outside the graph's folder itself).
    Memory-mapped; ORT copies each tensor it needs when the session is made. The caller keeps the returned maps
    alive until then: ORT holds only their addresses."""
    buffers = [np.memmap(path, dtype=np.uint8, mode="r") for _, path in files]
    if files:
        options.add_external_initializers_from_files_in_memory(
            [location for location, _ in files], buffers, [len(b) for b in buffers]
        )
    return buffers


def new_session(path: str | Path, options: dict, providers: list[str]):
    """ort.InferenceSession with Attune's session options. On the CPU it goes through the cache of optimised graphs
    (engine/model/ort_cache.py): a process after the first skips optimising the graph again."""
    import onnxruntime as ort

    shared = shared_weight_files(path)
    alive = []  # the weight maps, until the session is made

    def make_options(level: str, source: bool = True):
        so = session_options(**{**options, "optimization": level})
        if source:  # a saved optimised graph holds its weights itself (and ORT rejects unused weight files)
            alive.extend(add_shared_weights(so, shared))
        return so

    if list(providers) == ["CPUExecutionProvider"]:
        from engine.model import ort_cache

        if ort_cache.enabled():
            session = ort_cache.open_session(path, options.get("optimization", "all"), make_options,
                                             inputs=[p for _, p in shared])
            if session is not None:
                return session
    return ort.InferenceSession(str(path), make_options(options.get("optimization", "all")), providers=providers)


def open_session(path: str | Path, *, device: str = "cpu", **options):
    """An ORT session on one graph with Attune's session options; AttuneError when it cannot be loaded."""
    try:
        return new_session(path, options, choose_providers(device))
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise AttuneError(f"ONNX Runtime could not load {path}: {first}") from e


def shrink_session(session) -> None:
    """One tiny run with arena shrinkage, so a side graph's working set goes back to the OS."""
    if default_memory() != "lean":
        return
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    feed = {}
    for arg in session.get_inputs():
        if arg.type == "tensor(int64)":
            feed[arg.name] = np.zeros((1, 1), dtype=np.int64)
        else:
            channels = arg.shape[1] if isinstance(arg.shape[1], int) else 4
            feed[arg.name] = np.zeros((1, channels, 8, 8), dtype=np.float32)
    try:
        session.run(None, feed, options)
    except Exception:  # housekeeping only
        pass
