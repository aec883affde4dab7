"""Default generation settings that were measured rather than inherited (light module: no numpy, no torch).

DEFAULT_GUIDANCE: classifier-free guidance scale of a new generation. Chosen on the refinement benchmark's tuning
split for the built-in model (bench/refine.py --split tuning --tune guidance=G; docs/benchmarks.md, "Guidance"):
against 7.5 (Stable Diffusion's usual value, the previous default), 4 found more of the named objects, gave
heatmaps that match the objects better, let reweighting grow objects while keeping the rest, and inpainted more
reliably. Hub models (Stable Diffusion 1.x) are usually run at about 7.5; the Generate page and `--guidance`
set it per image.
"""
DEFAULT_GUIDANCE = 4.0
