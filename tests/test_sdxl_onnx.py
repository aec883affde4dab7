"""SDXL on ONNX Runtime (issue 23, item 5), on the tiny random-weight SDXL-shaped folder: the export (second text
encoder, the UNet's added inputs, a map from every cross-attention layer), the light components' text conditioning,
and images and maps against the PyTorch backend (DDIM with guidance and a negative prompt; Turbo's one step)."""
import json

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler

from engine.model.loading import load_components
from engine.model.onnx_components import load_onnx_components
from engine.pipeline.attune import Attune
from engine.pipeline.params import GenerateParams
from engine.protocols import AddedConditioning
from engine.runners.onnx import OnnxUNetRunner
from engine.runners.torch import TorchUNetRunner
from engine.words.prompt import tokenize_prompt
from tests.tiny_model import build_sdxl_model

PROMPT = "a wolf under the full moon , night sky"
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    return build_sdxl_model(tmp_path_factory.mktemp("sdxl-onnx"))


@pytest.fixture(scope="module")
def sdxl_export(sdxl_dir, onnx_cache):
    from tests.onnx_support import exported

    return exported(sdxl_dir)


@pytest.fixture(scope="module")
def torch_components(sdxl_dir):
    return load_components(sdxl_dir)


def max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def test_export_holds_the_second_encoder_and_the_unets_added_inputs(sdxl_export, torch_components):
    manifest = json.loads((sdxl_export / "attune_onnx.json").read_text())
    assert "text_encoder_2" in manifest["parts"]
    assert manifest["unet_inputs"][-2:] == ["text_embeds", "time_ids"]
    assert manifest["added_inputs"] == {"text_embeds": 16, "time_ids": 6}
    runner = TorchUNetRunner(torch_components.unet)
    try:  # every attn2 layer, the deepest blocks' several transformer layers included
        assert manifest["map_layers"] == runner.layer_names and len(runner.layer_names) > 6
    finally:
        runner.close()


def test_light_text_conditioning_matches_pytorch(sdxl_dir, sdxl_export, torch_components):
    light = load_onnx_components(sdxl_dir, export_dir=sdxl_export)
    assert light.text_time == torch_components.text_time and light.pad_id_2 == torch_components.pad_id_2
    ids = tokenize_prompt(light.tokenizer, PROMPT).input_ids
    mask = np.ones(len(ids), dtype=np.int64)
    mask[3] = 0  # a hidden token (the `embed` method's Compel masking), on both encoders
    for m in (None, mask):
        got, expected = light.encode_text(ids, m), torch_components.encode_text(ids, m)
        assert got.shape == expected.shape == (1, 77, 64)
        np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(light.encode_pooled(ids), torch_components.encode_pooled(ids), atol=1e-5)


def test_unet_noise_and_maps_match_pytorch_with_the_added_conditioning(sdxl_export, torch_components):
    g = torch.Generator().manual_seed(0)
    sample, context = torch.randn(2, 4, 10, 12, generator=g), torch.randn(2, 77, 64, generator=g)
    added = AddedConditioning(torch.randn(2, 16, generator=g), torch.tensor([[64.0, 80, 0, 0, 64, 80]] * 2))
    scale = 0.5 + torch.rand(2, 77, generator=g)
    expected_runner, runner = TorchUNetRunner(torch_components.unet), OnnxUNetRunner(sdxl_export)
    try:
        expected = expected_runner(sample, 501, context, key_scale=scale, capture_maps=True, cond_rows=1, added=added)
        got = runner(sample, 501, context, key_scale=scale, capture_maps=True, cond_rows=1, added=added)
        assert float((got[0] - expected[0]).abs().max()) <= 1e-4
        assert set(got[1]) == set(expected[1]) == set(runner.layer_names)
        assert max(float((got[1][k] - expected[1][k]).abs().max()) for k in got[1]) <= 1e-5
    finally:
        expected_runner.close()
        runner.close()


def _both(folder):
    onnx_engine, torch_engine = Attune(folder, backend="onnx"), Attune(folder, backend="torch")
    return onnx_engine, torch_engine


