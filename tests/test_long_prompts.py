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
    text_time = None  # one encoder (not SDXL)

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


@pytest.fixture(scope="module")
def long_prompt_engines(tiny_model_dir, tiny_export):
    from engine.pipeline.attune import Attune

    engines = {backend: Attune(tiny_model_dir, backend=backend) for backend in ("torch", "onnx")}
    yield engines
    for engine in engines.values():
        engine.close()


# 80 tokens before "wolf": a word in the second chunk (the tiny model's word-level tokenizer: one token a word)
LONG_PROMPT = " ".join(["night sky"] * 40) + " wolf"


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_word_in_the_second_chunk_drives_the_image_and_has_its_heatmap(long_prompt_engines, backend):
    from engine.pipeline.params import GenerateParams

    engine = long_prompt_engines[backend]
    base = GenerateParams(prompt=LONG_PROMPT, seed=3, steps=3)
    plain = engine.generate(base)
    assert plain.backend == backend and plain.word_tokens.n_chunks == 2 and not plain.word_tokens.truncated_words
    heat = plain.maps.word_heatmap(plain.word_tokens, "wolf")
    assert np.isfinite(heat).all() and heat.max() > 0
    louder = engine.generate(base.replace(weights={"wolf": 2.0}))  # its slider reaches the UNet
    assert not np.array_equal(np.asarray(plain.image), np.asarray(louder.image))


def test_both_backends_agree_on_a_long_prompt(long_prompt_engines):
    from engine.pipeline.params import GenerateParams

    params = GenerateParams(prompt=LONG_PROMPT, seed=5, steps=3)
    torch_image, onnx_image = (np.asarray(long_prompt_engines[b].generate(params).image, dtype=np.int16)
                               for b in ("torch", "onnx"))
    assert np.abs(torch_image - onnx_image).max() <= 2


def test_the_version_records_the_chunks_and_the_cli_warns_of_words_left_out(tiny_model_dir, tmp_path, capsys):
    import json

    from engine.cli import main
    from engine.words.prompt import MAX_CHUNKS

    too_long = " ".join(["a"] * (75 * MAX_CHUNKS)) + " wolf"  # within the 2000-character limit
    code = main(["generate", "--prompt", too_long, "--steps", "1", "--backend", "torch", "--model", str(tiny_model_dir),
                 "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    record = json.loads(out)
    assert record["prompt_chunks"] == MAX_CHUNKS and record["dropped_words"] == ["wolf"]
    assert "warning: past the prompt's last" in err and "wolf" in err
    code = main(["generate", "--prompt", LONG_PROMPT, "--steps", "1", "--backend", "torch", "--model",
                 str(tiny_model_dir), "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    record = json.loads(out)
    assert code == 0 and record["prompt_chunks"] == 2 and record["dropped_words"] == [] and "past the" not in err


def test_words_only_heatmaps_of_a_long_prompt_share_out_the_words_attention_only(long_prompt_engines):
    """"Share of the prompt's words" divides by the attention to the prompt's word tokens alone: the second chunk's
    BOS and the first chunk's EOS (which take much of the attention) are not words. So, per pixel, the words' shares
    add up to 1 (at the latent-sized layers, which need no resize)."""
    from engine.pipeline.params import GenerateParams

    result = long_prompt_engines["torch"].generate(GenerateParams(prompt=LONG_PROMPT, seed=3, steps=2))
    maps, wt = result.maps, result.word_tokens
    assert wt.n_chunks == 2
    latent_side = maps.latent_hw[0]
    assert latent_side in maps.resolutions()
    total = np.zeros(maps.latent_hw, dtype=np.float64)
    for word in dict.fromkeys(wt.words):
        tokens = len(wt.indices_for(word))  # the heatmap is the mean share over the word's tokens
        heat = maps.word_heatmap(wt, word, resolutions=[latent_side], step_range=(0, 2), size=maps.latent_hw,
                                 normalize=False, words_only=True)
        total += tokens * heat
    assert np.allclose(total, 1.0, atol=1e-4)
