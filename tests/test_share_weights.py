"""Shipped graphs read their weights from the model's safetensors (export/share_weights.py): no second copy, the
same outputs bit for bit as a self-contained export, and a clear error when the weights file is gone."""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")

from engine.errors import AttuneError  # noqa: E402
from engine.model.onnx_files import read_manifest, shipped_dir  # noqa: E402
from engine.runners.onnx import OnnxPart, OnnxUNetRunner, shared_weight_files  # noqa: E402
from export.share_weights import MIN_BYTES, materialize  # noqa: E402


@pytest.fixture(scope="module")
def shipped(tiny_model_dir, tmp_path_factory):
    from export.onnx import main

    model = tmp_path_factory.mktemp("shared") / "model"
    shutil.copytree(tiny_model_dir, model, ignore=shutil.ignore_patterns(".attune_hash.json", "onnx"))
    assert main(["--model", str(model), "--ship"]) == 0
    return model


def test_shipped_graphs_hold_no_second_copy_of_the_weights(shipped, tiny_export):
    manifest = read_manifest(shipped_dir(shipped))
    assert set(manifest["shared_weights"]) == {
        "unet/model.onnx", "unet/model_maps.onnx", "text_encoder/model.onnx", "vae_encoder/model.onnx",
        "vae_decoder/model.onnx"}
    assert manifest["shared_weights"]["unet/model.onnx"] == ["../../unet/diffusion_pytorch_model.safetensors"]
    assert not (shipped_dir(shipped) / "unet" / "model.onnx_data").exists()  # nothing reads it any more
    shipped_size = sum(manifest["files"].values())
    self_contained = sum(read_manifest(tiny_export)["files"].values())
    assert shipped_size < 0.3 * self_contained, (shipped_size, self_contained)
    for graph in shipped_dir(shipped).glob("*/*.onnx"):  # every weight-sized initializer lives in a safetensors
        model = onnx.load(str(graph), load_external_data=False)
        big = [t.name for t in model.graph.initializer if len(t.raw_data) >= MIN_BYTES]
        assert not big, (graph, big)
        assert {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"} == set(
            manifest["shared_weights"][f"{graph.parent.name}/{graph.name}"])


def test_shared_graphs_give_the_same_bits_as_a_self_contained_export(shipped, tiny_export):
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    context = rng.standard_normal((2, 77, 32)).astype(np.float32)
    scale = np.ones((2, 77), np.float32)
    scale[1, 3] = 1.7
    with OnnxUNetRunner(shipped_dir(shipped)) as shared, OnnxUNetRunner(tiny_export) as whole:
        a = shared(sample, 400, context, key_scale=scale, capture_maps=True, cond_rows=1)
        b = whole(sample, 400, context, key_scale=scale, capture_maps=True, cond_rows=1)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1].keys() == b[1].keys() and all(np.array_equal(a[1][k], b[1][k]) for k in a[1])
    latents = rng.standard_normal((1, 4, 4, 4)).astype(np.float32)
    decoded = [OnnxPart(folder, "vae_decoder")(latents)[0] for folder in (shipped_dir(shipped), tiny_export)]
    np.testing.assert_array_equal(*decoded)


def test_materialized_graph_opens_without_attune(shipped, tmp_path):
    import onnxruntime as ort

    graph = shipped_dir(shipped) / "vae_decoder" / "model.onnx"
    with pytest.raises(Exception, match="escapes model directory"):  # why the runtime hands ORT the weights itself
        ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    copy = tmp_path / "model.onnx"
    materialize(graph, copy)
    latents = np.random.default_rng(1).standard_normal((1, 4, 4, 4)).astype(np.float32)
    plain = ort.InferenceSession(str(copy), providers=["CPUExecutionProvider"]).run(None, {"latent_sample": latents})
    np.testing.assert_array_equal(plain[0], OnnxPart(shipped_dir(shipped), "vae_decoder")(latents)[0])


def test_missing_weights_file_is_one_clear_error(shipped, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(shipped, model)
    (model / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(AttuneError, match="reads its weights from .*vae/diffusion_pytorch_model.safetensors, which "
                                          "is missing"):
        shared_weight_files(shipped_dir(model) / "vae_decoder" / "model.onnx")
    assert shared_weight_files(tmp_path / "elsewhere" / "model.onnx") == []
