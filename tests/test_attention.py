"""The cross-attention processor: stock equivalence, the DESIGN §3 identities, conditional-only scaling, capture."""
import warnings

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from engine.attention.processor import AttentionControl, AttuneAttnProcessor, attention_control, cross_attention_names, install
from engine.model.loading import load_components
from engine.runners.torch import TorchUNetRunner


@pytest.fixture(scope="module")
def unet(tiny_model_dir):
    return load_components(tiny_model_dir).unet


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 4, 6, 8, generator=g), torch.tensor(500), torch.randn(2, 77, 32, generator=g))


def _run(unet, inputs):
    x, t, e = inputs
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=e).sample


def test_install_only_cross_attention_and_restore(unet):
    before = dict(unet.attn_processors)
    control = AttentionControl()
    restore = install(unet, control)
    procs = unet.attn_processors
    names = cross_attention_names(unet)
    assert names and all(n.endswith("attn2.processor") for n in names)
    for name, proc in procs.items():
        if name.endswith("attn2.processor"):
            assert isinstance(proc, AttuneAttnProcessor) and proc.name == name
        else:
            assert proc is before[name] and isinstance(proc, AttnProcessor2_0)
    restore()
    assert all(unet.attn_processors[n] is p for n, p in before.items())


def test_context_manager_restores_on_error(unet):
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError):
        with attention_control(unet):
            raise RuntimeError("boom")
    assert all(unet.attn_processors[n] is p for n, p in before.items())


def test_bit_identical_to_stock_processor(unet, inputs):
    ref = _run(unet, inputs)
    with attention_control(unet) as control:
        assert torch.equal(_run(unet, inputs), ref)  # no scales, capture off
        control.reset(capture=True, cond_rows=1)
        assert torch.equal(_run(unet, inputs), ref)  # capture does not touch the fused path
        control.reset(key_scale=torch.ones(2, 77), value_scale=torch.ones(2, 77))
        assert torch.equal(_run(unet, inputs), ref)  # scales of exactly 1 change nothing


@pytest.mark.parametrize("field", ["key_scale", "value_scale"])
def test_conditional_only_scaling(unet, inputs, field):
    ref = _run(unet, inputs)
    scale = torch.ones(2, 77)
    scale[1, 2] = 2.5
    with attention_control(unet) as control:
        control.reset(**{field: scale})
        out = _run(unet, inputs)
        assert torch.equal(out[0], ref[0])  # uncond row untouched
        assert not torch.equal(out[1], ref[1])
        both = scale.clone()
        both[0] = both[1]
        control.reset(**{field: both})
        out2 = _run(unet, inputs)
        assert not torch.equal(out2[0], ref[0])
        assert torch.equal(out2[1], out[1])


def _reference_attention(attn, hs, ehs, w, mode):
    q, k, v = attn.to_q(hs), attn.to_k(ehs), attn.to_v(ehs)
    B, heads = hs.shape[0], attn.heads
    split = lambda t: t.view(B, -1, heads, t.shape[-1] // heads).transpose(1, 2)
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) * attn.scale
    if mode == "score":
        scores = scores * w[:, None, None, :]
    p = scores.softmax(-1)
    if mode == "prob":
        p = p * w[:, None, None, :]  # not renormalised
    out = (p @ v).transpose(1, 2).reshape(B, -1, heads * v.shape[-1])
    return attn.to_out[1](attn.to_out[0](out)), p.mean(1)


@pytest.mark.parametrize("mode", ["score", "prob"])
def test_identities_match_scaled_scores_and_probs(mode):
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8)
    hs, ehs = torch.randn(2, 10, 16), torch.randn(2, 5, 8)
    w = torch.tensor([[1, 1, 1, 1, 1], [1, 0.3, 2.0, 1, 0.0]], dtype=torch.float32)
    control = AttentionControl()
    attn.set_processor(AttuneAttnProcessor("layer", control))
    control.reset(capture=True, cond_rows=1, **({"key_scale": w} if mode == "score" else {"value_scale": w}))
    with torch.no_grad():
        out = attn(hs, encoder_hidden_states=ehs)
        ref_out, ref_maps = _reference_attention(attn, hs, ehs, w, mode)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(control.maps["layer"], ref_maps[1:], rtol=1e-5, atol=1e-6)


def test_capture_shapes_and_softmax_rows(unet, inputs):
    runner = TorchUNetRunner(unet)
    try:
        x, t, e = inputs
        _, maps = runner(x, t, e, capture_maps=True, cond_rows=1)
        assert set(maps) == set(runner.layer_names)
        for m in maps.values():
            assert m.shape[0] == 1 and m.shape[-1] == 77 and m.shape[1] in (48, 12)  # 6x8 and 3x4 layers
            torch.testing.assert_close(m.sum(-1), torch.ones_like(m.sum(-1)))
        _, none = runner(x, t, e)
        assert none == {}
    finally:
        runner.close()
    assert not any(isinstance(p, AttuneAttnProcessor) for p in unet.attn_processors.values())


def test_processor_is_traceable(unet, inputs):
    """The ONNX export traces the UNet with scales as inputs: scale values must not be baked in."""
    x, t, e = inputs

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unet, self.control = unet, AttentionControl()

        def forward(self, sample, timestep, ehs, key_scale, value_scale):
            self.control.reset(key_scale=key_scale, value_scale=value_scale, capture=True, cond_rows=1)
            out = self.unet(sample, timestep, encoder_hidden_states=ehs, return_dict=False)[0]
            return (out, *self.control.maps.values())

    w = Wrapped()
    with attention_control(unet, w.control):
        ones = torch.ones(2, 77)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            traced = torch.jit.trace(w, (x, t, e, ones, ones), check_trace=False, strict=False)
        ours = [str(c.message) for c in caught if "engine" in str(c.filename)]
        assert not ours, ours  # TracerWarnings from diffusers' own shape checks are fine; none from our processor
        ks = ones.clone()
        ks[1, 3] = 2.0
        with torch.no_grad():
            eager = w(x, t, e, ks, ones)
            got = traced(x, t, e, ks, ones)
    assert len(got) == 1 + len(cross_attention_names(unet))
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b)
