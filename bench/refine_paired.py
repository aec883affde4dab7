"""Paired comparison of two `bench.refine` presence runs (same split, captions and seeds), caption by caption.

    python -m bench.refine_paired BASE.json CANDIDATE.json [...more candidates] [--out FILE] [--json]

For each metric it gives the candidate − base difference and its 95% paired bootstrap CI, resampling captions
(every object of a caption moves together), and applies the non-inferiority rule `RULE`. Metrics:
foreground presence, sky/ground presence, absence of unnamed objects, and the heatmap IoU of foreground objects
found in both images. The raw rows of a run hold no caption ids; they are rebuilt by replaying the split's
scenes in the order bench.refine visits them (presence lists per class follow the captions; a heatmap row
follows each hit), and the lengths are checked against the JSON.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from bench.refine import class_of, scene_at
from train import world

MARGIN = 0.01
LEVEL = 0.95
DRAWS = 10_000
METRICS = ("foreground", "sky_ground", "absence", "heatmap_iou")
RULE = (f"paired over the same captions and seeds: for each of {', '.join(METRICS)}, the {LEVEL:.0%} paired "
        f"bootstrap CI (captions resampled, {DRAWS} draws, seed 0) of candidate − base must have its lower bound "
        f"above −{MARGIN} (non-inferiority margin {MARGIN})")


def paired_bootstrap_ci(diff_sums, counts, *, draws: int = DRAWS, level: float = LEVEL, seed: int = 0):
    """Mean paired difference over items grouped in clusters, with a percentile bootstrap CI over clusters.

    diff_sums[c]: sum over cluster c's items of (candidate − base); counts[c]: its number of items.
    Returns (estimate, low, high) of sum(diff) / sum(count); clusters with no items still count as draws."""
    diff_sums = np.asarray(diff_sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if diff_sums.shape != counts.shape or counts.sum() <= 0:
        raise ValueError("diff_sums and counts must have one value per cluster and at least one item")
    estimate = float(diff_sums.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(counts), size=(draws, len(counts)))
    totals = counts[pick].sum(axis=1)
    stats = diff_sums[pick].sum(axis=1)[totals > 0] / totals[totals > 0]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return estimate, float(low), float(high)


def caption_rows(result: dict) -> dict:
    """Per-caption items of a presence run: metric -> list of (caption, value); heatmap rows keyed by object."""
    raw = result["raw"]
    split, start, n = result["split"], int(result.get("start", 0)), int(result["captions_done"])
    presence_owner: dict[str, list[int]] = {}
    absence_owner: list[int] = []
    for i in range(start, start + n):
        _, scene = scene_at(split, i)
        for name in scene.words:
            presence_owner.setdefault(class_of(name), []).append(i)
        absence_owner += [i for name in world.FOREGROUND if name not in scene.masks]
    for cls, hits in raw["presence"].items():
        if len(hits) != len(presence_owner.get(cls, [])):
            raise ValueError(f"{cls}: {len(hits)} presence rows, the split's scenes give "
                             f"{len(presence_owner.get(cls, []))}")
    if len(raw["absence"]) != len(absence_owner):
        raise ValueError(f"{len(raw['absence'])} absence rows, the split's scenes give {len(absence_owner)}")
    rows = {"foreground": {}, "sky_ground": {}, "absence": {}, "heatmap_iou": {}}
    for cls, hits in raw["presence"].items():
        metric = "foreground" if cls in world.FOREGROUND else "sky_ground"
        ious = iter(raw["faith"].get(cls, {}).get("heatmap", []))
        for k, (owner, hit) in enumerate(zip(presence_owner[cls], hits)):
            rows[metric][(cls, k)] = (owner, float(hit))
            if hit and cls in world.FOREGROUND:
                rows["heatmap_iou"][(cls, k)] = (owner, float(next(ious)))
    for k, (owner, ok) in enumerate(zip(absence_owner, raw["absence"])):
        rows["absence"][k] = (owner, float(ok))
    return rows


def compare(base: dict, cand: dict) -> dict:
    """Paired differences (candidate − base) with CIs, and whether the rule holds."""
    for key in ("split", "start", "captions_done"):
        if base.get(key, 0) != cand.get(key, 0):
            raise ValueError(f"runs differ in {key}: {base.get(key)} vs {cand.get(key)}")
    b_rows, c_rows = caption_rows(base), caption_rows(cand)
    captions = list(range(int(base.get("start", 0)), int(base.get("start", 0)) + int(base["captions_done"])))
    slot = {c: j for j, c in enumerate(captions)}
    out = {}
    for metric in METRICS:
        keys = sorted(set(b_rows[metric]) & set(c_rows[metric]), key=str)  # heatmap: found in both
        diff, count = np.zeros(len(captions)), np.zeros(len(captions))
        for key in keys:
            owner, b = b_rows[metric][key]
            diff[slot[owner]] += c_rows[metric][key][1] - b
            count[slot[owner]] += 1
        est, low, high = paired_bootstrap_ci(diff, count)
        b_mean = float(np.mean([b_rows[metric][k][1] for k in keys]))
        worse = sorted({b_rows[metric][k][0] for k in keys if c_rows[metric][k][1] < b_rows[metric][k][1]})
        better = sorted({b_rows[metric][k][0] for k in keys if c_rows[metric][k][1] > b_rows[metric][k][1]})
        row = {"n": len(keys), "base": b_mean, "candidate": b_mean + est, "diff": est, "ci_low": low,
               "ci_high": high, "passes": low > -MARGIN}
        if metric != "heatmap_iou":  # which captions flipped, to look at
            row["captions_lost"], row["captions_gained"] = worse, better
        out[metric] = row
    return {"metrics": out, "passes": all(r["passes"] for r in out.values())}


def label(result: dict) -> str:
    tune = result.get("tune") or {}
    return f"{tune.get('scheduler', 'default')} {result.get('steps')}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Paired CIs of candidate − base bench.refine presence runs.")
    p.add_argument("base")
    p.add_argument("candidates", nargs="+")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    base = json.load(open(args.base))
    report = {"rule": RULE, "margin": MARGIN, "base": {"file": args.base, "setting": label(base)},
              "split": base["split"], "captions": base["captions_done"], "comparisons": []}
    for path in args.candidates:
        cand = json.load(open(path))
        report["comparisons"].append({"file": path, "setting": label(cand), **compare(base, cand)})
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{report['split']} split, {report['captions']} captions; base {report['base']['setting']}\nrule: {RULE}")
    print(f"{'candidate':<12}" + "".join(f"{m:>30}" for m in METRICS) + "  verdict")
    for c in report["comparisons"]:
        cells = "".join(f"{r['diff']:+.3f} [{r['ci_low']:+.3f},{r['ci_high']:+.3f}] n={r['n']:<4}".rjust(30)
                        for r in c["metrics"].values())
        print(f"{c['setting']:<12}{cells}  {'pass' if c['passes'] else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
