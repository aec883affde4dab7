"""DAAM aggregation, word heatmaps, filters, totals, mask-from-word, save/load — on synthetic maps."""
import numpy as np
import pytest
import torch

from engine.errors import AttuneError
from engine.attention.maps import AttentionMaps, bucket_ranges, layer_hw, mask_from_word, normalize_map
from engine.words.prompt import WordTokens

LATENT = (6, 10)  # non-square on purpose
HI, LO = "down.attn2.processor", "mid.attn2.processor"


def _blob(h, w, cy, cx):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 2.0).astype(np.float32)


def _maps(total_steps=4, seq=8, n_buckets=4):
    """Token 1 attends top-left, token 2 bottom-right, token 3 top-left in late steps only."""
    am = AttentionMaps(LATENT, total_steps, image_hw=(48, 80), n_buckets=n_buckets)
    for step in range(total_steps):
        layers = {}
        for name, (h, w) in ((HI, (6, 10)), (LO, (3, 5))):
            m = np.full((h * w, seq), 0.01, dtype=np.float32)
            m[:, 1] = _blob(h, w, 0, 0).ravel()
            m[:, 2] = _blob(h, w, h - 1, w - 1).ravel()
            if step >= total_steps // 2:
                m[:, 3] = _blob(h, w, 0, 0).ravel()
            layers[name] = torch.from_numpy(m)[None]  # (1, HW, seq) like the runner
        am.add(step, layers)
    return am


def _word_tokens():
    # "moon wolf moonlight moon": a two-token word, and a repeated word.
    return WordTokens(
        text="moon wolf moonlight moon",
        words=["moon", "wolf", "moonlight", "moon"],
        token_indices=[[1], [2], [3, 4], [5]],
        input_ids=[0] * 77,
        token_weights=[1.0] * 77,
    )


