"""`python -m engine ...`: generate, inpaint, heatmap, parse, log, replay. A stable contract (docs/cli.md).

Results are JSON on stdout; progress goes to stderr. Bad input exits non-zero with one line on stderr
("error: ..."), never a traceback (set ATTUNE_DEBUG=1 to see one).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import unicodedata
import warnings
from contextlib import contextmanager
from pathlib import Path

from engine.defaults import INPAINT_DEFAULTS
from engine.errors import AttuneError
from engine.words.weights import WEIGHT_METHODS, WEIGHT_MODES

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_IDENTICAL = 3  # replay: some versions differ from their stored images or could not be replayed
SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


# Bidi overrides/isolates and marks can reorder what a terminal shows; line separators break "one line".
_HIDDEN_FORMAT = {0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}


def _shows_raw(char: str) -> bool:
    """False for characters a terminal would act on instead of showing: C0/C1 controls, DEL, bidi controls,
    line separators, and lone surrogates (bytes that were not UTF-8)."""
    return not (unicodedata.category(char) in ("Cc", "Cs") or ord(char) in _HIDDEN_FORMAT)


def _escaped(char: str) -> str:
    code = ord(char)
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char)
    return named or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def terminal_text(text) -> str:
    """Text for the terminal: controls such as ESC, CR, NUL and bidi overrides shown as escapes (\\x1b, \\r,
    \\u202e), so a prompt cannot recolour, overwrite or reorder what the user reads."""
    return "".join(char if _shows_raw(char) else _escaped(char) for char in str(text))


def json_line(value) -> str:
    """One JSON line for stdout: non-ASCII text kept readable, but controls JSON leaves raw (C1, bidi, line
    separators) written as \\u escapes, which JSON readers decode to the same text."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return "".join(char if _shows_raw(char) else f"\\u{ord(char):04x}" for char in text)


