"""Replay: a session's versions regenerate bit-identically from their log rows; what cannot be replayed says why."""
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.cli import EXIT_NOT_IDENTICAL, main
from engine.study.log import StudyLog
from engine.pipeline.attune import Attune
from engine.pipeline.params import GenerateParams
from engine.study.replay import replay_log
from engine.study.studio import Studio

PROMPT = "a painting of a wolf sitting in front of the full moon , night sky"


def _mask(width=64, height=48, box=(20, 10, 50, 30)):
    mask = np.zeros((height, width), bool)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = True
    return mask


def _session(engine, folder: Path) -> tuple[Studio, dict]:
    """generate, reweight, inpaint (auto crop on and off), restore (an imported PNG), inpaint of the restore, a
    reweight of that inpaint, and an outside image."""
    log = StudyLog(folder / "study.db")
    studio = Studio(engine, log, folder / "out", participant_id="p1", study_id="s1")
    made = {}
    made["generate"] = studio.generate(GenerateParams(prompt=PROMPT, seed=7, steps=3, width=64, height=48))
    made["reweight"] = studio.reweight({"moon": 1.6, "wolf": 0.5}, weight_mode="prob")
    made["inpaint"] = studio.inpaint(_mask(), "misty forest", parent=made["generate"].id)
    made["inpaint_small"] = studio.inpaint(_mask(box=(4, 4, 14, 12)), "moon", parent=made["generate"].id,
                                           auto_crop=False, mask_blur=2)
    # inpaint boxes as typed: an instruction, an erase by prompt, and an empty box (a fill: no model runs)
    made["instruction"] = studio.inpaint(_mask(), "Replace the sky with misty forest.", parent=made["generate"].id)
    made["remove"] = studio.inpaint(_mask(), "remove the moon", parent=made["generate"].id)
    made["empty_box"] = studio.inpaint(_mask(), "", parent=made["generate"].id)
    made["restore"] = studio.import_png(made["generate"].image_path)
    made["inpaint_of_restore"] = studio.inpaint(_mask(box=(0, 30, 64, 48)), "snow", parent=made["restore"].id,
                                                only_masked=True, padding=4)
    made["reweight_of_inpaint"] = studio.reweight({"snow": 2.0}, parent=made["inpaint_of_restore"].id)
    made["outside"] = studio.add_image(Image.new("RGB", (64, 48), (10, 20, 30)))
    return studio, made


