"""Refinement benchmark on the built-in model: presence/absence, heatmap faithfulness, reweighting, inpainting.

    python -m bench.refine [--n 200] [--steps N] [--json] [--model PATH]

Fixed seeds over the scene world's held-out captions (train/world.py: templates and object pairs training never
saw). Generated images are read with the colour segmenter (train/segment.py); heatmaps come from the engine's
public API (engine.pipeline.Attune, engine.heatmap), exactly as the app computes them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from engine.errors import AttuneError
from engine.heatmap import normalize_map
from engine.pipeline import Attune, GenerateParams, InpaintParams
from train import world
from train.segment import MIN_AREA, brightness, iou, segment, sky_kind

TAU = 0.4  # DAAM's threshold for a binarised heatmap
WEIGHTS = (0.5, 1.0, 1.5, 2.0)
METHODS = ("score", "prob", "embed")
REWEIGHT_OBJECTS = ("moon", "house", "lake")
INPAINT_TARGETS = {"moon": "the full moon", "house": "a red house", "tree": "a lone tree", "sun": "the sun"}
SKY_TARGETS = ("moon", "sun")
SEED_OFFSETS = {"main": 0, "reweight": 10_000, "inpaint": 20_000}  # held-out seed ranges per part


def head_word(scene: world.Scene, name: str) -> tuple[str, int]:
    """The object's noun in the caption (last word of its phrase) and its word position."""
    pos = scene.words[name][-1]
    return scene.caption_words[pos], pos


def token_indices(word_tokens, scene: world.Scene, pos: int) -> list[int]:
    """Token indices of caption word `pos`; falls back to the word's text if the engine split words differently."""
    if [w.lower() for w in word_tokens.words] == [w.lower() for w in scene.caption_words]:
        return list(word_tokens.token_indices[pos])
    return word_tokens.indices_for(scene.caption_words[pos])


def object_region(seg: dict, scene: world.Scene, name: str) -> np.ndarray | None:
    """The generated image's region for a named object; sky must also be of the named kind."""
    if name == "sky":
        return seg.get("sky") if seg.get("sky") is not None and sky_kind_cached(seg) == scene.attributes["sky"] else None
    return seg.get(name)


def sky_kind_cached(seg: dict) -> str | None:
    return seg.get("_sky_kind")


def analyse(image) -> dict:
    seg = segment(image)
    seg["_sky_kind"] = sky_kind(image)
    return seg


def topk_mask(heat: np.ndarray, k: int) -> np.ndarray:
    flat = heat.ravel()
    out = np.zeros(flat.shape, bool)
    if k > 0:
        out[np.argsort(-flat, kind="stable")[:k]] = True
    return out.reshape(heat.shape)