class UsageError(Exception):
    """A bad command line (argparse's own errors land here instead of printing usage and exiting)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


# ---- option parsing ------------------------------------------------------------------------------------------

def parse_size(text: str) -> tuple[int, int]:
    found = SIZE_RE.match(text or "")
    if not found:
        raise AttuneError(f"--size must look like 512x512 (width x height), got '{text}'.")
    return int(found.group(1)), int(found.group(2))


def parse_weights(items: list[str] | None) -> dict[str, float]:
    """--weight WORD=W (repeatable); a phrase may contain spaces: --weight "full moon=1.3". A word given twice
    (whatever its case or spacing) takes its last value, as in the Python API (engine.words.weights.validate_weights)."""
    weights: dict[str, float] = {}
    for item in items or []:
        word, sep, value = item.rpartition("=")
        if not sep or not word.strip():
            raise AttuneError(f"--weight must look like WORD=1.5, got '{item}'.")
        try:
            number = float(value)
        except ValueError:
            raise AttuneError(f"--weight {word.strip()}: '{value}' is not a number.") from None
        if not math.isfinite(number):
            raise AttuneError(f"--weight {word.strip()}: the weight must be a finite number, got {value}.")
        weights = with_weight(weights, word.strip(), number)
    return weights


def with_weight(weights: dict[str, float], word: str, value: float) -> dict[str, float]:
    """weights with `word` set to value, replacing the same word in any case or spacing (the last one wins)."""
    from engine.words.prompt import word_key

    kept = {key: weight for key, weight in weights.items() if word_key(key) != word_key(word)}
    kept[word] = value
    return kept


def _add_generation_options(parser: argparse.ArgumentParser, *, inpaint: bool) -> None:
    # For inpaint, options left out keep the source PNG's values (so their defaults are None here).
    # For generate, steps, guidance, size and scheduler left out take the model's defaults (engine.model.family).
    default = (lambda value: None) if inpaint else (lambda value: value)
    parser.add_argument("--prompt", required=True, help=(
        "the inpaint box as typed: 'replace with X', 'add X', 'remove X', '' to erase, or plain text "
        "(docs/app.md)" if inpaint else "the prompt (A1111 emphasis syntax by default)"))
    parser.add_argument("--negative", default=default(""), help="negative prompt")
    parser.add_argument("--seed", type=int, default=default(0))
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--guidance", type=float, default=None,
                        help="default: the model's (built-in 4, SD 7.5, Turbo/LCM off)")
    parser.add_argument("--size", default=None, help="WxH, e.g. 512x512"
                        + (" (inpaint: the source image's size; only checked)" if inpaint
                           else " (default: the model's, its UNet's sample size x the VAE factor)"))
    parser.add_argument("--scheduler", default=None, help="ddim | euler | dpm++ (default: the model folder's)")
    parser.add_argument("--syntax", default=default("a1111"), help="emphasis syntax: a1111 | compel | none")
    parser.add_argument("--weight", action="append", metavar="WORD=W", help="word weight in 0-3 (repeatable)")
    parser.add_argument("--weight-mode", default=default("score"), help="how word weights act: " + "; ".join(
        f"{name} = {meaning}" for name, meaning in WEIGHT_METHODS.items()))
    _add_session_options(parser, "diffusers folder, single-file .safetensors (with --config) or hub id (default: "
                         "built-in tiny-scenes;"
                         + (" inpaint: the source PNG's model when its folder exists)" if inpaint else ")"))


def _add_session_options(parser: argparse.ArgumentParser, model_help: str) -> None:
    """Where a command runs and where its versions are logged."""
    parser.add_argument("--model", default=None, help=model_help)
    parser.add_argument("--config", default=None, metavar="FOLDER",
                        help="with a single-file .safetensors --model: a diffusers folder of its family whose configs "
                             "and tokenizer read it (else an attune.json next to the file names one)")
    parser.add_argument("--backend", default="auto", help="auto | torch | onnx")
    parser.add_argument("--server", default=None, metavar="URL",
                        help="run on an Attune server (engine.remote.server) instead of here; default $ATTUNE_SERVER")
    parser.add_argument("--db", default=None, help="SQLite log (default: DIR/attune.db)")
    parser.add_argument("--participant", default="cli", help="participant id for the log rows")
    parser.add_argument("--session", default=None, help="session id for the log rows (default: a new one)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs, maps and log")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m engine", description="Attune engine: generate, inspect and refine images.")
    commands = parser.add_subparsers(dest="command", metavar="{generate,inpaint,reweight,heatmap,parse,log,replay,explore,suggest}",
                                     parser_class=_Parser)
    commands.required = True

    generate = commands.add_parser("generate", help="text to image; prints the Version record as JSON")
    _add_generation_options(generate, inpaint=False)

    inpaint = commands.add_parser("inpaint", help="repaint a PNG where the mask is white; prints the Version")
    inpaint.add_argument("--from", dest="source", required=True, metavar="PNG")
    inpaint.add_argument("--mask", required=True, metavar="MASK_PNG", help="white = change")
    inpaint.add_argument("--mask-blur", type=int, default=INPAINT_DEFAULTS.mask_blur)
    inpaint.add_argument("--only-masked", action="store_true", help="work on a crop around the mask")
    inpaint.add_argument("--padding", type=int, default=INPAINT_DEFAULTS.padding,
                         help="crop padding in pixels (with --only-masked)")
    inpaint.add_argument("--auto-crop", action=argparse.BooleanOptionalAction, default=INPAINT_DEFAULTS.auto_crop,
                         help="small masks work on a crop around the mask even without --only-masked (default: on)")
    _add_generation_options(inpaint, inpaint=True)

    reweight = commands.add_parser("reweight", help="reweight words of an Attune PNG (same seed and settings); "
                                   "prints the child Version")
    reweight.add_argument("--from", dest="source", required=True, metavar="PNG")
    reweight.add_argument("--weight", action="append", required=True, metavar="WORD=W",
                          help="word weight in 0-3 (repeatable); replaces the PNG's weight for that word")
    reweight.add_argument("--weight-mode", default=None, help=" | ".join(WEIGHT_MODES) + " (default: the PNG's)")
    reweight.add_argument("--layout", default=None, help="blend | free | inject | blend+inject (default: blend, which "
                          "keeps the rest of the picture; free re-runs it; inject and blend+inject reuse the parent's "
                          "attention, PyTorch backend only)")
    _add_session_options(reweight, "model folder (default: the PNG's model when its folder exists, else the built-in "
                         "tiny-scenes)")

    heatmap = commands.add_parser("heatmap", help="a word's attention heatmap for an Attune PNG")
    heatmap.add_argument("--from", dest="source", required=True, metavar="PNG")
    heatmap.add_argument("--word", required=True, help="a word or phrase of the prompt")
    heatmap.add_argument("--out", default=None, metavar="HEAT_PNG", help="write the heatmap as a grey PNG")
    heatmap.add_argument("--model", default=None, help="model folder for the tokenizer (default: as recorded)")

    parse = commands.add_parser("parse", help="emphasis syntax -> JSON list of [text, weight]")
    parse.add_argument("prompt")
    parse.add_argument("--syntax", default="a1111", help="a1111 | compel | none")

    log = commands.add_parser("log", help="export the study log")
    log.add_argument("--db", required=True, metavar="PATH")
    log.add_argument("--format", required=True, help="csv | parquet")
    log.add_argument("--out", required=True, metavar="FILE", help="FILE.zip: both tables zipped; else FILE and FILE-events")
    log.add_argument("--table", default="all", help="versions | events | all (default)")

    replay = commands.add_parser("replay", help="regenerate logged versions and compare them with their images")
    replay.add_argument("--db", required=True, metavar="PATH", help="the study log")
    replay.add_argument("--version", default=None, metavar="ID", help="one version id (default: every version)")
    replay.add_argument("--session", default=None, metavar="ID", help="only this session's versions")
    replay.add_argument("--study", default=None, metavar="ID", help="only this study's versions")
    replay.add_argument("--model", default=None, help="model folder to use when the recorded one has moved "
                        "(its hash must match the log's)")
    replay.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    explore = commands.add_parser("explore", help="a same-seed grid: one word of a PNG's prompt replaced by each "
                                  "alternative; prints the Version records as a JSON list")
    explore.add_argument("--from", dest="source", required=True, metavar="PNG", help="an Attune PNG (the parent)")
    explore.add_argument("--word", required=True, help="the word of the prompt to replace (its first occurrence)")
    explore.add_argument("--n", type=int, default=4, help="how many alternatives when --alternatives is not given")
    explore.add_argument("--alternatives", default=None, metavar="A,B,C", help="comma-separated replacements")
    _add_session_options(explore, "model folder or hub id (default: the PNG's model folder when it exists, else the "
                         "built-in model)")

    suggest = commands.add_parser("suggest", help="the prompt optimiser's rewrite of a prompt (Promptist protocol)")
    suggest.add_argument("--prompt", required=True)
    suggest.add_argument("--lm", default=None, metavar="PATH_OR_ID",
                         help="causal LM folder or hub id (default: ATTUNE_PROMPT_LM, else microsoft/Promptist)")
    return parser


# ---- commands ------------------------------------------------------------------------------------------------

def _progress_bar(label: str):
    """A tqdm bar on stderr, fed by the engine's (step, total) callback."""
    from tqdm import tqdm

    state = {"bar": None}

    def progress(step: int, total: int) -> None:
        if state["bar"] is None:
            state["bar"] = tqdm(total=total, desc=label, file=sys.stderr, leave=False, dynamic_ncols=True)
        bar = state["bar"]
        bar.update(max(0, step - bar.n))
        if step >= total:
            bar.close()

    def close() -> None:
        if state["bar"] is not None:
            state["bar"].close()

    progress.close = close
    return progress


