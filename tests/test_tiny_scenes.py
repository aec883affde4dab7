"""The committed built-in model: layout, tokenizer, loading (engine and diffusers), and that it draws a moon."""
from pathlib import Path

import numpy as np
import pytest
import torch

MODEL = Path(__file__).resolve().parents[1] / "models" / "tiny-scenes"
DESIGN_PROMPT = "a painting of a wolf sitting in front of the full moon, night sky"


def test_folder_is_small_safetensors_only_diffusers_layout():
    import json

    index = json.loads((MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["tokenizer"] == ["transformers", "PreTrainedTokenizerFast"]
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    files = [p for p in MODEL.rglob("*") if p.is_file() and p.name != ".attune_hash.json"]
    assert not [p for p in files if p.suffix in (".bin", ".ckpt", ".pt", ".pth", ".pkl")]
    assert {p.parent.name for p in files if p.suffix == ".safetensors"} == {"unet", "vae", "text_encoder",
                                                                           "unet_inpaint"}
    # the light runtime's ONNX graphs read their weights from the safetensors beside them: structure only
    shipped_graphs = [p for p in files if MODEL / "onnx" in p.parents]
    assert sum(p.stat().st_size for p in shipped_graphs) <= 3 * 1024 * 1024
    assert sum(p.stat().st_size for p in files) <= 40 * 1024 * 1024


def test_tokenizer_round_trips_and_flags_unknown_words():
    from transformers import AutoTokenizer

    from engine.words.prompt import tokenize_prompt

    tok = AutoTokenizer.from_pretrained(MODEL / "tokenizer")
    enc = tok(DESIGN_PROMPT, padding="max_length", max_length=77)["input_ids"]
    assert len(enc) == 77 and enc[0] == tok.bos_token_id and tok.eos_token_id in enc
    assert tok.unk_token_id not in enc
    assert tok.decode(enc, skip_special_tokens=True).replace(" ,", ",") == DESIGN_PROMPT
    wt = tokenize_prompt(tok, "a dragon under the full moon", syntax="none")
    assert wt.unknown_words == ["dragon"]
    assert tok.unk_token_id in tok("a dragon")["input_ids"]


def test_loads_through_engine_loader_and_diffusers():
    from diffusers import StableDiffusionPipeline

    from engine.model.loading import default_model_path, load_components

    assert default_model_path().resolve() == MODEL.resolve()
    comps = load_components()  # the engine's default model
    assert comps.unet_in_channels == 4 and comps.vae_scale_factor == 8
    assert {"moon", "wolf", "misty", "forest", "sky", ","} <= comps.known_words
    pipe = StableDiffusionPipeline.from_pretrained(MODEL)
    assert pipe.unet.dtype == pipe.text_encoder.dtype == pipe.vae.dtype == torch.float32
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a full moon", num_inference_steps=2, height=128, width=128, output_type="np").images[0]
    assert image.shape == (128, 128, 3) and np.isfinite(image).all()


@pytest.mark.timeout(600)
def test_full_moon_in_night_sky_is_found_in_four_of_five_seeds():
    from engine.pipeline.attune import Attune, GenerateParams
    from train.segment import segment

    engine = Attune(backend="torch")
    found = 0
    for seed in range(5):
        result = engine.generate(GenerateParams(prompt="a full moon in the night sky", seed=seed, steps=10))
        found += "moon" in segment(np.asarray(result.image.convert("RGB")))
    assert found >= 4, found


def test_committed_tokenizer_matches_the_world_vocabulary():
    """The text encoder's embedding rows follow these ids: a grammar change must come with retrained weights."""
    from transformers import AutoTokenizer

    from train.tokenizer import build_word_tokenizer
    from train.world import vocabulary

    committed = AutoTokenizer.from_pretrained(MODEL / "tokenizer").get_vocab()
    assert committed == build_word_tokenizer(vocabulary()).get_vocab()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_inpainting_unet_paints_a_red_house_on_the_meadow(backend):
    """The shipped 9-channel inpainting UNet runs on both backends, paints what was asked inside the mask (three of
    four seeds) and leaves every pixel outside it as it was."""
    from engine.pipeline.attune import Attune, GenerateParams, InpaintParams
    from train.segment import MIN_AREA, segment

    engine = Attune(backend=backend)
    box = np.zeros((128, 128), bool)
    box[80:120, 44:84] = True  # on the ground, below the horizon
    found = 0
    for seed in range(4):
        parent = engine.generate(GenerateParams(prompt="a green meadow under a clear blue sky", seed=seed, steps=10))
        before = np.asarray(parent.image.convert("RGB"))
        result = engine.inpaint(InpaintParams(base=parent.params.replace(prompt="a red house"), image=parent.image,
                                              mask=box))
        after = np.asarray(result.image.convert("RGB"))
        assert result.backend == backend and result.info["unet"] == "inpaint-9ch" and result.fallback_reason is None
        assert np.array_equal(before[~box], after[~box])
        house_before, house = segment(before).get("house"), segment(after).get("house")
        assert house_before is None or int((house_before & box).sum()) < MIN_AREA, seed  # not there already
        found += house is not None and int((house & box).sum()) >= MIN_AREA
    assert found >= 3, found
