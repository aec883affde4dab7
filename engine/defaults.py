"""Default generation settings that were measured rather than inherited (light module: no numpy, no torch), and the inpaint defaults.

DEFAULT_GUIDANCE: the classifier-free guidance scale of a new generation. It was chosen for the built-in model on
the refinement benchmark's tuning split (bench/refine.py --split tuning --tune guidance=G; docs/benchmarks.md,
"Guidance"). The previous default was 7.5, Stable Diffusion's usual value. Against it, 4 found more of the named
objects, gave heatmaps that match the objects better, let reweighting grow objects while keeping the rest, and
inpainted more reliably.
On the test split the heatmaps, reweighting and inpainting improved. Foreground presence fell a little
(0.877 -> 0.861), and so did sky and ground (0.988 -> 0.973); see bench/results/refine_ddim20.json against
refine_guidance7.5.json.
Hub models (Stable Diffusion 1.x) usually run at about 7.5. The Generate page and `--guidance` set it per image.
"""
from dataclasses import dataclass

DEFAULT_GUIDANCE = 4.0


@dataclass(frozen=True)
class InpaintSettings:
    """The inpaint settings a new inpaint starts from (engine, Studio, CLI, the Refine page, replay of old rows)."""

    mask_blur: int = 4  # feather width inside the mask, px: outside the mask stays exactly the parent
    only_masked: bool = False  # work on a crop around the mask, at full resolution
    padding: int = 16  # px of context around the mask's box, with only_masked
    auto_crop: bool = True  # small masks work only-masked anyway (engine.sampling.loop.auto_crop_padding)


INPAINT_DEFAULTS = InpaintSettings()