def _db_path(args) -> Path:
    return Path(args.db) if args.db else Path(args.out) / "attune.db"


def _check_out(args) -> None:
    """The output folder and the log can be used: checked before a model loads or anything is created."""
    from engine.pipeline.backend import BACKENDS

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise AttuneError(f"--out must be a folder; {out} is a file.")
    if args.backend not in BACKENDS:  # checked here, not when the model loads
        raise AttuneError(f"Unknown backend '{args.backend}': choose one of {', '.join(BACKENDS)}.")
    db = _db_path(args)
    if db.is_dir():
        raise AttuneError(f"The log path {db} is a folder; give a file name such as study.db.")
    if db.exists():
        _check_attune_log(db)


def _check_attune_log(db: Path) -> None:
    """AttuneError unless db is an Attune study log. Read as an immutable file: a refused command must not leave
    even SQLite's -wal/-shm side files beside someone's database."""
    import sqlite3
    from contextlib import closing
    from urllib.parse import quote

    try:
        with closing(sqlite3.connect(f"file:{quote(str(db.resolve()))}?immutable=1", uri=True)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as error:
        raise AttuneError(f"{db} is not a usable SQLite log ({error}).") from None
    if not {"versions", "events"} <= tables:
        raise AttuneError(f"{db} is not an Attune study log (it has no versions and events tables).")


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what creating it would add), or None."""
    missing = None
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing = folder
    return missing


@contextmanager
def _studio(args):
    """The command's Studio. When the command fails after this (a server that cannot be reached, a NaN image, an
    interrupt), what it wrote is taken back: its rows, their files, and a log or folders it created."""
    from engine.study.log import StudyLog
    from engine.remote.client import RemoteEngine, make_engine
    from engine.study.studio import Studio

    _check_out(args)
    engine = make_engine(args.model, backend=args.backend, server=args.server, export=args.export)
    if isinstance(engine, RemoteEngine):
        engine.info  # an unreachable server fails here, before a log or a folder exists
    out, db = Path(args.out), _db_path(args)
    created = [folder for folder in (_first_missing(out), _first_missing(db.parent)) if folder is not None]
    db_is_new = not db.exists()
    studio = None
    try:
        studio = Studio(engine, StudyLog(db), out, participant_id=args.participant, session_id=args.session,
                        study_id="cli")
        yield studio
    except BaseException:
        if studio is not None:
            _take_back(studio)
        if db_is_new:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(db) + suffix).unlink(missing_ok=True)
        for folder in created:
            _remove_empty_folders(folder)
        raise
    finally:
        engine.close()


def _take_back(studio) -> None:
    """Remove the versions this command logged (rows first, then their files)."""
    for version in studio.history:
        studio.log.remove_version(version.id)
        for path in (version.image_path, version.maps_path, version.mask_path):
            if path:
                Path(path).unlink(missing_ok=True)


def _remove_empty_folders(top: Path) -> None:
    if not top.is_dir():
        return
    for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass
    try:
        top.rmdir()
    except OSError:  # not empty: something else lives there
        pass


def _limits(model) -> tuple[int, int | None]:
    """(VAE factor, largest side) from the model folder's configs, read before the model loads; (1, None) when
    they cannot be read here (the engine checks again once it has loaded the model)."""
    from engine.pipeline.params import MAX_SIDE
    from engine.model.preflight import model_limits

    return model_limits(model, MAX_SIDE) or (1, None)


def _check_run(params, model):
    """Every value of one image's run, checked as the engine will check it (left-out values: the model's defaults,
    read from its folder's configs when it is here), without loading the model."""
    from engine.model.preflight import defaults_for
    from engine.pipeline.params import validate_generate

    checked = validate_generate(params, *_limits(model), defaults_for(model))
    _check_words(checked)
    return checked


