"""Write ui/data/refine_numbers.json: the few numbers of bench/results/refine.json that the Refine page's captions
quote (ui/refine_notes.py), so the app never reads bench/ at run time. Run after `python -m bench.refine`:

    python -m bench.refine_captions

tests/test_refine_captions.py fails when the committed file is out of date with the benchmark's results.
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "refine.json"
OUT = ROOT / "ui" / "data" / "refine_numbers.json"
QUOTED = {"1.5": ("locality_median", "area_ratio_median"), "0.5": ("area_ratio_median", "still_detected"),
          "0": ("area_ratio_median",)}


def caption_numbers(results: dict) -> dict:
    """{"method/layout": {"cases": n, "w=1.5": {...}, ...}} with only the fields the captions quote."""
    out = {}
    for key, entry in sorted((results.get("reweight") or {}).items()):
        numbers = {"cases": entry.get("cases", 0)}
        for weight, fields in QUOTED.items():
            at = entry.get(f"w={float(weight):g}") or {}
            numbers[f"w={float(weight):g}"] = {name: at.get(name) for name in fields}
        out[key] = numbers
    return {"source": "bench/results/refine.json", "split": results.get("split"), "reweight": out}


def render(results_path: Path = RESULTS) -> str:
    return json.dumps(caption_numbers(json.loads(results_path.read_text())), indent=1, sort_keys=True) + "\n"


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
