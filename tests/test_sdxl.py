"""SDXL and SDXL-Turbo (issue 23) on a tiny random-weight SDXL-shaped folder (tests/tiny_model.build_sdxl_model):
defaults, diffusers' StableDiffusionXLPipeline parity, Compel's SDXL conditioning, A1111's SDXL emphasis rule, maps from
every cross-attention layer, and the refinements (blend reweight, inpaint 4/9-channel, mask from word, explore,
replay, PNG metadata)."""
import shutil

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from engine.model.family import model_defaults
from engine.pipeline.attune import Attune
from engine.pipeline.params import GenerateParams
from engine.sampling.loop import SizeConditioning, prepare_conditioning
from engine.words.prompt import MAX_LENGTH, tokenize_prompt
from tests.tiny_model import build_sdxl_model

PROMPT = "a wolf under the full moon , night sky"
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    return build_sdxl_model(tmp_path_factory.mktemp("sdxl"), inpaint_unet=True)


@pytest.fixture(scope="module")
def turbo_dir(tmp_path_factory):
    """As SDXL-Turbo ships: trailing spacing (the family's rule: guidance off, 1-4 steps)."""
    return build_sdxl_model(tmp_path_factory.mktemp("sdxl-turbo"),
                            scheduler=EulerDiscreteScheduler(**BETAS, timestep_spacing="trailing"))


@pytest.fixture(scope="module")
def pipe(sdxl_dir):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def engine(sdxl_dir):
    engine = Attune(sdxl_dir, backend="torch")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def parent(engine):
    return engine.generate(GenerateParams(prompt=PROMPT, seed=5, steps=3, scheduler="ddim"))