def _check_recorded(meta, source, model):
    """The parameters a PNG recorded, which a reweight or explore runs again: refused with the PNG named."""
    from engine.study.studio import version_params

    try:
        return _check_run(version_params(meta), model)
    except AttuneError as error:
        raise AttuneError(f"{source}: the parameters recorded in this PNG cannot be run: {error}") from None


def _check_words(params) -> None:
    """Weights name words of the prompt; no word's emphasis x weights leaves 0-3 (no tokenizer needed)."""
    from engine.words.prompt import untokenized_words
    from engine.words.weights import check_effective_weights, validate_weights

    words = untokenized_words(params.prompt, params.syntax)
    if not words.words:
        raise AttuneError("The prompt has no words.")
    check_effective_weights(words, validate_weights(params.weights, words))
    check_effective_weights(untokenized_words(params.negative_prompt, params.syntax), None, "negative prompt")


def _warn_unknown(version) -> None:
    unknown = list(version.unknown_words or [])
    if unknown:
        print("warning: words this model does not know (they have little effect): "
              + terminal_text(", ".join(unknown)), file=sys.stderr)
    if version.dropped_words:  # a long prompt is chunked; only what lies past the last chunk is left out
        from engine.words.prompt import MAX_CHUNKS

        print(f"warning: past the prompt's last {MAX_CHUNKS} x 75-token chunks, left out: "
              + terminal_text(", ".join(version.dropped_words)), file=sys.stderr)


def _print_version(version) -> None:
    _warn_unknown(version)
    print(json.dumps(version.to_dict(), sort_keys=True))


def cmd_generate(args) -> int:
    from dataclasses import replace

    from engine.pipeline.params import GenerateParams, unset_values

    width, height = parse_size(args.size) if args.size is not None else (None, None)
    params = GenerateParams(
        prompt=args.prompt, negative_prompt=args.negative, seed=args.seed, steps=args.steps, guidance=args.guidance,
        width=width, height=height, scheduler=args.scheduler, syntax=args.syntax,
        weights=parse_weights(args.weight), weight_mode=args.weight_mode,
    )
    _check_out(args)
    checked = _check_run(params, args.model)  # before the model loads or a log is made
    # Options left out stay unset: the engine fills them with its model's defaults and records where they came from.
    params = replace(checked, **{name: None for name in unset_values(params)})
    with _studio(args) as studio:
        progress = _progress_bar("generate")
        try:
            version = studio.generate(params, progress=progress)
        finally:
            progress.close()
    _print_version(version)
    return 0


