"""A synthetic big ONNX graph through Attune's cache of optimised graphs (engine/model/ort_cache.py): does it open on the
first start and on the second, and which reopens faster: the saved ONNX graph with external data, or no cache?

The graph is a chain of MatMul + bias + SiLU layers whose weights are stored in fp16 with a Cast to fp32, as the
exporter writes the built-in UNet: at level `all` ORT folds the casts, so the optimised graph holds the weights in
fp32, twice the source's bytes. `--gib 2.1` makes an optimised graph over 2 GiB (the .ort limit); it needs ~6 GB of
RAM and a few minutes, so it is a benchmark, not a test (tests/test_ort_cache.py lowers the limit instead).

    python -m bench.ort_big_graph --gib 0.25 --json     # the reopen measurement
    python -m bench.ort_big_graph --gib 2.1 --json      # first and second start of a > 2 GiB graph
    python -m bench.ort_big_graph --real-unet sd15 --json   # the same with a full-size SD-1.5 UNet, exported

Each start runs in a fresh process (as an app start does), with its own timing of the session's creation.

`--real-unet sd15`: a random-weight folder of SD-1.5's real topology (bench/parity.py), its UNet exported by
export.onnx (fp32: random weights are not fp16-exact, so they stay fp32, ~3.4 GB of external data), then opened by
the ONNX UNet runner (engine/runners/onnx.py, the engine's own session path, cache on at its defaults) in three
fresh processes: first start (cache made), second start (cache reused), and one with ATTUNE_ORT_CACHE=0. Each runs
one UNet call with maps. Needs ~11 GB of RAM (the export) and ~15 min on 2 cores; the models live in a temporary
folder (--work) that is deleted at the end. Writes bench/results/ort_big_graph_sd15_unet.json with --json.
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

from bench.machine import machine_info

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


# ------------------------------------------------------------------------------------- a real UNet (--real-unet)
REAL_RESULTS = Path(__file__).resolve().parent / "results" / "ort_big_graph_{family}_unet.json"
LATENT = 32  # one call's latent side (256 px): the call proves the graph runs; its speed is not the point here


def peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def build_and_export(family: str, work: str, divisor: int = 1) -> dict:
    """Runs in a child process: the random-weight model folder and its exported UNet graphs (work/model and
    work/export)."""
    from bench.parity import FAMILIES, build_model
    from export.onnx import export_model

    t0 = time.perf_counter()
    folder = build_model(FAMILIES[family], Path(work) / "model", divisor=divisor)
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    export = export_model(folder, Path(work) / "export", parts=("unet",), progress=lambda *a: None)
    exported = time.perf_counter() - t0
    files = {str(p.relative_to(export)): p.stat().st_size for p in sorted((export / "unet").rglob("*"))
             if p.is_file()}
    unet_params = sum(p.stat().st_size for p in (folder / "unet").glob("*.safetensors"))
    return {"build_s": round(built, 1), "export_s": round(exported, 1), "peak_rss_mb": peak_rss_mb(),
            "unet_safetensors_bytes": unet_params, "graph_files": files}


def one_real_start(export: str, cache: str, use_cache: bool) -> dict:
    """Runs in a child process: the ONNX UNet runner on the export, as the engine opens it, then one UNet call (batch
    2, the conditioned row's maps). Which cache format the start found or made, from the cache's record."""
    os.environ["ATTUNE_CACHE"] = cache
    if use_cache:
        os.environ.pop("ATTUNE_ORT_CACHE", None)  # the default: on
    else:
        os.environ["ATTUNE_ORT_CACHE"] = "0"
    import numpy as np

    from engine.model.ort_cache import DONE
    from engine.runners.onnx import OnnxUNetRunner

    def records():
        return {p.parent.name: json.loads(p.read_text()) for p in Path(cache).rglob(DONE)}

    before = records()
    t0 = time.perf_counter()
    runner = OnnxUNetRunner(export)
    runner.warm_up(maps=True)
    opened = time.perf_counter() - t0
    rss_open = peak_rss_mb()
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, runner.in_channels, LATENT, LATENT), dtype=np.float32)
    context = rng.standard_normal((2, 77, int(runner.manifest["cross_attention_dim"])), dtype=np.float32)
    t0 = time.perf_counter()
    noise, maps = runner(sample, np.array([500.0], dtype=np.float32), context, capture_maps=True, cond_rows=1)
    called = time.perf_counter() - t0
    after = records()
    made = [key for key in after if key not in before]
    used = made or [key for key in after if key in before]
    return {"open_s": round(opened, 2), "call_s": round(called, 2), "peak_rss_mb_after_open": rss_open,
            "peak_rss_mb": peak_rss_mb(), "noise_shape": list(noise.shape),
            "noise_finite": bool(np.isfinite(noise).all()),
            "noise_checksum": float(np.abs(noise).sum()), "map_layers": len(maps),
            "cache": ("made" if made else "reused" if used else "none"),
            "cache_format": after[used[0]].get("format") if used else None,
            "cache_failed_markers": sorted(p.name for p in Path(cache).rglob("*.failed")),
            "cache_bytes": sum(p.stat().st_size for p in Path(cache).rglob("*") if p.is_file())}


def child(call: str) -> dict:
    """One fresh Python process running `call` (an expression on this module), its JSON result and wall time."""
    code = f"import json; from bench.ort_big_graph import *; print(json.dumps({call}))"
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1])
    if run.returncode != 0:
        return {"ok": False, "error": (run.stderr.strip().splitlines() or ["?"])[-1]}
    return {"ok": True, "wall_s": round(time.perf_counter() - t0, 1), **json.loads(run.stdout.strip().splitlines()[-1])}


def real_unet(family: str, work: Path | None, keep: bool, divisor: int = 1) -> dict:
    import onnxruntime

    work = Path(work or tempfile.mkdtemp(prefix=f"attune-big-{family}-", dir="/tmp"))
    try:
        report = {"what": f"A random-weight {family} UNet at its real topology, exported by export.onnx (fp32) and "
                          "opened by engine/runners/onnx.py with the ORT cache at its defaults, in fresh processes",
                  "command": f"python -m bench.ort_big_graph --real-unet {family} --json"
                             + (f" --divisor {divisor}" if divisor != 1 else ""),
                  "machine": machine_info(onnxruntime=onnxruntime.__version__), "latent": LATENT,
                  "widths": "full" if divisor == 1 else f"SD widths / {divisor}"}
        report["build_export"] = child(f"build_and_export({family!r}, {str(work)!r}, {divisor})")
        if report["build_export"]["ok"]:
            export, cache = str(work / "export"), str(work / "cache")
            report["first_start"] = child(f"one_real_start({export!r}, {cache!r}, True)")
            report["second_start"] = child(f"one_real_start({export!r}, {cache!r}, True)")
            report["no_cache"] = child(f"one_real_start({export!r}, {str(work / 'none')!r}, False)")
            sums = {report[k].get("noise_checksum") for k in ("first_start", "second_start", "no_cache")}
            report["same_output_every_start"] = len(sums) == 1 and None not in sums
        return report
    finally:
        if not keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)


def print_real(report: dict) -> None:
    m = report["machine"]
    print(f"{report['what']}\nmachine: {m['cpu']}, {m['cores']} cores, onnxruntime {m['onnxruntime']}")
    built = report["build_export"]
    print(f"build+export: ok={built['ok']} " + (f"{built['build_s']}+{built['export_s']} s, graph files "
          f"{sum(built['graph_files'].values()) / 1e9:.2f} GB, peak RSS {built['peak_rss_mb']:.0f} MB"
          if built["ok"] else built["error"]))
    print(f"{'start':<14}{'ok':<6}{'cache':<8}{'format':<8}{'open s':>8}{'call s':>8}{'peak RSS MB':>13}")
    for name in ("first_start", "second_start", "no_cache"):
        r = report.get(name)
        if r and r["ok"]:
            print(f"{name:<14}{'yes':<6}{r['cache']:<8}{str(r['cache_format']):<8}{r['open_s']:>8}{r['call_s']:>8}"
                  f"{r['peak_rss_mb']:>13.0f}")
        elif r:
            print(f"{name:<14}no    {r['error']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.1, help="fp32 weight GiB of the optimised graph")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--compare-onnx", action="store_true", help="also time the ONNX-format save (small graphs)")
    parser.add_argument("--real-unet", choices=("sd15", "sd21"), default=None,
                        help="export a random-weight UNet of this real topology instead of the synthetic graph")
    parser.add_argument("--work", type=Path, default=None, help="--real-unet: folder for the model (default /tmp)")
    parser.add_argument("--keep", action="store_true", help="--real-unet: keep the model, export and cache")
    parser.add_argument("--divisor", type=int, default=1, help="--real-unet: divide the widths (a quick trial)")
    args = parser.parse_args(argv)
    if args.real_unet:
        report = real_unet(args.real_unet, args.work, args.keep, args.divisor)
        print_real(report)
        if args.json and args.divisor == 1:
            path = Path(str(REAL_RESULTS).format(family=args.real_unet))
            path.write_text(json.dumps(report, indent=1) + "\n")
            print(f"wrote {path}")
        return 0 if all(report.get(k, {}).get("ok") for k in ("build_export", "first_start", "second_start")) else 1
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
