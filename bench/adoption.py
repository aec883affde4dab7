"""Should a candidate model replace the built-in one? Its bench.refine test rows against the shipped model's.

    python -m bench.adoption --old bench/results/refine.json bench/results/refine_instructions.json \
        --new CANDIDATE_REFINE.json CANDIDATE_INSTRUCTIONS.json [--json]

The rule (first written in bench/results/heads245_rule.json): the candidate is adopted only if no inpaint or reweight
headline is worse by more than 0.02 and every instruction row keeps ≥ 0.8 success. Presence and heatmap rows are
shown too; their check is the paired test-split rule (bench.refine_paired), which has more captions.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

MARGIN = 0.02
INSTRUCTION_FLOOR = 0.8
DEFAULT_REWEIGHT = "score/blend"  # the app's default method and layout


def _reweight(d: dict, weight: str, field: str) -> float:
    return d["reweight"][DEFAULT_REWEIGHT][f"w={weight}"][field]


# (headline, how to read it from a merged bench.refine JSON, +1 if higher is better, -1 if lower is, ruled?)
HEADLINES = [
    ("foreground presence", lambda d: d["presence"], +1, False),
    ("absence", lambda d: d["absence"], +1, False),
    ("sky and ground presence", lambda d: d["presence_scenery"], +1, False),
    ("heatmap mIoU", lambda d: d["faithfulness"]["foreground"]["heatmap"], +1, False),
    ("heatmap top-k IoU", lambda d: d["faithfulness"]["foreground"]["heatmap_topk"], +1, False),
    ("reweight area x0.5 (median)", lambda d: _reweight(d, "0.5", "area_ratio_median"), -1, True),
    ("reweight still found at x0.5", lambda d: _reweight(d, "0.5", "still_detected"), +1, True),
    ("reweight area x1.5 (median)", lambda d: _reweight(d, "1.5", "area_ratio_median"), +1, True),
    ("reweight far pixels changed x1.5 (median)", lambda d: _reweight(d, "1.5", "locality_median"), -1, True),
    ("reweight far pixels changed x2 (median)", lambda d: _reweight(d, "2", "locality_median"), -1, True),
    ("reweight Spearman (mean)", lambda d: d["reweight"][DEFAULT_REWEIGHT]["spearman_mean"], +1, True),
    ("inpaint success", lambda d: d["inpaint"]["success"], +1, True),
    ("inpaint outside unchanged", lambda d: d["inpaint"]["outside_bit_identical"], +1, True),
]


def compare(old: dict, new: dict, old_instructions: dict, new_instructions: dict) -> dict:
    rows = []
    for name, read, sign, ruled in HEADLINES:
        before, after = float(read(old)), float(read(new))
        worse_by = sign * (before - after)
        rows.append({"headline": name, "old": round(before, 4), "new": round(after, 4), "worse_by": round(worse_by, 4),
                     "ruled": ruled, "fails": ruled and worse_by > MARGIN})
    instructions = []
    for phrasing, row in new_instructions["instructions"].items():
        success = float(row["success"])
        instructions.append({"phrasing": phrasing, "old": round(float(old_instructions["instructions"][phrasing]["success"]), 4),
                             "new": round(success, 4), "fails": success < INSTRUCTION_FLOOR})
    passes = not any(r["fails"] for r in rows + instructions)
    return {"rule": f"no inpaint or reweight headline worse by more than {MARGIN}; every instruction row ≥ "
                    f"{INSTRUCTION_FLOOR}", "reweight": DEFAULT_REWEIGHT, "passes": passes, "rows": rows,
            "instructions": instructions}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", nargs=2, type=Path, required=True, metavar=("REFINE", "INSTRUCTIONS"))
    parser.add_argument("--new", nargs=2, type=Path, required=True, metavar=("REFINE", "INSTRUCTIONS"))
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    old, old_instructions = (json.loads(p.read_text()) for p in args.old)
    new, new_instructions = (json.loads(p.read_text()) for p in args.new)
    result = compare(old, new, old_instructions, new_instructions)
    result["old"], result["new"] = [str(p) for p in args.old], [str(p) for p in args.new]
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print("| headline | old | new | worse by | |\n|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['headline']} | {r['old']:.3f} | {r['new']:.3f} | {r['worse_by']:+.3f} | "
              f"{'FAIL' if r['fails'] else ('ok' if r['ruled'] else 'shown')} |")
    for r in result["instructions"]:
        print(f"| instruction: {r['phrasing']} | {r['old']:.3f} | {r['new']:.3f} |  | {'FAIL' if r['fails'] else 'ok'} |")
    print(f"\nverdict: {'adopt' if result['passes'] else 'keep the shipped model'} ({result['rule']})")


if __name__ == "__main__":
    main()
