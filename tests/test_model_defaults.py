"""Defaults come from the model (DESIGN §9): size, scheduler, guidance and steps per folder, attune.json overrides,
few-step distilled models run with guidance off, other families are refused in one line, and the built-in model keeps
its measured defaults."""
import json
import shutil

import numpy as np
import pytest
from diffusers import EulerDiscreteScheduler, LCMScheduler

from engine.errors import AttuneError
from engine.model.family import ATTUNE_SCHEDULERS, BUILTIN_DEFAULTS, model_defaults
from engine.model.loading import load_components
from engine.pipeline.attune import Attune
from engine.pipeline.params import GenerateParams
from engine.sampling.schedulers import SCHEDULERS
from tests.tiny_model import build_sd_model

BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
PROMPT = "a wolf under the moon"


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """SD-1.5-shaped: CLIP BPE tokenizer, UNet sample_size 8 x VAE factor 8, Euler with leading spacing."""
    return build_sd_model(tmp_path_factory.mktemp("sd"), scheduler=EulerDiscreteScheduler(**BETAS, timestep_spacing="leading"))


@pytest.fixture(scope="module")
def turbo_folder(tmp_path_factory):
    """As SD-Turbo ships: Euler with trailing spacing."""
    return build_sd_model(tmp_path_factory.mktemp("turbo"),
                          scheduler=EulerDiscreteScheduler(**BETAS, timestep_spacing="trailing"))


def copy_with(folder, tmp_path, attune_json=None):
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    if attune_json is not None:
        (copy / "attune.json").write_text(attune_json if isinstance(attune_json, str) else json.dumps(attune_json))
    return copy


def test_schedulers_agree_with_the_sampler():
    assert ATTUNE_SCHEDULERS == SCHEDULERS


def test_sd_folder_defaults(sd_folder):
    d = model_defaults(sd_folder)
    assert (d.width, d.height, d.scheduler, d.guidance, d.steps) == (64, 64, "euler", 7.5, 50)
    assert d.timestep_spacing == "leading" and not d.distilled
    assert d.sources["width"] == d.sources["scheduler"] == "model folder"
    assert d.sources["guidance"] == "family default"


def test_turbo_gets_guidance_off_and_one_step(turbo_folder):
    d = model_defaults(turbo_folder)
    assert d.distilled and d.guidance == 0.0 and d.steps == 1
    assert (d.width, d.scheduler, d.timestep_spacing) == (64, "euler", "trailing")
    assert "Turbo" in d.family


def test_lcm_maps_to_the_closest_scheduler_with_a_note(tmp_path):
    folder = build_sd_model(tmp_path / "lcm", scheduler=LCMScheduler(**BETAS))
    d = model_defaults(folder)
    assert (d.scheduler, d.guidance, d.steps, d.distilled) == ("ddim", 0.0, 4, True)
    assert len(d.notes) == 1 and "LCMScheduler" in d.notes[0]


def test_engine_fills_left_out_values_from_the_model(turbo_folder):
    engine = Attune(turbo_folder, backend="torch")
    try:
        result = engine.generate(GenerateParams(prompt=PROMPT, seed=3))
        p = result.params
        assert (p.width, p.height, p.scheduler, p.guidance, p.steps) == (64, 64, "euler", 0.0, 1)
        assert engine.components.scheduler_config["timestep_spacing"] == "trailing"
        assert "model folder" in result.info["defaults"] and "family default" in result.info["defaults"]
        explicit = engine.generate(GenerateParams(prompt=PROMPT, seed=3, width=64, height=64, scheduler="euler",
                                                  guidance=0.0, steps=1))
        assert np.array_equal(np.asarray(result.image), np.asarray(explicit.image))
        assert "defaults" not in explicit.info  # every value was given
    finally:
        engine.close()


def test_builtin_family_keeps_its_measured_defaults(tiny_model_dir):
    assert model_defaults(tiny_model_dir).values() == BUILTIN_DEFAULTS.values() == {
        "width": 128, "height": 128, "guidance": 4.0, "steps": 20, "scheduler": "ddim"}
    engine = Attune(tiny_model_dir, backend="torch")
    try:
        result = engine.generate(GenerateParams(prompt="a wolf", seed=1, steps=2))
        assert (result.params.width, result.params.guidance, result.params.scheduler) == (128, 4.0, "ddim")
        explicit = engine.generate(GenerateParams(prompt="a wolf", seed=1, steps=2, width=128, height=128,
                                                  guidance=4.0, scheduler="ddim"))
        assert np.array_equal(np.asarray(result.image), np.asarray(explicit.image))
    finally:
        engine.close()


