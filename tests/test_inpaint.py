"""Inpainting: 4-channel latent blending + paste-back, only-masked crops, 9-channel UNets, refusals."""
import numpy as np
import pytest

from engine.errors import AttuneError
from engine.pipeline.attune import Attune, GenerateParams, InpaintParams
from engine.sampling.loop import auto_crop_padding, crop_region, feather_alpha, paste_back

PROMPT = "a painting of a wolf sitting in front of the full moon , night sky"


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Attune(tiny_model_dir, backend="torch")


@pytest.fixture(scope="module")
def engine9(tiny_inpaint_model_dir):
    return Attune(tiny_inpaint_model_dir, backend="torch")


@pytest.fixture(scope="module")
def base_image(engine):
    return engine.generate(GenerateParams(PROMPT, seed=1, steps=2, width=64, height=48)).image


def _mask(h=48, w=64, box=(16, 8, 40, 32)):
    m = np.zeros((h, w), dtype=bool)
    x1, y1, x2, y2 = box
    m[y1:y2, x1:x2] = True
    return m


def IP(image, mask, **kw):
    base = kw.pop("base", GenerateParams("misty forest", seed=5, steps=3))
    return InpaintParams(base=base, image=image, mask=mask, **kw)


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm++"])
def test_inpaint_changes_only_inside(engine, base_image, scheduler):
    mask = _mask()
    base = GenerateParams("misty forest", seed=5, steps=3, scheduler=scheduler)
    r = engine.inpaint(IP(base_image, mask, base=base, mask_blur=4, auto_crop=False))  # the whole-image blend
    assert "crop_box" not in r.info
    before, after = np.asarray(base_image), np.asarray(r.image)
    assert after.shape == before.shape
    assert np.array_equal(after[~mask], before[~mask])  # DESIGN §1: outside the mask is bit-identical
    assert not np.array_equal(after[mask], before[mask])
    assert r.maps.latent_hw == (6, 8) and r.maps.counts.sum() == 3
    assert r.word_tokens.words == ["misty", "forest"]


def test_inpaint_deterministic(engine, base_image):
    a = engine.inpaint(IP(base_image, _mask()))
    b = engine.inpaint(IP(base_image, _mask()))
    assert a.image.tobytes() == b.image.tobytes()


def test_blur_zero_is_a_hard_edge(engine, base_image):
    mask = _mask()
    r = engine.inpaint(IP(base_image, mask, mask_blur=0))
    assert np.array_equal(np.asarray(r.image)[~mask], np.asarray(base_image)[~mask])


def test_only_masked(engine, base_image):
    mask = _mask(box=(40, 30, 52, 40))
    r = engine.inpaint(IP(base_image, mask, only_masked=True, padding=4, mask_blur=2))
    x1, y1, x2, y2 = r.info["crop_box"]
    assert x1 <= 36 and y1 <= 26 and x2 >= 56 and y2 >= 44  # the box plus padding, inside the image
    assert (x2 - x1) / (y2 - y1) == pytest.approx(64 / 48, rel=0.1)  # grown to the processing aspect ratio
    before, after = np.asarray(base_image), np.asarray(r.image)
    assert np.array_equal(after[~mask], before[~mask])
    assert not np.array_equal(after[mask], before[mask])
    # Maps cover the crop; heatmaps come back in full-image coordinates, zero outside the crop.
    assert r.maps.region == (x1, y1, x2, y2)
    heat = r.maps.word_heatmap(r.word_tokens, "forest")
    assert heat.shape == (48, 64) and heat[:y1].max(initial=0) == 0 and heat[:, :x1].max(initial=0) == 0


def test_auto_crop(engine, base_image):
    """A small mask works only-masked by default, with at least the box's own size of context around it."""
    mask = _mask(box=(8, 8, 24, 20))  # 16x12 px in a 64x48 image
    r = engine.inpaint(IP(base_image, mask, padding=4))
    assert r.info["auto_crop"] is True and r.info["only_masked"] is True
    x1, y1, x2, y2 = r.info["crop_box"]
    assert (x1, y1) == (0, 0) and x2 >= 24 + 16 and y2 >= 20 + 16  # padding raised to the box's longer side (16)
    assert r.maps.region == (x1, y1, x2, y2)
    before, after = np.asarray(base_image), np.asarray(r.image)
    assert np.array_equal(after[~mask], before[~mask])
    assert not np.array_equal(after[mask], before[mask])
    plain = engine.inpaint(IP(base_image, mask, padding=4, auto_crop=False))
    assert "crop_box" not in plain.info and plain.image.tobytes() != r.image.tobytes()
    big = engine.inpaint(IP(base_image, _mask(box=(8, 4, 48, 44))))  # wider than half the image: no crop
    assert "crop_box" not in big.info and big.info["only_masked"] is False


