"""Schedulers, all from diffusers, built from the model folder's scheduler config (a fresh one per image)."""
from __future__ import annotations

from engine.errors import AttuneError

SCHEDULERS = ("ddim", "euler", "dpm++")
SCHEDULER_LABELS = {"ddim": "DDIM", "euler": "Euler", "dpm++": "DPM-Solver++ (2M)"}


def make_scheduler(name: str, config: dict):
    """A new scheduler named "ddim" | "euler" | "dpm++" from a diffusers scheduler config dict."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    key = str(name).strip().lower()
    config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    if key == "ddim":
        return DDIMScheduler.from_config(config)
    if key == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if key in ("dpm++", "dpmpp", "dpm-solver++"):
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    raise AttuneError(f"Unknown scheduler '{name}': choose one of {', '.join(SCHEDULERS)}.")
