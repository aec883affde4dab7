"""Attune end to end on the tiny model: determinism, reweighting, maps, backends, validation, the lock."""
import math
import threading

import numpy as np
import pytest

from engine.errors import AttuneError
from engine.pipeline.attune import Attune, GenerateParams, Result

PROMPT = "a painting of a wolf sitting in front of the full moon , night sky"


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    eng = Attune(tiny_model_dir, backend="torch")
    yield eng
    eng.close()


def P(**kw):
    base = dict(prompt=PROMPT, seed=7, steps=3, width=64, height=48)
    base.update(kw)
    return GenerateParams(**base)


def _bytes(result):
    return np.asarray(result.image).tobytes()


def test_generate_result(engine, tiny_model_dir):
    r = engine.generate(P())
    assert isinstance(r, Result)
    assert r.image.size == (64, 48) and r.image.mode == "RGB"
    assert r.backend == "torch" and r.device == "cpu" and r.fallback_reason is None
    assert {"encode", "denoise", "decode", "total"} <= set(r.timings)
    assert r.word_tokens.words[:2] == ["a", "painting"]
    assert r.params.seed == 7 and engine.model_id == str(tiny_model_dir) and len(engine.weights_hash) == 16


def test_deterministic_bit_identical(engine, tiny_model_dir):
    a, b = engine.generate(P()), engine.generate(P())
    assert _bytes(a) == _bytes(b)
    other = Attune(tiny_model_dir, backend="torch")
    assert _bytes(other.generate(P())) == _bytes(a)
    assert _bytes(engine.generate(P(seed=8))) != _bytes(a)


def test_maps_non_square(engine):
    r = engine.generate(P(width=64, height=48))
    assert r.maps.latent_hw == (6, 8) and r.maps.image_hw == (48, 64)
    pixels = sorted({arr.shape[1] for arr in r.maps.layers.values()})
    assert pixels == [12, 48]  # 3x4 and 6x8 layers
    heat = r.maps.word_heatmap(r.word_tokens, "moon")
    assert heat.shape == (48, 64) and heat.min() >= 0 and heat.max() <= 1
    assert r.maps.word_heatmap(r.word_tokens, "full moon").shape == (48, 64)
    totals = r.maps.word_totals(r.word_tokens)
    assert "moon" in totals and all(v >= 0 for v in totals.values())


def test_maps_memory_bounded_in_steps(engine):
    few = engine.generate(P(steps=4)).maps
    more = engine.generate(P(steps=7)).maps
    assert few.nbytes == more.nbytes and more.counts.sum() == 7 and len(more.bucket_steps) == 4


@pytest.mark.parametrize("mode", ["score", "prob", "embed", "a1111"])
def test_weights_at_one_are_bit_identical(engine, mode):
    ref = engine.generate(P())
    same = engine.generate(P(weights={"moon": 1.0, "wolf": 1.0}, weight_mode=mode))
    assert _bytes(same) == _bytes(ref)
    changed = engine.generate(P(weights={"moon": 2.5}, weight_mode=mode))
    assert _bytes(changed) != _bytes(ref)


def test_emphasis_syntax_at_one_is_identical_and_otherwise_not(engine):
    ref = engine.generate(P())
    assert _bytes(engine.generate(P(prompt=PROMPT.replace("moon", "(moon:1.0)")))) == _bytes(ref)
    assert _bytes(engine.generate(P(prompt=PROMPT.replace("moon", "(moon:1.8)")))) != _bytes(ref)
    # Emphasis multiplies with the slider: (moon:0.5) with slider 2 == plain moon. (Sliders below 1 are mapped to
    # each method's internal scale, engine.sampling.layout.slider_scale; at 1 and above the scale is the slider value.)
    assert _bytes(engine.generate(P(prompt=PROMPT.replace("moon", "(moon:0.5)"), weights={"moon": 2.0}))) == _bytes(ref)


def test_four_methods_differ(engine):
    imgs = {m: _bytes(engine.generate(P(weights={"moon": 2.5, "wolf": 0.2}, weight_mode=m))) for m in
            ("score", "prob", "embed", "a1111")}
    assert len(set(imgs.values())) == 4


def test_cond_only_flag_matters(engine):
    # The uncond half gets its own prompt's weights: none here, so both settings give the same image...
    a = engine.generate(P(weights={"moon": 2.5}, weight_mode="prob"))
    b = engine.generate(P(weights={"moon": 2.5}, weight_mode="prob", cond_only=False))
    assert _bytes(a) == _bytes(b)
    # ...and a weighted negative prompt is scaled through the method instead of its embedding.
    c = engine.generate(P(negative_prompt="(sky:1.6) night", weights={"moon": 2.5}, weight_mode="prob"))
    d = engine.generate(P(negative_prompt="(sky:1.6) night", weights={"moon": 2.5}, weight_mode="prob",
                          cond_only=False))
    assert _bytes(c) != _bytes(d)


def test_no_cfg_guidance_one(engine):
    r = engine.generate(P(guidance=1.0, weights={"moon": 2.0}))
    assert r.image.size == (64, 48) and r.maps.counts.sum() == 3


def test_tokenize_and_unknown_words(engine):
    wt = engine.tokenize("a (zebra:1.2) moon", "a1111")
    assert wt.unknown_words == ["zebra"] and "zebra" not in engine.components.known_words


