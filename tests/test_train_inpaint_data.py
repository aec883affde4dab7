"""The inpainting trainer's examples: masks cover the named object, phrase captions ground the right object."""
import numpy as np

import train.tiny_scenes as ts
from train.world import PHRASES, render


def test_inpaint_examples_mask_and_name_their_object():
    start, stop = 0, 60
    out = ts._render_chunk((start, stop, True))
    tok = ts._TOKENIZER
    assert out["inpaint_mask"].shape == (stop - start, 128, 128) and out["inpaint_mask"].any(axis=(1, 2)).all()
    phrases = 0
    for i, seed in enumerate(range(start, stop)):
        scene = render(seed, "train")
        objects = list(scene.words)[: ts.MAX_OBJECTS]
        ids = [int(t) for t in out["inpaint_ids"][i] if t != tok.pad_token_id]
        words = tok.convert_ids_to_tokens(ids)[1:-1]
        grounded = out["inpaint_token_object"][i]
        if words == scene.caption_words:
            assert np.array_equal(grounded, out["token_object"][i])  # the whole caption: grounded as in base training
            continue
        phrases += 1
        (k,) = set(grounded[grounded >= 0].tolist())  # a phrase names exactly one object
        name = objects[k]
        mask, crop = out["inpaint_mask"][i], out["images"][i]
        if np.array_equal(crop, scene.image):  # not cropped: the mask holds the whole object
            assert mask[scene.masks[name]].all()
        named = [w for w, o in zip(words, grounded[1:]) if o == k]
        key = f"{scene.attributes['moon']} moon" if name == "moon" else name
        assert named and set(named) <= {w[1:] for p in PHRASES[key] for w in p.split() if w.startswith("*")}
        assert len(words) <= 5  # the phrase alone, as the app's user types it
    assert phrases >= 5
    assert (out["wolf_k"] >= 0).any() and all(
        list(render(s, "train").words)[out["wolf_k"][i]] == "wolf" for i, s in enumerate(range(start, stop)) if out["wolf_k"][i] >= 0)
