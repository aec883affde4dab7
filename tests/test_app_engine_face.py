"""The engine functions the app uses through `from engine import ...`: one rule each for weights, words, masks."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image


def test_the_app_layer_imports_the_engine_only_through_its_face():
    import ast
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    for path in [repo / "Home.py", *sorted((repo / "pages").glob("*.py")), *sorted((repo / "ui").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("engine."), (path.name, node.module)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("engine.") for a in node.names), path.name


def test_normalize_weights_rounds_and_drops_unchanged_words():
    from engine import normalize_weights

    assert normalize_weights({"moon": 1.504, "sky": 1.0, "wolf": 0.999, "night": 0.5}) == {"moon": 1.5, "night": 0.5}
    assert normalize_weights(None) == {}


def test_display_words_once_each_first_spelling_no_punctuation():
    from engine.words.prompt import WordTokens

    tokens = WordTokens(text="", words=["A", "Moon", ",", "moon", "sky", "'"], token_indices=[[1]] * 6,
                        input_ids=[], token_weights=[])
    assert tokens.display_words() == ["A", "Moon", "sky"]


def test_one_alpha_rule_for_mask_files_and_canvas_strokes():
    from engine import AttuneError, mask_array, strokes_mask
    from engine.sampling.masks import ALPHA_DRAWN

    layer = np.zeros((4, 4, 4), np.uint8)
    layer[0, :, 3] = 128           # a semi-transparent stroke: drawn
    layer[1, :, 3] = ALPHA_DRAWN   # a faint fringe: not drawn
    buffer = io.BytesIO()
    Image.fromarray(layer, "RGBA").save(buffer, format="PNG")
    from_file = mask_array(buffer.getvalue(), (4, 4))
    from_canvas = strokes_mask(layer, (4, 4))  # black strokes count as brush (not white eraser)
    assert (from_file == from_canvas).all() and from_file[0].all() and not from_file[1:].any()
    with pytest.raises(AttuneError, match="empty"):
        mask_array(np.zeros((4, 4), bool), (4, 4))


def test_the_exporter_is_handed_in_from_outside_the_engine(tiny_model_dir, tmp_path, monkeypatch):
    """Export on first use is a hook the app and the CLI pass to the engine; engine/ never imports export/."""
    from engine import Attune, AttuneError
    from tests.onnx_support import exported

    monkeypatch.setenv("ATTUNE_CACHE", str(tmp_path))  # no cached export: the model has no graphs yet
    with pytest.raises(AttuneError, match="no ONNX graphs yet"):
        Attune(tiny_model_dir, backend="onnx")
    calls = []

    def export(components, progress=None):
        calls.append(components.weights_hash)
        return exported(tiny_model_dir)

    engine = Attune(tiny_model_dir, backend="onnx", export=export)
    assert engine.backend_name == "onnx" and calls == [engine.weights_hash]
    engine.close()
