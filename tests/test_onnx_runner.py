"""engine/runners/onnx.py: parity with the PyTorch runner (noise, maps, token scales), full images on both
backends, fallback to PyTorch, provider and session settings."""

from __future__ import annotations

import shutil

import time

import numpy as np
import pytest
import torch

from engine.errors import AttuneError
from engine.model.loading import default_model_path, load_components
from engine.pipeline.attune import Attune
from engine.pipeline.params import GenerateParams, InpaintParams
from engine.runners.onnx import OnnxUNetRunner
from engine.model.ort_sessions import choose_providers, session_options
from engine.runners.torch import TorchUNetRunner

NOISE_TOL = 1e-4
MAPS_TOL = 1e-5
IMAGE_TOL = 1 / 255  # mean abs difference of images scaled to [0, 1]


@pytest.fixture(scope="session")
def runners(tiny_components, tiny_export):
    torch_runner = TorchUNetRunner(tiny_components.unet)
    onnx_runner = OnnxUNetRunner(tiny_export)
    yield torch_runner, onnx_runner
    torch_runner.close()
    onnx_runner.close()


def _inputs(batch=2, hw=(8, 8), channels=4, seed=0, cross_dim=32):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, channels, *hw, generator=g)
    context = torch.randn(batch, 77, cross_dim, generator=g)
    return sample, context


def _max_map_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b) and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("hw", [(8, 8), (6, 10)])
def test_unet_noise_and_maps_match_torch(runners, hw):
    torch_runner, onnx_runner = runners
    sample, context = _inputs(hw=hw)
    t = torch.tensor(801)
    expected, expected_maps = torch_runner(sample, t, context, capture_maps=True, cond_rows=1)
    got, got_maps = onnx_runner(sample, t, context, capture_maps=True, cond_rows=1)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert float((got - expected).abs().max()) <= NOISE_TOL
    assert _max_map_diff(got_maps, expected_maps) <= MAPS_TOL
    assert all(m.shape[0] == 1 and m.shape[2] == 77 for m in got_maps.values())
    # maps off: the pruned graph gives the same noise and no maps
    off, off_maps = onnx_runner(sample, t, context)
    assert off_maps == {} and float((off - expected).abs().max()) <= NOISE_TOL


def test_map_rows_count_is_dynamic(runners):
    torch_runner, onnx_runner = runners
    sample, context = _inputs(batch=4, seed=3)
    t = torch.tensor(11.5)  # a float timestep, as Euler's
    expected, expected_maps = torch_runner(sample, t, context, capture_maps=True, cond_rows=2)
    got, got_maps = onnx_runner(sample, t, context, capture_maps=True, cond_rows=2)
    assert float((got - expected).abs().max()) <= NOISE_TOL
    assert all(m.shape[0] == 2 for m in got_maps.values())
    assert _max_map_diff(got_maps, expected_maps) <= MAPS_TOL


@pytest.mark.parametrize("field", ["key_scale", "value_scale"])
def test_token_scales_match_torch(runners, field):
    """score (key_scale) and prob (value_scale) change the ONNX output exactly as they change PyTorch's."""
    torch_runner, onnx_runner = runners
    sample, context = _inputs(seed=5)
    t = torch.tensor(501)
    scale = torch.ones(2, 77)
    scale[1, 1:4] = torch.tensor([2.5, 0.2, 3.0])  # conditional row only, as the sampler does
    base, base_maps = torch_runner(sample, t, context, capture_maps=True, cond_rows=1)
    expected, expected_maps = torch_runner(sample, t, context, capture_maps=True, cond_rows=1, **{field: scale})
    got, got_maps = onnx_runner(sample, t, context, capture_maps=True, cond_rows=1, **{field: scale})
    assert float((expected - base).abs().max()) > 100 * NOISE_TOL  # the scale really changes the output
    assert float((got - expected).abs().max()) <= NOISE_TOL
    assert float((got[0] - base[0]).abs().max()) <= NOISE_TOL  # unconditional row untouched
    assert _max_map_diff(got_maps, expected_maps) <= MAPS_TOL
    assert _max_map_diff(expected_maps, base_maps) > 100 * MAPS_TOL


