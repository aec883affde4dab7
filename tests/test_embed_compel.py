"""The `embed` method is Compel's conditioning at every weight (compel 2.5, its default DownweightMode.MASK): below 1
each low-weighted fragment is hidden from the text encoder by its attention mask and the versions are blended by
tan((1 − w)·π/2). Compared with Compel's own output on the tiny random CLIP model, on both backends (issue 21/5)."""
from __future__ import annotations

import numpy as np
import pytest

from engine.errors import AttuneError
from engine.sampling.loop import prepare_conditioning
from engine.words.prompt import tokenize_prompt

pytest.importorskip("compel")

WEIGHTS = (0.0, 0.3, 0.5, 0.9, 1.1, 1.5)

@pytest.fixture(scope="module")
def compel(tiny_model_dir, tiny_components):
    from compel import Compel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir / "tokenizer"))  # Compel needs a transformers one
    return Compel(tokenizer=tokenizer, text_encoder=tiny_components.text_encoder, truncate_long_prompts=False)


@pytest.fixture(scope="module")
def backends(tiny_model_dir, tiny_components, tiny_export):
    from engine.model.onnx_components import load_onnx_components

    return {"torch": tiny_components, "onnx": load_onnx_components(tiny_model_dir, export_dir=tiny_export)}


def compel_conditioning(compel, prompt: str, negative: str = "") -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.no_grad():
        cond, neg = compel(prompt), compel(negative)
        cond, neg = compel.pad_conditioning_tensors_to_same_length([cond, neg])
    return cond[0].numpy(), neg[0].numpy()


def engine_conditioning(components, prompt: str, negative: str = "") -> tuple[np.ndarray, np.ndarray]:
    c = prepare_conditioning(components, tokenize_prompt(components.tokenizer, prompt, "compel"),
                             tokenize_prompt(components.tokenizer, negative, "compel"), guidance=4.0,
                             weight_mode="embed")
    return c.embeddings[1], c.embeddings[0]


def assert_like_compel(compel, components, prompt: str, negative: str = "") -> None:
    expected_cond, expected_neg = compel_conditioning(compel, prompt, negative)
    cond, neg = engine_conditioning(components, prompt, negative)
    np.testing.assert_allclose(cond, expected_cond, atol=1e-5, rtol=0, err_msg=prompt)
    np.testing.assert_allclose(neg, expected_neg, atol=1e-5, rtol=0, err_msg=negative)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_one_weighted_word_equals_compel_at_every_weight(compel, backends, backend):
    for w in WEIGHTS:
        assert_like_compel(compel, backends[backend], f"a painting of a (wolf){w} sitting in front of the full moon")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_two_weighted_words_equal_compel_at_every_weight(compel, backends, backend):
    for w in WEIGHTS:
        prompt = f"a painting of a (wolf){w} sitting in front of the (full moon){w} , night sky"  # two fragments
        assert_like_compel(compel, backends[backend], prompt, negative=f"(snow){w} , sand")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_long_prompt_equals_compel_with_a_fragment_across_the_chunk_break(compel, backends, backend):
    for w, v in ((0.0, 0.9), (0.3, 0.5), (0.5, 1.5)):
        # 74 tokens, then "wolf | full moon" across the break (one token a word), then a second weighted word
        prompt = " ".join(["night sky"] * 37) + f" (wolf full moon){w} misty (forest){v}"
        assert len(tokenize_prompt(backends[backend].tokenizer, prompt, "compel").chunks) == 2
        assert_like_compel(compel, backends[backend], prompt, negative="(sand)0.4")


def test_a_text_encoder_graph_without_the_mask_refuses_to_hide_a_token(backends, monkeypatch):
    """An ONNX text encoder from before export format 4 has no attention_mask input: every token visible is exact
    (no mask is the all-ones mask), hiding one is an error in one line, never silently other numbers."""
    components = backends["onnx"]
    session = components.session("text_encoder")

    class OldGraph:
        def get_inputs(self):
            return [i for i in session.get_inputs() if i.name != "attention_mask"]

        def run(self, outputs, feeds):
            assert set(feeds) == {"input_ids"}
            return session.run(outputs, {**feeds, "attention_mask": np.ones_like(feeds["input_ids"])})

    ids = tokenize_prompt(components.tokenizer, "a wolf at night", "none").input_ids
    plain = components.encode_text(ids)
    monkeypatch.setitem(components._sessions, "text_encoder", OldGraph())
    assert np.array_equal(components.encode_text(ids, attention_mask=np.ones(len(ids), dtype=np.int64)), plain)
    hide = np.ones(len(ids), dtype=np.int64)
    hide[2] = 0
    with pytest.raises(AttuneError, match="attention_mask input"):
        components.encode_text(ids, attention_mask=hide)
