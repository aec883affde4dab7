import hashlib
import sqlite3
from types import SimpleNamespace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from engine.model.family import BUILTIN_DEFAULTS
from engine.errors import AttuneError
from engine.attention.maps import AttentionMaps
from engine.study.log import StudyLog
from engine.pipeline.attune import Attune
from engine.pipeline.params import GenerateParams, Result
from engine.study.pngmeta import read_png
from engine.words.prompt import tokenize_prompt
from engine.sampling.masks import mask_array
from engine.study.studio import Studio
from engine.study.versions import Version
from tests.thread_support import run_in_threads

PROMPT = "a wolf sitting in front of the full moon"


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Attune(tiny_model_dir, backend="torch")


@pytest.fixture
def studio(engine, tmp_path):
    return Studio(engine, StudyLog(tmp_path / "study.db"), tmp_path / "out", participant_id="p1", session_id="s1",
                  study_id="st", condition="A")


def params(**changes):
    return GenerateParams(prompt=PROMPT, seed=7, steps=3, width=64, height=64).replace(**changes)


def pixels(version):
    return np.asarray(Image.open(version.image_path).convert("RGB")).astype(int)


def files(folder):
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).exists() else []


def test_generate_writes_image_maps_row_and_metadata(studio, engine):
    v = studio.generate(params())
    assert v.number == 1 and v.kind == "generate" and v.parent_id is None
    assert Path(v.image_path).is_file() and Path(v.maps_path).is_file() and v.maps_path.endswith(".npz")
    assert (v.participant_id, v.session_id, v.study_id, v.condition) == ("p1", "s1", "st", "A")
    assert v.model_hash == engine.components.weights_hash and v.backend == "torch"
    assert {"torch", "diffusers", "transformers"} <= set(v.library_versions)
    assert studio.log.get_version(v.id) == v
    image, meta = read_png(v.image_path)
    assert meta == v and image.size == (64, 64)
    assert studio.maps(v).resolutions() and studio.word_tokens(v).words == PROMPT.split()
    assert studio.current is v


def test_reweight_keeps_seed_and_params(studio):
    v1 = studio.generate(params())
    v2 = studio.reweight({"moon": 2.5}, "prob")
    assert v2.kind == "reweight" and v2.parent_id == v1.id
    assert v2.changed_fields(v1) == {"weights": ({}, {"moon": 2.5}), "weight_mode": ("score", "prob"),
                                     "layout": ("free", "blend")}
    assert not np.array_equal(pixels(v1), pixels(v2))
    v3 = studio.reweight({"moon": 1.0}, "score", parent=v1)  # all ones: the very same image
    assert np.array_equal(pixels(v1), pixels(v3))


def test_inpaint_restore_branch_and_events(studio):
    v1 = studio.generate(params())
    v2 = studio.reweight({"wolf": 1.5}, "score")
    mask = np.zeros((64, 64), bool)
    mask[8:40, 16:48] = True
    v3 = studio.inpaint(mask, "misty forest", mask_blur=2)
    assert v3.kind == "inpaint" and v3.parent_id == v2.id
    assert (v3.prompt, v3.inpaint_prompt, v3.mask_blur) == (PROMPT, "misty forest", 2)
    assert v3.weights == {}  # the parent's "wolf" is not in the inpaint prompt
    assert hashlib.sha256(Path(v3.mask_path).read_bytes()).hexdigest() == v3.mask_hash
    assert np.array_equal(mask_array(v3.mask_path, (64, 64)), mask)
    outside = ~mask
    outside[2:46, 10:54] = False  # leave out the blur band (3 × blur radius)
    assert np.array_equal(pixels(v3)[outside], pixels(v2)[outside])
    assert not np.array_equal(pixels(v3)[mask], pixels(v2)[mask])
    assert studio.word_tokens(v3).words == ["misty", "forest"]

    back = studio.restore(v1.id)
    assert back is v1 and studio.current is v1
    v4 = studio.reweight({"moon": 0.5}, "embed")
    assert v4.parent_id == v1.id
    assert [[v.number for v in line] for line in studio.history.branches()] == [[1, 2, 3], [1, 4]]
    events = studio.log.events_df(session_id="s1")
    assert list(events["action"]) == ["restore"] and '"number": 1' in events.loc[0, "payload"]


def test_reweight_of_an_inpaint_redoes_it(studio):
    studio.generate(params())
    mask = np.zeros((64, 64), bool)
    mask[0:32, 0:32] = True
    v2 = studio.inpaint(mask, "misty forest")
    v3 = studio.reweight({"forest": 2.0}, "prob")
    assert (v3.kind, v3.parent_id, v3.inpaint_prompt, v3.mask_hash) == ("reweight", v2.id, "misty forest", v2.mask_hash)
    assert v3.weights == {"forest": 2.0}
    assert not np.array_equal(pixels(v3), pixels(v2))