def test_nine_channel_unet(engine9, base_image):
    assert engine9.components.unet_in_channels == 9
    mask = _mask()
    r = engine9.inpaint(IP(base_image, mask, mask_blur=2, auto_crop=False))
    before, after = np.asarray(base_image), np.asarray(r.image)
    assert np.array_equal(after[~mask], before[~mask])
    assert not np.array_equal(after[mask], before[mask])
    r2 = engine9.inpaint(IP(base_image, mask, only_masked=True))
    assert r2.image.size == base_image.size
    assert np.array_equal(np.asarray(r2.image)[~mask], before[~mask])


def test_mask_formats(engine, base_image):
    mask = _mask()
    as_u8 = mask.astype(np.uint8) * 255
    as_rgb = np.repeat(as_u8[..., None], 3, axis=-1)
    a = engine.inpaint(IP(base_image, mask)).image.tobytes()
    assert engine.inpaint(IP(base_image, as_u8)).image.tobytes() == a
    assert engine.inpaint(IP(base_image, as_rgb)).image.tobytes() == a


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(mask=np.zeros((48, 64), dtype=bool)), "mask is empty"),
        (dict(mask=np.ones((32, 32), dtype=bool)), "mask is 32x32 but the image is 64x48"),
        (dict(mask=np.ones((2, 48, 64, 1), dtype=bool)), "mask must be 2-D"),
        (dict(mask_blur=-1), "mask blur must be between 0 and 64"),
        (dict(padding=10_000), "padding must be between 0 and 512"),
        (dict(only_masked="no"), "only_masked must be true or false"),
        (dict(auto_crop=1), "auto_crop must be true or false"),
        (dict(image="picture.png"), "must be a PIL image"),
        (dict(base=GenerateParams("")), "prompt is empty"),
        (dict(base=GenerateParams("misty forest", weights={"moon": 2.0})), "'moon' is not in the prompt"),
    ],
)
def test_inpaint_refusals(engine, base_image, kw, message):
    params = dict(image=base_image, mask=_mask())
    params.update(kw)
    with pytest.raises(AttuneError, match=message):
        engine.inpaint(IP(**params))


def test_size_not_multiple_of_vae_factor(engine, base_image):
    odd = base_image.crop((0, 0, 61, 45))
    mask = np.zeros((45, 61), dtype=bool)
    mask[10:20, 10:20] = True
    with pytest.raises(AttuneError, match="multiples of 8"):
        engine.inpaint(IP(odd, mask))
    r = engine.inpaint(IP(odd, mask, only_masked=True, mask_blur=1))  # only-masked works at any size
    assert r.image.size == (61, 45)
    assert np.array_equal(np.asarray(r.image)[~mask], np.asarray(odd)[~mask])


def test_helpers():
    mask = _mask()
    alpha = feather_alpha(mask, 3)
    assert alpha.max() == 1 and alpha[~mask].max() == 0 and alpha[20, 28] == 1  # feathered inside the mask only
    edge = alpha[20, 16:22]  # from the mask's left edge inwards: rises over 2·blur px, never 0 inside
    assert 0 < edge[0] < 0.1 and np.all(np.diff(edge) > 0) and edge[-1] == 1
    assert np.array_equal(feather_alpha(mask, 0), mask.astype(np.float32))
    thin = _mask(box=(10, 10, 12, 40))  # thinner than the feather: still reaches 1 in its middle
    assert feather_alpha(thin, 8).max() == 1 and feather_alpha(thin, 8)[~thin].max() == 0
    orig = np.zeros((48, 64, 3), np.uint8)
    gen = np.full((48, 64, 3), 200, np.uint8)
    out = paste_back(orig, gen, alpha)
    assert out[0, 0, 0] == 0 and out[20, 28, 0] == 200
    assert crop_region(_mask(box=(0, 0, 4, 4)), 2, (64, 48)) == (0, 0, 8, 6)
    assert auto_crop_padding(_mask(box=(8, 8, 24, 20)), 4) == 16 and auto_crop_padding(_mask(box=(8, 8, 24, 20)), 20) == 20
    assert auto_crop_padding(_mask(box=(0, 0, 33, 10)), 4) is None and auto_crop_padding(_mask(box=(0, 0, 10, 25)), 4) is None
    x1, y1, x2, y2 = crop_region(_mask(box=(60, 44, 64, 48)), 0, (64, 48))
    assert x2 == 64 and y2 == 48 and x1 >= 0 and y1 >= 0


def test_mask_from_word_then_inpaint(engine):
    """DESIGN §1 step 4: mask from a word's heatmap, then inpaint inside it only."""
    r = engine.generate(GenerateParams(PROMPT, seed=7, steps=2, width=64, height=48))
    default = r.maps.mask_from_word(r.word_tokens, "sky")  # mean threshold + one latent cell of dilation
    assert default.shape == (48, 64) and default.dtype == bool and default.any()
    mask = r.maps.mask_from_word(r.word_tokens, "sky", threshold=0.8, dilate=0)  # the random model's maps are noisy
    assert 0 < mask.sum() < default.sum()
    out = engine.inpaint(IP(r.image, mask, mask_blur=0))
    assert np.array_equal(np.asarray(out.image)[~mask], np.asarray(r.image)[~mask])
