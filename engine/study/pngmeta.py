"""PNG metadata: an A1111-style `parameters` text chunk (readable by other tools) plus the full Version as JSON.

Reading prefers the `attune` JSON chunk; a PNG from A1111 (only `parameters`) is parsed back into the same fields.
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from engine.errors import AttuneError
from engine.sampling.masks import too_large_message
from engine.study.versions import Version

PARAMETERS_KEY = "parameters"
ATTUNE_KEY = "attune"

# Attune scheduler name <-> the sampler name A1111 writes.
SAMPLER_NAMES = {"ddim": "DDIM", "euler": "Euler", "dpm++": "DPM++ 2M"}
_SCHEDULER_FOR_SAMPLER = {v.lower(): k for k, v in SAMPLER_NAMES.items()}
_SCHEDULER_FOR_SAMPLER.update({"euler a": "euler", "dpm++ 2m karras": "dpm++", "dpm++ 2m sde": "dpm++"})

# One `Key: value` pair of the last line; values with commas are written as JSON strings in quotes.
_PARAM_RE = re.compile(r'\s*([\w][\w \-/+]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_SIZE_RE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")


class NoMetadataError(AttuneError):
    """A readable PNG without Attune or A1111 parameters (callers may still use its pixels)."""


def _quote(value) -> str:
    text = str(value)
    return json.dumps(text) if any(c in text for c in ',:"\n') else text


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            return json.loads(value)
        except ValueError:
            return value[1:-1]
    return value


def parameters_text(version: Version) -> str:
    """A1111 `parameters` text: prompt, `Negative prompt:` line, then one `Key: value, ...` line."""
    prompt = version.inpaint_prompt if version.kind == "inpaint" and version.inpaint_prompt else version.prompt
    lines = [prompt]
    if version.negative_prompt:
        lines.append(f"Negative prompt: {version.negative_prompt}")
    pairs = [
        ("Steps", version.steps),
        ("Sampler", SAMPLER_NAMES.get(version.scheduler, version.scheduler)),
        ("CFG scale", version.guidance),
        ("Seed", version.seed),
        ("Size", f"{version.width}x{version.height}"),
        ("Model hash", version.model_hash),
    ]
    if version.model_id:
        pairs.append(("Model", Path(str(version.model_id)).name or version.model_id))
    if version.kind == "inpaint":
        pairs.append(("Mask blur", version.mask_blur))
    if version.weights:
        pairs.append(("Attune weights", json.dumps(version.weights, sort_keys=True)))
        pairs.append(("Attune weight mode", version.weight_mode))
    if version.kind == "reweight" and version.layout and version.layout != "free":
        pairs.append(("Attune layout", version.layout))
    pairs.append(("Attune backend", version.backend))
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in pairs if value not in (None, "")))
    return "\n".join(lines)


def parse_parameters(text: str) -> dict:
    """Version fields from an A1111 `parameters` text. Unknown keys are ignored; a malformed line is kept as prompt."""
    lines = (text or "").strip().split("\n")
    pairs: dict[str, str] = {}
    if lines and len(_PARAM_RE.findall(lines[-1])) >= 3:
        pairs = {key.strip(): _unquote(value) for key, value in _PARAM_RE.findall(lines[-1])}
        lines = lines[:-1]
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    fields: dict = {"prompt": "\n".join(prompt_lines).strip(), "negative_prompt": "\n".join(negative_lines).strip()}
    fields["syntax"] = "a1111"  # A1111 prompts carry A1111 emphasis

    def number(key, kind):
        try:
            return kind(float(pairs[key])) if kind is int else kind(pairs[key])
        except (KeyError, ValueError):
            return None

    for key, field, kind in (("Steps", "steps", int), ("Seed", "seed", int), ("CFG scale", "guidance", float),
                             ("Mask blur", "mask_blur", int)):
        value = number(key, kind)
        if value is not None:
            fields[field] = value
    if "Sampler" in pairs:
        fields["scheduler"] = _SCHEDULER_FOR_SAMPLER.get(pairs["Sampler"].lower(), pairs["Sampler"].lower())
    size = _SIZE_RE.match(pairs.get("Size", ""))
    if size:
        fields["width"], fields["height"] = int(size.group(1)), int(size.group(2))
    if pairs.get("Model hash"):
        fields["model_hash"] = pairs["Model hash"]
    if pairs.get("Model"):
        fields["model_id"] = pairs["Model"]
    if pairs.get("Attune weights"):
        try:
            weights = json.loads(pairs["Attune weights"])
            fields["weights"] = {str(k): float(v) for k, v in weights.items()}
        except (ValueError, TypeError, AttributeError):
            pass
    if pairs.get("Attune weight mode"):
        fields["weight_mode"] = pairs["Attune weight mode"]
    if pairs.get("Attune layout"):
        fields["layout"] = pairs["Attune layout"]
    if pairs.get("Attune backend"):
        fields["backend"] = pairs["Attune backend"]
    return fields


def png_bytes(image: Image.Image, version: Version) -> bytes:
    """The PNG file bytes with both chunks."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, parameters_text(version))  # PIL switches to iTXt for non-Latin-1 text
    info.add_text(ATTUNE_KEY, version.to_json(), zip=True)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def write_png(path: str | Path, image: Image.Image, version: Version) -> Path:
    from engine.study.log import atomic_write_bytes

    return atomic_write_bytes(path, png_bytes(image, version))


def _open(source) -> Image.Image:
    try:
        if isinstance(source, (bytes, bytearray)):
            image = Image.open(io.BytesIO(source))
        elif isinstance(source, io.IOBase):  # a file object (an upload)
            image = Image.open(source)
        else:
            path = Path(source)
            if not path.is_file():
                raise AttuneError(f"No such image file: {path}")
            image = Image.open(path)
        image.load()
    except AttuneError:
        raise
    except Image.DecompressionBombError:
        name = source if isinstance(source, (str, Path)) else "The upload"
        raise AttuneError(too_large_message(name)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        name = source if isinstance(source, (str, Path)) else "The upload"
        raise AttuneError(f"{name} is not a readable image ({type(error).__name__}).") from None
    if image.format != "PNG":
        raise AttuneError(f"Expected a PNG image, got {image.format or 'an unknown format'}.")
    return image


def read_png(source) -> tuple[Image.Image, Version]:
    """Image (RGB) and its Version from a PNG path, bytes or file object. Raises AttuneError without metadata."""
    image = _open(source)
    text = dict(getattr(image, "text", {}) or {})
    damage = ""
    if text.get(ATTUNE_KEY):
        try:
            version = Version.from_json(text[ATTUNE_KEY])
        except AttuneError as error:  # damaged: the A1111 parameters, when present, still describe the image
            version, damage = None, str(error)
        if version is not None:
            return image.convert("RGB"), version
    if text.get(PARAMETERS_KEY):
        fields = parse_parameters(text[PARAMETERS_KEY])
        fields.setdefault("width", image.width)
        fields.setdefault("height", image.height)
        return image.convert("RGB"), Version.from_dict(fields)
    if damage:
        raise NoMetadataError(f"This PNG's Attune metadata is damaged ({damage.rstrip('.')}) and it carries no A1111 "
                              "parameters, so it cannot be read back into a version.")
    raise NoMetadataError("This PNG carries no Attune or A1111 parameters, so it cannot be read back into a version.")


def read_version(source) -> Version:
    return read_png(source)[1]
