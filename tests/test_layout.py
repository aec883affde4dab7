"""Layout-keeping reweights (engine.sampling.layout, Attune.reweight, Studio, CLI) and the refinement benchmark's metrics."""
import json

import numpy as np
import pytest

from bench import refine_metrics as M
from engine.cli import main
from engine.errors import AttuneError
from engine.sampling.layout import LocalBlend, RunSpec, Trajectory, blend_mask, check_layout
from engine.words.weights import slider_scale
from engine.pipeline.attune import Attune, TextJob
from engine.pipeline.params import GenerateParams
from engine.study.pngmeta import read_png

PROMPT = "a wolf sitting in front of the full moon"


# ---------------------------------------------------------------------------------------------- metrics
def square(size, y, x, side):
    m = np.zeros((size, size), bool)
    m[y:y + side, x:x + side] = True
    return m


def test_iou_and_topk():
    a, b = square(20, 0, 0, 10), square(20, 0, 5, 10)
    assert M.iou(a, b) == pytest.approx(50 / 150)
    assert M.iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0
    heat = np.arange(16, dtype=float).reshape(4, 4)
    assert M.topk_mask(heat, 3).sum() == 3 and M.topk_mask(heat, 3)[3, 1:].all()


def test_locality_counts_only_far_pixels():
    parent = np.zeros((64, 64, 3), np.uint8)
    obj = square(64, 10, 10, 10)
    result = parent.copy()
    result[12:18, 12:18] = 255  # inside the object: not counted
    result[21:24, 10:20] = 255  # within 8 px of the object: not counted
    result[50:60, 50:60] = 30  # far, changed by more than 20
    result[40:42, 40:42] = 15  # far, changed by less than 20
    far = M.far_region(obj, None, (64, 64))
    assert M.locality(parent, result, obj, None) == pytest.approx(100 / far.sum())
    assert M.locality(parent, parent, obj, obj) == 0.0


def test_area_ratio_and_extra_copies():
    base = square(64, 10, 10, 10)
    assert M.area_ratio(base, base) == 1.0
    assert M.area_ratio(None, base) == 0.0
    bigger = base.copy()
    bigger[10:20, 20:25] = True  # 10x15 in place
    assert M.area_ratio(bigger, base) == pytest.approx(1.5)
    copy = base | square(64, 50, 50, 10)  # a second copy far away: counted apart, not as area
    assert M.area_ratio(copy, base) == 1.0 and M.extra_copies(copy, base) == 1
    assert M.extra_copies(base, base) == 0


def test_psnr_and_spearman():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    assert M.psnr(a, b) == float("inf")
    b[0, 0] = 255  # one pixel of 64, all channels: mse = 255² / 64
    assert M.psnr(a, b) == pytest.approx(10 * np.log10(64))
    assert np.isnan(M.psnr(a, b, np.zeros((8, 8), bool)))
    assert M.spearman([0, 1, 2], [5, 5, 5]) == 0.0  # never changes: 0, not dropped
    assert M.spearman([0, 1, 2], [1, 2, 3]) == pytest.approx(1.0)
    assert M.spearman([0, 1, 2], [3, 2, 1]) == pytest.approx(-1.0)


# ---------------------------------------------------------------------------------------------- blend parts
def test_blend_mask_is_the_union_grown_by_one_cell():
    maps = np.zeros((2, 3, 8, 8), np.float32)
    maps[0, 1, 2, 2] = 1.0  # parent: the word attends to cell (2, 2)
    maps[1, 1, 6, 6] = 1.0  # edit: the word moved to (6, 6)
    maps[:, 2] = 1.0  # another word everywhere: not part of the mask
    mask = blend_mask(maps, [1], threshold=0.3, dilate=1)[0, 0]
    assert mask[1:4, 1:4].all() and mask[5:8, 5:8].all()
    assert mask.sum() == 9 + 9
    assert blend_mask(maps, [], 0.3, 1).sum() == 0