def diffusers_image(pipe, prompt, *, steps, guidance, seed, negative=None, size=64):
    latents = torch.randn((1, 4, size // 8, size // 8), generator=torch.Generator("cpu").manual_seed(seed))
    out = pipe(prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance, height=size,
               width=size, latents=latents, output_type="np")
    return (out.images[0] * 255).round().clip(0, 255).astype(np.int16)


def max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


# ---------------------------------------------------------------------------------------------- family, defaults
def test_sdxl_defaults_and_turbo(sdxl_dir, turbo_dir):
    d = model_defaults(sdxl_dir)
    assert (d.family, d.width, d.height, d.guidance, d.steps, d.scheduler) == ("SDXL", 64, 64, 5.0, 50, "euler")
    t = model_defaults(turbo_dir)
    assert (t.family, t.guidance, t.steps, t.distilled, t.timestep_spacing) == ("SDXL Turbo", 0.0, 1, True, "trailing")


def test_auto_backend_runs_sdxl_on_pytorch_and_says_why(sdxl_dir, tmp_path, monkeypatch):
    """No ONNX export and no exporter: PyTorch (tests/test_sdxl_onnx.py: on ONNX when an export exists)."""
    monkeypatch.setenv("ATTUNE_CACHE", str(tmp_path))
    engine = Attune(sdxl_dir, backend="auto")
    try:
        assert engine.backend_name == "torch" and "no ONNX graphs" in engine.fallback_reason
    finally:
        engine.close()


def test_an_sdxl_refiner_is_refused_in_one_line(sdxl_dir, tmp_path):
    from engine.errors import AttuneError
    from engine.model.loading import load_components

    folder = tmp_path / "refiner"
    shutil.copytree(sdxl_dir, folder)
    shutil.rmtree(folder / "text_encoder")
    with pytest.raises(AttuneError) as info:
        load_components(folder)
    assert "SDXL refiner" in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------- diffusers parity
@pytest.mark.parametrize("scheduler, negative", [("ddim", "ugly sky"), ("euler", "")])
def test_matches_the_diffusers_sdxl_pipeline(pipe, engine, scheduler, negative):
    """CFG with a negative prompt, and with an empty one (force_zeros_for_empty_prompt: zeros, as diffusers)."""
    pipe.scheduler = (DDIMScheduler if scheduler == "ddim" else EulerDiscreteScheduler).from_config(
        pipe.scheduler.config)
    reference = diffusers_image(pipe, PROMPT, steps=3, guidance=5.0, seed=2, negative=negative or None)
    result = engine.generate(GenerateParams(prompt=PROMPT, negative_prompt=negative, seed=2, steps=3, guidance=5.0,
                                            scheduler=scheduler, syntax="none"))
    assert max_diff(reference, result.image) <= 2


@pytest.mark.parametrize("steps", [1, 4])
def test_turbo_matches_the_diffusers_pipeline_without_guidance(turbo_dir, steps):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(turbo_dir)
    pipe.set_progress_bar_config(disable=True)
    engine = Attune(turbo_dir, backend="torch")
    try:
        result = engine.generate(GenerateParams(prompt=PROMPT, seed=4, steps=steps))  # the model's guidance: off
        assert result.params.guidance == 0.0
        assert max_diff(diffusers_image(pipe, PROMPT, steps=steps, guidance=0.0, seed=4), result.image) <= 2
    finally:
        engine.close()


def test_size_ids_match_diffusers_with_the_negative_variants(pipe):
    dim = pipe.text_encoder_2.config.projection_dim
    size = SizeConditioning(original=(96, 80), crop=(8, 4), target=(64, 64), negative_original=(32, 48),
                            negative_crop=(2, 0), negative_target=(40, 40))
    expected = torch.cat([pipe._get_add_time_ids((32, 48), (2, 0), (40, 40), torch.float32, dim),
                          pipe._get_add_time_ids((96, 80), (8, 4), (64, 64), torch.float32, dim)])
    np.testing.assert_array_equal(size.time_ids((64, 64), do_cfg=True), expected.numpy())
    plain = pipe._get_add_time_ids((64, 48), (0, 0), (64, 48), torch.float32, dim).numpy()
    np.testing.assert_array_equal(SizeConditioning().time_ids((64, 48), do_cfg=True), np.concatenate([plain, plain]))
    np.testing.assert_array_equal(SizeConditioning().time_ids((64, 48), do_cfg=False), plain)


# ---------------------------------------------------------------------------------------------- weights
LONG = ", ".join(["a wolf under the full moon. so quiet", "a red fox in the snow"] * 8) + ". the (sky)1.3 at night"


@pytest.mark.parametrize("prompt", ["a (wolf)1.1 under the moon", "a wolf under the (moon)1.5 , (sky)1.1", LONG])
def test_embed_equals_compel_sdxl_conditioning(pipe, engine, prompt):
    """Compel's SDXL mode (CompelForSDXL: both encoders' penultimate states, the pooled embedding of the text as
    typed, truncated; long prompts chunked) against Attune's `embed` method."""
    from compel import CompelForSDXL

    out = CompelForSDXL(pipe)(prompt, negative_prompt="ugly")
    comps = engine.components
    words = tokenize_prompt(comps.tokenizer, prompt, "compel")
    c = prepare_conditioning(comps, words, tokenize_prompt(comps.tokenizer, "ugly", "compel"), guidance=5.0,
                             weight_mode="embed")
    cond, neg = out.embeds[0].numpy(), out.negative_embeds[0].numpy()  # the shorter padded with empty chunks
    if prompt == LONG:
        assert len(words.chunks) > 1 and c.embeddings.shape[1] == MAX_LENGTH * len(words.chunks)
    np.testing.assert_allclose(c.embeddings[1], cond, atol=1e-5, rtol=0)
    np.testing.assert_allclose(c.embeddings[0], neg, atol=1e-5, rtol=0)
    np.testing.assert_allclose(c.pooled[1], out.pooled_embeds[0].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(c.pooled[0], out.negative_pooled_embeds[0].numpy(), atol=1e-5, rtol=0)


def test_embed_equals_compel_sdxl_below_one(pipe, engine):
    from compel import CompelForSDXL

    prompt = "a (wolf)0.5 under the moon"
    out = CompelForSDXL(pipe)(prompt)
    comps = engine.components
    c = prepare_conditioning(comps, tokenize_prompt(comps.tokenizer, prompt, "compel"),
                             tokenize_prompt(comps.tokenizer, "", "compel"), guidance=0.0, weight_mode="embed")
    np.testing.assert_allclose(c.embeddings[0], out.embeds[0].numpy(), atol=1e-5, rtol=0)


def a1111_reference(comps, ids: list[int], multipliers: list[float]):
    """A1111's SDXL conditioning, written from its formula: each encoder wrapper encodes each 77-token chunk (the
    second with its own padding after the end-of-text), applies EmphasisOriginal to its OWN output (z·w, then
    z·(mean before / mean after)), the chunks are concatenated, the two encoders' states are concatenated, and the
    pooled embedding is the second encoder's of the first chunk (zs[0].pooled), untouched by emphasis."""
    eos, pad_2 = comps.tokenizer.eos_token_id, comps.pad_id_2
    parts, pooled = [[], []], None
    for start in range(0, len(ids), MAX_LENGTH):
        chunk = ids[start : start + MAX_LENGTH]
        w = torch.tensor(multipliers[start : start + MAX_LENGTH])[None, :, None]
        end = chunk.index(eos)
        chunk_2 = chunk[: end + 1] + [pad_2] * (MAX_LENGTH - end - 1)
        for k, (encoder, tokens) in enumerate(((comps.text_encoder, chunk), (comps.text_encoder_2, chunk_2))):
            with torch.no_grad():
                output = encoder(torch.tensor([tokens]), output_hidden_states=True)
            z = output.hidden_states[-2]
            original_mean = z.double().mean()  # float64: a chunk's mean can be near 0 (see loop._a1111_reweight)
            z = z * w
            parts[k].append(z * (original_mean / z.double().mean()).float())
            if k == 1 and pooled is None:
                pooled = output.text_embeds
    return torch.cat([torch.cat(parts[0], 1), torch.cat(parts[1], 1)], -1)[0].numpy(), pooled[0].numpy()


@pytest.mark.parametrize("prompt", ["a (wolf:1.3) under the [moon]", "a (wolf:1.4) BREAK under the (full moon)"])
def test_a1111_emphasis_follows_a1111s_sdxl_rule(engine, prompt):
    comps = engine.components
    words = tokenize_prompt(comps.tokenizer, prompt, "a1111")
    c = prepare_conditioning(comps, words, tokenize_prompt(comps.tokenizer, "", "a1111"), guidance=0.0,
                             weight_mode="a1111")
    z, pooled = a1111_reference(comps, words.input_ids, words.token_weights)
    np.testing.assert_allclose(c.embeddings[0], z, atol=1e-5, rtol=0)
    np.testing.assert_allclose(c.pooled[0], pooled, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- maps
def test_maps_come_from_every_cross_attention_layer(engine, parent):
    unet = engine.components.unet
    attn2 = {name for name in unet.attn_processors if name.endswith("attn2.processor")}
    assert set(parent.maps.layers) == attn2
    blocks = {name.split(".attentions.")[0] + ".attentions." + name.split(".attentions.")[1].split(".")[0]
              for name in attn2 if ".attentions." in name}
    assert len(attn2) > len(blocks)  # several transformer layers per attention block, each kept
    assert parent.maps.resolutions() == [4, 2]  # SDXL's two attention resolutions (latent 8: 1/2 and 1/4)
    heat = parent.maps.word_heatmap(parent.word_tokens, "wolf", resolutions=[2])
    assert heat.shape == (64, 64) and np.isfinite(heat).all()


# ---------------------------------------------------------------------------------------------- refinements
def test_blend_reweight_keeps_the_parents_layout(engine, parent):
    edit = engine.reweight(parent.params, {"wolf": 2.0}, weight_mode="score", layout="blend")
    assert edit.info["layout"] == "blend"
    diff = np.abs(np.asarray(edit.image, dtype=np.int16) - np.asarray(parent.image, dtype=np.int16)).max(axis=2)
    assert (diff > 0).any() and (diff == 0).any()  # the word's region changes, outside it stays the parent's


def _inpaint(engine, parent, mask):
    from engine.pipeline.params import InpaintParams

    params = InpaintParams(base=GenerateParams(prompt="a red fox", seed=6, steps=3, scheduler="ddim"),
                           image=parent.image, mask=mask, auto_crop=False, mask_blur=0)
    return engine.inpaint(params)


def _box_mask():
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    return mask


def test_inpaint_on_the_sdxl_unet_blends_and_keeps_the_rest(sdxl_dir, parent, tmp_path):
    folder = tmp_path / "no-inpaint-unet"
    shutil.copytree(sdxl_dir, folder, ignore=shutil.ignore_patterns("unet_inpaint"))
    engine = Attune(folder, backend="torch")
    try:
        out = _inpaint(engine, parent, _box_mask())
    finally:
        engine.close()
    assert out.info["unet"] == "base"
    before, after = np.asarray(parent.image), np.asarray(out.image)
    assert np.array_equal(before[~_box_mask()], after[~_box_mask()]) and not np.array_equal(before, after)


def test_inpaint_on_9_channel_sdxl_unets(engine, parent, tmp_path):
    out = _inpaint(engine, parent, _box_mask())  # the folder's unet_inpaint/
    assert out.info["unet"] == "inpaint-9ch"
    assert np.array_equal(np.asarray(parent.image)[~_box_mask()], np.asarray(out.image)[~_box_mask()])
    inpainting_folder = build_sdxl_model(tmp_path / "sdxl-inpainting", in_channels=9)  # an SDXL inpainting checkpoint
    alone = Attune(inpainting_folder, backend="torch")
    try:
        assert alone.runner.in_channels == 9
        out = _inpaint(alone, parent, _box_mask())
    finally:
        alone.close()
    assert not np.array_equal(np.asarray(parent.image)[_box_mask()], np.asarray(out.image)[_box_mask()])


def test_mask_from_word(parent):
    mask = parent.maps.mask_from_word(parent.word_tokens, "moon")
    assert mask.shape == (64, 64) and mask.any() and not mask.all()


@pytest.fixture(scope="module")
def session(engine, tmp_path_factory):
    from engine.study.explore import explore
    from engine.study.log import StudyLog
    from engine.study.studio import Studio

    folder = tmp_path_factory.mktemp("sdxl-session")
    studio = Studio(engine, StudyLog(folder / "study.db"), folder / "out", participant_id="p1", study_id="s1")
    made = {"generate": studio.generate(GenerateParams(prompt=PROMPT, seed=8, steps=2, scheduler="ddim"))}
    made["reweight"] = studio.reweight({"moon": 1.8}, weight_mode="prob")
    made["inpaint"] = studio.inpaint(_box_mask(), "a red fox", parent=made["generate"].id)
    cells = explore(studio, "wolf", ["fox", "moon"], parent=made["generate"].id)
    made.update({f"explore {i}": cell for i, cell in enumerate(cells)})
    return studio, made, folder


def test_explore_makes_one_version_per_alternative(session):
    studio, made, _ = session
    cells = [v for name, v in made.items() if name.startswith("explore")]
    assert [v.prompt for v in cells] == [PROMPT.replace("wolf", "fox"), PROMPT.replace("wolf", "moon")]
    assert all(v.kind == "explore" and v.seed == made["generate"].seed for v in cells)


def test_sdxl_session_replays_bit_identical(session):
    from engine.study.log import StudyLog
    from engine.study.replay import replay_log

    _, made, folder = session
    report = replay_log(StudyLog.open_existing(folder / "study.db"))
    by_id = {entry.id: entry for entry in report.results}
    for name, version in made.items():
        assert (by_id[version.id].status, by_id[version.id].max_abs_diff) == ("identical", 0), name


def studio_image(version):
    from PIL import Image

    return Image.open(version.image_path).convert("RGB")


def test_png_metadata_round_trips_an_sdxl_version(session):
    from engine.study.pngmeta import read_png

    _, made, _ = session
    for version in (made["generate"], made["reweight"]):
        image, read = read_png(version.image_path)
        assert read == version
        assert np.array_equal(np.asarray(image), np.asarray(studio_image(version)))
    assert made["generate"].defaults_source.startswith("SDXL defaults")


def test_fp16_keeps_the_vae_in_fp32_where_force_upcast_says_so(sdxl_dir):
    from engine.model.loading import load_components

    comps = load_components(sdxl_dir, dtype=torch.float16)
    assert comps.unet.dtype == torch.float16 and comps.vae_dtype == torch.float32  # diffusers: fp16 VAE overflows


def test_batched_calls_carry_each_requests_added_conditioning(engine, parent):
    """The batcher stacks concurrent requests' UNet calls: each keeps its own pooled embedding and size ids."""
    from engine.runners.batching import _Call, stacked_call

    runner = engine.runner
    rng = np.random.default_rng(0)
    calls = []
    for seed, size in ((1, (64, 64)), (2, (96, 80))):
        cond = prepare_conditioning(engine.components, tokenize_prompt(engine.components.tokenizer, PROMPT, "none"),
                                    tokenize_prompt(engine.components.tokenizer, "ugly" * seed, "none"), guidance=5.0)
        sample = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
        calls.append(_Call(sample, np.float32(500), cond.embeddings, None, None, 1, cond.added(size)))
    stacked = stacked_call(runner, calls)
    for call, (noise, maps) in zip(calls, stacked):
        alone, alone_maps = runner(call.sample, call.timestep, call.embeddings, capture_maps=True, cond_rows=1,
                                   added=call.added)
        np.testing.assert_allclose(noise, alone, atol=1e-5, rtol=0)
        assert set(maps) == set(alone_maps)