def test_attune_json_overrides(sd_folder, tmp_path):
    folder = copy_with(sd_folder, tmp_path, {"guidance": 3, "steps": 7, "width": 96, "scheduler": "DPM++",
                                             "timestep_spacing": "trailing", "distilled": False})
    d = model_defaults(folder)
    assert (d.width, d.height, d.guidance, d.steps, d.scheduler) == (96, 64, 3.0, 7, "dpm++")
    assert d.timestep_spacing == "trailing" and not d.distilled
    assert d.sources["guidance"] == d.sources["width"] == "attune.json" and d.sources["height"] == "model folder"
    assert load_components(folder).scheduler_config["timestep_spacing"] == "trailing"  # what the sampler uses


def test_attune_json_names_the_models_phrases(sd_folder, tmp_path):
    assert model_defaults(sd_folder).phrases == ()
    d = model_defaults(copy_with(sd_folder, tmp_path, {"phrases": ["Full  Moon", "night sky", "full moon"]}))
    assert d.phrases == ("full moon", "night sky")


def test_attune_json_sets_the_models_own_slider_mapping(sd_folder, tmp_path):
    from engine.words.weights import slider_scale

    assert (model_defaults(sd_folder).slider_knots, model_defaults(sd_folder).slider_gains) == ({}, {})
    folder = copy_with(sd_folder, tmp_path, {"slider_knots": {"score": [[0, 0.5, 1], [0, 0.6, 1]]},
                                             "slider_gain": {"score": 2}})
    d = model_defaults(folder)
    assert d.slider_knots == {"score": ((0.0, 0.5, 1.0), (0.0, 0.6, 1.0))} and d.slider_gains == {"score": 2.0}
    engine = Attune(folder, backend="torch")
    try:
        def scales(weight, mode):
            encoded = engine._encode(engine._validate(GenerateParams(PROMPT, weights={"moon": weight}, weight_mode=mode)))
            moon = encoded.word_tokens.indices_for("moon")
            return {round(encoded.cond.token_weights[i], 6) for i in moon}

        assert scales(0.5, "score") == {0.6} and scales(1.5, "score") == {2.0}  # the folder's mapping
        assert scales(0.5, "prob") == {round(slider_scale("prob", 0.5), 6)}  # a method it does not name: the built-in's
        assert scales(1.0, "score") == {1.0}
    finally:
        engine.close()


def test_attune_json_says_distilled(sd_folder, tmp_path):
    d = model_defaults(copy_with(sd_folder, tmp_path, {"distilled": True}))
    assert (d.guidance, d.steps, d.distilled) == (0.0, 1, True)


@pytest.mark.parametrize("content, named", [
    ({"guidanse": 3}, "guidanse"),
    ({"steps": 0}, "steps"),
    ({"width": "512"}, "width"),
    ({"guidance": -1}, "guidance"),
    ({"scheduler": "plms"}, "scheduler"),
    ({"timestep_spacing": "sideways"}, "timestep_spacing"),
    ({"distilled": "yes"}, "distilled"),
    ({"phrases": ["moon"]}, "multi-word names"),
    ({"phrases": "full moon"}, "multi-word names"),
    ({"slider_knots": {"score": [[0, 1], [0, 0.5]]}}, "slider_knots"),  # slider 1 must stay 1
    ({"slider_knots": {"score": [[0, 0.6, 0.5, 1], [0, 0.5, 0.7, 1]]}}, "slider_knots"),  # not rising
    ({"slider_knots": {"scor": [[0, 1], [0, 1]]}}, "slider_knots"),
    ({"slider_gain": {"score": 0}}, "slider_gain"),
    ({"slider_gain": [2]}, "slider_gain"),
    ("[1, 2]", "JSON object"),
    ("{not json", "attune.json"),
])
def test_bad_attune_json_is_one_line(sd_folder, tmp_path, content, named):
    folder = copy_with(sd_folder, tmp_path, content)
    for load in (model_defaults, load_components):
        with pytest.raises(AttuneError) as info:
            load(folder)
        message = str(info.value)
        assert named in message and "\n" not in message


