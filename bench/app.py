"""App benchmark: what a user of the deployed Streamlit app waits for, measured in a real browser.

    python -m bench.app [--json] [--model PATH] [--backend both|auto|torch|onnx] [--steps N] [--repeats N] [--port N]
                        (--steps: the model's default unless given)
                        [--ab NAME=VALUE --rounds N]

Rows:
- cold start: `streamlit run Home.py` spawned -> Home interactive ("Try the example" enabled: model loaded, backend ready);
- generate: click Generate on the Generate page -> the new image shown (median of --repeats clicks), on the browser's
  clock: from the click reaching the page to the new version's image loaded on it (polled every 10 ms;
  bench.live_app.wait_for_version_image). The wall time around Playwright's click and wait is kept as
  `generate_wall_s`. Until this was measured in the page, the row was the wall time around Playwright's expect(),
  which polls every 0.5 s and so added up to half a second;
- RSS of the server process after the first image, once idle (clicks are THINK_S apart, as a user's are: the engine
  hands an image's working memory back when idle) (Community Cloud's smallest tier has 690 MB; goal for the light
  runtime: 350 MB).
Each time row also gives the CPU seconds the server process used in it (user + system, all threads): on a busy host
the wall times grow with the load, the CPU seconds much less.

The image compute floor (bench.compute_floor: the FLOPs of one image ÷ a measured matmul peak) is printed beside the
click. `--ab NAME=VALUE` (e.g. ATTUNE_ORT_CFG_LANES=0) also runs each backend with that variable set, alternating
with the plain run for `--rounds` rounds, each in a fresh server: a before/after in one session on a shared host.

`--backend both` (the default) measures the light runtime (ATTUNE_BACKEND=onnx: no torch imported) and the PyTorch
runtime (ATTUNE_BACKEND=torch) one after the other in the same run, each in a fresh server.

Default model: the built-in models/tiny-scenes (ATTUNE_MODEL unset); --model points elsewhere. The browser is
Debian chromium (/usr/bin/chromium) driven by Playwright; it is launched before the timer starts.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import compute_floor, machine
from bench.live_app import (
    CHROMIUM, CLICK_STAMPS, free_port, launch_chromium, start_streamlit, stop_streamlit, wait_for_version_image,
    wait_until_up,
)

RSS_GOAL_MB = 350
THINK_S = 1.0  # between clicks, as a user looks at the image (longer than engine.pipeline.attune.RELEASE_IDLE_S)
TIER_MB = 690


def tree_rss_mb(pid: int) -> float:
    """Resident memory of the server and any children it started, in MB."""
    import psutil

    process = psutil.Process(pid)
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def server_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the server process has used so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def model_default_steps(model: str | None) -> int:
    """The steps a new image gets in the app: the model's default (engine.model.family, attune.json included)."""
    from engine.model.family import model_defaults
    from engine.model.loading import default_model_path

    return int(model_defaults(model or default_model_path()).steps)


