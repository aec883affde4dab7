import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from engine.errors import AttuneError
from engine.study.pngmeta import parameters_text, parse_parameters, png_bytes, read_png, read_version, write_png
from engine.study.versions import Version


def image(w=24, h=16):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def sample_version():
    return Version(prompt="a wolf, (full moon:1.3)", negative_prompt="blurry, dark", seed=7, steps=20, guidance=7.5,
                   scheduler="ddim", width=24, height=16, weights={"moon": 1.5, "full moon": 0.5},
                   weight_mode="prob", model_hash="abc123", model_id="/models/tiny-scenes", backend="torch",
                   participant_id="p1", session_id="s1", timings={"total": 0.2}, unet_graph="0123456789abcdef")


def test_round_trip_prefers_json(tmp_path):
    v = sample_version()
    img = image()
    path = write_png(tmp_path / "v.png", img, v)
    back_img, back = read_png(path)
    assert back == v
    assert np.array_equal(np.asarray(back_img), np.asarray(img))
    assert read_version(path.read_bytes()) == v


def test_parameters_text_is_a1111_style():
    text = parameters_text(sample_version())
    lines = text.split("\n")
    assert lines[0] == "a wolf, (full moon:1.3)"
    assert lines[1] == "Negative prompt: blurry, dark"
    assert lines[2].startswith("Steps: 20, Sampler: DDIM, CFG scale: 7.5, Seed: 7, Size: 24x16, Model hash: abc123")
    assert 'Attune weights: "{\\"full moon\\": 0.5, \\"moon\\": 1.5}"' in lines[2]


def test_parameters_only_png_is_parsed_back():
    v = sample_version()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters_text(v))
    buffer = io.BytesIO()
    image().save(buffer, format="PNG", pnginfo=info)
    back = read_version(buffer.getvalue())
    for field in ("prompt", "negative_prompt", "seed", "steps", "guidance", "scheduler", "width", "height",
                  "weights", "weight_mode", "model_hash", "backend"):
        assert getattr(back, field) == getattr(v, field), field


def test_real_a1111_text():
    text = ("masterpiece, (wolf:1.2)\nsitting under the moon\nNegative prompt: lowres\n"
            "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 6, Seed: 123456, Size: 512x768, "
            'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "a: 1, b: 2", Version: v1.6.0')
    fields = parse_parameters(text)
    assert fields["prompt"] == "masterpiece, (wolf:1.2)\nsitting under the moon"
    assert fields["negative_prompt"] == "lowres"
    assert (fields["steps"], fields["seed"], fields["guidance"]) == (30, 123456, 6.0)
    assert (fields["width"], fields["height"], fields["scheduler"]) == (512, 768, "dpm++")
    assert fields["model_hash"] == "6ce0161689" and fields["syntax"] == "a1111"


def test_unicode_prompt(tmp_path):
    v = Version(prompt="mond über dem see 🌕", width=24, height=16)
    back = read_version(write_png(tmp_path / "u.png", image(), v))
    assert back.prompt == v.prompt


def test_bad_pngs(tmp_path):
    with pytest.raises(AttuneError, match="No such image file"):
        read_png(tmp_path / "missing.png")
    (tmp_path / "fake.png").write_bytes(b"not an image")
    with pytest.raises(AttuneError, match="is not a readable image"):
        read_png(tmp_path / "fake.png")
    buffer = io.BytesIO()
    image().save(buffer, format="JPEG")
    with pytest.raises(AttuneError, match="Expected a PNG image, got JPEG"):
        read_png(buffer.getvalue())
    buffer = io.BytesIO()
    image().save(buffer, format="PNG")
    with pytest.raises(AttuneError, match="carries no Attune or A1111 parameters"):
        read_png(buffer.getvalue())