@pytest.mark.parametrize("change, family", [
    ("text_encoder_2", "SDXL refiner or partial SDXL"),  # an SDXL encoder beside an SD UNet
    ("text_time", "SDXL refiner or partial SDXL"),  # an SDXL UNet without the second encoder
    ("StableDiffusion3Pipeline", "SD3"),
    ("FluxPipeline", "FLUX"),
    ("KandinskyV22Pipeline", "Kandinsky"),
    ("StableVideoDiffusionPipeline", "video (Stable Video Diffusion)"),
    ("StableDiffusionXLControlNetPipeline", "SDXL ControlNet"),
])
def test_other_families_are_refused_in_one_line(sd_folder, tmp_path, change, family):
    folder = copy_with(sd_folder, tmp_path)
    if change == "text_encoder_2":
        shutil.copytree(folder / "text_encoder", folder / "text_encoder_2")
    elif change == "text_time":
        config = json.loads((folder / "unet" / "config.json").read_text())
        config["addition_embed_type"] = "text_time"
        (folder / "unet" / "config.json").write_text(json.dumps(config))
    else:
        index = json.loads((folder / "model_index.json").read_text())
        index["_class_name"] = change
        (folder / "model_index.json").write_text(json.dumps(index))
    for load in (load_components, model_defaults):
        with pytest.raises(AttuneError) as info:
            load(folder)
        message = str(info.value)
        assert f"holds a {family} model" in message and "\n" not in message


def test_cli_takes_the_model_defaults_and_records_them(turbo_folder, tmp_path, capsys):
    from engine.cli import main

    code = main(["generate", "--prompt", PROMPT, "--model", str(turbo_folder), "--backend", "torch",
                 "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    record = json.loads(out)
    assert (record["width"], record["height"], record["scheduler"], record["guidance"], record["steps"]) == (
        64, 64, "euler", 0.0, 1)
    assert "model folder" in record["defaults_source"]
    code = main(["generate", "--prompt", PROMPT, "--model", str(turbo_folder), "--backend", "torch", "--size",
                 "64x64", "--steps", "2", "--guidance", "2", "--scheduler", "ddim", "--out", str(tmp_path / "out")])
    record = json.loads(capsys.readouterr()[0])
    assert (record["steps"], record["guidance"], record["scheduler"], record["defaults_source"]) == (2, 2.0, "ddim", "")


def test_old_records_load_without_the_field():
    from engine.study.versions import Version

    assert Version.from_dict({"prompt": "a wolf", "steps": 20}).defaults_source == ""


def test_generate_page_starts_at_the_model_defaults(turbo_folder, tmp_path, monkeypatch):
    from tests.app_support import click, open_page, studio, texts

    monkeypatch.setenv("ATTUNE_MODEL", str(turbo_folder))
    monkeypatch.setenv("ATTUNE_BACKEND", "torch")
    monkeypatch.delenv("ATTUNE_DEFAULT_STEPS", raising=False)
    monkeypatch.setenv("ATTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("ATTUNE_RESEARCHER_PASSWORD", raising=False)
    monkeypatch.delenv("ATTUNE_CONDITIONS", raising=False)
    at = open_page("pages/1_Generate.py", pid="P01", study="s")
    values = {w.label: w.value for w in list(at.number_input) + list(at.selectbox)}
    assert (values["Width"], values["Height"], values["Scheduler"], values["Guidance"], values["Steps"]) == (
        64, 64, "euler", 0.0, 1)
    shown = " ".join(texts(at.caption))
    assert "defaults from model folder (width, height, scheduler)" in shown and "guidance off" in shown
    click(at, "Generate")
    assert not at.error, texts(at.error)
    current = studio(at).current
    assert (current.width, current.scheduler, current.guidance, current.steps) == (64, "euler", 0.0, 1)


def test_builtin_folder_runs_the_sampler_its_steps_test_passed():
    # bench/results/refine_steps_v3_rule.json: DPM-Solver++ 10 steps with trailing spacing passed the paired
    # non-inferiority test against DDIM 20 on the test split, so the built-in folder's attune.json sets it.
    from engine.model.loading import default_model_path

    d = model_defaults(default_model_path())
    assert (d.scheduler, d.steps, d.timestep_spacing, d.guidance, d.distilled) == ("dpm++", 10, "trailing", 4.0, False)
    assert d.sources["steps"] == d.sources["scheduler"] == d.sources["timestep_spacing"] == "attune.json"
