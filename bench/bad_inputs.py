"""Bad-input suite: hypothesis-generated command lines and PNG metadata that the CLI must refuse cleanly.

    python -m bench.bad_inputs [--json] [--examples N]

Every case is bad by construction: a valid command line with at least one value that is certainly wrong (steps 0,
a word not in the prompt, a folder where a file belongs, a PNG whose metadata is damaged...). Each case runs the CLI
in-process (engine.cli.main) in a fresh working folder and must give
- exit code != 0, nothing on stdout, exactly one stderr line `error: ...`, no traceback, no "internal error",
  no raw control character (ESC, CR, NUL, bidi overrides are shown as escapes);
- no model load (a stand-in engine class raises ModelLoaded, which the CLI cannot catch);
- the working folder byte-identical afterwards: the existing study database unchanged, no new file or folder.
Prints {"cases": N, "defects": D, "by_class": {...}, "defect_examples": [...]}; --json also writes
bench/results/bad_inputs.json. tests/test_bad_inputs_hypothesis.py runs the same strategies, fewer examples.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import struct
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

RESULTS = Path(__file__).resolve().parent / "results" / "bad_inputs.json"
PROMPT = "a wolf sitting in front of the full moon"
ABSENT_WORDS = ("zebra", "giraffe", "BREAK", "sun\x1b[31m", "tower\u202e")  # never a word of any valid-part prompt


class ModelLoaded(BaseException):
    """Raised by the stand-in engine: an input reached the model load without being refused."""


# ---- the working folder every case starts from ------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_text(chunks: dict[str, str], size=(64, 64)) -> bytes:
    """A grey PNG carrying the given text chunks as iTXt (any Unicode, as Pillow writes them)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 90, 90)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def source_version(**changes):
    from engine.study.versions import Version

    values = dict(prompt=PROMPT, seed=3, steps=2, width=64, height=64, weights={"moon": 1.5}, model_id="tiny-scenes")
    values.update(changes)
    return Version(**values)


