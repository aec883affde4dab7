"""Attune against diffusers' own StableDiffusionPipeline / StableDiffusionXLPipeline on random-weight models of the
real SD-1.5, SD-2.1 and SDXL topologies (no real weights can be fetched here), on both backends.

    python -m bench.parity --json                      # writes bench/results/parity.json
    python -m bench.parity --json --divisor 8 --size 64 --text-layers 2    # a quick, narrow run
    python -m bench.parity --json --families sdxl --divisor 8 --size 128 --maps-size 1024

Per family and sampler: the same prompt, seed and latents (Attune's noise equals torch.randn on a CPU generator,
engine/sampling/noise.py, and the pipeline gets exactly that tensor) through the pipeline and through Attune on
PyTorch and on ONNX Runtime; reports the max/mean pixel difference (0-255) of each Attune image against the
pipeline's, the word maps' difference between the two backends, and the peak RSS after each stage.

Models (random weights, folders written under --work):
- SD-1.5: UNet2DConditionModel of SD-1.5's config (block_out_channels 320/640/1280/1280, cross_attention_dim 768,
  attention_head_dim 8, layers_per_block 2), CLIPTextModel 768 wide (12 layers), AutoencoderKL of SD's config,
  DDIM/Euler/DPM++ from SD's scheduler config (epsilon).
- SD-2.1: cross_attention_dim 1024, attention_head_dim 5/10/20/20, use_linear_projection, upcast_attention,
  CLIPTextModel 1024 wide with the 23 layers SD-2 uses, v-prediction.
- SDXL: UNet of SDXL-base's config (320/640/1280, no attention in the first block, 2 and 10 transformer layers
  per attention block, cross_attention_dim 2048, addition_embed_type text_time), CLIPTextModel 768 wide (12 layers)
  and CLIPTextModelWithProjection 1280 wide (32 layers, projection 1280), SDXL's VAE scaling factor and
  force_upcast, Euler/DDIM from the same scheduler config. Its second tokenizer pads with id 0 (SDXL's `!`), the first
  with its end-of-text, as SDXL's do. An empty negative prompt: zeros on both sides (force_zeros_for_empty_prompt).
- Turbo: the same weights with trailing timestep spacing, 1-4 steps, no classifier-free guidance (SD: guidance 1,
  SDXL: guidance 0, as SDXL-Turbo's card).
- `--maps-size N` (SDXL): one more run at N px (4 steps, Turbo-style), recording the bytes of the word maps kept
  (summed over steps in 4 buckets: bounded however many steps) and the layers they come from.
- `--divisor N` divides every channel width by N (and uses 8 norm groups); `--text-layers N` caps the text encoder's
  depth. The JSON records both. Tokenizer: a word-level tokenizer in CLIP's layout (bos/eos/pad, 77 positions) over
  the prompt's words, as the tests use (no CLIP vocabulary exists on this machine); the embedding table keeps CLIP's
  49408 rows.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.machine import machine_info

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "parity.json"
PROMPT = "a painting of a wolf in front of the full moon , misty forest"
CLIP_VOCAB = 49408


@dataclass(frozen=True)
class Family:
    name: str
    unet: dict
    text: dict
    prediction_type: str
    sample_size: int
    text_2: dict | None = None  # SDXL's second encoder (CLIPTextModelWithProjection)
    turbo_guidance: float = 1.0  # the guidance of its Turbo-style cases (no classifier-free guidance either way)
    backends: tuple[str, ...] = ("torch", "onnx")  # the backends Attune runs it on


SD15 = Family(
    "sd15",
    unet=dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
              layers_per_block=2,
              down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
              up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", projection_dim=768),
    prediction_type="epsilon",
    sample_size=64,
)
SD21 = Family(
    "sd21",
    unet=dict(SD15.unet, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
              upcast_attention=True),
    text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
              hidden_act="gelu", projection_dim=512),
    prediction_type="v_prediction",
    sample_size=96,
)
SDXL = Family(
    "sdxl",
    unet=dict(block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
              layers_per_block=2, transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
              up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
              addition_embed_type="text_time", addition_time_embed_dim=256),
    text=dict(SD15.text),
    text_2=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                hidden_act="gelu", projection_dim=1280),
    prediction_type="epsilon",
    sample_size=128,
    turbo_guidance=0.0,
)
FAMILIES = {"sd15": SD15, "sd21": SD21, "sdxl": SDXL}
VAE_CHANNELS = (128, 256, 512, 512)
SDXL_SCHEDULERS = ("ddim", "euler")  # the issue's SDXL rows
MAPS_TEXT_LAYERS = 2


@dataclass(frozen=True)
class Case:
    family: str
    scheduler: str  # ddim | euler | dpm++
    steps: int
    guidance: float
    spacing: str | None = None  # None: the family's own (leading); "trailing": Turbo-style

    @property
    def label(self) -> str:
        return f"{self.family}/{self.scheduler}/{self.steps}st" + (f"/{self.spacing}" if self.spacing else "")


@dataclass
class Settings:
    families: tuple[str, ...] = ("sd15", "sd21")
    schedulers: tuple[str, ...] = ("ddim", "euler", "dpm++")
    backends: tuple[str, ...] = ("torch", "onnx")
    size: int = 64
    steps: int = 4
    guidance: float = 7.5
    turbo_steps: tuple[int, ...] = (1, 4)
    divisor: int = 1
    text_layers: int | None = None
    maps_size: int | None = None  # SDXL: also measure the maps' memory at this size
    maps_divisor: int = 16
    seed: int = 3
    work: Path | None = None
    extra: dict = field(default_factory=dict)


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


# ---------------------------------------------------------------------------------------------- models
def build_model(family: Family, folder: Path, *, divisor: int = 1, text_layers: int | None = None,
                spacing: str | None = None, seed: int = 0) -> Path:
    """A random-weight diffusers folder of the family's topology (channel widths divided by `divisor`)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from train.tokenizer import build_word_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    widths = [c // divisor for c in (*family.unet["block_out_channels"], *VAE_CHANNELS)]
    groups = next(g for g in (32, 8, 4, 1) if all(w % g == 0 for w in widths))  # SD's 32 where the widths allow
    tokenizer = build_word_tokenizer(PROMPT.split())
    if family.text_2 is not None:  # SDXL's first tokenizer pads with its end-of-text (its second with id 0)
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    encoders = [("text_encoder", CLIPTextModel, family.text, tokenizer)]
    if family.text_2 is not None:
        tokenizer_2 = build_word_tokenizer(PROMPT.split())  # pad: <|pad|>, id 0
        tokenizer_2.save_pretrained(str(folder / "tokenizer_2"))
        encoders.append(("text_encoder_2", CLIPTextModelWithProjection, family.text_2, tokenizer_2))
    text_widths, pooled_dim = [], 0
    for name, cls, config, tok in encoders:
        text = dict(config)
        text["hidden_size"] //= divisor
        text["intermediate_size"] //= divisor
        text["num_hidden_layers"] = min(text["num_hidden_layers"], text_layers or text["num_hidden_layers"])
        if name == "text_encoder_2":
            text["projection_dim"] //= divisor
            pooled_dim = text["projection_dim"]
        cls(CLIPTextConfig(vocab_size=CLIP_VOCAB, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **text)
            ).save_pretrained(folder / name, safe_serialization=True)
        text_widths.append(text["hidden_size"])
    unet = dict(family.unet)
    unet["block_out_channels"] = tuple(c // divisor for c in unet["block_out_channels"])
    unet["cross_attention_dim"] = sum(text_widths)
    if family.text_2 is not None:
        unet["projection_class_embeddings_input_dim"] = unet["addition_time_embed_dim"] * 6 + pooled_dim
    UNet2DConditionModel(sample_size=family.sample_size, in_channels=4, out_channels=4, norm_num_groups=groups,
                         **unet).save_pretrained(folder / "unet", safe_serialization=True)
    sdxl_vae = dict(scaling_factor=0.13025, force_upcast=True) if family.text_2 is not None else {}
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4,
                  block_out_channels=tuple(c // divisor for c in VAE_CHANNELS),
                  latent_channels=4, layers_per_block=2, norm_num_groups=groups,
                  sample_size=family.sample_size * 8, **sdxl_vae).save_pretrained(folder / "vae",
                                                                                  safe_serialization=True)
    write_scheduler(folder, family.prediction_type, spacing)
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
             "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    if family.text_2 is not None:
        for key in ("requires_safety_checker", "safety_checker"):
            index.pop(key)
        index.update({"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
                      "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                      "tokenizer_2": ["transformers", "PreTrainedTokenizerFast"]})
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def write_scheduler(folder: Path, prediction_type: str, spacing: str | None) -> None:
    """SD's scheduler config (scaled-linear betas 0.00085-0.012, steps_offset 1), with the given spacing."""
    from diffusers import DDIMScheduler

    extra = {"timestep_spacing": spacing} if spacing else {}
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
                  **extra).save_pretrained(folder / "scheduler")


def turbo_view(folder: Path) -> Path:
    """The same weights with Turbo-style trailing spacing: a sibling folder of hard links plus its own scheduler
    (hard links: the weights hash, and so the ONNX export, is the base folder's)."""
    import shutil

    view = folder.with_name(folder.name + "-turbo")
    view.mkdir(exist_ok=True)
    for part in ("text_encoder", "tokenizer", "unet", "vae", "text_encoder_2", "tokenizer_2"):
        if (folder / part).exists() and not (view / part).exists():
            shutil.copytree(folder / part, view / part, copy_function=os.link)
    if not (view / "model_index.json").exists():
        os.link(folder / "model_index.json", view / "model_index.json")
    prediction = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["prediction_type"]
    write_scheduler(view, prediction, "trailing")
    return view


# ---------------------------------------------------------------------------------------------- runs
def reference_scheduler(name: str, config):
    """The diffusers scheduler a user would set on the pipeline, from the folder's config."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)


def diffusers_image(pipe, case: Case, size: int, seed: int) -> np.ndarray:
    import torch

    pipe.scheduler = reference_scheduler(case.scheduler, pipe.scheduler.config)
    shape = (1, pipe.unet.config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
    latents = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))  # = engine.sampling.noise
    out = pipe(PROMPT, num_inference_steps=case.steps, guidance_scale=case.guidance, height=size, width=size,
               latents=latents, output_type="np")
    return (out.images[0] * 255).round().clip(0, 255).astype(np.uint8)


def attune_result(engine, case: Case, size: int, seed: int):
    from engine.pipeline.params import GenerateParams

    return engine.generate(GenerateParams(prompt=PROMPT, seed=seed, steps=case.steps, guidance=case.guidance,
                                          width=size, height=size, scheduler=case.scheduler))


def pixel_diff(a: np.ndarray, b) -> dict:
    diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)[..., :3])
    return {"max": int(diff.max()), "mean": round(float(diff.mean()), 4)}


def map_diff(a, b) -> dict:
    """Largest difference between the two results' word maps (token_map: attention probability averaged over
    layers and steps, not normalised), absolute and relative to the map's own range over the image."""
    worst_abs, worst_rel = 0.0, 0.0
    for tokens in a.word_tokens.token_indices:
        if tokens:
            ma, mb = a.maps.token_map(tokens), b.maps.token_map(tokens)
            diff = float(np.abs(ma - mb).max())
            worst_abs = max(worst_abs, diff)
            worst_rel = max(worst_rel, diff / max(float(ma.max() - ma.min()), 1e-12))
    return {"max_abs": float(f"{worst_abs:.3g}"), "max_rel_to_range": float(f"{worst_rel:.3g}")}


def cases(settings: Settings) -> list[Case]:
    out = [Case(f, s, settings.steps, settings.guidance) for f in settings.families for s in settings.schedulers
           if not (f == "sdxl" and s not in SDXL_SCHEDULERS)]
    for family in ("sd15", "sdxl"):  # Turbo-style: SD-Turbo and SDXL-Turbo
        if family in settings.families:
            out += [Case(family, s, n, FAMILIES[family].turbo_guidance, "trailing") for n in settings.turbo_steps
                    for s in ("euler", "ddim")]
    return out


def open_engines(folder: Path, backends) -> dict:
    """Attune on each backend. The ONNX engine gets ONNX components exported from the PyTorch engine's modules, so
    the process holds one copy of the PyTorch weights (a full-size UNet is 3.4 GB in fp32)."""
    from engine.model.loading import load_components
    from engine.model.onnx_components import load_onnx_components
    from engine.pipeline.attune import Attune
    from export.onnx import ensure_exported

    torch_components = load_components(folder)
    engines = {}
    for backend in backends:
        if backend == "onnx":
            export = ensure_exported(torch_components, progress=lambda *a: None)
            engines[backend] = Attune(components=load_onnx_components(folder, export_dir=export), backend="onnx")
        else:
            engines[backend] = Attune(components=torch_components, backend=backend)
    return engines


def run(settings: Settings, progress=lambda message: None) -> dict:
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    work = Path(settings.work or tempfile.mkdtemp(prefix="attune-parity-"))
    os.environ.setdefault("ATTUNE_CACHE", str(work / "cache"))
    rows, stages, folders = [], [], {}
    for name in settings.families:
        start = time.perf_counter()
        folders[name] = build_model(FAMILIES[name], work / name, divisor=settings.divisor,
                                    text_layers=settings.text_layers)
        stages.append({"stage": f"build {name}", "seconds": round(time.perf_counter() - start, 1),
                       "peak_rss_mb": peak_rss_mb()})
        progress(f"built {name}")
    for family in settings.families:
        family_cases = [c for c in cases(settings) if c.family == family]
        for spacing in (None, "trailing"):
            group = [c for c in family_cases if c.spacing == spacing]
            if not group:
                continue
            folder = folders[family] if spacing is None else turbo_view(folders[family])
            start = time.perf_counter()
            pipeline = StableDiffusionXLPipeline if FAMILIES[family].text_2 is not None else StableDiffusionPipeline
            pipe = pipeline.from_pretrained(folder, dtype=torch.float32)
            pipe.set_progress_bar_config(disable=True)
            engines = open_engines(folder, [b for b in settings.backends if b in FAMILIES[family].backends])
            stages.append({"stage": f"load {family}{'-turbo' if spacing else ''}",
                           "seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": peak_rss_mb()})
            try:
                for case in group:
                    t0 = time.perf_counter()
                    reference = diffusers_image(pipe, case, settings.size, settings.seed)
                    row = {"case": case.label, "family": family, "scheduler": case.scheduler, "steps": case.steps,
                           "guidance": case.guidance, "spacing": case.spacing or "leading"}
                    results = {}
                    for backend, engine in engines.items():
                        results[backend] = attune_result(engine, case, settings.size, settings.seed)
                        row[backend] = {**pixel_diff(reference, results[backend].image),
                                        "ran_on": results[backend].backend}
                    if {"torch", "onnx"} <= set(results):
                        row["maps_torch_vs_onnx"] = map_diff(results["torch"], results["onnx"])
                    row["seconds"] = round(time.perf_counter() - t0, 1)
                    row["peak_rss_mb"] = peak_rss_mb()
                    rows.append(row)
                    progress(json.dumps(row))
            finally:
                for engine in engines.values():
                    engine.close()
                del pipe
    maps = maps_memory(settings, work, progress) if settings.maps_size and "sdxl" in settings.families else None
    return {
        "what": "Attune vs diffusers' StableDiffusionPipeline / StableDiffusionXLPipeline, random weights of real SD "
                "topologies",
        "size_px": settings.size,
        "seed": settings.seed,
        "channel_divisor": settings.divisor,
        "widths": widths_label(settings),
        "text_layers": {f: min(FAMILIES[f].text["num_hidden_layers"], settings.text_layers or 99)
                        for f in settings.families},
        **({"text_2_layers": {"sdxl": min(SDXL.text_2["num_hidden_layers"], settings.text_layers or 99)}}
           if "sdxl" in settings.families else {}),
        "tokenizer": "word-level, CLIP layout (bos/eos/pad, 77 positions), CLIP's 49408-row embedding table",
        "prompt": PROMPT,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "stages": stages,
        "peak_rss_mb": peak_rss_mb(),
        "max_pixel_diff": {b: max((r[b]["max"] for r in rows if b in r), default=None) for b in settings.backends},
        **({"sdxl_maps_memory": maps} if maps is not None else {}),
        **settings.extra,
    }


def widths_label(settings: Settings) -> str:
    """'SD widths / 4' ('SDXL widths / 4' for an SDXL-only run; 'full ...' at divisor 1)."""
    name = "SDXL" if set(settings.families) == {"sdxl"} else "SD"
    return f"full {name} widths" if settings.divisor == 1 else f"{name} widths / {settings.divisor}"


def maps_memory(settings: Settings, work: Path, progress) -> dict:
    """The word maps' memory of one SDXL image at settings.maps_size px (widths / settings.maps_divisor, 2 text layers:
    the maps' size depends on the image size, the UNet's layers and the prompt's tokens, not on the widths)."""
    from engine.pipeline.attune import Attune
    from engine.pipeline.params import GenerateParams

    folder = build_model(SDXL, work / f"sdxl-maps-div{settings.maps_divisor}", divisor=settings.maps_divisor,
                         text_layers=MAPS_TEXT_LAYERS, spacing="trailing")
    engine = Attune(folder, backend="torch")
    try:
        start = time.perf_counter()
        result = engine.generate(GenerateParams(prompt=PROMPT, seed=settings.seed, steps=4, guidance=0.0,
                                                width=settings.maps_size, height=settings.maps_size,
                                                scheduler="euler"))
        seconds = time.perf_counter() - start
    finally:
        engine.close()
    maps = result.maps
    shapes = maps.layer_shapes()
    sides = sorted(set(shapes.values()), reverse=True)
    layers_by_side = {f"{h}x{w}": sum(1 for s in shapes.values() if s == (h, w)) for h, w in sides}
    out = {"size_px": settings.maps_size, "widths": f"SDXL widths / {settings.maps_divisor}",
           "text_layers": MAPS_TEXT_LAYERS, "steps": 4,
           "step_buckets": len(maps.bucket_steps), "tokens_kept": maps.seq_len, "layers": len(shapes),
           "layers_by_resolution": layers_by_side, "maps_mb": round(maps.nbytes / 2**20, 2),
           "seconds": round(seconds, 1), "peak_rss_mb": peak_rss_mb()}
    progress(json.dumps({"sdxl_maps_memory": out}))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.parity", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help=f"write the results to {RESULTS.relative_to(Path.cwd())}"
                        if RESULTS.is_relative_to(Path.cwd()) else "write the results JSON")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--families", default="sd15,sd21")
    parser.add_argument("--schedulers", default="ddim,euler,dpm++")
    parser.add_argument("--backends", default="torch,onnx")
    parser.add_argument("--size", type=int, default=64, help="image side in px (multiple of 8)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--turbo-steps", default="1,4", help="steps of the trailing-spacing (Turbo-style) cases")
    parser.add_argument("--divisor", type=int, default=1, help="divide every channel width by this (1: full widths)")
    parser.add_argument("--text-layers", type=int, default=None, help="cap the text encoders' depth")
    parser.add_argument("--maps-size", type=int, default=None, help="SDXL: measure the maps' memory at this size")
    parser.add_argument("--maps-divisor", type=int, default=16, help="SDXL widths / this for the maps' memory run")
    parser.add_argument("--work", type=Path, default=None, help="folder for the models and the ONNX cache")
    args = parser.parse_args(argv)
    split = lambda text: tuple(t.strip() for t in text.split(",") if t.strip())  # noqa: E731
    settings = Settings(families=split(args.families), schedulers=split(args.schedulers),
                        backends=split(args.backends), size=args.size, steps=args.steps,
                        turbo_steps=tuple(int(n) for n in split(args.turbo_steps)), divisor=args.divisor,
                        text_layers=args.text_layers, work=args.work, maps_size=args.maps_size,
                        maps_divisor=args.maps_divisor,
                        extra={"command": command_line(argv if argv is not None else sys.argv[1:]),
                               "machine": machine_info()})
    report = run(settings, progress=lambda message: print(message, file=sys.stderr, flush=True))
    if args.json:
        save(report, args.out)
    print(json.dumps(report, indent=2))
    return 0


def command_line(argv) -> str:
    """The command that reproduces a run: its arguments without --work and --out (they change no number)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("--work", "--out"):
            skip = True
            continue
        if not arg.startswith(("--work=", "--out=")):
            kept.append(arg)
    return " ".join(["python -m bench.parity", *kept])


def save(report: dict, path: Path = RESULTS) -> None:
    """Add the run to the results file's "runs", replacing an earlier run of the same command (runs at different
    widths, sizes and families are kept side by side)."""
    try:
        runs = json.loads(path.read_text()).get("runs", [])
    except (OSError, ValueError):
        runs = []
    runs = [run for run in runs if run.get("command") != report.get("command")] + [report]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"what": report["what"], "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
