"""Captions for the Refine page that say what the refinement benchmark measured, in plain words. The numbers come from
ui/data/refine_numbers.json, which `python -m bench.refine_captions` writes from bench/results/refine.json (the app
never reads bench/). No claim without a number: a method or layout the benchmark did not measure says so."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "data" / "refine_numbers.json"
METHOD_WHAT = {
    "score": "scales the word's attention scores before softmax (PromptCharm)",
    "prob": "scales the word's attention after softmax (Prompt-to-Prompt)",
    "embed": "Compel-style: moves the word's embedding away from the empty prompt's (Compel word+)",
    "a1111": "scales the word's embedding, then restores the prompt's mean (A1111's own emphasis)",
}
LAYOUT_WHAT = {
    "blend": "keeps the parent image outside the word's attention (Prompt-to-Prompt LocalBlend)",
    "free": "re-runs the whole image with the new weights",
    "inject": "re-runs with the parent's attention for the other words and its early layout (Prompt-to-Prompt "
              "attention injection; PyTorch backend only)",
    "blend+inject": "attention injection inside LocalBlend: the parent image outside the word's attention "
                    "(PyTorch backend only)",
}


@lru_cache(maxsize=1)
def _load(path: str, mtime: float) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def results(path: Path = RESULTS) -> dict | None:
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    return _load(str(path), mtime)


def measured(method: str, layout: str, data: dict | None = None) -> str:
    """E.g. "far pixels changed 1.2% (median) at ×1.5; object area ×1.31 at 1.5, ×0.72 at 0.5 (still there in 85%)"."""
    data = results() if data is None else data
    entry = ((data or {}).get("reweight") or {}).get(f"{method}/{layout}")
    if not entry:
        return "not measured by the benchmark"

    def at(w):
        return entry.get(f"w={w:g}") or {}

    def num(x, fmt):
        return "n/a" if x is None else format(x, fmt)

    return (f"far pixels changed {num(at(1.5).get('locality_median'), '.1%')} (median) at ×1.5; object area "
            f"×{num(at(1.5).get('area_ratio_median'), '.2f')} at 1.5, ×{num(at(0.5).get('area_ratio_median'), '.2f')} "
            f"at 0.5 (still there in {num(at(0.5).get('still_detected'), '.0%')}), ×{num(at(0).get('area_ratio_median'), '.2f')} "
            f"at 0 (medians over {entry.get('cases', 0)} objects, held-out test captions)")


def method_caption(method: str, layout: str, data: dict | None = None) -> str:
    return f"{METHOD_WHAT.get(method, method)}. Measured ({layout}): {measured(method, layout, data)}"


def layout_caption(layout: str, method: str, data: dict | None = None) -> str:
    return f"{LAYOUT_WHAT.get(layout, layout)}. Measured with {method}: {measured(method, layout, data)}"
