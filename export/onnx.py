"""Export a Stable Diffusion folder to ONNX for ONNX Runtime: UNet with maps and token scales, text encoder, VAE.

    python -m export.onnx --model PATH --out DIR
    python -m export.onnx --model models/tiny-scenes --ship     # regenerate the graphs shipped in PATH/onnx/

Layout (optimum's, plus Attune's maps graph and a manifest):

    DIR/attune_onnx.json           manifest: format, weights hash, inputs/outputs, map layer names, file sizes
    DIR/unet/model.onnx            noise only       (sample, timestep, encoder_hidden_states, key_scale, value_scale)
    DIR/unet/model_maps.onnx       noise + maps     (same inputs + map_rows)
    DIR/unet/model.onnx_data       weights, shared by both UNet graphs
    DIR/text_encoder/model.onnx    input_ids, attention_mask -> last_hidden_state, pooler_output
    DIR/text_encoder_2/model.onnx  SDXL's second encoder: input_ids, attention_mask -> text_embeds, last_hidden_state,
                                   penultimate_hidden_state (its first encoder adds penultimate_hidden_state too;
                                   its UNet graphs take text_embeds and time_ids as well)
    DIR/vae_encoder/model.onnx     sample -> latent_parameters
    DIR/vae_decoder/model.onnx     latent_sample -> sample
    DIR/unet_inpaint/...           the 9-channel inpainting UNet, when the folder has `unet_inpaint/` (as unet/)

Shipped graphs (`--ship`) hold no weights of their own: their initializers point into the model folder's
safetensors (export/share_weights.py), so shipping them adds about 1 MB, not a second copy of the model.

Weights are stored as fp16 wherever that is lossless (the built-in model's weights are fp16), each followed by a Cast
to fp32 that ONNX Runtime folds at load: the graphs compute in fp32 and the files are half the size.

Exporter: the TorchScript one (`dynamo=False`). It traces the engine's Python attention processor as is, exports a
small UNet in about a second (dynamo: ~10x longer), and its dynamic axes cover batch, height, width, sequence length
and the number of map rows with no `Dim` bounds (dynamo's batch `Dim` must stay below 64 because of a diffusers
upsampling branch). The UNet is traced at an odd latent side, so its up blocks take their output size from the skip
connections and any image side that is a multiple of the VAE's factor runs on one graph. The maps-off graph is the maps
graph with the map outputs pruned, so both share one weights file.

Options (recorded in the manifest; measurements in docs/onnx.md):
- maps_path "shared" (default): cross-attention computes softmax once and the maps reuse it; "separate": the
  engine's processor as is (fused SDPA for the output plus a second softmax on the conditional rows for the maps).
- self_attention "plain" (default): standard ONNX ops; "fused": ORT's com.microsoft.MultiHeadAttention op.

- dtype "fp32" (default) or "fp16" (`--dtype fp16`, GPU hosts): fp16 adds unet/model_maps_fp16.onnx and
  unet/model_fp16.onnx (own weights file, model_fp16.onnx_data) that compute in fp16 with fp32 inputs and outputs, so
  the noise and the maps come back in fp32; the timestep embedding and the cross-attention softmax stay fp32. The
  runner uses them only with CUDAExecutionProvider (onnxruntime-gpu); on the CPU it runs the fp32 graphs.

Cache: `ensure_exported(components)` keeps graphs under $ATTUNE_CACHE/onnx/<weights hash>/ (default
~/.cache/attune/onnx/...), exporting on first use with progress shown.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

from engine.errors import AttuneError
from engine.model.loading import require_torch
from engine.model.onnx_files import (  # noqa: F401  (re-exported: the cache helpers live in the torch-free module)
    ADDED_INPUTS, FORMAT_VERSION, MANIFEST, OPTIONAL_PARTS, PARTS, PENULTIMATE_OUTPUT, SDXL_EXPORT_PARTS,
    TEXT_MASK_INPUT, cache_root, export_dir_for, export_parts, read_manifest, shipped_dir, torch_available,
)

if torch_available():  # exporting needs torch; without it main() says so in one line
    import torch

    from export.wrappers import (MAPS_PATHS, SdxlTextEncoder, TextEncoder, UNetWithMaps, VaeDecoder, VaeEncoder,
                                 fuse_self_attention)
else:  # pragma: no cover - the light install
    torch = None
    MAPS_PATHS = ("separate", "shared")

OPSET = 17
SELF_ATTENTION_MODES = ("fused", "plain")
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states", "key_scale", "value_scale")
MAP_ROWS_INPUT = "map_rows"
NOISE_OUTPUT = "out_sample"
UNET_DATA_FILE = "model.onnx_data"
DTYPES = ("fp32", "fp16")
FP16_GRAPHS = {"model_maps.onnx": "model_maps_fp16.onnx", "model.onnx": "model_fp16.onnx"}
FP16_DATA_FILE = "model_fp16.onnx_data"
EXTERNAL_DATA_BYTES = 2**31 - 2**26  # a side graph's weights above this go to an external file (protobuf: 2 GB)

Progress = Callable[[int, int, str], None]


# ---------------------------------------------------------------------------------------------- cache
def _stderr_progress(done: int, total: int, message: str) -> None:
    print(f"[export {done}/{total}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _file_lock(path: Path):
    """Serialise exports of one model across processes (two app sessions starting at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - Windows: the atomic rename below still keeps the cache consistent
            pass
        yield


def _has_export(folder: Path, components, parts, dtype: str = "fp32") -> bool:
    try:
        manifest = read_manifest(folder)
    except AttuneError:
        return False
    return (set(parts) <= set(manifest.get("parts", [])) and manifest.get("weights_hash") == components.weights_hash
            and (dtype == "fp32" or manifest.get("dtype") == dtype))


def ensure_exported(
    components, *, parts=None, progress: Progress | None = None, folder: str | Path | None = None,
    dtype: str = "fp32",
) -> Path:
    """The export folder for these components' weights, exporting it first when missing or damaged (or without the
    fp16 UNet graphs that dtype "fp16" asks for). parts: by default those the model needs (export_parts)."""
    parts = tuple(parts) if parts is not None else export_parts(components.text_time is not None)
    folder = Path(folder) if folder is not None else export_dir_for(components.weights_hash)
    if _has_export(folder, components, parts, dtype):
        return folder
    require_torch("Exporting this model's ONNX graphs")
    with _file_lock(folder.parent / f".{folder.name}.lock"):
        if _has_export(folder, components, parts, dtype):  # another process finished it while we waited
            return folder
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            export_components(components, tmp, parts=parts, progress=progress or _stderr_progress, dtype=dtype)
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ---------------------------------------------------------------------------------------------- export
def _cpu_fp32_components(components):
    """Export from fp32 CPU modules: ORT's CPU graphs are fp32, and tracing on CUDA would pin device ops."""
    if str(components.device) == "cpu" and components.dtype == torch.float32:
        return components
    from engine.model.loading import load_components

    return load_components(components.path or components.model_id, device="cpu", dtype=torch.float32)


def _export(module, args, path: Path, input_names, output_names, dynamic_axes, *, fp16_storage: bool = False) -> None:
    """fp16_storage: traced into a temporary folder, then saved at `path` with fp16 initializers (_save_graph)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fp16_storage:
        import onnx

        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "model.onnx"  # a graph over 2 GB is traced with one external file per tensor
            _export(module, args, raw, input_names, output_names, dynamic_axes)
            _save_graph(_fp16_initializers(onnx.load(str(raw))), path)
        return
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about Python-side shape logic are expected and benign
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


def _save_graph(model, path: Path) -> None:
    """Save a side graph; one whose weights pass protobuf's 2 GB limit (SDXL's second text encoder in fp32) keeps them
    in one external file beside it (model.onnx_data, as the UNet's)."""
    import onnx

    big = sum(t.ByteSize() for t in model.graph.initializer) > EXTERNAL_DATA_BYTES
    onnx.save_model(model, str(path), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=path.name + "_data", size_threshold=1024)


def _prune_to_outputs(model, keep_outputs: list[str]):
    """A copy of `model` computing only `keep_outputs`: dead nodes, initializers and inputs are dropped.
    Initializers keep their external-data references, so the pruned graph shares the weights file."""
    import onnx

    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    graph = pruned.graph
    needed = set(keep_outputs)
    keep_nodes = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep_nodes.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # subgraphs (If/Loop) read outer names too
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    for sub_node in sub.node:
                        needed.update(i for i in sub_node.input if i)
    keep_nodes.reverse()
    del graph.node[:]
    graph.node.extend(keep_nodes)
    for field, names in ((graph.output, set(keep_outputs)), (graph.initializer, needed), (graph.input, needed),
                         (graph.value_info, needed)):
        kept = [item for item in field if item.name in names]
        del field[:]
        field.extend(kept)
    return pruned


def _fp16_initializers(model, min_elements: int = 16):
    """Store each fp32 initializer that fp16 holds exactly as fp16, followed by a Cast back to fp32 (folded by
    ONNX Runtime at load). Lossless: values that fp16 would round stay fp32."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    casts, kept = [], []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            kept.append(init)
            continue
        values = numpy_helper.to_array(init)
        half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values):
            kept.append(init)
            continue
        name = init.name
        kept.append(numpy_helper.from_array(half, name=f"{name}__fp16"))
        casts.append(helper.make_node("Cast", [f"{name}__fp16"], [name], to=onnx.TensorProto.FLOAT,
                                      name=f"{name}__to_fp32"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _default_ones(model, names) -> None:
    """Give inputs a default of ones (1, 1): a caller that knows nothing of token scales (optimum's pipeline) may
    leave them out, and (1, 1) broadcasts like all-ones (B, seq). Attune always feeds them."""
    import numpy as np
    from onnx import numpy_helper

    have = {init.name for init in model.graph.initializer}
    for name in names:
        if name not in have:
            model.graph.initializer.append(numpy_helper.from_array(np.ones((1, 1), dtype=np.float32), name=name))


def _export_unet(unet, out: Path, self_attention: str = "plain", maps_path: str = "shared",
                 subfolder: str = "unet", dtype: str = "fp32") -> dict:
    import onnx

    config = unet.config
    cross_dim = int(config.cross_attention_dim)
    size = int(config.sample_size) if isinstance(config.sample_size, int) else int(config.sample_size[0])
    # An odd latent side: diffusers then passes each up block the skip connection's size (`upsample_size`), and the
    # traced Resize reads its output size from that tensor's shape. Traced at a multiple of the UNet's overall
    # factor, Resize scales by a constant 2 and the graph fails at any side that is not a multiple of that factor.
    size = max(8, size) | 1
    batch, seq = 2, 77
    args = (
        torch.randn(batch, int(config.in_channels), size, size),
        torch.full((batch,), 500.0),
        torch.randn(batch, seq, cross_dim),
        torch.ones(batch, seq),
        torch.ones(batch, seq),
        torch.zeros(1),
    )
    added = _added_widths(config)  # SDXL: text_embeds and time_ids inputs, after map_rows
    args += tuple(torch.randn(batch, width) for width in added.values())
    if maps_path not in MAPS_PATHS:
        raise AttuneError(f"Unknown maps path '{maps_path}': choose one of {', '.join(MAPS_PATHS)}.")
    with UNetWithMaps(unet, maps_path) as wrapper, _self_attention(unet, self_attention):
        layer_names = list(wrapper.layer_names)
        dims = {0: "batch", 1: "sequence"}
        dynamic_axes = {
            "sample": {0: "batch", 2: "height", 3: "width"},
            "timestep": {0: "batch"},
            "encoder_hidden_states": dims,
            "key_scale": dims,
            "value_scale": dims,
            MAP_ROWS_INPUT: {0: "map_rows"},
            **{name: {0: "batch"} for name in added},
            NOISE_OUTPUT: {0: "batch", 2: "height", 3: "width"},
            **{name: {0: "map_rows", 1: f"pixels_{i}", 2: "sequence"} for i, name in enumerate(layer_names)},
        }
        with torch.no_grad():  # the map grid of each layer (its stride from the latent), for the manifest
            traced = wrapper(*args)
        downsample = {name: _map_stride(size, int(m.shape[1])) for name, m in zip(layer_names, traced[1:])}
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "unet.onnx"
            _export(wrapper, args, raw, [*UNET_INPUTS, MAP_ROWS_INPUT, *added], [NOISE_OUTPUT, *layer_names],
                    dynamic_axes)
            if dtype == "fp16":
                _save_unet(_fp16_compute(raw, bool(getattr(config, "upcast_attention", False))), out / subfolder,
                           FP16_GRAPHS, FP16_DATA_FILE)
            model = _fp16_initializers(onnx.load(str(raw)))  # load also pulls in external data (> 2 GB models)
    _save_unet(model, out / subfolder, {name: name for name in FP16_GRAPHS}, UNET_DATA_FILE)
    return {
        "dtype": dtype,
        "map_layers": layer_names,
        "map_downsample": downsample,
        "self_attention": self_attention,
        "maps_path": maps_path,
        "maps_row_exact": maps_path == "shared",  # head_mean: a row's maps do not depend on the row count
        "in_channels": int(config.in_channels),
        "out_channels": int(config.out_channels),
        "cross_attention_dim": cross_dim,
        **({"added_inputs": added} if added else {}),
    }


def _added_widths(config) -> dict[str, int]:
    """SDXL's added UNet inputs and their widths ({} for the other families): the pooled text embedding (what the
    add embedding's projection takes besides the 6 size ids' embeddings) and the 6 size ids."""
    if getattr(config, "addition_embed_type", None) != "text_time":
        return {}
    ids = 6 * int(config.addition_time_embed_dim)
    return dict(zip(ADDED_INPUTS, (int(config.projection_class_embeddings_input_dim) - ids, 6)))


def _save_unet(model, folder: Path, names: dict[str, str], data_file: str) -> None:
    """The maps graph and the noise-only graph pruned from it, sharing one weights file."""
    import onnx

    _default_ones(model, ("key_scale", "value_scale"))
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(folder / names["model_maps.onnx"]), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=data_file, size_threshold=1024)
    # save_model moved the weights out of `model`; the pruned copy points at the same file and offsets
    onnx.save_model(_prune_to_outputs(model, [NOISE_OUTPUT]), str(folder / names["model.onnx"]))


def _fp16_compute(raw: Path, upcast_attention: bool):
    """The fp32 graph at `raw` computing in fp16, for GPU hosts. Inputs and outputs stay fp32 (Casts at the edges),
    so the runner feeds it as the fp32 graph and the noise and maps come back in fp32. Kept in fp32, as diffusers
    keeps them: the sinusoidal timestep embedding (fp16 cannot hold t * freq finely enough for sin/cos) and the
    cross-attention scores and softmax (the maps are those probabilities); every attention's scores too when the
    UNet's config asks for `upcast_attention` (SD 2.x overflows in fp16 there)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    inferred = raw.with_name("inferred.onnx")  # by path: works above protobuf's 2 GB limit too
    onnx.shape_inference.infer_shapes_path(str(raw), str(inferred))
    model = onnx.load(str(inferred))  # external data (> 2 GB models) sits beside raw
    blocked = _timestep_nodes(model) | _attention_score_nodes(model, "/attn" if upcast_attention else "/attn2/")
    original = {node.name for node in model.graph.node}
    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True,
                                     node_block_list=sorted(blocked))
    return _topological(_drop_cast_round_trips(model, original))


