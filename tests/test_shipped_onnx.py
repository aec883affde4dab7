"""The built-in model's ONNX graphs ship in models/tiny-scenes/onnx/ and must belong to the weights beside them:
after new weights, `python -m export.onnx --model models/tiny-scenes --ship` regenerates them."""
from __future__ import annotations

import pytest

from engine.model.loading import default_model_path, weights_hash
from engine.model.onnx_files import OPTIONAL_PARTS, PARTS, read_manifest, shipped_dir

pytestmark = pytest.mark.light

SHIP = "python -m export.onnx --model models/tiny-scenes --ship"


@pytest.fixture(scope="module")
def model():
    path = default_model_path()
    if not (path / "unet").is_dir():
        pytest.skip(f"the built-in model is missing ({path})")
    return path


def test_shipped_graphs_match_the_weights(model):
    manifest = read_manifest(shipped_dir(model))  # complete: every listed file exists with its recorded size
    assert manifest["weights_hash"] == weights_hash(model), (
        f"models/tiny-scenes/onnx/ was exported from other weights: run `{SHIP}` and commit the result")


def test_shipped_graphs_cover_every_unet(model):
    manifest = read_manifest(shipped_dir(model))
    expected = set(PARTS) | {p for p in OPTIONAL_PARTS if (model / p / "config.json").is_file()}
    assert set(manifest["parts"]) == expected, f"run `{SHIP}`"


def test_shipped_graphs_stay_small(model):
    """The shipped graphs read their weights from the safetensors beside them (export/share_weights.py): shipping
    them adds their structure only, not a second copy of the weights."""
    manifest = read_manifest(shipped_dir(model))
    weights = sum(p.stat().st_size for p in model.rglob("*.safetensors"))
    graphs = sum(manifest["files"].values())
    assert graphs <= 0.1 * weights, (graphs, weights)
    assert set(manifest["shared_weights"]) == set(manifest["files"]), "every shipped graph shares the weights"