def make_template(folder: Path) -> Path:
    """Files the cases point at: Attune PNGs, masks, a study log, a foreign SQLite file, a folder, a text file."""
    import numpy as np
    from PIL import Image

    from engine.study.log import StudyLog
    from engine.study.pngmeta import png_bytes

    folder.mkdir(parents=True, exist_ok=True)
    grey = Image.new("RGB", (64, 64), (90, 90, 90))
    (folder / "src.png").write_bytes(png_bytes(grey, source_version()))
    (folder / "inpainted.png").write_bytes(png_bytes(grey, source_version(kind="inpaint", inpaint_prompt="forest")))
    grey.save(folder / "plain.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 20:50] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "mask_empty.png")
    Image.fromarray(mask[:32, :32]).save(folder / "mask_small.png")
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)  # a decompression bomb: 900 M pixels declared
    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                                      + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))
    (folder / "truncated.png").write_bytes((folder / "src.png").read_bytes()[:200])
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "dir").mkdir()
    log = StudyLog(folder / "study.db")
    log.add_version(source_version(image_path=str(folder / "src.png")))
    with contextlib.closing(sqlite3.connect(folder / "foreign.sqlite")) as conn, conn:
        conn.execute("CREATE TABLE things (x)")
        conn.execute("INSERT INTO things VALUES (1)")
    (folder / "junk.db").write_bytes(b"\x00\x01 not sqlite " * 64)
    return folder


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder` with its content hash ("dir" for folders)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        found[name] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


# ---- one case -----------------------------------------------------------------------------------------------------

@dataclass
class Case:
    klass: str  # the bad input's class, e.g. "generate:steps" or "reweight:png-metadata"
    argv: list[str]
    files: dict[str, bytes] = field(default_factory=dict)  # extra files written into the working folder first


def _stand_in_engine(*args, **kwargs):
    raise ModelLoaded("the model was loaded before the input was refused")


def _raw_controls(text: str) -> list[str]:
    from engine.cli import _shows_raw

    return sorted({repr(char) for char in text if char != "\n" and not _shows_raw(char)})


def run_case(case: Case, template: Path) -> list[str]:
    """The defects this case shows (empty when the CLI refused it cleanly)."""
    import engine.pipeline.attune
    from engine.cli import main

    defects = []
    with tempfile.TemporaryDirectory(prefix="attune-bad-") as scratch:
        work = Path(scratch) / "work"
        shutil.copytree(template, work)
        for name, data in case.files.items():
            (work / name).write_bytes(data)
        before = snapshot(work)
        out, err = io.StringIO(), io.StringIO()
        old_cwd, old_engine = os.getcwd(), engine.pipeline.attune.Attune
        engine.pipeline.attune.Attune = _stand_in_engine
        os.chdir(work)
        code = None
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(list(case.argv))
        except ModelLoaded:
            defects.append("model loaded before the input was refused")
        except BaseException as error:  # main() must never raise
            defects.append(f"main raised {type(error).__name__}: {error}")
        finally:
            os.chdir(old_cwd)
            engine.pipeline.attune.Attune = old_engine
        stdout, stderr = out.getvalue(), err.getvalue()
        lines = stderr.strip().splitlines()
        if code is not None and code == 0:
            defects.append("exit code 0")
        if "Traceback" in stderr:
            defects.append("traceback on stderr")
        if code is not None and not (len(lines) == 1 and lines[0].startswith("error: ")):
            defects.append(f"not one `error:` line: {stderr!r:.300}")
        if "internal error" in stderr:
            defects.append(f"internal error: {stderr.strip()[:300]}")
        if stdout:
            defects.append(f"stdout not empty: {stdout!r:.200}")
        controls = _raw_controls(stderr)
        if controls:
            defects.append(f"raw control characters on stderr: {', '.join(controls)}")
        after = snapshot(work)
        if after != before:
            changed = sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))
            defects.append(f"working folder changed: {changed}")
    return defects


# ---- strategies: valid parts ------------------------------------------------------------------------------------

# Decorations that keep the prompt a prompt: emphasis, BREAK, unclosed brackets, escapes, control characters, text
# in other scripts. They may make a prompt invalid too (a weight past 3): every case is refused either way.
DECORATIONS = ["", " BREAK", " BREAK ", " (sky:1.2)", " [grass]", " ((", " )", " \\(x\\)", "\x1b[31m", " \r", "\x00",
               " \u202eevil", " \u2066x\u2069", " é", " 月", " \x85", " moon++", " (full moon)0.8", ",,"]


@st.composite
def prompts(draw) -> str:
    parts = draw(st.lists(st.sampled_from(DECORATIONS), max_size=3))
    return PROMPT + "".join(parts)


def _num(values) -> st.SearchStrategy[str]:
    return values.map(lambda v: repr(v) if isinstance(v, float) else str(v))


VALID_OPTIONS = {
    "--seed": _num(st.integers(0, 2**63 - 1)),
    "--steps": _num(st.integers(1, 150)),
    "--guidance": _num(st.floats(0, 30, allow_nan=False)),
    "--size": st.sampled_from(["64x64", "128x128", "64x48", "256 x 128", "96×64"]),
    "--scheduler": st.sampled_from(["ddim", "euler", "dpm++", "DDIM"]),
    "--syntax": st.sampled_from(["a1111", "compel", "none"]),
    "--weight-mode": st.sampled_from(["score", "prob", "embed", "a1111"]),
    "--negative": st.sampled_from(["", "blurry", "(ugly:1.2)", "\x1b[0m dark"]),
}


@st.composite
def valid_generation_options(draw, keys=tuple(VALID_OPTIONS)) -> list[str]:
    argv = []
    for key in draw(st.lists(st.sampled_from(keys), unique=True, max_size=4)):
        argv += [key, draw(VALID_OPTIONS[key])]
    for _ in range(draw(st.integers(0, 2))):
        argv += ["--weight", f"{draw(st.sampled_from(['moon', 'MOON', 'full moon', 'wolf']))}="
                             f"{draw(st.floats(0, 1.9, allow_nan=False)):.3g}"]
    return argv


# ---- strategies: certainly-bad values ---------------------------------------------------------------------------

def _bad_text_choice() -> st.SearchStrategy[str]:
    """A name that is no scheduler, syntax, weight mode, layout or backend."""
    return st.one_of(st.sampled_from(["", "k_lms", "bogus", "\x1b[31mred", "ddim\x00", "blend\x00", "scor"]),
                     st.text(alphabet="xyzq\x1b\r\u202e-", min_size=1, max_size=8))


BAD_NUMBERS = {
    "--steps": st.one_of(_num(st.integers(max_value=0)), _num(st.integers(min_value=151)),
                         st.sampled_from(["1.5", "abc", "", "nan", "1e3"])),
    "--seed": st.one_of(_num(st.integers(max_value=-1)), _num(st.integers(min_value=2**63)),
                        st.sampled_from(["x", "1.0", ""])),
    "--guidance": st.one_of(_num(st.floats(min_value=30.001, allow_infinity=False)),
                            _num(st.floats(max_value=-0.001, allow_infinity=False)),
                            st.sampled_from(["nan", "inf", "-inf", "abc", ""])),
    "--size": st.one_of(st.sampled_from(["abc", "64", "64x", "0x0", "-64x64", "100x64", "64x65", "2048x2048",
                                         "800x64", "64x64x64", ""]),
                        st.tuples(st.integers(1, 5000), st.integers(1, 5000))
                        .filter(lambda wh: wh[0] % 8 or wh[1] % 8 or max(wh) > 768).map(lambda wh: f"{wh[0]}x{wh[1]}")),
    "--scheduler": _bad_text_choice(),
    "--syntax": _bad_text_choice(),
    "--weight-mode": _bad_text_choice(),
}

BAD_WEIGHTS = st.one_of(
    st.sampled_from(ABSENT_WORDS).map(lambda word: f"{word}=1.2"),  # not a word of the prompt
    _num(st.floats(min_value=3.001, allow_infinity=False)).map(lambda v: f"moon={v}"),
    _num(st.floats(max_value=-0.001, allow_infinity=False)).map(lambda v: f"moon={v}"),
    st.sampled_from(["moon=nan", "moon=inf", "moon=abc", "moon=", "moon", "=2", " =2", "moon=1,5", "moon=\x1b"]),
)

EMPTY_PROMPTS = st.sampled_from(["", "   ", "\t\r\n", "BREAK", " BREAK ", "(BREAK)"])
LONG_PROMPTS = st.integers(2001, 4000).map(lambda n: ("moon " * n)[:n])
# Emphasis past 3, read as emphasis under the syntax given with it (the valid part may have picked `none`).
EMPHASIS_PAST_3 = st.sampled_from([["a (moon:9)", "a1111"], ["a (moon:1" + "0" * 30 + ")", "a1111"],
                                   ["moon" + "+" * 40, "compel"], ["(moon)9", "compel"]])


@st.composite
def bad_session_option(draw) -> tuple[str, list[str]]:
    """Where the command would write: a file for --out, a folder or a foreign/junk file for --db, no backend."""
    return draw(st.sampled_from([
        ("out-is-a-file", ["--out", "notes.txt"]),
        ("db-is-a-folder", ["--db", "dir"]),
        ("db-foreign-sqlite", ["--db", "foreign.sqlite"]),
        ("db-not-sqlite", ["--db", "junk.db"]),
        ("db-is-a-png", ["--db", "src.png"]),
        ("backend", ["--backend", draw(_bad_text_choice())]),
        ("server-url", ["--server", draw(st.sampled_from(["ftp://x", "localhost:8000", "\x1b[31mhttp"]))]),
    ]))


@st.composite
def bad_generation_value(draw, commands=("generate",)) -> tuple[str, list[str]]:
    kind = draw(st.sampled_from(["number", "weight", "prompt", "negative", "session"]))
    if kind == "number":
        key = draw(st.sampled_from(sorted(BAD_NUMBERS)))
        return key.lstrip("-"), [key, draw(BAD_NUMBERS[key])]
    if kind == "weight":
        return "weight", ["--weight", draw(BAD_WEIGHTS)]
    if kind == "prompt":
        if draw(st.booleans()) and "inpaint" not in commands:  # inpaint reads an empty prompt as the source's
            return "prompt", ["--prompt", draw(st.one_of(EMPTY_PROMPTS, st.just("\ud83d moon")))]
        if draw(st.booleans()):
            return "prompt", ["--prompt", draw(LONG_PROMPTS)]
        prompt, syntax = draw(EMPHASIS_PAST_3)
        return "prompt", ["--prompt", prompt, "--syntax", syntax]
    if kind == "negative":
        if draw(st.booleans()):
            return "negative", ["--negative", "x" * draw(st.integers(2001, 3000))]
        prompt, syntax = draw(EMPHASIS_PAST_3)
        return "negative", ["--negative", prompt.replace("moon", "sky"), "--syntax", syntax]
    return draw(bad_session_option())


# ---- strategies: whole cases ------------------------------------------------------------------------------------

@st.composite
def generate_cases(draw) -> Case:
    label, bad = draw(bad_generation_value())
    argv = ["generate", "--prompt", draw(prompts()), *draw(valid_generation_options())]
    out = draw(st.sampled_from([["--out", "out"], ["--out", "out", "--db", "study.db"], ["--out", "dir/new"]]))
    return Case(f"generate:{label}", argv + out + bad)  # the bad value comes last, so it is the one argparse keeps


@st.composite
def inpaint_cases(draw) -> Case:
    label, bad = draw(st.one_of(
        bad_generation_value(commands=("inpaint",)).filter(lambda c: c[0] != "size"),
        st.sampled_from([
            ("source-missing", ["--from", "missing.png"]), ("source-folder", ["--from", "dir"]),
            ("source-text", ["--from", "notes.txt"]), ("source-bomb", ["--from", "bomb.png"]),
            ("source-truncated", ["--from", "truncated.png"]),
            ("mask-missing", ["--mask", "nope.png"]), ("mask-folder", ["--mask", "dir"]),
            ("mask-text", ["--mask", "notes.txt"]), ("mask-empty", ["--mask", "mask_empty.png"]),
            ("mask-size", ["--mask", "mask_small.png"]), ("mask-bomb", ["--mask", "bomb.png"]),
            ("size-mismatch", ["--size", "128x128"]),
        ]),
        _num(st.one_of(st.integers(max_value=-1), st.integers(min_value=65))).map(
            lambda v: ("mask-blur", ["--mask-blur", v])),
        _num(st.one_of(st.integers(max_value=-1), st.integers(min_value=513))).map(
            lambda v: ("padding", ["--padding", v])),
    ))
    source = draw(st.sampled_from(["src.png", "plain.png"]))
    argv = ["inpaint", "--from", source, "--mask", "mask.png", "--prompt",
            draw(st.sampled_from(["misty forest", "a full moon", PROMPT + " BREAK", "moon\x1b[2J"]))]
    argv += draw(valid_generation_options(keys=("--seed", "--steps", "--guidance", "--scheduler", "--negative")))
    argv = [a for a in argv if not a.startswith("--weight")] if "--weight" in argv else argv
    return Case(f"inpaint:{label}", argv + ["--out", "out"] + bad)


@st.composite
def reweight_cases(draw) -> Case:
    label, bad = draw(st.sampled_from([
        ("source-missing", ["--from", "missing.png"]), ("source-folder", ["--from", "dir"]),
        ("source-no-metadata", ["--from", "plain.png"]), ("source-inpaint", ["--from", "inpainted.png"]),
        ("source-text", ["--from", "notes.txt"]), ("source-bomb", ["--from", "bomb.png"]),
        ("weight", None), ("weight-mode", None), ("layout", None), ("session", None),
        ("inject-on-server", ["--layout", "inject", "--server", "http://127.0.0.1:9"]),
        ("inject-on-onnx", ["--layout", "blend+inject", "--backend", "onnx"]),
    ]))
    if label == "weight":
        bad = ["--weight", draw(BAD_WEIGHTS)]
    elif label == "weight-mode":
        bad = ["--weight-mode", draw(_bad_text_choice())]
    elif label == "layout":
        bad = ["--layout", draw(_bad_text_choice())]
    elif label == "session":
        label, bad = draw(bad_session_option())
    argv = ["reweight", "--from", "src.png", "--weight",
            f"{draw(st.sampled_from(['moon', 'MOON', 'wolf', 'full moon']))}={draw(st.floats(0, 1.9)):.3g}"]
    argv += draw(st.sampled_from([[], ["--layout", "free"], ["--layout", "blend"], ["--weight-mode", "prob"]]))
    return Case(f"reweight:{label}", argv + ["--out", "out"] + bad)


@st.composite
def explore_cases(draw) -> Case:
    label, bad = draw(st.sampled_from([
        ("source-missing", ["--from", "missing.png"]), ("source-no-metadata", ["--from", "plain.png"]),
        ("source-folder", ["--from", "dir"]), ("source-text", ["--from", "notes.txt"]),
        ("word", None), ("alternatives", None), ("n", None), ("session", None),
    ]))
    if label == "word":
        bad = ["--word", draw(st.sampled_from(["zebra", "", "   ", "\x1b[31mmoon", "full moon", "BREAK", "(moon)"]))]
    elif label == "alternatives":
        bad = ["--alternatives", draw(st.one_of(
            st.sampled_from([",", " , ,", "moon", "MOON,moon", "!!!", "(sky:9)", "sun,(sky:9)", "a" * 2001]),
            st.integers(9, 20).map(lambda n: ",".join(f"w{i}x" for i in range(n)))))]
    elif label == "n":
        bad = ["--n", draw(_num(st.one_of(st.integers(max_value=0), st.integers(min_value=9))))]
    elif label == "session":
        label, bad = draw(bad_session_option())
    # "moon" as the alternative is bad only for the word moon itself
    word = "Moon" if label == "alternatives" else draw(st.sampled_from(["moon", "wolf", "Moon"]))
    argv = ["explore", "--from", "src.png", "--word", word]
    if label != "n":  # --n counts only without --alternatives
        argv += draw(st.sampled_from([[], ["--alternatives", "sun,stars"], ["--n", "2"]]))
    return Case(f"explore:{label}", argv + ["--out", "out"] + bad)


@st.composite
def read_only_cases(draw) -> Case:
    """heatmap, log and replay on files they cannot use."""
    return draw(st.sampled_from([
        Case("heatmap:source", ["heatmap", "--from", draw(st.sampled_from(
            ["missing.png", "dir", "notes.txt", "plain.png", "bomb.png", "truncated.png"])), "--word", "moon"]),
        Case("heatmap:no-maps", ["heatmap", "--from", "src.png", "--word", draw(st.sampled_from(
            ["moon", "zebra", "\x1b[31m", ""])), "--out", "heat.png"]),
        Case("heatmap:maps-damaged", ["heatmap", "--from", "src.png", "--word", "moon"],
             {"src.maps.npz": draw(st.one_of(st.binary(max_size=64), st.just(b"PK\x03\x04" + b"\0" * 40)))}),
        Case("log:db", ["log", "--db", draw(st.sampled_from(["missing.db", "dir", "junk.db", "foreign.sqlite",
                                                             "src.png"])), "--format", "csv", "--out", "x.csv"]),
        Case("log:format", ["log", "--db", "study.db", "--format", draw(_bad_text_choice()), "--out", "x.csv"]),
        Case("log:table", ["log", "--db", "study.db", "--format", "csv", "--table", draw(_bad_text_choice()),
                           "--out", "x.csv"]),
        Case("replay:db", ["replay", "--db", draw(st.sampled_from(["missing.db", "dir", "junk.db", "foreign.sqlite"]))]),
    ]))


# ---- strategies: PNG metadata ------------------------------------------------------------------------------------

JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)


def _not(valid) -> st.SearchStrategy:
    return JUNK.filter(lambda value: not valid(value))


def _whole_in(lo, hi):
    def valid(value):
        if isinstance(value, bool) or value is None:
            return False
        try:
            return lo <= int(float(value)) <= hi
        except (TypeError, ValueError, OverflowError):
            return False
    return valid


def _number_in(lo, hi):
    def valid(value):
        try:
            return not isinstance(value, bool) and value is not None and lo <= float(value) <= hi
        except (TypeError, ValueError, OverflowError):
            return False
    return valid


# Fields whose value, drawn from these strategies, certainly makes the recorded run invalid (for reweight and
# explore, which run the PNG's parameters again). Junk is anything JSON holds: nested lists, huge numbers, NaN.
BAD_FIELDS = {
    "steps": _not(_whole_in(1, 150)),
    "seed": _not(_whole_in(0, 2**63 - 1)),
    "width": st.one_of(st.integers(769, 10**30), st.integers(-10**6, 15), st.sampled_from([100, 65, "x", None, []])),
    "guidance": _not(_number_in(0, 30)),
    "scheduler": _not(lambda v: isinstance(v, str) and v.strip().lower() in ("ddim", "euler", "dpm++")),
    "syntax": _not(lambda v: isinstance(v, str) and v.strip().lower() in ("a1111", "compel", "none")),
    "weight_mode": _not(lambda v: v is None or (isinstance(v, str) and v.strip().lower() in
                                                  ("score", "prob", "embed", "a1111"))),
    "prompt": st.one_of(st.sampled_from(["", "   ", "BREAK", "(BREAK)"]), JUNK.filter(lambda v: not isinstance(v, str))),
    "weights": st.one_of(st.sampled_from([{"zebra": 1.0}, {"moon": 9}, {"moon": -1}, {"moon": "x"}, {"moon": None},
                                          {"moon": [1]}, {"": 1}]), st.lists(JUNK, max_size=3)),
}


@st.composite
def attune_chunks(draw) -> tuple[str, str]:
    """(class, attune JSON text) that cannot be run again: truncated, nested junk, or one field certainly bad."""
    full = source_version().to_dict()
    family = draw(st.sampled_from(["truncated", "junk", "field", "huge"]))
    if family == "truncated":
        text = json.dumps(full)
        return family, text[: draw(st.integers(0, len(text) - 1))]
    if family == "junk":  # a JSON value that is no version record (a dict holds no usable prompt)
        junk = draw(JUNK.filter(lambda v: not (isinstance(v, dict) and isinstance(v.get("prompt"), str))))
        return family, json.dumps(junk)
    if family == "huge":
        key = draw(st.sampled_from(["seed", "steps", "width", "height", "guidance"]))
        full[key] = draw(st.sampled_from([10**400, -(10**400), 1e308, float("inf"), float("nan")]))
        return f"huge-{key}", json.dumps(full)
    key = draw(st.sampled_from(sorted(BAD_FIELDS)))
    full[key] = draw(BAD_FIELDS[key])
    return f"field-{key}", json.dumps(full)


@st.composite
def parameters_chunks(draw) -> tuple[str, str]:
    """(class, A1111 parameters text) whose run is certainly invalid."""
    pairs = {"Steps": "2", "Sampler": "DDIM", "CFG scale": "4", "Seed": "3", "Size": "64x64"}
    key = draw(st.sampled_from(["prompt", "Steps", "Sampler", "CFG scale", "Seed", "Size", "Attune weights"]))
    prompt = PROMPT
    if key == "prompt":
        prompt = draw(st.sampled_from(["", " ", "BREAK", "(moon:9)"]))
    elif key == "Attune weights":
        pairs[key] = json.dumps(draw(st.sampled_from([{"zebra": 1.0}, {"moon": 9}, {"moon": -2}])))
    else:
        pairs[key] = draw({
            "Steps": _num(st.one_of(st.integers(max_value=0), st.integers(min_value=151))),
            "Sampler": st.sampled_from(["Heun", "LMS", "\x1b[31m"]),
            "CFG scale": st.sampled_from(["nan", "inf", "31", "-1", "1e400"]),
            "Seed": _num(st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63))),
            "Size": st.sampled_from(["100x64", "4096x4096", "0x0", "64x65"]),
        }[key])
    line = ", ".join(f"{name}: {json.dumps(value) if ',' in value else value}" for name, value in pairs.items())
    return f"parameters-{key}", f"{prompt}\n{line}"


@st.composite
def metadata_cases(draw) -> Case:
    """A PNG whose metadata cannot be run again, given to reweight, explore or heatmap; or to inpaint with another
    certainly-bad value (a PNG without usable metadata can be inpainted, with the defaults)."""
    chunks = {}
    kind = draw(st.sampled_from(["attune", "parameters", "both", "attune-truncated-only"]))
    labels = []
    if kind in ("attune", "both", "attune-truncated-only"):
        label, text = draw(attune_chunks()) if kind != "attune-truncated-only" else ("truncated", "{\"prompt\": ")
        chunks["attune"] = text
        labels.append(label)
    if kind in ("parameters", "both"):
        label, text = draw(parameters_chunks())
        chunks["parameters"] = text
        labels.append(label)
    png = png_with_text(chunks)
    command = draw(st.sampled_from(["reweight", "explore", "heatmap", "inpaint"]))
    if command == "reweight":
        argv = ["reweight", "--from", "meta.png", "--weight", "moon=1.2", "--out", "out"]
    elif command == "explore":
        argv = ["explore", "--from", "meta.png", "--word", "moon", "--alternatives", "sun", "--out", "out"]
    elif command == "heatmap":
        argv = ["heatmap", "--from", "meta.png", "--word", "moon"]
    else:
        extra_label, extra = draw(st.sampled_from([("mask-empty", ["--mask", "mask_empty.png"]),
                                                   ("mask-size", ["--mask", "mask_small.png"]),
                                                   ("steps", ["--steps", "0"]), ("out-is-a-file", ["--out", "notes.txt"])]))
        argv = ["inpaint", "--from", "meta.png", "--mask", "mask.png", "--prompt", "misty forest", "--out", "out", *extra]
        labels.append(extra_label)
    return Case(f"png-metadata:{command}:{'+'.join(sorted(set(l.split('-')[0] for l in labels)))}", argv,
                {"meta.png": png})


ALL_CASES = st.one_of(generate_cases(), inpaint_cases(), reweight_cases(), explore_cases(), read_only_cases(),
                      metadata_cases())
STRATEGIES = {"generate": generate_cases(), "inpaint": inpaint_cases(), "reweight": reweight_cases(),
              "explore": explore_cases(), "read-only": read_only_cases(), "png-metadata": metadata_cases()}


# ---- the full run -------------------------------------------------------------------------------------------------

def run_all(examples_per_family: int, template: Path) -> dict:
    counts: Counter = Counter()
    defects: list[dict] = []

    for family, strategy in STRATEGIES.items():
        @settings(max_examples=examples_per_family, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def collect(case):
            counts[case.klass] += 1
            found = run_case(case, template)
            if found:
                defects.append({"class": case.klass, "argv": case.argv, "defects": found})

        collect()
    return {"cases": sum(counts.values()), "defects": len(defects),
            "by_class": dict(sorted(counts.items())), "defect_examples": defects[:20]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bad_inputs", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON and write bench/results/bad_inputs.json")
    parser.add_argument("--examples", type=int, default=80, help="hypothesis examples per command family")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="attune-bad-template-") as folder:
        os.environ.setdefault("ATTUNE_CACHE", str(Path(folder) / "cache"))  # the CLI's error log stays out of ~
        report = run_all(args.examples, make_template(Path(folder) / "template"))
    report["examples_per_family"] = args.examples
    if args.json:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        print(json.dumps(report, sort_keys=True))
    else:
        print(f"{report['cases']} cases, {report['defects']} defects")
        for klass, count in report["by_class"].items():
            print(f"  {klass:<40} {count}")
        for example in report["defect_examples"]:
            print(f"DEFECT {example['class']}: {example['argv']!r} -> {example['defects']}")
    return 0 if report["defects"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