@pytest.mark.parametrize(
    "n, latent, expected",
    [(60, (6, 10), (6, 10)), (15, (6, 10), (3, 5)), (12, (9, 13), (3, 4)), (35, (9, 13), (5, 7)), (4096, (64, 64), (64, 64)),
     (1024, (64, 64), (32, 32)), (96 * 64 // 4, (64, 96), (32, 48))],
)
def test_layer_hw(n, latent, expected):
    assert layer_hw(n, latent) == expected


def test_layer_hw_impossible():
    with pytest.raises(AttuneError, match="Cannot infer"):
        layer_hw(7, (6, 10))


def test_bucket_ranges():
    assert bucket_ranges(10, 4) == [(0, 2), (2, 5), (5, 8), (8, 10)]
    assert bucket_ranges(2, 4) == [(0, 1), (1, 2)]
    assert bucket_ranges(50, 4)[-1] == (38, 50)


def test_memory_bounded_in_steps():
    small, big = _maps(total_steps=8), _maps(total_steps=60)
    assert small.nbytes == big.nbytes > 0
    assert big.counts.sum() == 60 and len(big.bucket_steps) == 4


def test_token_map_non_square_and_location():
    am = _maps()
    assert am.resolutions() == [6, 3]
    m1 = am.token_map([1])
    m2 = am.token_map([2])
    assert m1.shape == LATENT
    assert np.unravel_index(m1.argmax(), m1.shape) == (0, 0)
    assert np.unravel_index(m2.argmax(), m2.shape) == (5, 9)
    assert (m1 >= 0).all()
    assert am.token_map([1], size=(48, 80)).shape == (48, 80)


def test_word_heatmap_multi_token_and_repeats():
    am = _maps(seq=8)
    wt = _word_tokens()
    # "moon" appears twice: tokens 1 and 5, averaged.
    heat = am.word_heatmap(wt, "moon", size=LATENT)
    np.testing.assert_allclose(heat, normalize_map(am.token_map([1, 5])), atol=1e-6)
    # "moonlight" is two tokens.
    heat2 = am.word_heatmap(wt, "Moonlight", size=LATENT)
    np.testing.assert_allclose(heat2, normalize_map(am.token_map([3, 4])), atol=1e-6)
    assert heat.min() == 0.0 and heat.max() == pytest.approx(1.0)
    assert am.word_heatmap(wt, "wolf").shape == (48, 80)  # image size by default
    with pytest.raises(AttuneError, match="not in the prompt"):
        am.word_heatmap(wt, "sun")


def test_filters_by_resolution_and_steps():
    am = _maps(total_steps=8)
    lo_only = am.token_map([2], resolutions=[3])
    both = am.token_map([2])
    assert not np.allclose(lo_only, both)
    hi_only = am.token_map([2], resolutions=6)
    np.testing.assert_allclose((hi_only + lo_only) / 2, both, atol=1e-6)
    with pytest.raises(AttuneError, match="No attention layers at resolution"):
        am.token_map([2], resolutions=[32])
    # Token 3 only attends in the second half of the steps.
    early = am.token_map([3], step_range=(0, 4))
    late = am.token_map([3], step_range=(4, 8))
    assert late.max() > 5 * early.max()
    with pytest.raises(AttuneError, match="Empty step range"):
        am.token_map([3], step_range=(5, 5))
    with pytest.raises(AttuneError, match="outside the recorded maps"):
        am.token_map([40])


def test_filter_by_layer_name_grouped_by_resolution():
    am = _maps(total_steps=8)
    assert am.layer_groups() == {6: [HI], 3: [LO]}
    np.testing.assert_allclose(am.token_map([2], layers=[LO]), am.token_map([2], resolutions=[3]), atol=1e-6)
    np.testing.assert_allclose(am.token_map([2], layers=[HI, LO]), am.token_map([2]), atol=1e-6)
    assert am.word_totals(_word_tokens(), layers=[HI]) == am.word_totals(_word_tokens(), resolutions=[6])
    with pytest.raises(AttuneError, match="No attention layer named nope"):
        am.token_map([2], layers=["nope"])
    with pytest.raises(AttuneError, match="None of the chosen attention layers"):
        am.token_map([2], resolutions=[6], layers=[LO])


def test_word_totals():
    am = _maps(seq=8)
    totals = am.word_totals(_word_tokens())
    assert set(totals) == {"moon", "wolf", "moonlight"}
    # moon = token 1 (a blob, the same mass as wolf's token 2) + token 5 (flat 0.01 everywhere)
    assert totals["moon"] == pytest.approx(totals["wolf"] + 0.01, rel=1e-5)
    assert all(v > 0 for v in totals.values())


def test_mask_from_word_threshold_and_dilation():
    heat = np.zeros((16, 16), dtype=np.float32)
    heat[6:10, 6:10] = 1.0
    plain = mask_from_word(heat, dilate=0)
    assert plain.sum() == 16  # mean threshold
    dil = mask_from_word(heat)  # default: 1 pixel without latent geometry
    assert dil.sum() == 36
    cell = mask_from_word(heat, latent_hw=(4, 4))  # one latent cell = 4 px
    assert cell.sum() == 12 * 12
    assert mask_from_word(heat, threshold=2.0).sum() == 0
    assert not mask_from_word(np.zeros((8, 8))).any()
    with pytest.raises(AttuneError):
        mask_from_word(np.zeros((2, 2, 2)))


def test_maps_mask_from_word_on_maps():
    am = _maps()
    m = am.mask_from_word(_word_tokens(), "wolf")
    assert m.shape == (48, 80) and m.dtype == bool
    assert m[-1, -1] and not m[0, 0]


def test_save_load_roundtrip(tmp_path):
    am = _maps(total_steps=6)
    am.region = (1, 2, 30, 40)
    path = am.save(tmp_path / "maps.npz")
    back = AttentionMaps.load(path)
    assert back.latent_hw == am.latent_hw and back.image_hw == am.image_hw
    assert back.bucket_steps == am.bucket_steps and back.region == am.region
    np.testing.assert_array_equal(back.counts, am.counts)
    for name in am.layers:
        np.testing.assert_allclose(back.layers[name], am.layers[name], rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(back.token_map([1]), am.token_map([1]), atol=2e-3)
    with pytest.raises(AttuneError, match="Could not read"):
        AttentionMaps.load(tmp_path / "missing.npz")


def test_n_tokens_trims_padding():
    am = AttentionMaps((2, 2), 1, n_tokens=5)
    am.add(0, {"x": torch.ones(1, 4, 77)})
    assert am.layers["x"].shape == (1, 4, 5)


def _bos_maps(total_steps=8):
    """One 4x4 layer, prompt BOS + 2 words + EOS. The word (token 1) owns the left half: there it takes 80% of the
    words' attention, 10% elsewhere. BOS takes 90% of all attention in the top rows and 20% below, so the raw map
    is as bright on the bottom right (0.8 x 0.1) as on the top left (0.1 x 0.8) of the object."""
    h = w = 4
    left = np.zeros((h, w), bool)
    left[:, :2] = True
    share = np.where(left, 0.8, 0.1)
    bos = np.where(np.arange(h)[:, None] < 2, 0.9, 0.2) * np.ones((1, w))
    m = np.zeros((h * w, 4), np.float32)
    m[:, 0] = bos.ravel()
    m[:, 1] = ((1 - bos) * share).ravel()
    m[:, 2] = ((1 - bos) * (1 - share)).ravel()
    am = AttentionMaps((h, w), total_steps, n_tokens=4)
    for step in range(total_steps):
        am.add(step, {"x": m[None]})
    return am, left, share


def test_words_only_removes_bos_share():
    am, left, share = _bos_maps()
    np.testing.assert_allclose(am.token_map([1]), share, atol=1e-6)  # the default: the word's share of the words
    raw = am.token_map([1], words_only=False)
    assert raw[0, 0] == pytest.approx(raw[3, 3], abs=1e-6)  # raw: object and background alike
    assert np.array_equal(normalize_map(am.token_map([1])) >= 0.4, left)
    assert not np.array_equal(normalize_map(raw) >= 0.4, left)


def test_words_only_needs_n_tokens():
    am = _maps()  # no n_tokens: the sequence may hold padding, so nothing is renormalised
    np.testing.assert_allclose(am.token_map([1]), am.token_map([1], words_only=False), atol=1e-7)


def test_default_uses_the_last_step_bucket():
    assert _maps(total_steps=8).default_step_range() == (6, 8)
    assert _maps(total_steps=10).default_step_range() == (8, 10)  # buckets 0-2, 2-5, 5-8, 8-10
    assert _maps(total_steps=20).default_step_range() == (15, 20)
    assert _maps(total_steps=1, n_buckets=4).default_step_range() == (0, 1)
    am = _maps(total_steps=8)
    # Token 3 attends only in the second half: the default equals the last quarter, not the whole run.
    np.testing.assert_allclose(am.token_map([3]), am.token_map([3], step_range=(6, 8)), atol=1e-7)
    whole = am.token_map([3], step_range=(0, 8))
    assert am.token_map([3]).max() > 1.9 * whole.max()  # the whole run halves it (early steps: a flat 0.01)
    # The word totals (Inspect's chips) still cover every step.
    wt = _word_tokens()
    assert am.word_totals(wt) == am.word_totals(wt, step_range=(0, 8))
    # word_heatmap and mask_from_word follow the same default.
    np.testing.assert_allclose(am.word_heatmap(wt, "moonlight", size=LATENT),
                               normalize_map(am.token_map([3, 4], step_range=(6, 8))), atol=1e-6)


def test_default_falls_back_when_late_steps_missing():
    am = AttentionMaps((2, 2), 8, n_tokens=3)
    for step in range(4):  # only the first half recorded
        am.add(step, {"x": np.ones((1, 4, 3), np.float32)})
    assert am.token_map([1]).shape == (2, 2)
