"""The light runtime (ONNX Runtime, no torch): the built-in model's shipped graphs serve generate, reweight,
inpaint, heatmap, log export and the app without importing torch, diffusers or transformers; what needs PyTorch
says so in one line. Marked `light`: .ci/light.sh runs these in a venv without torch."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.model.loading import default_model_path, weights_hash
from engine.model.onnx_files import find_export

pytestmark = pytest.mark.light

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers")
BLOCK = "import sys\nfor _m in ('torch', 'diffusers', 'transformers'):\n    sys.modules[_m] = None\n"


def _shipped() -> Path:
    path = default_model_path()
    folder = find_export(path, weights_hash(path)) if (path / "unet").is_dir() else None
    if folder is None or folder.parent != path:
        pytest.skip("the built-in model's shipped ONNX graphs are missing or stale (python -m export.onnx --ship)")
    return folder


def _env(tmp_path: Path, **extra) -> dict:
    env = dict(os.environ, ATTUNE_DATA_DIR=str(tmp_path / "app"), ATTUNE_CACHE=str(tmp_path / "cache"),
               ATTUNE_DEFAULT_STEPS="2", ATTUNE_BACKEND="auto", PYTHONPATH=str(REPO), **extra)
    env.pop("ATTUNE_MODEL", None)
    return env


def _run(args, env, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_light_path_imports_no_torch(tmp_path):
    """Generate, reweight, heatmap, mask, inpaint, log export and the app's example, in a fresh process."""
    _shipped()
    proc = _run(["-m", "tests.light_flow", str(tmp_path)], _env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("LIGHT_FLOW ")][-1]
    result = json.loads(line[len("LIGHT_FLOW "):])
    assert result["heavy"] == [], f"the light path imported {result['heavy']}"
    assert result["kinds"] == ["generate", "reweight", "inpaint"]
    assert result["backends"] == ["onnx"] * 3 and result["fallback"] is None
    assert result["images"] and result["heat"] == [0.0, 1.0] and result["mask_pixels"] > 0
    assert result["exports"] == ["log.zip", "versions.parquet"]
    assert result["app_ok"] and result["app_backend"] == "onnx"
    assert all(result["pages_ok"].values()), result["pages_ok"]
    assert result["app_versions"] == 2  # the example, then the Generate page's button


def test_cli_runs_without_torch(tmp_path):
    """The CLI's generate, heatmap, inpaint and log commands with torch, diffusers and transformers unimportable."""
    _shipped()
    env = _env(tmp_path)
    out = tmp_path / "out"

    def cli(*args):
        code = BLOCK + "from engine.cli import main\nsys.exit(main(sys.argv[1:]))\n"
        proc = _run(["-c", code, *map(str, args)], env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    record = json.loads(cli("generate", "--prompt", "a wolf in front of the full moon", "--steps", "2", "--seed", "3",
                            "--weight", "moon=1.5", "--out", out).strip().splitlines()[-1])
    assert record["backend"] == "onnx" and record["weights"] == {"moon": 1.5}
    png = Path(record["image_path"])
    heat = tmp_path / "heat.png"
    cli("heatmap", "--from", png, "--word", "moon", "--out", heat)
    assert Image.open(heat).size == (128, 128)
    mask = np.zeros((128, 128), dtype=np.uint8)
    mask[20:60, 70:110] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    inpainted = json.loads(cli("inpaint", "--from", png, "--mask", tmp_path / "mask.png", "--prompt", "a crescent moon",
                               "--steps", "2", "--out", out).strip().splitlines()[-1])
    assert inpainted["kind"] == "inpaint" and inpainted["backend"] == "onnx"
    cli("log", "--db", out / "attune.db", "--format", "csv", "--out", tmp_path / "log.zip")
    assert (tmp_path / "log.zip").is_file()


def test_what_needs_torch_says_so_in_one_line(tmp_path):
    """Without torch: the torch backend, exporting another model, and the fallback after an ORT failure each give
    one clear AttuneError line."""
    _shipped()
    other = tmp_path / "other-model"
    shutil.copytree(default_model_path(), other, ignore=shutil.ignore_patterns("onnx", ".attune_hash.json"))
    code = BLOCK + f"""
from engine.errors import AttuneError
from engine.pipeline.attune import Attune
from engine.pipeline.params import GenerateParams

def message(fn):
    try:
        fn()
    except AttuneError as e:
        return str(e)
    return "no error"

print("TORCH|" + message(lambda: Attune(backend="torch")))
print("EXPORT|" + message(lambda: Attune({str(other)!r}, backend="auto")))
engine = Attune(backend="auto")  # only auto falls back (an explicit "onnx" raises at once)
def broken(maps):
    raise RuntimeError("simulated ORT failure")
engine.runner.session = engine.runner.lane_session = broken  # whole calls and CFG lanes
print("FALLBACK|" + message(lambda: engine.generate(GenerateParams(prompt="a full moon", steps=1))))
from export.onnx import main
sys.stderr = sys.stdout
print("CLI|" + str(main(["--model", {str(other)!r}, "--out", {str(tmp_path / "x")!r}])))
"""
    proc = _run(["-c", code], _env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split("|", 1) for line in proc.stdout.splitlines() if "|" in line)
    assert "PyTorch backend cannot run" in lines["TORCH"] and "requirements-torch.txt" in lines["TORCH"]
    # a copy of the model without its onnx/ folder: the graphs would have to be exported (the cache is empty)
    assert "No ONNX graphs" in lines["EXPORT"] and "exporting them needs PyTorch" in lines["EXPORT"]
    assert "simulated ORT failure" in lines["FALLBACK"] and "PyTorch fallback cannot run" in lines["FALLBACK"]
    assert "error: Exporting ONNX graphs needs PyTorch" in proc.stdout and lines["CLI"] == "2"
    for line in lines.values():
        assert "\n" not in line and "Traceback" not in line