def test_local_blend_keeps_parent_latents_outside_the_mask():
    parent = Trajectory(latents=[np.zeros((1, 4, 8, 8), np.float32)], token_maps=[np.zeros((3, 8, 8), np.float16)])
    parent.token_maps[0][1, 0, 0] = 1.0
    blend = LocalBlend(parent, [1], threshold=0.3, dilate=1)
    edit_maps = np.zeros((1, 3, 8, 8), np.float32)
    x = blend(0, np.ones((1, 4, 8, 8), np.float32), edit_maps)
    inside = blend.last_mask[0, 0] > 0
    assert inside.sum() == 4  # cell (0, 0) grown by one, clipped at the corner
    assert np.array_equal(x[0][:, inside], np.ones((4, 4))) and np.array_equal(x[0][:, ~inside], np.zeros((4, 60)))
    assert blend.pixel_mask((64, 64)).sum() == 4 * 64


def test_slider_scale_and_layout_names():
    for method in ("score", "prob", "embed"):
        assert slider_scale(method, 1.0) == 1.0 and slider_scale(method, 0.0) == 0.0
        values = [slider_scale(method, w) for w in (0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3)]
        assert values == sorted(values) and 0 < slider_scale(method, 0.5) < 1 < slider_scale(method, 1.5)
    assert check_layout(" Blend ") == "blend"
    with pytest.raises(AttuneError, match="Unknown layout 'sideways'"):
        check_layout("sideways")


# ---------------------------------------------------------------------------------------------- engine (tiny model)
def pixels(result):
    return np.asarray(result.image.convert("RGB"))


def test_blend_changes_nothing_outside_its_mask(tiny_engine, monkeypatch):
    params = GenerateParams(prompt=PROMPT, seed=3, steps=4, width=64, height=64)
    parent = tiny_engine.generate(params)
    masks = []
    original = LocalBlend.paste

    def spy(self, image):
        masks.append(self.pixel_mask(image.shape[:2]))
        return original(self, image)

    monkeypatch.setattr(LocalBlend, "paste", spy)
    import functools

    import engine.pipeline.attune

    # the tiny random model attends everywhere: a high threshold leaves part of the image outside the mask
    monkeypatch.setattr(engine.pipeline.attune, "LocalBlend", functools.partial(LocalBlend, threshold=0.9, dilate=0))
    edit = tiny_engine.reweight(params, {"moon": 2.5}, "score", "blend")
    assert edit.info["layout"] == "blend" and len(masks) == 1
    outside = ~masks[0]
    assert outside.any()
    assert np.array_equal(pixels(edit)[outside], pixels(parent)[outside])
    # the parent's trajectory came from the cache; without it the engine recomputes it: the same image
    tiny_engine._trajectories.clear()
    again = tiny_engine.reweight(params, {"moon": 2.5}, "score", "blend")
    assert np.array_equal(pixels(again), pixels(edit))
    # nothing reweighted: the parent itself
    same = tiny_engine.reweight(params, {}, "score", "blend")
    assert np.array_equal(pixels(same), pixels(parent))


def test_free_layout_is_the_plain_rerun(tiny_engine):
    params = GenerateParams(prompt=PROMPT, seed=3, steps=3, width=64, height=64)
    free = tiny_engine.reweight(params, {"moon": 1.5}, "prob", "free")
    plain = tiny_engine.generate(params.replace(weights={"moon": 1.5}, weight_mode="prob"))
    assert free.info["layout"] == "free" and np.array_equal(pixels(free), pixels(plain))
    with pytest.raises(AttuneError, match="Unknown layout"):
        tiny_engine.reweight(params, {"moon": 1.5}, "prob", "loose")
    checked = tiny_engine._validate(params)  # the private path takes checked params, with the model's defaults in
    other = RunSpec(checked.replace(seed=4))
    with pytest.raises(AttuneError, match="differ: seed"):
        with tiny_engine._turn():
            tiny_engine._text_to_image(TextJob(RunSpec(checked.replace(weights={"moon": 2}), "blend", other)))


