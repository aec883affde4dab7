"""Load benchmark: N simulated participants at once, through the serial engine, the batched engine and Ray Serve.

    python -m bench.load --participants 8 [--json] [--steps 10] [--size 128] [--modes serial,batched,serve]
                         [--rounds 2] [--backend auto|torch|onnx]

Each participant (a thread with its own Studio, all sharing one log) runs a scripted session:
generate -> inspect (maps + a word's heatmap and mask) -> reweight -> inpaint (the word's mask) -> compare (the two
images' difference). Modes, side by side in one run, all on one backend (the engine's default, auto: ONNX Runtime
where the model ships its graphs; "backend_used" says which ran) with the built-in model:
- serial: one engine, calls take turns (the engine's lock, as before batching);
- batched: one engine with engine.runners.batching (concurrent UNet steps stacked);
- serve: a local Ray Serve deployment (engine.remote.server, one replica with all cores), participants send HTTP requests
  and keep their own Studio (files and rows here).
A single participant alone on the serial engine gives the reference Generate latency.

Reported: throughput (images/s: generate + reweight + inpaint), CPU seconds per image (this process and its child
processes, Ray's included: on a shared machine wall time mostly measures what the other jobs left over), p50/p95
latency per action, and the log check (rows lost or duplicated, images missing). --rounds N repeats the single user
and every mode N times, the order reversed every other round, and reports the median of the rounds' ratios: modes
run one after another, so a machine whose load drifts would otherwise favour the later ones.
OMP_WAIT_POLICY=PASSIVE is set before torch loads: on a loaded 2-core machine, OpenMP's spinning threads made every
image ~50x slower (measured here).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from bench import machine  # noqa: E402

ACTIONS = ("generate", "inspect", "reweight", "inpaint", "compare")
IMAGE_ACTIONS = ("generate", "reweight", "inpaint")
PROMPT = "a house by the lake under the full moon"
WORD = "house"
GOALS = {"batched_vs_serial_throughput": 1.5, "p95_generate_vs_single": 2.5, "lost_rows": 0}


def session(studio, seed: int, steps: int, size: int, record) -> None:
    """One participant's scripted session; record(action, seconds) after each step."""
    from engine.pipeline.params import GenerateParams

    def timed(action, fn):
        t0 = time.perf_counter()
        out = fn()
        record(action, time.perf_counter() - t0)
        return out

    params = GenerateParams(prompt=PROMPT, seed=seed, steps=steps, width=size, height=size)
    first = timed("generate", lambda: studio.generate(params))

    def inspect():
        maps, tokens = studio.maps(first), studio.word_tokens(first)
        maps.word_heatmap(tokens, WORD)
        return maps.mask_from_word(tokens, WORD)

    mask = timed("inspect", inspect)
    if mask.shape != (size, size) or not mask.any() or mask.all():
        mask = np.zeros((size, size), dtype=bool)
        mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = True
    reweighted = timed("reweight", lambda: studio.reweight({WORD: 1.8}, "score"))
    timed("inpaint", lambda: studio.inpaint(mask, "a tree", parent=reweighted))

    def compare():
        a = np.asarray(studio.image(first), dtype=np.int16)
        b = np.asarray(studio.image(studio.current), dtype=np.int16)
        return float(np.abs(a - b).mean())

    timed("compare", compare)


def cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) used so far by this process and each live descendant (a Ray Serve replica, its
    proxy...), by pid, from /proc; {} where there is no /proc. Lets a mode be judged by CPU time per image, which a
    busy machine distorts far less than wall time."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    parents, used = {}, {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        used[pid] = (int(fields[11]) + int(fields[12])) / tick
    mine, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in mine]
        mine.update(children)
        frontier += children
    return {pid: used[pid] for pid in mine if pid in used}


def run_mode(engine, participants: int, steps: int, size: int, folder: Path, seed0: int = 0) -> dict:
    from engine.study.log import StudyLog
    from engine.study.studio import Studio

    log = StudyLog(folder / "attune.db")
    studios = [Studio(engine, log, folder / f"p{i}", participant_id=f"p{i}") for i in range(participants)]
    times: dict[str, list[float]] = {a: [] for a in ACTIONS}
    errors: list[str] = []
    lock = threading.Lock()

    def record(action, seconds):
        with lock:
            times[action].append(seconds)

    def participant(i):
        try:
            session(studios[i], seed0 + i, steps, size, record)
        except Exception as error:  # counted and reported; the others go on
            with lock:
                errors.append(f"p{i}: {type(error).__name__}: {str(error)[:200]}")

    threads = [threading.Thread(target=participant, args=(i,)) for i in range(participants)]
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu1 = cpu_seconds()
    cpu = sum(seconds - cpu0.get(pid, 0.0) for pid, seconds in cpu1.items())
    images = sum(len(times[a]) for a in IMAGE_ACTIONS)
    return {"wall_s": round(wall, 3), "images": images, "throughput_images_per_s": round(images / wall, 4),
            "cpu_s": round(cpu, 2), "images_per_cpu_s": round(images / cpu, 4) if cpu > 0 else None,
            "cores_used": round(cpu / wall, 2),
            "latency_s": {a: {"p50": _pct(times[a], 50), "p95": _pct(times[a], 95), "n": len(times[a])}
                          for a in ACTIONS},
            "times_s": {a: [round(t, 4) for t in times[a]] for a in ACTIONS},
            "errors": errors, **check_log(log, studios, expected=participants * len(IMAGE_ACTIONS))}


