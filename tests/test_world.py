"""The scene world: deterministic, masks on the drawn pixels, objects large enough, captions in-vocabulary."""
import numpy as np
import pytest

from train import world
from train.tokenizer import build_word_tokenizer

SEEDS = range(40)


def test_render_is_deterministic_per_seed_and_split():
    a, b = world.render(3), world.render(3)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption
    assert a.masks.keys() == b.masks.keys() and all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert not np.array_equal(world.render(3).image, world.render(4).image)
    assert world.render(3, "heldout").caption != a.caption


def test_masks_align_with_drawn_pixels():
    for s in SEEDS:
        sc = world.render(s)
        covered = np.zeros(sc.image.shape[:2], bool)
        for name, mask in sc.masks.items():
            assert mask.shape == sc.image.shape[:2] and mask.any(), (s, name)
            if name in ("sky", "stars"):
                continue  # the sky's colour depends on its kind; the star field includes the sky around stars
            colours = np.asarray(world.PALETTE[name][0], np.float32)
            px = sc.image[mask].astype(np.float32)
            # each pixel is one of the class's colours times one brightness factor: its direction matches
            cos = (px @ colours.T) / (np.linalg.norm(px, axis=1, keepdims=True) * np.linalg.norm(colours, axis=1) + 1e-6)
            assert cos.max(axis=1).min() > 0.999, (s, name)
            covered |= mask
        covered |= sc.masks["sky"] | sc.masks.get("stars", False)
        assert covered.all(), f"seed {s}: pixels that belong to no object"
        sky_colour = np.asarray(world.PALETTE[f"{sc.attributes['sky']} sky"][0][0], np.float32)
        sky_px = sc.image[sc.masks["sky"] & ~sc.masks.get("stars", np.zeros_like(covered))].astype(np.float32)
        cos = sky_px @ sky_colour / (np.linalg.norm(sky_px, axis=1) * np.linalg.norm(sky_colour))
        assert cos.min() > 0.999


def test_every_object_spans_three_latent_cells():
    for s in range(150):
        for split in ("train", "heldout"):
            sc = world.render(s, split)
            for name, mask in sc.masks.items():
                if name not in world.FOREGROUND:
                    continue
                ys, xs = np.nonzero(mask)
                extent = min(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
                assert extent >= world.MIN_EXTENT, (s, split, name, extent)
                assert mask.sum() >= 4 * 64, (s, split, name)


def test_captions_name_every_foreground_object_and_use_the_vocabulary():
    tok = build_word_tokenizer(world.vocabulary())
    for s in SEEDS:
        sc = world.render(s)
        for name in sc.masks:
            if name in world.FOREGROUND:
                assert name in sc.words, (s, sc.caption, name)
        ids = tok(sc.caption)["input_ids"]
        assert tok.unk_token_id not in ids, sc.caption
        assert len(ids) == len(sc.caption_words) + 2, sc.caption  # one token per word: positions line up
        for name, positions in sc.words.items():
            assert all(0 <= p < len(sc.caption_words) for p in positions)


def test_design_prompt_is_in_vocabulary():
    tok = build_word_tokenizer(world.vocabulary())
    ids = tok("a painting of a wolf sitting in front of the full moon, night sky")["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.unk_token_id not in tok("misty forest")["input_ids"]


def test_held_out_pairs_never_appear_in_training():
    seen_pairs = 0
    for s in range(300):
        present = set(world.render(s, "train").masks)
        assert not any(a in present and b in present for a, b in world.HELD_OUT_PAIRS), s
        held = set(world.render(s, "heldout").masks)
        seen_pairs += any(a in held and b in held for a, b in world.HELD_OUT_PAIRS)
    assert seen_pairs > 50  # the held-out split does use them


def test_decorrelation_moon_in_every_sky_and_wolf_on_every_ground():
    moon_skies, wolf_grounds = set(), set()
    for s in range(400):
        sc = world.render(s)
        if "moon" in sc.masks:
            moon_skies.add(sc.attributes["sky"])
        if "wolf" in sc.masks:
            wolf_grounds.add(sc.attributes["ground"])
    assert moon_skies == set(world.SKY_KINDS) and wolf_grounds == set(world.GROUND_KINDS)


def test_bad_split_is_refused():
    with pytest.raises(ValueError):
        world.render(0, "test")


def test_model_folder_lists_the_worlds_phrases():
    import json
    from pathlib import Path

    shipped = json.loads((Path(__file__).resolve().parents[1] / "models" / "tiny-scenes" / "attune.json").read_text())
    assert shipped["phrases"] == world.known_phrases()
    assert {"full moon", "misty forest", "night sky", "misty woods"} <= set(shipped["phrases"])
    assert "the moon" not in shipped["phrases"] and "wolf" not in shipped["phrases"]