def _timestep_nodes(model) -> set[str]:
    """Names of the nodes that the timestep flows through before the time embedding's first linear layer."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    names, frontier = set(), ["timestep"]
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.name not in names and "time_embedding" not in node.name:
                names.add(node.name)
                frontier.extend(node.output)
    return names


def _drop_cast_round_trips(model, original: set[str]):
    """Remove the fp32 -> fp16 -> fp32 Cast pairs that the converter leaves between nodes kept in fp32 (it casts
    every kept node's output to fp16 and back): kept chains then stay exact, the timestep input included.
    original: the node names before conversion (only Casts the converter added are pairs to drop)."""
    import onnx

    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    outputs = {o.name for o in model.graph.output}

    def cast_to(node):
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    rename, dropped = {}, set()
    for node in nodes:
        first = producer.get(node.input[0]) if node.input else None
        if (cast_to(node) == onnx.TensorProto.FLOAT and first is not None and node.name not in original
                and first.name not in original and cast_to(first) == onnx.TensorProto.FLOAT16
                and node.output[0] not in outputs):
            rename[node.output[0]] = first.input[0]
            dropped.add(id(node))
    kept = [n for n in nodes if id(n) not in dropped]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    used = {i for n in kept for i in n.input} | outputs
    kept = [n for n in kept if n.name in original or cast_to(n) != onnx.TensorProto.FLOAT16
            or any(o in used for o in n.output)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def _topological(model):
    """The nodes in an order where each comes after its inputs' producers (the converter appends its Casts at the
    end; _prune_to_outputs walks the graph backwards and needs this order)."""
    nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    order, state = [], [0] * len(nodes)  # 0 new, 1 in progress, 2 placed
    for start in range(len(nodes)):
        stack = [(start, False)]
        while stack:
            i, expanded = stack.pop()
            if state[i] == 2:
                continue
            if expanded:
                state[i] = 2
                order.append(nodes[i])
                continue
            state[i] = 1
            stack.append((i, True))
            for name in nodes[i].input:
                j = producer.get(name)
                if j is not None and state[j] == 0:
                    stack.append((j, False))
    del model.graph.node[:]
    model.graph.node.extend(order)
    return model


def _attention_score_nodes(model, scope: str) -> set[str]:
    """Names of each Softmax in an attention layer whose name holds `scope`, and of the chain that makes its input
    (the scores MatMul, and a scaling Mul/Div or mask Add between them)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    names = set()
    for node in model.graph.node:
        if node.op_type != "Softmax" or scope not in node.name:
            continue
        names.add(node.name)
        source = producer.get(node.input[0])
        while source is not None and source.op_type in ("Mul", "Div", "Add"):
            names.add(source.name)
            source = next((producer[i] for i in source.input if i in producer
                           and producer[i].op_type in ("MatMul", "Mul", "Div", "Add")), None)
        if source is not None and source.op_type == "MatMul":
            names.add(source.name)
    return names


