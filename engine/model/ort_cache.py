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
- Big graphs: an `.ort` file cannot exceed 2 GiB (flatbuffers), and a full-size SD UNet is ~3.4 GB in fp32. A graph
  whose files pass ORT_FORMAT_MAX_BYTES, or whose ORT-format save fails, is saved in ONNX format with its
  initializers in one external data file (`model.onnx` + `model.onnx.data`, both checksummed). When that save fails
  too, the failure is logged once and remembered (a `<key>.failed` file beside the cache folders): later starts open
  the graph the usual way without trying to save it again.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Callable

CACHE_ENV = "ATTUNE_ORT_CACHE"
KEY_VERSION = 2  # 2: ORT format
GRAPH = "model.ort"  # the saved graph, its initializers inside
ONNX_GRAPH, ONNX_DATA = "model.onnx", "model.onnx.data"  # a big graph's save: ONNX format, initializers outside
DONE = "attune_ort_cache.json"  # written last, before the folder is renamed into place
FAILED_SUFFIX = ".failed"  # <key>.failed: saving this graph failed; it is not tried again
CPU = ["CPUExecutionProvider"]
ORT_FORMAT_MAX_BYTES = 2**31 - 1  # flatbuffers' limit on one .ort file
FP16_GROWTH = 2  # level `all` folds fp16 weights' casts: the saved graph can hold them in fp32, twice the bytes
EXTERNAL_MIN_BYTES = 1024  # initializers from this size go to the external data file

log = logging.getLogger(__name__)


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
    failed = folder.with_name(folder.name + FAILED_SUFFIX)
    if failed.is_file():  # saving this graph failed before (logged then): the usual open, no new attempt
        return None
    if (folder / DONE).is_file():
        if _verified(folder):
            try:
                return ort.InferenceSession(str(folder / _saved_graph(folder)), make_options("disable", False),
                                            providers=CPU)
            except Exception:  # a saved graph this ORT cannot load after all: make it again below
                pass
        shutil.rmtree(folder, ignore_errors=True)  # damaged, altered or unverifiable: never used, made again below
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError:  # a read-only cache: no saving, the usual open
        return None
    try:
        formats = ["ONNX"] if graph_bytes(graph, inputs) * FP16_GROWTH > ORT_FORMAT_MAX_BYTES else ["ORT", "ONNX"]
        errors = []
        for save_format in formats:
            try:
                session = _optimise_and_save(ort, graph, staging, save_format, optimization, make_options)
            except Exception as error:  # e.g. an .ort file over 2 GiB: try the next format
                errors.append(f"{save_format}: {_first_line(error)}")
                for leftover in staging.iterdir():
                    leftover.unlink()
                continue
            try:
                os.rename(staging, folder)  # fails when another process got there first: theirs is kept
            except OSError:
                pass
            return session
        _remember_failure(failed, graph, "; ".join(errors))
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def graph_bytes(graph: Path, inputs=()) -> int:
    """The bytes a graph reads: its file, the other files in its folder (external weights) and `inputs`."""
    files = [p for p in graph.parent.iterdir() if p.is_file()] + [Path(p) for p in inputs]
    return sum(p.stat().st_size for p in files if p.is_file())


def _optimise_and_save(ort, graph: Path, staging: Path, save_format: str, optimization: str, make_options):
    """A session on `graph`, its optimised graph saved in `staging` (ORT format, or ONNX with external data) with DONE;
    raises when ORT cannot save it."""
    options = make_options(optimization, True)
    if save_format == "ORT":
        options.optimized_model_filepath = str(staging / GRAPH)
        options.add_session_config_entry("session.save_model_format", "ORT")
    else:
        options.optimized_model_filepath = str(staging / ONNX_GRAPH)
        options.add_session_config_entry("session.save_model_format", "ONNX")
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", ONNX_DATA)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                         str(EXTERNAL_MIN_BYTES))
    session = ort.InferenceSession(str(graph), options, providers=CPU)
    saved = staging / (GRAPH if save_format == "ORT" else ONNX_GRAPH)
    if not saved.is_file():
        raise RuntimeError("ONNX Runtime wrote no optimised graph")
    record = {"graph": str(graph.resolve()), "optimization": optimization, "onnxruntime": ort.__version__,
              "format": save_format, "saved": saved.name, "sha256": file_sha256(saved)}
    if (staging / ONNX_DATA).is_file():
        record["data_sha256"] = file_sha256(staging / ONNX_DATA)
    (staging / DONE).write_text(json.dumps(record))
    return session


def _remember_failure(marker: Path, graph: Path, reason: str) -> None:
    """Log once, and leave a marker so later starts do not spend the optimisation and the failed save again."""
    log.warning("ONNX Runtime could not save the optimised graph of %s (%s); it is opened without the cache from now "
                "on (delete %s to try again).", graph, reason, marker)
    try:
        marker.write_text(json.dumps({"graph": str(graph.resolve()), "error": reason}))
    except OSError:
        pass


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _saved_graph(folder: Path) -> str:
    try:
        return str(json.loads((folder / DONE).read_text()).get("saved", GRAPH))
    except (OSError, ValueError, AttributeError):
        return GRAPH


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(folder: Path) -> bool:
    """Whether the saved graph's bytes are those its checksum was made from when it was saved."""
    try:
        record = json.loads((folder / DONE).read_text())
        saved, expected = record.get("saved", GRAPH), record.get("sha256")
        if saved not in (GRAPH, ONNX_GRAPH) or not isinstance(expected, str) or file_sha256(folder / saved) != expected:
            return False
        data = record.get("data_sha256")
        if saved == ONNX_GRAPH and (folder / ONNX_DATA).exists():  # its external initializers are checked as well
            return isinstance(data, str) and file_sha256(folder / ONNX_DATA) == data
        return data is None
    except (OSError, ValueError, AttributeError):  # no graph, a damaged DONE file, or one that is not an object
        return False
