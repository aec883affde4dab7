"""StudyLog: the study's SQLite log (versions + events), safe with several app sessions and threads at once.

One short-lived connection per call (so no connection crosses threads), WAL journal so readers never block the
writer, and a busy timeout so concurrent writers wait instead of failing. Exports: CSV or Parquet, one table to one
file, or both tables: in one zip (`versions.<ext>` and `events.<ext>`) or as two files side by side.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import sqlite3
import uuid
import zipfile
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import AttuneError
from engine.study.versions import Version, utc_now

if TYPE_CHECKING:  # pandas (~0.3 s to import) loads with the first read or export, not with the app's first page
    import pandas as pd

FORMATS = ("csv", "parquet")
TABLES = ("versions", "events", "all")
JSON_FIELDS = ("weights", "library_versions", "timings", "unknown_words")
EVENT_COLUMNS = ("id", "ts", "participant_id", "session_id", "study_id", "condition", "page", "action", "payload")

def _version_columns() -> list[tuple[str, str]]:
    """SQL column per Version field (annotations are strings here: "int", "str | None", "dict[str, float]"...)."""
    sql_types = {"int": "INTEGER", "float": "REAL", "bool": "INTEGER"}
    return [(f.name, sql_types.get(str(f.type).split("|")[0].strip(), "TEXT")) for f in dataclasses.fields(Version)]


VERSION_COLUMNS = _version_columns()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its files are 0600, so a shared deployment's other users could not read the PNGs and exports.
    # O_CREAT | O_EXCL with 0666 gives the usual umask-filtered mode, like any other file the process writes.
    while True:
        tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


class StudyLog:
    def __init__(self, db_path: str | Path):
        self.db_path = Path(db_path)
        if self.db_path.exists() and self.db_path.is_dir():
            raise AttuneError(f"The log path {self.db_path} is a folder; give a file name such as study.db.")
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                columns = ", ".join(f'"{name}" {sql}' for name, sql in VERSION_COLUMNS)
                conn.execute(f"CREATE TABLE IF NOT EXISTS versions ({columns}, logged_at TEXT, PRIMARY KEY (id))")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT, participant_id TEXT,"
                    " session_id TEXT, study_id TEXT, condition TEXT, page TEXT, action TEXT, payload TEXT)"
                )
                conn.execute("CREATE INDEX IF NOT EXISTS versions_session ON versions (participant_id, session_id)")
                conn.execute("CREATE INDEX IF NOT EXISTS events_session ON events (participant_id, session_id)")
                # Older logs: add columns that newer Version records have.
                have = {row[1] for row in conn.execute("PRAGMA table_info(versions)")}
                for name, sql in VERSION_COLUMNS:
                    if name not in have:
                        conn.execute(f'ALTER TABLE versions ADD COLUMN "{name}" {sql}')
        except sqlite3.DatabaseError as error:
            raise AttuneError(f"{self.db_path} is not a usable SQLite log ({error}).") from None

    @classmethod
    def open_existing(cls, db_path: str | Path) -> "StudyLog":
        """A log to read only (export, replay): the file is never created or changed, so a read-only study database
        works and a foreign SQLite file gets no tables. AttuneError unless it is an Attune log."""
        log = cls.__new__(cls)
        log.db_path = Path(db_path)
        log.read_only = True
        if not log.db_path.is_file():
            raise AttuneError(f"No log database at {log.db_path}.")
        try:
            with log._reading() as conn:
                tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as error:
            raise AttuneError(f"{log.db_path} is not a usable SQLite log ({error}).") from None
        if not {"versions", "events"} <= tables:
            raise AttuneError(f"{log.db_path} is not an Attune study log (it has no versions and events tables).")
        return log

    @contextmanager
    def _reading(self):
        """A connection for reads; read-only logs open with mode=ro (immutable when even the WAL index cannot be
        made, e.g. in a read-only folder)."""
        if not getattr(self, "read_only", False):
            with closing(sqlite3.connect(self.db_path, timeout=60)) as conn:
                yield conn
            return
        from urllib.parse import quote

        uri = "file:" + quote(str(self.db_path.resolve()))
        try:
            conn = sqlite3.connect(uri + "?mode=ro", uri=True, timeout=60)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            conn = sqlite3.connect(uri + "?immutable=1", uri=True, timeout=60)
        with closing(conn):
            yield conn

    @contextmanager
    def _connect(self):
        """A fresh connection for this call and thread; commits on success, rolls back on error."""
        conn = sqlite3.connect(self.db_path, timeout=60, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=60000")
            with conn:
                yield conn
        finally:
            conn.close()

    # ---- writes ----------------------------------------------------------------------------------------------

    def add_version(self, version: Version) -> None:
        row = version.to_dict()
        for key in JSON_FIELDS:
            row[key] = json.dumps(row[key], sort_keys=True)
        for key in ("only_masked", "auto_crop"):
            if row[key] is not None:
                row[key] = int(row[key])
        row["logged_at"] = utc_now()
        names = list(row)
        sql = f"INSERT INTO versions ({', '.join(chr(34) + n + chr(34) for n in names)}) VALUES ({', '.join('?' * len(names))})"
        with self._connect() as conn:
            conn.execute(sql, [row[n] for n in names])

    def remove_version(self, version_id: str) -> None:
        """Take back a row this process just added (the CLI's `restore` source when its inpaint then failed)."""
        with self._connect() as conn:
            conn.execute("DELETE FROM versions WHERE id = ?", (version_id,))

    def add_event(
        self,
        page: str,
        action: str,
        payload: dict | None = None,
        *,
        participant_id: str = "anonymous",
        session_id: str = "",
        study_id: str = "",
        condition: str = "",
        ts: str | None = None,
    ) -> int:
        try:
            payload_json = json.dumps(payload or {}, sort_keys=True, default=str)
        except (TypeError, ValueError) as error:
            raise AttuneError(f"The event payload cannot be stored as JSON ({error}).") from None
        with self._connect() as conn:
            cursor = conn.execute(
                "INSERT INTO events (ts, participant_id, session_id, study_id, condition, page, action, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ts or utc_now(), participant_id, session_id, study_id, condition, str(page), str(action), payload_json),
            )
            return int(cursor.lastrowid)

    # ---- reads -----------------------------------------------------------------------------------------------

    @staticmethod
    def _where(participant_id=None, session_id=None) -> tuple[str, list]:
        clauses, params = [], []
        if participant_id is not None:
            clauses.append("participant_id = ?")
            params.append(participant_id)
        if session_id is not None:
            clauses.append("session_id = ?")
            params.append(session_id)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def _read(self, table: str, order: str, participant_id=None, session_id=None) -> pd.DataFrame:
        import pandas as pd

        where, params = self._where(participant_id, session_id)
        with self._reading() as conn:
            return pd.read_sql(f"SELECT * FROM {table}{where} ORDER BY {order}", conn, params=params)

    def versions_df(self, participant_id=None, session_id=None) -> pd.DataFrame:
        return self._read("versions", "logged_at, number", participant_id, session_id)

    def events_df(self, participant_id=None, session_id=None) -> pd.DataFrame:
        return self._read("events", "id", participant_id, session_id)

    def versions(self, participant_id=None, session_id=None) -> list[Version]:
        # sqlite rows, not versions_df: every new app session resumes through here, and pandas costs ~0.3 s to import
        where, params = self._where(participant_id, session_id)
        with self._reading() as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute(f"SELECT * FROM versions{where} ORDER BY logged_at, number", params).fetchall()
        return [Version.from_dict(dict(row)) for row in rows]

    def get_version(self, version_id: str) -> Version:
        with self._reading() as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM versions WHERE id = ?", (version_id,)).fetchone()
        if row is None:
            raise AttuneError(f"No version with id '{version_id}' in the log {self.db_path}.")
        return Version.from_dict(dict(row))

    def counts(self) -> dict[str, int]:
        with self._reading() as conn:
            return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("versions", "events")}

    # ---- export ----------------------------------------------------------------------------------------------

    def export(self, path: str | Path, format: str = "csv", table: str = "all") -> list[Path]:
        """Write the log; returns the files written.

        table="versions" or "events": that table to `path`. table="all": both tables; a `.zip` path gets one zip
        holding versions.<format> and events.<format>, any other path gets two files, `path` (versions) and
        `<stem>-events<suffix>` beside it.
        """
        if format not in FORMATS:
            raise AttuneError(f"Unknown export format '{format}'; use csv or parquet.")
        if table not in TABLES:
            raise AttuneError(f"Unknown table '{table}'; use versions, events or all.")
        path = Path(path)
        if path.is_dir():
            raise AttuneError(f"The export path {path} is a folder; give a file name.")
        if path.resolve() == self.db_path.resolve():
            raise AttuneError(f"The export path {path} is the log itself; give another file name.")
        frames = {"versions": self.versions_df(), "events": self.events_df()}
        if table != "all":
            return [atomic_write_bytes(path, _frame_bytes(frames[table], format))]
        if path.suffix.lower() == ".zip":
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for name, frame in frames.items():
                    archive.writestr(f"{name}.{format}", _frame_bytes(frame, format))
            return [atomic_write_bytes(path, buffer.getvalue())]
        events_path = path.with_name(f"{path.stem}-events{path.suffix}")
        return [atomic_write_bytes(path, _frame_bytes(frames["versions"], format)),
                atomic_write_bytes(events_path, _frame_bytes(frames["events"], format))]


def _frame_bytes(frame: pd.DataFrame, format: str) -> bytes:
    if format == "csv":
        return frame.to_csv(index=False).encode("utf-8")
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()
