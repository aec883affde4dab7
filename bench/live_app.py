"""The real app for bench/app.py and tests/test_e2e_browser.py: `streamlit run Home.py` on a free localhost port,
and Debian chromium (driven by Playwright) to open it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_streamlit(port: int, env: dict, log: IO[str]) -> subprocess.Popen:
    """The app's server, headless, without file watching; its output goes to log."""
    return subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "Home.py", "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )


def wait_until_up(url: str, server: subprocess.Popen, log_path: Path, *, poll_s: float,
                  timeout_s: float | None = None) -> None:
    """Return once the server answers its health check; RuntimeError (with the log's tail) if it exits or times out."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                return
        except OSError:
            pass
        if server.poll() is not None or (deadline is not None and time.monotonic() > deadline):
            raise RuntimeError("streamlit did not start:\n" + Path(log_path).read_text()[-3000:])
        time.sleep(poll_s)


def stop_streamlit(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()


def launch_chromium(playwright):
    """Headless Debian chromium; the caller closes it."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


# In-page timing of "click -> new image shown", on the browser's clock. Playwright's expect() polls every 0.5 s
# after its first 0.27 s, so a wall time taken around it is late by up to half a second; these stamp the click when
# the page receives it, and the image when its version card ("vN (current)") is on the page with its pixels loaded:
# a MutationObserver and the img's load event, so nothing polls the page every 10 ms while the server works on the
# same cores.
CLICK_STAMPS = """
window.__attuneClicks = [];
window.__attuneShown = {};
window.__attuneText = {};  // when each version's caption first appeared
document.addEventListener('click', e => {
  if (e.target.closest && e.target.closest('button')) window.__attuneClicks.push(Date.now());
}, true);
(() => {
  const record = (number, img) => {
    if (!window.__attuneShown[number] && img.complete && img.naturalWidth > 0)
      window.__attuneShown[number] = {click: window.__attuneClicks.at(-1), shown: Date.now(), src: img.src};
  };
  const look = () => {
    for (const box of document.querySelectorAll("[data-testid='stImage']")) {
      const img = box.querySelector('img');
      const match = /v(\\d+) \\(current\\)/.exec(box.textContent);
      if (match && !window.__attuneText[match[1]]) window.__attuneText[match[1]] = Date.now();
      if (!img || !match || window.__attuneShown[match[1]]) continue;
      record(match[1], img);
      if (!window.__attuneShown[match[1]]) img.addEventListener('load', () => record(match[1], img), {once: true});
    }
  };
  const start = () => new MutationObserver(look).observe(document.documentElement,
      {subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ['src']});
  if (document.documentElement) start(); else document.addEventListener('DOMContentLoaded', start);
})();
"""
_IMAGE_SHOWN = "number => window.__attuneShown && window.__attuneShown[String(number)]"


def wait_for_version_image(page, number: int, timeout_ms: float = 180_000) -> dict:
    """Wait until version `number`'s card image ("vN (current)") has loaded; returns {click, shown} in seconds
    (epoch, browser clock: the last button click the page received, and when the image was there) and its src.
    The page must have been opened after `page.add_init_script(CLICK_STAMPS)`."""
    # the stamp is taken by the page itself (CLICK_STAMPS); this poll only collects it
    found = page.wait_for_function(_IMAGE_SHOWN, arg=number, polling=100, timeout=timeout_ms).json_value()
    return {"click": found["click"] / 1000, "shown": found["shown"] / 1000, "src": found["src"]}
