import io
import os
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
                study_id="st", condition="A", only_masked=False, timings={"total": 0.5}, unet_graph="0123456789abcdef")
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


def _files(folder) -> dict:
    """Every file under folder with its bytes (a symlink: its target's name): what a refusal must leave as it is."""
    from pathlib import Path

    found = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_symlink():
            found[str(path)] = ("link", str(path.readlink()))
        elif path.name.endswith("-shm"):  # SQLite's WAL index: any reader of the log updates it
            found[str(path)] = "wal index"
        elif path.is_file():
            found[str(path)] = path.read_bytes()
    return found


def test_export_never_writes_a_file_of_the_database_it_reads(tmp_path, capsys):
    """By name, as the `-events` file of a two-table export, as SQLite's WAL, WAL index or journal, through a symlink
    (even a dangling one: the WAL comes and goes), a symlinked folder, or a hard link: refused before anything is
    written, in one line."""
    import os
    import sqlite3

    from engine.cli import main

    db = tmp_path / "study-events.csv"  # the log's own name is what `--out study.csv` puts its events table in
    log = StudyLog(db)
    log.add_version(Version(prompt="a wolf", session_id="s"))
    writer = sqlite3.connect(db)  # an open writer: the WAL holds a row not yet in the database file
    writer.execute("PRAGMA wal_autocheckpoint=0")
    with writer:
        writer.execute("INSERT INTO events (page, action) VALUES ('p', 'not yet checkpointed')")
    assert (tmp_path / "study-events.csv-wal").stat().st_size > 0
    (tmp_path / "links").mkdir()
    os.symlink(db, tmp_path / "links" / "to-db.csv")
    os.symlink(f"{db}-journal", tmp_path / "links" / "to-journal.csv")  # dangling: no journal in WAL mode
    os.symlink(tmp_path, tmp_path / "links" / "folder")
    os.link(db, tmp_path / "links" / "hard.csv")
    cases = [
        (tmp_path / "study.csv", "all", "the log itself"),  # its -events file is the log
        (db, "versions", "the log itself"),
        (f"{db}-wal", "events", "study-events.csv-wal"),
        (f"{db}-shm", "versions", "study-events.csv-shm"),
        (f"{db}-journal", "versions", "study-events.csv-journal"),
        (tmp_path / "links" / "to-db.csv", "versions", "the log itself"),
        (tmp_path / "links" / "to-journal.csv", "events", "study-events.csv-journal"),
        (tmp_path / "links" / "folder" / "study-events.csv-wal", "versions", "study-events.csv-wal"),
        (tmp_path / "links" / "hard.csv", "versions", "the log itself"),
    ]
    before = _files(tmp_path)
    for out, table, which in cases:
        with pytest.raises(AttuneError, match=f"which is .*{which}; give another file name"):
            log.export(out, "csv", table=table)
        assert _files(tmp_path) == before, out
        code = main(["log", "--db", str(db), "--out", str(out), "--table", table, "--format", "csv"])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and which in err and "Traceback" not in err, (out, err)
        assert _files(tmp_path) == before, out
    writer.close()
    assert [row[0] for row in sqlite3.connect(db).execute("SELECT action FROM events")] == ["not yet checkpointed"]


def test_export_of_two_tables_writes_both_or_neither(tmp_path, monkeypatch):
    """A failure while the second file is written (a full disk) leaves the first as it was: the files are all
    written beside their targets before any is renamed into place."""
    import engine.study.log

    log = StudyLog(tmp_path / "study.db")
    log.add_version(Version(prompt="a wolf"))
    (tmp_path / "out.csv").write_text("the last export")
    real_open = os.open

    def disk_full_for_events(path, *args, **kwargs):
        if "out-events.csv" in str(path):
            raise OSError(28, "No space left on device")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(engine.study.log.os, "open", disk_full_for_events)
    with pytest.raises(OSError, match="No space left"):
        log.export(tmp_path / "out.csv", "csv")
    monkeypatch.undo()
    assert (tmp_path / "out.csv").read_text() == "the last export"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("study.db")) == ["out.csv"]


def test_a_database_that_is_not_attunes_is_left_untouched(tmp_path):
    import sqlite3

    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE things (x)")
        conn.execute("INSERT INTO things VALUES (1)")
    lookalike = tmp_path / "migrations.sqlite"  # a versions and an events table, but not Attune's
    with sqlite3.connect(lookalike) as conn:
        conn.execute("CREATE TABLE versions (version_num TEXT)")
        conn.execute("CREATE TABLE events (name TEXT, at TEXT)")
    text = tmp_path / "notes.db"
    text.write_text("not a database\n" * 100)
    before = _files(tmp_path)
    for path, message in ((foreign, "no versions and events tables"), (lookalike, "lack the columns"),
                          (text, "is not a usable SQLite log")):
        with pytest.raises(AttuneError, match=message) as raised:
            StudyLog(path)
        assert "\n" not in str(raised.value)
        with pytest.raises(AttuneError, match=message):
            StudyLog.open_existing(path)
        assert _files(tmp_path) == before, path  # no tables, no WAL mode, no new file
    with sqlite3.connect(foreign) as conn:
        assert [row[0] for row in conn.execute("SELECT name FROM sqlite_master")] == ["things"]


