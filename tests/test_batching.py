"""Batching across sessions: concurrent requests share UNet calls, and each result is bit-identical to a solo run."""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from engine.runners.batching import (LANES_ENV, ROWS_EXACT_ENV, Batcher, exact_rows, exact_rows_of, rows_exact_forced_off,
                                     split_into_lanes)
from engine.errors import AttuneError
from engine.study.log import StudyLog
from engine.pipeline.attune import Attune
from engine.pipeline.params import GenerateParams, InpaintParams
from engine.study.studio import Studio

PROMPT = "a house by the lake under the full moon"


def _requests():
    """Mixed weights, methods, schedulers, step counts, guidance; one inpaint."""
    base = dict(prompt=PROMPT, width=64, height=64)
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:48, 8:40] = True
    parent = GenerateParams(**base, seed=7, steps=3)
    return [
        ("generate", GenerateParams(**base, seed=1, steps=4, weights={"house": 2.0}, weight_mode="score")),
        ("generate", GenerateParams(**base, seed=2, steps=4, weights={"moon": 0.4}, weight_mode="prob",
                                    scheduler="euler")),
        ("generate", GenerateParams(**base, seed=3, steps=5, weights={"lake": 1.7}, weight_mode="embed",
                                    scheduler="dpm++")),
        ("generate", GenerateParams(**base, seed=4, steps=4, guidance=1.0)),  # no CFG: one row
        ("generate", GenerateParams(**base, seed=5, steps=4, weights={"house": 1.5}, weight_mode="score",
                                    cond_only=False)),
        ("inpaint", (parent, mask)),
    ]


def _run(engine, kind, params, parent_image=None):
    if kind == "generate":
        return engine.generate(params)
    base, mask = params
    return engine.inpaint(InpaintParams(base=base.replace(prompt="a tree", seed=11), image=parent_image, mask=mask,
                                        auto_crop=False))


def _same(a, b):
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.maps.layers.keys() == b.maps.layers.keys()
    for name in a.maps.layers:
        assert np.array_equal(a.maps.layers[name], b.maps.layers[name]), name
    assert list(a.maps.counts) == list(b.maps.counts)


@functools.cache
def _torch_stacks() -> bool:
    """Whether the engine stacks PyTorch calls on this machine: rows are exact here and not forced off."""
    return exact_rows("cpu") and not rows_exact_forced_off()


def _check_stacking(batcher, stacks: bool, requests: int) -> None:
    """Stacked (at least `requests` requests in one UNet call) where `stacks`, else every call on its own."""
    stats = batcher.stats
    assert batcher.stacking == stacks, stats
    if stacks:
        assert stats["stacked_calls"] > 0 and stats["max_requests"] >= requests, stats
    else:
        assert stats["stacked_calls"] == 0 and stats["max_requests"] == 1, stats


def three_requests_at_once(batcher, x, e) -> list[str]:
    """Three requests whose one UNet call each is in flight before any runs: "ok" or the error text of each."""
    outcomes = []
    barrier = threading.Barrier(3)

    def one():
        try:
            batcher.run(lambda: (barrier.wait(), batcher.runner(x, 10, e))[1])
            outcomes.append("ok")
        except RuntimeError as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    return outcomes


def test_mkl_runs_in_strict_reproducibility_mode():
    """engine/__init__ sets MKL_CBWR before torch loads MKL: GEMM rows then do not depend on the thread split."""
    import torch

    if not torch.backends.mkl.is_available():
        pytest.skip("this torch has no MKL")
    code = ("import engine, torch; torch.nn.functional.linear(torch.ones(8, 16), torch.ones(4, 16))")
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"} | {"MKL_VERBOSE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "SGEMM" in out.stdout and "CNR:AUTO,STRICT" in out.stdout, out.stdout[-2000:]


