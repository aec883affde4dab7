"""Bad input found by a probe of 109 cases: each gives one `error:` line, no partial row and no stray file.

The CLI runs in-process (engine.cli.main) on the tiny random model; cases that fail before the model loads run with
a stand-in engine class that fails the test if anything tries to load a model.
"""
import json
import os
import sqlite3
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import engine.model.loading
import engine.pipeline.attune
from engine.cli import main
from engine.errors import AttuneError
from engine.pipeline.attune import Attune
from engine.pipeline.params import GenerateParams
from engine.study.pngmeta import read_png

PROMPT = "a wolf sitting in front of the full moon"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code, err, expected: str):
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test: these inputs must be refused first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(engine.pipeline.attune, "Attune", refuse)


@pytest.fixture(scope="module")
def source(tiny_model_dir, tmp_path_factory):
    """An Attune PNG of the tiny model and a mask for it."""
    folder = tmp_path_factory.mktemp("bad-inputs")
    assert main(["generate", "--prompt", PROMPT, "--seed", "3", "--steps", "2", "--size", "64x48", "--weight",
                 "moon=1.5", "--model", str(tiny_model_dir), "--backend", "torch", "--out", str(folder / "src")]) == 0
    png = next((folder / "src").glob("v001-*.png"))
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:50] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    return png, folder / "mask.png"


# ---- inpaint with a bad value: refused before the source is recorded --------------------------------------------

@pytest.mark.parametrize("option, expected", [
    (["--steps", "0"], "steps must be between 1 and 150"),
    (["--mask-blur", "100000"], "mask blur must be between 0 and 64"),
    (["--padding", "-1"], "padding must be between 0 and 512"),
    (["--guidance", "nan"], "guidance must be a finite number"),
    (["--scheduler", "bogus"], "Unknown scheduler 'bogus'"),
])
def test_inpaint_bad_value_leaves_no_restore_row(source, option, expected, tmp_path, capsys, no_model_load):
    png, mask = source
    code, out, err = run(capsys, "inpaint", "--from", png, "--mask", mask, "--prompt", "misty forest", *option,
                         "--out", tmp_path / "out")
    one_error_line(code, err, expected)
    assert out == "" and files_in(tmp_path / "out") == []  # no attune.db, no copied PNG


# ---- heatmap of a built-in-model PNG without --model ------------------------------------------------------------

def test_heatmap_of_a_builtin_model_png_needs_no_model_option(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(engine.model.loading, "default_model_path", lambda: Path(tiny_model_dir))  # the tiny model is built in
    code, out, err = run(capsys, "generate", "--prompt", PROMPT, "--steps", "2", "--size", "64x48",
                         "--backend", "torch", "--out", tmp_path)
    assert code == 0, err
    record = json.loads(out)
    assert record["model_id"] == "tiny-scenes"
    code, out, err = run(capsys, "heatmap", "--from", record["image_path"], "--word", "moon")
    assert code == 0, err
    assert json.loads(out)["word"] == "moon"
    # Replay finds the built-in model by the same id.
    code, out, err = run(capsys, "replay", "--db", tmp_path / "attune.db", "--json")
    assert (code, json.loads(out)["identical"]) == (0, 1), out


# ---- an explicit inpaint --weight for a word not in the inpaint prompt ------------------------------------------

def test_inpaint_weight_for_a_word_not_in_the_inpaint_prompt_is_refused(source, tmp_path, capsys, no_model_load):
    png, mask = source
    code, out, err = run(capsys, "inpaint", "--from", png, "--mask", mask, "--prompt", "misty forest",
                         "--weight", "moon=2", "--out", tmp_path / "out")
    one_error_line(code, err, "'moon' is not in the prompt")
    assert files_in(tmp_path / "out") == []


def test_studio_keeps_explicit_inpaint_weights(tiny_components, tmp_path):
    """The Studio drops the parent's weights on words the inpaint prompt lacks, but not weights given explicitly."""
    from engine.study.log import StudyLog
    from engine.study.studio import Studio

    studio = Studio(Attune(components=tiny_components, backend="torch"), StudyLog(tmp_path / "a.db"), tmp_path)
    studio.generate(GenerateParams(prompt=PROMPT, steps=1, width=64, height=48, weights={"moon": 1.5}))
    mask = np.zeros((48, 64), bool)
    mask[10:30, 20:50] = True
    assert studio.inpaint(mask, "misty forest").weights == {}
    with pytest.raises(AttuneError, match="'moon' is not in the prompt"):
        studio.inpaint(mask, "misty forest", overrides={"weights": {"moon": 2.0}})
    studio.engine.close()


# ---- unbounded emphasis, and weights that multiply past 3 -------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["--prompt", "moon" + "+" * 1900, "--syntax", "compel"], "The weight of 'moon' in the prompt comes to"),
    (["--prompt", "a (moon:1" + "0" * 40 + ")"], "comes to 1e+40"),
    (["--prompt", "a moon", "--negative", "(sky:9)"], "The weight of 'sky' in the negative prompt comes to 9"),
    (["--prompt", "full (moon:1.5)", "--weight", "moon=2.5"], "comes to 3.75"),
    (["--prompt", "full moon", "--weight", "full moon=2", "--weight", "moon=2"], "'moon' in the prompt comes to 4"),
])
def test_weights_past_the_maximum_are_refused(argv, expected, tmp_path, capsys, no_model_load):
    code, out, err = run(capsys, "generate", *argv, "--out", tmp_path / "out")
    one_error_line(code, err, expected)
    assert "between 0 and 3" in err and files_in(tmp_path / "out") == []