def test_bad_scale_shape_is_refused(runners):
    _, onnx_runner = runners
    sample, context = _inputs()
    with pytest.raises(AttuneError, match="Token scales must have shape"):
        onnx_runner(sample, torch.tensor(1), context, key_scale=torch.ones(2, 10))
    with pytest.raises(AttuneError, match="cond_rows"):
        onnx_runner(sample, torch.tensor(1), context, capture_maps=True, cond_rows=3)


def _image_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean() / 255)


@pytest.fixture(scope="session")
def engines(tiny_model_dir, onnx_cache):
    onnx_engine = Attune(tiny_model_dir, backend="onnx")
    torch_engine = Attune(tiny_model_dir, backend="torch")
    yield onnx_engine, torch_engine
    onnx_engine.close()
    torch_engine.close()


PARAMS = GenerateParams(
    prompt="a painting of a wolf in front of the full moon",
    seed=7,
    steps=4,
    width=64,
    height=48,
    weights={"moon": 1.8},
    weight_mode="score",
)


def test_full_image_matches_torch(engines):
    onnx_engine, torch_engine = engines
    got, expected = onnx_engine.generate(PARAMS), torch_engine.generate(PARAMS)
    assert got.backend == "onnx" and got.fallback_reason is None and expected.backend == "torch"
    assert _image_diff(got.image, expected.image) <= IMAGE_TOL
    # the stored maps agree too (sums over steps of the per-call maps)
    ga, ea = got.maps.token_map([5]), expected.maps.token_map([5])
    assert np.abs(ga - ea).max() <= 1e-4


def test_inpaint_matches_torch(engines):
    onnx_engine, torch_engine = engines
    base = torch_engine.generate(PARAMS.replace(weights={}))
    mask = np.zeros((48, 64), dtype=bool)
    mask[8:40, 16:48] = True
    params = InpaintParams(base=PARAMS.replace(prompt="misty forest", weights={}), image=base.image, mask=mask)
    got, expected = onnx_engine.inpaint(params), torch_engine.inpaint(params)
    assert got.backend == "onnx" and got.fallback_reason is None
    assert _image_diff(got.image, expected.image) <= IMAGE_TOL


def test_nine_channel_inpaint_matches_torch(tiny_inpaint_model_dir, onnx_cache):
    from export.onnx import ensure_exported

    onnx_engine = Attune(tiny_inpaint_model_dir, backend="onnx", export=ensure_exported)  # exported on first use
    torch_engine = Attune(tiny_inpaint_model_dir, backend="torch")
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    mask = np.zeros((48, 64), dtype=bool)
    mask[:24] = True
    params = InpaintParams(
        base=PARAMS.replace(prompt="night sky", weights={"sky": 0.5}, weight_mode="prob"),
        image=image,
        mask=mask,
        mask_blur=2,
    )
    got, expected = onnx_engine.inpaint(params), torch_engine.inpaint(params)
    assert onnx_engine.runner.in_channels == 9 and got.backend == "onnx"
    assert _image_diff(got.image, expected.image) <= IMAGE_TOL


def test_corrupted_graph_falls_back_to_torch(tiny_model_dir, tiny_export, tmp_path, monkeypatch, engines):
    _, torch_engine = engines
    monkeypatch.setenv("ATTUNE_CACHE", str(tmp_path))
    folder = tmp_path / "onnx" / tiny_export.name
    shutil.copytree(tiny_export, folder)  # a cache of our own, to damage
    engine = Attune(tiny_model_dir, backend="auto")
    assert engine.backend_name == "onnx" and engine.runner.export_dir == folder
    engine.close()
    graph = folder / "unet" / "model_maps.onnx"
    graph.write_bytes(b"\0" * graph.stat().st_size)  # same size: the manifest check passes, ORT cannot load it

    engine = Attune(tiny_model_dir, backend="auto")
    result = engine.generate(PARAMS)
    assert result.backend == "torch"
    assert "could not load" in result.fallback_reason and "model_maps.onnx" in result.fallback_reason
    assert np.array_equal(np.asarray(result.image), np.asarray(torch_engine.generate(PARAMS).image))


