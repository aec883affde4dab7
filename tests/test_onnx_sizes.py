"""ONNX at any size that is a multiple of the VAE's factor (issue 21, item 6): the UNet graph follows odd latent
sides (diffusers' `upsample_size` path), an explicit "onnx" backend never falls back to PyTorch unseen, and ONNX
Runtime prints nothing of its own to stderr."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import AttuneError
from engine.pipeline.attune import Attune
from engine.pipeline.params import GenerateParams
from engine.runners.onnx import OnnxUNetRunner
from engine.runners.torch import TorchUNetRunner
from tests.test_onnx_runner import _image_diff

# the parity tolerances of tests/test_onnx_runner.py
NOISE_TOL = 1e-4
MAPS_TOL = 1e-5
IMAGE_TOL = 1 / 255  # mean abs difference of images scaled to [0, 1]

# 104x72 px: a 13x9 latent, odd on both sides, so the tiny UNet's downsampled grid (7x5) does not double back to it
ODD = GenerateParams(prompt="a painting of a wolf in front of the full moon", seed=3, steps=3, width=104, height=72,
                     weights={"moon": 1.6}, weight_mode="score")


@pytest.fixture(scope="module")
def engines(tiny_model_dir, tiny_export):
    onnx_engine = Attune(tiny_model_dir, backend="onnx")
    torch_engine = Attune(tiny_model_dir, backend="torch")
    yield onnx_engine, torch_engine
    onnx_engine.close()
    torch_engine.close()


@pytest.mark.parametrize("hw", [(9, 13), (7, 8), (12, 10)])
def test_unet_graph_follows_any_latent_side(tiny_components, tiny_export, hw):
    """Odd and even latent sides: the same noise and maps as the PyTorch UNet."""
    g = torch.Generator().manual_seed(1)
    sample, context = torch.randn(2, 4, *hw, generator=g), torch.randn(2, 77, 32, generator=g)
    expected, expected_maps = TorchUNetRunner(tiny_components.unet)(sample, torch.tensor(601), context,
                                                                    capture_maps=True, cond_rows=1)
    with OnnxUNetRunner(tiny_export) as runner:
        got, got_maps = runner(sample, torch.tensor(601), context, capture_maps=True, cond_rows=1)
    assert got.shape == expected.shape == sample.shape
    assert float((got - expected).abs().max()) <= NOISE_TOL
    assert set(got_maps) == set(expected_maps)
    assert max(float((got_maps[k] - expected_maps[k]).abs().max()) for k in got_maps) <= MAPS_TOL


def test_odd_latent_image_runs_on_onnx_and_matches_torch(engines, capfd):
    onnx_engine, torch_engine = engines
    got, expected = onnx_engine.generate(ODD), torch_engine.generate(ODD)
    assert got.backend == "onnx" and got.fallback_reason is None
    assert got.image.size == expected.image.size == (104, 72)
    assert _image_diff(got.image, expected.image) <= IMAGE_TOL
    token = got.word_tokens.token_indices[-1]  # "moon"
    assert np.abs(got.maps.token_map(token) - expected.maps.token_map(token)).max() <= 1e-4
    assert "onnxruntime" not in capfd.readouterr().err.lower()


def _break_the_feed(runner, monkeypatch):
    """A real ONNX Runtime failure inside a kernel (which ORT also logs): key scales one token longer than the
    context, so the Mul that scales the keys cannot broadcast."""
    feed = runner._feed

    def wrong_scales(*args):
        out = feed(*args)
        batch, seq = out["key_scale"].shape
        out["key_scale"] = np.ones((batch, seq + 1), dtype=np.float32)
        return out

    monkeypatch.setattr(runner, "_feed", wrong_scales)


def test_explicit_onnx_failure_is_an_error_and_ort_prints_nothing(tiny_model_dir, tiny_export, monkeypatch, capfd):
    engine = Attune(tiny_model_dir, backend="onnx")
    try:
        _break_the_feed(engine.runner, monkeypatch)
        capfd.readouterr()
        with pytest.raises(AttuneError) as caught:
            engine.generate(ODD.replace(steps=1))
        message = str(caught.value)
        assert "ONNX Runtime failed" in message and "backend auto" in message and "\n" not in message
        assert engine.backend.torch_runner is None  # PyTorch never ran
        assert capfd.readouterr().err == ""  # ORT's own "[E:onnxruntime:...]" line stays out of stderr
    finally:
        engine.close()


def test_auto_falls_back_and_says_why(tiny_model_dir, tiny_export, monkeypatch, capfd):
    engine = Attune(tiny_model_dir, backend="auto")
    try:
        assert engine.backend_name == "onnx"
        _break_the_feed(engine.runner, monkeypatch)
        capfd.readouterr()
        result = engine.generate(ODD.replace(steps=1))
        assert result.backend == "torch"
        assert "ONNX Runtime failed" in result.fallback_reason and "ran on PyTorch" in result.fallback_reason
        assert "onnxruntime" not in capfd.readouterr().err.lower()
    finally:
        engine.close()


def test_explicit_onnx_failure_of_the_inpaint_graph_is_an_error(tmp_path_factory, onnx_cache):
    from engine.pipeline.params import InpaintParams
    from tests.onnx_support import exported
    from tests.tiny_model import add_inpaint_unet, build_tiny_model

    folder = add_inpaint_unet(build_tiny_model(tmp_path_factory.mktemp("tiny-with-inpaint-unet")))
    exported(folder)
    engine = Attune(folder, backend="onnx")
    try:
        base = GenerateParams("a wolf", seed=1, steps=1, width=64, height=48)
        mask = np.zeros((48, 64), dtype=bool)
        mask[8:40, 16:48] = True
        params = InpaintParams(base=base, image=engine.generate(base).image, mask=mask)
        assert engine.inpaint(params).backend == "onnx"
        runner = engine.backend.inpaint_runner

        def broken(maps):
            raise RuntimeError("simulated ORT failure")

        runner.session = runner.lane_session = broken  # whole calls and CFG lanes
        with pytest.raises(AttuneError, match="simulated ORT failure.*backend auto"):
            engine.inpaint(params)
        assert engine.backend.inpaint_torch_runner is None
    finally:
        engine.close()


@pytest.mark.parametrize("subfolder", ["unet", "unet_inpaint"])
def test_shipped_graphs_of_the_built_in_model_follow_odd_latent_sides(subfolder):
    """models/tiny-scenes/onnx/ (the light runtime's graphs) at 104x72 px: a 13x9 latent."""
    from engine.model.loading import default_model_path, load_components
    from engine.model.onnx_files import shipped_dir

    model = default_model_path()
    if not (shipped_dir(model) / subfolder).is_dir():
        pytest.skip(f"the built-in model ships no {subfolder} graph")
    comps = load_components(model)
    unet = comps.unet if subfolder == "unet" else comps.inpaint_unet
    g = torch.Generator().manual_seed(2)
    sample = torch.randn(2, int(unet.config.in_channels), 9, 13, generator=g)
    context = torch.randn(2, 77, int(unet.config.cross_attention_dim), generator=g)
    expected, _ = TorchUNetRunner(unet)(sample, torch.tensor(401), context)
    with OnnxUNetRunner(shipped_dir(model), subfolder=subfolder) as runner:
        got, _ = runner(sample, torch.tensor(401), context)
    assert float((got - expected).abs().max()) <= NOISE_TOL