def cmd_inpaint(args) -> int:
    from engine.sampling.masks import mask_array

    image, meta = _read_source(args.source)
    if args.size is not None and parse_size(args.size) != image.size:
        raise AttuneError(f"--size {args.size} does not match the source image ({image.width}x{image.height}).")
    mask = mask_array(args.mask, image.size)  # checked before the model loads
    overrides = {key: value for key, value in {
        "negative_prompt": args.negative, "seed": args.seed, "steps": args.steps, "guidance": args.guidance,
        "scheduler": args.scheduler, "syntax": args.syntax, "weight_mode": args.weight_mode,
    }.items() if value is not None}
    if args.weight:
        overrides["weights"] = parse_weights(args.weight)
    if args.model is None and meta is not None and _is_folder(meta.model_id):
        args.model = meta.model_id  # the model that made the source image
    _check_inpaint(args, image, mask, meta, overrides)  # before the source is recorded or the model loads
    # A failure inside (e.g. a NaN result) takes back the source copy too: no row or PNG without its inpaint.
    with _studio(args) as studio:
        # The source becomes the parent version (kind "restore") so the log shows where the inpaint started.
        parent = studio.add_image(image, meta) if meta is not None else studio.add_image(image, prompt=args.prompt)
        progress = _progress_bar("inpaint")
        try:
            version = studio.inpaint(mask, args.prompt, mask_blur=args.mask_blur, only_masked=args.only_masked,
                                     padding=args.padding, parent=parent, progress=progress, overrides=overrides,
                                     auto_crop=args.auto_crop)
        finally:
            progress.close()
    _print_version(version)
    return 0


def _check_inpaint(args, image, mask, meta, overrides) -> None:
    """Every inpaint value, checked as the engine will (a bad one used to leave a `restore` row and a PNG)."""
    from dataclasses import replace

    from engine.pipeline.params import InpaintParams, validate_inpaint
    from engine.words.prompt import untokenized_words
    from engine.study.studio import version_params
    from engine.study.versions import Version
    from engine.sampling.loop import is_small_mask
    from engine.words.inpaint_instruction import parse_inpaint_instruction

    _check_out(args)
    source = meta if meta is not None else Version(prompt=args.prompt, width=image.width, height=image.height)
    base = version_params(source)
    # the prompt that will run (an erase that fills runs none: the source's parameters are checked instead)
    prompt = parse_inpaint_instruction(args.prompt, base.prompt, small_mask=is_small_mask(mask)).prompt or base.prompt
    if "weights" not in overrides:  # the source's weights on words the inpaint prompt lacks are dropped
        words = untokenized_words(prompt, overrides.get("syntax", base.syntax))
        kept = {}
        for word, weight in (base.weights or {}).items():
            try:
                words.indices_for(word)
            except AttuneError:
                continue
            kept[word] = weight
        base = replace(base, weights=kept)
    try:
        base = replace(base, **overrides, prompt=prompt)
    except TypeError as error:
        raise AttuneError(f"Unknown inpaint option: {error}.") from None
    checked, _ = validate_inpaint(InpaintParams(base=base, image=image, mask=mask, mask_blur=args.mask_blur,
                                                only_masked=args.only_masked, padding=args.padding,
                                                auto_crop=args.auto_crop), *_limits(args.model))
    _check_words(checked.base)


def cmd_reweight(args) -> int:
    """The Refine page's sliders from the command line: the PNG's version is the parent (logged as a "restore"
    root), the reweight its child."""
    from dataclasses import replace

    from engine.sampling.layout import DEFAULT_LAYOUT, PORTABLE_LAYOUTS, check_layout
    from engine.study.pngmeta import read_png
    from engine.remote.client import server_from_env

    weights_given = parse_weights(args.weight)
    layout = check_layout(args.layout if args.layout is not None else DEFAULT_LAYOUT)
    if layout not in PORTABLE_LAYOUTS and (server_from_env(args.server) or args.backend == "onnx"):
        where = "on an Attune server" if server_from_env(args.server) else "on the onnx backend"
        raise AttuneError(f"Layout '{layout}' (attention injection) runs on the PyTorch backend only, not {where}: "
                          f"use one of {', '.join(PORTABLE_LAYOUTS)}.")
    image, meta = read_png(args.source)  # AttuneError when the PNG has no parameters to redo
    if meta.kind == "inpaint":
        raise AttuneError("This PNG is an inpaint; reweighting it needs its source image and mask (use the app).")
    weights = dict(meta.weights or {})
    for word, value in weights_given.items():  # a word the PNG weighted takes the new value (the last one wins)
        weights = with_weight(weights, word, value)
    mode = args.weight_mode if args.weight_mode is not None else (meta.weight_mode or "score")
    if args.model is None and _is_folder(meta.model_id):
        args.model = meta.model_id
    _check_out(args)
    parent_params = _check_recorded(meta, args.source, args.model)  # the parent is re-run as the blend's base
    _check_run(replace(parent_params, weights=weights, weight_mode=mode), args.model)
    with _studio(args) as studio:
        parent = studio.add_image(image, meta)  # its parameters are re-run as the parent's trajectory
        progress = _progress_bar("reweight")
        try:
            version = studio.reweight(weights, mode, parent=parent, progress=progress, layout=layout)
        finally:
            progress.close()
    _print_version(version)
    return 0


