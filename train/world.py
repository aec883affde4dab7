"""The scene world: a procedural renderer of flat-coloured night/day scenes with captions and ground-truth masks.

Every object class has its own colour family (a base colour times a brightness factor), so a colour segmenter
(train/segment.py) can find objects in generated images as well. Shapes are drawn without anti-aliasing, in
painter's order, into a label map; masks are read off that map, so they match the drawn pixels exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

SIZE = 128
LATENT_CELL = 8  # pixels per latent cell (8x VAE)
MIN_EXTENT = 3 * LATENT_CELL  # every object spans at least 3x3 latent cells

# Object classes -> (colour prototypes, brightness range). The segmenter uses the same table.
PALETTE: dict[str, tuple[tuple[tuple[int, int, int], ...], tuple[float, float]]] = {
    "night sky": (((15, 20, 60),), (0.9, 1.1)),
    "dusk sky": (((200, 100, 130),), (0.92, 1.05)),
    "day sky": (((110, 175, 235),), (0.92, 1.05)),
    "grass": (((100, 170, 40),), (0.92, 1.05)),
    "snow": (((235, 240, 250),), (0.93, 1.0)),
    "sand": (((220, 190, 120),), (0.92, 1.05)),
    "moon": (((250, 245, 150),), (0.8, 1.0)),
    "sun": (((255, 140, 0),), (0.85, 1.0)),
    "stars": (((150, 255, 255),), (0.85, 1.0)),
    "clouds": (((190, 180, 200),), (0.92, 1.05)),
    "wolf": (((105, 95, 90),), (0.9, 1.1)),
    "mountains": (((95, 70, 150),), (0.92, 1.05)),
    "lake": (((30, 90, 190),), (0.92, 1.05)),
    "house": (((190, 40, 40), (120, 25, 25)), (0.92, 1.05)),
    "tree": (((30, 130, 30), (100, 65, 35)), (0.92, 1.05)),
    "forest": (((10, 90, 80),), (0.9, 1.08)),
    "misty forest": (((140, 190, 160),), (0.93, 1.05)),
}
SKY_KINDS = ("night", "dusk", "day")
GROUND_KINDS = ("grass", "snow", "sand")
FOREGROUND = ("moon", "sun", "stars", "clouds", "wolf", "house", "tree", "forest", "misty forest", "mountains", "lake")
SKY_OBJECTS = ("moon", "sun", "stars", "clouds")
BANDS = ("mountains", "forest", "misty forest")  # stand on the horizon
GROUND_OBJECTS = ("wolf", "house", "tree", "lake")
# Names that can appear in Scene.masks ("sky" is the visible sky, the ground by its material).
OBJECT_NAMES = FOREGROUND + ("sky",) + GROUND_KINDS

STAR_RADIUS = 3  # a star field is the star pixels and the sky within this radius
_DISK = np.hypot(*np.mgrid[-STAR_RADIUS:STAR_RADIUS + 1, -STAR_RADIUS:STAR_RADIUS + 1]) <= STAR_RADIUS + 0.01


def star_field(star_pixels: np.ndarray, sky_or_star: np.ndarray) -> np.ndarray:
    """The region a star field occupies: its star pixels plus the sky around them (renderer and segmenter)."""
    return ndimage.binary_dilation(star_pixels, structure=_DISK) & sky_or_star


# ---- caption grammar -------------------------------------------------------------------------------------
# Each object phrase is a list of words; words marked with * refer to the object (they are grounded).
PHRASES: dict[str, list[str]] = {
    "full moon": ["the *full *moon", "a *full *moon", "*full *moon", "the bright *full *moon", "the *moon"],
    "crescent moon": ["a *crescent *moon", "the *crescent *moon", "*crescent *moon", "a thin *crescent *moon"],
    "sun": ["the *sun", "a bright *sun", "*sun", "the glowing *sun"],
    "stars": ["*stars", "many *stars", "bright *stars", "the *stars"],
    "clouds": ["*clouds", "some *clouds", "soft *clouds", "the *clouds"],
    "wolf": ["a *wolf", "a *wolf sitting", "a grey *wolf", "a lone *wolf", "the *wolf"],
    "house": ["a *house", "a red *house", "a small *house", "a *cottage", "the *house"],
    "tree": ["a *tree", "a lone *tree", "a green *tree", "the *tree"],
    "forest": ["a *forest", "a dark *forest", "*pine *trees", "the *forest", "*woods"],
    "misty forest": ["a *misty *forest", "the *misty *forest", "*misty *forest", "*misty *woods"],
    "mountains": ["*mountains", "the *mountains", "purple *mountains", "distant *mountains", "*peaks"],
    "lake": ["a *lake", "a blue *lake", "a *pond", "the *lake"],
    "night sky": ["*night *sky", "the *night *sky", "a dark *night *sky", "a *night *sky"],
    "dusk sky": ["*dusk *sky", "the *dusk *sky", "an *evening *sky", "a pink *dusk *sky"],
    "day sky": ["*day *sky", "a blue *day *sky", "the *day *sky", "a clear *day *sky"],
    "grass": ["*grass", "green *grass", "a *meadow", "a *grassy *field"],
    "snow": ["*snow", "white *snow", "*snowy *ground", "a *snowy *field"],
    "sand": ["*sand", "desert *sand", "a *sandy *beach", "the *sand"],
}
RELATIONS = ["in front of", "under", "beside", "near", "with", "and", "next to", "below", "above"]
PREFIXES = ["", "", "a painting of", "an illustration of", "a picture of", "a drawing of"]
SUFFIXES = ["", "", "highly detailed", "trending on artstation", "digital art", "beautiful painting"]
# Templates: lists of segments; a segment that names a missing part (sky or ground not named, no prefix or
# suffix) is dropped whole, so captions never dangle. M = the foreground objects joined by relations.
TRAIN_TEMPLATES = [
    [("P",), ("M",), (",", "S"), (",", "G"), (",", "X")],
    [("P",), ("S", "with"), ("M",), (",", "G"), (",", "X")],
    [("P",), ("M",), ("on", "G"), (",", "S"), (",", "X")],
    [("P",), ("G", "and"), ("S", ","), ("M",), (",", "X")],
    [("P",), ("M",), ("in", "S"), (",", "G"), (",", "X")],
]
HELD_OUT_TEMPLATES = [
    [("P",), ("S", "above"), ("G", ","), ("M",), (",", "X")],
    [("P",), ("M",), ("at", "G"), ("under", "S"), (",", "X")],
]
# Object pairs that training never shows together (compositional held-out set).
HELD_OUT_PAIRS = [("wolf", "lake"), ("house", "stars"), ("tree", "sun")]
EXTRA_WORDS = ", . ; : ! ( ) [ ] - moon sky night forest".split()


def known_phrases() -> list[str]:
    """The multi-word names the model learns as one unit: runs of grounded words ("full moon", "misty woods").
    models/tiny-scenes/attune.json lists them as `phrases` (engine.model.family), so each gets one Refine slider."""
    found: dict[str, None] = {}
    for variants in PHRASES.values():
        for variant in variants:
            run: list[str] = []
            for word in variant.split() + [""]:
                if word.startswith("*"):
                    run.append(word[1:])
                    continue
                if len(run) > 1:
                    found[" ".join(run)] = None
                run = []
    return list(found)


def vocabulary() -> list[str]:
    """Every word the grammar can produce, plus punctuation (so user prompts with it are in-vocabulary)."""
    words = set(EXTRA_WORDS)
    for phrases in PHRASES.values():
        for p in phrases:
            words.update(w.lstrip("*") for w in p.split())
    for text in RELATIONS + PREFIXES + SUFFIXES:
        words.update(text.split())
    for template in TRAIN_TEMPLATES + HELD_OUT_TEMPLATES:
        words.update(w for seg in template for w in seg if w not in {"P", "M", "S", "G", "X"})
    words.update(["on", "in", "the", "at", "of", "a", "and"])
    return sorted(words)


@dataclass
class Scene:
    image: np.ndarray  # (SIZE, SIZE, 3) uint8
    caption: str
    masks: dict[str, np.ndarray]  # object name -> (SIZE, SIZE) bool, visible pixels
    words: dict[str, list[int]]  # object name -> indices of the caption words that name it
    caption_words: list[str]
    attributes: dict[str, str] = field(default_factory=dict)  # sky kind, ground kind, moon phase, brightness


# ---- shapes (vectorised on a fixed grid) ------------------------------------------------------------------
_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _ellipse(cx, cy, rx, ry):
    return ((_XX - cx) / rx) ** 2 + ((_YY - cy) / ry) ** 2 <= 1.0


def _rect(x0, y0, x1, y1):
    return (_XX >= x0) & (_XX < x1) & (_YY >= y0) & (_YY < y1)


def _convex(points):
    """Pixels inside a convex polygon (either winding)."""
    pts = np.asarray(points, dtype=np.float32)
    nxt = np.roll(pts, -1, axis=0)
    crosses = [(b[0] - a[0]) * (_YY - a[1]) - (b[1] - a[1]) * (_XX - a[0]) for a, b in zip(pts, nxt)]
    stack = np.stack(crosses)
    return np.all(stack >= 0, axis=0) | np.all(stack <= 0, axis=0)


def _wolf(cx, yb, h, facing):
    d = facing
    m = _ellipse(cx + 0.15 * h * d, yb - 0.22 * h, 0.26 * h, 0.22 * h)  # haunch
    m |= _ellipse(cx - 0.04 * h * d, yb - 0.45 * h, 0.15 * h, 0.3 * h)  # chest
    lx0, lx1 = sorted([cx - 0.2 * h * d, cx - 0.09 * h * d])
    m |= _rect(lx0, yb - 0.4 * h, lx1, yb)  # front legs
    m |= _ellipse(cx - 0.12 * h * d, yb - 0.78 * h, 0.14 * h, 0.13 * h)  # head
    m |= _ellipse(cx - 0.28 * h * d, yb - 0.74 * h, 0.12 * h, 0.06 * h)  # snout
    for ex in (-0.2, -0.06):  # ears
        x = cx + ex * h * d
        m |= _convex([(x - 0.05 * h, yb - 0.86 * h), (x + 0.05 * h, yb - 0.86 * h), (x, yb - h)])
    m |= _ellipse(cx + 0.42 * h * d, yb - 0.06 * h, 0.2 * h, 0.055 * h)  # tail
    return m


def _pines(x0, x1, horizon, h, rng):
    m = np.zeros((SIZE, SIZE), bool)
    x = x0
    while x < x1:
        w = rng.uniform(0.45, 0.6) * h
        th = h * rng.uniform(0.75, 1.0)
        m |= _convex([(x - w / 2, horizon + 1), (x + w / 2, horizon + 1), (x, horizon - th)])
        x += w * rng.uniform(0.45, 0.7)
    m |= _rect(x0 - 4, horizon - 0.3 * h, x1 + 4, horizon + 1)
    return m


def _stars(region, rng):
    x0, y0, x1, y1 = region
    m = np.zeros((SIZE, SIZE), bool)
    for k in range(rng.integers(6, 13)):
        cx, cy = rng.uniform(x0 + 3, x1 - 3), rng.uniform(y0 + 3, y1 - 3)
        if k < 2:  # two stars in opposite corners: the field spans its whole box
            cx, cy = (x0 + 4, y0 + 4) if k == 0 else (x1 - 4, y1 - 4)
        arm, t = rng.uniform(2.5, 4.0), rng.uniform(0.9, 1.4)
        m |= _rect(cx - arm, cy - t, cx + arm + 1, cy + t + 1) | _rect(cx - t, cy - arm, cx + t + 1, cy + arm + 1)
    return m


def _overlaps(box, boxes, pad=2):
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + pad and b[0] < x1 + pad and y0 < b[3] + pad and b[1] < y1 + pad for b in boxes)


# ---- scene sampling ---------------------------------------------------------------------------------------
_WEIGHTS = {"moon": 0.45, "sun": 0.18, "stars": 0.25, "clouds": 0.25, "wolf": 0.35, "house": 0.3, "tree": 0.3,
            "forest": 0.2, "misty forest": 0.2, "mountains": 0.25, "lake": 0.25}


def _choose_objects(rng, split):
    while True:
        chosen = [o for o in FOREGROUND if rng.random() < _WEIGHTS[o]]
        if "moon" in chosen and "sun" in chosen:
            chosen.remove(rng.choice(["moon", "sun"]))
        if "forest" in chosen and "misty forest" in chosen:
            chosen.remove(rng.choice(["forest", "misty forest"]))
        if not chosen:
            continue
        if len(chosen) > 3:
            chosen = list(rng.choice(chosen, 3, replace=False))
        has_pair = any(a in chosen and b in chosen for a, b in HELD_OUT_PAIRS)
        if split == "train" and has_pair:
            continue
        if split == "heldout" and not has_pair and rng.random() < 0.5:
            a, b = HELD_OUT_PAIRS[rng.integers(len(HELD_OUT_PAIRS))]
            chosen = [a, b] + [o for o in chosen if o not in (a, b)][:1]
            if "forest" in chosen and "misty forest" in chosen or "moon" in chosen and "sun" in chosen:
                continue
        return sorted(chosen, key=FOREGROUND.index)


def _sky_kind(rng, chosen):
    if "stars" in chosen:  # stars mostly at night, sometimes at dusk, rarely by day (decorrelated on purpose)
        return rng.choice(SKY_KINDS, p=[0.7, 0.22, 0.08])
    return rng.choice(SKY_KINDS, p=[0.45, 0.25, 0.3])


def _layout(rng, chosen):
    """Shapes per object, or None if this draw does not fit (caller retries)."""
    horizon = int(rng.integers(66, 90))
    shapes: dict[str, np.ndarray] = {}
    band_h = {o: rng.uniform(26, 40) if o != "mountains" else rng.uniform(34, 52) for o in chosen if o in BANDS}
    if "mountains" in band_h and len(band_h) > 1:
        band_h["mountains"] = max(band_h["mountains"], max(v for k, v in band_h.items() if k != "mountains") + 14)
    sky_objs = [o for o in chosen if o in SKY_OBJECTS]
    band_top = horizon - max(band_h.values(), default=0)
    if sky_objs and band_top < 30:
        return None
    # bands
    if "mountains" in chosen:
        h = band_h["mountains"]
        m = np.zeros((SIZE, SIZE), bool)
        for _ in range(rng.integers(1, 4)):
            px, ph = rng.uniform(10, SIZE - 10), h * rng.uniform(0.7, 1.0)
            hw = ph * rng.uniform(1.0, 1.6)
            m |= _convex([(px - hw, horizon + 1), (px + hw, horizon + 1), (px, horizon - ph)])
        shapes["mountains"] = m
    for o in ("forest", "misty forest"):
        if o in chosen:
            span = rng.uniform(60, SIZE + 20)
            x0 = rng.uniform(-10, SIZE + 10 - span)
            shapes[o] = _pines(x0, x0 + span, horizon, band_h[o], rng)
    # sky objects: non-overlapping boxes above the bands
    boxes = []
    for o in sky_objs:
        for _ in range(30):
            if o in ("moon", "sun"):
                r = rng.uniform(12, 19) if o == "sun" else rng.uniform(16, 21)  # a crescent keeps ~40% of its disc
                w = h = 2 * r
            elif o == "stars":
                w, h = rng.uniform(40, 80), rng.uniform(32, 42)
            else:
                w, h = rng.uniform(36, 60), rng.uniform(26, 32)
            if band_top - 2 - h < 2:
                break
            x0, y0 = rng.uniform(2, SIZE - 2 - w), rng.uniform(2, band_top - 2 - h)
            box = (x0, y0, x0 + w, y0 + h)
            if not _overlaps(box, boxes):
                boxes.append(box)
                break
        else:
            return None
        if len(boxes) < sky_objs.index(o) + 1:
            return None
        x0, y0, x1, y1 = boxes[-1]
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        if o == "moon":
            shapes[o] = _ellipse(cx, cy, r, r)
        elif o == "sun":
            shapes[o] = _ellipse(cx, cy, r, r)
        elif o == "stars":
            shapes[o] = _stars(boxes[-1], rng)
        else:
            h = y1 - y0
            m = _ellipse(cx, y1 - 0.3 * h, (x1 - x0) / 2, 0.3 * h)
            for _ in range(rng.integers(2, 4)):
                ex = rng.uniform(x0 + 0.3 * (x1 - x0), x1 - 0.3 * (x1 - x0))
                rx = min(rng.uniform(0.2, 0.3) * (x1 - x0), ex - x0, x1 - ex)
                m |= _ellipse(ex, y1 - 0.5 * h, rx, 0.5 * h)
            m &= _YY < y1
            shapes[o] = m
    # ground objects: non-overlapping boxes standing on the ground
    gboxes = []
    for o in [o for o in chosen if o in GROUND_OBJECTS]:
        for _ in range(30):
            if o == "lake":
                w, h = rng.uniform(44, 80), rng.uniform(24, 30)
                if horizon + 3 + h > SIZE - 1:
                    return None
                x0, y0 = rng.uniform(0, SIZE - w), rng.uniform(horizon + 3, SIZE - 1 - h)
            else:
                h = rng.uniform(30, 46) if o == "wolf" else rng.uniform(34, 50)
                w = {"wolf": 0.95, "house": 0.9, "tree": 0.75}[o] * h
                yb = rng.uniform(max(horizon + 6, h + 2), SIZE - 2)
                x0, y0 = rng.uniform(2, SIZE - 2 - w), yb - h
            box = (x0, y0, x0 + w, y0 + h)
            if not _overlaps(box, gboxes, pad=3) and not _overlaps(box, boxes):  # never hide a sky object
                gboxes.append(box)
                break
        else:
            return None
        x0, y0, x1, y1 = gboxes[-1]
        w, h, cx = x1 - x0, y1 - y0, (x0 + x1) / 2
        if o == "lake":
            shapes[o] = _ellipse(cx, (y0 + y1) / 2, w / 2, h / 2)
        elif o == "wolf":
            facing = 1 if rng.random() < 0.5 else -1
            shapes[o] = _wolf(cx - 0.05 * h * facing, y1, h, facing)
        elif o == "house":
            wall_top = y0 + 0.45 * h
            wall = _rect(x0 + 0.08 * w, wall_top, x1 - 0.08 * w, y1)
            roof = _convex([(x0, wall_top + 1), (x1, wall_top + 1), (cx, y0)])
            shapes[o] = (wall, roof)
        else:
            trunk = _rect(cx - 0.08 * w, y0 + 0.55 * h, cx + 0.08 * w, y1)
            canopy = _ellipse(cx, y0 + 0.36 * h, w / 2, 0.36 * h)
            shapes[o] = (canopy, trunk)
    return horizon, shapes


_DRAW_ORDER = ("stars", "sun", "moon", "clouds", "mountains", "misty forest", "forest", "ground", "lake", "tree",
               "house", "wolf")


def _caption(rng, chosen, sky, ground, moon_phase, split):
    """Caption words, and which word positions name which object."""
    order = [str(o) for o in chosen]
    rng.shuffle(order)
    parts: dict[str, list[tuple[str, str | None]]] = {}  # slot -> [(word, object it names or None)]

    def phrase(key, name):
        options = PHRASES[key]
        return [(w[1:], name) if w.startswith("*") else (w, None) for w in options[rng.integers(len(options))].split()]

    m = []
    for k, o in enumerate(order):
        if k == 1:
            m += [(w, None) for w in RELATIONS[rng.integers(len(RELATIONS))].split()]
        elif k == 2:
            m += [(",", None), ("and", None)] if rng.random() < 0.5 else [("and", None)]
        m += phrase(f"{moon_phase} moon" if o == "moon" else o, o)
    parts["M"] = m
    if split != "train" or rng.random() < 0.85:
        parts["S"] = phrase(f"{sky} sky", "sky")
    if split != "train" or rng.random() < 0.7:
        parts["G"] = phrase(ground, ground)
    for slot, options in (("P", PREFIXES), ("X", SUFFIXES)):
        text = options[rng.integers(len(options))]
        if text:
            parts[slot] = [(w, None) for w in text.split()]
    templates = TRAIN_TEMPLATES if split == "train" else HELD_OUT_TEMPLATES
    template = templates[rng.integers(len(templates))]
    out: list[tuple[str, str | None]] = []
    for segment in template:
        if any(t in "PMSGX" and len(t) == 1 and t not in parts for t in segment):
            continue
        for t in segment:
            out += parts[t] if (len(t) == 1 and t in "PMSGX") else [(t, None)]
    while out and out[0][0] == ",":
        out.pop(0)
    while out and out[-1][0] == ",":
        out.pop()
    words = [w for w, _ in out]
    refs: dict[str, list[int]] = {}
    for i, (_, name) in enumerate(out):
        if name:
            refs.setdefault(name, []).append(i)
    return " ".join(words).replace(" ,", ","), words, refs


def render(seed: int, split: str = "train") -> Scene:
    """Draw one scene, deterministically per (seed, split). split: "train" or "heldout"."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    while True:
        chosen = _choose_objects(rng, split)
        laid = _layout(rng, chosen)
        if laid is not None:
            break
    horizon, shapes = laid
    sky = str(_sky_kind(rng, chosen))
    ground = str(rng.choice(GROUND_KINDS))
    moon_phase = "full" if rng.random() < 0.6 else "crescent"
    if "moon" in shapes and moon_phase == "crescent":
        m = shapes["moon"]
        ys, xs = np.nonzero(m)
        cx, cy, r = xs.mean(), ys.mean(), (xs.max() - xs.min() + 1) / 2
        side = 1 if rng.random() < 0.5 else -1
        shapes["moon"] = m & ~_ellipse(cx + side * 0.55 * r, cy - 0.15 * r, r * 0.95, r * 0.95)

    # label map in painter's order; label 0 = sky, 1 = ground, then objects
    names = ["sky", ground]
    colour_of = [PALETTE[f"{sky} sky"][0][0], PALETTE[ground][0][0]]
    bright = [rng.uniform(*PALETTE[f"{sky} sky"][1]), rng.uniform(*PALETTE[ground][1])]
    label = np.where(_YY < horizon, 0, 1).astype(np.int16)
    for o in _DRAW_ORDER:
        if o == "ground":
            label[(_YY >= horizon) & (label == 0)] = 1
            continue
        if o not in shapes:
            continue
        parts = shapes[o] if isinstance(shapes[o], tuple) else (shapes[o],)
        lo, hi = PALETTE[o][1]
        b = rng.uniform(lo, hi)
        for part, colour in zip(parts, PALETTE[o][0]):
            label[part] = len(names)
            names.append(o)
            colour_of.append(colour)
            bright.append(b)
    table = np.clip(np.asarray(colour_of, np.float32) * np.asarray(bright, np.float32)[:, None], 0, 255)
    image = table[label].round().astype(np.uint8)
    masks: dict[str, np.ndarray] = {}
    for idx, name in enumerate(names):
        masks[name] = masks.get(name, np.zeros((SIZE, SIZE), bool)) | (label == idx)
    if "stars" in masks:
        masks["stars"] = star_field(masks["stars"], masks["stars"] | masks["sky"])
    text, words, refs = _caption(rng, chosen, sky, ground, moon_phase, split)
    attrs = {"sky": sky, "ground": ground, "horizon": str(horizon)}
    if "moon" in chosen:
        attrs["moon"] = moon_phase
    return Scene(image=image, caption=text, masks=masks, words=refs, caption_words=words, attributes=attrs)


def heldout_scenes(n: int, start: int = 0) -> list[Scene]:
    """The fixed held-out set used by the benchmarks: seeds start..start+n-1 of the held-out split."""
    return [render(s, "heldout") for s in range(start, start + n)]
