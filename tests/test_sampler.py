"""The denoising loop's pieces: token weights, conditioning for the four methods, CFG, progress."""
import pytest
import numpy as np

from engine.errors import AttuneError
from engine.model.loading import load_components
from engine.words.prompt import tokenize_prompt
from engine.runners.torch import TorchUNetRunner
from engine.sampling.loop import prepare_conditioning, text_to_image, token_weight_vector
from engine.sampling.schedulers import SCHEDULERS

PROMPT = "a painting of a wolf sitting in front of the full moon , night sky"


@pytest.fixture(scope="module")
def comps(tiny_model_dir):
    return load_components(tiny_model_dir)


@pytest.fixture(scope="module")
def runner(comps):
    r = TorchUNetRunner(comps.unet)
    yield r
    r.close()


def _tokens(comps, text, syntax="a1111"):
    return tokenize_prompt(comps.tokenizer, text, syntax)


def test_token_weights_multiply_emphasis_and_sliders(comps):
    wt = _tokens(comps, "a (moon:1.5) and a wolf")
    w = token_weight_vector(wt, {"moon": 2.0, "wolf": 0.5})
    (moon,) = wt.indices_for("moon")
    (wolf,) = wt.indices_for("wolf")
    assert w[moon] == pytest.approx(3.0) and w[wolf] == pytest.approx(0.5)
    assert all(x == 1.0 for i, x in enumerate(w) if i not in (moon, wolf))
    a_indices = wt.indices_for("a")
    assert len(a_indices) == 2  # repeated word: both occurrences
    w2 = token_weight_vector(wt, {"a": 0.0})
    assert [w2[i] for i in a_indices] == [0.0, 0.0]
    with pytest.raises(AttuneError, match="not in the prompt"):
        token_weight_vector(wt, {"sun": 2.0})


def test_conditioning_all_ones_has_no_scales(comps):
    wt, neg = _tokens(comps, PROMPT), _tokens(comps, "")
    for mode in ("score", "prob", "embed", "a1111"):
        c = prepare_conditioning(comps, wt, neg, guidance=7.5, weights={"moon": 1.0}, weight_mode=mode)
        assert c.key_scale is None and c.value_scale is None and c.do_cfg
        assert c.embeddings.shape == (2, 77, 32)
    base = prepare_conditioning(comps, wt, neg, guidance=7.5)
    emb = prepare_conditioning(comps, wt, neg, guidance=7.5, weights={"moon": 1.0}, weight_mode="embed")
    assert np.array_equal(base.embeddings, emb.embeddings)
    assert base.n_tokens == len(wt.words) + 2  # BOS + one token per word + EOS


def test_conditioning_scales_cond_half_only(comps):
    wt, neg = _tokens(comps, PROMPT), _tokens(comps, "")
    (moon,) = wt.indices_for("moon")
    c = prepare_conditioning(comps, wt, neg, guidance=7.5, weights={"moon": 2.0}, weight_mode="score")
    assert c.value_scale is None and c.key_scale.shape == (2, 77)
    assert np.all(c.key_scale[0] == 1) and c.key_scale[1, moon] == 2.0 and c.key_scale[1].sum() == 78
    # cond_only=False: each half gets the weights of its own prompt's tokens; this negative prompt has none.
    c = prepare_conditioning(comps, wt, neg, guidance=7.5, weights={"moon": 2.0}, weight_mode="prob", cond_only=False)
    assert c.key_scale is None and c.value_scale[1, moon] == 2.0 and np.all(c.value_scale[0] == 1)


def test_cond_only_false_scales_the_negative_prompt_by_its_own_weights(comps):
    wt, neg = _tokens(comps, PROMPT), _tokens(comps, "(sky:1.5) night", syntax="a1111")
    (moon,) = wt.indices_for("moon")
    (sky,) = neg.indices_for("sky")
    c = prepare_conditioning(comps, wt, neg, guidance=7.5, weights={"moon": 2.0}, weight_mode="score", cond_only=False)
    assert c.key_scale[1, moon] == 2.0 and c.key_scale[0, sky] == 1.5
    assert c.key_scale[0].sum() == 77.5  # 1.5 on sky, 1 on every other position
    # The negative emphasis acts through the method, so its embedding is the plain one.
    plain = prepare_conditioning(comps, wt, _tokens(comps, "sky night"), guidance=7.5)
    assert np.array_equal(c.embeddings[0], plain.embeddings[0])
    # cond_only=True keeps the negative emphasis on the embedding and the uncond scales at 1.
    c = prepare_conditioning(comps, wt, neg, guidance=7.5, weights={"moon": 2.0}, weight_mode="score")
    assert np.all(c.key_scale[0] == 1) and not np.array_equal(c.embeddings[0], plain.embeddings[0])