def _is_folder(model_id) -> bool:
    return bool(model_id) and isinstance(model_id, str) and Path(model_id).is_dir()


def _read_source(path: str):
    """(RGB image, Version or None): a PNG without Attune/A1111 metadata can still be inpainted."""
    from PIL import Image

    from engine.study.pngmeta import NoMetadataError, read_png

    try:
        return read_png(path)
    except NoMetadataError:
        pass
    with Image.open(path) as opened:
        return opened.convert("RGB"), None


def cmd_heatmap(args) -> int:
    import numpy as np
    from PIL import Image

    from engine.attention.maps import AttentionMaps
    from engine.study.pngmeta import read_png
    from engine.words.prompt import split_words, tokenize_prompt

    image, version = read_png(args.source)
    maps_path = _find_maps(Path(args.source), version)
    maps = AttentionMaps.load(maps_path)
    tokenizer = _load_tokenizer(args.model or version.model_id)
    word_tokens = tokenize_prompt(tokenizer, version.inpaint_prompt or version.prompt, version.syntax)
    indices = word_tokens.indices_for(args.word)
    raw = maps.word_heatmap(word_tokens, args.word, normalize=False)
    totals = maps.word_totals(word_tokens)
    lowered = {w.lower(): t for w, t in totals.items()}
    total = float(sum(lowered.get(w, 0.0) for w in {w.lower() for w in split_words(args.word)}))
    result = {"word": args.word, "token_indices": indices, "max": float(raw.max()), "mean": float(raw.mean()),
              "total": total, "maps_path": str(maps_path)}
    if args.out:
        import io

        from engine.attention.maps import normalize_map
        from engine.study.log import atomic_write_bytes

        heat = normalize_map(raw)
        buffer = io.BytesIO()
        Image.fromarray((np.clip(heat, 0, 1) * 255).round().astype(np.uint8), mode="L").save(buffer, format="PNG")
        result["out"] = str(atomic_write_bytes(args.out, buffer.getvalue()))
    print(json.dumps(result, sort_keys=True))
    return 0


def _find_maps(png: Path, version) -> Path:
    """The maps recorded in the PNG, or the file Studio writes beside it (after the folder was moved)."""
    candidates = []
    if version.maps_path:
        candidates.append(Path(version.maps_path))
    stem = png.name[: -len(".png")] if png.name.lower().endswith(".png") else png.stem
    candidates.append(png.with_name(stem + ".maps.npz"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise AttuneError(f"No attention maps found for {png} (looked for {candidates[-1].name} beside it).")


def _load_tokenizer(model):
    from engine.model.loading import default_model_path
    from engine.words.tokenizer import load_tokenizer  # tokenizer.json without transformers (the light install)

    from engine.model.preflight import BUILTIN_MODEL_ID

    # Versions record the built-in model as "tiny-scenes", which is not a folder name relative to the caller.
    folder = Path(model) if model and not (model == BUILTIN_MODEL_ID and not Path(model).is_dir()) \
        else default_model_path()
    tokenizer_dir = folder / "tokenizer"
    if not tokenizer_dir.is_dir():
        raise AttuneError(f"No tokenizer folder at {tokenizer_dir}; pass --model with the model's folder.")
    try:
        return load_tokenizer(tokenizer_dir)
    except AttuneError:
        raise
    except Exception as error:  # a broken folder fails in many ways inside transformers
        raise AttuneError(f"Could not load the tokenizer in {tokenizer_dir}: {type(error).__name__}.") from None


def cmd_parse(args) -> int:
    from engine.words.prompt import parse_with_notes

    spans, notes = parse_with_notes(args.prompt, args.syntax)
    print(json_line([[text, weight] for text, weight in spans]))
    for note in dict.fromkeys(notes):  # how the syntax was read, where it may surprise (never an error)
        print(terminal_text(note), file=sys.stderr)
    return 0


def cmd_log(args) -> int:
    from engine.study.log import FORMATS, TABLES, StudyLog

    if args.out.strip() in ("", "-"):
        raise AttuneError("--out needs a file name (FILE.zip for both tables in one zip).")
    if args.format not in FORMATS:  # checked before the log is opened (opening a WAL log adds its side files)
        raise AttuneError(f"Unknown export format '{args.format}'; use csv or parquet.")
    if args.table not in TABLES:
        raise AttuneError(f"Unknown table '{args.table}'; use versions, events or all.")
    log = StudyLog.open_existing(args.db)  # never creates or changes the database it exports
    written = log.export(args.out, args.format, table=args.table)
    print(json.dumps({"written": [str(p) for p in written], **log.counts()}, sort_keys=True))
    return 0


def cmd_replay(args) -> int:
    """Exit 0 when every selected version came out bit-identical, 3 when some differ or could not be replayed."""
    from engine.study.log import StudyLog
    from engine.study.replay import replay_log

    log = StudyLog.open_existing(args.db)
    report = replay_log(log, version_id=args.version, session_id=args.session, study_id=args.study,
                        model=args.model, progress=lambda done, total: print(
                            f"replayed {done}/{total}", file=sys.stderr) if not args.json else None)
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=True))
    else:
        for entry in report.results:
            diff = "-" if entry.max_abs_diff is None else str(entry.max_abs_diff)
            print(terminal_text(f"v{entry.number:03d} {entry.id} {entry.kind:<8} {entry.status:<12} "
                                f"max abs diff {diff:>3}" + (f"  ({entry.reason})" if entry.reason else "")))
        print(f"{report.identical} of {len(report.results)} versions bit-identical "
              f"({report.versions} replayed)")
    if not report.results:
        print("warning: no versions matched", file=sys.stderr)
    return 0 if report.all_identical else EXIT_NOT_IDENTICAL