def test_new_empty_and_older_attune_logs_open(tmp_path):
    import sqlite3

    StudyLog(tmp_path / "new" / "study.db").add_version(Version(prompt="new"))
    (tmp_path / "touched.db").write_bytes(b"")  # `touch study.db`: SQLite's empty database
    StudyLog(tmp_path / "touched.db").add_version(Version(prompt="touched"))
    old = tmp_path / "old.db"  # the first Attune log's tables had fewer versions columns
    with sqlite3.connect(old) as conn:
        conn.execute("CREATE TABLE versions (id TEXT, number INTEGER, kind TEXT, prompt TEXT, seed INTEGER, "
                     "weights TEXT, logged_at TEXT, PRIMARY KEY (id))")
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT, participant_id TEXT,"
                     " session_id TEXT, study_id TEXT, condition TEXT, page TEXT, action TEXT, payload TEXT)")
        conn.execute("INSERT INTO versions VALUES ('v1', 1, 'generate', 'old', 7, '{}', '2024-01-01')")
    log = StudyLog(old)
    log.add_version(Version(prompt="newer", number=2))
    assert [v.prompt for v in log.versions()] == ["old", "newer"]
    assert [v.prompt for v in StudyLog.open_existing(tmp_path / "touched.db").versions()] == ["touched"]


def test_a_malformed_row_is_named_in_one_line(tmp_path):
    import sqlite3

    log = StudyLog(tmp_path / "study.db")
    good, bad = Version(prompt="good"), Version(prompt="bad")
    log.add_version(good)
    log.add_version(bad)
    with sqlite3.connect(tmp_path / "study.db") as conn:
        conn.execute("UPDATE versions SET weights = '{broken' WHERE id = ?", (bad.id,))
    with pytest.raises(AttuneError, match=f"The version row {bad.id} .* is malformed: its weights field is not valid"):
        log.versions()
    assert log.get_version(good.id) == good


FORMULAS = ["=HYPERLINK(\"http://e.example\",\"x\")", "+1+2", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]


def test_csv_exports_neutralise_formula_cells_and_parquet_keeps_them(tmp_path):
    """OWASP's CSV injection rule on every text cell of the CLI's CSV export (also inside its zip); numbers stay
    numbers; Parquet keeps the values as they are."""
    import csv
    import io

    log = StudyLog(tmp_path / "study.db")
    for number, text in enumerate(FORMULAS, start=1):
        log.add_version(Version(prompt=text, number=number, participant_id=text, guidance=1.5))
        log.add_event("generate", text, participant_id=text)
    log.add_version(Version(prompt="-1.5", number=9, edit="a = b"))  # text that looks like a number: text
    versions_csv, events_csv = log.export(tmp_path / "study.csv", "csv")
    rows = list(csv.DictReader(io.StringIO(versions_csv.read_bytes().decode())))  # as written: a CR stays a CR
    assert [row["prompt"] for row in rows] == ["'" + text for text in FORMULAS] + ["'-1.5"]
    assert [row["participant_id"] for row in rows][:6] == ["'" + text for text in FORMULAS]
    assert rows[-1]["edit"] == "a = b" and rows[0]["guidance"] == "1.5"
    events = list(csv.DictReader(io.StringIO(events_csv.read_bytes().decode())))
    assert [row["action"] for row in events] == ["'" + text for text in FORMULAS]
    [archive] = log.export(tmp_path / "study.zip", "csv")
    with zipfile.ZipFile(archive) as opened:
        assert "'=HYPERLINK" in opened.read("versions.csv").decode()
    [parquet] = log.export(tmp_path / "study.parquet", "parquet", table="versions")
    assert list(pd.read_parquet(parquet)["prompt"]) == FORMULAS + ["-1.5"]


def test_numbers_stay_numbers_and_only_text_cells_change():
    from engine.study.log import csv_bytes

    frame = pd.DataFrame({"delta": [-1.5, 2.0], "n": [-3, 4], "note": ["-1.5", None], "ok": ["fine", "a-b"]})
    assert csv_bytes(frame).decode().splitlines() == ["delta,n,note,ok", "-1.5,-3,'-1.5,fine", "2.0,4,,a-b"]


def test_app_downloads_use_the_same_rule(tmp_path):
    """The Researcher page's table downloads and the dashboard's tables go through ui/downloads.table_bytes."""
    import csv

    from ui import downloads

    frame = pd.DataFrame({"participant_id": FORMULAS, "stars": range(len(FORMULAS))})
    rows = list(csv.DictReader(io.StringIO(downloads.table_bytes(frame, "csv").decode())))
    assert [row["participant_id"] for row in rows] == ["'" + text for text in FORMULAS]
    assert [row["stars"] for row in rows] == [str(n) for n in range(len(FORMULAS))]
    assert list(pd.read_parquet(io.BytesIO(downloads.table_bytes(frame, "parquet")))["participant_id"]) == FORMULAS