def test_ddim_image_and_maps_match_pytorch(sdxl_dir, sdxl_export):
    onnx_engine, torch_engine = _both(sdxl_dir)
    try:
        params = GenerateParams(prompt=PROMPT, negative_prompt="ugly sky", seed=2, steps=3, guidance=5.0,
                                scheduler="ddim", weights={"moon": 1.5}, weight_mode="score")
        got, expected = onnx_engine.generate(params), torch_engine.generate(params)
        assert got.backend == "onnx" and got.fallback_reason is None and expected.backend == "torch"
        assert max_diff(got.image, expected.image) <= 1
        for token in (2, 5):
            assert np.abs(got.maps.token_map([token]) - expected.maps.token_map([token])).max() <= 1e-5
    finally:
        onnx_engine.close()
        torch_engine.close()


def test_turbo_one_step_matches_pytorch(tmp_path, sdxl_export, onnx_cache):
    folder = build_sdxl_model(tmp_path / "turbo", scheduler=EulerDiscreteScheduler(**BETAS,
                                                                                   timestep_spacing="trailing"))
    from tests.onnx_support import exported

    exported(folder)
    onnx_engine, torch_engine = _both(folder)
    try:
        params = GenerateParams(prompt=PROMPT, seed=4)  # the model's defaults: 1 step, guidance off
        got, expected = onnx_engine.generate(params), torch_engine.generate(params)
        assert got.backend == "onnx" and (got.params.steps, got.params.guidance) == (1, 0.0)
        assert max_diff(got.image, expected.image) <= 1
        assert np.abs(got.maps.token_map([2]) - expected.maps.token_map([2])).max() <= 1e-5
    finally:
        onnx_engine.close()
        torch_engine.close()


def test_auto_runs_sdxl_on_onnx_when_its_export_exists(sdxl_dir, sdxl_export):
    engine = Attune(sdxl_dir, backend="auto")
    try:
        assert engine.backend_name == "onnx" and engine.fallback_reason is None
    finally:
        engine.close()


def test_batched_onnx_calls_carry_each_requests_added_conditioning(sdxl_dir, sdxl_export):
    """The batcher stacks concurrent requests' UNet calls on one graph: each keeps its own pooled embedding and size
    ids, and gets the noise and maps it gets alone."""
    from engine.runners.batching import _Call, stacked_call
    from engine.sampling.loop import prepare_conditioning

    engine = Attune(sdxl_dir, backend="onnx")
    try:
        runner, comps = engine.runner, engine.components
        rng = np.random.default_rng(0)
        calls = []
        for seed, size in ((1, (64, 64)), (2, (96, 80))):
            cond = prepare_conditioning(comps, tokenize_prompt(comps.tokenizer, PROMPT),
                                        tokenize_prompt(comps.tokenizer, "ugly" * seed), guidance=5.0)
            sample = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
            calls.append(_Call(sample, np.float32(500), cond.embeddings, None, None, 1, cond.added(size)))
        for call, (noise, maps) in zip(calls, stacked_call(runner, calls)):
            alone, alone_maps = runner(call.sample, call.timestep, call.embeddings, capture_maps=True, cond_rows=1,
                                       added=call.added)
            np.testing.assert_allclose(noise, alone, atol=1e-5, rtol=0)
            assert set(maps) == set(alone_maps) == set(runner.layer_names)
            assert max(float(np.abs(maps[k] - alone_maps[k]).max()) for k in maps) <= 1e-6
    finally:
        engine.close()


def test_fp16_sdxl_graphs_take_the_added_inputs_and_run_close_to_fp32(torch_components, tmp_path):
    """`--dtype fp16` (GPU hosts) on SDXL: the fp16 UNet graphs take text_embeds and time_ids too; on the CPU (forced,
    as the runner uses them only with CUDA) they give the fp32 graphs' noise and maps to fp16 rounding."""
    from export.onnx import export_components

    folder = export_components(torch_components, tmp_path, parts=("unet",), dtype="fp16")
    g = torch.Generator().manual_seed(4)
    sample, context = torch.randn(2, 4, 9, 13, generator=g).numpy(), torch.randn(2, 77, 64, generator=g).numpy()
    added = AddedConditioning(torch.randn(2, 16, generator=g).numpy(), np.array([[72.0, 104, 0, 0, 72, 104]] * 2))
    fp32, fp16 = OnnxUNetRunner(folder), OnnxUNetRunner(folder, precision="fp16")
    expected, expected_maps = fp32(sample, np.array(601.0), context, capture_maps=True, cond_rows=1, added=added)
    got, got_maps = fp16(sample, np.array(601.0), context, capture_maps=True, cond_rows=1, added=added)
    assert 0 < float(np.abs(got - expected).max()) <= 2.5e-2  # it really ran in fp16
    assert set(got_maps) == set(expected_maps) == set(fp16.layer_names)
    assert max(float(np.abs(got_maps[k] - expected_maps[k]).max()) for k in got_maps) <= 1e-3


