"""`python -m engine ...`: generate, inpaint, heatmap, parse, log. A stable contract (docs/cli.md).

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
import warnings
from pathlib import Path

from engine.errors import AttuneError

EXIT_ERROR = 1
EXIT_USAGE = 2
SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


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
    """--weight WORD=W (repeatable); a phrase may contain spaces: --weight "full moon=1.3"."""
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
        weights[word.strip()] = number
    return weights


def _add_generation_options(parser: argparse.ArgumentParser, *, inpaint: bool) -> None:
    # For inpaint, options left out keep the source PNG's values (so their defaults are None here).
    default = (lambda value: None) if inpaint else (lambda value: value)
    parser.add_argument("--prompt", required=True, help="the prompt (A1111 emphasis syntax by default)")
    parser.add_argument("--negative", default=default(""), help="negative prompt")
    parser.add_argument("--seed", type=int, default=default(0))
    parser.add_argument("--steps", type=int, default=default(20))
    parser.add_argument("--guidance", type=float, default=default(7.5))
    parser.add_argument("--size", default=None if inpaint else "128x128", help="WxH, e.g. 512x512"
                        + (" (inpaint: the source image's size; only checked)" if inpaint else ""))
    parser.add_argument("--scheduler", default=default("ddim"), help="ddim | euler | dpm++")
    parser.add_argument("--syntax", default=default("a1111"), help="emphasis syntax: a1111 | compel | none")
    parser.add_argument("--weight", action="append", metavar="WORD=W", help="word weight in 0-3 (repeatable)")
    parser.add_argument("--weight-mode", default=default("score"), help="score | prob | embed")
    parser.add_argument("--model", default=None, help="diffusers folder or hub id (default: built-in tiny-scenes;"
                        + (" inpaint: the source PNG's model when its folder exists)" if inpaint else ")"))
    parser.add_argument("--backend", default="auto", help="auto | torch | onnx")
    parser.add_argument("--db", default=None, help="SQLite log (default: DIR/attune.db)")
    parser.add_argument("--participant", default="cli", help="participant id for the log rows")
    parser.add_argument("--session", default=None, help="session id for the log rows (default: a new one)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG, maps and log")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m engine", description="Attune engine: generate, inspect and refine images.")
    commands = parser.add_subparsers(dest="command", metavar="{generate,inpaint,reweight,heatmap,parse,log}", parser_class=_Parser)
    commands.required = True

    generate = commands.add_parser("generate", help="text to image; prints the Version record as JSON")
    _add_generation_options(generate, inpaint=False)

    inpaint = commands.add_parser("inpaint", help="repaint a PNG where the mask is white; prints the Version")
    inpaint.add_argument("--from", dest="source", required=True, metavar="PNG")
    inpaint.add_argument("--mask", required=True, metavar="MASK_PNG", help="white = change")
    inpaint.add_argument("--mask-blur", type=int, default=4)
    inpaint.add_argument("--only-masked", action="store_true", help="work on a crop around the mask")
    inpaint.add_argument("--padding", type=int, default=16, help="crop padding in pixels (with --only-masked)")
    _add_generation_options(inpaint, inpaint=True)

    reweight = commands.add_parser("reweight", help="reweight words of an Attune PNG (same seed and settings); "
                                   "prints the child Version")
    reweight.add_argument("--from", dest="source", required=True, metavar="PNG")
    reweight.add_argument("--weight", action="append", required=True, metavar="WORD=W",
                          help="word weight in 0-3 (repeatable); replaces the PNG's weight for that word")
    reweight.add_argument("--weight-mode", default=None, help="score | prob | embed (default: the PNG's)")
    reweight.add_argument("--layout", default=None, help="blend | free (default: blend, which keeps the rest of the "
                          "picture; free re-runs it)")
    reweight.add_argument("--model", default=None, help="model folder (default: the PNG's model when its folder "
                          "exists, else the built-in tiny-scenes)")
    reweight.add_argument("--backend", default="auto", help="auto | torch | onnx")
    reweight.add_argument("--db", default=None, help="SQLite log (default: DIR/attune.db)")
    reweight.add_argument("--participant", default="cli", help="participant id for the log rows")
    reweight.add_argument("--session", default=None, help="session id for the log rows (default: a new one)")
    reweight.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG, maps and log")

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


def _studio(args):
    from engine.log import StudyLog
    from engine.pipeline import Attune
    from engine.studio import Studio

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise AttuneError(f"--out must be a folder; {out} is a file.")
    log = StudyLog(Path(args.db) if args.db else out / "attune.db")
    engine = Attune(args.model, backend=args.backend)
    return Studio(engine, log, out, participant_id=args.participant, session_id=args.session, study_id="cli")


def _print_version(version) -> None:
    print(json.dumps(version.to_dict(), sort_keys=True))


def cmd_generate(args) -> int:
    from engine.pipeline import GenerateParams

    width, height = parse_size(args.size)
    params = GenerateParams(
        prompt=args.prompt, negative_prompt=args.negative, seed=args.seed, steps=args.steps, guidance=args.guidance,
        width=width, height=height, scheduler=args.scheduler, syntax=args.syntax,
        weights=parse_weights(args.weight), weight_mode=args.weight_mode,
    )
    studio = _studio(args)
    progress = _progress_bar("generate")
    try:
        version = studio.generate(params, progress=progress)
    finally:
        progress.close()
    _print_version(version)
    return 0


def cmd_inpaint(args) -> int:
    from engine.studio import mask_array

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
    if args.model is None and meta is not None and meta.model_id and Path(meta.model_id).is_dir():
        args.model = meta.model_id  # the model that made the source image
    studio = _studio(args)
    # The source becomes the parent version (kind "restore") so the log shows where the inpaint started.
    parent = studio.add_image(image, meta) if meta is not None else studio.add_image(image, prompt=args.prompt)
    progress = _progress_bar("inpaint")
    try:
        version = studio.inpaint(mask, args.prompt, mask_blur=args.mask_blur, only_masked=args.only_masked,
                                 padding=args.padding, parent=parent, progress=progress, overrides=overrides)
    finally:
        progress.close()
    _print_version(version)
    return 0


def cmd_reweight(args) -> int:
    """The Refine page's sliders from the command line: the PNG's version is the parent (logged as a "restore"
    root), the reweight its child."""
    from engine.layout import DEFAULT_LAYOUT, check_layout
    from engine.pngmeta import read_png

    image, meta = read_png(args.source)  # AttuneError when the PNG has no parameters to redo
    if meta.kind == "inpaint":
        raise AttuneError("This PNG is an inpaint; reweighting it needs its source image and mask (use the app).")
    layout = check_layout(args.layout if args.layout is not None else DEFAULT_LAYOUT)
    weights = dict(meta.weights or {})
    weights.update(parse_weights(args.weight))
    mode = args.weight_mode if args.weight_mode is not None else (meta.weight_mode or "score")
    if args.model is None and meta.model_id and Path(meta.model_id).is_dir():
        args.model = meta.model_id
    studio = _studio(args)
    parent = studio.add_image(image, meta)  # its parameters are re-run as the parent's trajectory
    progress = _progress_bar("reweight")
    try:
        version = studio.reweight(weights, mode, parent=parent, progress=progress, layout=layout)
    finally:
        progress.close()
    _print_version(version)
    return 0


def _read_source(path: str):
    """(RGB image, Version or None): a PNG without Attune/A1111 metadata can still be inpainted."""
    from PIL import Image

    from engine.pngmeta import NoMetadataError, read_png

    try:
        return read_png(path)
    except NoMetadataError:
        pass
    with Image.open(path) as opened:
        return opened.convert("RGB"), None


def cmd_heatmap(args) -> int:
    import numpy as np
    from PIL import Image

    from engine.heatmap import AttentionMaps
    from engine.pngmeta import read_png
    from engine.prompt import split_words, tokenize_prompt

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

        from engine.heatmap import normalize_map
        from engine.log import atomic_write_bytes

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
    from transformers import AutoTokenizer

    from engine.model import default_model_path

    folder = Path(model) if model else default_model_path()
    tokenizer_dir = folder / "tokenizer"
    if not tokenizer_dir.is_dir():
        raise AttuneError(f"No tokenizer folder at {tokenizer_dir}; pass --model with the model's folder.")
    try:
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception as error:  # a broken folder fails in many ways inside transformers
        raise AttuneError(f"Could not load the tokenizer in {tokenizer_dir}: {type(error).__name__}.") from None


def cmd_parse(args) -> int:
    from engine.prompt import parse

    print(json.dumps([[text, weight] for text, weight in parse(args.prompt, args.syntax)], ensure_ascii=False))
    return 0


def cmd_log(args) -> int:
    from engine.log import StudyLog

    if args.out.strip() in ("", "-"):
        raise AttuneError("--out needs a file name (FILE.zip for both tables in one zip).")
    db = Path(args.db)
    if not db.is_file():
        raise AttuneError(f"No log database at {db}.")
    log = StudyLog(db)
    written = log.export(args.out, args.format, table=args.table)
    print(json.dumps({"written": [str(p) for p in written], **log.counts()}, sort_keys=True))
    return 0


COMMANDS = {"generate": cmd_generate, "inpaint": cmd_inpaint, "heatmap": cmd_heatmap, "parse": cmd_parse,
            "log": cmd_log, "reweight": cmd_reweight}


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
    return " ".join(str(text).split()) or "unknown error"


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
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
    except OSError as error:
        message = f"{error.strerror or error}: {error.filename}" if error.filename else str(error)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # never a traceback for the user; ATTUNE_DEBUG=1 shows it
        if os.environ.get("ATTUNE_DEBUG"):
            raise
        message = f"unexpected {type(error).__name__}: {error}"
    if os.environ.get("ATTUNE_DEBUG"):
        import traceback

        traceback.print_exc()
    print(f"error: {_one_line(message)}", file=sys.stderr)
    return EXIT_ERROR
