"""Interop check: an Attune export folder loads in optimum's ORTStableDiffusionPipeline and makes an image.

optimum-onnx pins transformers < 4.58 (Attune pins 5.x), so this runs in its own venv, never in Attune's:

    python -m venv /tmp/optimum-venv
    /tmp/optimum-venv/bin/pip install "optimum-onnx[onnxruntime]" diffusers
    /tmp/optimum-venv/bin/python export/check_optimum.py models/tiny-scenes [OUT.png]

The folder is a diffusers model folder with Attune's graphs in `onnx/` (python -m export.onnx --ship). The check
assembles optimum's layout (configs, tokenizer and scheduler from the model folder, graphs from onnx/) in a temp
folder of links (the graphs made self-contained, as optimum's ORT cannot read the weights they share with the
safetensors), loads it, and generates one 128 px image without maps (optimum knows nothing of them; the UNet's
key_scale/value_scale inputs default to ones). Prints one JSON line.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this folder is sys.path[0], and its onnx.py would shadow the `onnx` package optimum imports.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for export.share_weights

from export.share_weights import materialize  # noqa: E402  (needs only onnx and numpy)


def assemble(model: Path, target: Path) -> Path:
    """optimum's layout: model_index.json, scheduler/, tokenizer/, and each part's config.json beside its model.onnx."""
    graphs = model / "onnx"
    (target / "model_index.json").symlink_to((model / "model_index.json").resolve())
    for name in ("scheduler", "tokenizer"):
        (target / name).symlink_to((model / name).resolve())
    configs = {"unet": "unet", "text_encoder": "text_encoder", "vae_encoder": "vae", "vae_decoder": "vae"}
    for part, config_dir in configs.items():
        (target / part).mkdir()
        for f in (graphs / part).iterdir():
            if f.name == "model.onnx":  # shipped graphs read the weights from the safetensors: a whole copy
                materialize(f, target / part / f.name)
            elif f.name != "model_maps.onnx":
                (target / part / f.name).symlink_to(f.resolve())
        (target / part / "config.json").symlink_to((model / config_dir / "config.json").resolve())
    return target


def main(argv: list[str]) -> int:
    model = Path(argv[0] if argv else "models/tiny-scenes").resolve()
    out_png = Path(argv[1]) if len(argv) > 1 else None
    import optimum
    from optimum.onnxruntime.modeling_diffusion import ORTStableDiffusionPipeline  # the package's lazy import fails

    with tempfile.TemporaryDirectory() as tmp:
        folder = assemble(model, Path(tmp))
        start = time.perf_counter()
        pipe = ORTStableDiffusionPipeline.from_pretrained(str(folder))
        loaded = time.perf_counter() - start
        start = time.perf_counter()
        image = pipe("a painting of a wolf sitting in front of the full moon, night sky", num_inference_steps=20,
                     height=128, width=128, guidance_scale=7.5).images[0]
        took = time.perf_counter() - start
    if out_png is not None:
        image.save(out_png)
    import numpy as np

    pixels = np.asarray(image)
    print(json.dumps({"ok": True, "optimum": getattr(optimum, "__version__", "?"), "size": list(image.size),
                      "load_s": round(loaded, 2), "image_s": round(took, 2), "pixel_std": float(pixels.std())}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
