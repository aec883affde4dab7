"""A 2-step smoke run of the trainer on its tiny preset, then a resume; the result loads with diffusers. Then the
inpainting UNet (--inpaint) from it: zero-initialised extra channels, trained, and loaded by the engine."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _train(out: Path, *extra: str, work: str = "work") -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "train.tiny_scenes", "--preset", "smoke", "--out", str(out),
                           "--work", str(out.with_name(work)), "--time-limit", "300", *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.timeout(600)
def test_two_step_smoke_run_then_resume(tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "model"
    log = _train(out)
    assert "unet step 2" in log and "vae done: 2 steps" in log
    info = json.loads((out / "training.json").read_text())
    assert info["unet_steps"] == 2 and info["vae_steps"] == 2 and info["grounding"] is True
    assert all(v == v for v in info["final_losses"].values())  # finite, not NaN
    pipe = StableDiffusionPipeline.from_pretrained(out)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size

    log = _train(out, "--set", "max_steps=3")  # same work folder: cached latents, UNet resumed
    assert "loaded cached VAE" in log and "resumed UNet at step 2" in log and "unet step 3" in log
    assert json.loads((out / "training.json").read_text())["unet_steps"] == 3

    # the 9-channel inpainting UNet, from this model: 0 steps = the initialisation, then 2 steps (a resume)
    from diffusers import UNet2DConditionModel

    from engine.model.loading import load_components

    log = _train(out, "--inpaint", "--init-from", str(out), "--set", "max_steps=0", work="work_inpaint")
    base = UNet2DConditionModel.from_pretrained(out / "unet").conv_in.weight
    init = UNet2DConditionModel.from_pretrained(out / "unet_inpaint").conv_in.weight
    assert init.shape[1] == 9 and (init[:, 4:] == 0).all() and (init[:, :4] == base).all()
    log = _train(out, "--inpaint", "--init-from", str(out), "--set", "max_steps=2", work="work_inpaint")
    assert "resumed UNet at step 0" in log and "9-channel inpainting" in log and "unet step 2" in log
    info = json.loads((out / "unet_inpaint" / "training.json").read_text())
    assert info["unet_steps"] == 2 and all(v == v for v in info["final_losses"].values())
    comps = load_components(out)
    assert comps.inpaint_unet.config.in_channels == 9 and comps.unet_in_channels == 4
    assert not (comps.inpaint_unet.conv_in.weight[:, 4:] == 0).all()  # trained away from the zero init


@pytest.mark.timeout(600)
def test_distillation_targets_the_teachers_answer(tmp_path):
    """--distill-from: the target is the teacher's noise prediction (and, with distill_map_weight, its cross-attention
    maps) under the same random key or value scales, so a student that starts as the teacher has a loss of exactly 0
    at its first step; grounding is off."""
    teacher = tmp_path / "teacher"
    _train(teacher)
    student = tmp_path / "student"
    log = _train(student, "--init-from", str(teacher), "--distill-from", str(teacher), "--set", "max_steps=2",
                 "log_every=1", "distill_reweight_share=1.0", "distill_map_weight=0.1", work="work_distill")
    assert "distilling from" in log and "unet step 1 mse 0.0000 " in log and "map_kl 0.0000 " in log, log[-1500:]
    assert "unet step 2 " in log
    info = json.loads((student / "training.json").read_text())
    assert info["distilled_from"] == str(teacher) and info["grounding"] is False and info["unet_steps"] == 2

    # --self-attention-heads: the student's 16x16 self-attention runs 1 head instead of 2, and its folder says which
    # layout its weights were trained for
    from engine.model.loading import load_components

    regrouped = tmp_path / "regrouped"
    log = _train(regrouped, "--init-from", str(teacher), "--distill-from", str(teacher), "--self-attention-heads",
                 "down_blocks.0=1", "--set", "max_steps=1", "log_every=1", work="work_regrouped")
    assert "self-attention heads {'down_blocks.0': 1}: down_blocks.0.attentions.0.transformer_blocks.0.attn1" in log, log
    assert json.loads((regrouped / "attune.json").read_text())["self_attention_heads"] == {"down_blocks.0": 1}
    unet = load_components(regrouped).unet
    assert unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn1").heads == 1
    assert unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.attn2").heads == 2
