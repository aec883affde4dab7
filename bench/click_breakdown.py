"""Where the Generate click's time goes, in the real app: a traced server, a real browser, one timeline per click.

    python -m bench.click_breakdown [--json] [--repeats N] [--steps N] [--backend onnx|torch|auto]

The server is `streamlit run Home.py` with time stamps (wall clock) around the functions on the Generate path
(script reruns, the click's callback, the engine, the version's files and log row, the version card, the sidebar
and the strip, st.image's encoding). The browser records, with its own clock, when the click was dispatched, every
websocket message, when the new version's caption and image were on the page, and the media download. Both
clocks are this machine's, so the timeline is exact to about a millisecond, unlike Playwright's expect (it polls
every 0.5 s after the first 0.27 s, which bench.app's wall times include).

Prints a table of phases (median over the clicks) and, with --json, the raw events. `ATTUNE_CLICK_EXPERIMENT`
(words, any of): `no_progress` never redraws the progress bar, `hide_status` hides Streamlit's running indicator,
`no_word_cards` leaves the word cards out,
to see what each costs.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import machine

# (module, attribute path, label): wrapped with wall-clock stamps in the traced server
TRACED = [
    ("streamlit.runtime.scriptrunner.script_runner", "ScriptRunner._run_script", "rerun"),
    ("ui.actions", "submit", "callback"),
    ("ui.actions", "serve", "serve"),
    ("ui.jobs", "Job._run", "job"),
    ("ui.jobs", "follow", "follow"),
    ("ui.page", "setup", "page_setup"),
    ("ui.page", "finish", "page_finish"),
    ("ui.page", "version_strip", "strip"),
    ("ui.sidebar", "sidebar", "sidebar"),
    ("ui.cards", "version_card", "version_card"),
    ("ui.prompt_assist", "rating", "rating"),
    ("ui.prompt_assist", "word_cards", "word_cards"),
    ("ui.prompt_assist", "suggest_panel", "suggest_panel"),
    ("engine.pipeline.attune", "Attune.generate", "engine"),
    ("engine.runners.onnx", "OnnxUNetRunner._run_lanes", "unet_lanes"),  # a CFG call as two lanes (raw events only)
    ("engine.runners.onnx", "OnnxUNetRunner._run_whole", "unet_whole"),  # a call whole
    ("engine.study.studio", "Studio._commit", "commit"),
    ("engine.study.studio", "png_bytes", "png_encode"),
    ("engine.study.studio", "atomic_write_bytes", "file_write"),
    ("engine.attention.maps", "AttentionMaps.save", "maps_save"),
    ("engine.study.log", "StudyLog.add_version", "log_version"),
    ("engine.study.log", "StudyLog.add_event", "log_event"),
    ("streamlit.elements.lib.image_utils", "image_to_url", "st_image"),
]

BROWSER_PROBE = """
window.__attune = {clicks: [], ws: [], long: []};
new PerformanceObserver(list => list.getEntries().forEach(e => window.__attune.long.push(
    [performance.timeOrigin + e.startTime, e.duration]))).observe({type: 'longtask', buffered: true});
document.addEventListener('click', e => {
  if (e.target.closest && e.target.closest('button')) window.__attune.clicks.push(Date.now());
}, true);
const NativeSocket = window.WebSocket;
window.WebSocket = function (...args) {
  const socket = new NativeSocket(...args);
  socket.addEventListener('message', m => window.__attune.ws.push(
      [Date.now(), 'in', m.data.byteLength || m.data.size || m.data.length || 0]));
  const send = socket.send.bind(socket);
  socket.send = data => { window.__attune.ws.push([Date.now(), 'out', data.byteLength || data.length || 0]); send(data); };
  return socket;
};
window.WebSocket.prototype = NativeSocket.prototype;
Object.assign(window.WebSocket, NativeSocket);
"""


# ---------------------------------------------------------------------------------------------------- server side

def _install(trace_path: str) -> None:
    out = open(trace_path, "a", buffering=1)
    lock = threading.Lock()

    def wrap(function, label):
        @functools.wraps(function)
        def traced(*args, **kwargs):
            start, cpu = time.time(), time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                row = {"label": label, "start": start, "end": time.time(), "cpu": time.thread_time() - cpu,
                       "thread": threading.current_thread().name}
                with lock:
                    out.write(json.dumps(row) + "\n")
        return traced

    for module_name, attribute, label in TRACED:
        try:
            owner = importlib.import_module(module_name)
        except ImportError:
            continue
        *parents, name = attribute.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        if hasattr(owner, name):
            setattr(owner, name, wrap(getattr(owner, name), label))


def serve(trace_path: str, streamlit_args: list[str]) -> None:
    """The traced server: patch, then run Streamlit's own command line in this process."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    _install(trace_path)
    experiment = os.environ.get("ATTUNE_CLICK_EXPERIMENT", "")
    if "no_progress" in experiment:  # the bar is drawn once and never updated
        from ui import jobs
        jobs.status = lambda label, *args: (0.0, f"{label}: preparing")
    if "no_word_cards" in experiment:  # the Generate page without its word cards (what they cost the click)
        from ui import prompt_assist
        prompt_assist.word_cards = lambda page: None
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", "Home.py", *streamlit_args]
    cli.main()


