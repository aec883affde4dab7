"""bench/parity.py's comparison at a narrow width (SD-1.5's topology, every channel width / 8, one text layer):
Attune on both backends against diffusers' StableDiffusionPipeline with the same seed and latents, DDIM and Euler, and a
Turbo-style (trailing spacing, 1 step, no CFG) case. The full-width numbers are bench/results/parity.json."""
from __future__ import annotations

import json

import pytest

from bench.parity import Settings, run

MAX_PIXEL_DIFF = 2  # out of 255: the goal for DDIM and Euler on both backends


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    settings = Settings(families=("sd15",), schedulers=("ddim", "euler"), backends=("torch", "onnx"), size=32,
                        steps=2, turbo_steps=(1,), divisor=8, text_layers=1,
                        work=tmp_path_factory.mktemp("parity"))
    return run(settings)


def test_attune_matches_the_diffusers_pipeline_on_both_backends(report):
    labels = [row["case"] for row in report["rows"]]
    assert labels == ["sd15/ddim/2st", "sd15/euler/2st", "sd15/euler/1st/trailing", "sd15/ddim/1st/trailing"]
    for row in report["rows"]:
        for backend in ("torch", "onnx"):
            assert row[backend]["ran_on"] == backend, row  # no silent fallback
            assert row[backend]["max"] <= MAX_PIXEL_DIFF, row
        assert row["maps_torch_vs_onnx"]["max_rel_to_range"] <= 1e-3, row


def test_report_says_what_was_measured(report):
    assert report["widths"] == "SD widths / 8" and report["text_layers"] == {"sd15": 1}
    assert report["size_px"] == 32 and report["peak_rss_mb"] > 0
    assert report["max_pixel_diff"]["torch"] <= MAX_PIXEL_DIFF and report["max_pixel_diff"]["onnx"] <= MAX_PIXEL_DIFF
    assert {stage["stage"] for stage in report["stages"]} >= {"build sd15", "load sd15", "load sd15-turbo"}


def test_results_file_keeps_one_run_per_command(tmp_path):
    from bench.parity import command_line, save

    path = tmp_path / "parity.json"
    command = command_line(["--families", "sd15", "--work", str(tmp_path), "--out", str(path), "--json"])
    assert command == "python -m bench.parity --families sd15 --json"
    save({"what": "w", "command": command, "size_px": 64}, path)
    save({"what": "w", "command": "python -m bench.parity --divisor 4", "size_px": 128}, path)
    save({"what": "w", "command": command, "size_px": 32}, path)  # the same command again replaces its run
    runs = json.loads(path.read_text())["runs"]
    assert [(r["command"], r["size_px"]) for r in runs] == [("python -m bench.parity --divisor 4", 128), (command, 32)]


def test_sdxl_rows_and_the_maps_memory(tmp_path):
    """SDXL's real topology at widths / 16 (one text layer): StableDiffusionXLPipeline against Attune on both backends
    (ONNX with SDXL's second text encoder and added UNet inputs), CFG and Turbo-style, and the maps' memory record."""
    report = run(Settings(families=("sdxl",), schedulers=("ddim", "dpm++"), backends=("torch", "onnx"), size=64,
                          steps=1, turbo_steps=(1,), divisor=16, text_layers=1, maps_size=64, work=tmp_path))
    assert [row["case"] for row in report["rows"]] == ["sdxl/ddim/1st", "sdxl/euler/1st/trailing",
                                                       "sdxl/ddim/1st/trailing"]
    for row in report["rows"]:
        for backend in ("torch", "onnx"):
            assert row[backend]["ran_on"] == backend and row[backend]["max"] <= MAX_PIXEL_DIFF, row  # no fallback
        assert row["maps_torch_vs_onnx"]["max_abs"] <= 1e-5, row  # docs/onnx.md's map tolerance
    assert report["widths"] == "SDXL widths / 16" and report["text_2_layers"] == {"sdxl": 1}
    maps = report["sdxl_maps_memory"]
    assert maps["layers"] == 70 and maps["layers_by_resolution"] == {"4x4": 10, "2x2": 60}  # SDXL's attn2 layers
    assert maps["maps_mb"] > 0 and maps["step_buckets"] == 4