def test_import_png_and_resume(studio, engine, tmp_path):
    v1 = studio.generate(params(weights={"moon": 1.5}))
    other = Studio(engine, studio.log, tmp_path / "other", participant_id="p2", session_id="s2")
    imported = other.import_png(Path(v1.image_path).read_bytes())
    assert imported.kind == "restore" and imported.id != v1.id and imported.parent_id is None
    assert (imported.prompt, imported.seed, imported.weights) == (v1.prompt, v1.seed, v1.weights)
    assert imported.participant_id == "p2" and Path(imported.image_path).parent == (tmp_path / "other").resolve()
    assert np.array_equal(pixels(imported), pixels(v1))
    with pytest.raises(AttuneError, match="has no attention maps"):
        other.maps(imported)
    again = other.reweight({"moon": 1.5}, "score")  # same parameters: the same image as v1
    assert np.array_equal(pixels(again), pixels(v1))

    resumed = Studio(engine, studio.log, tmp_path / "other", participant_id="p2", session_id="s2")
    assert resumed.resume() == 2
    assert [v.id for v in resumed.history] == [imported.id, again.id]
    assert resumed.current.id == again.id


def test_failures_leave_neither_file_nor_row(studio, monkeypatch):
    def broken_row(version):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(studio.log, "add_version", broken_row)
    with pytest.raises(sqlite3.OperationalError):
        studio.generate(params())
    assert files(studio.out_dir) == [] and len(studio.history) == 0
    monkeypatch.undo()

    def broken_engine(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(studio.engine, "generate", broken_engine)
    with pytest.raises(RuntimeError):
        studio.generate(params())
    assert files(studio.out_dir) == [] and studio.log.counts()["versions"] == 0


def test_bad_inputs(studio, tmp_path):
    with pytest.raises(AttuneError, match="There is no image yet: generate one first"):
        studio.reweight({"moon": 2.0}, "score")
    studio.generate(params())
    with pytest.raises(AttuneError, match=r"The weight of 'moon' must be between 0 and 3, got 5"):
        studio.reweight({"moon": 5}, "score")
    with pytest.raises(AttuneError, match="The weight of 'moon' must be a finite number"):
        studio.reweight({"moon": float("nan")}, "score")
    with pytest.raises(AttuneError, match="'zebra' is not in the prompt; its words are: a, wolf, sitting"):
        studio.reweight({"zebra": 1.2}, "score")
    with pytest.raises(AttuneError, match="Unknown weight mode 'loud'"):
        studio.reweight({"moon": 1.2}, "loud")
    with pytest.raises(AttuneError, match="The mask is empty"):
        studio.inpaint(np.zeros((64, 64), bool), "forest")
    with pytest.raises(AttuneError, match="The mask is 32x32 but the image is 64x64"):
        studio.inpaint(np.ones((32, 32), bool), "forest")
    with pytest.raises(AttuneError, match="No such mask file"):
        studio.inpaint(tmp_path / "nope.png", "forest")
    with pytest.raises(AttuneError, match="No version with id 'nope'"):
        studio.restore("nope")
    (tmp_path / "x.png").write_text("not a png")
    with pytest.raises(AttuneError, match="is not a readable image"):
        studio.import_png(tmp_path / "x.png")
    assert len(studio.history) == 1 and studio.log.counts()["versions"] == 1


class FakeEngine:
    """Stands in for Attune in the concurrency test: real images and maps, no model (the test is about writes).
    It implements the whole engine interface (engine.protocols.Engine; tests/test_remote.py checks that)."""

    components = SimpleNamespace(model_id="fake", weights_hash="fake-hash", vae_scale_factor=8, unet_in_channels=4,
                                 known_words=None, sample_size=8)
    model_id = components.model_id
    weights_hash = components.weights_hash
    backend_name = "fake"
    device = "cpu"
    layouts = ("free",)  # it re-runs the whole image: no layout-keeping edits
    model_defaults = BUILTIN_DEFAULTS
    queue_depth = 0
    busy = False

    def tokenize(self, prompt, syntax="a1111"):
        raise AttuneError("The fake engine has no tokenizer.")  # the writes under test need none

    def generate(self, params, progress=None):
        rng = np.random.default_rng(params.seed)
        image = Image.fromarray(rng.integers(0, 255, (params.height, params.width, 3), dtype=np.uint8))
        maps = AttentionMaps((params.height // 8, params.width // 8), params.steps)
        maps.add(0, {"layer": torch.rand(1, (params.height // 8) * (params.width // 8), 10)})
        return Result(image, maps, None, "fake", "cpu", None, {"total": 0.0}, params)

    def reweight(self, parent, weights, weight_mode="score", layout="blend", progress=None):
        if layout not in self.layouts:
            raise AttuneError(f"Layout '{layout}' does not run on the fake engine.")
        base = getattr(parent, "params", parent)  # a RunSpec or plain GenerateParams
        result = self.generate(base.replace(weights=weights, weight_mode=weight_mode), progress)
        result.info["layout"] = layout
        return result

    def inpaint(self, params, progress=None):
        return self.generate(params.base, progress)

    def close(self):
        pass


def test_eight_threads_fifty_versions(tmp_path):
    log = StudyLog(tmp_path / "study.db")

    def session(n):
        studio = Studio(FakeEngine(), log, tmp_path / "out", participant_id=f"p{n}", session_id=f"s{n}")
        for i in range(50):
            studio.generate(params(seed=n * 1000 + i, width=16, height=16))

    assert run_in_threads(session, 8) == []
    frame = log.versions_df()
    assert len(frame) == 400 and frame["id"].is_unique
    assert sorted(frame.groupby("session_id")["number"].max()) == [50] * 8
    assert all(Path(p).is_file() for p in frame["image_path"]) and all(Path(p).is_file() for p in frame["maps_path"])
    assert len([p for p in files(tmp_path / "out") if p.endswith(".png")]) == 400
    assert not [p for p in files(tmp_path / "out") if "tmp" in p]