def test_the_row_probe_tells_whether_a_unet_call_keeps_its_bits_when_stacked():
    """exact_rows() is what the batcher trusts: it must agree with a UNet run on this machine, a 2-row call alone
    against the same rows inside a 6-row stack (the timestep embedding's Linear is where AMD's MKL differs)."""
    import torch

    from tests.tiny_model import tiny_unet

    torch.manual_seed(0)
    unet = tiny_unet().eval()
    gen = torch.Generator().manual_seed(1)
    sample, embeddings = torch.randn(6, 4, 8, 8, generator=gen), torch.randn(6, 77, 32, generator=gen)
    timesteps = torch.tensor([901.0, 901.0, 501.0, 501.0, 21.0, 21.0])
    with torch.no_grad():
        alone = unet(sample[2:4], timesteps[2:4], embeddings[2:4]).sample
        stacked = unet(sample, timesteps, embeddings).sample[2:4]
    assert torch.equal(alone, stacked) == exact_rows("cpu")


def test_rows_exact_0_forces_the_one_by_one_fallback_on_every_runner(monkeypatch):
    class RowExactExport:  # an ONNX export whose manifest says its rows are exact
        name, device, in_channels, row_exact = "onnx", "cpu", 4, True

        def __call__(self, sample, *args, **kwargs):
            return sample, {}

    for value, stacking in (("", True), ("auto", True), ("0", False)):
        monkeypatch.setenv(ROWS_EXACT_ENV, value)
        assert exact_rows_of(RowExactExport()) == stacking
        batcher = Batcher(RowExactExport(), window_ms=1, require_exact=True)
        assert batcher.stacking == stacking and batcher.exact == stacking
        batcher.close()
    batcher = Batcher(RowExactExport(), window_ms=1, require_exact=False)  # forced off, still stacked if asked
    assert batcher.stacking and not batcher.exact
    batcher.close()
    monkeypatch.setenv(ROWS_EXACT_ENV, "no")
    with pytest.raises(AttuneError, match=ROWS_EXACT_ENV):
        Batcher(RowExactExport(), window_ms=1)


def test_batched_results_are_bit_identical_to_solo_runs():
    solo_engine = Attune(backend="torch")
    requests = _requests()
    parent_image = solo_engine.generate(requests[-1][1][0]).image
    solo = [_run(solo_engine, kind, params, parent_image) for kind, params in requests]
    solo_engine.close()

    engine = Attune(backend="torch", batch_window_ms=200)  # a wide window: every request joins the first call
    assert engine.batcher is not None and engine.batcher.stacking == _torch_stacks(), engine.batching_reason
    batched = _concurrently(engine, [lambda e, kind=kind, params=params: _run(e, kind, params, parent_image)
                                     for kind, params in requests])
    engine.close()
    _check_stacking(engine.batcher, _torch_stacks(), requests=4)
    if _torch_stacks():
        stats = engine.batcher.stats
        assert stats["unet_calls"] < sum(p.steps if k == "generate" else p[0].steps for k, p in requests)
    for a, b in zip(batched, solo):
        _same(a, b)


def test_a_failing_unet_call_fails_every_request_in_it_and_the_batcher_goes_on():
    class Broken:
        name, device, in_channels = "torch", "cpu", 4
        calls = 0

        def __call__(self, sample, *args, **kwargs):
            Broken.calls += 1
            if Broken.calls == 1:
                raise RuntimeError("out of memory")
            return sample[:, :4] * 0, {}

    import torch

    batcher = Batcher(Broken(), window_ms=1000, require_exact=False)  # stacked on every machine
    x = torch.zeros(2, 4, 8, 8)
    e = torch.zeros(2, 77, 8)
    outcomes = three_requests_at_once(batcher, x, e)
    assert outcomes.count("out of memory") == 3  # the first (stacked) call fails for all requests in it
    batcher.run(lambda: batcher.runner(x, 10, e))  # the worker is still there
    batcher.close()
    with pytest.raises(AttuneError, match="closed"):
        batcher.run(lambda: None)


