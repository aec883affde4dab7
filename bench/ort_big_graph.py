"""A synthetic big ONNX graph through Attune's cache of optimised graphs (engine/model/ort_cache.py): does it open on the
first start and on the second, and which reopens faster: the saved ONNX graph with external data, or no cache?

The graph is a chain of MatMul + bias + SiLU layers whose weights are stored in fp16 with a Cast to fp32, as the
exporter writes the built-in UNet: at level `all` ORT folds the casts, so the optimised graph holds the weights in
fp32, twice the source's bytes. `--gib 2.1` makes an optimised graph over 2 GiB (the .ort limit); it needs ~6 GB of
RAM and a few minutes, so it is a benchmark, not a test (tests/test_ort_cache.py lowers the limit instead).

    python -m bench.ort_big_graph --gib 0.25 --json     # the reopen measurement
    python -m bench.ort_big_graph --gib 2.1 --json      # first and second start of a > 2 GiB graph

Each start runs in a fresh process (as an app start does), with its own timing of the session's creation.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIDE = 4096  # one layer's weight: SIDE x SIDE


def build_graph(folder: Path, gib: float) -> Path:
    """model.onnx + weights.bin: layers until the fp32 weights pass `gib` GiB."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    layers = max(1, int(np.ceil(gib * 2**30 / (SIDE * SIDE * 4))))
    rng = np.random.default_rng(0)
    nodes, initializers = [], []
    current = "x"
    for i in range(layers):
        w = (rng.standard_normal((SIDE, SIDE), dtype=np.float32) / np.sqrt(SIDE)).astype(np.float16)
        b = np.zeros(SIDE, dtype=np.float16)
        initializers += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("Cast", [f"w{i}"], [f"w{i}_f"], to=TensorProto.FLOAT),
            helper.make_node("Cast", [f"b{i}"], [f"b{i}_f"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", [current, f"w{i}_f"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}_f"], [f"a{i}"]),
            helper.make_node("Sigmoid", [f"a{i}"], [f"s{i}"]),
            helper.make_node("Mul", [f"a{i}", f"s{i}"], [f"h{i}"]),
        ]
        current = f"h{i}"
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SIDE])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, [1, SIDE])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=1024)
    return path


def one_start(graph: str, cache: str, use_cache: bool, onnx_format: bool = False) -> dict:
    """Runs in a child process: open the graph through Attune's sessions, run it once. onnx_format: save in ONNX
    format with external data whatever the graph's size (as a graph over the .ort limit is)."""
    os.environ["ATTUNE_CACHE"] = cache
    os.environ["ATTUNE_ORT_CACHE"] = "1" if use_cache else "0"
    import numpy as np

    from engine.model import ort_cache
    from engine.model.ort_sessions import open_session

    if onnx_format:
        ort_cache.ORT_FORMAT_MAX_BYTES = 1

    t0 = time.perf_counter()
    session = open_session(graph, threads=4)
    opened = time.perf_counter() - t0
    out = session.run(None, {"x": np.ones((1, SIDE), dtype=np.float32)})[0]
    saved = sorted(str(p.relative_to(cache)) for p in Path(cache).rglob("*") if p.is_file())
    return {"open_s": round(opened, 3), "checksum": float(np.abs(out).sum()), "cache_files": saved}


def start(graph: Path, cache: Path, use_cache: bool, onnx_format: bool = False) -> dict:
    code = ("import json, sys; from bench.ort_big_graph import one_start; "
            f"print(json.dumps(one_start({str(graph)!r}, {str(cache)!r}, {use_cache}, {onnx_format})))")
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    if run.returncode != 0:
        return {"ok": False, "error": (run.stderr.strip().splitlines() or ["?"])[-1], "wall_s": None}
    result = json.loads(run.stdout.strip().splitlines()[-1])
    return {"ok": True, "wall_s": round(time.perf_counter() - t0, 3), **result}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.1, help="fp32 weight GiB of the optimised graph")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--compare-onnx", action="store_true", help="also time the ONNX-format save (small graphs)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "graph").mkdir()
        t0 = time.perf_counter()
        graph = build_graph(tmp / "graph", args.gib)
        report = {"gib_fp32": args.gib, "source_bytes": sum(p.stat().st_size for p in (tmp / "graph").iterdir()),
                  "build_s": round(time.perf_counter() - t0, 1)}
        report["no_cache"] = start(graph, tmp / "none", use_cache=False)
        report["first_start"] = start(graph, tmp / "cache", use_cache=True)
        report["second_start"] = start(graph, tmp / "cache", use_cache=True)
        report["saved_bytes"] = sum(p.stat().st_size for p in (tmp / "cache").rglob("*") if p.is_file())
        if args.compare_onnx:  # the format a graph over the .ort limit is saved in, at any size
            report["onnx_format_first_start"] = start(graph, tmp / "onnx", use_cache=True, onnx_format=True)
            report["onnx_format_second_start"] = start(graph, tmp / "onnx", use_cache=True, onnx_format=True)
        report["no_cache_again"] = start(graph, tmp / "none", use_cache=False)  # warm page cache, as the others
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
