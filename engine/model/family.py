"""Which model family a folder holds, and the generation defaults it brings (DESIGN §9). Light: JSON reads only.

`detect_family(folder)` refuses the families Attune does not run (SD3, FLUX, Kandinsky, video, others) in one line.
`model_defaults(folder)` derives a `ModelDefaults`: size (UNet sample_size x VAE factor), scheduler (the folder's
scheduler class mapped onto Attune's, with its config and timestep spacing), guidance and steps (per family; few-step
distilled models get guidance off and 1-4 steps), each value with where it came from. An optional `attune.json` in
the folder overrides any of them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine.defaults import DEFAULT_GUIDANCE
from engine.errors import AttuneError
from engine.model import head_layout

ATTUNE_JSON = "attune.json"
REQUIRED_PARTS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")  # what a diffusers SD folder holds
SDXL_PARTS = ("tokenizer_2", "text_encoder_2")  # what an SDXL folder holds besides
FROM_FOLDER, FROM_FAMILY, FROM_ATTUNE_JSON = "model folder", "family default", ATTUNE_JSON

BUILTIN_FAMILY = "tiny-scenes"
SD_GUIDANCE = 7.5  # Stable Diffusion 1.x/2.x's usual scale (diffusers' pipeline default)
SDXL_FAMILY = "SDXL"
SDXL_GUIDANCE = 5.0  # diffusers' StableDiffusionXLPipeline default (DESIGN §9: 5-7.5)
SD_STEPS = 50  # diffusers' StableDiffusionPipeline default
LCM_STEPS, TURBO_STEPS = 4, 1  # the step counts their model cards use

# Attune's schedulers: engine.sampling.schedulers.SCHEDULERS, which sits above this package (a test keeps them equal).
ATTUNE_SCHEDULERS = ("ddim", "euler", "dpm++")
# The folder's scheduler class -> Attune's scheduler.
SCHEDULER_CLASSES = {
    "DDIMScheduler": "ddim",
    "EulerDiscreteScheduler": "euler",
    "DPMSolverMultistepScheduler": "dpm++",
}
CLOSEST_SCHEDULER = {  # not supported: the nearest of the three by how it steps
    "PNDMScheduler": "dpm++",  # linear multistep, as DPM-Solver++ 2M
    "LMSDiscreteScheduler": "dpm++",
    "UniPCMultistepScheduler": "dpm++",
    "DEISMultistepScheduler": "dpm++",
    "DPMSolverSinglestepScheduler": "dpm++",
    "EulerAncestralDiscreteScheduler": "euler",
    "HeunDiscreteScheduler": "euler",
    "KDPM2DiscreteScheduler": "euler",
    "KDPM2AncestralDiscreteScheduler": "euler",
    "DDPMScheduler": "ddim",
    "LCMScheduler": "ddim",  # predicts x0 and steps to the next timestep, as DDIM does
    "TCDScheduler": "ddim",
}
# "config": next to a single-file checkpoint, the diffusers folder whose configs read it (engine.model.single_file).
# "phrases": multi-word names the model knows as one unit ("full moon"): one Refine slider each (engine.words.sliders).
# "slider_knots" {method: [[0, ..., 1], [0, ..., 1]]} and "slider_gain" {method: g}: the model's own slider -> internal
# scale mapping below and above 1 (engine.words.weights.slider_scale), measured on the tuning split as the built-in
# model's were; a method not named keeps those.
# "self_attention_heads" {block: heads}: weights trained for fewer, wider self-attention heads (engine.model.head_layout).
ATTUNE_JSON_KEYS = ("width", "height", "guidance", "steps", "scheduler", "timestep_spacing", "distilled", "config",
                    "phrases", "slider_knots", "slider_gain", "self_attention_heads")
SPACINGS = ("leading", "trailing", "linspace")
REFUSED_PIPELINES = {"StableDiffusion3": "SD3", "Flux": "FLUX", "Kandinsky": "Kandinsky",
                     "StableCascade": "Stable Cascade", "StableVideoDiffusion": "video (Stable Video Diffusion)",
                     "TextToVideo": "video", "AnimateDiff": "video (AnimateDiff)", "I2VGenXL": "video (I2VGen-XL)",
                     "CogVideoX": "video (CogVideoX)",
                     "StableDiffusionXLInstructPix2Pix": "SDXL InstructPix2Pix", "StableDiffusionXLControlNet":
                     "SDXL ControlNet", "StableDiffusionXLAdapter": "SDXL T2I-Adapter"}
SDXL_PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLInpaintPipeline", "StableDiffusionXLImg2ImgPipeline")


@dataclass(frozen=True)
class ModelDefaults:
    """What a generation uses for each value its caller leaves out, and where each value came from."""

    family: str
    width: int
    height: int
    guidance: float
    steps: int
    scheduler: str  # one of engine.sampling.schedulers.SCHEDULERS
    scheduler_config: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)  # value name -> FROM_FOLDER | FROM_FAMILY | FROM_ATTUNE_JSON
    distilled: bool = False  # few-step distilled (Turbo, LCM): guidance off
    notes: tuple[str, ...] = ()
    phrases: tuple[str, ...] = ()  # multi-word names the model knows as one unit (attune.json)
    slider_knots: dict = field(default_factory=dict)  # method -> (xs, ys): the model's own mapping below 1 (attune.json)
    slider_gains: dict = field(default_factory=dict)  # method -> gain above 1 (attune.json "slider_gain")

    @property
    def timestep_spacing(self) -> str:
        return str(self.scheduler_config.get("timestep_spacing", "leading"))

    def values(self) -> dict:
        return {"width": self.width, "height": self.height, "guidance": self.guidance, "steps": self.steps,
                "scheduler": self.scheduler}

    def describe(self, names=None) -> str:
        """'<family> defaults: width, height from model folder; guidance, steps from family default' for the given
        value names (all by default)."""
        names = list(self.values()) if names is None else [n for n in self.values() if n in names]
        by_source: dict[str, list[str]] = {}
        for name in names:
            by_source.setdefault(self.sources.get(name, FROM_FAMILY), []).append(name)
        parts = [f"{', '.join(items)} from {source}" for source, items in by_source.items()]
        return f"{self.family} defaults: {'; '.join(parts)}" if parts else ""


# The built-in model's defaults, measured on it (engine/defaults.py); also what a model-less check uses.
BUILTIN_DEFAULTS = ModelDefaults(BUILTIN_FAMILY, 128, 128, DEFAULT_GUIDANCE, 20, "ddim",
                                 sources=dict.fromkeys(("width", "height", "guidance", "steps", "scheduler"),
                                                       FROM_FAMILY))


def _read(path: Path, required: bool = True) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        if required:
            raise AttuneError(f"{path} is missing: the folder is not a diffusers model.") from None
        return {}
    except (OSError, ValueError) as e:
        raise AttuneError(f"Could not read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(data, dict):
        raise AttuneError(f"{path} must hold a JSON object.")
    return data


def _word_level_tokenizer(folder: Path) -> bool:
    """The built-in family's mark: a word-level tokenizer (one token per known word), not CLIP's BPE."""
    path = folder / "tokenizer" / "tokenizer.json"
    try:
        return json.loads(path.read_text()).get("model", {}).get("type") == "WordLevel"
    except (OSError, ValueError, AttributeError):
        return False


def detect_family(folder: str | Path) -> str:
    """'tiny-scenes', 'SD 1.x', 'SD 2.x', 'SD 1.x/2.x' or 'SDXL'; AttuneError (one line, naming the family) for the
    rest. SDXL: a `text_encoder_2/` or a UNet with `addition_embed_type: text_time` (its refiner, with no first text
    encoder, is refused)."""
    folder = Path(folder)
    index = _read(folder / "model_index.json", required=False)
    pipeline = str(index.get("_class_name", ""))
    for prefix, family in REFUSED_PIPELINES.items():
        if pipeline.startswith(prefix):
            raise _refuse(folder, family)
    unet = _read(folder / "unet" / "config.json", required=False)
    if (folder / "text_encoder_2").is_dir() or unet.get("addition_embed_type") == "text_time":
        if pipeline.startswith("StableDiffusionXL") and pipeline not in SDXL_PIPELINES:
            raise _refuse(folder, pipeline)
        if not all((folder / part).is_dir() for part in ("text_encoder", "text_encoder_2")) \
                or unet.get("addition_embed_type") != "text_time":
            raise _refuse(folder, "SDXL refiner or partial SDXL", " An SDXL folder needs text_encoder/, "
                          "text_encoder_2/ and a UNet with addition_embed_type text_time.")
        return SDXL_FAMILY
    if (folder / "transformer").is_dir():
        raise _refuse(folder, f"a transformer model ({pipeline or 'unknown pipeline'})")
    if pipeline and not pipeline.startswith(("StableDiffusion", "LatentConsistencyModel")):
        raise _refuse(folder, pipeline)
    if pipeline.startswith(("StableDiffusionUpscale", "StableDiffusionDepth", "StableDiffusionInstructPix2Pix")):
        raise _refuse(folder, pipeline)
    if _word_level_tokenizer(folder):
        return BUILTIN_FAMILY
    return {768: "SD 1.x", 1024: "SD 2.x"}.get(unet.get("cross_attention_dim"), "SD 1.x/2.x")


def _refuse(folder: Path, family: str, detail: str = "") -> AttuneError:
    return AttuneError(f"{folder} holds a {family} model, which Attune does not run yet: it runs Stable Diffusion "
                       f"1.x/2.x and SDXL (and their Turbo/LCM distillations) and the built-in model.{detail}")


def required_parts(family: str) -> tuple[str, ...]:
    """The sub-folders a diffusers folder of this family must hold."""
    return REQUIRED_PARTS + (SDXL_PARTS if family == SDXL_FAMILY else ())


def force_zeros_for_empty_prompt(folder: str | Path) -> bool:
    """SDXL: an empty negative prompt conditions on zeros (diffusers' pipeline config, default True; A1111 alike)."""
    index = _read(Path(folder) / "model_index.json", required=False)
    return bool(index.get("force_zeros_for_empty_prompt", True))


def scheduler_name(config: dict) -> tuple[str, str | None]:
    """(Attune's scheduler for a diffusers scheduler config, a note when it is only the closest one)."""
    cls = str(config.get("_class_name", ""))
    if cls in SCHEDULER_CLASSES:
        return SCHEDULER_CLASSES[cls], None
    closest = CLOSEST_SCHEDULER.get(cls, "ddim")
    return closest, f"The folder's scheduler {cls or '(unnamed)'} is not one Attune runs: using {closest}, the closest."


def read_attune_json(folder: str | Path) -> dict:
    """The folder's attune.json overrides, checked; {} when there is none. One-line AttuneError naming a bad key."""
    path = Path(folder) / ATTUNE_JSON
    if not path.is_file():
        return {}
    data = _read(path)
    checked = {}
    for key, value in data.items():
        if key not in ATTUNE_JSON_KEYS:
            raise AttuneError(f"{path}: unknown key '{key}' (known: {', '.join(ATTUNE_JSON_KEYS)}).")
        bad = AttuneError(f"{path}: '{key}' has a bad value {json.dumps(value)[:40]}.")
        if key in ("width", "height", "steps"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad
        elif key == "guidance":
            if not _finite(value) or value < 0:
                raise bad
            value = float(value)
        elif key == "scheduler":
            if not isinstance(value, str) or value.strip().lower() not in ATTUNE_SCHEDULERS:
                raise AttuneError(f"{path}: 'scheduler' must be one of {', '.join(ATTUNE_SCHEDULERS)}, got "
                                  f"{json.dumps(value)[:40]}.")
            value = value.strip().lower()
        elif key == "timestep_spacing":
            if value not in SPACINGS:
                raise AttuneError(f"{path}: 'timestep_spacing' must be one of {', '.join(SPACINGS)}, got "
                                  f"{json.dumps(value)[:40]}.")
        elif key == "distilled" and not isinstance(value, bool):
            raise bad
        elif key == "config" and (not isinstance(value, str) or not value.strip()):
            raise bad
        elif key == "phrases":
            if not isinstance(value, list) or not all(isinstance(p, str) and len(p.split()) > 1 for p in value):
                raise AttuneError(f"{path}: 'phrases' must be a list of multi-word names, e.g. [\"full moon\"].")
            value = tuple(dict.fromkeys(" ".join(p.lower().split()) for p in value))
        elif key == "slider_knots":
            value = _slider_knots(path, value)
        elif key == "slider_gain":
            value = _slider_gains(path, value)
        elif key == head_layout.KEY:
            value = head_layout.check(value, str(path))
        checked[key] = value
    return checked


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _slider_methods(path: Path, key: str, value) -> dict:
    from engine.words.weights import WEIGHT_MODES

    if not isinstance(value, dict) or not value or any(m not in WEIGHT_MODES for m in value):
        raise AttuneError(f"{path}: '{key}' must map weighting methods ({', '.join(WEIGHT_MODES)}) to their values.")
    return value


def _slider_knots(path: Path, value) -> dict:
    """{method: (xs, ys)}: slider values from 0 to 1, rising, and the internal scales they stand for (1 at 1)."""
    knots = {}
    for method, pair in _slider_methods(path, "slider_knots", value).items():
        ok = isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, list) for v in pair)
        xs, ys = (pair if ok else ([], []))
        ok = (ok and len(xs) == len(ys) >= 2 and all(_finite(v) for v in xs + ys) and xs[0] == 0 and xs[-1] == 1
              and all(a < b for a, b in zip(xs, xs[1:])) and ys[-1] == 1 and all(0 <= y <= 1 for y in ys))
        if not ok:
            raise AttuneError(f"{path}: 'slider_knots' of '{method}' must be [[0, ..., 1], [y0, ..., 1]]: slider values "
                              "rising from 0 to 1 and internal scales from 0 to 1, e.g. [[0, 0.5, 1], [0, 0.8, 1]].")
        knots[method] = (tuple(float(x) for x in xs), tuple(float(y) for y in ys))
    return knots