def test_closing_the_tab_mid_generation_leaves_no_half_written_version(tmp_path):
    """A Streamlit rerun/stop raises inside the progress callback: that request ends, nothing of it is written,
    and the request batched with it still completes and is logged."""
    engine = Attune(backend="torch", batch_window_ms=200)
    log = StudyLog(tmp_path / "attune.db")
    leaving = Studio(engine, log, tmp_path / "a", participant_id="leaves")
    staying = Studio(engine, log, tmp_path / "b", participant_id="stays")

    class TabClosed(Exception):
        pass

    def close_tab(step, total):
        if step == 2:
            raise TabClosed

    barrier = threading.Barrier(2)
    outcome = {}

    def run(name, studio, progress):
        barrier.wait()
        try:
            outcome[name] = studio.generate(GenerateParams(prompt=PROMPT, width=64, height=64, steps=5),
                                            progress=progress)
        except TabClosed:
            outcome[name] = "closed"

    threads = [threading.Thread(target=run, args=("leaves", leaving, close_tab)),
               threading.Thread(target=run, args=("stays", staying, None))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    engine.close()
    assert outcome["leaves"] == "closed"
    assert outcome["stays"].number == 1
    assert list((tmp_path / "a").iterdir()) == []
    rows = log.versions()
    assert [v.participant_id for v in rows] == ["stays"]
    assert all(__import__("pathlib").Path(v.image_path).is_file() for v in rows)
    _check_stacking(engine.batcher, _torch_stacks(), requests=2)


def test_where_rows_are_not_exact_calls_run_one_by_one_unless_asked():
    class Recorder:
        name, device, in_channels = "torch", "cuda:0", 4  # not probed: treated as not row-exact

        def __init__(self):
            self.batches = []

        def __call__(self, sample, timestep, embeddings, **kwargs):
            self.batches.append(int(sample.shape[0]))
            return sample * 2, {}

    x = np.arange(2 * 4 * 8 * 8, dtype=np.float32).reshape(2, 4, 8, 8)  # the sampler's arrays are numpy
    e = np.zeros((2, 77, 8), np.float32)
    for require_exact, expected in ((None, [2, 2, 2]), (False, [6])):
        runner = Recorder()
        batcher = Batcher(runner, window_ms=300, require_exact=require_exact)
        results = []
        barrier = threading.Barrier(3)

        def one():  # all three requests are in flight before any UNet call
            results.append(batcher.run(lambda: (barrier.wait(), batcher.runner(x, 10, e))[1]))

        threads = [threading.Thread(target=one) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        batcher.close()
        assert runner.batches == expected
        assert all(np.array_equal(noise, x * 2) for noise, _ in results)  # each request got its own rows back


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_model_with_an_inpainting_unet_batches_its_calls_too(tmp_path_factory, onnx_cache, backend):
    """The 9-channel UNet has its own runner: concurrent inpaints go through a batcher of their own (no engine
    lock when batching), each bit-identical to a solo run, while generations keep the base UNet's batcher.
    On ONNX Runtime that runner is the export's unet_inpaint graph."""
    from tests.onnx_support import exported
    from tests.tiny_model import add_inpaint_unet, build_tiny_model

    folder = add_inpaint_unet(build_tiny_model(tmp_path_factory.mktemp("tiny-with-inpaint-unet")))
    if backend == "onnx":
        exported(folder)
    mask = np.zeros((48, 64), dtype=bool)
    mask[8:32, 16:40] = True
    base = GenerateParams("misty forest", seed=5, steps=3, width=64, height=48)
    solo_engine = Attune(folder, backend=backend)
    image = solo_engine.generate(base).image
    requests = [("inpaint", dict(seed=s)) for s in (1, 2, 3)] + [("generate", dict(seed=4))]

    def run(engine, kind, change):
        if kind == "generate":
            return engine.generate(base.replace(**change))
        return engine.inpaint(InpaintParams(base=base.replace(**change), image=image, mask=mask, auto_crop=False))

    solo = [run(solo_engine, kind, change) for kind, change in requests]
    solo_engine.close()
    engine = Attune(folder, backend=backend, batch_window_ms=200)
    batched = _concurrently(engine, [lambda e, kind=kind, change=change: run(e, kind, change)
                                     for kind, change in requests])
    engine.close()
    stacks = _torch_stacks() if backend == "torch" else not rows_exact_forced_off()  # a fresh export is row-exact
    _check_stacking(engine._inpaint_batcher, stacks, requests=2)
    assert engine._inpaint_batcher.runner.name == backend and {r.backend for r in batched} == {backend}
    assert engine.batcher.stats["rows"] == 2 * base.steps  # only the generation used the base UNet
    for a, b in zip(batched, solo):
        assert a.info.get("unet") == b.info.get("unet")
        _same(a, b)


def _concurrently(engine, jobs):
    """Run the jobs (callables taking the engine) at once, one thread each; their results in order."""
    barrier = threading.Barrier(len(jobs))
    results: list = [None] * len(jobs)
    errors: list = []

    def worker(i, job):
        try:
            barrier.wait()
            results[i] = job(engine)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return results


@pytest.mark.parametrize("lanes", ["1", "2"])
def test_onnx_runtime_calls_are_stacked_and_bit_identical_to_solo_runs(tiny_model_dir, tiny_export, monkeypatch,
                                                                        lanes):
    """A fresh export takes the maps' head mean as a MatMul (row-exact in ONNX Runtime's MLAS, on AMD and Intel),
    so its calls stack too; with $ATTUNE_ROWS_EXACT=0 they run one by one. With 2 lanes a group's calls run as two
    calls at once on sessions with half the threads (the side graphs too), still bit-identical to a solo run."""
    from engine.model.ort_sessions import default_threads

    monkeypatch.setenv(LANES_ENV, lanes)
    base = GenerateParams("a painting of a wolf in front of the full moon", seed=7, steps=3, width=64, height=48)
    mask = np.zeros((48, 64), dtype=bool)
    mask[8:32, 16:40] = True
    solo_engine = Attune(tiny_model_dir, backend="onnx")
    assert solo_engine.runner.row_exact
    image = solo_engine.generate(base).image
    jobs = [
        lambda e: e.generate(base.replace(seed=1, weights={"moon": 1.8})),
        lambda e: e.generate(base.replace(seed=2, weights={"wolf": 0.5}, weight_mode="prob", scheduler="euler")),
        lambda e: e.generate(base.replace(seed=3, steps=4)),
        lambda e: e.inpaint(InpaintParams(base=base.replace(seed=4), image=image, mask=mask, auto_crop=False)),
    ]
    solo = [job(solo_engine) for job in jobs]
    solo_engine.close()
    engine = Attune(tiny_model_dir, backend="onnx", batch_window_ms=200)
    assert engine.batcher is not None
    stacks = not rows_exact_forced_off()
    assert engine.batcher.lanes == (int(lanes) if stacks else 1)
    if engine.batcher.lanes > 1:
        threads = max(1, default_threads() // engine.batcher.lanes)
        assert engine.runner.options["threads"] == threads and engine.components._threads == threads
    batched = _concurrently(engine, jobs)
    engine.close()
    _check_stacking(engine.batcher, stacks, requests=3)
    stats = engine.batcher.stats
    assert (stats["unet_calls"] > stats["groups"]) == (engine.batcher.lanes > 1), stats  # groups split in lanes
    for a, b in zip(batched, solo):
        assert a.backend == "onnx" and a.fallback_reason is None
        _same(a, b)


def test_an_onnx_export_without_row_exact_maps_runs_its_calls_one_by_one():
    class OldExport:  # exported before maps_row_exact: ReduceMean maps
        name, device, in_channels, row_exact = "onnx", "cpu", 4, False

        def __call__(self, sample, *args, **kwargs):
            return sample, {}

    batcher = Batcher(OldExport(), window_ms=1)
    assert not batcher.stacking
    batcher.close()


def test_a_group_splits_into_lanes_of_whole_calls_with_about_equal_rows():
    class Call:
        def __init__(self, rows):
            self.rows = rows

    calls = [Call(2) for _ in range(6)]
    assert [len(part) for part in split_into_lanes(calls, 2)] == [3, 3]
    assert [len(part) for part in split_into_lanes(calls, 3)] == [2, 2, 2]
    assert [c for part in split_into_lanes(calls, 2) for c in part] == calls  # order kept
    uneven = [Call(4), Call(2), Call(2)]
    assert [[c.rows for c in part] for part in split_into_lanes(uneven, 2)] == [[4], [2, 2]]
    assert split_into_lanes(calls[:1], 2) == [calls[:1]]
    assert split_into_lanes(calls, 1) == [calls]


def test_onnx_unet_rows_keep_their_bits_with_fewer_intra_op_threads(tiny_export):
    """Lanes run the UNet on sessions with fewer threads than a solo engine's: MLAS splits outputs, not sums, between
    threads, so every row, noise and maps, has the same bits."""
    from engine.runners.onnx import OnnxUNetRunner

    wide, narrow = OnnxUNetRunner(tiny_export, threads=4), OnnxUNetRunner(tiny_export, threads=4)
    narrow.warm_up(maps=True)
    narrow.set_threads(1)
    assert narrow.options["threads"] == 1 and list(narrow._sessions) == [True]  # the open session made again
    rng = np.random.default_rng(0)
    rows, seq, dim = 6, 77, int(wide.manifest["cross_attention_dim"])
    sample = rng.standard_normal((rows, wide.in_channels, 6, 8)).astype(np.float32)
    timestep = np.linspace(900, 100, rows).astype(np.float32)
    embeddings = rng.standard_normal((rows, seq, dim)).astype(np.float32)
    key_scale = (1 + rng.random((rows, seq))).astype(np.float32)
    for maps in (True, False):
        a_noise, a_maps = wide(sample, timestep, embeddings, key_scale=key_scale, capture_maps=maps, cond_rows=3)
        b_noise, b_maps = narrow(sample, timestep, embeddings, key_scale=key_scale, capture_maps=maps, cond_rows=3)
        assert np.array_equal(a_noise, b_noise)
        assert a_maps.keys() == b_maps.keys() and all(np.array_equal(a_maps[k], b_maps[k]) for k in a_maps)


def test_a_failing_call_in_one_lane_fails_every_request_of_its_group_and_the_batcher_goes_on():
    class Broken:  # a row-exact ONNX export whose second call fails
        name, device, in_channels, row_exact = "onnx", "cpu", 4, True
        calls = 0
        lock = threading.Lock()

        def __call__(self, sample, *args, **kwargs):
            with Broken.lock:
                Broken.calls += 1
                failing = Broken.calls == 2
            if failing:
                raise RuntimeError("out of memory")
            return sample * 0, {}

    batcher = Batcher(Broken(), window_ms=1000, lanes=2)
    if not batcher.stacking:  # $ATTUNE_ROWS_EXACT=0: no groups, no lanes
        assert batcher.lanes == 1
        batcher.close()
        return
    x = np.zeros((2, 4, 8, 8), dtype=np.float32)
    e = np.zeros((2, 77, 8), dtype=np.float32)
    outcomes = three_requests_at_once(batcher, x, e)  # one group, two lanes
    assert outcomes.count("out of memory") == 3, outcomes
    assert batcher.stats["groups"] == 1 and batcher.stats["unet_calls"] == 2
    batcher.run(lambda: batcher.runner(x, 10, e))  # the worker and its lanes are still there
    batcher.close()
