"""A model folder that ships unet_inpaint/ (9 channels) inpaints with it; generation keeps the base UNet."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.errors import AttuneError
from engine.model.loading import load_components
from engine.pipeline.attune import Attune
from engine.pipeline.params import GenerateParams, InpaintParams
from tests.tiny_model import add_inpaint_unet, build_tiny_model

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return add_inpaint_unet(build_tiny_model(tmp_path_factory.mktemp("tiny-with-inpaint-unet")))


@pytest.fixture(scope="module")
def engine(folder):
    return Attune(folder, backend="torch")


def _calls(unet):
    """Record the input channel count of every call of this UNet."""
    seen = []
    handle = unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(args[0].clone()), with_kwargs=True)
    return seen, handle


def _inpaint(engine, image, mask, **kw):
    base = GenerateParams("misty forest", seed=5, steps=2)
    return engine.inpaint(InpaintParams(base=base, image=image, mask=mask, **kw))


def _mask():
    m = np.zeros((48, 64), dtype=bool)
    m[8:32, 16:40] = True
    return m


def test_loads_the_inpaint_unet_only_when_present(folder, tiny_model_dir):
    assert load_components(tiny_model_dir).inpaint_unet is None
    comps = load_components(folder)
    assert comps.has_inpaint_unet and comps.inpaint_unet.config.in_channels == 9
    assert comps.unet_in_channels == 4
    assert comps.weights_hash != load_components(tiny_model_dir).weights_hash  # the hash covers the second UNet


def test_inpaint_routes_to_the_9_channel_unet_in_sd_order(engine):
    comps = engine.components
    image = engine.generate(GenerateParams("a wolf", seed=1, steps=2, width=64, height=48))
    base_calls, h1 = _calls(comps.unet)
    inpaint_calls, h2 = _calls(comps.inpaint_unet)
    mask = _mask()
    try:
        r = _inpaint(engine, image.image, mask, auto_crop=False, mask_blur=0)
    finally:
        h1.remove(), h2.remove()
    assert r.info["unet"] == "inpaint-9ch" and r.backend == "torch" and r.fallback_reason is None
    assert not base_calls and len(inpaint_calls) == 2  # two steps, the base UNet never ran
    x = inpaint_calls[0]
    assert x.shape[1] == 9
    # channel 4: the mask at latent size (nearest); 5..8: the masked image's latents, the same in every step
    expected_mask = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=x.shape[-2:])
    assert torch.equal(x[:1, 4:5], expected_mask)
    assert torch.equal(inpaint_calls[0][:, 4:], inpaint_calls[1][:, 4:])
    before, after = np.asarray(image.image), np.asarray(r.image)
    assert np.array_equal(after[~mask], before[~mask]) and not np.array_equal(after[mask], before[mask])


def test_without_inpaint_unet_the_base_unet_blends(tiny_model_dir):
    engine = Attune(tiny_model_dir, backend="torch")
    image = engine.generate(GenerateParams("a wolf", seed=1, steps=2, width=64, height=48)).image
    r = _inpaint(engine, image, _mask(), auto_crop=False)
    assert r.info["unet"] == "base"


def test_other_backends_inpaint_on_pytorch_and_say_so(folder):
    engine = Attune(folder, backend="torch")

    class OtherBackend:  # stands in for a runner of another backend (the inpaint UNet has no graph there)
        name, in_channels = "onnx", 4

        def __call__(self, *a, **k):
            raise AssertionError("inpainting must not run on the base runner")

    image = engine.generate(GenerateParams("a wolf", seed=1, steps=2, width=64, height=48)).image
    engine.runner = OtherBackend()
    r = _inpaint(engine, image, _mask())
    assert r.backend == "torch" and r.info["unet"] == "inpaint-9ch"
    assert "inpainting UNet has no onnx graph" in r.fallback_reason


def test_a_wrong_inpaint_unet_is_refused(tmp_path):
    folder = add_inpaint_unet(build_tiny_model(tmp_path / "m"), in_channels=4)
    with pytest.raises(AttuneError, match="9-channel inpainting UNet"):
        load_components(folder)
    for f in (folder / "unet_inpaint").glob("*.safetensors"):
        f.unlink()
    (folder / "unet_inpaint" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(AttuneError, match="no \\*.safetensors"):
        load_components(folder)
    shutil.rmtree(folder / "unet_inpaint")
    assert load_components(folder).inpaint_unet is None


# ---------------------------------------------------------------------------------------------- ONNX Runtime
_LIGHT_INPAINT = """
import json, sys
for _m in ('torch', 'diffusers', 'transformers'):
    sys.modules[_m] = None