def run(model: str | None, steps: int, repeats: int, port: int | None, backend: str = "auto",
        extra_env: dict | None = None) -> dict:
    from playwright.sync_api import expect, sync_playwright

    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = tempfile.mkdtemp(prefix="attune-bench-app-")
    load_before = [round(x, 2) for x in os.getloadavg()]
    env = dict(os.environ, ATTUNE_DATA_DIR=data_dir, ATTUNE_DEFAULT_STEPS=str(steps), ATTUNE_BACKEND=backend,
               PYTHONUNBUFFERED="1", **(extra_env or {}))
    if model:
        env["ATTUNE_MODEL"] = model
    else:
        env.pop("ATTUNE_MODEL", None)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        page = browser.new_page(viewport={"width": 1360, "height": 1200})
        page.add_init_script(CLICK_STAMPS)
        expect.set_options(timeout=180_000)  # a stuck step fails in 3 minutes instead of hanging
        log = open(Path(data_dir) / "streamlit.log", "w")
        started = time.perf_counter()
        server = start_streamlit(port, env, log)
        try:
            wait_until_up(url, server, Path(data_dir) / "streamlit.log", poll_s=0.05)
            server_up = time.perf_counter() - started
            server_up_cpu = server_cpu_s(server.pid)
            page.goto(url)
            expect(page.get_by_role("button", name="Try the example")).to_be_enabled()
            cold_start = time.perf_counter() - started
            cold_start_cpu = server_cpu_s(server.pid)
            backend = page.locator("[data-testid='stSidebar']").get_by_text("Backend:").inner_text()

            page.locator("[data-testid='stSidebarNav']").get_by_role("link", name="Generate", exact=True).click()
            button = page.get_by_role("button", name="Generate", exact=True)
            expect(button).to_be_enabled()
            times, wall_times, cpu_times, rss_first = [], [], [], None
            for number in range(1, repeats + 1):
                clicked, cpu_before = time.perf_counter(), server_cpu_s(server.pid)
                button.click()
                stamps = wait_for_version_image(page, number)
                wall_times.append(time.perf_counter() - clicked)
                times.append(stamps["shown"] - stamps["click"])
                cpu_times.append(server_cpu_s(server.pid) - cpu_before)
                time.sleep(THINK_S)  # a user looks at the image; the engine hands its memory back meanwhile
                if rss_first is None:
                    rss_first = tree_rss_mb(server.pid)
            rss_end = tree_rss_mb(server.pid)
            last_run = page.locator("[data-testid='stSidebar']").get_by_text("Last run:").inner_text()
        finally:
            stop_streamlit(server)
            log.close()
            browser.close()
    return {
        "machine": machine.machine_info(),
        "model": model or "built-in (models/tiny-scenes)",
        "steps": steps,
        "backend": last_run.replace("Last run:", "").strip() or backend,
        "server_up_s": round(server_up, 2),
        "cold_start_s": round(cold_start, 2),
        "generate_s": [round(t, 2) for t in times],
        "generate_median_s": round(statistics.median(times), 2),
        "generate_timing": "browser clock: click received -> new image loaded on the page",
        "generate_wall_s": [round(t, 2) for t in wall_times],
        "server_up_cpu_s": round(server_up_cpu, 2),
        "cold_start_cpu_s": round(cold_start_cpu, 2),
        "generate_cpu_s": [round(t, 2) for t in cpu_times],
        "generate_cpu_median_s": round(statistics.median(cpu_times), 2),
        "load_average_before": load_before,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        **({"env": extra_env} if extra_env else {}),
        "rss_after_first_image_mb": round(rss_first, 1),
        "rss_after_all_mb": round(rss_end, 1),
        "rss_goal_mb": RSS_GOAL_MB,
    }


def _cpu_note(result: dict, up_key: str, cold_key: str) -> str:
    if cold_key not in result:  # results saved before the CPU columns
        return ""
    return f"; server CPU {result[up_key]:.2f} s by then, {result[cold_key]:.2f} s at Home interactive"