def _slider_gains(path: Path, value) -> dict:
    gains = _slider_methods(path, "slider_gain", value)
    if not all(_finite(g) and 0 < g <= 10 for g in gains.values()):
        raise AttuneError(f"{path}: 'slider_gain' values must be numbers above 0 (at most 10), e.g. {{\"score\": 2}}.")
    return {method: float(g) for method, g in gains.items()}


def scheduler_config(folder: str | Path) -> dict:
    """The folder's scheduler config, with attune.json's timestep_spacing when it sets one (what the sampler uses)."""
    folder = Path(folder)
    config = _read(folder / "scheduler" / "scheduler_config.json")
    spacing = read_attune_json(folder).get("timestep_spacing")
    return {**config, "timestep_spacing": spacing} if spacing else config


def model_defaults(folder: str | Path) -> ModelDefaults:
    """The defaults of the model in `folder` (see the module's docstring)."""
    folder = Path(folder)
    family = detect_family(folder)
    overrides = read_attune_json(folder)
    config = scheduler_config(folder)
    if family == BUILTIN_FAMILY:
        defaults = replace(BUILTIN_DEFAULTS, scheduler_config=config)
    else:
        defaults = _sd_defaults(folder, family, config, overrides.get("distilled"))
    sources = dict(defaults.sources)
    values = {key: value for key, value in overrides.items() if key in defaults.values()}
    sources.update(dict.fromkeys(values, FROM_ATTUNE_JSON))
    if "timestep_spacing" in overrides:
        sources["timestep_spacing"] = FROM_ATTUNE_JSON
    notes = defaults.notes
    if "scheduler" in values:  # the note about the folder's own scheduler no longer applies
        notes = ()
    distilled = overrides.get("distilled", defaults.distilled)
    return replace(defaults, **values, sources=sources, notes=notes, distilled=distilled,
                   phrases=overrides.get("phrases", ()), slider_knots=overrides.get("slider_knots", {}),
                   slider_gains=overrides.get("slider_gain", {}))