@pytest.fixture(scope="module")
def session(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("replay")
    engine = Attune(tiny_model_dir, backend="torch")
    studio, made = _session(engine, folder)
    engine.close()
    return studio, made, folder


def test_a_session_replays_bit_identical(session):
    studio, made, folder = session
    assert made["inpaint_small"].auto_crop is False and made["inpaint"].auto_crop is True
    assert (made["instruction"].inpaint_typed, made["instruction"].inpaint_prompt) == (
        "Replace the sky with misty forest.", "misty forest")  # a small mask: no time of day added
    assert made["remove"].inpaint_prompt == "a painting of a wolf sitting , night sky"  # "in front of" went too
    assert (made["empty_box"].inpaint_typed, made["empty_box"].inpaint_prompt, made["empty_box"].unet) == ("", "", "fill")
    report = replay_log(StudyLog.open_existing(folder / "study.db"))  # loads its own engine from the rows
    by_id = {entry.id: entry for entry in report.results}
    assert len(by_id) == len(made)
    for name, version in made.items():
        entry = by_id[version.id]
        if name == "outside":
            assert entry.status == "not replayed" and entry.max_abs_diff is None
            assert "outside image" in entry.reason
        else:
            ran = "numpy" if name == "empty_box" else "torch"  # the empty box's fill runs no model
            assert (entry.status, entry.max_abs_diff, entry.backend) == ("identical", 0, ran), (name, entry)
    assert (report.versions, report.identical) == (len(made) - 1, len(made) - 1)


def test_cli_replay_json(session, capsys):
    studio, made, folder = session
    db = folder / "study.db"
    before = db.read_bytes()
    code = main(["replay", "--db", str(db), "--version", made["reweight_of_inpaint"].id, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (out["versions"], out["identical"]) == (1, 1)
    (entry,) = out["results"]
    assert (entry["id"], entry["kind"], entry["max_abs_diff"]) == (made["reweight_of_inpaint"].id, "reweight", 0)
    assert db.read_bytes() == before  # replay only reads the log


def test_replay_says_why_a_version_cannot_be_replayed(session, tmp_path, capsys):
    studio, made, folder = session
    # A copy of the study where the restore's image is gone and one row names a model nobody has.
    db = tmp_path / "study.db"
    with sqlite3.connect(folder / "study.db") as source, sqlite3.connect(db) as copy:
        source.backup(copy)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE versions SET image_path = ? WHERE id = ?", (str(tmp_path / "gone.png"), made["restore"].id))
        conn.execute("UPDATE versions SET model_hash = 'feedfeedfeedfeed' WHERE id = ?", (made["reweight"].id,))
    code = main(["replay", "--db", str(db), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == EXIT_NOT_IDENTICAL
    reasons = {entry["id"]: entry["reason"] for entry in out["results"]}
    assert "its stored image is missing" in reasons[made["restore"].id]
    assert "source image (version" in reasons[made["inpaint_of_restore"].id]  # its parent's image is gone
    assert "unknown model hash feedfeedfeedfeed" in reasons[made["reweight"].id]
    assert reasons[made["generate"].id] is None and reasons[made["inpaint"].id] is None
    assert "source image (version" in reasons[made["reweight_of_inpaint"].id]  # it redoes that inpaint
    assert out["identical"] == len(made) - 5  # those four and the outside image
    # The table form says the same in one line per version.
    code = main(["replay", "--db", str(db), "--version", made["reweight"].id])
    text = capsys.readouterr().out
    assert code == EXIT_NOT_IDENTICAL and "not replayed" in text and "unknown model hash" in text


def test_a_malformed_row_is_not_replayed_and_the_others_are(session, tmp_path, capsys):
    """Rows edited by hand or damaged: broken JSON, a JSON field of the wrong type, a seed that is not a number or is
    out of range, a missing field. Each is "not replayed" with its reason; a version made from a malformed row says
    so; the rest replay bit-identically."""
    studio, made, folder = session
    db = tmp_path / "study.db"
    with sqlite3.connect(folder / "study.db") as source, sqlite3.connect(db) as copy:
        source.backup(copy)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE versions SET weights = '{\"moon\": 1.6,' WHERE id = ?", (made["reweight"].id,))
        conn.execute("UPDATE versions SET library_versions = '[1, 2]' WHERE id = ?", (made["restore"].id,))
        for copy_id, change in (("seed-text", "seed = 'seven'"), ("seed-negative", "seed = -5"),
                                ("no-steps", "steps = NULL"), ("no-prompt", "prompt = NULL")):
            conn.execute("CREATE TEMP TABLE row AS SELECT * FROM versions WHERE id = ?", (made["generate"].id,))
            conn.execute(f"UPDATE row SET id = '{copy_id}', {change}")
            conn.execute("INSERT INTO versions SELECT * FROM row")
            conn.execute("DROP TABLE row")
    code = main(["replay", "--db", str(db), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == EXIT_NOT_IDENTICAL
    entries = {entry["id"]: entry for entry in out["results"]}
    reasons = {key: entry["reason"] for key, entry in entries.items()}
    assert reasons[made["reweight"].id] == "its row is malformed: its weights field is not valid JSON"
    assert reasons[made["restore"].id] == "its row is malformed: its library_versions field is not a JSON object"
    assert reasons["seed-text"] == "its row is malformed: its seed 'seven' is not a whole number"
    assert reasons["seed-negative"].startswith("its parameters are not valid (") and "seed" in reasons["seed-negative"]
    assert reasons["no-steps"] == "its row has no steps" and reasons["no-prompt"] == "its row has no prompt"
    for child in ("inpaint_of_restore", "reweight_of_inpaint"):  # both redo an inpaint of the malformed restore
        assert f"the row of version {made['restore'].id}, which it was made from, is malformed" in reasons[made[child].id]
    fine = ("generate", "inpaint", "inpaint_small", "instruction", "remove", "empty_box")
    for name in fine:
        assert (entries[made[name].id]["status"], entries[made[name].id]["max_abs_diff"]) == ("identical", 0), name
    assert all(entry["status"] == "not replayed" for key, entry in entries.items()
               if key not in {made[name].id for name in fine})
    assert (len(entries), out["identical"]) == (len(made) + 4, len(fine))
    # The table form: one line per version, the malformed ones too.
    assert main(["replay", "--db", str(db)]) == EXIT_NOT_IDENTICAL
    lines = [line for line in capsys.readouterr().out.splitlines() if "not replayed" in line]
    assert len(lines) == len(made) + 4 - len(fine) and any("weights field is not valid JSON" in line for line in lines)


def test_replay_of_an_unknown_version_or_a_foreign_file_is_one_line(session, tmp_path, capsys):
    studio, made, folder = session
    assert main(["replay", "--db", str(folder / "study.db"), "--version", "nope"]) == 1
    assert capsys.readouterr().err.strip() == f"error: No version with id 'nope' in the log {folder / 'study.db'}."
    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE things (x)")
    assert main(["replay", "--db", str(foreign)]) == 1
    assert "is not an Attune study log" in capsys.readouterr().err


def test_researcher_page_replays_a_study(tiny_model_dir, tmp_path, monkeypatch):
    from tests.app_support import button, generate_example, open_page

    monkeypatch.setenv("ATTUNE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("ATTUNE_BACKEND", "torch")
    monkeypatch.setenv("ATTUNE_DEFAULT_STEPS", "2")
    monkeypatch.setenv("ATTUNE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("ATTUNE_CONDITIONS", raising=False)
    monkeypatch.setenv("ATTUNE_RESEARCHER_PASSWORD", "s3cret")
    generate_example(open_page("Home.py", study="s9", pid="p9"))
    at = open_page("pages/5_Researcher.py")
    at.text_input(key="researcher_password").input("s3cret")
    button(at, "Open").click().run()
    button(at, "Replay all versions").click().run()
    assert not at.exception and not at.error
    assert [m.value for m in at.metric if m.label == "Bit-identical"] == ["1 / 1"]
    frame = at.dataframe[-1].value
    assert list(frame["status"]) == ["identical"] and list(frame["max_abs_diff"]) == [0]


def test_an_onnx_session_replays_bit_identical(tiny_model_dir, tiny_export, tmp_path):
    pytest.importorskip("onnxruntime")
    engine = Attune(tiny_model_dir, backend="onnx")
    studio = Studio(engine, StudyLog(tmp_path / "study.db"), tmp_path / "out")
    first = studio.generate(GenerateParams(prompt=PROMPT, seed=5, steps=2, width=64, height=48))
    studio.reweight({"moon": 2.0})
    inpainted = studio.inpaint(_mask(), "misty forest", parent=first.id)
    studio.reweight({"forest": 0.5}, parent=inpainted.id)
    engine.close()
    report = replay_log(StudyLog.open_existing(tmp_path / "study.db"))
    assert [(e.kind, e.backend, e.max_abs_diff) for e in report.results] == [
        ("generate", "onnx", 0), ("reweight", "onnx", 0), ("inpaint", "onnx", 0), ("reweight", "onnx", 0)]


def test_an_onnx_version_records_its_graph_and_replay_names_another_graph(tiny_model_dir, tiny_export, tmp_path):
    """A version made on ONNX records its UNet graph's identity (through the log and the PNG's metadata); when a
    replay differs and the graph it ran on is another one (a re-shipped graph), the replay says so."""
    pytest.importorskip("onnxruntime")
    from engine.study.pngmeta import read_version

    engine = Attune(tiny_model_dir, backend="onnx")
    try:
        studio = Studio(engine, StudyLog(tmp_path / "study.db"), tmp_path / "out")
        kept = studio.generate(GenerateParams(prompt=PROMPT, seed=5, steps=2, width=64, height=48))
        other = studio.generate(GenerateParams(prompt=PROMPT, seed=6, steps=2, width=64, height=48))
        graph = engine.runner.graph_sha256
        assert len(graph) == 16 and kept.unet_graph == other.unet_graph == graph
        log = StudyLog.open_existing(tmp_path / "study.db")
        assert log.get_version(kept.id).unet_graph == graph and read_version(kept.image_path).unet_graph == graph
        for version in (kept, other):  # both stored images altered: both replays differ
            pixels = np.asarray(Image.open(version.image_path).convert("RGB")).copy()
            pixels[0, 0] ^= 40
            altered = tmp_path / f"{version.id}.png"
            Image.fromarray(pixels).save(altered)
            with sqlite3.connect(tmp_path / "study.db") as conn:
                conn.execute("UPDATE versions SET image_path = ? WHERE id = ?", (str(altered), version.id))
        with sqlite3.connect(tmp_path / "study.db") as conn:  # `other` was made with an earlier graph
            conn.execute("UPDATE versions SET unet_graph = '0123456789abcdef' WHERE id = ?", (other.id,))
        report = replay_log(StudyLog.open_existing(tmp_path / "study.db"), engines=[engine])
    finally:
        engine.close()
    entries = {entry.id: entry for entry in report.results}
    assert entries[kept.id].status == entries[other.id].status == "different"
    assert entries[kept.id].reason is None  # the same graph: no graph to blame
    assert entries[other.id].reason == f"made with another graph (UNet graph 0123456789abcdef, now {graph})"


def test_a_pytorch_version_records_no_graph(session):
    studio, made, folder = session
    assert made["generate"].unet_graph == "" and made["inpaint"].unet_graph == ""
