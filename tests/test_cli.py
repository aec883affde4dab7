"""The CLI contract (docs/cli.md): JSON on stdout, one-line errors on stderr, non-zero exit codes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from engine.cli import main
from engine.study.pngmeta import read_png

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a wolf sitting in front of the full moon"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def generated(tiny_model_dir, tmp_path_factory):
    """One CLI generation shared by the tests below: (record, out dir, model dir)."""
    out = tmp_path_factory.mktemp("cli-out")
    code = main(["generate", "--prompt", PROMPT, "--seed", "7", "--steps", "3", "--size", "64x48",
                 "--weight", "moon=1.5", "--weight", "full moon=0.8", "--weight-mode", "prob",
                 "--model", str(tiny_model_dir), "--backend", "torch", "--out", str(out)])
    assert code == 0
    versions = pd.read_sql("SELECT * FROM versions", __import__("sqlite3").connect(out / "attune.db"))
    return versions.iloc[0].to_dict(), out, tiny_model_dir


def test_generate_prints_the_version(generated, capsys, tiny_model_dir, tmp_path):
    code, out, err = run(capsys, "generate", "--prompt", PROMPT, "--seed", "7", "--steps", "3", "--size", "64x48",
                         "--weight", "moon=1.5", "--weight", "full moon=0.8", "--weight-mode", "prob",
                         "--model", tiny_model_dir, "--backend", "torch", "--db", tmp_path / "other.db",
                         "--out", tmp_path / "again")
    assert code == 0
    record = json.loads(out)
    for key in ("id", "image_path", "seed", "backend", "weights", "weight_mode", "model_hash"):
        assert key in record
    assert (record["seed"], record["backend"], record["weight_mode"]) == (7, "torch", "prob")
    assert record["weights"] == {"moon": 1.5, "full moon": 0.8}
    assert (record["width"], record["height"]) == (64, 48)
    assert Path(record["image_path"]).parent == (tmp_path / "again").resolve()
    assert (tmp_path / "other.db").is_file()
    image, meta = read_png(record["image_path"])
    assert meta.id == record["id"] and image.size == (64, 48)
    # Same parameters, backend and machine: the same pixels as the shared generation.
    first, _, _ = generated
    assert np.array_equal(np.asarray(Image.open(first["image_path"])), np.asarray(image))


def test_inpaint_from_png(generated, capsys, tmp_path):
    record, out, model = generated
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:50] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    code, stdout, err = run(capsys, "inpaint", "--from", record["image_path"], "--mask", tmp_path / "mask.png",
                            "--prompt", "misty forest", "--seed", "3", "--out", tmp_path / "inp")
    assert code == 0, err
    v = json.loads(stdout)
    assert (v["kind"], v["inpaint_prompt"], v["seed"], v["steps"]) == ("inpaint", "misty forest", 3, 3)
    assert v["model_hash"] == record["model_hash"]  # the source PNG's model was used
    assert v["weights"] == {}  # moon / full moon are not in the inpaint prompt
    before = np.asarray(Image.open(record["image_path"]).convert("RGB")).astype(int)
    after = np.asarray(Image.open(v["image_path"]).convert("RGB")).astype(int)
    far = np.ones((48, 64), bool)
    far[0:44, 8:62] = False  # the mask plus its blur band (4 px blur)
    assert np.array_equal(before[far], after[far])


def test_inpaint_takes_the_box_as_typed(generated, capsys, tmp_path):
    record, out, model = generated
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:50] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    code, stdout, err = run(capsys, "inpaint", "--from", record["image_path"], "--mask", tmp_path / "mask.png",
                            "--prompt", "Replace with misty forest.", "--out", tmp_path / "inp")
    assert code == 0, err
    v = json.loads(stdout)
    assert (v["inpaint_typed"], v["inpaint_prompt"], v["unknown_words"]) == ("Replace with misty forest.", "misty forest", [])
    code, stdout, err = run(capsys, "inpaint", "--from", record["image_path"], "--mask", tmp_path / "mask.png",
                            "--prompt", "", "--out", tmp_path / "inp")
    assert code == 0, err
    v = json.loads(stdout)
    assert (v["inpaint_typed"], v["inpaint_prompt"], v["unet"]) == ("", "", "fill")
    code, stdout, err = run(capsys, "inpaint", "--from", record["image_path"], "--mask", tmp_path / "mask.png",
                            "--prompt", "replace with", "--out", tmp_path / "inp")
    assert code == 1 and stdout == "" and "does not say what to put in the mask" in err and len(err.splitlines()) == 1


def test_inpaint_from_png_without_metadata(capsys, tiny_model_dir, tmp_path):
    Image.new("RGB", (64, 48), (40, 80, 120)).save(tmp_path / "plain.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[:, 32:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    code, stdout, err = run(capsys, "inpaint", "--from", tmp_path / "plain.png", "--mask", tmp_path / "mask.png",
                            "--prompt", "misty forest", "--steps", "2", "--model", tiny_model_dir,
                            "--backend", "torch", "--out", tmp_path / "out")
    assert code == 0, err
    v = json.loads(stdout)
    assert (v["kind"], v["steps"], v["inpaint_prompt"]) == ("inpaint", 2, "misty forest")
    after = np.asarray(Image.open(v["image_path"]).convert("RGB")).astype(int)
    assert (after[:, :20] == (40, 80, 120)).all()  # left of the mask and its blur band: untouched


def test_heatmap(generated, capsys, tmp_path):
    record, out, model = generated
    code, stdout, err = run(capsys, "heatmap", "--from", record["image_path"], "--word", "moon",
                            "--out", tmp_path / "heat.png")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["word"] == "moon" and result["token_indices"] == [9]
    assert result["max"] >= result["mean"] > 0 and result["total"] > 0
    heat = np.asarray(Image.open(tmp_path / "heat.png"))
    assert heat.shape == (48, 64) and heat.max() == 255


def test_parse(capsys):
    code, out, err = run(capsys, "parse", "a (moon:1.3) [sky]")
    assert code == 0 and json.loads(out) == [["a ", 1.0], ["moon", 1.3], [" ", 1.0], ["sky", 1 / 1.1]]  # as A1111
    code, out, err = run(capsys, "parse", "moon++ (misty forest)0.5", "--syntax", "compel")
    assert json.loads(out) == [["moon", 1.1 ** 2], ["misty forest", 0.5]]  # Compel's fragments
    code, out, err = run(capsys, "parse", "(moon BREAK sky")
    assert json.loads(out) == [["moon", 1.1], ["BREAK", -1.1], ["sky", 1.1]] and "never closed" in err


def test_log_export(generated, capsys, tmp_path):
    record, out, model = generated
    code, stdout, err = run(capsys, "log", "--db", out / "attune.db", "--format", "parquet", "--out", tmp_path / "log.zip")
    assert code == 0 and json.loads(stdout)["versions"] == 1
    code, stdout, err = run(capsys, "log", "--db", out / "attune.db", "--format", "csv", "--out", tmp_path / "v.csv",
                            "--table", "versions")
    assert list(pd.read_csv(tmp_path / "v.csv")["id"]) == [record["id"]]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--prompt", "moon", "--out", "{tmp}/o", "--size", "12"], "--size must look like 512x512"),
        (["generate", "--prompt", "moon", "--out", "{tmp}/o", "--weight", "moon"], "--weight must look like WORD=1.5"),
        (["generate", "--prompt", "moon", "--out", "{tmp}/o", "--weight", "moon=big"], "--weight moon: 'big' is not a number"),
        (["generate", "--prompt", "moon", "--out", "{tmp}/o", "--weight", "moon=nan"], "the weight must be a finite number"),
        (["generate", "--prompt", "moon", "--out", "{tmp}/o", "--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
        (["generate", "--out", "{tmp}/o"], "the following arguments are required: --prompt"),
        (["paint"], "invalid choice: 'paint'"),
        (["generate", "--prompt", "moon", "--out", "{tmp}/o", "--model", "{tmp}/no-model"], "Model folder not found"),
        (["generate", "--prompt", "moon", "--out", "{tmp}/o", "--model", "{model}", "--backend", "cuda"],
         "Unknown backend 'cuda'"),
        (["generate", "--prompt", "moon", "--out", "{tmp}/o", "--model", "{model}", "--backend", "torch",
          "--weight", "zebra=2"], "'zebra' is not in the prompt; its words are: moon."),
        (["generate", "--prompt", "moon", "--out", "{tmp}/o", "--model", "{model}", "--backend", "torch",
          "--weight", "moon=4"], "The weight of 'moon' must be between 0 and 3, got 4"),
        (["generate", "--prompt", "moon", "--out", "{tmp}/o", "--model", "{model}", "--backend", "torch",
          "--size", "60x64"], "width must be a multiple of 8"),
        (["generate", "--prompt", "moon", "--out", "{tmp}/o", "--model", "{model}", "--backend", "torch",
          "--scheduler", "plms"], "Unknown scheduler 'plms'"),
        (["generate", "--prompt", "moon", "--out", "{tmp}/o", "--model", "{model}", "--backend", "torch",
          "--steps", "0"], "steps must be between 1 and"),
        (["generate", "--prompt", "  ", "--out", "{tmp}/o", "--model", "{model}", "--backend", "torch"],
         "The prompt is empty"),
        (["generate", "--prompt", "moon", "--out", "{tmp}/file.txt"], "--out must be a folder"),
        (["parse", "(moon)", "--syntax", "bbcode"], "Unknown prompt syntax 'bbcode'"),
        (["log", "--db", "{tmp}/none.db", "--format", "csv", "--out", "{tmp}/x.csv"], "No log database at"),
        (["log", "--db", "{db}", "--format", "xlsx", "--out", "{tmp}/x.xlsx"], "Unknown export format 'xlsx'"),
        (["log", "--db", "{db}", "--format", "csv", "--out", "{tmp}/x.csv", "--table", "people"], "Unknown table 'people'"),
        (["log", "--db", "{tmp}/file.txt", "--format", "csv", "--out", "{tmp}/x.csv"], "is not a usable SQLite log"),
        (["heatmap", "--from", "{tmp}/none.png", "--word", "moon"], "No such image file"),
        (["heatmap", "--from", "{tmp}/file.txt", "--word", "moon"], "is not a readable image"),
        (["heatmap", "--from", "{plain}", "--word", "moon"], "carries no Attune or A1111 parameters"),
        (["heatmap", "--from", "{png}", "--word", "zebra"], "'zebra' is not in the prompt; its words are: a, wolf"),
        (["heatmap", "--from", "{png_no_maps}", "--word", "moon"], "No attention maps found"),
        (["inpaint", "--from", "{png}", "--mask", "{tmp}/none.png", "--prompt", "x", "--out", "{tmp}/o"],
         "No such mask file"),
        (["inpaint", "--from", "{png}", "--mask", "{empty_mask}", "--prompt", "x", "--out", "{tmp}/o"],
         "The mask is empty"),
        (["inpaint", "--from", "{png}", "--mask", "{plain}", "--prompt", "x", "--out", "{tmp}/o"],
         "The mask is 32x32 but the image is 64x48"),
        (["inpaint", "--from", "{png}", "--mask", "{empty_mask}", "--prompt", "x", "--size", "64x64", "--out", "{tmp}/o"],
         "--size 64x64 does not match the source image (64x48)"),
    ],
)
def test_bad_input_one_line_error(generated, capsys, tmp_path, argv, message):
    record, out, model = generated
    (tmp_path / "file.txt").write_text("not a png, not a database" * 50)
    Image.new("RGB", (32, 32), "white").save(tmp_path / "plain.png")
    Image.new("L", (64, 48), 0).save(tmp_path / "empty_mask.png")
    no_maps = tmp_path / "copy.png"
    no_maps.write_bytes(Path(record["image_path"]).read_bytes())
    Path(record["maps_path"]).rename(tmp_path / "moved.npz")
    try:
        values = {"tmp": tmp_path, "model": model, "db": out / "attune.db", "plain": tmp_path / "plain.png",
                  "png": record["image_path"], "png_no_maps": no_maps, "empty_mask": tmp_path / "empty_mask.png"}
        if "{png_no_maps}" not in argv:
            (tmp_path / "moved.npz").rename(record["maps_path"])
        code, stdout, err = run(capsys, *[a.format(**values) for a in argv])
    finally:
        if (tmp_path / "moved.npz").exists():
            (tmp_path / "moved.npz").rename(record["maps_path"])
    assert code != 0
    assert stdout == ""
    lines = [line for line in err.replace("\r", "\n").split("\n") if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert "Traceback" not in err


def test_module_entry_point_never_prints_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run([sys.executable, "-m", "engine", "parse", "(moon)"], capture_output=True, text=True, env=env,
                        cwd=tmp_path, timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout) == [["moon", 1.1]]
    bad = subprocess.run([sys.executable, "-m", "engine", "heatmap", "--from", "missing.png", "--word", "x"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.strip() == "error: No such image file: missing.png"


def test_inpaint_auto_crop_flag(generated, capsys, tmp_path):
    """--no-auto-crop repaints a small mask at the full image's scale; the choice is recorded in the Version."""
    record, out, model = generated
    mask = np.zeros((48, 64), np.uint8)
    mask[4:12, 4:14] = 255  # small: auto crop would work on a crop around it
    Image.fromarray(mask).save(tmp_path / "small.png")
    images = {}
    for flag in ("--auto-crop", "--no-auto-crop"):
        code, stdout, err = run(capsys, "inpaint", "--from", record["image_path"], "--mask", tmp_path / "small.png",
                                "--prompt", "moon", flag, "--out", tmp_path / flag.strip("-"))
        assert code == 0, err
        version = json.loads(stdout)
        assert version["auto_crop"] is (flag == "--auto-crop")
        images[flag] = np.asarray(Image.open(version["image_path"]))
    assert not np.array_equal(images["--auto-crop"], images["--no-auto-crop"])