def _sd_defaults(folder: Path, family: str, config: dict, distilled_override: bool | None) -> ModelDefaults:
    unet = _read(folder / "unet" / "config.json")
    vae = _read(folder / "vae" / "config.json")
    factor = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
    sample = unet.get("sample_size")
    sample_h, sample_w = (sample, sample) if not isinstance(sample, (list, tuple)) else tuple(sample)[:2]
    scheduler, note = scheduler_name(config)
    lcm = config.get("_class_name") == "LCMScheduler"
    trailing = config.get("timestep_spacing") == "trailing"
    distilled = (lcm or trailing) if distilled_override is None else distilled_override
    sources = {"width": FROM_FOLDER, "height": FROM_FOLDER, "scheduler": FROM_FOLDER, "guidance": FROM_FAMILY,
               "steps": FROM_FAMILY}
    if distilled:
        family += " LCM" if lcm else " Turbo"
    try:
        width, height = int(sample_w) * factor, int(sample_h) * factor
    except (TypeError, ValueError):  # a UNet config without a sample size: SD 1.x's 512 px, SDXL's 1024 px
        width = height = 1024 if family.startswith(SDXL_FAMILY) else 512
        sources["width"] = sources["height"] = FROM_FAMILY
    guidance = SDXL_GUIDANCE if family.startswith(SDXL_FAMILY) else SD_GUIDANCE
    return ModelDefaults(family, width, height, 0.0 if distilled else guidance,
                         (LCM_STEPS if lcm else TURBO_STEPS) if distilled else SD_STEPS, scheduler, config, sources,
                         distilled, (note,) if note else ())

