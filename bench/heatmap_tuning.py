"""Heatmap aggregation tuning (tuning split only): generate each caption once, score many aggregations of its maps.

    python -m bench.heatmap_tuning --n 40 --cache /tmp/hm_v1 [--model DIR] [--threads 1] [--out FILE]

Phase 1 generates tuning captions through the engine (as bench/refine.py does) and caches, per caption, the
AttentionMaps and the segmented region and head-word tokens of every object found (so an interrupted run resumes and
new variants need no new images). Phase 2 scores every variant in `VARIANTS` on the same maps: heatmap mIoU at
bench.refine.TAU (min-max normalised, thresholded) against the object's region, foreground classes as in
bench/refine.py. Variants differ only in how the recorded maps are aggregated (layers, step buckets, weighting,
per-pixel renormalisation over the prompt's words).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench import refine_metrics as M
from bench.machine import machine_info
from bench.refine import SPLITS, TAU, analyse, class_of, detected, git_commit, scene_at, token_indices, write_json
from engine.attention.maps import AttentionMaps, bicubic_resize, layer_hw, normalize_map
from train import world


# ---------------------------------------------------------------------------------------------- phase 1
def generate(engine, n: int, steps: int, cache: Path, log) -> None:
    from engine.pipeline.attune import GenerateParams

    cache.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        meta_path = cache / f"{i:04d}.json"
        if meta_path.exists():
            continue
        seed, scene = scene_at("tuning", i)
        t0 = time.time()
        res = engine.generate(GenerateParams(prompt=scene.caption, seed=seed, steps=steps, syntax="none"))
        seg = analyse(np.asarray(res.image.convert("RGB"), dtype=np.uint8))
        objects, regions = [], {}
        for name in scene.words:
            region = detected(seg, scene, name)
            if region is None or not region.any():
                continue
            regions[name] = region
            objects.append({"name": name, "class": class_of(name),
                            "indices": [int(x) for x in token_indices(res.word_tokens, scene, scene.words[name][-1])]})
        res.maps.save(cache / f"{i:04d}_maps.npz")
        np.savez_compressed(cache / f"{i:04d}_regions.npz", **regions)
        meta_path.write_text(json.dumps({"seed": seed, "caption": scene.caption, "objects": objects,
                                         "words": list(res.word_tokens.words)}))
        log(f"caption {i + 1}/{n} ({time.time() - t0:.1f}s): {scene.caption!r}, {len(objects)} objects found")


def load_cache(cache: Path, n: int) -> list[dict]:
    items = []
    for i in range(n):
        meta_path = cache / f"{i:04d}.json"
        if not meta_path.exists():
            continue
        meta = json.loads(meta_path.read_text())
        maps = AttentionMaps.load(cache / f"{i:04d}_maps.npz")
        with np.load(cache / f"{i:04d}_regions.npz") as r:
            regions = {k: r[k] for k in r.files}
        items.append({"index": i, "meta": meta, "maps": maps, "regions": regions})
    return items


# ---------------------------------------------------------------------------------------------- variants
def aggregate(maps: AttentionMaps, indices, size, *, resolutions=None, buckets=None, weighting="layer",
              renorm=False, combine="mean") -> np.ndarray:
    """A word's map under one aggregation, min-max normalised at `size`.

    weighting: "layer" (every layer alike, the engine's DAAM mean) or "resolution" (every resolution alike).
    renorm: divide each pixel's attention to the word by its attention to the prompt's words ("words": BOS and EOS
    left out; "no-bos": BOS left out), so a pixel that attends mostly to BOS no longer counts as weak for every
    word. False: the raw attention (the engine's DAAM mean)."""
    idx = list(indices)
    nb = len(maps.bucket_steps)
    sel = np.zeros(nb, bool)
    sel[list(range(nb)) if buckets is None else list(buckets)] = True
    sel &= maps.counts > 0
    if not sel.any():
        return None
    lh, lw = maps.latent_hw
    per_res: dict[int, list[np.ndarray]] = {}
    n_tok = maps.seq_len
    for name, arr in maps.layers.items():
        h, w = layer_hw(arr.shape[1], maps.latent_hw)
        if resolutions is not None and h not in resolutions:
            continue
        m = arr[sel].sum(axis=0) / float(maps.counts[sel].sum())  # (HW, seq)
        word = m[:, idx]
        if renorm:
            text = m[:, 1:max(2, n_tok - 1 if renorm == "words" else n_tok)].sum(axis=1, keepdims=True)
            word = word / np.maximum(text, 1e-8)
        word = np.ascontiguousarray(word.T).reshape(len(idx), h, w)
        if (h, w) != (lh, lw):
            word = bicubic_resize(word, (lh, lw))
        word = word.max(axis=0) if combine == "max" else word.mean(axis=0)
        per_res.setdefault(h, []).append(word)
    if not per_res:
        return None
    if weighting == "resolution":
        acc = np.mean([np.mean(v, axis=0) for v in per_res.values()], axis=0)
    else:
        acc = np.mean([x for v in per_res.values() for x in v], axis=0)
    out = np.maximum(acc, 0)
    if tuple(size) != (lh, lw):
        out = np.maximum(bicubic_resize(out, tuple(size)), 0)
    return normalize_map(out)


def variants(resolutions: list[int], n_buckets: int, layers_per_res: dict[int, int]) -> dict[str, dict]:
    """Every combination of layer resolutions, step buckets, layer weighting (only where resolutions have
    different numbers of layers; otherwise it equals the plain mean) and renormalisation."""
    res_sets = {"all": None}
    for r in resolutions:
        res_sets[str(r)] = (r,)
    for a, b in itertools.combinations(resolutions, 2):
        if len(resolutions) > 2:
            res_sets[f"{a}+{b}"] = (a, b)
    step_sets = {"all": None}
    for i in range(n_buckets):
        step_sets[f"b{i}"] = (i,)
    half = n_buckets // 2
    step_sets["early half"] = tuple(range(half))
    step_sets["late half"] = tuple(range(half, n_buckets))
    step_sets["no first"] = tuple(range(1, n_buckets))
    step_sets["no last"] = tuple(range(n_buckets - 1))
    weightings = ("layer", "resolution") if len(set(layers_per_res.values())) > 1 else ("layer",)
    out = {}
    for (rk, rv), (sk, sv), weighting, renorm in itertools.product(res_sets.items(), step_sets.items(),
                                                                   weightings, (False, "words", "no-bos")):
        if weighting == "resolution" and (rv is not None and len(rv) == 1):
            continue  # same as "layer" with one resolution
        key = f"res={rk} steps={sk} weight={weighting} renorm={renorm or 'no'}"
        out[key] = dict(resolutions=rv, buckets=sv, weighting=weighting, renorm=renorm)
    return out


PLAIN = "res=all steps=all weight=layer renorm=no"  # the plain DAAM mean (the engine's default before this tuning)
COMPARED = ("res=all steps=late half weight=layer renorm=words", "res=all steps=late half weight=layer renorm=no",
            "res=all steps=all weight=layer renorm=words", "res=all steps=b3 weight=layer renorm=words",
            "res=16 steps=late half weight=layer renorm=words")


def paired(items: list[dict], variant_set: dict[str, dict], base: str, others, n_boot: int = 2000) -> dict:
    """Per foreground object, IoU(other) - IoU(base): mean, share of objects better / worse, and a 95% bootstrap
    interval of the mean over captions (objects of one caption resampled together)."""
    rng = np.random.default_rng(0)
    out = {}
    for other in others:
        if other not in variant_set:
            continue
        per_caption = []
        for item in items:
            deltas = []
            for obj in item["meta"]["objects"]:
                if obj["class"] not in world.FOREGROUND:
                    continue
                region = item["regions"][obj["name"]]
                a = aggregate(item["maps"], obj["indices"], region.shape, **variant_set[base])
                b = aggregate(item["maps"], obj["indices"], region.shape, **variant_set[other])
                deltas.append(M.iou(b >= TAU, region) - M.iou(a >= TAU, region))
            if deltas:
                per_caption.append(deltas)
        flat = np.array([d for c in per_caption for d in c])
        boots = []
        for _ in range(n_boot):
            pick = rng.integers(len(per_caption), size=len(per_caption))
            boots.append(np.mean([d for i in pick for d in per_caption[i]]))
        out[other] = {"vs": base, "mean_delta": float(flat.mean()), "ci95": [float(np.percentile(boots, 2.5)),
                                                                           float(np.percentile(boots, 97.5))],
                      "better": float((flat > 0.01).mean()), "worse": float((flat < -0.01).mean()), "n": int(flat.size)}
    return out


def score(items: list[dict], variant_set: dict[str, dict]) -> dict:
    """variant -> class -> list of IoU (τ) values, and top-k IoU."""
    rows: dict[str, dict[str, dict[str, list[float]]]] = {k: {} for k in variant_set}
    for item in items:
        maps = item["maps"]
        for obj in item["meta"]["objects"]:
            region = item["regions"][obj["name"]]
            k = int(region.sum())
            for key, kw in variant_set.items():
                heat = aggregate(maps, obj["indices"], region.shape, **kw)
                if heat is None:
                    continue
                cls = rows[key].setdefault(obj["class"], {"iou": [], "topk": []})
                cls["iou"].append(M.iou(heat >= TAU, region))
                cls["topk"].append(M.iou(M.topk_mask(heat, k), region))
    return rows


def summarize(rows: dict) -> dict:
    out = {}
    for key, classes in rows.items():
        fg = {c: v for c, v in classes.items() if c in world.FOREGROUND}
        all_iou = [x for v in fg.values() for x in v["iou"]]
        all_topk = [x for v in fg.values() for x in v["topk"]]
        per_class = {c: float(np.mean(v["iou"])) for c, v in sorted(classes.items())}
        fg_class = {c: per_class[c] for c in fg}
        worst = min(fg_class, key=fg_class.get) if fg_class else None
        out[key] = {"miou_foreground": float(np.mean(all_iou)) if all_iou else None,
                    "topk_foreground": float(np.mean(all_topk)) if all_topk else None,
                    "class_mean": float(np.mean(list(fg_class.values()))) if fg_class else None,
                    "worst_class": worst, "worst_class_miou": fg_class.get(worst) if worst else None,
                    "n_foreground": len(all_iou), "per_class": per_class,
                    "n_per_class": {c: len(v["iou"]) for c, v in sorted(classes.items())}}
    return out


def table(summary: dict, top: int) -> str:
    order = sorted(summary, key=lambda k: -(summary[k]["miou_foreground"] or 0))
    lines = ["| variant | mIoU fg | top-k fg | class mean | worst class |", "|---|---|---|---|---|"]
    for key in order[:top]:
        s = summary[key]
        lines.append(f"| {key} | {s['miou_foreground']:.3f} | {s['topk_foreground']:.3f} | {s['class_mean']:.3f} | "
                     f"{s['worst_class']} {s['worst_class_miou']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Score heatmap aggregations on the tuning split (one generation each).")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--model", default=None, help="model folder (default: the built-in tiny-scenes)")
    p.add_argument("--cache", required=True, help="folder for the generated maps and regions (resumable)")
    p.add_argument("--score-only", action="store_true", help="score what the cache holds; generate nothing")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--top", type=int, default=25, help="rows of the printed table")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    assert "tuning" in SPLITS
    cache = Path(args.cache)
    command = "python -m bench.heatmap_tuning " + " ".join(sys.argv[1:] if argv is None else argv)
    t0 = time.time()
    log = lambda m: print(f"[{time.time() - t0:6.0f}s] {m}", file=sys.stderr, flush=True)  # noqa: E731
    model_info: dict = {}
    threads = None
    if not args.score_only:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        threads = torch.get_num_threads()
        from engine.pipeline.attune import Attune

        engine = Attune(args.model, backend="torch")
        model_info = {"model": engine.model_id, "weights_hash": engine.weights_hash, "backend": engine.backend_name}
        cache.mkdir(parents=True, exist_ok=True)
        before = json.loads((cache / "model.json").read_text()) if (cache / "model.json").exists() else {}
        if before.get("weights_hash", model_info["weights_hash"]) != model_info["weights_hash"]:
            print("error: the cache holds another model's maps; use another --cache.", file=sys.stderr)
            return 2
        model_info["generated_by"] = before.get("generated_by", []) + [command]
        (cache / "model.json").write_text(json.dumps(model_info))
        generate(engine, args.n, args.steps, cache, log)
    elif (cache / "model.json").exists():
        model_info = json.loads((cache / "model.json").read_text())
    items = load_cache(cache, args.n)
    if not items:
        print("error: nothing cached yet.", file=sys.stderr)
        return 2
    first = items[0]["maps"]
    layers_per_res: dict[int, int] = {}
    for hw in first.layer_shapes().values():
        layers_per_res[hw[0]] = layers_per_res.get(hw[0], 0) + 1
    variant_set = variants(first.resolutions(), len(first.bucket_steps), layers_per_res)
    log(f"scoring {len(variant_set)} variants on {len(items)} captions")
    summary = summarize(score(items, variant_set))
    result = {"split": "tuning", "n": len(items), "steps": args.steps, "tau": TAU, **model_info,
              "bucket_steps": [list(b) for b in first.bucket_steps], "resolutions": first.resolutions(),
              "layers": {k: list(v) for k, v in first.layer_shapes().items()},
              "command": command,
              "commit": git_commit(), "machine": machine_info(threads=threads), "seconds": round(time.time() - t0, 1),
              "variants": summary, "paired": paired(items, variant_set, PLAIN, COMPARED)}
    if args.out:
        write_json(result, args.out)
    print(table(summary, args.top))
    for key, d in result["paired"].items():
        print(f"{key} vs plain: mean IoU {d['mean_delta']:+.3f} (95% CI {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}), "
              f"better {d['better']:.0%}, worse {d['worse']:.0%} of {d['n']} objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
