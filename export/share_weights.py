"""Shipped graphs without a second copy of the weights: their initializers point into the model's safetensors.

A model folder that ships its ONNX graphs (`<model>/onnx/`) would otherwise hold every weight twice: once in the
diffusers safetensors, once in the graphs. The bytes are the same (the built-in model's weights are fp16 and the
graphs store fp16 initializers), so `share_weights(export_dir, model_folder)` rewrites each graph so that

- an initializer whose bytes equal a safetensors tensor becomes ONNX external data at that tensor's byte range of
  the safetensors file (safetensors keeps each tensor's raw little-endian bytes contiguous after a JSON header);
- an initializer that equals a tensor *transposed* (the exporter folds `Linear` weights into `MatMul` constants)
  becomes a Transpose node over the safetensors tensor; ONNX Runtime folds it back at load, bit for bit;
- everything else stays inside the graph.

ONNX Runtime refuses external data outside a graph's folder ("escapes model directory"), so the runtime reads those
files itself and hands them over in memory (engine/model/ort_sessions.py, `shared_weight_files`). The manifest lists, per
graph, the files it reads (`shared_weights`). Graphs outside a model folder (the export cache) are not rewritten.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

MIN_BYTES = 1024  # smaller initializers stay inside the graph: not worth an indirection

ONNX_DTYPES = {"F16": 10, "F32": 1, "BF16": 16, "F64": 11, "I64": 7, "I32": 6}  # safetensors dtype -> onnx TensorProto type


@dataclass(frozen=True)
class Slice:
    """One tensor's bytes inside a safetensors file."""

    file: Path
    offset: int
    length: int
    shape: tuple[int, ...]
    transposed: bool  # the initializer is this tensor transposed (2-D)


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """(header, byte offset of the data section) of a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def index_safetensors(files: list[Path]) -> dict[tuple, Slice]:
    """(onnx dtype, shape, sha256 of bytes) -> where those bytes are, for every tensor and every 2-D tensor's
    transpose."""
    import numpy as np
    from onnx.helper import tensor_dtype_to_np_dtype

    index: dict[tuple, Slice] = {}
    for path in files:
        header, start = read_safetensors_header(path)
        raw = path.read_bytes()
        for name, entry in sorted(header.items()):
            dtype = ONNX_DTYPES.get(entry["dtype"])
            begin, end = entry["data_offsets"]
            if dtype is None or end - begin < MIN_BYTES:
                continue
            data = raw[start + begin:start + end]
            shape = tuple(entry["shape"])
            where = Slice(path, start + begin, end - begin, shape, False)
            index.setdefault((dtype, shape, _digest(data)), where)
            if len(shape) == 2:
                flipped = np.frombuffer(data, dtype=tensor_dtype_to_np_dtype(dtype)).reshape(shape).T
                key = (dtype, shape[::-1], _digest(np.ascontiguousarray(flipped).tobytes()))
                index.setdefault(key, Slice(path, start + begin, end - begin, shape, True))
    return index


def _point_at(tensor, location: str, where: Slice) -> None:
    """Make `tensor` external data at `where` (its raw bytes are dropped)."""
    import onnx

    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(where.offset)), ("length", str(where.length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def share_graph(graph_path: Path, index: dict[tuple, Slice]) -> list[str]:
    """Rewrite one graph in place; returns the locations (relative to its folder) of the files it now reads."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(graph_path))  # with its external data, if any
    folder = graph_path.parent
    kept, transposes, locations = [], [], set()
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        where = index.get((tensor.data_type, tuple(array.shape), _digest(array.tobytes())))
        if array.nbytes < MIN_BYTES or where is None:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:  # unmatched: back inside the graph
                kept.append(numpy_helper.from_array(array, name=tensor.name))
            else:
                kept.append(tensor)
            continue
        location = Path(os.path.relpath(where.file, folder)).as_posix()
        locations.add(location)
        if where.transposed:
            source = onnx.TensorProto()
            source.name, source.data_type = f"{tensor.name}__shared_t", tensor.data_type
            source.dims.extend(where.shape)
            _point_at(source, location, where)
            kept.append(source)
            transposes.append(helper.make_node("Transpose", [source.name], [tensor.name], perm=[1, 0],
                                               name=f"{tensor.name}__transpose"))
        else:
            _point_at(tensor, location, where)
            kept.append(tensor)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    nodes = transposes + list(model.graph.node)  # the transposes read only initializers: first is topological
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    graph_path.write_bytes(model.SerializeToString())  # never onnx.save: it could write into the safetensors
    return sorted(locations)


def share_weights(export_dir: str | Path, model_folder: str | Path) -> dict:
    """Rewrite every graph under export_dir to read its weights from model_folder's safetensors; drop the graphs'
    own weight files, which nothing reads any more. Returns {"<part>/<graph>": [locations]} for the manifest."""
    export_dir, model_folder = Path(export_dir), Path(model_folder)
    index = index_safetensors(sorted(model_folder.glob("*/*.safetensors")))
    data_files = [p for p in export_dir.glob("*/*") if p.suffix not in (".onnx", ".json")]
    shared = {}
    for graph in sorted(export_dir.glob("*/*.onnx")):
        shared[graph.relative_to(export_dir).as_posix()] = share_graph(graph, index)
    for data in data_files:  # a graph's own weights file: every tensor now reads the safetensors or is inside
        data.unlink()
    return shared


def materialize(graph_path: Path, out_path: Path) -> None:
    """A self-contained copy of a graph (all initializers inside), for tools that open graphs without Attune's
    runtime, e.g. optimum. Reads external data relative to the graph's folder, wherever it is."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(graph_path), load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        with open(graph_path.parent / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            data = f.read(int(info["length"])) if "length" in info else f.read()
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        array = np.frombuffer(data, dtype=dtype).reshape(tuple(tensor.dims))
        tensor.CopyFrom(numpy_helper.from_array(array, name=tensor.name))
    out_path.write_bytes(model.SerializeToString())
