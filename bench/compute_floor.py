"""The image compute floor: the FLOPs of one image divided by what these cores can do at best.

    python -m bench.compute_floor [--json] [--steps N] [--model PATH] [--ops]

FLOPs: the multiply-adds (×2) of every MatMul, Gemm and Conv that ONNX Runtime runs for one image at the model's
default size (the UNet with CFG batch 2 and maps, `steps` times; the VAE decoder; the text encoder twice), read from
ORT's own profile of an unoptimised session, so the shapes are the ones really run. Elementwise nodes, softmax and
norms are left out: the floor is a lower bound. Peak: the best of a few large float32 matmuls (numpy) on all of
this process's cores. `--ops`: where one UNet call's kernel time goes, by node type (ORT's profile of the optimised
maps graph as the app runs it: CFG batch 2). Light runtime only (no torch, no onnx package).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import machine

COUNTED = ("MatMul", "Gemm", "Conv", "FusedMatMul")


def node_flops(op: str, inputs: list[list[int]], output: list[int]) -> int:
    """2 × multiply-adds of one node, from its input and output shapes."""
    if op in ("MatMul", "FusedMatMul", "Gemm"):
        return 2 * int(np.prod(output)) * int(inputs[0][-1])  # Attune's graphs use Gemm without transA
    return 2 * int(np.prod(output)) * int(np.prod(inputs[1][1:]))  # Conv: output × (in channels / group × kernel)


def graph_flops(path: Path, feed: dict) -> int:
    """FLOPs of one run of the graph at `feed`'s shapes (ORT's profile of an unoptimised session)."""
    import onnxruntime as ort

    from engine.model.ort_sessions import add_shared_weights, session_options, shared_weight_files

    options = session_options(threads=1, optimization="disable")
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="attune-flops-"), "profile")
    alive = add_shared_weights(options, shared_weight_files(path))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    del alive
    session.run(None, feed)
    profile = Path(session.end_profiling())
    total = 0
    for event in json.loads(profile.read_text()):
        args = event.get("args", {})
        if event.get("cat") != "Node" or args.get("op_name") not in COUNTED:
            continue
        if not event["name"].endswith("_kernel_time"):
            continue
        inputs = [next(iter(shape.values())) for shape in args["input_type_shape"]]
        output = next(iter(args["output_type_shape"][0].values()))
        total += node_flops(args["op_name"], inputs, output)
    profile.unlink()
    return total


def _unet_feed(comps, rows: int = 2) -> dict:
    manifest = comps.manifest
    size = comps.sample_size or 64
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    dim, length = int(manifest["cross_attention_dim"]), int(manifest.get("max_length", 77))
    rng = np.random.default_rng(0)
    return {"sample": rng.standard_normal((rows, comps.unet_in_channels, h, w)).astype(np.float32),
            "timestep": np.full((rows,), 500, dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal((rows, length, dim)).astype(np.float32),
            "key_scale": np.ones((rows, length), dtype=np.float32),
            "value_scale": np.ones((rows, length), dtype=np.float32),
            manifest["map_rows_input"]: np.zeros((1,), dtype=np.float32)}


def op_shares(model: str | None = None, calls: int = 20) -> dict:
    """Kernel time of one UNet call (maps graph, CFG batch 2, optimisation `all`, default threads) by node type."""
    import onnxruntime as ort

    from engine.model.onnx_components import load_onnx_components
    from engine.model.ort_sessions import add_shared_weights, session_options, shared_weight_files

    comps = load_onnx_components(model)
    path = comps.export_dir / "unet" / "model_maps.onnx"
    options = session_options()
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="attune-ops-"), "profile")
    alive = add_shared_weights(options, shared_weight_files(path))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    del alive
    feed = _unet_feed(comps)
    for _ in range(calls):
        session.run(None, feed)
    profile = Path(session.end_profiling())
    by_op: dict[str, float] = {}
    nodes = 0
    for event in json.loads(profile.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"].get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + event["dur"] / 1e3 / calls
            nodes += 1
    profile.unlink()
    total = sum(by_op.values())
    top = sorted(by_op.items(), key=lambda kv: -kv[1])
    return {"nodes_per_call": nodes // calls, "kernel_ms_per_call": round(total, 2),
            "share": {op: round(ms / total, 3) for op, ms in top}}


def image_flops(model: str | None = None, steps: int = 20) -> dict:
    """FLOPs of one image at the model's default size: per UNet call, VAE decode, text encoder, and the image."""
    from engine.model.onnx_components import load_onnx_components

    comps = load_onnx_components(model)
    export = comps.export_dir
    manifest = comps.manifest
    size = comps.sample_size or 64
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    dim, length = int(manifest["cross_attention_dim"]), int(manifest.get("max_length", 77))
    rng = np.random.default_rng(0)
    unet_feed = _unet_feed(comps)
    unet = graph_flops(export / "unet" / "model_maps.onnx", unet_feed)
    vae = graph_flops(export / "vae_decoder" / "model.onnx",
                      {"latent_sample": rng.standard_normal((1, comps.latent_channels, h, w)).astype(np.float32)})
    ids = np.zeros((1, length), dtype=np.int64)
    text = graph_flops(export / "text_encoder" / "model.onnx", {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    return {"latent": [h, w], "steps": steps, "unet_call_gflop": unet / 1e9, "vae_decode_gflop": vae / 1e9,
            "text_encoder_gflop": text / 1e9, "image_gflop": (steps * unet + vae + 2 * text) / 1e9}


def peak_gflops(n: int = 2048, repeats: int = 5) -> dict:
    """Large n×n float32 matmuls (numpy's BLAS, all of this process's cores): the best GFLOP/s by the wall clock,
    and by CPU time × cores. On a shared, busy host the wall clock sees other processes' work; the CPU-time figure
    is what the cores do while this process has them, so it is the peak to divide by there."""
    from engine.model.ort_sessions import usable_cores

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    wall = cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        a @ b
        wall, cpu = min(wall, time.perf_counter() - start), min(cpu, time.process_time() - start_cpu)
    flop = 2 * n**3
    return {"wall": flop / wall / 1e9, "cpu_time": flop / cpu * usable_cores() / 1e9, "cores": usable_cores()}


def compute_floor(model: str | None = None, steps: int = 20) -> dict:
    flops = image_flops(model, steps)
    peak = peak_gflops()
    best = max(peak["wall"], peak["cpu_time"])
    return {**{k: round(v, 3) if isinstance(v, float) else v for k, v in flops.items()},
            "peak_gflops": round(best, 1), "peak_wall_gflops": round(peak["wall"], 1),
            "peak_cpu_time_gflops": round(peak["cpu_time"], 1),
            "peak_how": f"best of 5 numpy float32 2048x2048 matmuls on {peak['cores']} cores: the higher of wall-clock "
                        "GFLOP/s and GFLOP per CPU-second x cores",
            "floor_s": round(flops["image_gflop"] / best, 3), "load_average": [round(x, 2) for x in os.getloadavg()]}


def table(result: dict) -> str:
    ops = result.get("unet_ops")
    shares = (f"\nUNet call: {ops['nodes_per_call']} nodes, {ops['kernel_ms_per_call']:.1f} ms of kernels: "
              + ", ".join(f"{op} {share:.0%}" for op, share in list(ops["share"].items())[:8])) if ops else ""
    return (f"image compute floor: {result['image_gflop']:.1f} GFLOP ({result['steps']} UNet calls × "
            f"{result['unet_call_gflop']:.2f} + VAE decode {result['vae_decode_gflop']:.2f}) ÷ peak "
            f"{result['peak_gflops']:.0f} GFLOP/s = {result['floor_s']:.2f} s" + shares)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="diffusers folder (default: the built-in model)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ops", action="store_true", help="also where a UNet call's kernel time goes, by node type")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = {"machine": machine.machine_info(), **compute_floor(args.model, args.steps)}
    if args.ops:
        result["unet_ops"] = op_shares(args.model)
    return machine.print_result(result, args.json, lambda r: print(table(r)), indent=1)


if __name__ == "__main__":
    sys.exit(main())
