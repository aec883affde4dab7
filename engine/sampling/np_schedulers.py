"""DDIM, Euler and DPM-Solver++ (2M) in numpy: mirrors of the diffusers schedulers, without torch.

They read the same scheduler_config.json, compute the same timesteps and sigmas (float32, in the same order of
operations), and have the diffusers method names the sampler uses: set_timesteps, timesteps, init_noise_sigma,
scale_model_input, step(..., return_dict=False)[0], add_noise. Parity with diffusers: tests/test_np_schedulers.py.

Covered config options: beta_schedule linear | scaled_linear | squaredcos_cap_v2, trained_betas, timestep_spacing
linspace | leading | trailing, steps_offset, prediction_type epsilon | v_prediction | sample, set_alpha_to_one,
clip_sample (DDIM), rescale_betas_zero_snr, final_sigmas_type zero | sigma_min. Anything else (Karras sigmas,
thresholding, ...) raises UnsupportedConfig, and engine.sampling.schedulers uses diffusers for it when torch is installed.
"""
from __future__ import annotations

import math

import numpy as np

F32 = np.float32


class UnsupportedConfig(ValueError):
    """The config asks for an option these mirrors do not implement."""


def _check(config: dict, unsupported: dict) -> None:
    for key, default in unsupported.items():
        if config.get(key) not in (default, None):
            raise UnsupportedConfig(f"{key}={config.get(key)!r}")