def test_engine_refuses_extreme_emphasis_and_nan_output(tiny_components):
    engine = Attune(components=tiny_components, backend="torch")
    with pytest.raises(AttuneError, match="comes to 5"):
        engine.generate(GenerateParams(prompt="a (moon:5)", steps=1, width=64, height=48))
    engine.close()
    from engine.sampling.loop import decode_latents

    with pytest.raises(AttuneError, match="not a number"):  # an all-black PNG with exit 0 before
        decode_latents(tiny_components, torch.full((1, 4, 6, 8), float("nan")))


# ---- log export reads without writing ---------------------------------------------------------------------------

def test_log_export_never_writes_to_the_database(source, tmp_path, capsys):
    png, _ = source
    db = png.parent / "attune.db"
    before = db.read_bytes()
    code, out, err = run(capsys, "log", "--db", db, "--format", "csv", "--out", tmp_path / "study.zip")
    assert code == 0, err
    assert json.loads(out)["versions"] == 1 and db.read_bytes() == before
    code, out, err = run(capsys, "log", "--db", db, "--format", "csv", "--out", db, "--table", "versions")
    one_error_line(code, err, "is the log itself")
    assert db.read_bytes() == before


def test_log_export_of_a_foreign_sqlite_file_changes_nothing(tmp_path, capsys):
    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE things (x)")
        conn.execute("INSERT INTO things VALUES (1)")
    before = foreign.read_bytes()
    code, out, err = run(capsys, "log", "--db", foreign, "--format", "csv", "--out", tmp_path / "x.zip")
    one_error_line(code, err, "is not an Attune study log")
    assert foreign.read_bytes() == before and files_in(tmp_path) == ["other.sqlite"]


# ---- file modes -------------------------------------------------------------------------------------------------

def test_written_files_follow_the_umask(source, tmp_path, capsys):
    from engine.study.log import atomic_write_bytes

    png, _ = source
    old = os.umask(0o022)
    try:
        written = atomic_write_bytes(tmp_path / "a.bin", b"x")
        code, out, err = run(capsys, "log", "--db", png.parent / "attune.db", "--format", "csv",
                             "--out", tmp_path / "study.zip")
    finally:
        os.umask(old)
    assert code == 0, err
    assert (written.stat().st_mode & 0o777, (tmp_path / "study.zip").stat().st_mode & 0o777) == (0o644, 0o644)
    assert png.stat().st_mode & 0o044 == 0o044  # the generated PNG is readable by group and others (umask 022)


# ---- decompression bombs ----------------------------------------------------------------------------------------

