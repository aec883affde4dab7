"""Server-side CPU of the app's first page and of a Generate click, without a browser (Streamlit's AppTest).

    python -m bench.app_cpu [--json] [--rounds N] [--repeats N] [--backend onnx|torch|auto] [--repo PATH]

Each round is a fresh Python process (a cold server): import streamlit, run Home (the engine loads), click
"Try the example" (the first image), open Generate, click Generate --repeats times. For each step it reports:
- `script_cpu_s`: CPU seconds of the page's script thread: what a user waits for, beside the browser;
- `job_cpu_s`: CPU seconds of the generation's worker thread (the engine's Python side; ORT's own pool threads
  are counted in `process_cpu_s` only);
- `process_cpu_s`: the whole process (all threads, including work started in the background) and `wall_s`.
CPU seconds depend much less on other jobs than wall times, so this compares two versions of the app on a busy
host. `python -m bench.app` measures the real thing (server + chromium) in wall time.

`--repo PATH` runs another checkout of Attune (e.g. an older commit extracted with `git archive`) with this
script, for before/after numbers. The built-in model and ATTUNE_BACKEND=onnx (the light runtime) by default.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import machine

REPO = Path(__file__).resolve().parent.parent
STEPS = ("home", "example", "generate_page", "generate")


def _button(at, label: str):
    matches = [b for b in at.button if b.label == label]
    if not matches:
        raise RuntimeError(f"no button {label!r}; have {[b.label for b in at.button]}")
    return matches[0]


def measure(repo: Path, repeats: int) -> dict:
    """One cold round in this process (the child side of `run`)."""
    here = Path(__file__).resolve().parent  # run as a script: bench/ is first on sys.path, and must not shadow
    sys.path[:] = [str(repo)] + [p for p in sys.path if Path(p or ".").resolve() != here]
    from streamlit.runtime.scriptrunner import script_runner
    from streamlit.testing.v1 import AppTest

    from ui import jobs

    threads = {"script": 0.0, "job": 0.0}

    def timed(function, key):  # CPU of the thread that runs `function`
        def wrapper(*args, **kwargs):
            start = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                threads[key] += time.thread_time() - start
        return wrapper

    # AppTest runs each page on a script thread, and a generation runs on a ui.jobs worker thread
    script_runner.ScriptRunner._run_script = timed(script_runner.ScriptRunner._run_script, "script")
    jobs.Job._run = timed(jobs.Job._run, "job")

    result: dict = {}
    page_imports: set[str] = set()

    class RecordPageImports:  # which heavy packages the page itself imports (not the app's warm-up thread)
        def find_spec(self, name, path=None, target=None):
            if "." not in name and threading.current_thread().name != "attune-warm-imports":
                page_imports.add(name)
            return None

    sys.meta_path.insert(0, RecordPageImports())
    at = AppTest.from_file(str(repo / "Home.py"), default_timeout=600)

    def step(name: str, action) -> None:
        threads.update(script=0.0, job=0.0)
        cpu, wall = time.process_time(), time.perf_counter()
        action()
        if at.exception:
            raise RuntimeError(f"{name}: {at.exception}")
        result.setdefault(name, []).append({
            "script_cpu_s": round(threads["script"], 3), "job_cpu_s": round(threads["job"], 3),
            "process_cpu_s": round(time.process_time() - cpu, 3), "wall_s": round(time.perf_counter() - wall, 3),
        })

    step("home", at.run)
    if _button(at, "Try the example").disabled:
        raise RuntimeError("'Try the example' is disabled after the first run: the model did not load")
    home_modules = sorted(page_imports)
    step("example", lambda: _button(at, "Try the example").click().run())
    step("generate_page", lambda: at.switch_page("pages/1_Generate.py").run())
    for _ in range(repeats):
        step("generate", lambda: _button(at, "Generate").click().run())
    result["home_imports"] = [m for m in home_modules if m in ("pandas", "pyarrow", "plotly", "scipy", "torch",
                                                               "diffusers", "transformers", "onnxruntime", "numpy")]
    return result


def run(repo: Path, rounds: int, repeats: int, backend: str) -> dict:
    env = dict(os.environ, ATTUNE_BACKEND=backend, ATTUNE_DEFAULT_STEPS="20", PYTHONPATH=str(REPO))
    env.pop("ATTUNE_MODEL", None)
    samples = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="attune-bench-cpu-") as data_dir:
            env["ATTUNE_DATA_DIR"] = data_dir
            done = subprocess.run([sys.executable, __file__, "--child", "--repo", str(repo),
                                   "--repeats", str(repeats)], env=env, cwd=repo, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"bench.app_cpu child failed:\n{done.stderr[-3000:]}")
        samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
    medians = {}
    for name in STEPS:
        rows = [row for sample in samples for row in sample[name]]
        medians[name] = {key: round(statistics.median(row[key] for row in rows), 3) for key in rows[0]}
    return {
        "command": "python -m bench.app_cpu " + " ".join(sys.argv[1:]),
        "machine": machine.machine_info(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "repo": str(repo),
        "commit": _commit(repo),
        "backend": backend,
        "steps": 20,
        "rounds": rounds,
        "median": medians,
        "home_imports": samples[-1]["home_imports"],
        "samples": samples,
    }


def _commit(repo: Path) -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def table(result: dict) -> str:
    m = result["machine"]
    lines = [f"Attune app, server-side CPU (AppTest, no browser) · {result['repo']} ({result['commit'] or 'no git'}) · "
             f"backend {result['backend']} · medians of {result['rounds']} cold rounds",
             f"machine: {m['cpu']}, {m['cores']} cores, load average {result['load_average'][0]:.1f}", "",
             "| step | script thread CPU s | worker thread CPU s | process CPU s | wall s |", "|---|---|---|---|---|"]
    labels = {"home": "Home, cold (engine loads)", "example": "Try the example (first image)",
              "generate_page": "open Generate", "generate": "Generate click (20 steps)"}
    for name in STEPS:
        row = result["median"][name]
        lines.append(f"| {labels[name]} | {row['script_cpu_s']:.3f} | {row['job_cpu_s']:.3f} | "
                     f"{row['process_cpu_s']:.3f} | {row['wall_s']:.2f} |")
    lines += ["", "Imported by the first page's run: " + (", ".join(result["home_imports"]) or "none of the heavy packages")]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="cold processes to run (medians are reported)")
    parser.add_argument("--repeats", type=int, default=2, help="Generate clicks per round")
    parser.add_argument("--backend", default="onnx", choices=("onnx", "torch", "auto"))
    parser.add_argument("--repo", type=Path, default=REPO, help="the Attune checkout to measure (default: this one)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.repo.resolve(), max(1, args.repeats))))
        return 0
    result = run(args.repo.resolve(), max(1, args.rounds), max(1, args.repeats), args.backend)
    return machine.print_result(result, args.json, lambda r: print(table(r)), indent=2)


if __name__ == "__main__":
    sys.exit(main())
