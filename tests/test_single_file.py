"""Single-file .safetensors checkpoints (engine/model/single_file.py): read by diffusers' single-file loader with a
local config folder, and the image equals the one the diffusers folder makes at the same seed."""
import json
import shutil

import numpy as np
import pytest

from engine.errors import AttuneError
from engine.pipeline.attune import Attune
from engine.pipeline.params import GenerateParams
from tests.tiny_model import build_sd_model, to_single_file

PARAMS = GenerateParams(prompt="a wolf under the moon", seed=5, steps=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(diffusers folder, the same weights as one original-layout .safetensors file in another folder)."""
    root = tmp_path_factory.mktemp("single")
    folder = build_sd_model(root / "sd")
    (root / "downloads").mkdir()
    return folder, to_single_file(folder, root / "downloads" / "model.safetensors")


def image_of(model):
    engine = Attune(model, backend="torch")
    try:
        return engine, np.asarray(engine.generate(PARAMS).image)
    finally:
        engine.close()


def test_single_file_gives_the_folders_image(checkpoint):
    from engine.model.single_file import resolve

    folder, file = checkpoint
    resolve(file, folder)  # --config FOLDER
    engine, from_file = image_of(file)
    _, from_folder = image_of(folder)
    assert np.array_equal(from_file, from_folder)
    assert engine.model_id == str(file) and engine.model_defaults.width == 64  # its family's defaults


def test_cli_reads_a_single_file_with_config(checkpoint, tmp_path, capsys):
    from engine.cli import main

    folder, file = checkpoint
    copy = tmp_path / "copy.safetensors"  # a file not converted before
    shutil.copy(file, copy)
    code = main(["generate", "--prompt", PARAMS.prompt, "--seed", "5", "--steps", "3", "--model", str(copy),
                 "--config", str(folder), "--backend", "torch", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    record = json.loads(out)
    assert record["model_id"] == str(copy) and record["width"] == 64
    _, from_folder = image_of(folder)
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(record["image_path"]).convert("RGB")), from_folder)


def test_attune_json_next_to_the_file_names_the_config(checkpoint, tmp_path):
    folder, file = checkpoint
    (tmp_path / "model.safetensors").write_bytes(file.read_bytes())
    (tmp_path / "attune.json").write_text(json.dumps({"config": str(folder), "guidance": 6}))
    engine, image = image_of(tmp_path / "model.safetensors")
    assert engine.model_defaults.guidance == 6.0 and engine.model_defaults.sources["guidance"] == "attune.json"


def test_without_a_config_it_says_what_to_pass(checkpoint, tmp_path):
    _, file = checkpoint
    fresh = tmp_path / "fresh.safetensors"
    shutil.copy(file, fresh)
    with pytest.raises(AttuneError) as info:
        Attune(fresh, backend="torch")
    message = str(info.value)
    assert "--config FOLDER" in message and "attune.json" in message and "\n" not in message


@pytest.mark.parametrize("suffix", [".ckpt", ".pt"])
def test_pickle_checkpoints_are_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(AttuneError) as info:
        Attune(path, backend="torch")
    assert "pickle" in str(info.value) and "\n" not in str(info.value)


def test_cli_refuses_config_for_a_folder(checkpoint, tmp_path, capsys):
    from engine.cli import main

    folder, _ = checkpoint
    code = main(["generate", "--prompt", "a wolf", "--model", str(folder), "--config", str(folder),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr()[1]
    assert code != 0 and "--config is for a single-file" in err and err.count("\n") == 1