# ---------------------------------------------------------------------------------------------- CLI
def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_reweight_from_png(capsys, tiny_model_dir, tmp_path):
    code, out, _ = run(capsys, "generate", "--prompt", PROMPT, "--seed", "5", "--steps", "3", "--size", "64x64",
                       "--weight", "wolf=1.2", "--model", tiny_model_dir, "--backend", "torch", "--out", tmp_path / "a")
    assert code == 0
    first = json.loads(out)
    code, out, err = run(capsys, "reweight", "--from", first["image_path"], "--weight", "moon=1.8", "--weight-mode",
                         "prob", "--backend", "torch", "--out", tmp_path / "b")
    assert code == 0, err
    record = json.loads(out)
    assert record["kind"] == "reweight" and record["layout"] == "blend" and record["weight_mode"] == "prob"
    assert record["weights"] == {"wolf": 1.2, "moon": 1.8}  # the PNG's weights, plus the new one
    for key in ("prompt", "seed", "steps", "guidance", "width", "height", "scheduler", "model_hash"):
        assert record[key] == first[key]
    import sqlite3

    rows = sqlite3.connect(tmp_path / "b" / "attune.db").execute("SELECT id, kind, parent_id FROM versions").fetchall()
    parent = [r for r in rows if r[1] == "restore"]
    assert len(rows) == 2 and len(parent) == 1 and record["parent_id"] == parent[0][0]
    _, meta = read_png(record["image_path"])
    assert meta.layout == "blend" and meta.weights == record["weights"]


@pytest.mark.parametrize("extra, message", [
    (["--weight", "moon=abc"], "is not a number"),
    (["--weight", "moon=1.5", "--layout", "sideways"], "Unknown layout 'sideways'"),
    (["--weight", "zebra=1.5"], "zebra"),
])
def test_cli_reweight_bad_input(capsys, tiny_model_dir, tmp_path, extra, message):
    code, out, _ = run(capsys, "generate", "--prompt", PROMPT, "--steps", "1", "--size", "32x32", "--model",
                       tiny_model_dir, "--backend", "torch", "--out", tmp_path / "a")
    png = json.loads(out)["image_path"]
    code, out, err = run(capsys, "reweight", "--from", png, *extra, "--backend", "torch", "--out", tmp_path / "b")
    assert code != 0 and out == "" and message in err and err.count("\n") == 1 and err.startswith("error:")
    code, out, err = run(capsys, "reweight", "--from", tmp_path / "missing.png", "--weight", "moon=1", "--out",
                         tmp_path / "c")
    assert code != 0 and err.startswith("error:") and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------- built-in model
def test_direction_on_the_built_in_model():
    """w > 1 raises the word's attention mass and its object's area; w < 1 lowers both (default method and layout)."""
    from train.segment import segment

    engine = Attune(backend="torch")
    params = GenerateParams(prompt="a painting of a wolf sitting in front of the full moon, night sky", seed=7, steps=10)

    def measure(result):
        moon = segment(pixels(result)).get("moon")
        return result.maps.word_totals(result.word_tokens)["moon"], 0 if moon is None else int(moon.sum())

    mass, area = measure(engine.generate(params))
    more = engine.reweight(params, {"moon": 2.0})
    less = engine.reweight(params, {"moon": 0.5})
    assert more.info["layout"] == less.info["layout"] == "blend"
    mass_more, area_more = measure(more)
    mass_less, area_less = measure(less)
    assert area > 0
    assert mass_more > mass and area_more > area
    assert mass_less < mass and area_less < area
    engine.close()


def test_the_trajectory_cache_keeps_a_run_per_participant_and_stays_within_its_bytes(tiny_engine, monkeypatch):
    import engine.pipeline.attune as attune_module

    def run(seed, cells=16):
        trajectory = Trajectory(latents=[np.zeros((1, 4, cells, cells), np.float32)])
        return RunSpec(params=GenerateParams(prompt=PROMPT, seed=seed)), trajectory

    tiny_engine._trajectories.clear()
    try:
        specs = [run(seed) for seed in range(8)]
        for spec, trajectory in specs:  # 8 participants' parents, all kept
            tiny_engine._remember_trajectory(spec, "torch", trajectory)
        assert all(tiny_engine._trajectory(spec, "torch") is t for spec, t in specs)
        one = specs[0][1].nbytes
        monkeypatch.setattr(attune_module, "TRAJECTORY_CACHE_BYTES", 3 * one)
        spec, trajectory = run(99)
        tiny_engine._remember_trajectory(spec, "torch", trajectory)
        assert len(tiny_engine._trajectories) == 3  # the oldest went first
        assert tiny_engine._trajectory(spec, "torch") is trajectory
        huge_spec, huge = run(100, cells=64)  # larger than the whole budget: still kept, alone
        tiny_engine._remember_trajectory(huge_spec, "torch", huge)
        assert list(tiny_engine._trajectories.values()) == [huge]
    finally:
        tiny_engine._trajectories.clear()
