"""bench.compute_floor (the image's FLOPs ÷ a measured peak), bench.engine_ab and bench.app's A/B summary."""
from __future__ import annotations

import json

import numpy as np

from bench import app, compute_floor, engine_ab


def test_node_flops_are_twice_the_multiply_adds():
    assert compute_floor.node_flops("MatMul", [[2, 5, 3], [3, 4]], [2, 5, 4]) == 2 * (2 * 5 * 4) * 3
    assert compute_floor.node_flops("Gemm", [[2, 32], [32, 128]], [2, 128]) == 2 * 2 * 128 * 32
    # a grouped 3x3 convolution: each output reads in_channels / groups (the weight's dim 1) x 3 x 3 inputs
    assert compute_floor.node_flops("Conv", [[1, 8, 6, 6], [8, 2, 3, 3]], [1, 8, 6, 6]) == 2 * 8 * 36 * 2 * 9


def test_graph_flops_count_a_matmul_graph_from_ort_profile(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 6])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])
    w = helper.make_tensor("w", TensorProto.FLOAT, [6, 5], np.ones(30, dtype=np.float32).tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                              "g", [a], [out], [w])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert compute_floor.graph_flops(path, {"a": np.zeros((7, 6), dtype=np.float32)}) == 2 * 7 * 5 * 6


def test_compute_floor_of_the_built_in_model(capsys):
    result = compute_floor.compute_floor(steps=3)
    parts = 3 * result["unet_call_gflop"] + result["vae_decode_gflop"] + 2 * result["text_encoder_gflop"]
    assert result["unet_call_gflop"] > 0 and abs(result["image_gflop"] - parts) < 0.01
    assert result["peak_gflops"] == max(result["peak_wall_gflops"], result["peak_cpu_time_gflops"]) > 0
    assert abs(result["floor_s"] - result["image_gflop"] / result["peak_gflops"]) < 0.002
    assert "GFLOP" in compute_floor.table(result)


def test_engine_ab_compares_lanes_with_whole_calls_bit_for_bit(capsys):
    assert engine_ab.main(["--images", "1", "--steps", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["identical_image_and_maps"] is True
    assert set(result["variants"]) == {"ATTUNE_ORT_CFG_LANES=0", "default"}
    assert all(len(v["wall_s"]) == 1 and v["cpu_median_s"] > 0 for v in result["variants"].values())


def test_engine_ab_params_compare_generate_settings(capsys):
    assert engine_ab.main(["--images", "1", "--steps", "3", "--params", "steps=2,scheduler=dpm++", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] == {"steps": 2, "scheduler": "dpm++"} and result["identical_image_and_maps"] is None
    assert set(result["variants"]) == {"steps=2,scheduler=dpm++", "steps=3"}


def test_app_ab_summary_pools_each_variants_clicks_over_rounds():
    def run(variant, clicks, cpu, load):
        return {"variant": variant, "generate_s": clicks, "generate_cpu_s": cpu, "load_average": [load, 0, 0]}

    runs = {"onnx (round 1)": run("onnx", [0.5, 0.7], [0.8, 0.9], 1.0),
            "onnx X=0 (round 1)": run("onnx X=0", [0.9], [1.1], 2.0),
            "onnx (round 2)": run("onnx", [0.6], [0.7], 3.0)}
    summary = app.ab_summary(runs)
    assert summary["onnx"]["generate_s"] == [0.5, 0.7, 0.6] and summary["onnx"]["generate_median_s"] == 0.6
    assert summary["onnx"]["generate_cpu_median_s"] == 0.8 and summary["onnx"]["load_average"] == [1.0, 3.0]
    assert summary["onnx X=0"]["generate_median_s"] == 0.9
    assert "| onnx X=0 | 0.90 s | 1.10 s | 1 | 2.0 |" in app.ab_table(summary)
