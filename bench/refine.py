"""Refinement benchmark on the built-in model: presence/absence, heatmap faithfulness, reweighting, inpainting.

    python -m bench.refine [--n 200] [--steps N (default: the model's)] [--reweight-cases 2] [--inpaint-n 100] [--json] [--out FILE]

Splits (the code says which is which, `SPLITS`): the *tuning* split is the scene world's training grammar
(train/world.py "train" templates and pairs) at seeds from 50 000, used to choose engine settings (slider knots,
blend threshold); the *test* split is the world's held-out templates and object pairs ("heldout"), seeds from 0.
Every reported number comes from the split named in the JSON (`split`, default test).

Images are read with the colour segmenter (train/segment.py); heatmaps and reweights go through the engine's public
API (engine.pipeline.attune.Attune), exactly as the app does. Metric definitions: bench/refine_metrics.py.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import refine_metrics as M
from bench.machine import machine_info
from engine.defaults import DEFAULT_GUIDANCE
from engine.errors import AttuneError
from engine.attention.maps import normalize_map
from engine.sampling.layout import LAYOUT_MODES
from engine.pipeline.attune import Attune
from engine.pipeline.params import GenerateParams, InpaintParams
from engine.sampling.loop import is_small_mask
from engine.sampling.masks import erase_by_fill
from engine.words.inpaint_instruction import parse_inpaint_instruction
from engine.words.weights import WEIGHT_MODES
from train import world
from train.segment import MIN_AREA, found_inside, segment, sky_kind

SPLITS = {"tuning": ("train", 50_000), "test": ("heldout", 0)}  # bench split -> (world split, first seed)
TAU = 0.4  # DAAM's threshold for a binarised heatmap
WEIGHTS = (0.0, 0.5, 1.5, 2.0)  # compared with w = 1 (the parent)
SWEEP = (0.0, 0.5, 1.0, 1.5, 2.0)
INPAINT_TARGETS = {"moon": "the full moon", "house": "a red house", "tree": "a lone tree", "sun": "the sun"}
SKY_TARGETS = ("moon", "sun")
INPAINT_BOX = 40
PSNR_CAP = 100.0
PARTS = ("presence", "reweight", "inpaint", "instructions")
# Inpaint boxes as people type them (engine.words.inpaint_instruction), each run as the Studio runs it
PHRASINGS = ("replace with {x}", "add {x}", "{x}")
ERASE_BOXES = ("remove the {x}", "")  # "" = the empty box
# DESIGN §1 step 4: "mask from word" on "sky" (the app's own mask), then this box; success = the object inside the
# mask and the sky keeping its kind (night stays night)
SKY_SWAP_BOX, SKY_SWAP_OBJECT = "sky: replace with {x}", "misty forest"
ERASE_OBJECTS = {"full moon": "moon", "crescent moon": "moon", "sun": "sun", "house": "house", "tree": "tree",
                 "wolf": "wolf"}  # scene object -> segmenter class
ERASE_MARGIN = 4  # px the erase mask reaches past the object (a brush stroke over it)
BACKGROUND_RING = 0.6  # share of the mask's surroundings that must be one background class (sky or ground)
BACKGROUND_BACK = 0.5  # share of the mask that must be that class again after the erase


def scene_at(split: str, index: int) -> tuple[int, world.Scene]:
    world_split, start = SPLITS[split]
    seed = start + index
    return seed, world.render(seed, world_split)


def head_word(scene: world.Scene, name: str) -> str:
    """The object's noun in the caption (the last word of its phrase)."""
    return scene.caption_words[scene.words[name][-1]]


def token_indices(word_tokens, scene: world.Scene, pos: int) -> list[int]:
    """Token indices of caption word `pos`; falls back to the word's text if the engine split words differently."""
    if [w.lower() for w in word_tokens.words] == [w.lower() for w in scene.caption_words]:
        return list(word_tokens.token_indices[pos])
    return word_tokens.indices_for(scene.caption_words[pos])


def class_of(name: str) -> str:
    return "ground" if name in world.GROUND_KINDS else name


def detected(seg: dict, scene: world.Scene, name: str) -> np.ndarray | None:
    """The generated image's region for a named object (sky must also be of the named kind)."""
    if name == "sky":
        return seg.get("sky") if seg.get("_sky_kind") == scene.attributes["sky"] else None
    return seg.get(name)


def analyse(image: np.ndarray) -> dict:
    seg = segment(image)
    seg["_sky_kind"] = sky_kind(image)
    return seg


def location_priors(n: int = 300) -> dict[str, np.ndarray]:
    """Mean ground-truth mask per class over training scenes (the 'class location prior' baseline)."""
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for s in range(n):
        sc = world.render(s, "train")
        for name, m in sc.masks.items():
            key = class_of(name)
            sums[key] = sums.get(key, 0) + m.astype(np.float32)
            counts[key] = counts.get(key, 0) + 1
    return {k: normalize_map(v / counts[k]) for k, v in sums.items()}


def find_box(region: np.ndarray, size: int = INPAINT_BOX, need: float = 0.95) -> np.ndarray | None:
    """A size x size box mostly inside region (first fit from the top-left, on a coarse grid)."""
    h, w = region.shape
    for y in range(4, h - size - 3, 8):
        for x in range(4, w - size - 3, 8):
            if region[y:y + size, x:x + size].mean() >= need:
                m = np.zeros_like(region)
                m[y:y + size, x:x + size] = True
                return m
    return None


