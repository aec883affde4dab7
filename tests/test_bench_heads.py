"""bench.unet_heads --app: the copy of a model folder whose UNet keeps its weights under another head layout."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bench.unet_heads import regrouped_folder  # noqa: E402


def test_regrouped_folder_keeps_the_weights_changes_the_heads_and_runs_on_the_light_runtime(
        tiny_model_dir, tiny_inpaint_model_dir, tmp_path):
    from diffusers import UNet2DConditionModel

    from engine.model.onnx_files import read_manifest, shipped_dir
    from engine.runners.onnx import OnnxUNetRunner

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model, ignore=shutil.ignore_patterns(".attune_hash.json", "onnx"))
    shutil.copytree(tiny_inpaint_model_dir / "unet", model / "unet_inpaint")
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, "unet_inpaint": ["diffusers", "UNet2DConditionModel"]}))

    out = regrouped_folder(model, [1, 2], tmp_path / "regrouped")

    source = UNet2DConditionModel.from_pretrained(model / "unet")
    regrouped = UNet2DConditionModel.from_pretrained(out / "unet")
    assert source.config.attention_head_dim == 8 and regrouped.config.attention_head_dim == [1, 2]
    heads = {name: m.heads for name, m in regrouped.named_modules() if name.endswith("attn2")}
    assert sorted(set(heads.values())) == [1, 2]
    source_state, regrouped_state = source.state_dict(), regrouped.state_dict()
    assert source_state.keys() == regrouped_state.keys()
    assert all(torch.equal(source_state[k], regrouped_state[k]) for k in source_state)
    # the click is text-to-image: no inpainting UNet in the copy, on disk or in its index
    assert not (out / "unet_inpaint").exists() and "unet_inpaint" not in json.loads((out / "model_index.json").read_text())
    assert "unet_inpaint" not in read_manifest(shipped_dir(out))["parts"]

    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    embeddings = rng.standard_normal((2, 77, 32)).astype(np.float32)
    timestep = np.array([500.0], dtype=np.float32)
    with OnnxUNetRunner(shipped_dir(out)) as runner:
        noise = runner(sample, timestep, embeddings)[0]
    with torch.no_grad():
        expected = regrouped(torch.from_numpy(sample), torch.tensor([500.0, 500.0]), torch.from_numpy(embeddings)).sample
    np.testing.assert_allclose(noise, expected.numpy(), atol=1e-4)
    with torch.no_grad():  # and the layout matters: the model's own heads give another output
        other = source(torch.from_numpy(sample), torch.tensor([500.0, 500.0]), torch.from_numpy(embeddings)).sample
    assert float((other - expected).abs().max()) > 1e-3


def test_a_head_layout_that_does_not_split_the_channels_is_refused_in_one_line(tmp_path, capsys):
    from bench.unet_heads import layout_error, main

    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "unet" / "config.json").write_text(json.dumps({"block_out_channels": [64, 128, 160]}))
    assert layout_error(model, [2, 4, 5]) is None and layout_error(model, 32) is None
    assert "64 channels into 3" in layout_error(model, [3, 4, 5])
    assert "2 head counts for 3 blocks" in layout_error(model, [2, 4])
    assert "no diffusers UNet config" in layout_error(tmp_path / "missing", 2)
    assert main(["--app", "--model", str(model), "--heads32", "3,4,5"]) == 2
    assert capsys.readouterr().err.strip() == "error: the heads do not split the channels: 64 channels into 3."
