"""The empty box's erase (fill from the surroundings), pasted with and without the inpaint feather, side by side on
the scenes of an instructions run (bench.refine --parts instructions) or on a split's first scenes.

    python -m bench.erase_fill --split tuning --scenes 40 --out FILE
    python -m bench.erase_fill --seeds-from bench/results/refine_instructions.json --out FILE   # its test scenes
    python -m bench.erase_fill --merge A.json B.json ... --out FILE   # pool the rows of shards (--shard i/n)

The feather (mask blur) keeps a band of the original inside the mask; for an erase that band is the erased object's
edge. Scoring is bench.refine's erase rows' (the object gone, half the mask its background class again).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from bench import refine as R
from bench.machine import machine_info
from engine.defaults import INPAINT_DEFAULTS
from engine.pipeline.attune import Attune
from engine.sampling.masks import feather_alpha, fill_from_surroundings, paste_back

VARIANTS = {"feathered": INPAINT_DEFAULTS.mask_blur, "hard": 0}  # paste-back blur, px


def score(out, mask, cls, background) -> dict:
    after = R.segment(out)
    left, back = after.get(cls), after.get(background)
    gone = left is None or int((left & mask).sum()) < R.MIN_AREA
    share = float((back & mask).sum() / mask.sum()) if back is not None else 0.0
    return {"gone": int(gone), "background_share": share, "success": int(gone and share >= R.BACKGROUND_BACK)}


def merge(paths: list[str], out: str) -> int:
    parts = []
    for path in paths:
        with open(path) as fh:
            parts.append(json.load(fh))
    rows = [r for part in parts for r in part["rows"]]
    merged = {"split": parts[0]["split"], "n": len(rows),
              "success": {v: float(np.mean([r[v]["success"] for r in rows])) for v in VARIANTS},
              "gone": {v: float(np.mean([r[v]["gone"] for r in rows])) for v in VARIANTS},
              "runs": [{k: part.get(k) for k in ("command", "commit", "seconds", "n")} for part in parts],
              "command": "python -m bench.erase_fill --merge " + " ".join(paths), "commit": parts[0]["commit"],
              "machine": parts[0]["machine"], "seconds": max(part["seconds"] for part in parts), "rows": rows}
    with open(out, "w") as fh:
        json.dump(merged, fh, indent=1)
    print(json.dumps(merged["success"]), f"n={len(rows)}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="test", choices=list(R.SPLITS))
    p.add_argument("--scenes", type=int, default=40, help="scenes to scan (without --seeds-from)")
    p.add_argument("--seeds-from", default=None, help="an instructions run's JSON: its empty-box scenes")
    p.add_argument("--shard", default="0/1", help="i/n: this process takes every n-th scene from the i-th")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="pool shards' JSON into --out; no run")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    first = R.SPLITS[args.split][1]
    if args.seeds_from:
        with open(args.seeds_from) as fh:
            got = json.load(fh)
        indices = sorted({r["seed"] - first for r in got["raw"]["instructions"] if r["box"] == ""})
    else:
        indices = list(range(args.scenes))
    i, n = (int(x) for x in args.shard.split("/"))
    indices = indices[i::n]
    import torch

    torch.set_num_threads(1)
    engine = Attune(None, backend="torch")
    bench = R.Bench(engine, split=args.split, steps=20, methods=["score"], layouts=["blend"], progress=print)
    rows, t0 = [], time.time()
    for index in indices:
        seed, scene = R.scene_at(args.split, index)
        image = R._rgb(engine.generate(bench.params(scene, seed)).image)
        for name, cls, mask, background in R.erase_cases(scene, R.analyse(image))[:1]:  # bench.refine's choice
            filled = fill_from_surroundings(image, mask)
            row = {"seed": seed, "object": name, "background": background}
            for variant, blur in VARIANTS.items():
                row[variant] = score(paste_back(image, filled, feather_alpha(mask, blur)), mask, cls, background)
            rows.append(row)
        print(f"{len(rows)} cases", file=sys.stderr, flush=True)
    result = {"split": args.split, "n": len(rows), "rows": rows, "seconds": round(time.time() - t0, 1),
              "success": {v: float(np.mean([r[v]["success"] for r in rows])) if rows else None for v in VARIANTS},
              "command": "python -m bench.erase_fill " + " ".join(sys.argv[1:] if argv is None else argv),
              "commit": R.git_commit(), "machine": machine_info(threads=1, device="cpu")}
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result["success"]), f"n={len(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
