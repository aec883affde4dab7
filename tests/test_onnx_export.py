"""export/onnx.py: layout, manifest, shared UNet weights, side graphs' parity, the cache and the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from engine.attention.processor import cross_attention_names
from engine.errors import AttuneError
from export import onnx as export_onnx


def _ort(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_layout_and_manifest(tiny_export, tiny_components):
    for rel in (
        "unet/model.onnx",
        "unet/model_maps.onnx",
        "unet/model.onnx_data",
        "text_encoder/model.onnx",
        "vae_encoder/model.onnx",
        "vae_decoder/model.onnx",
        "attune_onnx.json",
    ):
        assert (tiny_export / rel).is_file(), rel
    manifest = export_onnx.read_manifest(tiny_export)
    assert manifest["weights_hash"] == tiny_components.weights_hash
    assert manifest["map_layers"] == cross_attention_names(tiny_components.unet)
    assert manifest["in_channels"] == 4
    # maps of the tiny UNet: full-res down block and up block at 1x, mid block at 2x
    assert sorted(set(manifest["map_downsample"].values())) == [1, 2]


def test_unet_graphs_share_one_weights_file(tiny_export):
    maps_graph = onnx.load(str(tiny_export / "unet" / "model_maps.onnx"), load_external_data=False)
    noise_graph = onnx.load(str(tiny_export / "unet" / "model.onnx"), load_external_data=False)

    def external(model):
        return {
            t.name: {e.key: e.value for e in t.external_data}
            for t in model.graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL
        }

    ext_maps, ext_noise = external(maps_graph), external(noise_graph)
    assert ext_noise and set(ext_noise) <= set(ext_maps)
    assert {d["location"] for d in ext_maps.values()} == {"model.onnx_data"}
    assert all(ext_noise[name] == ext_maps[name] for name in ext_noise)  # same file, same offsets
    # the noise-only graph is really pruned: no map outputs, no map_rows input, fewer nodes
    assert [o.name for o in noise_graph.graph.output] == ["out_sample"]
    assert "map_rows" not in [i.name for i in noise_graph.graph.input]
    assert len(noise_graph.graph.node) < len(maps_graph.graph.node)


def test_unet_axes_are_dynamic(tiny_export):
    model = onnx.load(str(tiny_export / "unet" / "model_maps.onnx"), load_external_data=False)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["sample"] == ["batch", 4, "height", "width"]
    assert dims["encoder_hidden_states"][:2] == ["batch", "sequence"]
    assert dims["key_scale"] == ["batch", "sequence"] and dims["value_scale"] == ["batch", "sequence"]
    assert dims["map_rows"] == ["map_rows"]


def test_text_encoder_matches_torch(tiny_export, tiny_components):
    from engine.words.prompt import tokenize_prompt

    ids = torch.tensor([tokenize_prompt(tiny_components.tokenizer, "a painting of a wolf").input_ids])  # 77 ids
    session = _ort(tiny_export / "text_encoder" / "model.onnx")
    hide_wolf = torch.ones_like(ids)
    hide_wolf[0, 5] = 0
    for mask in (torch.ones_like(ids), hide_wolf):  # the `embed` method hides low-weighted words by the mask
        with torch.no_grad():
            expected = tiny_components.text_encoder(ids, attention_mask=mask)[0].numpy()
        got = session.run(["last_hidden_state"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-4


def test_vae_graphs_match_torch_at_another_size(tiny_export, tiny_components):
    vae = tiny_components.vae
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 48, 80, generator=g) * 2 - 1  # not the tracing size, not square
    with torch.no_grad():
        params = vae.encode(image).latent_dist.parameters
        decoded = vae.decode(params[:, :4], return_dict=False)[0]
    got_params = _ort(tiny_export / "vae_encoder" / "model.onnx").run(None, {"sample": image.numpy()})[0]
    assert got_params.shape == (1, 8, 6, 10)
    assert np.abs(got_params - params.numpy()).max() <= 1e-4
    got_image = _ort(tiny_export / "vae_decoder" / "model.onnx").run(None, {"latent_sample": params[:, :4].numpy()})[0]
    assert np.abs(got_image - decoded.numpy()).max() <= 1e-4


def test_cache_exports_once_and_repairs_damage(tiny_components, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTUNE_CACHE", str(tmp_path / "cache"))
    messages = []

    def progress(done, total, message):
        messages.append((done, total, message))

    part = ("text_encoder",)  # the quickest part to export; the cache logic is the same for all
    folder = export_onnx.ensure_exported(tiny_components, parts=part, progress=progress)
    assert folder == tmp_path / "cache" / "onnx" / tiny_components.weights_hash
    assert messages[0] == (0, 1, "exporting text_encoder") and messages[-1][0] == 1
    graph = folder / "text_encoder" / "model.onnx"
    stamp = graph.stat().st_mtime_ns

    messages.clear()
    assert export_onnx.ensure_exported(tiny_components, parts=part, progress=progress) == folder
    assert messages == []  # cached: no export
    assert graph.stat().st_mtime_ns == stamp

    graph.write_bytes(b"truncated")  # damaged: its size differs from the manifest's
    export_onnx.ensure_exported(tiny_components, parts=part, progress=progress)
    assert messages and export_onnx.read_manifest(folder)["parts"] == ["text_encoder"]
    assert not [
        p for p in (tmp_path / "cache" / "onnx").iterdir() if p.is_dir() and p != folder
    ]  # no temp folders left

    # asking for more parts than the cache holds exports again, with all of them
    export_onnx.ensure_exported(tiny_components, parts=("text_encoder", "vae_decoder"), progress=progress)
    assert (folder / "vae_decoder" / "model.onnx").is_file()


def test_read_manifest_errors(tiny_export, tmp_path):
    with pytest.raises(AttuneError, match="No usable ONNX export"):
        export_onnx.read_manifest(tmp_path)
    manifest = json.loads((tiny_export / "attune_onnx.json").read_text())
    (tmp_path / "attune_onnx.json").write_text(json.dumps({**manifest, "format": 0}))
    with pytest.raises(AttuneError, match="format 0"):
        export_onnx.read_manifest(tmp_path)
    (tmp_path / "attune_onnx.json").write_text(json.dumps(manifest))
    with pytest.raises(AttuneError, match="incomplete"):
        export_onnx.read_manifest(tmp_path)


def test_cli_exports_and_reports_bad_input(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert export_onnx.main(["--model", str(tiny_model_dir), "--out", str(out), "--parts", "vae_decoder"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert export_onnx.read_manifest(out)["parts"] == ["vae_decoder"]

    assert export_onnx.main(["--model", str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")

    assert export_onnx.main(["--model", str(tiny_model_dir), "--out", str(out), "--parts", "unet,refiner"]) == 2
    assert "Unknown export part(s) refiner" in capsys.readouterr().err


@pytest.mark.parametrize("self_attention,maps_path", [("fused", "shared"), ("plain", "separate")])
def test_export_variants_match_torch(tiny_components, tmp_path, self_attention, maps_path):
    """The non-default variants: self-attention as ORT's fused op; maps from the engine's own processor."""
    from engine.runners.onnx import OnnxUNetRunner
    from engine.runners.torch import TorchUNetRunner

    out = export_onnx.export_components(
        tiny_components, tmp_path, parts=("unet",), self_attention=self_attention, maps_path=maps_path
    )
    manifest = export_onnx.read_manifest(out)
    assert (manifest["self_attention"], manifest["maps_path"]) == (self_attention, maps_path)
    graph = onnx.load(str(out / "unet" / "model_maps.onnx"), load_external_data=False)
    fused = [n for n in graph.graph.node if n.op_type == "MultiHeadAttention" and n.domain == "com.microsoft"]
    self_layers = [n for n in tiny_components.unet.attn_processors if n.endswith("attn1.processor")]
    assert len(fused) == (len(self_layers) if self_attention == "fused" else 0)
    softmaxes = [n for n in graph.graph.node if n.op_type == "Softmax"]
    cross_layers = manifest["map_layers"]
    # separate: attn2 softmax for the output plus one for the maps; shared: one per attn2 layer
    per_cross = 2 if maps_path == "separate" else 1
    assert len(softmaxes) == per_cross * len(cross_layers) + (0 if self_attention == "fused" else len(self_layers))

    g = torch.Generator().manual_seed(2)
    sample, context = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 32, generator=g)
    scale = torch.ones(2, 77)
    scale[1, 2] = 2.0
    with TorchUNetRunner(tiny_components.unet) as torch_runner:
        expected, expected_maps = torch_runner(
            sample, torch.tensor(300), context, capture_maps=True, cond_rows=1, key_scale=scale, value_scale=scale
        )
    got, got_maps = OnnxUNetRunner(out)(
        sample, torch.tensor(300), context, capture_maps=True, cond_rows=1, key_scale=scale, value_scale=scale
    )
    assert float((got - expected).abs().max()) <= 1e-4
    assert max(float((got_maps[k] - expected_maps[k]).abs().max()) for k in expected_maps) <= 1e-5


def test_unknown_export_options_are_refused(tiny_components, tmp_path):
    with pytest.raises(AttuneError, match="self-attention mode"):
        export_onnx.export_components(tiny_components, tmp_path / "a", parts=("unet",), self_attention="flash")
    with pytest.raises(AttuneError, match="maps path"):
        export_onnx.export_components(tiny_components, tmp_path / "b", parts=("unet",), maps_path="both")


# ------------------------------------------------------------------ fp16 (GPU hosts)
# ORT's CPU provider runs the fp16 graphs (ops it has no fp16 kernel for get Casts it inserts itself), so besides
# the graph's structure the CPU checks its numbers against the fp32 graph. Measured on the tiny UNet at t = 11.5,
# 601 and 949.26: noise within 0.9e-3 to 6.3e-3 of fp32 (values up to ~1.1), maps within 5e-5. Tolerances: about
# 4x / 20x that.
FP16_NOISE_TOL = 2.5e-2
FP16_MAPS_TOL = 1e-3


@pytest.fixture(scope="module")
def fp16_export(tiny_components, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16-export")
    return export_onnx.export_components(tiny_components, out, parts=("unet",), dtype="fp16")


def _typed_graph(path):
    """The graph (no weights loaded) with every tensor's type inferred."""
    return onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))