def location_priors(n: int = 1000) -> dict[str, np.ndarray]:
    """Mean ground-truth mask per object class over training scenes (the 'class location prior' baseline)."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for s in range(n):
        sc = world.render(s, "train")
        for name, m in sc.masks.items():
            key = name if name not in world.GROUND_KINDS else "ground"
            sums[key] = sums.get(key, 0) + m.astype(np.float32)
            counts[key] = counts.get(key, 0) + 1
    return {k: normalize_map(v / counts[k]) for k, v in sums.items()}


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    if not where.any():
        return float("nan")
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2)[where].mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def spearman(x, y) -> float | None:
    from scipy.stats import spearmanr

    if len(set(np.round(y, 9))) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def find_box(region: np.ndarray, size: int = 40, need: float = 0.95) -> np.ndarray | None:
    """A size x size box mostly inside region (first fit from the top-left, on a coarse grid)."""
    h, w = region.shape
    for y in range(4, h - size - 3, 8):
        for x in range(4, w - size - 3, 8):
            if region[y:y + size, x:x + size].mean() >= need:
                m = np.zeros_like(region)
                m[y:y + size, x:x + size] = True
                return m
    return None


def run(engine: Attune, n: int, steps: int, n_reweight: int, n_inpaint: int, progress=print) -> dict:
    t0 = time.time()
    priors = location_priors()
    rng = np.random.default_rng(0)
    named_hits, named_total, absent_ok, absent_total = 0, 0, 0, 0
    per_object: dict[str, list[int]] = {}
    scores = {k: [] for k in ("heatmap", "uniform", "prior", "other")}
    topk = {k: [] for k in scores}
    for i in range(n):
        scene = world.render(SEED_OFFSETS["main"] + i, "heldout")
        res = engine.generate(GenerateParams(prompt=scene.caption, seed=i, steps=steps, syntax="none"))
        image = np.asarray(res.image.convert("RGB"))
        seg = analyse(image)
        named = list(scene.words)
        for name in named:
            region = object_region(seg, scene, name)
            hit = region is not None and region.any()
            named_hits += hit
            named_total += 1
            per_object.setdefault(name if name not in world.GROUND_KINDS else "ground", []).append(int(hit))
            if not hit:
                continue
            word, pos = head_word(scene, name)
            heat = normalize_map(res.maps.token_map(token_indices(res.word_tokens, scene, pos), size=image.shape[:2]))
            others = [o for o in named if o != name]
            other_pos = head_word(scene, others[int(rng.integers(len(others)))])[1] if others else 1
            other = normalize_map(res.maps.token_map(token_indices(res.word_tokens, scene, other_pos),
                                                     size=image.shape[:2]))
            prior = priors.get(name if name not in world.GROUND_KINDS else "ground", np.zeros(image.shape[:2]))
            k = int(region.sum())
            uniform_rand = rng.random(image.shape[:2])  # ties of a uniform map broken at random
            for key, m in (("heatmap", heat), ("prior", prior), ("other", other)):
                scores[key].append(iou(m >= TAU, region))
                topk[key].append(iou(topk_mask(m, k), region))
            scores["uniform"].append(iou(np.ones_like(region), region))
            topk["uniform"].append(iou(topk_mask(uniform_rand, k), region))
        for name in world.FOREGROUND:
            if name in scene.masks:
                continue
            absent_total += 1
            absent_ok += name not in seg
        if progress and (i + 1) % 10 == 0:
            progress(f"  presence {i + 1}/{n}: {named_hits / max(1, named_total):.3f}, "
                     f"mIoU {np.mean(scores['heatmap']) if scores['heatmap'] else float('nan'):.3f}, "
                     f"{time.time() - t0:.0f}s")

    # reweighting: area and brightness of the object vs its word's weight, per method
    rw: dict[str, dict] = {m: {} for m in METHODS}
    for obj in REWEIGHT_OBJECTS if n_reweight > 0 else ():
        scenes, s = [], SEED_OFFSETS["reweight"]
        while len(scenes) < n_reweight and s < SEED_OFFSETS["reweight"] + 5000:
            sc = world.render(s, "heldout")
            if obj in sc.words:
                scenes.append((s, sc))
            s += 1
        areas = {(m, w): [] for m in METHODS for w in WEIGHTS}
        lights = {(m, w): [] for m in METHODS for w in WEIGHTS}
        for seed, sc in scenes:
            word, _ = head_word(sc, obj)
            base = None
            for m in METHODS:
                for w in WEIGHTS:
                    if w == 1.0 and base is not None:
                        img = base
                    else:
                        params = GenerateParams(prompt=sc.caption, seed=seed, steps=steps, syntax="none",
                                                weights={word: w} if w != 1.0 else {}, weight_mode=m)
                        img = np.asarray(engine.generate(params).image.convert("RGB"))
                        base = img if w == 1.0 else base
                    region = segment(img).get(obj)
                    areas[(m, w)].append(0.0 if region is None else float(region.sum()))
                    lights[(m, w)].append(0.0 if region is None else brightness(img, region))
        for m in METHODS:
            mean_area = [float(np.mean(areas[(m, w)])) for w in WEIGHTS]
            mean_light = [float(np.mean(lights[(m, w)])) for w in WEIGHTS]
            rw[m][obj] = {"area": mean_area, "brightness": mean_light, "spearman_area": spearman(WEIGHTS, mean_area),
                          "spearman_brightness": spearman(WEIGHTS, mean_light), "n": len(scenes)}
        if progress:
            progress(f"  reweight {obj}: " + ", ".join(f"{m} {rw[m][obj]['spearman_area']}" for m in METHODS)
                     + f", {time.time() - t0:.0f}s")
    reweight_spearman = {}
    for m in METHODS:
        vals = [v["spearman_area"] for v in rw[m].values() if v["spearman_area"] is not None]
        reweight_spearman[m] = float(np.mean(vals)) if vals else None

    # inpainting: add an object inside a 40 px box of sky (moon, sun) or ground (house, tree); the rest must stay
    psnrs, psnrs_beyond_blur, successes = [], [], []
    targets = list(INPAINT_TARGETS)
    s = SEED_OFFSETS["inpaint"]
    while len(successes) < n_inpaint and s < SEED_OFFSETS["inpaint"] + 1000:
        sc = world.render(s, "heldout")
        s += 1
        obj = next((t for t in targets[len(successes) % len(targets):] + targets if t not in sc.masks), None)
        if obj is None:
            continue
        parent = engine.generate(GenerateParams(prompt=sc.caption, seed=s, steps=steps, syntax="none"))
        parent_img = np.asarray(parent.image.convert("RGB"))
        seg = analyse(parent_img)
        area = seg.get("sky") if obj in SKY_TARGETS else seg.get(sc.attributes["ground"])
        box = find_box(area) if area is not None else None
        if box is None:
            continue
        prompt = INPAINT_TARGETS[obj]  # as in the app: the user types what goes into the mask
        params = InpaintParams(base=GenerateParams(prompt=prompt, seed=s, steps=steps, syntax="none"),
                               image=parent.image, mask=box)
        out = np.asarray(engine.inpaint(params).image.convert("RGB"))
        from scipy.ndimage import binary_dilation

        psnrs.append(psnr(out, parent_img, ~box))
        psnrs_beyond_blur.append(psnr(out, parent_img, ~binary_dilation(box, iterations=3 * params.mask_blur)))
        region = segment(out).get(obj)
        successes.append(int(region is not None and (region & box).sum() >= MIN_AREA))
    finite = [p for p in psnrs if np.isfinite(p)]
    return {
        "presence": named_hits / max(1, named_total),
        "absence": absent_ok / max(1, absent_total),
        "presence_per_object": {k: float(np.mean(v)) for k, v in sorted(per_object.items())},
        "heatmap_miou": float(np.mean(scores["heatmap"])) if scores["heatmap"] else None,
        "heatmap_topk_iou": float(np.mean(topk["heatmap"])) if topk["heatmap"] else None,
        "baselines": {
            "miou": {k: float(np.mean(scores[k])) if scores[k] else None for k in ("uniform", "prior", "other")},
            "topk_iou": {k: float(np.mean(topk[k])) if topk[k] else None for k in ("uniform", "prior", "other")},
        },
        "heatmap_pairs": len(scores["heatmap"]),
        "reweight_spearman": reweight_spearman,
        "reweight_detail": rw,
        "inpaint_psnr_outside": float(np.mean(finite)) if finite else (float("inf") if psnrs else None),
        "inpaint_psnr_beyond_blur": float(np.mean([p for p in psnrs_beyond_blur if np.isfinite(p)] or [float("inf")]))
        if psnrs_beyond_blur else None,
        "inpaint_success": float(np.mean(successes)) if successes else None,
        "inpaint_n": len(successes),
        "n": n,
        "steps": steps,
        "reweight_n": n_reweight,
        "seconds": round(time.time() - t0, 1),
        "machine": " ".join(x for x in (platform.machine(), platform.processor(), f"{os.cpu_count()} CPUs",
                                        engine.device, engine.backend_name) if x),
        "model": engine.model_id,
        "weights_hash": engine.weights_hash,
    }


def table(r: dict) -> str:
    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    b = r["baselines"]
    lines = [
        f"refine benchmark: n={r['n']}, steps={r['steps']}, {r['seconds']}s on {r['machine']}",
        "| metric | value | uniform | class prior | other word | target |",
        "|---|---|---|---|---|---|",
        f"| presence | {f(r['presence'])} | | | | ≥ 0.85 |",
        f"| absence | {f(r['absence'])} | | | | ≥ 0.85 |",
        f"| heatmap mIoU (τ=0.4) | {f(r['heatmap_miou'])} | {f(b['miou']['uniform'])} | {f(b['miou']['prior'])} | "
        f"{f(b['miou']['other'])} | ≥ 0.5 |",
        f"| heatmap top-k IoU | {f(r['heatmap_topk_iou'])} | {f(b['topk_iou']['uniform'])} | {f(b['topk_iou']['prior'])} | "
        f"{f(b['topk_iou']['other'])} | |",
    ]
    for m in METHODS:
        lines.append(f"| reweight Spearman ({m}) | {f(r['reweight_spearman'][m])} | | | | ≥ 0.8 (score, prob) |")
    lines += [
        f"| inpaint PSNR outside mask (dB) | {f(r['inpaint_psnr_outside'])} | | | | ≥ 40 |",
        f"| inpaint success | {f(r['inpaint_success'])} (n={r['inpaint_n']}) | | | | ≥ 0.7 |",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Refinement benchmark on the built-in model.")
    p.add_argument("--n", type=int, default=200, help="held-out captions for presence/absence and heatmaps")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--reweight-n", type=int, default=None, help="captions per reweighted object (default n/20, ≥2)")
    p.add_argument("--inpaint-n", type=int, default=None, help="inpaints (default n/5, ≥2)")
    p.add_argument("--model", default=None, help="model folder (default: the built-in tiny-scenes)")
    p.add_argument("--backend", default="torch")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    try:
        if args.n < 1 or args.steps < 1:
            raise AttuneError("--n and --steps must be at least 1.")
        engine = Attune(args.model, backend=args.backend)
        n_rw = max(2, args.n // 20) if args.reweight_n is None else args.reweight_n
        n_ip = max(2, args.n // 5) if args.inpaint_n is None else args.inpaint_n
        result = run(engine, args.n, args.steps, n_rw, n_ip, progress=lambda m: print(m, file=sys.stderr, flush=True))
    except AttuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