def test_embed_reweighting_changes_only_the_word(comps):
    wt, neg = _tokens(comps, PROMPT), _tokens(comps, "")
    (moon,) = wt.indices_for("moon")
    base = prepare_conditioning(comps, wt, neg, guidance=7.5)
    c = prepare_conditioning(comps, wt, neg, guidance=7.5, weights={"moon": 2.0}, weight_mode="embed")
    assert c.key_scale is None and c.value_scale is None
    assert np.array_equal(c.embeddings[0], base.embeddings[0])  # uncond untouched
    diff = np.abs(c.embeddings[1] - base.embeddings[1]).sum(-1)
    assert diff[moon] > 0 and np.count_nonzero(diff) == 1


def test_a1111_method_is_a1111_original_emphasis(comps):
    torch = pytest.importorskip("torch")
    """`a1111` = A1111's EmphasisOriginal, computed here directly: z·w per token, then z·(mean(z) / mean(z·w)) with
    both means over the whole (1, 77, D) encoder output. A pasted (wolf:1.3) [moon] weighs as it does in A1111."""
    wt = _tokens(comps, "a painting of a (wolf:1.3) at the [moon] , night sky")
    neg = _tokens(comps, "(snow:1.5)")
    c = prepare_conditioning(comps, wt, neg, guidance=7.5, weights={"sky": 1.0}, weight_mode="a1111")
    assert c.key_scale is None and c.value_scale is None

    def original_emphasis(word_tokens, weights_by_word):
        with torch.no_grad():
            z = comps.text_encoder(torch.tensor([word_tokens.input_ids]))[0]
        w = torch.ones(77)
        for word, weight in weights_by_word.items():
            w[word_tokens.indices_for(word)] = weight
        scaled = z * w[None, :, None]
        return scaled * (z.double().mean() / scaled.double().mean()).float()

    expected_cond = original_emphasis(wt, {"wolf": 1.3, "moon": 1 / 1.1})
    expected_uncond = original_emphasis(neg, {"snow": 1.5})  # A1111 weighs the negative prompt the same way
    assert np.allclose(c.embeddings[1], expected_cond[0].numpy(), rtol=1e-6, atol=1e-6)
    assert np.allclose(c.embeddings[0], expected_uncond[0].numpy(), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        plain = comps.text_encoder(torch.tensor([wt.input_ids]))[0][0].numpy()
    assert not np.allclose(c.embeddings[1], plain, atol=1e-4)  # the weights did act
    # The mean of the whole prompt embedding is restored; `embed` (Compel's formula) is a different conditioning.
    # (this tiny encoder's final layer norm makes that mean ~1e-9, so it is compared on the embedding's own scale)
    scale = float(np.abs(plain).mean())
    assert abs(c.embeddings[1].mean(dtype=np.float64) - plain.mean(dtype=np.float64)) <= 1e-6 * scale
    embed = prepare_conditioning(comps, wt, neg, guidance=7.5, weight_mode="embed")
    assert not np.allclose(embed.embeddings[1], c.embeddings[1], atol=1e-4)


def test_no_cfg_when_guidance_at_most_one(comps, runner):
    wt, neg = _tokens(comps, PROMPT), _tokens(comps, "")
    c = prepare_conditioning(comps, wt, neg, guidance=1.0, weights={"moon": 2.0}, weight_mode="score")
    assert not c.do_cfg and c.embeddings.shape[0] == 1 and c.key_scale.shape == (1, 77)
    out = text_to_image(comps, runner, c, seed=0, steps=2, guidance=1.0, width=32, height=32, scheduler="ddim")
    assert out.image.size == (32, 32) and out.maps.counts.sum() == 2


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_progress_callback_and_schedulers(comps, runner, scheduler):
    wt, neg = _tokens(comps, PROMPT), _tokens(comps, "")
    c = prepare_conditioning(comps, wt, neg, guidance=7.5)
    calls = []
    out = text_to_image(comps, runner, c, seed=3, steps=3, guidance=7.5, width=32, height=48, scheduler=scheduler,
                        progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert out.image.size == (32, 48)
    assert out.maps.latent_hw == (6, 4) and out.maps.counts.sum() == 3
    assert set(out.timings) == {"denoise", "decode"}


def test_negative_prompt_changes_the_image(comps, runner):
    wt = _tokens(comps, PROMPT)
    a = prepare_conditioning(comps, wt, _tokens(comps, ""), guidance=7.5)
    b = prepare_conditioning(comps, wt, _tokens(comps, "misty forest"), guidance=7.5)
    kw = dict(seed=0, steps=2, guidance=7.5, width=32, height=32, scheduler="ddim")
    assert text_to_image(comps, runner, a, **kw).image.tobytes() != text_to_image(comps, runner, b, **kw).image.tobytes()