# ---------------------------------------------------------------------------------------------------- browser side

def run(steps: int, repeats: int, backend: str) -> dict:
    import subprocess

    from playwright.sync_api import expect, sync_playwright

    from bench.live_app import (CLICK_STAMPS, REPO, free_port, launch_chromium, stop_streamlit, wait_for_version_image,
                                wait_until_up)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = Path(tempfile.mkdtemp(prefix="attune-click-"))
    trace = data_dir / "trace.jsonl"
    env = dict(os.environ, ATTUNE_DATA_DIR=str(data_dir), ATTUNE_DEFAULT_STEPS=str(steps), ATTUNE_BACKEND=backend,
               PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    env.pop("ATTUNE_MODEL", None)
    log = open(data_dir / "streamlit.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.click_breakdown", "--serve", str(trace), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    clicks, samples, sampling = [], [], threading.Event()

    def sample_cpu():  # (time, server CPU s, browser CPU s) every 50 ms, to split the browser's CPU by phase
        while not sampling.wait(0.05):
            try:
                samples.append((time.time(), *_cpu_seconds(server.pid).values()))
            except Exception:  # the server is gone
                return

    sampler = threading.Thread(target=sample_cpu, daemon=True)
    sampler.start()
    try:
        wait_until_up(url, server, data_dir / "streamlit.log", poll_s=0.1, timeout_s=120)
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 1360, "height": 1200})
            page.add_init_script(BROWSER_PROBE)
            page.add_init_script(CLICK_STAMPS)
            if "hide_status" in os.environ.get("ATTUNE_CLICK_EXPERIMENT", ""):
                page.add_init_script("document.addEventListener('DOMContentLoaded', () => document.head.insertAdjacentHTML("
                                     "'beforeend', '<style>[data-testid=stStatusWidget]{display:none}</style>'))")
            expect.set_options(timeout=180_000)
            page.goto(url)
            expect(page.get_by_role("button", name="Try the example")).to_be_enabled()
            page.locator("[data-testid='stSidebarNav']").get_by_role("link", name="Generate", exact=True).click()
            button = page.get_by_role("button", name="Generate", exact=True)
            expect(button).to_be_enabled()
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")
            time.sleep(1.0)  # let the page settle (warm-up imports, the last websocket messages)
            idle = _cpu_seconds(server.pid)
            time.sleep(1.0)
            idle = {name: round(after - idle[name], 3) for name, after in _cpu_seconds(server.pid).items()}
            for number in range(1, repeats + 1):
                page.evaluate("() => { window.__attune.ws = []; window.__attune.long = []; }")
                cpu = _cpu_seconds(server.pid)
                renderer = _renderer_metrics(cdp)
                wall = time.perf_counter()
                button.click()
                seen = wait_for_version_image(page, number)
                wall = time.perf_counter() - wall
                cpu = {name: round(after - cpu[name], 3) for name, after in _cpu_seconds(server.pid).items()}
                cpu["renderer"] = {name: round(after - renderer[name], 3) for name, after in _renderer_metrics(cdp).items()}
                probe = page.evaluate("""number => ({click: window.__attune.clicks.at(-1), ws: window.__attune.ws,
                    long: window.__attune.long,
                    text: window.__attuneText[String(number)],
                    scripts: performance.getEntriesByType('resource').filter(e => e.name.endsWith('.js'))
                      .map(e => [e.name.split('/').at(-1), performance.timeOrigin + e.startTime, e.duration]),
                    media: performance.getEntriesByType('resource').filter(e => e.name.includes('/media/'))
                      .map(e => ({name: e.name, start: performance.timeOrigin + e.startTime,
                                  end: performance.timeOrigin + e.responseEnd, size: e.transferSize}))})""", number)
                # the new image's download (none when the browser already had that URL: st.image sends a JPEG
                # whose URL is its content's hash, so a repeat of the same seed reuses it)
                media = [m for m in probe["media"] if m["name"] == seen["src"] and m["start"] >= probe["click"] - 10]
                clicks.append({"number": number, "click": probe["click"] / 1000, "text": probe["text"] / 1000,
                               "shown": seen["shown"], "playwright_wall": wall, "cpu": cpu,
                               "media": media[-1] if media else None,
                               "ws": [[t / 1000, d, n] for t, d, n in probe["ws"]],
                               "long_tasks": [[t / 1000, d / 1000] for t, d in probe["long"]],
                               "scripts_loaded": [[name, t / 1000, d / 1000] for name, t, d in probe["scripts"]
                                                  if t / 1000 >= probe["click"] / 1000 - 0.01]})
                time.sleep(1.0)  # the page's last messages after the image (the strip, the sidebar)
            browser.close()
    finally:
        sampling.set()
        sampler.join()
        stop_streamlit(server)
        log.close()
    events = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    return {"command": "python -m bench.click_breakdown " + " ".join(sys.argv[1:]), "machine": machine.machine_info(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "steps": steps, "backend": backend,
            "experiment": os.environ.get("ATTUNE_CLICK_EXPERIMENT", ""), "idle_cpu_per_s": idle,
            "cpu_samples": samples,
            "clicks": [breakdown(click, events, samples) for click in clicks], "browser": clicks, "events": events}


def _renderer_metrics(cdp) -> dict:
    """The page's main-thread seconds so far by kind (Chrome's Performance domain)."""
    wanted = ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"] if m["name"] in wanted}


def _cpu_seconds(server_pid: int) -> dict:
    """CPU seconds so far of the server process and of every chromium process (the browser shares the cores)."""
    import psutil

    def used(process):
        try:
            times = process.cpu_times()
            return times.user + times.system
        except psutil.NoSuchProcess:
            return 0.0

    browser = sum(used(p) for p in psutil.process_iter(["name"]) if "chrom" in (p.info["name"] or "").lower())
    return {"server": used(psutil.Process(server_pid)), "browser": browser}


def _during(events, label, start, end):
    return [e for e in events if e["label"] == label and e["start"] >= start - 1e-3 and e["start"] <= end]


def _cpu_at(samples, t: float, column: int) -> float:
    """CPU seconds used by then (column 1: server, 2: browser), interpolated between the 50 ms samples."""
    before = [row for row in samples if row[0] <= t]
    after = [row for row in samples if row[0] > t]
    if not before or not after:
        return (before or after)[-1 if before else 0][column]
    a, b = before[-1], after[0]
    return a[column] + (b[column] - a[column]) * (t - a[0]) / (b[0] - a[0])


def breakdown(click: dict, events: list[dict], samples: list | None = None) -> dict:
    """Phases of one click, in seconds from the click (browser clock = server clock, one machine)."""
    t0, shown = click["click"], click["shown"]
    window = [e for e in events if t0 - 0.01 <= e["start"] <= shown + 1.0]
    reruns = [e for e in window if e["label"] == "rerun"]
    first = lambda label: next((e for e in window if e["label"] == label), None)  # noqa: E731
    callback, engine, commit, job = first("callback"), first("engine"), first("commit"), first("job")
    row = {"number": click["number"], "total_shown_s": shown - t0, "caption_on_page_s": click["text"] - t0,
           "playwright_wall_s": click["playwright_wall"], "server_cpu_s": click["cpu"]["server"],
           "browser_cpu_s": click["cpu"]["browser"], "renderer_main_thread_s": click["cpu"].get("renderer"),
           "reruns": len(reruns), "rerun_s": [round(e["end"] - e["start"], 3) for e in reruns],
           "rerun_start_s": [round(e["start"] - t0, 3) for e in reruns]}

    def span(name, event):
        if event is not None:
            row[name + "_start_s"] = round(event["start"] - t0, 4)
            row[name + "_s"] = round(event["end"] - event["start"], 4)

    span("callback", callback)
    span("engine", engine)
    span("commit", commit)
    span("job", job)
    for label in ("maps_save", "png_encode", "file_write", "log_version", "log_event", "version_card", "rating",
                  "word_cards", "suggest_panel", "sidebar", "strip", "page_finish", "page_setup", "st_image", "follow"):
        found = [e for e in window if e["label"] == label]
        row[label + "_total_s"] = round(sum(e["end"] - e["start"] for e in found), 4)
        row[label + "_calls"] = len(found)
    if job is not None:
        follow = [e for e in window if e["label"] == "follow" and e["end"] >= job["end"]]
        if follow:
            row["job_done_to_follow_end_s"] = round(follow[0]["end"] - job["end"], 4)
    if reruns:
        last = max(reruns, key=lambda e: e["end"] if e["end"] <= shown + 0.5 else 0)
        row["last_rerun_end_s"] = round(last["end"] - t0, 4)
        row["script_end_to_shown_s"] = round(shown - last["end"], 4)
    if click["media"]:
        row["media_fetch_start_s"] = round(click["media"]["start"] / 1000 - t0, 4)
        row["media_fetch_s"] = round((click["media"]["end"] - click["media"]["start"]) / 1000, 4)
    if samples and engine is not None:
        cuts = {"before_engine": (t0, engine["start"]), "engine": (engine["start"], engine["end"]),
                "after_engine": (engine["end"], shown)}
        for name, (a, b) in cuts.items():
            row[f"browser_cpu_{name}_s"] = round(_cpu_at(samples, b, 2) - _cpu_at(samples, a, 2), 3)
            row[f"server_cpu_{name}_s"] = round(_cpu_at(samples, b, 1) - _cpu_at(samples, a, 1), 3)
    messages = click["ws"]
    row["ws_in_before_shown"] = sum(1 for t, d, _ in messages if d == "in" and t <= shown)
    row["ws_bytes_before_shown"] = sum(n for t, d, n in messages if d == "in" and t <= shown)
    row["ws_first_in_s"] = round(min((t for t, d, _ in messages if d == "in"), default=t0) - t0, 4)
    return row


PHASES = [
    ("click → callback runs on the server", lambda r: r.get("callback_start_s")),
    ("callback → engine starts", lambda r: r["engine_start_s"] - r["callback_start_s"] - r.get("callback_s", 0)
     if "engine_start_s" in r and "callback_start_s" in r else None),
    ("engine (steps, decode)", lambda r: r.get("engine_s")),
    ("save version (commit)", lambda r: r.get("commit_s")),
    ("  of which attention maps .npz", lambda r: r.get("maps_save_total_s")),
    ("  of which PNG encode", lambda r: r.get("png_encode_total_s")),
    ("  of which file writes (fsync)", lambda r: r.get("file_write_total_s")),
    ("  of which log row", lambda r: r.get("log_version_total_s")),
    ("job done → page sees it", lambda r: r.get("job_done_to_follow_end_s")),
    ("page after the job (card, cards, sidebar, strip)", lambda r: (r["last_rerun_end_s"] - r["job_start_s"] - r["job_s"]
     - r.get("job_done_to_follow_end_s", 0)) if "last_rerun_end_s" in r and "job_s" in r else None),
    ("  version card", lambda r: r.get("version_card_total_s")),
    ("  word cards", lambda r: r.get("word_cards_total_s")),
    ("  sidebar + strip", lambda r: r.get("sidebar_total_s", 0) + r.get("strip_total_s", 0)),
    ("  st.image encodes", lambda r: r.get("st_image_total_s")),
    ("script end → image shown in the browser", lambda r: r.get("script_end_to_shown_s")),
    ("  of which the image's download", lambda r: r.get("media_fetch_s")),
    ("click → image shown (browser clock)", lambda r: r.get("total_shown_s")),
    ("click → caption on the page", lambda r: r.get("caption_on_page_s")),
    ("Playwright click → wait returns", lambda r: r.get("playwright_wall_s")),
    ("script reruns per click", lambda r: r.get("reruns")),
    ("server process CPU s in the click", lambda r: r.get("server_cpu_s")),
    ("browser (chromium) CPU s in the click", lambda r: r.get("browser_cpu_s")),
    ("  browser CPU s while the engine runs", lambda r: r.get("browser_cpu_engine_s")),
    ("  browser CPU s from engine end to image shown", lambda r: r.get("browser_cpu_after_engine_s")),
    ("  server CPU s while the engine runs", lambda r: r.get("server_cpu_engine_s")),
    ("  server CPU s from engine end to image shown", lambda r: r.get("server_cpu_after_engine_s")),
]


def table(result: dict) -> str:
    clicks = result["clicks"]
    m = result["machine"]
    lines = [f"Generate click breakdown · {result['backend']} · {result['steps']} steps · {len(clicks)} clicks · "
             f"{m['cpu']}, {m['cores']} cores, load average {result['load_average'][0]:.1f}", "",
             "| phase | median s | per click |", "|---|---|---|"]
    for name, get in PHASES:
        values = [get(r) for r in clicks]
        values = [v for v in values if v is not None]
        if not values:
            continue
        lines.append(f"| {name} | {statistics.median(values):.3f} | {', '.join(f'{v:.3f}' for v in values)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve"]:
        serve(argv[1], argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own default)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", default="onnx", choices=("onnx", "torch", "auto"))
    parser.add_argument("--json", action="store_true", help="print JSON (with every traced event) instead of the table")
    args = parser.parse_args(argv)
    if args.steps is None:
        from bench.app import model_default_steps

        args.steps = model_default_steps(None)
    result = run(args.steps, max(1, args.repeats), args.backend)
    return machine.print_result(result, args.json, lambda r: print(table(r)), indent=1)


if __name__ == "__main__":
    sys.exit(main())
