"""bench/speed.py and bench/gpu_torch.py: they run end to end (tiny settings) and report what they promise."""

from __future__ import annotations

import json

import pytest
import torch

from bench import gpu_torch, speed
from tests.onnx_support import cache_dir


def test_speed_benchmark_smoke(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("ATTUNE_CACHE", str(cache_dir()))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # main() sets it; monkeypatch removes it again afterwards
    assert (
        speed.main(
            [
                "--json",
                "--model",
                str(tiny_model_dir),
                "--calls",
                "1",
                "--images",
                "1",
                "--steps",
                "1",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    for key in ("ort_vs_torch_unet_maps_on", "ort_vs_torch_unet_maps_off", "ort_vs_torch_image", "ort_maps_overhead",
                "ort_maps_overhead_loop"):
        assert isinstance(result[key], float)
    assert result["ort_vs_torch_unet_maps_on"] == pytest.approx(
        result["median_ms"]["torch_maps_on"] / result["median_ms"]["ort_maps_on"], rel=1e-2
    )
    assert result["machine"]["threads"] == 1 and result["machine"]["onnxruntime"]
    assert result["machine"]["omp_wait_policy"] == "PASSIVE"
    assert result["image_mean_abs_diff"] <= 1 / 255


def test_speed_benchmark_bad_input(capsys):
    assert speed.main(["--calls", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_gpu_benchmark_without_cuda_exits_cleanly(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the real benchmark would run")
    assert gpu_torch.main(["--json"]) == 0
    assert "no CUDA device" in json.loads(capsys.readouterr().out)["skipped"]


def test_gpu_benchmark_dry_run_on_cpu(capsys):
    assert gpu_torch.main(["--dry-run", "--json", "--calls", "1", "--warmup", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dry_run"] and result["map_layers"] == 4
    assert result["stock_processor"] == ["AttnProcessor2_0"]  # the SDPA baseline, not diffusers' slow default
    assert set(result["median_ms"]) == {
        "maps off (stock processors)",
        "maps off (Attune processor)",
        "maps on (Attune processor)",
        "maps on + score weight",
    }