def cmd_explore(args) -> int:
    from engine.study import explore

    alternatives = None
    if args.alternatives is not None:
        alternatives = [a.strip() for a in args.alternatives.split(",") if a.strip()]
        if not alternatives:
            raise AttuneError("--alternatives needs at least one word, e.g. --alternatives sun,stars.")
    if alternatives is None and not 1 <= args.n <= explore.MAX_GRID:
        raise AttuneError(f"--n must be between 1 and {explore.MAX_GRID} (the grid's size), got {args.n}.")
    image, meta = _read_source(args.source)
    if meta is None:
        raise AttuneError(f"{args.source} has no Attune parameters: explore needs the prompt and seed it was made with.")
    if args.model is None and _is_folder(meta.model_id):
        args.model = meta.model_id
    _check_out(args)
    _check_explore(meta, args, alternatives)  # every cell, before the model loads or the PNG is recorded
    with _studio(args) as studio:
        parent = studio.add_image(image, meta)  # kind "restore": the grid's parent in this log
        progress = _progress_bar("explore")
        try:
            versions = explore.explore(studio, args.word, alternatives, n=args.n, parent=parent, progress=progress)
        finally:
            progress.close()
    words = [v.edit.split("→", 1)[1].strip() for v in versions]
    print(json.dumps([{"alternative": word, "image_path": v.image_path, "seed": v.seed, "version": v.to_dict()}
                      for word, v in zip(words, versions)], sort_keys=True))
    return 0


def _check_explore(meta, args, alternatives) -> None:
    """The grid's cells as engine.study.explore will make them: the word, each alternative's prompt and weights."""
    from dataclasses import replace

    from engine.words.alternatives import alternatives as known_alternatives
    from engine.study.explore import MAX_GRID
    from engine.words.prompt import untokenized_words as weighted_words
    from engine.words.prompt_edit import find_word, prompt_words, replace_word, weights_after_replace

    base = _check_recorded(meta, args.source, args.model)
    index = find_word(base.prompt, args.word)
    old = prompt_words(base.prompt)[index].text
    if alternatives is None:  # the model's vocabulary may narrow these further once it has loaded
        if not known_alternatives(old, None, include_different=False):
            raise AttuneError(f"No alternatives known for '{old}': type your own (e.g. --alternatives a,b,c).")
        return
    cells = list(dict.fromkeys(" ".join(a.split()) for a in alternatives))
    cells = [a for a in cells if a.lower() != old.lower()]
    if not cells:
        raise AttuneError(f"No alternatives to explore for '{old}' (each is the word already there).")
    if len(cells) > MAX_GRID:
        raise AttuneError(f"An explore grid holds at most {MAX_GRID} alternatives; got {len(cells)}.")
    for cell in cells:
        try:
            prompt = replace_word(base.prompt, index, cell)
            moved = weights_after_replace(base.weights, old, cell)
            words = weighted_words(prompt, base.syntax)
            kept = {word: weight for word, weight in moved.items() if _names_a_word(words, word)}
            _check_run(replace(base, prompt=prompt, weights=kept), args.model)
        except AttuneError as error:
            raise AttuneError(f"--alternatives '{cell}': {error}") from None


