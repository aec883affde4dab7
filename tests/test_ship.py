"""`python -m export.onnx --ship`: regenerates MODEL/onnx/ from the folder's weights, with the extra 9-channel
`unet_inpaint/` when the folder has one, and the light runtime then runs from it."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("torch")

from engine.model.loading import weights_hash  # noqa: E402
from engine.model.onnx_files import find_export, read_manifest, shipped_dir  # noqa: E402
from engine.runners.onnx import OnnxUNetRunner  # noqa: E402


def test_ship_includes_unet_inpaint_and_serves_the_light_runtime(tiny_model_dir, tiny_inpaint_model_dir, tmp_path):
    from export.onnx import main

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model, ignore=shutil.ignore_patterns(".attune_hash.json", "onnx"))
    shutil.copytree(tiny_inpaint_model_dir / "unet", model / "unet_inpaint")
    assert main(["--model", str(model), "--ship"]) == 0
    manifest = read_manifest(shipped_dir(model))
    assert manifest["weights_hash"] == weights_hash(model)  # the inpainting UNet's weights are part of the hash
    assert set(manifest["parts"]) == {"unet", "text_encoder", "vae_encoder", "vae_decoder", "unet_inpaint"}
    assert find_export(model, weights_hash(model)) == shipped_dir(model)
    with OnnxUNetRunner(shipped_dir(model), subfolder="unet_inpaint") as inpaint, \
            OnnxUNetRunner(shipped_dir(model)) as plain:
        assert (inpaint.in_channels, plain.in_channels) == (9, 4)
        context = np.random.default_rng(0).standard_normal((2, 77, 32)).astype(np.float32)
        noise, maps = inpaint(np.zeros((2, 9, 8, 8), np.float32), 500, context, capture_maps=True, cond_rows=1)
        assert noise.shape == (2, 4, 8, 8) and maps and all(m.shape[0] == 1 for m in maps.values())

    from engine.pipeline.attune import Attune, GenerateParams

    engine = Attune(model, backend="onnx")
    assert engine.components.export_dir == shipped_dir(model)
    assert engine.generate(GenerateParams(prompt="a full moon", steps=2, width=32, height=32)).backend == "onnx"
    # new weights make the shipped graphs stale: they are no longer used
    (model / "unet_inpaint" / "diffusion_pytorch_model.safetensors").write_bytes(
        (tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors").read_bytes())
    assert find_export(model, weights_hash(model)) is None