def _pct(values, q) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


def check_log(log, studios, expected: int) -> dict:
    """Rows vs what the sessions made: lost = expected rows missing; duplicated = repeated ids or image paths;
    lost images = rows whose image file is missing; stray images = PNGs no row points to."""
    rows = log.versions()
    ids = [v.id for v in rows]
    paths = [v.image_path for v in rows]
    on_disk = {str(p.resolve()) for s in studios for p in Path(s.out_dir).glob("*.png") if ".mask." not in p.name}
    return {"rows": len(rows), "lost_rows": max(0, expected - len(set(ids))),
            "duplicated_rows": (len(ids) - len(set(ids))) + (len(paths) - len(set(paths))),
            "lost_images": sum(not Path(p).is_file() for p in paths),
            "stray_images": len(on_disk - {str(Path(p).resolve()) for p in paths})}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_engine(participants, window_ms, threads, backend="torch"):
    """A local Ray Serve deployment (one replica with all cores) and a RemoteEngine for it; yields (engine, startup s)."""
    import ray
    from ray import serve

    from engine.remote.client import RemoteEngine
    from engine.remote.server import build_app

    cores = os.cpu_count() or 2
    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"num_cpus": cores, "threads": threads, "window_ms": window_ms, "backend": backend,
                             "max_batch": max(1, participants)}), name="attune", route_prefix="/")
        engine = RemoteEngine(f"http://127.0.0.1:{port}", timeout=600)
        engine.info
        yield engine, time.perf_counter() - t0
    finally:
        serve.shutdown()
        ray.shutdown()


def merge_runs(runs: list[dict]) -> dict:
    """One mode's rounds as one result: sums, pooled latencies, throughput over the summed wall time, and each
    round's throughput."""
    wall, images = sum(r["wall_s"] for r in runs), sum(r["images"] for r in runs)
    cpu = sum(r["cpu_s"] for r in runs)
    times = {a: [t for r in runs for t in r["times_s"][a]] for a in ACTIONS}
    out = {"wall_s": round(wall, 3), "images": images, "throughput_images_per_s": round(images / wall, 4),
           "cpu_s": round(cpu, 2), "images_per_cpu_s": round(images / cpu, 4) if cpu > 0 else None,
           "cores_used": round(cpu / wall, 2),
           "latency_s": {a: {"p50": _pct(times[a], 50), "p95": _pct(times[a], 95), "n": len(times[a])}
                         for a in ACTIONS},
           "errors": [e for r in runs for e in r["errors"]]}
    for name in ("rows", "lost_rows", "duplicated_rows", "lost_images", "stray_images"):
        out[name] = sum(r[name] for r in runs)
    if len(runs) > 1:
        out["rounds_throughput"] = [r["throughput_images_per_s"] for r in runs]
    return out