def _rgb(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _finite(x: float) -> float:
    return PSNR_CAP if (x is None or not math.isfinite(x)) else min(float(x), PSNR_CAP)


def _stats(values) -> dict:
    v = [float(x) for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return {"n": 0}
    return {"n": len(v), "mean": float(np.mean(v)), "median": float(np.median(v)), "min": float(np.min(v)),
            "max": float(np.max(v))}


# ---------------------------------------------------------------------------------------------- parts
class Bench:
    def __init__(self, engine: Attune, *, split: str, steps: int, methods, layouts, progress=print,
                 weights=WEIGHTS) -> None:
        self.engine, self.split, self.steps = engine, split, steps
        self.weights = tuple(float(w) for w in weights)
        self.sweep = tuple(sorted(set(self.weights) | {1.0}))
        self.methods, self.layouts = list(methods), list(layouts)
        self.progress = progress or (lambda *_: None)
        self.t0 = time.time()
        self.rng = np.random.default_rng(0)
        self.priors = location_priors()
        self.parents: list[dict] = []  # generated test images, reused by the reweight and inpaint parts
        self.presence: dict[str, list[int]] = {}
        self.absence: list[int] = []
        self.faith: dict[str, dict[str, list[float]]] = {}  # class -> metric -> values
        self.reweight_rows: list[dict] = []
        self.reweight_cases: dict[str, int] = {}
        self.record_presence = True
        self.inpaint_rows: list[dict] = []
        self.instruction_rows: list[dict] = []
        self.unet_used: set[str] = set()
        self.classes = tuple(world.FOREGROUND)  # classes that get reweight cases

    def log(self, text: str) -> None:
        self.progress(f"[{time.time() - self.t0:6.0f}s] {text}")

    def params(self, scene: world.Scene, seed: int) -> GenerateParams:
        guidance = {} if TUNED_GUIDANCE is None else {"guidance": TUNED_GUIDANCE}
        scheduler = {} if TUNED_SCHEDULER is None else {"scheduler": TUNED_SCHEDULER}
        return GenerateParams(prompt=scene.caption, seed=seed, steps=self.steps, syntax="none", **guidance,
                              **scheduler)

    # -------------------------------------------------------------- presence, absence, faithfulness
    def presence_one(self, index: int, cases_per_class: int) -> None:
        seed, scene = scene_at(self.split, index)
        params = self.params(scene, seed)
        res = self.engine.generate(params)
        image = _rgb(res.image)
        seg = analyse(image)
        named = list(scene.words)
        for name in named if self.record_presence else ():
            region = detected(seg, scene, name)
            hit = region is not None and region.any()
            self.presence.setdefault(class_of(name), []).append(int(hit))
            if hit:
                self.faithfulness(res, scene, name, region, named)
        for name in world.FOREGROUND if self.record_presence else ():
            if name not in scene.masks:
                self.absence.append(int(name not in seg))
        parent = {"seed": seed, "scene": scene, "params": params, "image": image, "seg": seg}
        self.parents.append(parent)
        if cases_per_class > 0:
            todo = [n for n in named if n in self.classes and seg.get(n) is not None
                    and self.reweight_cases.get(n, 0) < cases_per_class]
            if todo:
                name = min(todo, key=lambda n: (self.reweight_cases.get(n, 0), world.FOREGROUND.index(n)))
                self.reweight_case(parent, name)

    def faithfulness(self, res, scene, name, region, named) -> None:
        shape = region.shape
        word_tokens = res.word_tokens
        heat = normalize_map(res.maps.token_map(token_indices(word_tokens, scene, scene.words[name][-1]), size=shape))
        others = [o for o in named if o != name]
        other_name = others[int(self.rng.integers(len(others)))] if others else None
        other = (normalize_map(res.maps.token_map(token_indices(word_tokens, scene, scene.words[other_name][-1]),
                                                size=shape))
                 if other_name else np.zeros(shape, np.float32))
        prior = self.priors.get(class_of(name), np.zeros(shape, np.float32))
        k = int(region.sum())
        rows = self.faith.setdefault(class_of(name), {})
        for key, m in (("heatmap", heat), ("prior", prior), ("other", other)):
            rows.setdefault(key, []).append(M.iou(m >= TAU, region))
            rows.setdefault(key + "_topk", []).append(M.iou(M.topk_mask(m, k), region))
        rows.setdefault("uniform", []).append(M.iou(np.ones(shape, bool), region))
        rows.setdefault("uniform_topk", []).append(M.iou(M.topk_mask(self.rng.random(shape), k), region))

    # -------------------------------------------------------------- reweighting
    def reweight_case(self, parent: dict, name: str) -> None:
        self.reweight_cases[name] = self.reweight_cases.get(name, 0) + 1
        word = head_word(parent["scene"], name)
        base_obj = parent["seg"][name]
        for method in self.methods:
            for layout in self.layouts:
                areas = {1.0: M.near_area(base_obj, base_obj)}
                for w in self.weights:
                    res = self.engine.reweight(parent["params"], {word: w}, method, layout)
                    image = _rgb(res.image)
                    obj = segment(image).get(name)
                    far = M.far_region(base_obj, obj, image.shape[:2])
                    areas[w] = M.near_area(obj, base_obj)
                    self.log(f"  {name} {method}/{layout} w={w:g}: area x{M.area_ratio(obj, base_obj):.2f}")
                    self.reweight_rows.append({
                        "class": name, "seed": parent["seed"], "word": word, "method": method, "layout": layout,
                        "w": w, "area_ratio": M.area_ratio(obj, base_obj), "extra_copies": M.extra_copies(obj, base_obj),
                        "locality": M.locality(parent["image"], image, base_obj, obj),
                        "psnr_outside": _finite(M.psnr(parent["image"], image, far)),
                        "detected_near": int(areas[w] >= MIN_AREA),
                    })
                rho = M.spearman(self.sweep, [areas[w] for w in self.sweep])
                for row in self.reweight_rows[-len(self.weights):]:
                    row["spearman"] = rho
        self.log(f"reweight case {name} (seed {parent['seed']}, word '{word}') done")

    def reweight_summary(self) -> dict:
        return summarize_reweight(self.reweight_rows, self.weights)


    # -------------------------------------------------------------- inpainting
    def inpaint_all(self, n_inpaint: int, extra_start: int, checkpoint=None) -> list[dict]:
        rows = self.inpaint_rows
        targets = list(INPAINT_TARGETS)
        queue = list(self.parents)
        index = extra_start
        unet_used = self.unet_used
        while len(rows) < n_inpaint:
            if not queue:
                if index > extra_start + 5 * n_inpaint:
                    break
                seed, scene = scene_at(self.split, index)
                index += 1
                params = self.params(scene, seed)
                image = _rgb(self.engine.generate(params).image)
                queue.append({"seed": seed, "scene": scene, "params": params, "image": image, "seg": analyse(image)})
            parent = queue.pop(0)
            scene, seg = parent["scene"], parent["seg"]
            start = len(rows) % len(targets)
            found = target_box(scene, seg, targets[start:] + targets[:start])
            if found is None:
                continue
            obj, box = found
            params = InpaintParams(base=parent["params"].replace(prompt=INPAINT_TARGETS[obj]),
                                   image=_pil(parent["image"]), mask=box)
            res = self.engine.inpaint(params)
            out = _rgb(res.image)
            raw = res.info.get("before_paste")
            unet_used.add(str(res.info.get("unet", f"unet ({self.engine.components.unet_in_channels} channels)")))
            before = parent["seg"].get(obj)
            rows.append({
                "seed": parent["seed"], "object": obj,
                "success": int(found_inside(out, obj, box)),
                "parent_baseline": int(before is not None and int((before & box).sum()) >= MIN_AREA),
                "psnr_outside_after": _finite(M.psnr(parent["image"], out, ~box)),
                "outside_identical": int(np.array_equal(parent["image"][~box], out[~box])),
                "psnr_outside_before_paste": _finite(M.psnr(parent["image"], raw, ~box)) if raw is not None else None,
                "change_inside": float(np.abs(out.astype(np.int16) - parent["image"].astype(np.int16))[box].mean()),
            })
            if len(rows) % 10 == 0:
                self.log(f"inpaint {len(rows)}/{n_inpaint}: success {np.mean([r['success'] for r in rows]):.3f}")
            if checkpoint is not None and len(rows) % 5 == 0:
                checkpoint()
        return rows


    # -------------------------------------------------------------- inpaint instructions and erase
    def instruction_all(self, n_cases: int, start: int, checkpoint=None) -> list[dict]:
        """Per test scene: one object asked for in each phrasing (in a box of sky or ground, as the inpaint part),
        and one object erased with each erase box; until each row has n_cases."""
        rows = self.instruction_rows
        index = start

        def count(box: str) -> int:
            return sum(1 for r in rows if r["box"] == box)

        boxes = PHRASINGS + ERASE_BOXES + (SKY_SWAP_BOX,)
        while min(count(b) for b in boxes) < n_cases and index < start + 10 * n_cases:
            seed, scene = scene_at(self.split, index)
            index += 1
            params = self.params(scene, seed)
            parent = self.engine.generate(params)
            image = _rgb(parent.image)
            seg = analyse(image)
            if count(SKY_SWAP_BOX) < n_cases:
                self._sky_swap(seed, scene, params, parent, image)
            if min(count(b) for b in PHRASINGS) < n_cases:
                self._phrasings(seed, scene, params, image, seg)
            if min(count(b) for b in ERASE_BOXES) < n_cases:
                self._erases(seed, scene, params, image, seg)
            if index % 10 == 0:
                done = {b or "(empty)": count(b) for b in boxes}
                self.log(f"instructions, scene {index - start}: cases {done}")
                if checkpoint is not None:
                    checkpoint()
        return rows

    def _run_box(self, typed: str, image_prompt: str, params, image: np.ndarray, mask: np.ndarray):
        """What the Studio runs for a typed box: the parsed prompt through the engine, or the fill."""
        instruction = parse_inpaint_instruction(typed, image_prompt, small_mask=is_small_mask(mask))
        if not instruction.prompt:
            return instruction, erase_by_fill(image, mask)
        res = self.engine.inpaint(InpaintParams(base=params.replace(prompt=instruction.prompt), image=_pil(image),
                                                mask=mask))
        return instruction, _rgb(res.image)

    def _phrasings(self, seed, scene, params, image, seg) -> None:
        found = target_box(scene, seg, list(INPAINT_TARGETS))
        if found is None:
            return
        obj, box = found
        ran: dict[str, np.ndarray] = {}  # phrasings that parse to the same prompt run once
        for phrasing in PHRASINGS:
            typed = phrasing.format(x=INPAINT_TARGETS[obj])
            instruction = parse_inpaint_instruction(typed, scene.caption, small_mask=is_small_mask(box))
            if instruction.prompt not in ran:
                ran[instruction.prompt] = self._run_box(typed, scene.caption, params, image, box)[1]
            found = segment(ran[instruction.prompt]).get(obj)
            self.instruction_rows.append({
                "seed": seed, "box": phrasing, "typed": typed, "ran": instruction.prompt, "object": obj,
                "success": int(found is not None and int((found & box).sum()) >= MIN_AREA)})

    def _sky_swap(self, seed, scene, params, parent, image) -> None:
        words = [w.lower().strip(",.") for w in scene.caption.split()]
        kind = sky_kind(image)
        if "sky" not in words or kind is None or SKY_SWAP_OBJECT in scene.masks:
            return
        mask = parent.maps.mask_from_word(self.engine.tokenize(scene.caption), "sky", size=image.shape[:2])
        if not mask.any():
            return
        typed = SKY_SWAP_BOX.split(": ", 1)[1].format(x=SKY_SWAP_OBJECT)
        instruction, out = self._run_box(typed, scene.caption, params, image, mask)
        found = found_inside(out, SKY_SWAP_OBJECT, mask)
        kept = sky_kind(out) == kind
        self.instruction_rows.append({
            "seed": seed, "box": SKY_SWAP_BOX, "typed": typed, "ran": instruction.prompt, "object": SKY_SWAP_OBJECT,
            "sky": kind, "mask_share": float(mask.mean()), "found": int(found), "sky_kept": int(kept),
            "success": int(found and kept)})

    def _erases(self, seed, scene, params, image, seg) -> None:
        for name, cls, mask, background in erase_cases(scene, seg)[:1]:  # one erase per scene
            for box in ERASE_BOXES:
                typed = box.format(x=head_word(scene, name))
                instruction, out = self._run_box(typed, scene.caption, params, image, mask)
                after = segment(out)
                left, back = after.get(cls), after.get(background)
                gone = left is None or int((left & mask).sum()) < MIN_AREA
                back_share = float((back & mask).sum() / mask.sum()) if back is not None else 0.0
                self.instruction_rows.append({
                    "seed": seed, "box": box, "typed": typed, "ran": instruction.prompt, "object": name,
                    "background": background, "gone": int(gone), "background_share": back_share,
                    "success": int(gone and back_share >= BACKGROUND_BACK),
                    "psnr_outside": _finite(M.psnr(image, out, ~mask))})

    # -------------------------------------------------------------- summary
    def presence_summary(self) -> dict:
        return summarize_presence(self.presence, self.absence, self.faith)



def target_box(scene: world.Scene, seg: dict, targets: list[str]) -> tuple[str, np.ndarray] | None:
    """The first target neither in the caption nor in the image, and a box for it in the sky (moon, sun) or on the
    ground (find_box); None when there is no such target or no room."""
    obj = next((t for t in targets if t not in scene.masks and t not in seg), None)
    if obj is None:
        return None
    area = seg.get("sky") if obj in SKY_TARGETS else seg.get(scene.attributes["ground"])
    box = find_box(area) if area is not None else None
    return None if box is None else (obj, box)


def erase_cases(scene: world.Scene, seg: dict) -> list[tuple[str, str, np.ndarray, str]]:
    """(object, its class, the mask: its segmented region grown by ERASE_MARGIN, the background class around it) for
    each erasable object of the scene, in ERASE_OBJECTS order; an object that is not against plain sky or ground has
    no single class to come back and is left out."""
    from scipy import ndimage

    grow = np.ones((2 * ERASE_MARGIN + 1,) * 2, bool)
    cases = []
    for name, cls in ERASE_OBJECTS.items():
        if name not in scene.masks or seg.get(cls) is None:
            continue
        mask = ndimage.binary_dilation(seg[cls], grow)
        ring = ndimage.binary_dilation(mask, grow) & ~mask
        shares = {k: float((seg[k] & ring).sum() / ring.sum())
                  for k in ("sky", scene.attributes["ground"]) if seg.get(k) is not None}
        if shares and max(shares.values()) >= BACKGROUND_RING:
            cases.append((name, cls, mask, max(shares, key=shares.get)))
    return cases


def summarize_reweight(reweight_rows: list[dict], weights) -> dict:
    """Per method/layout and weight: medians and means over the cases; Spearman per case over the sweep."""
    out: dict = {}
    for method, layout in dict.fromkeys((r["method"], r["layout"]) for r in reweight_rows):
        rows = [r for r in reweight_rows if r["method"] == method and r["layout"] == layout]
        entry: dict = {}
        for w in weights:
            rw = [r for r in rows if r["w"] == w]
            entry[f"w={w:g}"] = {
                "area_ratio_median": _stats(r["area_ratio"] for r in rw).get("median"),
                "area_ratio_mean": _stats(r["area_ratio"] for r in rw).get("mean"),
                "extra_copies_mean": _stats(r["extra_copies"] for r in rw).get("mean"),
                "locality_median": _stats(r["locality"] for r in rw).get("median"),
                "locality_mean": _stats(r["locality"] for r in rw).get("mean"),
                "psnr_outside_median": _stats(r["psnr_outside"] for r in rw).get("median"),
                "psnr_outside_mean": _stats(r["psnr_outside"] for r in rw).get("mean"),
                "still_detected": _stats(r["detected_near"] for r in rw).get("mean"),
                "n": len(rw),
            }
        by_case = {(r["class"], r["seed"]): r["spearman"] for r in rows if "spearman" in r}
        per_class: dict[str, list[float]] = {}
        for (cls, _), rho in by_case.items():
            per_class.setdefault(cls, []).append(rho)
        entry["spearman_mean"] = float(np.mean(list(by_case.values()))) if by_case else None
        entry["spearman_per_class"] = {c: float(np.mean(v)) for c, v in sorted(per_class.items())}
        entry["cases"] = len(by_case)
        out[f"{method}/{layout}"] = entry
    return out


def summarize_inpaint(rows: list[dict], unet_used) -> dict:
    per_object = {}
    for obj in INPAINT_TARGETS:
        sel = [r["success"] for r in rows if r["object"] == obj]
        if sel:
            per_object[obj] = {"success": float(np.mean(sel)), "n": len(sel)}
    return {
        "n": len(rows),
        "success": _stats(r["success"] for r in rows).get("mean"),
        "parent_baseline": _stats(r["parent_baseline"] for r in rows).get("mean"),
        "psnr_outside_before_paste": _stats(r["psnr_outside_before_paste"] for r in rows),
        "psnr_outside_after_paste": _stats(r["psnr_outside_after"] for r in rows),
        "outside_bit_identical": _stats(r["outside_identical"] for r in rows).get("mean"),
        "change_inside_mean": _stats(r["change_inside"] for r in rows).get("mean"),
        "per_object": per_object,
        "unet": list(unet_used),
        "note": "psnr_outside_before_paste compares the model's decoded output with the parent outside the mask, "
                "before the parent's pixels are pasted back; after paste-back the outside is the parent's "
                f"(identical pixels count as {PSNR_CAP:g} dB).",
    }


def summarize_instructions(rows: list[dict]) -> dict:
    """Success per typed box: phrasings (the object detected inside the mask) and erases (the object gone from the
    mask, and at least half the mask its surroundings' background class again)."""
    out: dict = {}
    for box in PHRASINGS + ERASE_BOXES + (SKY_SWAP_BOX,):
        sel = [r for r in rows if r["box"] == box]
        if not sel:
            continue
        entry = {"n": len(sel), "success": float(np.mean([r["success"] for r in sel])),
                 "ran": sorted({r["ran"] if r["ran"] else "(fill from the surroundings)" for r in sel})[:3]}
        if box in ERASE_BOXES:
            entry["gone"] = float(np.mean([r["gone"] for r in sel]))
            entry["background_back"] = float(np.mean([r["background_share"] >= BACKGROUND_BACK for r in sel]))
            entry["per_object"] = {o: float(np.mean([r["success"] for r in sel if r["object"] == o]))
                                   for o in sorted({r["object"] for r in sel})}
        if box == SKY_SWAP_BOX:
            entry["found"] = float(np.mean([r["found"] for r in sel]))
            entry["sky_kept"] = float(np.mean([r["sky_kept"] for r in sel]))
            entry["per_sky"] = {k: float(np.mean([r["sky_kept"] for r in sel if r["sky"] == k]))
                                for k in sorted({r["sky"] for r in sel})}
        out["(empty box)" if box == "" else box] = entry
    return out


def summarize_presence(presence: dict, absence: list, faith_rows: dict) -> dict:
    """Presence, absence and faithfulness from the raw rows (class -> hits; absences; class -> metric -> IoUs)."""
    fg = [h for c, v in presence.items() if c in world.FOREGROUND for h in v]
    scenery = [h for c, v in presence.items() if c not in world.FOREGROUND for h in v]
    per_object = {}
    for cls in sorted(presence):
        faith = faith_rows.get(cls, {})
        per_object[cls] = {
            "presence": float(np.mean(presence[cls])), "n": len(presence[cls]),
            "miou": float(np.mean(faith["heatmap"])) if faith.get("heatmap") else None,
            "topk_iou": float(np.mean(faith["heatmap_topk"])) if faith.get("heatmap_topk") else None,
            "scenery": cls not in world.FOREGROUND,
        }
    fg_classes = [c for c in per_object if not per_object[c]["scenery"] and per_object[c]["miou"] is not None]

    def mean_over(key, classes):
        vals = [v for c in classes for v in faith_rows.get(c, {}).get(key, [])]
        return float(np.mean(vals)) if vals else None

    faith = {
        "tau": TAU,
        "foreground": {key: mean_over(key, fg_classes) for key in
                       ("heatmap", "heatmap_topk", "uniform", "uniform_topk", "prior", "prior_topk", "other",
                        "other_topk")},
        "scenery": {key: mean_over(key, [c for c in per_object if per_object[c]["scenery"]])
                    for key in ("heatmap", "heatmap_topk", "uniform", "prior", "other")},
        "class_mean_miou": float(np.mean([per_object[c]["miou"] for c in fg_classes])) if fg_classes else None,
        "worst_class": min(fg_classes, key=lambda c: per_object[c]["miou"]) if fg_classes else None,
        "worst_class_miou": min(per_object[c]["miou"] for c in fg_classes) if fg_classes else None,
        "pairs": sum(len(faith_rows.get(c, {}).get("heatmap", [])) for c in fg_classes),
    }
    return {
        "presence": float(np.mean(fg)) if fg else None,
        "presence_n": len(fg),
        "presence_scenery": float(np.mean(scenery)) if scenery else None,
        "absence": float(np.mean(absence)) if absence else None,
        "absence_n": len(absence),
        "min_class_presence": min((v["presence"], c) for c, v in per_object.items() if not v["scenery"])
        if fg else None,
        "per_object": per_object,
        "faithfulness": faith,
    }


TUNABLE = {  # --tune NAME=VALUE: engine settings tried on the tuning split (recorded in the JSON as `tune`)
    "blend_threshold": "LocalBlend mask threshold (engine.sampling.layout.BLEND_THRESHOLD)",
    "blend_dilate": "LocalBlend mask growth in latent cells (engine.sampling.layout.BLEND_DILATE)",
    "inject_self": "share of steps with the parent's self-attention (engine.attention.injection.SELF_FRACTION)",
    "inject_cross": "share of steps with the parent's cross-attention (engine.attention.injection.CROSS_FRACTION)",
    "gain_above_one": "METHOD:GAIN, slider above 1 -> 1 + GAIN·(slider − 1) (engine.words.weights.ABOVE_ONE_GAIN)",
    "guidance": "classifier-free guidance of every generated parent, and so of its edits and inpaints "
                "(engine.defaults.DEFAULT_GUIDANCE)",
    "scheduler": "scheduler of every generated parent, and so of its edits and inpaints (engine.model.family)",
    "inpaint_time_of_day": "1|0: typed inpaint boxes keep the image's time-of-day phrase "
                           "(engine.words.inpaint_instruction.KEEP_TIME_OF_DAY)",
}
TUNED_GUIDANCE: float | None = None  # set by --tune guidance=G
TUNED_SCHEDULER: str | None = None  # set by --tune scheduler=NAME


def apply_tuning(pairs: list[str]) -> dict:
    """Set engine settings for a tuning run; returns {name: value} as recorded."""
    global TUNED_GUIDANCE, TUNED_SCHEDULER
    import functools

    import engine.pipeline.attune
    from engine.sampling import layout
    from engine.words import weights

    done: dict = {}
    blend: dict = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        name, value = name.strip(), value.strip()
        if name not in TUNABLE or not value:
            raise AttuneError(f"--tune takes NAME=VALUE with NAME one of {', '.join(TUNABLE)}; got '{pair}'.")
        try:
            if name == "blend_threshold":
                blend["threshold"] = float(value)
            elif name == "blend_dilate":
                blend["dilate"] = int(value)
            elif name == "guidance":
                TUNED_GUIDANCE = float(value)
            elif name == "scheduler":
                from engine.sampling.schedulers import SCHEDULERS

                if value not in SCHEDULERS:
                    raise AttuneError(f"--tune scheduler takes one of {', '.join(SCHEDULERS)}; got '{value}'.")
                TUNED_SCHEDULER = value
            elif name == "inpaint_time_of_day":
                from engine.words import inpaint_instruction

                if value not in ("0", "1"):
                    raise AttuneError(f"--tune inpaint_time_of_day takes 0 or 1; got '{value}'.")
                inpaint_instruction.KEEP_TIME_OF_DAY = value == "1"
            elif name.startswith("inject_"):
                from engine.attention import injection

                attr = {"inject_self": "SELF_FRACTION", "inject_cross": "CROSS_FRACTION"}[name]
                setattr(injection, attr, float(value))
            else:
                method, _, gain = value.partition(":")
                weights.ABOVE_ONE_GAIN[method] = float(gain)
        except ValueError:
            raise AttuneError(f"--tune {name} takes a number, got '{value}'.") from None
        done[name] = f"{done[name]},{value}" if name in done else value  # gain_above_one may repeat per method
    if blend:
        engine.pipeline.attune.LocalBlend = functools.partial(layout.LocalBlend, **blend)
    return done


def _pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except Exception:
        return "unknown"


def run(engine: Attune, *, n: int, steps: int, split: str = "test", reweight_cases: int = 2, n_inpaint: int = 100,
        methods=None, layouts=None, progress=print, weights=WEIGHTS, parts=PARTS, classes=None, start: int = 0,
        checkpoint=None) -> dict:
    """parts: which of presence, reweight, inpaint to run. Without presence, the reweight part scans up to n
    captions for its cases and the inpaint part generates its own parents."""
    methods = list(methods or WEIGHT_MODES)
    layouts = list(layouts or LAYOUT_MODES)
    bench = Bench(engine, split=split, steps=steps, methods=methods, layouts=layouts, progress=progress,
                  weights=weights)
    bench.record_presence = "presence" in parts
    if classes:
        bench.classes = tuple(classes)
    if "presence" not in parts:
        n = n if "reweight" in parts and reweight_cases > 0 else 0
    for i in range(start, start + n):
        cases_before = len(bench.reweight_rows)
        bench.presence_one(i, reweight_cases if "reweight" in parts else 0)
        if checkpoint is not None and ((i + 1 - start) % 5 == 0 or len(bench.reweight_rows) > cases_before):
            checkpoint(snapshot(bench, split, parts, complete=False))
        if not bench.record_presence and all(bench.reweight_cases.get(c, 0) >= reweight_cases
                                             for c in bench.classes):
            break
        if (i + 1 - start) % 10 == 0 or i + 1 - start == n:
            fg = [h for c, v in bench.presence.items() if c in world.FOREGROUND for h in v]
            bench.log(f"presence {i + 1 - start}/{n}: foreground {np.mean(fg) if fg else float('nan'):.3f}")
    if "inpaint" in parts and n_inpaint > 0:
        if not bench.record_presence:
            bench.parents = []
        bench.inpaint_rows = bench.inpaint_all(n_inpaint, start + n if bench.record_presence else start,
                                               checkpoint=(lambda: checkpoint(snapshot(bench, split, parts, False)))
                                               if checkpoint else None)
    if "instructions" in parts and n_inpaint > 0:
        bench.instruction_all(n_inpaint, start + n if bench.record_presence else start,
                              checkpoint=(lambda: checkpoint(snapshot(bench, split, parts, False))) if checkpoint else None)
    return snapshot(bench, split, parts, complete=True)


def snapshot(bench: "Bench", split: str, parts, complete: bool) -> dict:
    """The result so far: summaries plus the raw rows they come from (so runs of parts or shards can be merged)."""
    result = {"split": split, "parts": list(parts), "complete": complete}
    raw: dict = {}
    if "presence" in parts:
        result["captions_done"] = len(bench.parents)
        raw.update(presence=bench.presence, absence=bench.absence, faith=bench.faith)
        if bench.presence:
            result.update(summarize_presence(bench.presence, bench.absence, bench.faith))
    if "reweight" in parts:
        raw["reweight"] = bench.reweight_rows
        result["reweight_weights"] = list(bench.weights)
        result["reweight"] = summarize_reweight(bench.reweight_rows, bench.weights)
        result["reweight_cases_per_class"] = dict(sorted(bench.reweight_cases.items()))
    if "inpaint" in parts:
        raw["inpaint"] = bench.inpaint_rows
        result["inpaint"] = summarize_inpaint(bench.inpaint_rows, sorted(bench.unet_used))
    if "instructions" in parts:
        raw["instructions"] = bench.instruction_rows
        result["instructions"] = summarize_instructions(bench.instruction_rows)
    result["raw"] = raw
    result["seconds"] = round(time.time() - bench.t0, 1)
    return result


# ---------------------------------------------------------------------------------------------- output
def table(r: dict) -> str:
    def f(x, d=3):
        return "n/a" if x is None else f"{x:.{d}f}"

    lines = [f"refine benchmark ({r['split']} split): parts {', '.join(r['parts'])}, steps={r['steps']}, {r['seconds']}s"]
    if "presence" in r:
        lines += presence_table(r)
    weights = r.get("reweight_weights", WEIGHTS)
    if "reweight" in r:
        lines += ["", "| reweight method/layout | w | area ratio (median) | still detected | locality (median) | "
                  "PSNR outside (median dB) | extra copies (mean) | Spearman (mean) |", "|---|---|---|---|---|---|---|---|"]
        for key, e in r["reweight"].items():
            for w in weights:
                x = e[f"w={w:g}"]
                lines.append(f"| {key} | {w:g} | {f(x['area_ratio_median'], 2)} | {f(x['still_detected'], 2)} | "
                             f"{f(x['locality_median'])} | {f(x['psnr_outside_median'], 1)} | "
                             f"{f(x['extra_copies_mean'], 2)} | {f(e['spearman_mean'], 2)} |")
    ip = r.get("inpaint")
    if ip:
        lines += ["", f"inpaint (n={ip['n']}, {', '.join(ip['unet'])}): success {f(ip['success'])} "
                  f"(parent baseline {f(ip['parent_baseline'])}), PSNR outside before paste-back "
                  f"{f(ip['psnr_outside_before_paste'].get('mean'), 1)} dB, outside bit-identical after "
                  f"{f(ip['outside_bit_identical'])}, mean change inside {f(ip['change_inside_mean'], 1)}/255"]
    if r.get("instructions"):
        lines += ["", "| inpaint box as typed | n | success | what ran (examples) |", "|---|---|---|---|"]
        for box, e in r["instructions"].items():
            lines.append(f"| {box} | {e['n']} | {f(e['success'])} | {'; '.join(e['ran'])[:80]} |")
    return "\n".join(lines)


def presence_table(r: dict) -> list[str]:
    def f(x, d=3):
        return "n/a" if x is None else f"{x:.{d}f}"

    fa = r["faithfulness"]
    lines = [
        f"presence and faithfulness: n={r['n']} captions", "| metric | value | target |", "|---|---|---|",
        f"| presence (foreground) | {f(r['presence'])} (n={r['presence_n']}) | ≥ 0.9 |",
        f"| lowest class presence | {f(r['min_class_presence'][0]) if r['min_class_presence'] else 'n/a'} "
        f"({r['min_class_presence'][1] if r['min_class_presence'] else ''}) | ≥ 0.75 |",
        f"| absence | {f(r['absence'])} | ≥ 0.9 |",
        f"| presence_scenery (sky, ground) | {f(r['presence_scenery'])} | |",
        f"| heatmap mIoU (τ={TAU}), foreground | {f(fa['foreground']['heatmap'])}; uniform "
        f"{f(fa['foreground']['uniform'])}, class prior {f(fa['foreground']['prior'])}, other word "
        f"{f(fa['foreground']['other'])} | ≥ 0.7 |",
        f"| heatmap top-k IoU | {f(fa['foreground']['heatmap_topk'])}; uniform {f(fa['foreground']['uniform_topk'])}, "
        f"prior {f(fa['foreground']['prior_topk'])}, other {f(fa['foreground']['other_topk'])} | |",
        f"| worst class mIoU | {f(fa['worst_class_miou'])} ({fa['worst_class']}) | ≥ 0.5 |",
        "", "| per class | presence | mIoU | n |", "|---|---|---|---|",
    ]
    for c, v in r["per_object"].items():
        lines.append(f"| {c} | {f(v['presence'], 2)} | {f(v['miou'], 2)} | {v['n']} |")
    return lines


def write_json(result: dict, path: str) -> None:
    """Atomically (a checkpoint read mid-write is never half a file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(target)


def merge(paths: list[str], out: str | None, as_json: bool) -> int:
    """One result from runs of different parts or shards (same split and steps): raw rows are pooled and the
    summaries recomputed."""
    parts_in = []
    for path in paths:
        with open(path) as fh:
            parts_in.append(json.load(fh))
    first = parts_in[0]
    if any((r["split"], r["steps"]) != (first["split"], first["steps"]) for r in parts_in):
        print("error: the files have different splits or step counts.", file=sys.stderr)
        return 2
    if len({r.get("guidance") for r in parts_in}) > 1:  # runs before the field existed have none
        print("error: the files were run at different guidance scales.", file=sys.stderr)
        return 2
    raw: dict = {"presence": {}, "absence": [], "faith": {}, "reweight": [], "inpaint": [], "instructions": []}
    parts: list[str] = []
    unets: list[str] = []
    for r in parts_in:
        parts += [x for x in r["parts"] if x not in parts]
        got = r.get("raw", {})
        for cls, hits in got.get("presence", {}).items():
            raw["presence"].setdefault(cls, []).extend(hits)
        raw["absence"] += got.get("absence", [])
        for cls, metrics in got.get("faith", {}).items():
            for key, values in metrics.items():
                raw["faith"].setdefault(cls, {}).setdefault(key, []).extend(values)
        raw["reweight"] += got.get("reweight", [])
        raw["inpaint"] += got.get("inpaint", [])
        raw["instructions"] += got.get("instructions", [])
        unets += [u for u in (r.get("inpaint") or {}).get("unet", []) if u not in unets]
    merged = {k: first.get(k) for k in ("split", "steps", "guidance", "backend", "model", "weights_hash", "machine")}
    merged.update(parts=parts, complete=all(r.get("complete", True) for r in parts_in))
    if raw["presence"]:
        merged.update(summarize_presence(raw["presence"], raw["absence"], raw["faith"]))
    if raw["reweight"]:
        weights = first.get("reweight_weights") or next(r["reweight_weights"] for r in parts_in
                                                         if r.get("reweight_weights"))
        merged["reweight_weights"] = weights
        merged["reweight"] = summarize_reweight(raw["reweight"], weights)
        seeds: dict[str, set] = {}
        for row in raw["reweight"]:  # runs of different methods share their cases
            seeds.setdefault(row["class"], set()).add(row["seed"])
        merged["reweight_cases_per_class"] = {cls: len(v) for cls, v in sorted(seeds.items())}
    if raw["inpaint"]:
        merged["inpaint"] = summarize_inpaint(raw["inpaint"], unets)
    if raw["instructions"]:
        merged["instructions"] = summarize_instructions(raw["instructions"])
    # captions actually done (a checkpoint of an unfinished run has fewer than its --n; every test caption names
    # the sky, so older checkpoints without captions_done count its sky rows)
    merged["n"] = sum(r.get("captions_done", len(r.get("raw", {}).get("presence", {}).get("sky", [])))
                      for r in parts_in if "presence" in r["parts"])
    shards = [r for r in parts_in if "presence" in r["parts"]]
    if shards and all(b.get("start", 0) == a.get("start", 0) + a.get("captions_done", -1)
                      for a, b in zip(shards, shards[1:])):  # contiguous shards, in order: one caption range
        merged.update(start=shards[0].get("start", 0), captions_done=merged["n"])
    merged["runs"] = [{k: r.get(k) for k in ("command", "commit", "seconds", "parts", "n", "start", "complete",
                                             "model", "weights_hash")} for r in parts_in]
    merged["seconds"] = max(r["seconds"] for r in parts_in)
    merged["command"] = "; ".join(r["command"] for r in parts_in) + "; python -m bench.refine --merge " + \
        " ".join(paths)
    merged["commit"] = first.get("commit")
    merged["raw"] = raw
    if out:
        with open(out, "w") as fh:
            json.dump(merged, fh, indent=1)
    print(json.dumps(merged) if as_json else table(merged))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Refinement benchmark on the built-in model.")
    p.add_argument("--n", type=int, default=200, help="captions for presence/absence and heatmaps")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own default)")
    p.add_argument("--split", default="test", choices=list(SPLITS), help="test (report) or tuning (choose settings)")
    p.add_argument("--reweight-cases", type=int, default=2, help="reweighted objects per class (0: skip)")
    p.add_argument("--inpaint-n", type=int, default=100, help="inpainted scenes (0: skip)")
    p.add_argument("--methods", default=",".join(WEIGHT_MODES), help="comma-separated weighting methods")
    p.add_argument("--layouts", default=",".join(LAYOUT_MODES), help="comma-separated layout modes")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts to run: " + ", ".join(PARTS))
    p.add_argument("--weights", default=",".join(f"{w:g}" for w in WEIGHTS), help="reweight weights compared with 1")
    p.add_argument("--start", type=int, default=0, help="first caption index (to split a run into shards)")
    p.add_argument("--classes", default=None, help="comma-separated classes for reweight cases (default: all)")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="merge the JSON of runs of different parts; no run")
    p.add_argument("--model", default=None, help="model folder (default: the built-in tiny-scenes)")
    p.add_argument("--backend", default="torch")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--tune", action="append", default=[], metavar="NAME=VALUE",
                   help="engine setting to try (tuning split only): " + "; ".join(f"{k}: {v}" for k, v in TUNABLE.items()))
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out, args.json)
    try:
        if args.steps is None:
            from bench.app import model_default_steps

            args.steps = model_default_steps(args.model)
        if args.n < 1 or args.steps < 1:
            raise AttuneError("--n and --steps must be at least 1.")
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        layouts = [m.strip() for m in args.layouts.split(",") if m.strip()]
        for m in methods:
            if m not in WEIGHT_MODES:
                raise AttuneError(f"Unknown method '{m}': choose from {', '.join(WEIGHT_MODES)}.")
        for m in layouts:
            if m not in LAYOUT_MODES:
                raise AttuneError(f"Unknown layout '{m}': choose from {', '.join(LAYOUT_MODES)}.")
        parts = [x.strip() for x in args.parts.split(",") if x.strip()]
        if not parts or any(x not in PARTS for x in parts):
            raise AttuneError(f"--parts takes a comma-separated subset of {', '.join(PARTS)}.")
        try:
            weights = [float(x) for x in args.weights.split(",") if x.strip()]
        except ValueError:
            raise AttuneError(f"--weights must be numbers separated by commas, got '{args.weights}'.") from None
        if args.tune and args.split != "tuning":
            raise AttuneError("--tune is for the tuning split only (--split tuning).")
        tuned = apply_tuning(args.tune)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        from export.onnx import ensure_exported

        engine = Attune(args.model, backend=args.backend, export=ensure_exported)  # another model: exported on first use
        import torch

        def finish(result: dict) -> dict:
            result.update({
                "n": args.n, "start": args.start, "steps": args.steps,
                "command": "python -m bench.refine " + " ".join(sys.argv[1:] if argv is None else argv),
                "commit": git_commit(), "backend": engine.backend_name, "model": engine.model_id,
                "weights_hash": engine.weights_hash, "tune": tuned,
                "guidance": TUNED_GUIDANCE if TUNED_GUIDANCE is not None else DEFAULT_GUIDANCE,
                "machine": machine_info(threads=torch.get_num_threads(), device=engine.device),
            })
            return result

        def checkpoint(result: dict) -> None:
            if args.out:
                write_json(finish(result), args.out)

        result = run(engine, n=args.n, steps=args.steps, split=args.split, reweight_cases=args.reweight_cases,
                     n_inpaint=args.inpaint_n, methods=methods, layouts=layouts, weights=weights, parts=parts,
                     classes=[c.strip() for c in args.classes.split(",")] if args.classes else None,
                     start=args.start, checkpoint=checkpoint, progress=lambda m: print(m, file=sys.stderr, flush=True))
    except AttuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = finish(result)
    if args.out:
        write_json(result, args.out)
    print(json.dumps(result) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
