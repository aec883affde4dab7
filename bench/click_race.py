"""Click-race benchmark: is an Apply click kept when the user moves another widget at once? With and without the fix.

    python -m bench.click_race [--runs N] [--json] [--out FILE]

Each run, in a real browser (Debian chromium driven by Playwright) on the built-in model at 4 steps: generate v1,
open Refine, move the "full moon" slider to 1.5 with the keyboard, click Apply as soon as the page shows the new value,
and press a key on the brush-size slider right after (a second interaction while the click's run starts). A run
passes when "v2 made from v1" appears, and is lost when no `apply` event reached the log within 60 s.

Candidates, side by side in one run: the app as shipped (ui/streamlit_fixes.py active) and the same app with the fix
turned off (`ATTUNE_STREAMLIT_FIX=0`). The race needs a busy machine to show: run it while the CPUs are loaded
(the numbers in docs/app.md came with two training processes on both cores).
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from bench import machine
from bench.live_app import REPO, free_port, launch_chromium, start_streamlit, stop_streamlit, wait_until_up

CANDIDATES = {"fix on (shipped)": "1", "fix off": "0"}


def one_session(browser, url: str, expect) -> bool:
    """The scenario once in a fresh tab; True when the Apply click made v2."""
    page = browser.new_page(viewport={"width": 1360, "height": 1500})
    page.set_default_timeout(120_000)
    try:
        page.goto(url)
        expect(page.get_by_role("button", name="Try the example")).to_be_enabled(timeout=300_000)
        nav = page.locator("[data-testid='stSidebarNav']")
        nav.get_by_role("link", name="Generate", exact=True).click()
        page.get_by_role("button", name="Generate", exact=True).click()
        expect(page.get_by_text("v1 (current)")).to_be_visible(timeout=120_000)
        nav.get_by_role("link", name="Refine", exact=True).click()
        moon = page.locator("[data-testid='stSlider']").filter(has=page.get_by_text("full moon", exact=True)).get_by_role("slider")
        moon.focus()
        for _ in range(5):
            moon.press("ArrowRight")
        expect(page.get_by_text("To apply: more focus: full moon ×1.5")).to_be_visible(timeout=120_000)
        brush = page.locator("[data-testid='stSlider']").filter(has=page.get_by_text("Brush size", exact=True)).get_by_role("slider")
        page.get_by_role("button", name="Apply").click()
        brush.press("ArrowRight")
        try:
            expect(page.get_by_text("v2 made from v1")).to_be_visible(timeout=60_000)
            return True
        except AssertionError:
            return False
    finally:
        page.close()


def run_candidate(fix: str, runs: int, workdir: Path) -> dict:
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    data = workdir / f"fix{fix}"
    env = dict(os.environ, ATTUNE_DATA_DIR=str(data), ATTUNE_DEFAULT_STEPS="4", ATTUNE_STREAMLIT_FIX=fix,
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("ATTUNE_MODEL", None)
    log_path = workdir / f"streamlit_fix{fix}.log"
    with open(log_path, "w") as log:
        server = start_streamlit(port, env, log)
        url = f"http://127.0.0.1:{port}"
        outcomes = []
        try:
            wait_until_up(url, server, log_path, poll_s=0.3, timeout_s=120)
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                try:
                    for _ in range(runs):
                        outcomes.append(one_session(browser, url, expect))
                finally:
                    browser.close()
        finally:
            stop_streamlit(server)
    with sqlite3.connect(data / "attune_log.sqlite") as db:
        applies = db.execute("select count(*) from events where action = 'apply'").fetchone()[0]
    return {"runs": runs, "kept": sum(outcomes), "lost": runs - sum(outcomes), "apply_events": applies}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def table(result: dict) -> str:
    lines = [f"click race ({result['runs']} runs each; load average {result['load_before']} → {result['load_after']}; "
             f"{result['machine']['cpu']}, {result['machine']['cores']} cores)",
             "| candidate | runs | clicks kept | clicks lost |", "|---|---|---|---|"]
    for name, row in result["candidates"].items():
        lines.append(f"| {name} | {row['runs']} | {row['kept']} | {row['lost']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="scenario runs per candidate")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    result = {"command": "python -m bench.click_race --runs " + str(args.runs), "commit": commit, "runs": args.runs,
              "load_before": load_average(), "machine": machine.machine_info(), "candidates": {}}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for name, fix in CANDIDATES.items():
            result["candidates"][name] = run_candidate(fix, args.runs, Path(tmp))
    result["load_after"], result["seconds"] = load_average(), round(time.monotonic() - started, 1)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return machine.print_result(result, args.json, lambda r: print(table(r)), indent=2)


if __name__ == "__main__":
    raise SystemExit(main())