def test_missing_graph_is_reported(tiny_export, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(tiny_export, copy)
    (copy / "unet" / "model_maps.onnx").unlink()
    with pytest.raises(AttuneError, match="incomplete: unet/model_maps.onnx is missing"):
        OnnxUNetRunner(copy)


def test_failure_during_a_call_reruns_it_on_torch(tiny_model_dir, engines):
    """backend "auto" only: an explicit "onnx" raises instead (tests/test_onnx_sizes.py)."""
    _, torch_engine = engines
    onnx_engine = Attune(tiny_model_dir, backend="auto")
    assert onnx_engine.backend_name == "onnx"
    runner = onnx_engine.runner
    original = runner.session, runner.lane_session

    def broken(maps):
        raise RuntimeError("simulated ORT failure")

    runner.session = runner.lane_session = broken  # whole calls and CFG lanes
    try:
        result = onnx_engine.generate(PARAMS)
    finally:
        runner.session, runner.lane_session = original
    assert result.backend == "torch"
    assert "simulated ORT failure" in result.fallback_reason
    assert np.array_equal(np.asarray(result.image), np.asarray(torch_engine.generate(PARAMS).image))
    assert onnx_engine.generate(PARAMS).backend == "onnx"  # the next call tries ONNX again
    onnx_engine.close()


def test_provider_selection():
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("cuda", both) == both
    assert choose_providers("cuda:1", both) == both
    assert choose_providers("cpu", both) == ["CPUExecutionProvider"]
    assert choose_providers("cuda", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():  # this CPU build
        assert choose_providers("cuda") == ["CPUExecutionProvider"]


def test_cuda_device_without_onnxruntime_gpu_is_refused(tiny_components):
    """On a GPU host with the CPU build of ORT, `auto` must pick PyTorch on CUDA rather than ORT on the CPU."""
    import onnxruntime as ort

    from engine.runners.onnx import create_runner

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    with pytest.raises(AttuneError, match="onnxruntime-gpu is not installed"):
        create_runner(tiny_components, device="cuda")


def test_session_options():
    so = session_options(threads=3, optimization="extended")
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.intra_op_num_threads == 3
    import onnxruntime as ort

    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with pytest.raises(AttuneError, match="optimisation level"):
        session_options(optimization="max")


def test_memory_modes(monkeypatch):
    """'lean' (default) drops ORT's memory pattern; 'arena' keeps it. Both keep the arena (lean shrinks it)."""
    monkeypatch.delenv("ATTUNE_ORT_MEMORY", raising=False)
    lean, arena = session_options(), session_options(memory="arena")
    assert not lean.enable_mem_pattern and arena.enable_mem_pattern
    assert lean.enable_cpu_mem_arena and arena.enable_cpu_mem_arena
    with pytest.raises(AttuneError, match="memory mode"):
        session_options(memory="tiny")
    with pytest.raises(AttuneError, match="memory mode"):
        OnnxUNetRunner(".", memory="tiny")
    monkeypatch.setenv("ATTUNE_ORT_MEMORY", "arena")
    assert session_options().enable_mem_pattern


def test_arena_mode_matches_lean(runners, tiny_export):
    _, lean = runners
    sample, context = _inputs()
    with OnnxUNetRunner(tiny_export, memory="arena") as arena:
        a, a_maps = arena(sample, 500, context, capture_maps=True, cond_rows=1)
    b, b_maps = lean(sample, 500, context, capture_maps=True, cond_rows=1)
    assert torch.equal(a, b) and _max_map_diff(a_maps, b_maps) == 0
    lean(sample, 500, context)  # opens the noise-only session too
    lean.release_memory()  # the shrinking run on both sessions leaves later calls unchanged
    c, c_maps = lean(sample, 500, context, capture_maps=True, cond_rows=1)
    assert torch.equal(b, c) and _max_map_diff(b_maps, c_maps) == 0


def test_engine_releases_memory_once_idle_after_an_image(engines, monkeypatch):
    import engine.pipeline.attune as attune_module

    onnx_engine, _ = engines
    calls = []
    monkeypatch.setattr(onnx_engine.runner, "release_memory", lambda: calls.append(1), raising=False)
    monkeypatch.setattr(attune_module, "RELEASE_IDLE_S", 60.0)
    onnx_engine.generate(PARAMS.replace(steps=2))
    assert calls == []  # not on the image's own path
    onnx_engine._release_now_if_idle()  # what the idle timer does
    assert calls == [1]
    monkeypatch.setattr(attune_module, "RELEASE_IDLE_S", 0.05)
    onnx_engine.generate(PARAMS.replace(steps=2))
    deadline = time.monotonic() + 10
    while calls != [1, 1] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert calls == [1, 1]  # the timer fired once the engine was idle


def test_builtin_model_parity(onnx_cache):
    path = default_model_path()
    if not (path / "unet").is_dir():
        pytest.skip(f"the built-in model is not trained yet ({path} missing)")
    components = load_components(path)
    from engine.runners.onnx import create_runner

    onnx_runner = create_runner(components)
    torch_runner = TorchUNetRunner(components.unet)
    try:
        cfg = components.unet.config
        sample, context = _inputs(hw=(16, 16), channels=cfg.in_channels, cross_dim=cfg.cross_attention_dim)
        scale = torch.ones(2, 77)
        scale[1, 2] = 1.7
        for kw in ({}, {"key_scale": scale}, {"value_scale": scale}):
            expected, expected_maps = torch_runner(
                sample, torch.tensor(401), context, capture_maps=True, cond_rows=1, **kw
            )
            got, got_maps = onnx_runner(sample, torch.tensor(401), context, capture_maps=True, cond_rows=1, **kw)
            assert float((got - expected).abs().max()) <= NOISE_TOL
            assert _max_map_diff(got_maps, expected_maps) <= MAPS_TOL
    finally:
        torch_runner.close()
    params = GenerateParams(
        prompt="a painting of a wolf in front of the full moon", seed=7, steps=6, weights={"moon": 1.5}
    )
    got = Attune(components=components, backend="onnx").generate(params)
    expected = Attune(components=components, backend="torch").generate(params)
    assert got.backend == "onnx" and expected.backend == "torch"
    assert _image_diff(got.image, expected.image) <= IMAGE_TOL



def _numpy_call(runner, rows, scales, seed=11, hw=(6, 8)):
    rng = np.random.default_rng(seed)
    dim = int(runner.manifest["cross_attention_dim"])
    sample = rng.standard_normal((2, runner.in_channels, *hw)).astype(np.float32)
    context = rng.standard_normal((2, 77, dim)).astype(np.float32)
    return runner(sample, np.float32(601), context, capture_maps=rows > 0, cond_rows=rows, **scales)


def test_cfg_lanes_keep_every_bit_of_the_whole_call(tiny_export, monkeypatch):
    """With 2+ intra-op threads a two-row (CFG) call can run as two one-row calls at once; its noise and maps are
    bit-identical to the whole call's, for every maps row count and token scale."""
    from engine.runners.onnx import LANES_ENV

    monkeypatch.setenv(LANES_ENV, "1")
    runner = OnnxUNetRunner(tiny_export, threads=2)
    runner.warm_up(maps=True)
    assert runner.lanes_exact
    ran = []
    submit = runner._lane_pool.submit
    monkeypatch.setattr(runner._lane_pool, "submit", lambda *a: ran.append(1) or submit(*a))
    scale = np.ones((2, 77), dtype=np.float32)
    scale[1, 1:4] = [2.5, 0.2, 3.0]
    for rows in (0, 1, 2):
        for scales in ({}, {"key_scale": scale}, {"value_scale": scale}):
            monkeypatch.setenv(LANES_ENV, "1")
            got, got_maps = _numpy_call(runner, rows, scales)
            monkeypatch.setenv(LANES_ENV, "0")  # read at each call: this one runs whole
            expected, expected_maps = _numpy_call(runner, rows, scales)
            assert np.array_equal(got, expected) and set(got_maps) == set(expected_maps)
            assert all(np.array_equal(got_maps[k], expected_maps[k]) and got_maps[k].shape[0] == rows
                       for k in got_maps)
    assert len(ran) == 9
    # the lanes ran on a one-thread session of their own (the whole calls' session has a 2-thread pool)
    assert set(runner._lane_sessions) == {False, True} and set(runner._sessions) == {False, True}
    assert all(runner._lane_sessions[m] is not runner._sessions[m] for m in (False, True))
    assert [runner._lane_sessions[m].get_session_options().intra_op_num_threads for m in (False, True)] == [1, 1]
    assert runner._sessions[True].get_session_options().intra_op_num_threads == 2
    assert [runner.lane_session(m) for m in (False, True)] == [runner._lane_sessions[m] for m in (False, True)]
    runner.close()


def test_auto_lanes_take_the_faster_way_and_keep_trying_the_other():
    from engine.runners.onnx import LANE_EXPLORE, LANE_EXPLORE_MAX, LaneChooser

    def picks(lanes_s, whole_s, calls):
        chooser, out = LaneChooser(), []
        for _ in range(calls):
            lanes = chooser.lanes_now(key)
            out.append(lanes)
            chooser.record(key, lanes, lanes_s if lanes else whole_s)
        return out

    key = ((2, 4, 16, 16), 77, 1)
    fast = picks(0.02, 0.03, 2 + 7 * LANE_EXPLORE)
    assert fast[:2] == [True, False]  # each way once first, then lanes
    # the slower way is tried after 8 calls, then 16, 32...: each try loses, so the next comes later
    tries = [i for i, lanes in enumerate(fast) if not lanes][1:]
    assert [b - a for a, b in zip(tries, tries[1:])] == [2 * LANE_EXPLORE, 4 * LANE_EXPLORE]
    busy = picks(0.09, 0.04, 2 + 1000)  # a busy host: lanes slower, so calls stay whole but for rarer tries
    tries = [i for i, lanes in enumerate(busy) if lanes]
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert gaps[1:] == [16, 32, 64, 128, 256, 256] and max(gaps) == LANE_EXPLORE_MAX  # 8 lanes calls in 1002


def test_cfg_lanes_need_two_threads_and_can_be_turned_off(tiny_export, monkeypatch):
    from engine.runners.onnx import LANES_ENV

    monkeypatch.setenv(LANES_ENV, "auto")
    single = OnnxUNetRunner(tiny_export, threads=1)
    single.warm_up(maps=True)
    assert single.lanes_exact is None
    monkeypatch.setenv(LANES_ENV, "0")
    off = OnnxUNetRunner(tiny_export, threads=2)
    off.warm_up(maps=True)
    assert off.lanes_exact is None
    monkeypatch.setenv(LANES_ENV, "2")
    with pytest.raises(AttuneError, match="ATTUNE_ORT_CFG_LANES"):
        OnnxUNetRunner(tiny_export, threads=2).warm_up()


def test_an_engine_with_cfg_lanes_makes_the_same_image_and_maps(tiny_model_dir, onnx_cache, monkeypatch):
    from engine.runners.onnx import LANES_ENV

    params = GenerateParams("a painting of a wolf in front of the full moon", seed=3, steps=3, width=64, height=48,
                            weights={"moon": 1.6})
    results = []
    for setting in ("0", "1"):
        monkeypatch.setenv(LANES_ENV, setting)
        engine = Attune(tiny_model_dir, backend="onnx")
        assert bool(engine.runner.lanes_exact) == (setting == "1")
        results.append(engine.generate(params))
        engine.close()
    whole, lanes = results
    assert np.array_equal(np.asarray(whole.image), np.asarray(lanes.image))
    assert whole.maps._sums.keys() == lanes.maps._sums.keys()
    assert all(np.array_equal(whole.maps._sums[k], lanes.maps._sums[k]) for k in whole.maps._sums)