import numpy as np
from PIL import Image
from engine.model.onnx_components import load_onnx_components
from engine.pipeline.attune import Attune
from engine.pipeline.params import GenerateParams, InpaintParams

folder, full, stripped = sys.argv[1:4]
image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
mask = np.zeros((48, 64), dtype=bool)
mask[8:32, 16:40] = True
out = {}
for name, export in (("full", full), ("stripped", stripped)):
    engine = Attune(components=load_onnx_components(folder, export_dir=export), backend="onnx")
    r = engine.inpaint(InpaintParams(base=GenerateParams("misty forest", seed=5, steps=2), image=image, mask=mask))
    out[name] = [r.backend, r.info["unet"], r.fallback_reason]
heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if sys.modules.get(m) is not None)
print("LIGHT_INPAINT " + json.dumps({"runs": out, "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def onnx_export(folder, onnx_cache):
    from tests.onnx_support import exported

    return exported(folder)


def test_onnx_runs_the_inpaint_unet_graph_and_matches_pytorch(folder, onnx_export, engine):
    from engine.runners.onnx import OnnxUNetRunner
    from tests.test_onnx_runner import IMAGE_TOL, _image_diff

    assert "unet_inpaint" in json.loads((onnx_export / "attune_onnx.json").read_text())["parts"]
    onnx_engine = Attune(folder, backend="onnx")
    try:
        image = engine.generate(GenerateParams("a wolf", seed=1, steps=2, width=64, height=48)).image
        base = GenerateParams("night sky", seed=5, steps=3, weights={"sky": 0.5}, weight_mode="prob")
        params = InpaintParams(base=base, image=image, mask=_mask(), mask_blur=2)
        got, expected = onnx_engine.inpaint(params), engine.inpaint(params)
        runner = onnx_engine.backend.inpaint_runner
        assert isinstance(runner, OnnxUNetRunner) and runner.in_channels == 9 and onnx_engine.runner.in_channels == 4
        assert got.backend == "onnx" and got.info["unet"] == "inpaint-9ch" and got.fallback_reason is None
        assert onnx_engine.backend.torch is None  # the PyTorch inpainting UNet was never loaded
        assert expected.info["unet"] == "inpaint-9ch"
        assert _image_diff(got.image, expected.image) <= IMAGE_TOL
    finally:
        onnx_engine.close()


def test_onnx_failure_of_the_inpaint_graph_reruns_on_pytorch(folder, onnx_export, engine):
    onnx_engine = Attune(folder, backend="auto")  # only auto falls back; an explicit "onnx" raises
    try:
        image = engine.generate(GenerateParams("a wolf", seed=1, steps=2, width=64, height=48)).image
        first = _inpaint(onnx_engine, image, _mask())
        runner = onnx_engine.backend.inpaint_runner

        def broken(maps):
            raise RuntimeError("simulated ORT failure")

        runner.session = runner.lane_session = broken  # whole calls and CFG lanes
        r = _inpaint(onnx_engine, image, _mask())
        assert r.backend == "torch" and r.info["unet"] == "inpaint-9ch"
        assert "simulated ORT failure" in r.fallback_reason and "ran on PyTorch" in r.fallback_reason
        assert np.array_equal(np.asarray(r.image), np.asarray(_inpaint(engine, image, _mask()).image))
        assert first.backend == "onnx"
    finally:
        onnx_engine.close()


def test_light_runtime_inpaints_on_the_graph_without_torch(folder, onnx_export, tmp_path):
    """In a process where torch cannot be imported: the graph runs; without the graph, the blend says why."""
    stripped = tmp_path / "export"
    shutil.copytree(onnx_export, stripped)
    shutil.rmtree(stripped / "unet_inpaint")
    manifest = json.loads((stripped / "attune_onnx.json").read_text())
    manifest["parts"].remove("unet_inpaint")
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("unet_inpaint/")}
    (stripped / "attune_onnx.json").write_text(json.dumps(manifest))
    env = dict(os.environ, PYTHONPATH=str(REPO), ATTUNE_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", _LIGHT_INPAINT, str(folder), str(onnx_export), str(stripped)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("LIGHT_INPAINT ")][-1]
    result = json.loads(line[len("LIGHT_INPAINT "):])
    assert result["heavy"] == []
    assert result["runs"]["full"] == ["onnx", "inpaint-9ch", None]
    backend, unet, reason = result["runs"]["stripped"]
    assert backend == "onnx" and unet == "base"
    assert "inpainting UNet has no onnx graph and PyTorch is not installed" in reason and "\n" not in reason
