"""Visible proof on the built-in model: `python -m bench.gallery` writes docs/gallery.png.

Panels: generated images for held-out captions, each with the heatmaps of two of its words; a weight sweep
for "full moon" (each weight an edit of the w = 1 image, default method and layout) with a row of differences from
w = 1; one inpaint (mask from the word "sky", prompt "misty forest") before and after.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.errors import AttuneError
from engine.attention.maps import mask_from_word
from engine.pipeline.attune import Attune, GenerateParams, InpaintParams
from train import world

TILE = 128
LABEL_H = 34
DESIGN_PROMPT = "a painting of a wolf sitting in front of the full moon, night sky"
_ANCHORS = np.array([[0, 0, 40], [120, 0, 160], [230, 60, 40], [255, 200, 0], [255, 255, 220]], np.float32)


def colormap(heat: np.ndarray) -> np.ndarray:
    """A small inferno-like colour map for [0, 1] heatmaps -> uint8 RGB."""
    x = np.clip(heat, 0, 1) * (len(_ANCHORS) - 1)
    i = np.minimum(x.astype(int), len(_ANCHORS) - 2)
    t = (x - i)[..., None]
    return ((1 - t) * _ANCHORS[i] + t * _ANCHORS[i + 1]).astype(np.uint8)


def overlay(image: Image.Image, heat: np.ndarray) -> Image.Image:
    base = np.asarray(image.convert("RGB"), np.float32)
    return Image.fromarray((0.35 * base + 0.65 * colormap(heat)).astype(np.uint8))


def difference(image: Image.Image, reference: np.ndarray) -> Image.Image:
    """|image - reference| per channel, times 3 (so small changes show)."""
    diff = np.abs(np.asarray(image.convert("RGB"), np.int16) - reference)
    return Image.fromarray(np.clip(diff * 3, 0, 255).astype(np.uint8))


def tile(image: Image.Image, label: str) -> Image.Image:
    out = Image.new("RGB", (TILE, TILE + LABEL_H), "white")
    out.paste(image.convert("RGB").resize((TILE, TILE)), (0, 0))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for k, line in enumerate(textwrap.wrap(label, 24)[:3]):
        draw.text((3, TILE + 1 + 11 * k), line, fill="black", font=font)
    return out


def row(tiles: list[Image.Image], title: str, width: int) -> Image.Image:
    out = Image.new("RGB", (width, TILE + LABEL_H + 18), "white")
    ImageDraw.Draw(out).text((4, 3), title, fill="black", font=ImageFont.load_default())
    for k, t in enumerate(tiles):
        out.paste(t, (4 + k * (TILE + 4), 18))
    return out


def build(engine: Attune, steps: int, n_captions: int = 4) -> Image.Image:
    per_row = 9
    width = 4 + per_row * (TILE + 4)
    rows = []
    # held-out captions with two words' heatmaps each (three captions per row)
    groups = []
    for seed in range(n_captions):
        scene = world.render(seed, "heldout")
        res = engine.generate(GenerateParams(prompt=scene.caption, seed=seed, steps=steps, syntax="none"))
        names = [n for n in scene.words if n in world.FOREGROUND][:1] + ["sky"]
        group = [tile(res.image, scene.caption)]
        for name in names:
            word = scene.caption_words[scene.words[name][-1]]
            group.append(tile(overlay(res.image, res.maps.word_heatmap(res.word_tokens, word)), f'heatmap "{word}"'))
        groups.append(group)
    for k in range(0, len(groups), 3):
        rows.append(row([t for g in groups[k:k + 3] for t in g], "held-out captions: image, heatmaps of two words",
                        width))
    # weight sweep for "full moon" (default method and layout: each weight is an edit of the w = 1 image), the
    # DESIGN prompt's heatmaps, and a row of differences from w = 1 (free layout at w = 2 beside, for comparison)
    base = GenerateParams(prompt=DESIGN_PROMPT, seed=7, steps=steps)
    first = engine.generate(base)
    parent = np.asarray(first.image.convert("RGB"), np.int16)
    sweep, diffs = [], []
    for w in (0.0, 0.5, 1.0, 1.5, 2.0):
        res = first if w == 1.0 else engine.reweight(base, {"full moon": w})
        layout = res.info.get("layout", "")
        sweep.append(tile(res.image, f'"full moon" x{w:g} ({base.weight_mode}{", " + layout if layout else ""})'))
        if w != 1.0:
            diffs.append(tile(difference(res.image, parent), f"|x{w:g} - x1| x3 ({layout})"))
    for word in ("moon", "wolf", "sky"):
        sweep.append(tile(overlay(first.image, first.maps.word_heatmap(first.word_tokens, word)), f'heatmap "{word}"'))
    rows.append(row(sweep, f'"{DESIGN_PROMPT}", seed 7: weight sweep and heatmaps', width))
    free = engine.reweight(base, {"full moon": 2.0}, layout="free")
    diffs += [tile(free.image, '"full moon" x2 (free layout)'), tile(difference(free.image, parent), "|x2 - x1| x3 (free)")]
    rows.append(row(diffs, "difference from x1, times 3: blend changes only near the moon; free re-runs everything",
                    width))
    # inpaint: mask from the word "sky", prompt "misty forest"
    heat = first.maps.word_heatmap(first.word_tokens, "sky")
    mask = mask_from_word(heat, latent_hw=(16, 16))
    inpainted = engine.inpaint(InpaintParams(base=base.replace(prompt="misty forest"), image=first.image, mask=mask))
    mask_img = Image.fromarray(np.where(mask[..., None], np.asarray(first.image.convert("RGB")) // 3 + 160,
                                        np.asarray(first.image.convert("RGB"))).astype(np.uint8))
    diff = np.abs(np.asarray(inpainted.image.convert("RGB"), np.int16) - np.asarray(first.image.convert("RGB"), np.int16))
    rows.append(row([tile(first.image, "before (version 1)"), tile(mask_img, 'mask from word "sky"'),
                     tile(inpainted.image, 'after: inpaint "misty forest"'),
                     tile(Image.fromarray(np.clip(diff * 3, 0, 255).astype(np.uint8)), "difference x3")],
                    "inpaint: only the masked region changes", width))
    out = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write docs/gallery.png from the built-in model.")
    p.add_argument("--out", default="docs/gallery.png")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--model", default=None)
    p.add_argument("--captions", type=int, default=6, help="held-out captions shown (3 per row)")
    args = p.parse_args(argv)
    try:
        engine = Attune(args.model, backend="torch")
        image = build(engine, args.steps, args.captions)
    except AttuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out)
    print(f"wrote {args.out} ({image.width}x{image.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