def test_backends(tiny_model_dir, monkeypatch):
    from engine.pipeline import attune as pipeline

    # Until engine/runners/onnx.py exists (simulated here), "onnx" says so and "auto" falls back to torch.
    monkeypatch.setitem(pipeline.RUNNER_MODULES, "onnx", "engine.runners.onnx_missing_for_test")
    auto = Attune(tiny_model_dir, backend="auto")
    assert auto.backend_name == "torch" and "not available yet" in auto.fallback_reason
    with pytest.raises(AttuneError, match="onnx backend is not available yet"):
        Attune(tiny_model_dir, backend="onnx")
    with pytest.raises(AttuneError, match="Unknown backend 'tpu'"):
        Attune(tiny_model_dir, backend="tpu")


def test_auto_falls_back_when_preferred_backend_crashes(tiny_model_dir, monkeypatch):
    import sys
    import types

    from engine.pipeline import attune as pipeline

    broken = types.ModuleType("fake_broken_runner")

    def create_runner(components, device):
        raise RuntimeError("graph is damaged\nsecond line")

    broken.create_runner = create_runner
    monkeypatch.setitem(sys.modules, "fake_broken_runner", broken)
    monkeypatch.setitem(pipeline.RUNNER_MODULES, "onnx", "fake_broken_runner")
    auto = Attune(tiny_model_dir, backend="auto")
    assert auto.backend_name == "torch"
    assert auto.fallback_reason == "onnx: RuntimeError: graph is damaged"
    r = auto.generate(P(steps=1))
    assert r.backend == "torch" and r.fallback_reason == auto.fallback_reason


BAD = [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="   "), "prompt is empty"),
    (dict(prompt=None), "prompt must be text"),
    (dict(prompt="x" * 5000), "prompt is too long"),
    (dict(prompt="( )"), "no words"),
    (dict(negative_prompt=3), "negative prompt must be text"),
    (dict(seed=-1), "seed must be between 0"),
    (dict(seed="abc"), "seed must be a whole number"),
    (dict(seed=1.5), "seed must be a whole number"),
    (dict(steps=0), "steps must be between 1 and 150"),
    (dict(steps=1000), "steps must be between 1 and 150"),
    (dict(guidance=float("nan")), "guidance must be a finite number"),
    (dict(guidance=-1), "guidance must be between 0 and 30"),
    (dict(guidance="high"), "guidance must be a number"),
    (dict(width=60), "width must be a multiple of 8"),
    (dict(height=50), "height must be a multiple of 8"),
    (dict(width=8), "width must be between 16 and 2048"),
    (dict(height=4096), "height must be between 16 and 2048"),
    (dict(width=True), "width must be a whole number"),
    (dict(scheduler="plms"), "Unknown scheduler 'plms'"),
    (dict(syntax="markdown"), "Unknown prompt syntax 'markdown'"),
    (dict(weight_mode="attention"), "Unknown weight mode 'attention'"),
    (dict(weights={"moon": 3.5}), "weight of 'moon' must be between 0 and 3"),
    (dict(weights={"moon": -0.1}), "weight of 'moon' must be between 0 and 3"),
    (dict(weights={"moon": float("nan")}), "weight of 'moon' must be a finite number"),
    (dict(weights={"moon": "lots"}), "weight of 'moon' must be a number"),
    (dict(weights={"zebra": 1.5}), "'zebra' is not in the prompt"),
    (dict(weights={"": 1.5}), "needs a word from the prompt"),
    (dict(weights=[("moon", 2)]), "weights must be a mapping"),
    (dict(cond_only="yes"), "cond_only must be true or false"),
]


@pytest.mark.parametrize("changes, message", BAD, ids=[m for _, m in BAD])
def test_bad_inputs(engine, changes, message):
    with pytest.raises(AttuneError, match=message) as info:
        engine.generate(P(**changes))
    assert "\n" not in str(info.value)  # one line, shown as is


def test_not_params(engine):
    with pytest.raises(AttuneError, match="takes a GenerateParams"):
        engine.generate({"prompt": PROMPT})


def test_lock_serialises_and_counts_queue(engine):
    started, release = threading.Event(), threading.Event()
    order = []

    def slow_progress(i, n):
        if i == 1 and not started.is_set():
            started.set()
            release.wait(30)

    def first():
        engine.generate(P(steps=2), progress=slow_progress)
        order.append("first")

    def second():
        engine.generate(P(steps=2))
        order.append("second")

    t1 = threading.Thread(target=first)
    t1.start()
    assert started.wait(30)
    assert engine.busy and engine.queue_depth == 0
    t2 = threading.Thread(target=second)
    t2.start()
    for _ in range(200):
        if engine.queue_depth == 1:
            break
        threading.Event().wait(0.01)
    assert engine.queue_depth == 1
    release.set()
    t1.join(60)
    t2.join(60)
    assert order == ["first", "second"] and engine.queue_depth == 0 and not engine.busy


def test_error_inside_run_releases_lock(engine):
    with pytest.raises(AttuneError):
        engine.generate(P(weights={"zebra": 2.0}))
    assert not engine.busy and engine.queue_depth == 0
    assert math.isfinite(engine.generate(P(steps=1)).timings["total"])