def test_fp16_export_has_fp16_weights_and_fp32_edges(fp16_export):
    assert export_onnx.read_manifest(fp16_export)["dtype"] == "fp16"
    for rel in ("unet/model_maps_fp16.onnx", "unet/model_fp16.onnx", "unet/model_fp16.onnx_data",
                "unet/model_maps.onnx", "unet/model.onnx"):  # the fp32 graphs stay, for the CPU
        assert (fp16_export / rel).is_file(), rel
    model = _typed_graph(fp16_export / "unet" / "model_maps_fp16.onnx")
    weights = [i for i in model.graph.initializer if int(np.prod(i.dims)) >= 16]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    manifest = export_onnx.read_manifest(fp16_export)
    edges = [*model.graph.input, *model.graph.output]
    assert {o.name for o in model.graph.output} == {"out_sample", *manifest["map_layers"]}
    assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in edges)
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
    kept_fp32 = [n for n in model.graph.node
                 if n.op_type in ("Sin", "Cos") or (n.op_type == "Softmax" and "/attn2/" in n.name)]
    assert len(kept_fp32) >= 2 + len(manifest["map_layers"])
    assert all(types[n.output[0]] == onnx.TensorProto.FLOAT for n in kept_fp32)  # timestep embedding, map softmax
    self_softmax = [n for n in model.graph.node if n.op_type == "Softmax" and "/attn1/" in n.name]
    assert self_softmax and all(types[n.output[0]] == onnx.TensorProto.FLOAT16 for n in self_softmax)