def _bomb_png(path: Path, side: int = 30000) -> Path:
    """A valid PNG header declaring side x side grey pixels (900 M) with almost no data: Pillow refuses it on open."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_as_source_or_mask(source, tmp_path, capsys, no_model_load):
    png, mask = source
    bomb = _bomb_png(tmp_path / "bomb.png")
    code, out, err = run(capsys, "inpaint", "--from", bomb, "--mask", mask, "--prompt", "moon", "--out", tmp_path / "o")
    one_error_line(code, err, "is too large to open")
    code, out, err = run(capsys, "inpaint", "--from", png, "--mask", bomb, "--prompt", "moon", "--out", tmp_path / "o")
    one_error_line(code, err, "The mask is too large to open")
    assert files_in(tmp_path / "o") == []


# ---- unknown words ----------------------------------------------------------------------------------------------

def test_unknown_words_warn_and_are_recorded(tiny_model_dir, tmp_path, capsys):
    code, out, err = run(capsys, "generate", "--prompt", "zebra giraffe", "--steps", "1", "--size", "64x48",
                         "--model", tiny_model_dir, "--backend", "torch", "--out", tmp_path)
    assert code == 0, err
    assert "warning: words this model does not know (they have little effect): zebra, giraffe" in err
    record = json.loads(out)
    assert record["unknown_words"] == ["zebra", "giraffe"]
    assert read_png(record["image_path"])[1].unknown_words == ["zebra", "giraffe"]
    from engine.study.log import StudyLog

    assert StudyLog.open_existing(tmp_path / "attune.db").versions()[0].unknown_words == ["zebra", "giraffe"]


# ---- a read-only data folder in the app -------------------------------------------------------------------------

def test_app_with_an_unwritable_data_folder_says_which(tiny_model_dir, tmp_path, monkeypatch):
    from tests.app_support import open_page

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")  # so the data folder below it can never be made (even as root)
    monkeypatch.setenv("ATTUNE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("ATTUNE_BACKEND", "torch")
    monkeypatch.setenv("ATTUNE_DATA_DIR", str(blocker / "data"))
    at = open_page("Home.py")
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and f"The data folder {blocker / 'data'} cannot be written" in errors[0]


# ---- sizes the model cannot serve -------------------------------------------------------------------------------

def test_sizes_the_model_cannot_serve(tiny_components, tmp_path, capsys, no_model_load):
    # The built-in model was trained at 128 px: it serves up to 768 px per side.
    code, out, err = run(capsys, "generate", "--prompt", "moon", "--size", "2048x2048", "--out", tmp_path / "o")
    one_error_line(code, err, "width 2048 px is more than this model can serve: at most 768 px per side")
    assert files_in(tmp_path / "o") == []
    engine = Attune(components=tiny_components, backend="torch")  # the tiny model: 64 px, so 384 px
    with pytest.raises(AttuneError, match="height 512 px is more than this model can serve: at most 384 px"):
        engine.generate(GenerateParams(prompt="moon", steps=1, width=64, height=512))
    engine.close()


# ---- every value is checked before the model loads or a log is made ---------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["--steps", "0"], "steps must be between 1 and 150"),
    (["--guidance", "inf"], "guidance must be a finite number"),
    (["--size", "100x64"], "width must be a multiple of 8"),
    (["--scheduler", "k_lms"], "Unknown scheduler 'k_lms'"),
    (["--weight-mode", "loud"], "Unknown weight mode 'loud'"),
    (["--weight", "sun=2"], "'sun' is not in the prompt"),
    (["--weight", "moon=7"], "The weight of 'moon' must be between 0 and 3"),
])
def test_generate_checks_values_before_loading_the_model(argv, expected, tmp_path, capsys, no_model_load):
    code, out, err = run(capsys, "generate", "--prompt", PROMPT, *argv, "--out", tmp_path / "o",
                         "--db", tmp_path / "study.db")
    one_error_line(code, err, expected)
    assert files_in(tmp_path) == []  # no out folder, no empty study.db


# ---- the ONNX backend's failures say what really failed ---------------------------------------------------------

class _OnnxLike:
    """A runner named onnx whose call fails with the given error (the engine then reruns on PyTorch)."""

    name = "onnx"
    device = "cpu"

    def __init__(self, error):
        self.error = error

    def __call__(self, *args, **kwargs):
        raise self.error

    def release_memory(self):
        pass


def test_onnx_call_failure_that_is_not_onnx_runtime_names_the_real_error(tiny_components):
    engine = Attune(components=tiny_components, backend="torch")
    torch_runner = engine.runner
    params = GenerateParams(prompt="moon", steps=1, width=64, height=48)
    engine.runner = _OnnxLike(OSError(28, "No space left on device"))
    result = engine.generate(params)
    assert result.backend == "torch"
    assert result.fallback_reason.startswith("The ONNX call failed: file error (No space left on device")
    assert "ONNX Runtime" not in result.fallback_reason
    ort_error = type("Fail", (RuntimeError,), {"__module__": "onnxruntime.capi.onnxruntime_pybind11_state"})
    engine.runner = _OnnxLike(ort_error("bad shape"))
    assert engine.generate(params).fallback_reason.startswith("ONNX Runtime failed (Fail: bad shape)")
    engine.close()
    torch_runner.close()


def test_onnx_backend_that_cannot_start_names_the_missing_package(tiny_components, monkeypatch):
    import engine.runners.onnx as onnx_runner

    def missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'onnx'", name="onnx")

    monkeypatch.setattr(onnx_runner, "create_runner", missing)
    with pytest.raises(AttuneError, match=r"The onnx backend cannot start: missing package onnx\."):
        Attune(components=tiny_components, backend="onnx", export=missing)  # exporting needs it too
    auto = Attune(components=tiny_components, backend="auto", export=missing)  # falls back to PyTorch, says why
    assert auto.backend_name == "torch" and "missing package onnx" in auto.fallback_reason
    auto.close()


def test_inpaint_that_fails_in_the_engine_takes_back_its_source_row(source, tmp_path, capsys, monkeypatch):
    """A failure after the model ran (here a NaN result) leaves no `restore` row and no copied PNG either."""
    import engine.study.studio

    png, mask = source

    def nan_result(self, *args, **kwargs):
        raise AttuneError("The sampler's result is not a number (NaN or infinite).")

    monkeypatch.setattr(engine.study.studio.Studio, "inpaint", nan_result)
    code, out, err = run(capsys, "inpaint", "--from", png, "--mask", mask, "--prompt", "misty forest",
                         "--backend", "torch", "--out", tmp_path / "out")
    one_error_line(code, err, "not a number")
    assert files_in(tmp_path) == []  # no row, no copied PNG, and no log or folder this command made


# ---- issue 19: a refused reweight, explore or inpaint leaves nothing ----------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["reweight", "--weight", "moon=7"], "The weight of 'moon' must be between 0 and 3"),
    (["reweight", "--weight", "sun=2"], "'sun' is not in the prompt"),
    (["reweight", "--weight", "moon=2", "--weight-mode", "loud"], "Unknown weight mode 'loud'"),
    (["reweight", "--weight", "moon=2", "--layout", "inject", "--server", "http://127.0.0.1:9"],
     "runs on the PyTorch backend only, not on an Attune server"),
    (["explore", "--word", "moon", "--alternatives", "sun,(sky:9)"], "--alternatives '(sky:9)': The weight of 'sky'"),
    (["explore", "--word", "moon", "--alternatives", ",".join(f"w{i}" for i in range(9))], "at most 8 alternatives"),
    (["explore", "--word", "moon", "--n", "50"], "--n must be between 1 and 8"),
    (["reweight", "--weight", "moon=2", "--db", "FOREIGN"], "is not an Attune study log"),
])
def test_refused_reweight_and_explore_leave_nothing(argv, expected, source, tmp_path, capsys, no_model_load):
    png, _ = source
    with sqlite3.connect(tmp_path / "foreign.sqlite") as conn:
        conn.execute("CREATE TABLE things (x)")
    before = (tmp_path / "foreign.sqlite").read_bytes()
    argv = [str(tmp_path / "foreign.sqlite") if a == "FOREIGN" else a for a in argv]
    code, out, err = run(capsys, *argv[:1], "--from", png, *argv[1:], "--out", tmp_path / "out")
    one_error_line(code, err, expected)
    assert files_in(tmp_path) == ["foreign.sqlite"] and (tmp_path / "foreign.sqlite").read_bytes() == before


def _png_with_metadata(path: Path, attune: str) -> Path:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("attune", attune)
    Image.new("RGB", (64, 48)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize("record, expected", [
    ({"prompt": PROMPT, "steps": 0, "width": 64, "height": 48}, "cannot be run: steps must be between 1 and 150"),
    ({"prompt": PROMPT, "width": 64, "height": 48, "weights": {"moon": 9}}, "The weight of 'moon' must be between"),
    ({"prompt": PROMPT, "width": 64, "height": 48, "scheduler": "k_lms"}, "Unknown scheduler 'k_lms'"),
])
@pytest.mark.parametrize("command", [["reweight", "--weight", "wolf=1.2"], ["explore", "--word", "moon"]])
def test_png_metadata_is_checked_before_the_model_loads(command, record, expected, tmp_path, capsys, no_model_load):
    png = _png_with_metadata(tmp_path / "in.png", json.dumps(record))
    code, out, err = run(capsys, *command[:1], "--from", png, *command[1:], "--out", tmp_path / "out")
    one_error_line(code, err, expected)
    assert files_in(tmp_path) == ["in.png"]


@pytest.mark.parametrize("record, expected", [
    ('{"prompt": "moon", "weights": [1, 2]}', "bad value: weights must be a mapping"),
    ('{"prompt": "moon", "seed": 1e400}', "bad value: seed must be a whole number"),
    ('{"prompt": "moon", "model_id": 5}', "bad value: model_id must be text"),
    ('{"prompt": "moo', "not valid JSON"),
])
def test_damaged_png_metadata_says_what_is_wrong(record, expected, tmp_path, capsys, no_model_load):
    """Wrong types in the `attune` chunk were `unexpected AttributeError/OverflowError/TypeError`."""
    png = _png_with_metadata(tmp_path / "in.png", record)
    code, out, err = run(capsys, "reweight", "--from", png, "--weight", "moon=1.2", "--out", tmp_path / "out")
    one_error_line(code, err, "Attune metadata is damaged")
    assert expected in err and "internal error" not in err and files_in(tmp_path) == ["in.png"]


def test_a_server_that_cannot_be_reached_leaves_nothing(source, tmp_path, capsys, monkeypatch, no_model_load):
    png, mask = source
    monkeypatch.setenv("ATTUNE_SERVER", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("ATTUNE_SERVER_TIMEOUT", "3")
    for argv in (["reweight", "--from", png, "--weight", "moon=1.2"],
                 ["explore", "--from", png, "--word", "moon", "--alternatives", "sun"],
                 ["inpaint", "--from", png, "--mask", mask, "--prompt", "misty forest"]):
        code, out, err = run(capsys, *argv, "--out", tmp_path / "out")
        one_error_line(code, err, "Cannot reach the Attune server")
        assert files_in(tmp_path) == [], argv  # no restore row, no PNG, no empty attune.db


def test_a_failure_after_the_model_ran_takes_back_the_explore_grid(source, tmp_path, capsys, monkeypatch):
    """A grid that fails in its second cell leaves neither its first cell nor the parent copy (nor the new log)."""
    import engine.study.studio

    png, _ = source
    real = engine.study.studio.Studio.edit_prompt
    calls = []

    def second_cell_fails(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise AttuneError("The sampler's result is not a number (NaN or infinite).")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(engine.study.studio.Studio, "edit_prompt", second_cell_fails)
    code, out, err = run(capsys, "explore", "--from", png, "--word", "moon", "--alternatives", "sun,stars",
                         "--backend", "torch", "--out", tmp_path / "out")
    # stderr also holds the grid's progress bar (cleared on a terminal); the error is its one `error:` line
    assert code == 1 and err.count("error: ") == 1 and err.strip().splitlines()[-1].startswith("error: "), err
    assert "not a number" in err and len(calls) == 2 and files_in(tmp_path) == []


# ---- issue 19: BREAK, a repeated --weight --------------------------------------------------------------------------

def test_break_is_accepted_by_the_cli_as_by_the_api(tiny_model_dir, tiny_components, tmp_path, capsys):
    prompt = "a wolf BREAK the full moon"
    engine_ = Attune(components=tiny_components, backend="torch")
    result = engine_.generate(GenerateParams(prompt=prompt, steps=1, width=64, height=48, weights={"moon": 2}))
    engine_.close()
    assert "BREAK" not in result.word_tokens.words
    code, out, err = run(capsys, "generate", "--prompt", prompt, "--weight", "moon=2", "--steps", "1",
                         "--size", "64x48", "--model", tiny_model_dir, "--backend", "torch", "--out", tmp_path)
    assert code == 0, err
    assert json.loads(out)["prompt"] == prompt
    code, out, err = run(capsys, "generate", "--prompt", prompt, "--weight", "BREAK=2", "--out", tmp_path / "o")
    one_error_line(code, err, "'BREAK' is not in the prompt")  # as the engine says: BREAK is no word


def test_a_word_given_twice_takes_the_last_value_in_cli_api_and_docs(tiny_model_dir, tiny_components, tmp_path,
                                                                     capsys):
    from engine.cli import parse_weights

    engine_ = Attune(components=tiny_components, backend="torch")
    result = engine_.generate(GenerateParams(prompt=PROMPT, steps=1, width=64, height=48,
                                             weights={"moon": 1.5, "MOON": 2.5, " moon ": 0.5}))
    engine_.close()
    assert result.params.weights == {"moon": 0.5}  # the API: the last value, whatever the case or spacing
    assert parse_weights(["moon=1.5", "MOON=2.5", "moon=0.5"]) == {"moon": 0.5}
    code, out, err = run(capsys, "generate", "--prompt", PROMPT, "--weight", "moon=1.5", "--weight", "MOON=2.5",
                         "--weight", "Moon=0.5", "--steps", "1", "--size", "64x48", "--model", tiny_model_dir,
                         "--backend", "torch", "--out", tmp_path)
    assert code == 0, err
    assert json.loads(out)["weights"] == {"Moon": 0.5}
    docs = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert "given twice" in docs and "the last one wins" in docs


# ---- issue 19: messages -----------------------------------------------------------------------------------------

def test_an_internal_error_names_the_command_and_its_log(tmp_path, capsys, monkeypatch):
    import engine.cli

    monkeypatch.setenv("ATTUNE_CACHE", str(tmp_path / "cache"))

    def broken(args):
        raise KeyError("boom")

    monkeypatch.setitem(engine.cli.COMMANDS, "parse", broken)
    code, out, err = run(capsys, "parse", "moon")
    log = tmp_path / "cache" / "cli-errors.log"
    one_error_line(code, err, "internal error in `python -m engine parse` (KeyError: 'boom')")
    assert str(log) in err and "unexpected" not in err
    assert "Traceback" in log.read_text() and "boom" in log.read_text()


@pytest.mark.parametrize("argv, shown", [
    (["generate", "--prompt", "a moon", "--weight", "sun\x1b[31m=2"], "'sun\\x1b[31m' is not in the prompt"),
    (["generate", "--prompt", "a moon\r\x00", "--weight", "x=2"], "its words are: a, moon"),
    (["generate", "--prompt", "a moon", "--scheduler", "ev\u202eil"], "Unknown scheduler 'ev\\u202eil'"),
    (["generate", "--prompt", "a moon", "--steps", "\x1b[2J"], "invalid int value: '\\x1b[2J'"),
    (["generate", "--prompt", "a \udcff moon"], "--prompt is not valid UTF-8 text"),
])
def test_control_characters_are_escaped_on_the_terminal(argv, shown, tmp_path, capsys, no_model_load):
    code, out, err = run(capsys, *argv, "--out", tmp_path / "o")
    assert code in (1, 2) and shown in err, err
    assert not any(c in err for c in "\x1b\r\x00\u202e\udcff") and len(err.strip().splitlines()) == 1


def test_parse_output_escapes_controls_and_reads_back_the_same(capsys):
    prompt = "a (moon\u202e:1.2) \x85 BREAK \x1b[31msky"
    from engine.words.prompt import parse

    code, out, err = run(capsys, "parse", prompt)
    assert code == 0 and not any(c in out + err for c in "\x1b\u202e\x85")
    assert json.loads(out) == [[text, weight] for text, weight in parse(prompt)]


def test_each_reason_is_printed_once(tmp_path, capsys, monkeypatch):
    """An OSError without strerror already names its file: it was printed as `<error>: <file>`, the file twice."""
    import engine.cli

    def fails(args):
        raise _oserror(tmp_path / "x.db")

    monkeypatch.setitem(engine.cli.COMMANDS, "parse", fails)
    code, out, err = run(capsys, "parse", "moon")
    assert code == 1 and err.count(str(tmp_path / "x.db")) == 1, err


def _oserror(path):
    error = OSError(f"database is locked: {path}")
    error.filename = str(path)
    return error
