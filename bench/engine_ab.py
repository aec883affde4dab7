"""The engine's click, A/B: images with and without an engine setting, alternating in one process (light runtime).

    python -m bench.engine_ab [--json] [--images N] [--steps N] [--setting NAME=VALUE | --params K=V,K=V]

Two engines on the built-in model (ONNX Runtime, no torch): one with $NAME=VALUE (default ATTUNE_ORT_CFG_LANES=0,
the whole CFG call) and one without. Their images alternate, so load changes on a shared host hit both alike. Per
image: wall time, the process's CPU seconds, and the critical path of the UNet calls. Reports the median and the
best (least disturbed) wall time, and checks that both give the same image and maps, bit for bit.
With --params (e.g. steps=14,scheduler=dpm++) the A side is the same engine's defaults with those generate
parameters instead of an environment setting (images then differ by design; no bit check).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

import numpy as np

from bench import machine

PROMPT = "a painting of a wolf sitting in front of the full moon, night sky"  # DESIGN §1, seed 7


def _process_cpu() -> float:
    times = os.times()
    return times.user + times.system


def run(images: int, steps: int, setting: str, overrides: dict | None = None) -> dict:
    from engine.pipeline.attune import Attune
    from engine.pipeline.params import GenerateParams

    name, _, value = setting.partition("=")
    before = os.environ.get(name)

    def switch(on: bool) -> None:  # the variable is read at each call as well as when the engine is made
        if on:
            os.environ[name] = value
        elif before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before

    base = GenerateParams(PROMPT, seed=7, steps=steps)
    engines = {}
    if overrides:  # A: other generate parameters, same environment
        label = ",".join(f"{k}={v}" for k, v in overrides.items())
        engines[label] = (Attune(backend="onnx"), None, dataclasses.replace(base, **overrides))
        engines[f"steps={steps}"] = (Attune(backend="onnx"), None, base)
    else:
        for label, on in ((f"{name}={value}", True), ("default", False)):
            switch(on)
            engines[label] = (Attune(backend="onnx"), on, base)
    first = {}
    for label, (engine, on, params) in engines.items():  # warm-up image, and the bit-identity check
        switch(bool(on))
        first[label] = engine.generate(params)
    a, b = first.values()
    identical = None if overrides else bool(
        np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.maps._sums.keys() == b.maps._sums.keys()
        and all(np.array_equal(a.maps._sums[k], b.maps._sums[k]) for k in a.maps._sums))
    samples = {label: {"wall_s": [], "cpu_s": [], "engine_total_s": []} for label in engines}
    for _ in range(images):
        for label, (engine, on, params) in engines.items():
            switch(bool(on))
            wall, cpu = time.perf_counter(), _process_cpu()
            result = engine.generate(params)
            samples[label]["wall_s"].append(round(time.perf_counter() - wall, 4))
            samples[label]["cpu_s"].append(round(_process_cpu() - cpu, 3))
            samples[label]["engine_total_s"].append(round(result.timings["total"], 4))
    switch(False)
    summary = {label: {"wall_median_s": round(statistics.median(s["wall_s"]), 3), "wall_best_s": min(s["wall_s"]),
                       "cpu_median_s": round(statistics.median(s["cpu_s"]), 3), **s}
               for label, s in samples.items()}
    for engine, _, _ in engines.values():
        engine.close()
    return {"command": "python -m bench.engine_ab " + " ".join(sys.argv[1:]), "machine": machine.machine_info(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "steps": steps, "images": images,
            "setting": setting if not overrides else None, "params": overrides or None, "identical_image_and_maps": identical, "variants": summary}


def table(result: dict) -> str:
    m = result["machine"]
    lines = [f"Engine A/B · {result['steps']} steps · {result['images']} images each, alternating · {m['cpu']}, "
             f"{m['cores']} cores, load average {result['load_average'][0]:.1f} at the end · same image and maps: "
             f"{ {True: 'yes', False: 'NO', None: 'n/a'}[result['identical_image_and_maps']]}", "",
             "| variant | wall median | wall best | CPU s per image (median) |", "|---|---|---|---|"]
    for label, v in result["variants"].items():
        lines.append(f"| {label} | {v['wall_median_s']:.3f} s | {v['wall_best_s']:.3f} s | {v['cpu_median_s']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--setting", default="ATTUNE_ORT_CFG_LANES=0", metavar="NAME=VALUE")
    parser.add_argument("--params", default=None, metavar="K=V,K=V",
                        help="A side: these generate parameters (steps, scheduler, guidance) instead of --setting")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if "=" not in args.setting:
        parser.error("--setting takes NAME=VALUE")
    overrides = {}
    for pair in (args.params or "").split(","):
        key, _, value = pair.strip().partition("=")
        if key not in ("steps", "scheduler", "guidance") or not value:
            if pair.strip():
                parser.error(f"--params takes steps=N, scheduler=NAME, guidance=G; got '{pair}'")
            continue
        overrides[key] = int(value) if key == "steps" else float(value) if key == "guidance" else value
    result = run(max(1, args.images), args.steps, args.setting, overrides)
    return machine.print_result(result, args.json, lambda r: print(table(r)), indent=1)


if __name__ == "__main__":
    sys.exit(main())