def table(result: dict) -> str:
    if "runs" in result:
        parts = [table(run) for run in result["runs"].values()]
        if "ab_summary" in result:
            parts.append(ab_table(result["ab_summary"]))
        if "compute_floor" in result:
            parts.append(compute_floor.table(result["compute_floor"]))
        return "\n\n".join(parts)
    m = result["machine"]
    rows = [
        ("cold start → Home interactive", f"{result['cold_start_s']:.1f} s",
         f"server answers after {result['server_up_s']:.1f} s{_cpu_note(result, 'server_up_cpu_s', 'cold_start_cpu_s')}"),
        ("Generate click → image shown", f"{result['generate_median_s']:.2f} s",
         f"median of {len(result['generate_s'])}: {', '.join(f'{t:.2f}' for t in result['generate_s'])}"
         + (f" (browser clock; wall around Playwright's click and wait {statistics.median(result['generate_wall_s']):.2f} s)"
            if "generate_wall_s" in result else " (wall time around Playwright's expect, 0.5 s polls)")
         + (f"; server CPU {result['generate_cpu_median_s']:.2f} s" if "generate_cpu_median_s" in result else "")),
        ("RSS after the first image", f"{result['rss_after_first_image_mb']:.0f} MB",
         f"goal ≤ {result['rss_goal_mb']} MB: {'met' if result['rss_after_first_image_mb'] <= result['rss_goal_mb'] else 'NOT met'}"
         f"; {result['rss_after_all_mb']:.0f} MB after all"),
    ]
    lines = [f"Attune app benchmark · model {result['model']} · {result['steps']} steps · backend {result['backend']}"
             + (" · " + " ".join(f"{k}={v}" for k, v in result["env"].items()) if result.get("env") else ""),
             f"machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}"
             + (f", load average {result['load_average'][0]:.1f} at the end" if "load_average" in result else ""), "",
             "| measure | value | notes |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    if "compute_floor" in result:  # a single run's result (with "runs", table() adds it once at the end)
        lines += ["", compute_floor.table(result["compute_floor"])]
    return "\n".join(lines)


def ab_summary(runs: dict) -> dict:
    """Per variant (backend, with or without the --ab variable): every click of every round, and their medians."""
    variants: dict[str, dict] = {}
    for run_result in runs.values():
        name = run_result["variant"]
        v = variants.setdefault(name, {"generate_s": [], "generate_cpu_s": [], "load_average": []})
        v["generate_s"] += run_result["generate_s"]
        v["generate_cpu_s"] += run_result["generate_cpu_s"]
        v["load_average"].append(run_result["load_average"][0])
    for v in variants.values():
        v["generate_median_s"] = round(statistics.median(v["generate_s"]), 2)
        v["generate_cpu_median_s"] = round(statistics.median(v["generate_cpu_s"]), 2)
    return variants


def ab_table(summary: dict) -> str:
    lines = ["| variant (all rounds) | click → image, median | server CPU per click, median | clicks | load average |",
             "|---|---|---|---|---|"]
    for name, v in summary.items():
        lines.append(f"| {name} | {v['generate_median_s']:.2f} s | {v['generate_cpu_median_s']:.2f} s | "
                     f"{len(v['generate_s'])} | {', '.join(f'{x:.1f}' for x in v['load_average'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="diffusers folder (default: the built-in model)")
    parser.add_argument("--backend", default="both", choices=("both", "auto", "torch", "onnx"),
                        help="the app's ATTUNE_BACKEND (auto = ONNX when it can run); both: onnx, then torch")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps per image (default: the model's own default, as a user gets it)")
    parser.add_argument("--repeats", type=int, default=3, help="Generate clicks to time")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--ab", default=None, metavar="NAME=VALUE",
                        help="also run with this environment variable set, alternating with the plain run")
    parser.add_argument("--rounds", type=int, default=1, help="with --ab: rounds of (plain, with NAME=VALUE)")
    parser.add_argument("--no-floor", action="store_true", help="skip the image compute floor")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = model_default_steps(args.model)
    if not Path(CHROMIUM).exists():
        print(f"bench.app needs Debian chromium at {CHROMIUM} (apt-get install chromium).", file=sys.stderr)
        return 2
    backends = ("onnx", "torch") if args.backend == "both" else (args.backend,)
    command = "python -m bench.app " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.ab:
        name, _, value = args.ab.partition("=")
        if not name or not _:
            parser.error("--ab takes NAME=VALUE")
        runs = {}
        for number in range(1, max(1, args.rounds) + 1):
            for backend in backends:
                for extra in ({}, {name: value}):
                    variant = backend + (f" {name}={value}" if extra else "")
                    r = run(args.model, args.steps, max(1, args.repeats), args.port, backend, extra)
                    runs[f"{variant} (round {number})"] = {**r, "variant": variant, "round": number}
        result = {"machine": next(iter(runs.values()))["machine"], "runs": runs, "ab_summary": ab_summary(runs),
                  "command": command}
    elif args.backend == "both":
        runs = {b: run(args.model, args.steps, max(1, args.repeats), args.port, b) for b in backends}
        result = {"machine": runs["onnx"]["machine"], "runs": runs, "command": command}
    else:
        result = run(args.model, args.steps, max(1, args.repeats), args.port, args.backend)
        result["command"] = command
    if not args.no_floor:  # after the servers: nothing else of ours runs while the peak is measured
        result["compute_floor"] = compute_floor.compute_floor(args.model, args.steps)
    return machine.print_result(result, args.json, lambda r: print(table(r)), indent=2)


if __name__ == "__main__":
    sys.exit(main())
