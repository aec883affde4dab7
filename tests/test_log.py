import zipfile

import pandas as pd
import pytest

from engine.errors import AttuneError
from engine.study.log import StudyLog, atomic_write_bytes
from engine.study.versions import Version
from tests.thread_support import run_in_threads


def test_versions_and_events_round_trip(tmp_path):
    log = StudyLog(tmp_path / "study.db")
    v = Version(prompt="a wolf", seed=7, weights={"wolf": 1.5}, participant_id="p1", session_id="s1",
                study_id="st", condition="A", only_masked=False, timings={"total": 0.5})
    log.add_version(v)
    log.add_version(Version(prompt="other", participant_id="p2", session_id="s2"))
    event_id = log.add_event("refine", "slider", {"word": "moon", "value": 1.5}, participant_id="p1", session_id="s1")
    assert event_id == 1
    assert log.get_version(v.id) == v
    assert log.versions(participant_id="p1") == [v]
    frame = log.versions_df(session_id="s2")
    assert list(frame["prompt"]) == ["other"]
    events = log.events_df()
    assert list(events.columns) == ["id", "ts", "participant_id", "session_id", "study_id", "condition", "page",
                                    "action", "payload"]
    assert events.loc[0, "payload"] == '{"value": 1.5, "word": "moon"}'
    assert log.counts() == {"versions": 2, "events": 1}
    with pytest.raises(AttuneError, match="No version with id 'missing'"):
        log.get_version("missing")


def test_versions_from_frames_keep_types(tmp_path):
    log = StudyLog(tmp_path / "study.db")
    plain = Version(session_id="s", number=1)
    inpaint = Version(session_id="s", number=2, kind="inpaint", mask_blur=4, padding=16, only_masked=True,
                      seed=2**62 + 1, inpaint_prompt="forest")
    log.add_version(plain)
    log.add_version(inpaint)
    assert log.versions(session_id="s") == [plain, inpaint]  # NULLs come back as None, ints stay exact


def test_wal_mode_and_duplicate_id(tmp_path):
    import sqlite3

    log = StudyLog(tmp_path / "study.db")
    with sqlite3.connect(tmp_path / "study.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    v = Version()
    log.add_version(v)
    with pytest.raises(sqlite3.IntegrityError):
        log.add_version(v)
    assert log.counts()["versions"] == 1


def test_export_csv_parquet_zip(tmp_path):
    log = StudyLog(tmp_path / "study.db")
    for i in range(3):
        log.add_version(Version(prompt=f"p{i}", number=i + 1, weights={"moon": 1.0 + i}, session_id="s"))
    log.add_event("generate", "click", participant_id="p", session_id="s")
    [csv_path] = log.export(tmp_path / "versions.csv", "csv", table="versions")
    assert list(pd.read_csv(csv_path)["prompt"]) == ["p0", "p1", "p2"]
    [pq_path] = log.export(tmp_path / "events.parquet", "parquet", table="events")
    assert list(pd.read_parquet(pq_path)["action"]) == ["click"]
    [both] = log.export(tmp_path / "all.zip", "parquet")
    with zipfile.ZipFile(both) as archive:
        assert sorted(archive.namelist()) == ["events.parquet", "versions.parquet"]
        with archive.open("versions.parquet") as handle:
            assert len(pd.read_parquet(handle)) == 3
    versions_csv, events_csv = log.export(tmp_path / "study.csv", "csv")
    assert (versions_csv.name, events_csv.name) == ("study.csv", "study-events.csv")
    assert len(pd.read_csv(versions_csv)) == 3 and list(pd.read_csv(events_csv)["page"]) == ["generate"]


def test_bad_inputs(tmp_path):
    log = StudyLog(tmp_path / "study.db")
    with pytest.raises(AttuneError, match="Unknown export format 'xlsx'"):
        log.export(tmp_path / "x.xlsx", "xlsx")
    with pytest.raises(AttuneError, match="Unknown table 'people'"):
        log.export(tmp_path / "x.csv", "csv", table="people")
    with pytest.raises(AttuneError, match="is a folder"):
        StudyLog(tmp_path)
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(AttuneError, match="is not a usable SQLite log"):
        StudyLog(tmp_path / "junk.db")


def test_atomic_write_leaves_no_temp_on_failure(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "a.png", object())  # not bytes: the write fails
    assert list(tmp_path.iterdir()) == []
    atomic_write_bytes(tmp_path / "sub" / "b.bin", b"xyz")
    assert (tmp_path / "sub" / "b.bin").read_bytes() == b"xyz"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["b.bin"]


def test_eight_threads_fifty_versions_each(tmp_path):
    log = StudyLog(tmp_path / "study.db")

    def worker(thread):
        for i in range(50):
            v = Version(prompt=f"t{thread} v{i}", participant_id=f"p{thread}", session_id=f"s{thread}", number=i + 1)
            v.image_path = str(atomic_write_bytes(tmp_path / "img" / f"{v.id}.png", f"{thread}-{i}".encode()))
            log.add_version(v)
            log.add_event("generate", "done", {"i": i}, participant_id=v.participant_id, session_id=v.session_id)

    assert run_in_threads(worker, 8) == []
    frame = log.versions_df()
    assert len(frame) == 400 and frame["id"].is_unique
    assert len(log.events_df()) == 400
    assert frame.groupby("participant_id").size().to_dict() == {f"p{t}": 50 for t in range(8)}
    from pathlib import Path

    assert all(Path(p).is_file() for p in frame["image_path"])
    assert len(list((tmp_path / "img").iterdir())) == 400
