"""Schedulers built from the model folder's scheduler config (a fresh one per image).

`make_scheduler` gives the numpy mirrors in engine/sampling/np_schedulers.py (no torch), which the sampler uses on every
backend. A config option they do not cover falls back to the diffusers class, wrapped to take and give numpy arrays
(needs torch). `make_reference_scheduler` is the diffusers class itself (the parity tests' reference).
"""
from __future__ import annotations

import numpy as np

from engine.errors import AttuneError

SCHEDULERS = ("ddim", "euler", "dpm++")
SCHEDULER_LABELS = {"ddim": "DDIM", "euler": "Euler", "dpm++": "DPM-Solver++ (2M)"}


def _key(name: str) -> str:
    key = str(name).strip().lower()
    if key in ("dpmpp", "dpm-solver++"):
        key = "dpm++"
    if key not in SCHEDULERS:
        raise AttuneError(f"Unknown scheduler '{name}': choose one of {', '.join(SCHEDULERS)}.")
    return key


def _clean(config: dict) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def make_scheduler(name: str, config: dict):
    """A new numpy scheduler named "ddim" | "euler" | "dpm++" from a diffusers scheduler config dict."""
    from engine.sampling import np_schedulers as nps

    key, config = _key(name), _clean(config)
    cls = {"ddim": nps.DDIMScheduler, "euler": nps.EulerDiscreteScheduler, "dpm++": nps.DPMSolverMultistepScheduler}
    try:
        return cls[key](config)
    except nps.UnsupportedConfig as e:
        try:
            return _NumpyAdapter(make_reference_scheduler(key, config))
        except ImportError:
            raise AttuneError(
                f"This model's scheduler config ({e}) needs diffusers, which is not installed: "
                "pip install -r requirements-torch.txt"
            ) from None


def make_reference_scheduler(name: str, config: dict):
    """The diffusers scheduler (needs torch): DDIM, Euler, or DPM-Solver++ 2M."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    key, config = _key(name), _clean(config)
    if key == "ddim":
        return DDIMScheduler.from_config(config)
    if key == "euler":
        return EulerDiscreteScheduler.from_config(config)
    return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)


class _NumpyAdapter:
    """A diffusers scheduler seen through numpy arrays (configs the numpy mirrors do not cover)."""

    def __init__(self, scheduler) -> None:
        import torch

        self._torch = torch
        self.scheduler = scheduler

    def set_timesteps(self, steps: int, device=None) -> None:
        self.scheduler.set_timesteps(int(steps))

    @property
    def timesteps(self) -> np.ndarray:
        return self.scheduler.timesteps.numpy()

    @property
    def init_noise_sigma(self) -> float:
        return float(self.scheduler.init_noise_sigma)

    def _t(self, a):
        return self._torch.from_numpy(np.ascontiguousarray(a))

    def _timestep(self, t):
        return self._torch.as_tensor(np.asarray(t)).to(self.scheduler.timesteps.dtype)

    def scale_model_input(self, sample, timestep=None):
        return self.scheduler.scale_model_input(self._t(sample), self._timestep(timestep)).numpy()

    def step(self, model_output, timestep, sample, return_dict: bool = False, **kwargs):
        out = self.scheduler.step(self._t(model_output), self._timestep(timestep), self._t(sample), return_dict=False)
        return (out[0].numpy(),)

    def add_noise(self, original, noise, timesteps):
        return self.scheduler.add_noise(self._t(original), self._t(noise), self._timestep(timesteps)).numpy()
