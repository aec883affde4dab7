"""Speed: ONNX Runtime against PyTorch, side by side in one process and one run.

    python -m bench.speed [--json] [--model PATH] [--calls N] [--images N] [--steps N] [--threads N] [--experiments]

Rows: one UNet call (CFG batch 2) with maps on and off, the same ORT calls back to back in blocks of `--steps` (as a
generation runs them: the maps overhead a user sees), a full image (text encoder + sampler + VAE; the ORT engine
runs all of it in ONNX Runtime with the numpy scheduler, the PyTorch engine in torch), a heatmap
of one word, and the text encoder / VAE decoder alone (torch vs their exported graphs). Ratios are PyTorch time ÷
ORT time, so > 1 means ORT is faster. Measurements alternate between the backends, so a busy machine slows both
alike. `--experiments` adds ORT settings (optimisation levels, threads, spinning) for the UNet call.

Default model: the built-in models/tiny-scenes; when it is missing, a tiny random model (said in the output).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import machine

WORD = "moon"
PROMPT = "a painting of a wolf sitting in front of the full moon , night sky"


def machine_info(threads: int) -> dict:
    import onnxruntime
    import torch

    return machine.machine_info(
        threads=threads,
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "default"),
        torch=torch.__version__,
        onnxruntime=onnxruntime.__version__,
    )


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000.0


def time_interleaved(fns: dict, repeats: int, warmup: int = 2, best: dict | None = None) -> dict[str, float]:
    """Median ms of each fn, measured round-robin so that load changes hit every fn alike.
    `best`, when given, receives each fn's fastest time (ms): on a shared host the least disturbed run."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    if best is not None:
        best.update({name: round(min(t) * 1000.0, 3) for name, t in times.items()})
    return {name: _median_ms(t) for name, t in times.items()}


def time_blocks(fns: dict, block: int, rounds: int) -> dict[str, float]:
    """Median over rounds of each fn's mean ms per call in `block` back-to-back calls, as a generation's steps run
    (caches warm from the previous call), the fns taking turns block by block."""
    per_call = {name: [] for name in fns}
    for name, fn in fns.items():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(block):
                fn()
            per_call[name].append((time.perf_counter() - start) / block)
    return {name: _median_ms(t) for name, t in per_call.items()}


def resolve_model(model: str | None) -> tuple[Path, str]:
    """(model folder, note). The built-in model, else a tiny random one built in a temp folder."""
    from engine.model.loading import default_model_path

    if model:
        return Path(model), "given"
    path = default_model_path()
    if (path / "unet").is_dir():
        return path, "built-in"
    from tests.tiny_model import build_tiny_model

    folder = Path(tempfile.mkdtemp(prefix="attune-bench-")) / "tiny"
    build_tiny_model(folder)
    return folder, f"TINY RANDOM MODEL: the built-in model is missing ({path}); numbers are not representative"


def run(
    model: str | None = None,
    *,
    calls: int = 20,
    images: int = 3,
    steps: int = 20,
    threads: int | None = None,
    experiments: bool = False,
    progress=print,
) -> dict:
    import torch

    threads = int(threads or min(os.cpu_count() or 1, torch.get_num_threads()))
    torch_threads = torch.get_num_threads()
    ort_threads = os.environ.get("ATTUNE_ORT_THREADS")
    torch.set_num_threads(threads)  # both backends use `threads`
    os.environ["ATTUNE_ORT_THREADS"] = str(threads)
    try:
        return _run(
            model, calls=calls, images=images, steps=steps, threads=threads, experiments=experiments, progress=progress
        )
    finally:
        torch.set_num_threads(torch_threads)
        if ort_threads is None:
            os.environ.pop("ATTUNE_ORT_THREADS", None)
        else:
            os.environ["ATTUNE_ORT_THREADS"] = ort_threads


