"""A model folder that ships unet_inpaint/ (9 channels) inpaints with it; generation keeps the base UNet."""
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.errors import AttuneError
from engine.model import load_components
from engine.pipeline import Attune, GenerateParams, InpaintParams
from tests.tiny_model import add_inpaint_unet, build_tiny_model


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