def run(participants: int, steps: int, size: int, modes: list[str], window_ms: float, threads: int,
        rounds: int = 1, backend: str = "auto") -> dict:
    """Every round runs a single user, then each mode (the order reversed every other round, so a machine whose
    load drifts does not favour one mode); ratios are the median of the rounds' own ratios."""
    import torch

    from engine.pipeline.attune import Attune

    torch.set_num_threads(threads)
    rounds = max(1, int(rounds))
    result = {"participants": participants, "steps": steps, "size": size, "window_ms": window_ms,
              "threads": threads, "rounds": rounds, "backend": backend, "model": "built-in tiny-scenes", "modes": {}}
    runs: dict[str, list[dict]] = {name: [] for name in ["single_user", *modes]}
    skipped: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="attune-load-") as tmp, contextlib.ExitStack() as stack:
        tmp = Path(tmp)
        engines = {"serial": Attune(backend=backend)}
        stack.callback(engines["serial"].close)
        result["backend_used"] = engines["serial"].backend_name
        run_mode(engines["serial"], 1, 2, size, tmp / "warmup")  # first-call costs out of the way
        if "batched" in modes:
            engines["batched"] = Attune(backend=backend, batch_window_ms=window_ms)
            stack.callback(engines["batched"].close)
            result["batching_exact"] = bool(engines["batched"].batcher.stacking)
            run_mode(engines["batched"], 1, 2, size, tmp / "warmup-batched")
        if "serve" in modes:
            try:
                engines["serve"], startup = stack.enter_context(
                    served_engine(participants, window_ms, threads, backend))
                result["serve_startup_s"] = round(startup, 2)
            except ImportError as error:
                skipped["serve"] = {"skipped": f"Ray Serve is not installed ({error.name})"}
        for n in range(rounds):
            order = [m for m in (modes if n % 2 == 0 else modes[::-1]) if m in engines]
            runs["single_user"].append(run_mode(engines["serial"], 1, steps, size, tmp / f"single{n}", seed0=1000))
            for name in order:
                runs[name].append(run_mode(engines[name], participants, steps, size, tmp / f"{name}{n}"))
        if "batched" in engines:
            result["batcher_stats"] = dict(engines["batched"].batcher.stats)
    single = merge_runs(runs.pop("single_user"))
    result["single_user"] = single
    for name in modes:
        result["modes"][name] = merge_runs(runs[name]) if runs.get(name) else skipped.get(name, {"skipped": "?"})
    single_gen = single["latency_s"]["generate"]["p50"]
    m = result["modes"]

    def ratio(a, b):
        return round(a / b, 3) if a and b else None

    def median_ratio(name, key):  # each round's ratio to serial in that round, then the median
        if not runs.get(name) or not runs.get("serial"):
            return None
        values = [ratio(a[key], b[key]) for a, b in zip(runs[name], runs["serial"])]
        values = [v for v in values if v is not None]
        return round(float(np.median(values)), 3) if values else None

    if "serial" in m:
        for name in ("batched", "serve"):
            result[f"{name}_vs_serial_throughput"] = median_ratio(name, "throughput_images_per_s")
            result[f"{name}_vs_serial_images_per_cpu_s"] = median_ratio(name, "images_per_cpu_s")
    result["single_user_generate_s"] = single_gen
    for name, mode in m.items():
        if "latency_s" in mode:
            mode["p95_generate_vs_single"] = ratio(mode["latency_s"]["generate"]["p95"], single_gen)
    counted = [mode for mode in m.values() if "rows" in mode]
    result["lost_rows"] = sum(mode["lost_rows"] for mode in counted)
    result["duplicated_rows"] = sum(mode["duplicated_rows"] for mode in counted)
    result["lost_images"] = sum(mode["lost_images"] for mode in counted)
    result["errors"] = sum(len(mode["errors"]) for mode in counted)
    batched = m.get("batched", {})
    result["goals"] = {
        "batched_vs_serial_throughput >= 1.5": (result.get("batched_vs_serial_throughput") or 0) >= 1.5,
        "batched p95 generate <= 2.5x single": (batched.get("p95_generate_vs_single") or 1e9) <= 2.5,
        "lost_rows == 0": result["lost_rows"] == 0,
    }
    return result


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent.parent).stdout.strip()
    except OSError:
        return ""


def print_table(result: dict) -> None:
    print(f"{result['participants']} participants, {result['size']}px, {result['steps']} steps, "
          f"{result['threads']} threads, window {result['window_ms']} ms")
    print(f"single user: generate {result['single_user_generate_s']} s")
    header = f"{'mode':8} {'img/s':>7} {'img/cpu-s':>9} {'cores':>5} {'wall s':>7} " + \
        " ".join(f"{a + ' p50/p95':>20}" for a in ACTIONS)
    print(header + "  lost/dup rows, lost imgs, errors")
    for name, mode in result["modes"].items():
        if "latency_s" not in mode:
            print(f"{name:8} {mode}")
            continue
        lat = " ".join(f"{_fmt(mode['latency_s'][a]):>20}" for a in ACTIONS)
        print(f"{name:8} {mode['throughput_images_per_s']:7.3f} {mode['images_per_cpu_s'] or 0:9.3f} "
              f"{mode['cores_used']:5.2f} {mode['wall_s']:7.1f} {lat}  "
              f"{mode['lost_rows']}/{mode['duplicated_rows']}, {mode['lost_images']}, {len(mode['errors'])}")
    print(f"vs serial (median of {result.get('rounds', 1)} round(s)): batched throughput "
          f"{result.get('batched_vs_serial_throughput')}, per CPU-second {result.get('batched_vs_serial_images_per_cpu_s')}"
          f";  serve throughput {result.get('serve_vs_serial_throughput')}, per CPU-second "
          f"{result.get('serve_vs_serial_images_per_cpu_s')}")
    for goal, met in result["goals"].items():
        print(f"  {'met ' if met else 'MISS'} {goal}")


def _fmt(lat: dict) -> str:
    return f"{lat['p50']:.2f}/{lat['p95']:.2f}" if lat["p50"] is not None else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--modes", default="serial,batched,serve")
    parser.add_argument("--window-ms", type=float, default=5.0)
    parser.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto")  # as Attune()
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat every mode this many times, in alternating order (a busy machine's drift)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    load_before = list(os.getloadavg())
    result = run(args.participants, args.steps, args.size, modes, args.window_ms, args.threads, args.rounds,
                 args.backend)
    result = {"command": "python -m bench.load " + " ".join(argv if argv is not None else sys.argv[1:]),
              "commit": _commit(), "machine": machine.machine_info(
                  omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), mkl_cbwr=os.environ.get("MKL_CBWR"),
                  load_average_before=load_before, load_average=list(os.getloadavg())), **result}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return machine.print_result(result, args.json, print_table)


if __name__ == "__main__":
    raise SystemExit(main())