def _map_stride(side: int, pixels: int) -> int:
    """The stride (1, 2, 4, ...) of a map with `pixels` cells on a square latent of `side`: each strided conv
    halves a side rounding up."""
    stride, cells = 1, side
    while cells * cells > pixels and cells > 1:
        stride, cells = stride * 2, (cells + 1) // 2
    return stride


@contextlib.contextmanager
def _self_attention(unet, mode: str):
    """'fused': attn1 layers export as ORT's MultiHeadAttention op; 'plain': as MatMul/Softmax/MatMul."""
    if mode not in SELF_ATTENTION_MODES:
        raise AttuneError(f"Unknown self-attention mode '{mode}': choose one of {', '.join(SELF_ATTENTION_MODES)}.")
    restore = fuse_self_attention(unet) if mode == "fused" else None
    try:
        yield
    finally:
        if restore is not None:
            restore()


def _export_text_encoder(text_encoder, out: Path, part: str = "text_encoder", sdxl: bool = False) -> dict:
    """SD: last_hidden_state and pooler_output. SDXL: pooled (pooler_output, or text_embeds of the second encoder),
    last_hidden_state and penultimate_hidden_state."""
    seq = int(getattr(text_encoder.config, "max_position_embeddings", 77))
    ids = torch.zeros(1, seq, dtype=torch.long)
    mask = torch.ones(1, seq, dtype=torch.long)
    mask[:, seq // 2] = 0  # traced with a hidden token, so no all-visible shortcut is baked into the graph
    pooled = "text_embeds" if part == "text_encoder_2" else "pooler_output"
    states = ["last_hidden_state", PENULTIMATE_OUTPUT] if sdxl else ["last_hidden_state"]
    _export(
        SdxlTextEncoder(text_encoder) if sdxl else TextEncoder(text_encoder),
        (ids, mask),
        out / part / "model.onnx",
        ["input_ids", TEXT_MASK_INPUT],
        [pooled, *states] if sdxl else [*states, pooled],
        {
            "input_ids": {0: "batch", 1: "sequence"},
            TEXT_MASK_INPUT: {0: "batch", 1: "sequence"},
            **{name: {0: "batch", 1: "sequence"} for name in states},
            pooled: {0: "batch"},
        },
        fp16_storage=True,
    )
    info = {"hidden_size": int(text_encoder.config.hidden_size), "max_length": seq}
    return info if part == "text_encoder" else {part: info}


def _vae_image_size(scale: int) -> int:
    """A small tracing size; every spatial axis of the VAE graphs is dynamic."""
    return max(8 * scale, 64)


def _export_vae_encoder(vae, out: Path, scale: int) -> dict:
    px = _vae_image_size(scale)
    sample = torch.randn(1, int(vae.config.in_channels), px, px)
    _export(
        VaeEncoder(vae),
        (sample,),
        out / "vae_encoder" / "model.onnx",
        ["sample"],
        ["latent_parameters"],
        {
            "sample": {0: "batch", 2: "height", 3: "width"},
            "latent_parameters": {0: "batch", 2: "height_latent", 3: "width_latent"},
        },
        fp16_storage=True,
    )
    return {}


def _export_vae_decoder(vae, out: Path, scale: int) -> dict:
    latent = _vae_image_size(scale) // scale
    z = torch.randn(1, int(vae.config.latent_channels), latent, latent)
    _export(
        VaeDecoder(vae),
        (z,),
        out / "vae_decoder" / "model.onnx",
        ["latent_sample"],
        ["sample"],
        {
            "latent_sample": {0: "batch", 2: "height_latent", 3: "width_latent"},
            "sample": {0: "batch", 2: "height", 3: "width"},
        },
        fp16_storage=True,
    )
    return {"scaling_factor": float(getattr(vae.config, "scaling_factor", 0.18215) or 0.18215)}


def export_components(
    components,
    out_dir: str | Path,
    *,
    parts=None,
    progress: Progress | None = None,
    self_attention: str = "plain",
    maps_path: str = "shared",
    dtype: str = "fp32",
) -> Path:
    """Export the requested parts (default: those the model needs, export_parts) of loaded components into out_dir
    (overwriting) and write the manifest last.
    dtype "fp16": the UNet graphs also in fp16 (unet/model_fp16.onnx, ...), which the runner uses only with CUDA;
    the fp32 graphs stay for the CPU."""
    import diffusers
    import onnx

    sdxl = components.text_time is not None
    parts = tuple(parts) if parts is not None else export_parts(sdxl)
    unknown = [p for p in parts if p not in PARTS + OPTIONAL_PARTS + (SDXL_EXPORT_PARTS if sdxl else ())]
    if unknown:
        raise AttuneError(f"Unknown export part(s) {', '.join(unknown)}: choose from {', '.join(export_parts(sdxl))}.")
    if dtype not in DTYPES:
        raise AttuneError(f"Unknown ONNX dtype '{dtype}': choose one of {', '.join(DTYPES)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress = progress or (lambda done, total, message: None)
    comps = _cpu_fp32_components(components)
    scale = int(comps.vae_scale_factor)
    exporters = {
        "unet": lambda: _export_unet(comps.unet, out, self_attention, maps_path, dtype=dtype),
        "text_encoder": lambda: _export_text_encoder(comps.text_encoder, out, sdxl=sdxl),
        "text_encoder_2": lambda: _export_text_encoder(comps.text_encoder_2, out, "text_encoder_2", sdxl=True),
        "vae_encoder": lambda: _export_vae_encoder(comps.vae, out, scale),
        "vae_decoder": lambda: _export_vae_decoder(comps.vae, out, scale),
        "unet_inpaint": lambda: {"unet_inpaint": _export_unet(_load_inpaint_unet(comps), out, self_attention,
                                                              maps_path, subfolder="unet_inpaint", dtype=dtype)},
    }
    info, timings = {}, {}
    for i, part in enumerate(parts):
        progress(i, len(parts), f"exporting {part}")
        start = time.perf_counter()
        try:
            info[part] = exporters[part]()
        except AttuneError:
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise AttuneError(f"ONNX export of the {part} failed: {type(e).__name__}: {first}") from e
        timings[part] = round(time.perf_counter() - start, 3)
    files = {
        str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file() and p.name != MANIFEST
    }
    manifest = {
        "format": FORMAT_VERSION,
        "weights_hash": components.weights_hash,
        "model_id": str(components.model_id),
        "parts": list(parts),
        "opset": OPSET,
        "dtype": dtype,
        "exporter": "torch.onnx.export(dynamo=False)",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "onnx": onnx.__version__},
        "unet_inputs": [*UNET_INPUTS, *info.get("unet", {}).get("added_inputs", {})],
        "map_rows_input": MAP_ROWS_INPUT,
        "noise_output": NOISE_OUTPUT,
        "vae_scale_factor": scale,
        "export_seconds": timings,
        "files": files,
        **{k: v for part in parts for k, v in info[part].items()},
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(out / MANIFEST)
    progress(len(parts), len(parts), f"done: {out}")
    return out


def _load_inpaint_unet(components):
    """The model folder's extra 9-channel inpainting UNet (`unet_inpaint/`), in fp32 on the CPU."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(components.path), subfolder="unet_inpaint",
                                                use_safetensors=True, torch_dtype=torch.float32)
    return unet.eval().requires_grad_(False)


def model_parts(folder: str | Path) -> tuple[str, ...]:
    """The parts to export for a model folder: the standard four (SDXL: and its second text encoder), plus
    unet_inpaint when the folder has one."""
    from engine.model.family import SDXL_FAMILY, detect_family

    folder = Path(folder)
    return export_parts(detect_family(folder) == SDXL_FAMILY) + tuple(
        p for p in OPTIONAL_PARTS if (folder / p / "config.json").is_file())


def _share_weights_in_manifest(export_dir: Path, model_folder: Path) -> None:
    """Point the graphs' weights into the model's safetensors (export/share_weights.py) and record it."""
    from export.share_weights import share_weights

    manifest = json.loads((export_dir / MANIFEST).read_text())
    manifest["shared_weights"] = share_weights(export_dir, model_folder)
    manifest["files"] = {
        str(p.relative_to(export_dir)): p.stat().st_size
        for p in sorted(export_dir.rglob("*")) if p.is_file() and p.name != MANIFEST
    }
    (export_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))


def ship(model: str | Path | None, *, progress: Progress | None = None) -> Path:
    """Regenerate `<model>/onnx/` (the graphs that ship with a model, so the light runtime needs no exporter) from
    the weights the folder holds now. Written beside it first, then swapped in."""
    from engine.model.loading import load_components

    components = load_components(model, device="cpu", dtype=torch.float32)
    target = shipped_dir(components.path)
    tmp = Path(tempfile.mkdtemp(prefix=".onnx-ship-", dir=components.path))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the shipped folder is part of the model
    try:
        export_components(components, tmp, parts=model_parts(components.path), progress=progress)
        _share_weights_in_manifest(tmp, components.path)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def export_model(
    model: str | Path | None,
    out_dir: str | Path,
    *,
    parts=None,
    progress: Progress | None = None,
    self_attention: str = "plain",
    maps_path: str = "shared",
    dtype: str = "fp32",
) -> Path:
    from engine.model.loading import load_components

    components = load_components(model, device="cpu", dtype=torch.float32)
    return export_components(
        components, out_dir, parts=parts, progress=progress, self_attention=self_attention, maps_path=maps_path,
        dtype=dtype,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.onnx", description="Export a Stable Diffusion folder to ONNX (Attune layout)."
    )
    parser.add_argument("--model", default=None, help="diffusers folder or hub id (default: the built-in model)")
    parser.add_argument(
        "--out", default=None, help="output folder (default: the cache folder keyed by the weights hash)"
    )
    parser.add_argument("--parts", default=None,
                        help=f"comma-separated subset of {','.join(PARTS + OPTIONAL_PARTS + SDXL_EXPORT_PARTS)} "
                             "(default: those the model needs; SDXL adds text_encoder_2)")
    parser.add_argument("--ship", action="store_true",
                        help="write the graphs into MODEL/onnx/, where the light runtime finds them (all parts, "
                             "plus unet_inpaint when the folder has one)")
    parser.add_argument(
        "--self-attention",
        default="plain",
        choices=SELF_ATTENTION_MODES,
        help="plain: standard ONNX ops (default); fused: self-attention as ORT's MultiHeadAttention op",
    )
    parser.add_argument(
        "--maps-path",
        default="shared",
        choices=MAPS_PATHS,
        help="shared: maps reuse the attention probabilities (default); separate: the engine's processor as is",
    )
    parser.add_argument(
        "--dtype",
        default="fp32",
        choices=DTYPES,
        help="fp16: also write fp16 UNet graphs (inputs, noise and maps stay fp32), used only with CUDA "
             "(onnxruntime-gpu); the CPU keeps the fp32 graphs",
    )
    args = parser.parse_args(argv)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip()) if args.parts else None
    try:
        require_torch("Exporting ONNX graphs")
        if args.ship and args.dtype != "fp32":
            raise AttuneError("Shipped graphs serve the CPU light runtime, which computes in fp32: export fp16 graphs "
                              "with --out or into the cache instead of --ship.")
        if args.ship:
            out = ship(args.model, progress=_stderr_progress)
        elif args.out is None:
            from engine.model.loading import load_components

            components = load_components(args.model)
            out = ensure_exported(components, parts=parts, progress=_stderr_progress, dtype=args.dtype)
        else:
            out = export_model(
                args.model,
                args.out,
                parts=parts,
                progress=_stderr_progress,
                self_attention=args.self_attention,
                maps_path=args.maps_path,
                dtype=args.dtype,
            )
    except AttuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(str(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