def _names_a_word(words, word) -> bool:
    try:
        words.indices_for(word)
    except AttuneError:
        return False
    return True


def cmd_suggest(args) -> int:
    from engine.words.suggest import suggest

    print(json_line(suggest(args.prompt, args.lm).to_dict()))
    return 0


COMMANDS = {"generate": cmd_generate, "inpaint": cmd_inpaint, "heatmap": cmd_heatmap, "parse": cmd_parse,
            "log": cmd_log, "replay": cmd_replay, "explore": cmd_explore, "suggest": cmd_suggest,
            "reweight": cmd_reweight}


def _quiet_libraries() -> None:
    """Keep stderr for our progress and errors: no library log lines or weight-loading bars."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in ("transformers", "diffusers"):
        module = sys.modules.get(name)
        if module is not None:
            try:
                module.utils.logging.set_verbosity_error()
                module.utils.logging.disable_progress_bar()
            except AttributeError:
                pass


def _one_line(text: str) -> str:
    """One terminal-safe line: controls escaped first (so CR or ESC in a prompt show as \\r, \\x1b), then spaces."""
    return " ".join(terminal_text(text).split()) or "unknown error"


def _check_text_options(args) -> None:
    """Text options are stored in PNGs and the log: bytes that are not UTF-8 (lone surrogates in argv) are refused
    here, where the option can still be named. Paths may be any bytes the file system allows."""
    paths = {"source", "mask", "out", "db", "model", "lm", "server", "command"}
    for name, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        if name in paths or not all(isinstance(item, str) for item in values):
            continue
        if any(unicodedata.category(char) == "Cs" for item in values for char in item):
            option = name if name == "prompt" and args.command == "parse" else "--" + name.replace("_", "-")
            raise AttuneError(f"{option} is not valid UTF-8 text.")


def _internal_error(command: str, error: BaseException) -> str:
    """The one line for a bug (not bad input): what failed, and where its traceback was written."""
    import traceback
    from datetime import datetime, timezone

    from engine.model.onnx_files import cache_root

    what = f"internal error in `python -m engine {command}` ({type(error).__name__}: {error})"
    try:
        log = cache_root() / "cli-errors.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8", errors="backslashreplace") as file:
            file.write(f"--- {datetime.now(timezone.utc).isoformat()} python -m engine {command}\n")
            file.write("".join(traceback.format_exception(error)))
        return f"{what}; this is a bug, not your input: the traceback is in {log}"
    except OSError:
        return f"{what}; this is a bug, not your input: run again with ATTUNE_DEBUG=1 to see the traceback"


def _convert_single_file(args) -> None:
    """--config: read the single-file --model with that folder's configs now (kept in the cache), before any check."""
    config = vars(args).get("config")
    if config is None:
        return
    if args.model is None or not Path(args.model).expanduser().is_file():
        raise AttuneError("--config is for a single-file .safetensors --model; a diffusers folder has its own configs.")
    from engine.model.single_file import resolve

    resolve(args.model, config)


def main(argv: list[str] | None = None, export=None) -> int:
    """export: how a model's ONNX graphs are exported on first use (engine/__main__.py hands in export.onnx's)."""
    _quiet_libraries()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _run(argv, export)


def _run(argv: list[str] | None, export=None) -> int:
    command = "?"
    try:
        args = build_parser().parse_args(argv)
        args.export = export
        args.server = vars(args).get("server")  # only the commands that run a model take --server
        command = args.command
        _check_text_options(args)
        _convert_single_file(args)
        return COMMANDS[args.command](args)
    except UsageError as error:
        print(f"error: {_one_line(error)} (see python -m engine --help)", file=sys.stderr)
        return EXIT_USAGE
    except AttuneError as error:
        message = str(error)
    except FileNotFoundError as error:
        message = f"file not found: {error.filename or error}"
    except PermissionError as error:
        message = f"permission denied: {error.filename or error}"
    except IsADirectoryError as error:
        message = f"is a folder, not a file: {error.filename or error}"
    except OSError as error:  # str(error) already names the file when there is no strerror
        message = f"{error.strerror}: {error.filename}" if error.strerror and error.filename else str(error)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # never a traceback for the user; ATTUNE_DEBUG=1 shows it
        if os.environ.get("ATTUNE_DEBUG"):
            raise
        message = _internal_error(command, error)
    if os.environ.get("ATTUNE_DEBUG"):
        import traceback

        traceback.print_exc()
    print(f"error: {_one_line(message)}", file=sys.stderr)
    return EXIT_ERROR
