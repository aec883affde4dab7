"""The numpy schedulers against diffusers: same timesteps and sigmas, and the same denoising trajectory (float32)."""
import json

import numpy as np
import pytest

from engine.sampling.np_schedulers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UnsupportedConfig
from engine.sampling.schedulers import SCHEDULERS, make_scheduler

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from engine.sampling.schedulers import make_reference_scheduler  # noqa: E402  (diffusers)

BASE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon"}
CONFIGS = {
    "built-in (leading)": dict(BASE, timestep_spacing="leading"),
    "linspace": dict(BASE, timestep_spacing="linspace", steps_offset=0),
    "trailing, v-prediction": dict(BASE, timestep_spacing="trailing", prediction_type="v_prediction"),
    "linear betas, alpha one": dict(BASE, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                                    set_alpha_to_one=True, timestep_spacing="leading"),
}


def _run(sched, steps, *, numpy_side):
    """A fixed fake model over the whole schedule, plus add_noise at each step; returns the trajectory."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    x0 = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    noise = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    wrap = (lambda a: a) if numpy_side else torch.from_numpy
    unwrap = (lambda a: np.asarray(a)) if numpy_side else (lambda a: a.numpy())
    sched.set_timesteps(steps)
    xs = wrap(x * np.float32(float(sched.init_noise_sigma)))
    out = []
    ts = sched.timesteps
    for i, t in enumerate(ts):
        inp = sched.scale_model_input(xs, t)
        eps = 0.3 * inp + 0.1 * wrap(x0)  # deterministic stand-in for the UNet
        xs = sched.step(eps, t, xs, return_dict=False)[0]
        out.append(unwrap(xs).copy())
        if i < len(ts) - 1:
            out.append(unwrap(sched.add_noise(wrap(x0), wrap(noise), ts[i + 1:i + 2])).copy())
    return np.asarray(ts), np.stack(out)


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("steps", [1, 7, 20, 50])
def test_numpy_scheduler_matches_diffusers(name, config_name, steps):
    config = CONFIGS[config_name]
    if name == "ddim" and config["prediction_type"] == "v_prediction" and steps == 1:
        pytest.skip("a single DDIM step at t=999 divides by ~0 for v-prediction in both")
    ref = make_reference_scheduler(name, config)
    mine = make_scheduler(name, config)
    assert type(mine).__module__ == "engine.sampling.np_schedulers"
    ts_ref, traj_ref = _run(ref, steps, numpy_side=False)
    ts_np, traj_np = _run(mine, steps, numpy_side=True)
    np.testing.assert_array_equal(ts_np.astype(np.float64), ts_ref.astype(np.float64))
    if hasattr(ref, "sigmas") and name != "ddim":
        np.testing.assert_allclose(mine.sigmas, ref.sigmas.numpy(), rtol=1e-5, atol=0)  # a few float32 ulps
    np.testing.assert_allclose(float(np.asarray(mine.init_noise_sigma)), float(ref.init_noise_sigma), rtol=1e-6)
    assert traj_np.dtype == np.float32
    scale = np.abs(traj_ref).max()
    np.testing.assert_allclose(traj_np, traj_ref, rtol=0, atol=2e-5 * max(1.0, scale))


def test_model_config_from_the_built_in_folder_is_covered():
    from engine.model.loading import default_model_path

    path = default_model_path() / "scheduler" / "scheduler_config.json"
    if not path.exists():
        pytest.skip("built-in model missing")
    config = json.loads(path.read_text())
    for name in SCHEDULERS:
        assert type(make_scheduler(name, config)).__module__ == "engine.sampling.np_schedulers"


def test_unsupported_options_fall_back_to_diffusers():
    config = dict(BASE, use_karras_sigmas=True)
    with pytest.raises(UnsupportedConfig):
        EulerDiscreteScheduler(config)
    with pytest.raises(UnsupportedConfig):
        DPMSolverMultistepScheduler(config)
    with pytest.raises(UnsupportedConfig):
        DDIMScheduler(dict(BASE, thresholding=True))
    sched = make_scheduler("euler", config)  # diffusers, wrapped to take and give numpy arrays
    sched.set_timesteps(5)
    x = np.ones((1, 4, 8, 8), np.float32)
    t = sched.timesteps[0]
    out = sched.step(sched.scale_model_input(x, t) * 0.1, t, x, return_dict=False)[0]
    assert isinstance(out, np.ndarray) and out.shape == x.shape
