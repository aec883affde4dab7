"""ONNX Runtime's optimised graphs, kept on disk, so a new process does not optimise the same graph again.

At optimisation level `all`, most of the time it takes to open the built-in UNet goes into optimising its graph
(folding the fp16 -> fp32 weight casts, fusing nodes, re-laying out convolutions): ~0.15 s of CPU at every app
start. ORT can save the optimised graph (`SessionOptions.optimized_model_filepath`). Opening that saved graph with
optimisation off takes ~0.04 s, and its outputs are bit-identical (tests/test_ort_cache.py).

The saved graph is in ORT's own format (`.ort`), not ONNX: it keeps each node's index, so the sessions' priority
execution order (engine/model/ort_sessions.py) runs the maps right after their softmax as it does on the source graph.
An ONNX save is written in ORT's default topological order, which puts every maps branch after the whole UNet, and
a session on it ran the maps graph 10-15% slower (bench/results/onnx_speed_*.json: maps_overhead).

- Where: `$ATTUNE_CACHE/ort-optimized/<key>/` (default ~/.cache/attune). The key hashes the graph's bytes, the name,
  size and modification time of the other files in its folder (the external weights), the session options that
  shape the graph, the onnxruntime version and the CPU (model and flags). A graph optimised at level `all` may hold
  kernels and layouts of this CPU and this ORT build, so it is only reused where both are the same.
- CPU provider only. `ATTUNE_ORT_CACHE=0` turns it off.
- The first open writes the saved graph to a temporary folder and renames it into place, so processes that start
  together never read half a graph. Whatever goes wrong with the cache (a read-only folder, a damaged saved graph)
  the graph is opened the usual way instead.
- The saved graph's sha256 is written beside it (in DONE) and checked at every open: a damaged, truncated or altered
  graph that ORT would still load (and run to wrong images) is never used; it is made again and replaces the bad one.
  A saved graph with no checksum (written before this check) is made again too. Hashing costs ~2 ms per MB.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Callable

CACHE_ENV = "ATTUNE_ORT_CACHE"
KEY_VERSION = 2  # 2: ORT format
GRAPH = "model.ort"  # the saved graph, its initializers inside
DONE = "attune_ort_cache.json"  # written last, before the folder is renamed into place
CPU = ["CPUExecutionProvider"]


def enabled() -> bool:
    return os.environ.get(CACHE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@functools.lru_cache(maxsize=1)
def cpu_identity() -> str:
    """The CPU model and its feature flags (Linux), else what platform reports."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                name, _, value = line.partition(":")
                name = name.strip()
                if name in ("model name", "flags", "Features", "CPU part") and name not in fields:
                    fields[name] = value.strip()
    except OSError:
        pass
    return json.dumps([platform.machine(), platform.processor(), fields], sort_keys=True)


def cache_key(graph: Path, options: dict, inputs=()) -> str:
    """What the saved graph depends on; `options` are the session options that shape the optimised graph, `inputs`
    the files outside its folder that it reads (the model's safetensors, for a shipped graph)."""
    import onnxruntime as ort

    digest = hashlib.sha256()
    digest.update(json.dumps([KEY_VERSION, ort.__version__, cpu_identity(), options], sort_keys=True).encode())
    digest.update(graph.read_bytes())
    for other in sorted(graph.parent.iterdir()) + [Path(p) for p in inputs]:  # the weights (and sibling graphs)
        if other != graph and other.is_file():
            stat = other.stat()
            digest.update(f"{other.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:24]


def open_session(graph: str | Path, optimization: str, make_options: Callable[[str, bool], object], inputs=()):
    """An ORT session on `graph` (CPU provider): from its saved optimised graph when there is one, else from `graph`
    itself, saving the optimised graph for the next process. None when the cache cannot be used at all (the
    caller then opens the graph as usual). `make_options(level, source)` gives the SessionOptions at an optimisation
    level, for `graph` itself (source=True: with the weights it reads from outside its folder) or the saved graph.
    A graph ORT cannot load raises, as it would without the cache. `inputs`: see cache_key."""
    import onnxruntime as ort

    from engine.model.onnx_files import cache_root

    graph = Path(graph)
    try:
        folder = cache_root() / "ort-optimized" / cache_key(graph, {"optimization": optimization}, inputs)
    except OSError:
        return None
    if (folder / DONE).is_file():
        if _verified(folder):
            try:
                return ort.InferenceSession(str(folder / GRAPH), make_options("disable", False), providers=CPU)
            except Exception:  # a saved graph this ORT cannot load after all: make it again below
                pass
        shutil.rmtree(folder, ignore_errors=True)  # damaged, altered or unverifiable: never used, made again below
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError:  # a read-only cache: no saving, the usual open
        return None
    try:
        options = make_options(optimization, True)
        options.optimized_model_filepath = str(staging / GRAPH)
        options.add_session_config_entry("session.save_model_format", "ORT")
        session = ort.InferenceSession(str(graph), options, providers=CPU)
        try:
            if (staging / GRAPH).is_file():
                (staging / DONE).write_text(json.dumps({"graph": str(graph.resolve()), "optimization": optimization,
                                                        "onnxruntime": ort.__version__,
                                                        "sha256": file_sha256(staging / GRAPH)}))
                os.rename(staging, folder)  # fails when another process got there first: theirs is kept
        except OSError:
            pass
        return session
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(folder: Path) -> bool:
    """Whether the saved graph's bytes are those its checksum was made from when it was saved."""
    try:
        expected = json.loads((folder / DONE).read_text()).get("sha256")
        return isinstance(expected, str) and file_sha256(folder / GRAPH) == expected
    except (OSError, ValueError, AttributeError):  # no graph, a damaged DONE file, or one that is not an object
        return False
