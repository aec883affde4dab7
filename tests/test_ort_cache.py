"""The cache of ORT's optimised graphs (engine/model/ort_cache.py): a later process opens the saved graph, and its outputs
are bit-identical to those of the shipped graph optimised in the session."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from engine.model.loading import default_model_path
from engine.model.onnx_files import shipped_dir
from engine.runners.onnx import OnnxUNetRunner
from engine.model.ort_sessions import open_session

pytestmark = pytest.mark.light


@pytest.fixture(scope="module")
def export():
    path = default_model_path()
    if not (path / "onnx" / "unet").is_dir():
        pytest.skip(f"the built-in model's graphs are missing ({path})")
    return shipped_dir(path)


@pytest.fixture
def opened(monkeypatch, tmp_path):
    """ATTUNE_CACHE in tmp_path; the list of graph paths ORT is asked to open."""
    monkeypatch.setenv("ATTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ATTUNE_ORT_CACHE", raising=False)
    paths: list[str] = []
    real = ort.InferenceSession

    def recording(path, *args, **kwargs):
        paths.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    return paths


def unet_outputs(export) -> list[np.ndarray]:
    runner = OnnxUNetRunner(export, threads=1)
    rng = np.random.default_rng(0)
    dim = int(runner.manifest["cross_attention_dim"])
    sample = rng.standard_normal((2, runner.in_channels, 16, 12)).astype(np.float32)
    text = rng.standard_normal((2, 9, dim)).astype(np.float32)
    scale = np.ones((2, 9), dtype=np.float32)
    scale[1, 3] = 1.5
    noise, maps = runner(sample, np.float32(500), text, key_scale=scale, capture_maps=True, cond_rows=1)
    return [noise, *maps.values()]


def saved_graphs(tmp_path) -> list:
    folder = tmp_path / "cache" / "ort-optimized"
    return sorted(folder.glob("*/model.ort")) if folder.is_dir() else []


def test_saved_graph_gives_the_same_bits(export, opened, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTUNE_ORT_CACHE", "0")
    plain = unet_outputs(export)
    assert saved_graphs(tmp_path) == [] and opened == [str(export / "unet" / "model_maps.onnx")]

    monkeypatch.delenv("ATTUNE_ORT_CACHE")
    first = unet_outputs(export)  # optimises the shipped graph and saves the result
    [saved] = saved_graphs(tmp_path)
    second = unet_outputs(export)  # opens the saved graph
    assert opened[-2:] == [str(export / "unet" / "model_maps.onnx"), str(saved)]
    for a, b, c in zip(plain, first, second, strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_side_graph_and_damaged_saved_graph(export, opened, tmp_path):
    decoder = export / "vae_decoder" / "model.onnx"
    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 6)).astype(np.float32)
    expected = open_session(decoder, threads=1).run(None, {"latent_sample": latents})[0]
    [saved] = saved_graphs(tmp_path)
    saved.write_bytes(b"\0" * saved.stat().st_size)  # damaged: ORT cannot load it
    again = open_session(decoder, threads=1).run(None, {"latent_sample": latents})[0]
    assert np.array_equal(again, expected)
    assert opened == [str(decoder), str(decoder)]  # its checksum failed: never tried, made again
    assert saved_graphs(tmp_path) == [saved] and saved.read_bytes()[:4] != b"\0\0\0\0"


def test_an_altered_saved_graph_is_made_again_never_used(export, opened, tmp_path):
    """Bytes changed in the middle of the saved graph: ORT still loads it and runs it to wrong outputs, so only its
    checksum can tell. Each damage (altered, truncated, no checksum recorded) is rebuilt and replaces the bad copy."""
    import json

    from engine.model import ort_cache
    from engine.runners.onnx import session_options

    decoder = export / "vae_decoder" / "model.onnx"
    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 6)).astype(np.float32)
    fresh = open_session(decoder, threads=1).run(None, {"latent_sample": latents})[0]
    [saved] = saved_graphs(tmp_path)
    good = saved.read_bytes()
    altered = bytearray(good)
    middle = len(altered) // 2
    altered[middle:middle + 64] = bytes(b ^ 0x55 for b in altered[middle:middle + 64])
    damaged = ort.InferenceSession(bytes(altered), session_options(threads=1), providers=["CPUExecutionProvider"])
    assert not np.array_equal(damaged.run(None, {"latent_sample": latents})[0], fresh)  # silent wrong outputs

    done = saved.parent / "attune_ort_cache.json"
    record = json.loads(done.read_text())
    for damage in ("altered", "truncated", "no checksum"):
        if damage == "altered":
            saved.write_bytes(bytes(altered))
        elif damage == "truncated":
            saved.write_bytes(good[:middle])
        else:
            done.write_text(json.dumps({k: v for k, v in record.items() if k != "sha256"}))
        opened.clear()
        again = open_session(decoder, threads=1).run(None, {"latent_sample": latents})[0]
        assert opened == [str(decoder)], damage  # the bad copy was never opened: the graph was optimised again
        assert np.array_equal(again, fresh), damage
        [rebuilt] = saved_graphs(tmp_path)
        # The rebuild replaced the bad copy, with its own checksum (ORT's saved bytes differ from one save to the next).
        assert json.loads(done.read_text())["sha256"] == ort_cache.file_sha256(rebuilt)
        reopened = open_session(decoder, threads=1).run(None, {"latent_sample": latents})[0]
        assert opened == [str(decoder), str(rebuilt)] and np.array_equal(reopened, fresh), damage


def test_verifying_the_saved_unet_costs_less_than_the_cache_saves(export, opened, tmp_path, monkeypatch):
    """The checksum at every open of the saved UNet graph (the largest, ~25 MB) costs less than opening the shipped
    graph without the cache, which is what the cache is there to save (~20-50 ms against ~0.1-0.2 s here)."""
    import time

    from engine.model import ort_cache

    unet_outputs(export)  # optimises and saves
    largest = max(saved_graphs(tmp_path), key=lambda path: path.stat().st_size)
    verify, uncached = [], []
    monkeypatch.setenv("ATTUNE_ORT_CACHE", "0")
    for _ in range(3):  # the fastest of three: the machine may be busy with other work
        start = time.perf_counter()
        assert ort_cache._verified(largest.parent)
        verify.append(time.perf_counter() - start)
        start = time.perf_counter()
        unet_outputs(export)
        uncached.append(time.perf_counter() - start)
    assert min(verify) < min(uncached), (largest.stat().st_size, min(verify), min(uncached))


def test_unwritable_cache_opens_as_before(export, opened, tmp_path, monkeypatch):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv("ATTUNE_CACHE", str(not_a_folder))
    encoder = export / "text_encoder" / "model.onnx"
    session = open_session(encoder, threads=1)
    assert opened == [str(encoder)]
    ids = np.array([[0, 5, 1]], dtype=np.int64)
    assert session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0].shape[:2] == (1, 3)


def execution_order(open_graph) -> list[str]:
    """Node names in the order one run of the built-in UNet's maps graph executes them (ORT's profiler)."""
    import json
    from pathlib import Path

    from engine.model.ort_sessions import session_options

    options = session_options(threads=1)
    options.enable_profiling = True
    session = open_graph(options)
    rng = np.random.default_rng(0)
    names = {i.name for i in session.get_inputs()}
    feed = {"sample": rng.standard_normal((2, 4, 16, 16)).astype(np.float32), "timestep": np.full(2, 500, np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 77, 128)).astype(np.float32),
            "map_rows": np.zeros(1, np.float32)}
    session.run(None, {k: v for k, v in feed.items() if k in names})
    profile = Path(session.end_profiling())
    try:
        events = json.loads(profile.read_text())
    finally:
        profile.unlink()
    return [e["name"][:-len("_kernel_time")] for e in events
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def test_maps_run_next_to_their_layer_in_the_source_and_the_saved_graph(export, opened, tmp_path):
    """The first layer's maps are computed before the last layers' attention, not after the whole UNet (which kept
    every layer's probabilities alive to the end: 10-20% slower per call), both on the shipped graph and on its saved
    optimised copy."""
    from engine.model import ort_cache
    from engine.model.ort_sessions import add_shared_weights, session_options, shared_weight_files

    graph = export / "unet" / "model_maps.onnx"
    kept = []

    def with_weights(options):
        kept.extend(add_shared_weights(options, shared_weight_files(graph)))
        return options

    def source(options):
        return ort.InferenceSession(str(graph), with_weights(options), providers=["CPUExecutionProvider"])

    def saved(options):
        def make_options(level, source):
            so = session_options(threads=1, optimization=level)
            return with_weights(so) if source else so

        ort_cache.open_session(graph, "all", make_options)  # saves the optimised copy
        [path] = saved_graphs(tmp_path)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    for open_graph in (source, saved):
        order = execution_order(open_graph)
        first_maps = [i for i, name in enumerate(order) if name.startswith("/unet/down_blocks.0/") and "/attn2/" in name]
        last_softmax = [i for i, name in enumerate(order)
                        if name.startswith("/unet/up_blocks.2/") and name.endswith("/Softmax")]
        assert first_maps and last_softmax
        assert max(first_maps) < min(last_softmax), open_graph.__name__


def test_a_graph_over_the_ort_format_limit_is_saved_as_onnx_with_external_data(export, opened, tmp_path, monkeypatch):
    """An .ort file cannot pass 2 GiB (a full-size SD UNet is ~3.4 GB): such a graph is saved in ONNX format with its
    initializers outside, reopened from there bit for bit, and its external data is checksummed too."""
    import json

    from engine.model import ort_cache

    monkeypatch.setattr(ort_cache, "ORT_FORMAT_MAX_BYTES", 1)  # the tiny graph stands for one over 2 GiB
    decoder = export / "vae_decoder" / "model.onnx"
    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 6)).astype(np.float32)
    fresh = open_session(decoder, threads=1).run(None, {"latent_sample": latents})[0]
    [folder] = (tmp_path / "cache" / "ort-optimized").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["attune_ort_cache.json", "model.onnx", "model.onnx.data"]
    assert (folder / "model.onnx.data").stat().st_size > (folder / "model.onnx").stat().st_size  # weights outside
    reopened = open_session(decoder, threads=1).run(None, {"latent_sample": latents})[0]
    assert opened == [str(decoder), str(folder / "model.onnx")] and np.array_equal(reopened, fresh)

    data = folder / "model.onnx.data"
    altered = bytearray(data.read_bytes())
    altered[len(altered) // 2] ^= 0x55
    data.write_bytes(bytes(altered))  # ORT would load it and run it to wrong outputs
    opened.clear()
    again = open_session(decoder, threads=1).run(None, {"latent_sample": latents})[0]
    assert opened == [str(decoder)] and np.array_equal(again, fresh)  # never used: made again
    record = json.loads((folder / "attune_ort_cache.json").read_text())
    assert record["data_sha256"] == ort_cache.file_sha256(data) and record["format"] == "ONNX"


def test_a_failed_save_is_logged_once_and_not_retried(export, opened, tmp_path, monkeypatch, caplog):
    """When ORT cannot save the optimised graph in any format, the graph opens the usual way; the failure is logged
    once and remembered, so later starts do not optimise and fail to save it again."""
    import logging

    decoder = export / "vae_decoder" / "model.onnx"
    latents = np.random.default_rng(1).standard_normal((1, 4, 8, 6)).astype(np.float32)
    recording = ort.InferenceSession
    saves = []

    def failing_save(path, options=None, *args, **kwargs):
        if options is not None and options.optimized_model_filepath:
            saves.append(options.optimized_model_filepath)
            raise RuntimeError("flatbuffers: the serialised graph is over 2 GiB")
        return recording(path, options, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", failing_save)
    caplog.set_level(logging.WARNING, logger="engine.model.ort_cache")
    first = open_session(decoder, threads=1).run(None, {"latent_sample": latents})[0]
    assert len(saves) == 2  # ORT format, then ONNX with external data
    assert len([r for r in caplog.records if "could not save" in r.getMessage()]) == 1
    assert len(list((tmp_path / "cache" / "ort-optimized").glob("*.failed"))) == 1
    for _ in range(2):  # later starts
        again = open_session(decoder, threads=1).run(None, {"latent_sample": latents})[0]
        assert np.array_equal(again, first)
    assert len(saves) == 2 and len([r for r in caplog.records if "could not save" in r.getMessage()]) == 1
    assert opened == [str(decoder)] * 3  # each start opened the graph itself, once