def _linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(..., dtype=float32): start + i·step for the first half, end − (steps−1−i)·step after."""
    step = (end - start) / (steps - 1) if steps > 1 else 0.0
    i = np.arange(steps)
    half = steps // 2
    out = np.where(i < half, start + step * i, end - step * (steps - 1 - i))
    return out.astype(F32)


def _betas_for_alpha_bar(n: int, max_beta: float = 0.999) -> np.ndarray:
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)], dtype=F32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    alphas_bar_sqrt = np.sqrt(np.cumprod(1.0 - betas, dtype=F32)).astype(F32)
    first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (1 - alphas).astype(F32)


def _alphas_cumprod(config: dict) -> np.ndarray:
    n = int(config.get("num_train_timesteps", 1000))
    schedule = config.get("beta_schedule", "linear")
    start, end = float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02))
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], dtype=F32)
    elif schedule == "linear":
        betas = _linspace_f32(start, end, n)
    elif schedule == "scaled_linear":
        betas = _linspace_f32(start**0.5, end**0.5, n) ** 2
    elif schedule == "squaredcos_cap_v2":
        betas = _betas_for_alpha_bar(n)
    else:
        raise UnsupportedConfig(f"beta_schedule={schedule!r}")
    if config.get("rescale_betas_zero_snr", False):
        betas = _rescale_zero_terminal_snr(betas)
    cumprod = np.cumprod((F32(1.0) - betas).astype(F32), dtype=F32)
    if config.get("rescale_betas_zero_snr", False):
        cumprod[-1] = 2**-24
    return cumprod


def _spaced_timesteps(config: dict, steps: int, *, last: int | None = None, extra: int = 0) -> np.ndarray:
    """Integer-valued timesteps, high to low, for "linspace" | "leading" | "trailing" (as float64 before casting).
    `extra`/`last`: DPM-Solver computes steps+1 points over [0, last) and drops the final one."""
    n = int(config.get("num_train_timesteps", 1000))
    spacing = config.get("timestep_spacing", "leading")
    offset = int(config.get("steps_offset", 0) or 0)
    last = n if last is None else last
    if spacing == "linspace":
        if extra:
            return np.linspace(0, last - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64)
        return np.linspace(0, n - 1, steps).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = last // (steps + extra)
        t = (np.arange(0, steps + extra) * ratio).round()[::-1]
        t = (t[:-1] if extra else t).copy().astype(np.int64)
        return t + offset
    if spacing == "trailing":
        ratio = n / steps
        return np.round(np.arange(last if extra else n, 0, -ratio)).astype(np.int64) - 1
    raise UnsupportedConfig(f"timestep_spacing={spacing!r}")


def _as_index(t) -> int:
    return int(np.asarray(t).reshape(-1)[0])


class DDIMScheduler:
    def __init__(self, config: dict) -> None:
        _check(config, {"thresholding": False})
        self.config = dict(config)
        self.n_train = int(config.get("num_train_timesteps", 1000))
        self.prediction_type = config.get("prediction_type", "epsilon")
        self.alphas_cumprod = _alphas_cumprod(config)
        self.final_alpha_cumprod = F32(1.0) if config.get("set_alpha_to_one", True) else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = np.arange(0, self.n_train)[::-1].copy().astype(np.int64)

    def set_timesteps(self, steps: int, device=None) -> None:
        if steps > self.n_train:
            raise ValueError(f"{steps} steps is more than the {self.n_train} training timesteps.")
        self.num_inference_steps = int(steps)
        self.timesteps = _spaced_timesteps(self.config, int(steps))

    def scale_model_input(self, sample, timestep=None):
        return sample

    def step(self, model_output, timestep, sample, return_dict: bool = False, **_):
        t = _as_index(timestep)
        prev = t - self.n_train // self.num_inference_steps
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        b_t = F32(1) - a_t
        if self.prediction_type == "epsilon":
            x0 = (sample - b_t ** F32(0.5) * model_output) / a_t ** F32(0.5)
            eps = model_output
        elif self.prediction_type == "sample":
            x0 = model_output
            eps = (sample - a_t ** F32(0.5) * x0) / b_t ** F32(0.5)
        elif self.prediction_type == "v_prediction":
            x0 = a_t ** F32(0.5) * sample - b_t ** F32(0.5) * model_output
            eps = a_t ** F32(0.5) * model_output + b_t ** F32(0.5) * sample
        else:
            raise UnsupportedConfig(f"prediction_type={self.prediction_type!r}")
        if self.config.get("clip_sample", True):
            r = float(self.config.get("clip_sample_range", 1.0))
            x0 = np.clip(x0, -r, r)
        direction = (F32(1) - a_prev) ** F32(0.5) * eps
        prev_sample = (a_prev ** F32(0.5) * x0 + direction).astype(F32)
        return (prev_sample, x0)

    def add_noise(self, original, noise, timesteps):
        a = self.alphas_cumprod[np.asarray(timesteps, dtype=np.int64).reshape(-1)]
        shape = (-1,) + (1,) * (np.ndim(original) - 1)
        return (a ** F32(0.5)).reshape(shape) * original + ((F32(1) - a) ** F32(0.5)).reshape(shape) * noise


class _SigmaScheduler:
    """Shared by Euler and DPM-Solver: sigmas per step, a step index, add_noise by timestep lookup."""

    sigmas: np.ndarray
    timesteps: np.ndarray

    def _base(self, config: dict) -> None:
        _check(config, {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                        "thresholding": False, "use_lu_lambdas": False, "use_flow_sigmas": False,
                        "use_dynamic_shifting": False})
        self.config = dict(config)
        self.n_train = int(config.get("num_train_timesteps", 1000))
        self.prediction_type = config.get("prediction_type", "epsilon")
        self.alphas_cumprod = _alphas_cumprod(config)
        self.train_sigmas = (((F32(1) - self.alphas_cumprod) / self.alphas_cumprod) ** F32(0.5)).astype(F32)
        self.step_index: int | None = None

    def _final_sigma(self) -> float:
        kind = self.config.get("final_sigmas_type", "zero")
        if kind == "zero":
            return 0.0
        if kind == "sigma_min":
            return float(self.train_sigmas[0])
        raise UnsupportedConfig(f"final_sigmas_type={kind!r}")

    def index_for_timestep(self, timestep) -> int:
        hits = np.nonzero(self.timesteps == np.asarray(timestep).reshape(-1)[0])[0]
        if len(hits) == 0:
            return len(self.timesteps) - 1
        return int(hits[1] if len(hits) > 1 else hits[0])

    def _init_step_index(self, timestep) -> None:
        if self.step_index is None:
            self.step_index = self.index_for_timestep(timestep)


class EulerDiscreteScheduler(_SigmaScheduler):
    def __init__(self, config: dict) -> None:
        self._base(config)
        if config.get("interpolation_type", "linear") != "linear":
            raise UnsupportedConfig(f"interpolation_type={config.get('interpolation_type')!r}")
        if config.get("timestep_type", "discrete") != "discrete":
            raise UnsupportedConfig(f"timestep_type={config.get('timestep_type')!r}")
        self.config.setdefault("timestep_spacing", "linspace")
        self.num_inference_steps = None
        self.timesteps = np.linspace(0, self.n_train - 1, self.n_train)[::-1].astype(F32)
        self.sigmas = np.concatenate([self.train_sigmas[::-1], [0.0]]).astype(F32)

    def set_timesteps(self, steps: int, device=None) -> None:
        self.num_inference_steps = int(steps)
        spacing = self.config.get("timestep_spacing", "linspace")
        if spacing == "linspace":
            timesteps = np.linspace(0, self.n_train - 1, steps, dtype=F32)[::-1].copy()
        else:
            timesteps = _spaced_timesteps(self.config, int(steps)).astype(F32)
        sigmas = np.interp(timesteps, np.arange(0, len(self.train_sigmas)), self.train_sigmas)
        self.sigmas = np.concatenate([sigmas, [self._final_sigma()]]).astype(F32)
        self.timesteps = timesteps.astype(F32)
        self.step_index = None

    @property
    def init_noise_sigma(self) -> float:
        max_sigma = self.sigmas.max()
        if self.config.get("timestep_spacing", "linspace") in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    def scale_model_input(self, sample, timestep):
        self._init_step_index(timestep)
        sigma = self.sigmas[self.step_index]
        return sample / ((sigma**2 + 1) ** 0.5)

    def step(self, model_output, timestep, sample, return_dict: bool = False, **_):
        self._init_step_index(timestep)
        sample = sample.astype(F32)
        sigma = self.sigmas[self.step_index]
        if self.prediction_type in ("epsilon",):
            x0 = sample - sigma * model_output
        elif self.prediction_type in ("sample", "original_sample"):
            x0 = model_output
        elif self.prediction_type == "v_prediction":
            x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
        else:
            raise UnsupportedConfig(f"prediction_type={self.prediction_type!r}")
        derivative = (sample - x0) / sigma
        dt = self.sigmas[self.step_index + 1] - sigma
        prev_sample = (sample + derivative * dt).astype(F32)
        self.step_index += 1
        return (prev_sample, x0)

    def add_noise(self, original, noise, timesteps):
        idx = [self.index_for_timestep(t) for t in np.asarray(timesteps).reshape(-1)]
        sigma = self.sigmas[idx].reshape((-1,) + (1,) * (np.ndim(original) - 1))
        return original + noise * sigma


class DPMSolverMultistepScheduler(_SigmaScheduler):
    """algorithm_type dpmsolver++, solver_order 2, midpoint (the "DPM++ 2M" of the app)."""

    def __init__(self, config: dict) -> None:
        config = dict(config)
        self._base(config)
        for key, want in (("algorithm_type", "dpmsolver++"), ("solver_order", 2), ("solver_type", "midpoint")):
            if config.get(key, want) != want:
                raise UnsupportedConfig(f"{key}={config.get(key)!r}")
        if config.get("variance_type") is not None:
            raise UnsupportedConfig(f"variance_type={config.get('variance_type')!r}")
        self.config.setdefault("timestep_spacing", "linspace")
        self.lower_order_final = bool(config.get("lower_order_final", True))
        self.euler_at_final = bool(config.get("euler_at_final", False))
        lambda_min = float(config.get("lambda_min_clipped", -math.inf))
        alpha_t = np.sqrt(self.alphas_cumprod)
        sigma_t = np.sqrt(F32(1) - self.alphas_cumprod)
        lambdas = (np.log(alpha_t) - np.log(sigma_t)).astype(F32)
        self.clipped_idx = int(np.searchsorted(lambdas[::-1], lambda_min))
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = np.linspace(0, self.n_train - 1, self.n_train, dtype=F32)[::-1].copy()
        self.sigmas = self.train_sigmas
        self.model_outputs: list = [None, None]
        self.lower_order_nums = 0

    def set_timesteps(self, steps: int, device=None) -> None:
        last = self.n_train - self.clipped_idx
        spacing = self.config.get("timestep_spacing", "linspace")
        if spacing == "trailing":
            ratio = self.n_train / steps
            timesteps = np.arange(last, 0, -ratio).round().copy().astype(np.int64) - 1
        else:
            timesteps = _spaced_timesteps(self.config, int(steps), last=last, extra=1)
        sigmas = np.interp(timesteps, np.arange(0, len(self.train_sigmas)), self.train_sigmas)
        self.sigmas = np.concatenate([sigmas, [self._final_sigma()]]).astype(F32)
        self.timesteps = timesteps.astype(np.int64)
        self.num_inference_steps = len(timesteps)
        self.model_outputs = [None, None]
        self.lower_order_nums = 0
        self.step_index = None

    def scale_model_input(self, sample, *args, **kwargs):
        return sample

    @staticmethod
    def _alpha_sigma(sigma):
        alpha = F32(1) / ((sigma**2 + F32(1)) ** F32(0.5))
        return alpha, sigma * alpha

    @staticmethod
    def _lambda(alpha, sigma):
        with np.errstate(divide="ignore"):
            return np.log(alpha) - np.log(sigma)

    def _x0(self, model_output, sample):
        alpha, sigma = self._alpha_sigma(self.sigmas[self.step_index])
        if self.prediction_type == "epsilon":
            return (sample - sigma * model_output) / alpha
        if self.prediction_type == "sample":
            return model_output
        if self.prediction_type == "v_prediction":
            return alpha * sample - sigma * model_output
        raise UnsupportedConfig(f"prediction_type={self.prediction_type!r}")

    def step(self, model_output, timestep, sample, return_dict: bool = False, **_):
        self._init_step_index(timestep)
        n = len(self.timesteps)
        i = self.step_index
        lower_final = i == n - 1 and (self.euler_at_final or (self.lower_order_final and n < 15)
                                      or self.config.get("final_sigmas_type", "zero") == "zero")
        m0 = self._x0(model_output, sample)
        self.model_outputs = [self.model_outputs[1], m0]
        sample = sample.astype(F32)
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[i + 1])
        alpha_s0, sigma_s0 = self._alpha_sigma(self.sigmas[i])
        lambda_t, lambda_s0 = self._lambda(alpha_t, sigma_t), self._lambda(alpha_s0, sigma_s0)
        h = lambda_t - lambda_s0
        with np.errstate(over="ignore", invalid="ignore"):
            if self.lower_order_nums < 1 or lower_final:
                x = (sigma_t / sigma_s0) * sample - (alpha_t * (np.exp(-h) - F32(1))) * m0
            else:
                m1 = self.model_outputs[0]
                alpha_s1, sigma_s1 = self._alpha_sigma(self.sigmas[i - 1])
                h0 = lambda_s0 - self._lambda(alpha_s1, sigma_s1)
                r0 = h0 / h
                d1 = (F32(1) / r0) * (m0 - m1)
                x = ((sigma_t / sigma_s0) * sample - (alpha_t * (np.exp(-h) - F32(1))) * m0
                     - F32(0.5) * (alpha_t * (np.exp(-h) - F32(1))) * d1)
        if self.lower_order_nums < 2:
            self.lower_order_nums += 1
        self.step_index += 1
        return (np.asarray(x, dtype=F32),)

    def add_noise(self, original, noise, timesteps):
        idx = [self.index_for_timestep(t) for t in np.asarray(timesteps).reshape(-1)]
        sigma = self.sigmas[idx].reshape((-1,) + (1,) * (np.ndim(original) - 1))
        alpha, sigma_t = self._alpha_sigma(sigma)
        return alpha * original + sigma_t * noise
