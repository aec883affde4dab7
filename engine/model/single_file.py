"""Single-file checkpoints (one `.safetensors`, as A1111 and Civitai users have them), read by diffusers' single-file
loader and kept as a diffusers folder in the cache, so everything else (hash, ONNX export, defaults) is as for a folder.

diffusers needs the configs of the checkpoint's family to read it (offline it cannot fetch them): a local diffusers
folder of the same family (its model_index.json, the components' configs, tokenizer and scheduler), given as
`--config FOLDER` (`convert(path, config)`) or as `{"config": "FOLDER"}` in an `attune.json` next to the file. Once
converted, the file loads without it. Pickle checkpoints (.ckpt, .pt) are refused: loading them can run code.

The converted folder: `$ATTUNE_CACHE/single-file/<key>/`, the key hashing the file's path, size and modification time.
Its tokenizer and scheduler are the config folder's files (the same token ids as the folder's model), and its
attune.json is the config folder's with the file's own attune.json on top.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from engine.errors import AttuneError
from engine.model.family import ATTUNE_JSON, REQUIRED_PARTS, SDXL_FAMILY, detect_family, read_attune_json

SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
SOURCE = "attune_single_file.json"  # in the converted folder: which file and config it was made from


def check_file(path: Path) -> None:
    """One-line refusal for a file that is not a safetensors checkpoint."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise AttuneError(f"Refusing to load {path}: {path.suffix} checkpoints are pickles, which can run code when "
                          "loaded. Use the model's .safetensors file.")
    if path.suffix.lower() != SUFFIX:
        raise AttuneError(f"{path} is a file but not a .safetensors checkpoint; give a .safetensors file or a "
                          "diffusers folder.")


def _key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:24]


def converted_folder(path: str | Path) -> Path:
    from engine.model.onnx_files import cache_root

    return cache_root() / "single-file" / _key(Path(path))


def _config_from_attune_json(path: Path) -> Path | None:
    value = read_attune_json(path.parent).get("config")
    if value is None:
        return None
    folder = Path(value).expanduser()
    return folder if folder.is_absolute() else path.parent / folder


def resolve(path: str | Path, config: str | Path | None = None) -> Path:
    """The diffusers folder of a single-file checkpoint: converted before (for this file state and config), or now.
    `config`: a local diffusers folder of the checkpoint's family; else the one named in an attune.json next to it."""
    path = Path(path).expanduser()
    check_file(path)
    folder = converted_folder(path)
    config = Path(config).expanduser() if config is not None else _config_from_attune_json(path)
    made_from = _source(folder)
    if made_from is not None and (config is None or made_from.get("config") == str(config.resolve())):
        return folder
    if config is None:
        raise AttuneError(f"{path} is a single-file checkpoint: to read it, Attune needs a diffusers folder of the "
                          "same family (its configs and tokenizer); pass --config FOLDER, or put an attune.json with "
                          '{"config": "FOLDER"} next to the file.')
    return convert(path, config)


def _source(folder: Path) -> dict | None:
    try:
        return json.loads((folder / SOURCE).read_text())
    except (OSError, ValueError):
        return None


def convert(path: str | Path, config: str | Path) -> Path:
    """Read `path` with diffusers' single-file loader and the configs of `config`; save it as a diffusers folder in
    the cache (safetensors). Returns the folder."""
    from engine.model.onnx_files import TORCH_MISSING, torch_available

    path, config = Path(path).expanduser(), Path(config).expanduser()
    check_file(path)
    if not config.is_dir():
        raise AttuneError(f"--config {config} is not a folder: give a diffusers folder of the checkpoint's family.")
    if detect_family(config) == SDXL_FAMILY:  # an SD3/FLUX config: refused there, naming the family
        raise AttuneError(f"{path} with the SDXL configs of {config}: Attune reads SDXL as a diffusers folder only "
                          "(single-file SDXL is not built yet); convert it with diffusers first.")
    missing = [p for p in REQUIRED_PARTS if not (config / p).is_dir()]
    if missing:
        raise AttuneError(f"--config {config} is not a diffusers Stable Diffusion folder: missing "
                          f"{', '.join(missing)}/.")
    if not torch_available():
        raise AttuneError(f"Reading a single-file checkpoint needs PyTorch, diffusers and transformers: {TORCH_MISSING}.")
    folder = converted_folder(path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _convert_into(path, config, staging)
        shutil.rmtree(folder, ignore_errors=True)  # made from another config before
        os.rename(staging, folder)
    except OSError as e:
        if _source(folder) is None:
            raise AttuneError(f"Could not save the converted {path} in {folder.parent}: {e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _convert_into(path: Path, config: Path, staging: Path) -> None:
    from diffusers import StableDiffusionPipeline

    try:
        pipeline = StableDiffusionPipeline.from_single_file(str(path), config=str(config), local_files_only=True,
                                                            safety_checker=None, requires_safety_checker=False)
        pipeline.save_pretrained(str(staging), safe_serialization=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise AttuneError(f"diffusers could not read {path} with the configs of {config}: {first}") from None
    for part in ("tokenizer", "scheduler"):  # the config folder's own files: the same token ids and schedule
        shutil.rmtree(staging / part, ignore_errors=True)
        shutil.copytree(config / part, staging / part)
    overrides = {**read_attune_json(config), **read_attune_json(path.parent)}
    overrides.pop("config", None)
    if overrides:
        (staging / ATTUNE_JSON).write_text(json.dumps(overrides, indent=2))
    (staging / SOURCE).write_text(json.dumps({"file": str(path.resolve()), "config": str(config.resolve())}))
