"""attune.json "self_attention_heads": self-attention layers run with other head counts than the UNet config's,
in the loader, the hash, the ONNX export and the light runtime; cross-attention (the heatmaps) keeps its heads."""
import json
import shutil

import pytest
import torch

from engine.errors import AttuneError
from engine.model import head_layout
from tests.tiny_model import tiny_unet

LAYOUT = {"down_blocks.0": 2, "up_blocks.1": 2}  # the tiny UNet's 32-channel blocks: 8 heads of width 4 -> 2 of 16


def _attention_by_hand(attn, x, heads):
    """softmax(q kᵀ / sqrt(d)) v with `heads` heads, then the output projection (no processor involved)."""
    b, n, c = x.shape
    q, k, v = (proj(x).view(b, n, heads, c // heads).transpose(1, 2) for proj in (attn.to_q, attn.to_k, attn.to_v))
    probs = ((q @ k.transpose(-1, -2)) * (c // heads) ** -0.5).softmax(-1)
    return attn.to_out[0]((probs @ v).transpose(1, 2).reshape(b, n, c))


def test_regrouped_self_attention_computes_with_the_new_heads():
    torch.manual_seed(0)
    unet = tiny_unet().eval()
    changed = head_layout.apply(unet, LAYOUT)
    assert changed == ["down_blocks.0.attentions.0.transformer_blocks.0.attn1",
                       "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
                       "up_blocks.1.attentions.1.transformer_blocks.0.attn1"]
    attn = unet.get_submodule(changed[0])
    x = torch.randn(1, 16, 32)
    with torch.no_grad():
        assert torch.allclose(attn(x), _attention_by_hand(attn, x, 2), atol=1e-5)
        assert not torch.allclose(attn(x), _attention_by_hand(attn, x, 8), atol=1e-3)  # not the config's 8 heads
    cross = unet.get_submodule(changed[0].replace("attn1", "attn2"))
    assert cross.heads == 8 and attn.heads == 2  # cross-attention, whose maps are the heatmaps, keeps its heads


@pytest.mark.parametrize("value", [{}, [], {"down_blocks.0": 0}, {"down_blocks.0": True}, {"down_blocks.0": 1.5},
                                   {"": 2}, "down_blocks.0=2"])
def test_bad_layouts_are_refused_in_one_line(value, tmp_path):
    (tmp_path / "attune.json").write_text(json.dumps({"self_attention_heads": value}))
    from engine.model.family import read_attune_json

    with pytest.raises(AttuneError, match="self_attention_heads' must map UNet blocks to head counts"):
        read_attune_json(tmp_path)


def test_a_layout_the_unet_cannot_take_is_refused():
    with pytest.raises(AttuneError, match="names 'down_blocks.1', which has no self-attention"):
        head_layout.apply(tiny_unet(), {"down_blocks.1": 2})
    with pytest.raises(AttuneError, match="3 heads, which do not split its 32 channels"):
        head_layout.apply(tiny_unet(), {"down_blocks.0": 3})


@pytest.fixture(scope="module")
def regrouped_model(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("regrouped") / "model"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("onnx", ".attune_hash.json"))
    settings = folder / "attune.json"
    current = json.loads(settings.read_text()) if settings.is_file() else {}
    settings.write_text(json.dumps({**current, "self_attention_heads": LAYOUT}))
    return folder


def test_the_loader_applies_it_and_the_hash_tells_the_models_apart(tiny_model_dir, regrouped_model):
    from engine.model.loading import load_components, weights_hash

    plain, regrouped = load_components(tiny_model_dir), load_components(regrouped_model)
    assert plain.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1").heads == 8
    assert regrouped.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1").heads == 2
    sample, t, text = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, 32)
    with torch.no_grad():
        a = plain.unet(sample, t, encoder_hidden_states=text).sample
        b = regrouped.unet(sample, t, encoder_hidden_states=text).sample
    assert (a - b).abs().max() > 1e-4  # same weights, another function
    assert weights_hash(tiny_model_dir) != weights_hash(regrouped_model)  # so logs and export caches tell them apart


@pytest.mark.timeout(300)
def test_the_light_runtime_runs_the_layout_it_was_exported_with(regrouped_model, onnx_cache):
    """The exported graphs are traced from the regrouped UNet: ONNX Runtime paints what PyTorch paints."""
    import numpy as np

    from engine.pipeline.attune import Attune
    from engine.pipeline.params import GenerateParams
    from tests.onnx_support import exported

    exported(regrouped_model)
    params = GenerateParams("a red circle", seed=3, steps=3, width=64, height=64)
    light = Attune(model=regrouped_model, backend="onnx").generate(params)
    torch_run = Attune(model=regrouped_model, backend="torch").generate(params)
    assert light.backend == "onnx" and torch_run.backend == "torch"
    diff = np.abs(np.asarray(light.image, float) - np.asarray(torch_run.image, float))
    assert diff.mean() <= 1.0, diff.mean()