def test_fp16_graphs_run_on_the_cpu_close_to_fp32(fp16_export):
    from engine.runners.onnx import OnnxUNetRunner

    g = torch.Generator().manual_seed(4)
    sample, context = torch.randn(2, 4, 9, 13, generator=g).numpy(), torch.randn(2, 77, 32, generator=g).numpy()
    fp32, fp16 = OnnxUNetRunner(fp16_export), OnnxUNetRunner(fp16_export, precision="fp16")
    assert fp32.graph_path(True).name == "model_maps.onnx" and fp16.graph_path(True).name == "model_maps_fp16.onnx"
    expected, expected_maps = fp32(sample, np.array(601.0), context, capture_maps=True, cond_rows=1)
    got, got_maps = fp16(sample, np.array(601.0), context, capture_maps=True, cond_rows=1)
    assert got.dtype == np.float32 and all(m.dtype == np.float32 for m in got_maps.values())
    assert 0 < float(np.abs(got - expected).max()) <= FP16_NOISE_TOL  # it really ran in fp16
    assert max(float(np.abs(got_maps[k] - expected_maps[k]).max()) for k in got_maps) <= FP16_MAPS_TOL
    noise_only, _ = fp16(sample, np.array(601.0), context)
    assert np.array_equal(noise_only, got)


def test_fp16_graphs_only_with_cuda(fp16_export, tiny_export):
    from engine.runners.onnx import OnnxUNetRunner

    assert OnnxUNetRunner(fp16_export).precision == "fp32"  # CPU: fp32 even when the export has fp16 graphs
    cuda = OnnxUNetRunner(fp16_export, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert cuda.precision == "fp16" and cuda.graph_path(False).name == "model_fp16.onnx"
    fp32_only = OnnxUNetRunner(tiny_export, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert fp32_only.precision == "fp32"
    with pytest.raises(AttuneError, match="no fp16 graphs"):
        OnnxUNetRunner(tiny_export, precision="fp16")


def test_fp16_cli_option(tiny_model_dir, tmp_path, capsys):
    assert export_onnx.main(["--model", str(tiny_model_dir), "--ship", "--dtype", "fp16"]) == 2
    assert "fp32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_onnx.main(["--model", str(tiny_model_dir), "--out", str(tmp_path), "--dtype", "fp8"])
    with pytest.raises(AttuneError, match="Unknown ONNX dtype"):
        export_onnx.export_model(tiny_model_dir, tmp_path, parts=("unet",), dtype="bf16")
