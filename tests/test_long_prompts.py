"""Prompts over 75 tokens: A1111's chunking rule (hand-computed cases) and Compel's long-prompt conditioning
(its own output on a tiny random CLIP text model). Issue 21, item 4."""
from types import SimpleNamespace

import numpy as np
import pytest

from engine.words.prompt import _Token, a1111_chunks, tokenize_prompt
from engine.sampling.loop import prepare_conditioning
from tests.test_tokens_clip import clip_files, reference  # noqa: F401  (fixtures)

COMMA = 0


def tokens(spec: str) -> list:
    """'w' a word token, ',' a comma, '|' BREAK."""
    return [None if c == "|" else _Token(COMMA if c == "," else 1, 1.0, []) for c in spec]


def lengths(chunks) -> list[int]:
    return [len(c) for c in chunks]


def test_a1111_chunks_hand_computed():
    assert lengths(a1111_chunks(tokens("w" * 75), COMMA)) == [75]  # exactly full: one chunk
    assert lengths(a1111_chunks(tokens("w" * 76), COMMA)) == [75, 1]  # no comma: cut at 75
    # a comma at position 60 (15 tokens before the end): the 15 after it move on
    assert lengths(a1111_chunks(tokens("w" * 60 + "," + "w" * 20), COMMA)) == [61, 20]
    # a comma 21 tokens before the end is too far back: cut at 75
    assert lengths(a1111_chunks(tokens("w" * 54 + "," + "w" * 25), COMMA)) == [75, 5]
    # exactly 20 back still counts (len 75 - comma index 55 = 20)
    assert lengths(a1111_chunks(tokens("w" * 55 + "," + "w" * 25), COMMA)) == [56, 25]
    # the 76th token is itself a comma: no backtrack, it opens the next chunk
    assert lengths(a1111_chunks(tokens("w" * 60 + "," + "w" * 14 + ","), COMMA)) == [75, 1]
    assert lengths(a1111_chunks(tokens("ww|w"), COMMA)) == [2, 1]  # BREAK ends the chunk
    assert lengths(a1111_chunks(tokens("w||w"), COMMA)) == [1, 0, 1]  # two BREAKs: an empty chunk between
    assert lengths(a1111_chunks(tokens("w|"), COMMA)) == [1]
    assert lengths(a1111_chunks(tokens(""), COMMA)) == [0]


class ClipComponents:
    def __init__(self, tokenizer, model):
        self.tokenizer, self.model = tokenizer, model

    def encode_text(self, ids):
        import torch

        with torch.no_grad():
            return self.model(torch.tensor([ids]))[0].numpy()


@pytest.fixture(scope="module")
def tiny_clip(reference):  # noqa: F811
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(reference), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77,
                            bos_token_id=reference.bos_token_id, eos_token_id=reference.eos_token_id,
                            pad_token_id=reference.pad_token_id)
    return CLIPTextModel(config).eval()


LONG = ", ".join(["a wolf under the full moon... so quiet!!", "wow :) a red fox in the snow",
                  "a café by the lake; misty morning", "golden light"] * 5) + ". the (sky)1.3 at night"


def test_compel_long_prompt_conditioning_parity(clip_files, tiny_clip):  # noqa: F811
    from compel import Compel
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer.from_pretrained(str(clip_files), model_max_length=77)  # noqa: F811  (as SD's)

    compel = Compel(tokenizer=reference, text_encoder=tiny_clip, truncate_long_prompts=False)
    cond, neg = compel(LONG), compel("ugly")
    [cond, neg] = compel.pad_conditioning_tensors_to_same_length([cond, neg])
    comps = ClipComponents(reference, tiny_clip)
    wt = tokenize_prompt(reference, LONG, "compel")
    assert len(wt.chunks) > 1 and cond.shape[1] == 77 * len(wt.chunks)
    c = prepare_conditioning(comps, wt, tokenize_prompt(reference, "ugly", "compel"), guidance=7.5,
                             weight_mode="embed")
    np.testing.assert_allclose(c.embeddings[1], cond[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(c.embeddings[0], neg[0].numpy(), atol=1e-5)