def _run(model, *, calls, images, steps, threads, experiments, progress) -> dict:
    import numpy as np
    import torch

    from engine.model.loading import load_components
    from engine.pipeline.attune import Attune, GenerateParams
    from engine.runners.onnx import OnnxPart, OnnxUNetRunner, create_runner

    folder, note = resolve_model(model)
    progress(f"model: {folder} ({note})")
    components = load_components(folder)
    start = time.perf_counter()
    create_runner(components, progress=lambda d, t, m: progress(f"  export {d}/{t}: {m}"))  # export (or find it cached)
    export_s = time.perf_counter() - start
    # one engine per backend on the same components; their runners are timed alone as well
    engines = {
        "torch": Attune(components=components, backend="torch"),
        "ort": Attune(components=components, backend="onnx"),
    }
    torch_runner, onnx_runner = engines["torch"].runner, engines["ort"].runner
    onnx_runner.warm_up(maps=False)

    cfg = components.unet.config
    f = components.vae_scale_factor
    size = int(cfg.sample_size) * f  # the model's native image size
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, int(cfg.in_channels), size // f, size // f, generator=g)
    context = torch.randn(2, 77, int(cfg.cross_attention_dim), generator=g)
    t = torch.tensor(500)

    def unet(runner, maps):
        return lambda: runner(sample, t, context, capture_maps=maps, cond_rows=1 if maps else 0)

    progress(f"UNet calls: {calls} each, {size // f}x{size // f} latent, batch 2 ...")
    best_ms: dict[str, float] = {}
    unet_ms = time_interleaved(
        {
            "torch_maps_on": unet(torch_runner, True),
            "ort_maps_on": unet(onnx_runner, True),
            "torch_maps_off": unet(torch_runner, False),
            "ort_maps_off": unet(onnx_runner, False),
        },
        calls,
        best=best_ms,
    )

    progress(f"ORT UNet calls back to back: {steps} per block, {max(3, calls // 3)} blocks each ...")
    loop_ms = time_blocks({"ort_maps_on_loop": unet(onnx_runner, True), "ort_maps_off_loop": unet(onnx_runner, False)},
                          steps, max(3, calls // 3))

    progress(f"full images: {images} each, {steps} steps, {size}x{size} ...")
    params = GenerateParams(prompt=PROMPT, seed=1, steps=steps, width=size, height=size)
    results = {}

    def image(name):
        def fn():
            results[name] = engines[name].generate(params)

        return fn

    image_ms = time_interleaved(
        {"torch_image": image("torch"), "ort_image": image("ort")}, images, warmup=1, best=best_ms
    )
    assert results["ort"].backend == "onnx", results["ort"].fallback_reason
    diff = float(
        np.abs(
            np.asarray(results["ort"].image, dtype=np.float32) - np.asarray(results["torch"].image, dtype=np.float32)
        ).mean()
        / 255
    )

    def heatmap(name):
        res = results[name]
        return lambda: res.maps.word_heatmap(res.word_tokens, WORD)

    heat_ms = time_interleaved({"torch_heatmap": heatmap("torch"), "ort_heatmap": heatmap("ort")}, max(calls, 5))

    # the side graphs alone, against their torch modules (the ORT engine runs them in ORT)
    ids = torch.tensor([results["torch"].word_tokens.input_ids])
    latent = torch.randn(1, components.latent_channels, size // f, size // f, generator=g)
    part_ms = {}
    export_dir = onnx_runner.export_dir
    te, vd = OnnxPart(export_dir, "text_encoder"), OnnxPart(export_dir, "vae_decoder")
    with torch.no_grad():
        part_ms = time_interleaved(
            {
                "torch_text_encoder": lambda: components.text_encoder(ids),
                "ort_text_encoder": lambda: te(ids),
                "torch_vae_decoder": lambda: components.vae.decode(latent, return_dict=False),
                "ort_vae_decoder": lambda: vd(latent),
            },
            max(5, calls // 2),
        )

    out = {
        "machine": machine_info(threads),
        "model": str(folder),
        "model_note": note,
        "latent": [size // f, size // f],
        "steps": steps,
        "export_s": round(export_s, 2),
        "median_ms": {k: round(v, 3) for k, v in {**unet_ms, **loop_ms, **image_ms, **heat_ms, **part_ms}.items()},
        "ort_vs_torch_unet_maps_on": round(unet_ms["torch_maps_on"] / unet_ms["ort_maps_on"], 3),
        "ort_vs_torch_unet_maps_off": round(unet_ms["torch_maps_off"] / unet_ms["ort_maps_off"], 3),
        "ort_vs_torch_image": round(image_ms["torch_image"] / image_ms["ort_image"], 3),
        "ort_maps_overhead": round(unet_ms["ort_maps_on"] / unet_ms["ort_maps_off"] - 1, 4),
        "ort_maps_overhead_loop": round(loop_ms["ort_maps_on_loop"] / loop_ms["ort_maps_off_loop"] - 1, 4),
        "best_ms": best_ms,
        "best_ratio_unet_maps_on": round(best_ms["torch_maps_on"] / best_ms["ort_maps_on"], 3),
        "best_ratio_image": round(best_ms["torch_image"] / best_ms["ort_image"], 3),
        "best_ort_maps_overhead": round(best_ms["ort_maps_on"] / best_ms["ort_maps_off"] - 1, 4),
        "torch_maps_overhead": round(unet_ms["torch_maps_on"] / unet_ms["torch_maps_off"] - 1, 4),
        "image_mean_abs_diff": round(diff, 6),
    }
    if experiments:
        progress("ORT settings experiments (UNet call, maps on) ...")
        variants = {}
        for level in ("disable", "basic", "extended", "all"):
            variants[f"opt={level}"] = OnnxUNetRunner(export_dir, optimization=level, threads=threads)
        variants["spinning on"] = OnnxUNetRunner(export_dir, spinning=True, threads=threads)
        if threads > 1:
            variants["threads=1"] = OnnxUNetRunner(export_dir, threads=1)
        out["experiments_ms"] = {
            k: round(v, 3)
            for k, v in time_interleaved(
                {"torch": unet(torch_runner, True), **{k: unet(r, True) for k, r in variants.items()}}, calls
            ).items()
        }
    for engine in engines.values():
        engine.close()
    return out


def print_table(r: dict) -> None:
    m = r["machine"]
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads (OMP_WAIT_POLICY {m['omp_wait_policy']}); "
        f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, python {m['python']}"
    )
    print(
        f"model: {r['model']} ({r['model_note']}); latent {r['latent'][0]}x{r['latent'][1]}, "
        f"{r['steps']} steps; export {r['export_s']} s"
    )
    ms = r["median_ms"]
    rows = [
        ("UNet call, maps on", "torch_maps_on", "ort_maps_on"),
        ("UNet call, maps off", "torch_maps_off", "ort_maps_off"),
        ("full image", "torch_image", "ort_image"),
        ("heatmap of one word", "torch_heatmap", "ort_heatmap"),
        ("text encoder", "torch_text_encoder", "ort_text_encoder"),
        ("VAE decoder", "torch_vae_decoder", "ort_vae_decoder"),
    ]
    print(f"| {'median ms':22s} | {'PyTorch':>9s} | {'ORT':>9s} | {'PyTorch/ORT':>11s} |")
    print(f"|{'-' * 24}|{'-' * 11}|{'-' * 11}|{'-' * 13}|")
    for label, a, b in rows:
        print(f"| {label:22s} | {ms[a]:9.2f} | {ms[b]:9.2f} | {ms[a] / ms[b]:10.2f}x |")
    print(
        f"fastest runs (least disturbed by other load): UNet maps on {r['best_ratio_unet_maps_on']:.2f}x, "
        f"image {r['best_ratio_image']:.2f}x, ORT maps-on overhead {r['best_ort_maps_overhead'] * 100:+.1f}%"
    )
    print(
        f"maps-on overhead: ORT {r['ort_maps_overhead'] * 100:+.1f}% (calls back to back, as in a generation: "
        f"{r['ort_maps_overhead_loop'] * 100:+.1f}%), PyTorch {r['torch_maps_overhead'] * 100:+.1f}%; "
        f"image mean abs diff ORT vs PyTorch {r['image_mean_abs_diff'] * 255:.3f}/255"
    )
    if "experiments_ms" in r:
        print(
            "ORT settings, UNet call with maps on (median ms): "
            + ", ".join(f"{k} {v:.2f}" for k, v in r["experiments_ms"].items())
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--model", default=None, help="diffusers folder (default: the built-in model)")
    parser.add_argument("--calls", type=int, default=20, help="timed UNet calls per row")
    parser.add_argument("--images", type=int, default=3, help="timed images per backend")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="threads for both backends (default: torch's)")
    parser.add_argument(
        "--experiments", action="store_true", help="also time ORT optimisation levels, spinning, threads"
    )
    args = parser.parse_args(argv)
    # Like ORT's allow_spinning=0: PyTorch's OpenMP threads otherwise busy-wait, and on a shared 2-core host that
    # made a 2-thread UNet call 3-5x slower. Must be set before OpenMP starts (no effect if torch already ran).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from engine.errors import AttuneError

    if min(args.calls, args.images, args.steps) < 1 or (args.threads is not None and args.threads < 1):
        print("error: --calls, --images, --steps and --threads must be at least 1", file=sys.stderr)
        return 2
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    try:
        result = run(
            args.model,
            calls=args.calls,
            images=args.images,
            steps=args.steps,
            threads=args.threads,
            experiments=args.experiments,
            progress=log,
        )
    except AttuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return machine.print_result(result, args.json, print_table)


if __name__ == "__main__":
    sys.exit(main())