def test_side_graphs_over_the_protobuf_limit_keep_their_weights_in_an_external_file(sdxl_dir, torch_components,
                                                                                     tmp_path, monkeypatch):
    """SDXL's second text encoder is over 2 GB in fp32: its weights go to model.onnx_data (the limit lowered here)."""
    import export.onnx as export_onnx

    monkeypatch.setattr(export_onnx, "EXTERNAL_DATA_BYTES", 0)
    folder = export_onnx.export_components(torch_components, tmp_path,
                                           parts=("text_encoder", "text_encoder_2", "vae_decoder"))
    for part in ("text_encoder", "text_encoder_2", "vae_decoder"):
        assert (folder / part / "model.onnx_data").is_file()
        assert (folder / part / "model.onnx").stat().st_size < (folder / part / "model.onnx_data").stat().st_size
    assert sorted(p.name for p in (folder / "text_encoder_2").iterdir()) == ["model.onnx", "model.onnx_data"]
    light = load_onnx_components(sdxl_dir, export_dir=folder)
    ids = tokenize_prompt(light.tokenizer, PROMPT).input_ids
    np.testing.assert_allclose(light.encode_text(ids), torch_components.encode_text(ids), atol=1e-5)
    np.testing.assert_allclose(light.encode_pooled(ids), torch_components.encode_pooled(ids), atol=1e-5)


def test_auto_does_not_start_an_sdxl_export_but_onnx_by_name_does(sdxl_dir, tmp_path, monkeypatch):
    """An SDXL export needs several times the weights in RAM: auto runs PyTorch until one exists."""
    from export.onnx import ensure_exported

    monkeypatch.setenv("ATTUNE_CACHE", str(tmp_path))
    asked = []

    def export(components, progress=None):
        asked.append(components.weights_hash)
        return ensure_exported(components, progress=lambda *a: None)

    engine = Attune(sdxl_dir, backend="auto", export=export)
    try:
        assert engine.backend_name == "torch" and "auto does not export" in engine.fallback_reason and not asked
    finally:
        engine.close()
    engine = Attune(sdxl_dir, backend="onnx", export=export)
    try:
        assert engine.backend_name == "onnx" and len(asked) == 1
    finally:
        engine.close()


@pytest.mark.parametrize("inpaint_unet", [False, True])
def test_inpaint_matches_pytorch(tmp_path, onnx_cache, inpaint_unet):
    """Inpainting on ONNX: the base SDXL UNet blending, and the folder's 9-channel SDXL inpainting UNet's graph."""
    from engine.pipeline.params import InpaintParams
    from tests.onnx_support import exported

    folder = build_sdxl_model(tmp_path / "sdxl", inpaint_unet=inpaint_unet)
    exported(folder)
    onnx_engine, torch_engine = _both(folder)
    try:
        parent = torch_engine.generate(GenerateParams(prompt=PROMPT, seed=5, steps=2, scheduler="ddim"))
        mask = np.zeros((64, 64), bool)
        mask[16:48, 16:48] = True
        params = InpaintParams(base=GenerateParams(prompt="a red fox", seed=6, steps=3, scheduler="ddim"),
                               image=parent.image, mask=mask, auto_crop=False, mask_blur=0)
        got, expected = onnx_engine.inpaint(params), torch_engine.inpaint(params)
        assert got.backend == "onnx" and got.fallback_reason is None
        assert got.info["unet"] == expected.info["unet"] == ("inpaint-9ch" if inpaint_unet else "base")
        assert max_diff(got.image, expected.image) <= 1
    finally:
        onnx_engine.close()
        torch_engine.close()
