"""StudyLog: the study's SQLite log (versions + events), safe with several app sessions and threads at once.

One short-lived connection per call (so no connection crosses threads), WAL journal so readers never block the
writer, and a busy timeout so concurrent writers wait instead of failing. Exports: CSV or Parquet, one table to one
file, or both tables: in one zip (`versions.<ext>` and `events.<ext>`) or as two files side by side. An export never
writes over a file of the database it reads (the log, its WAL, WAL index or journal, by any name); a SQLite file that
is not an Attune log is refused as it is; CSV cells that a spreadsheet would run as formulas are neutralised.
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
JSON_FIELDS = ("weights", "library_versions", "timings", "unknown_words", "dropped_words")
EVENT_COLUMNS = ("id", "ts", "participant_id", "session_id", "study_id", "condition", "page", "action", "payload")
ATTUNE_VERSION_COLUMNS = {"id", "number", "kind", "prompt", "seed", "logged_at"}  # in every Attune log so far
DATABASE_FILE_SUFFIXES = ("", "-wal", "-shm", "-journal")  # SQLite's files for a database (WAL, its index, rollback)
INT_FIELDS = ("seed", "steps", "width", "height", "number", "mask_blur", "padding", "prompt_chunks")
JSON_TYPES = {"weights": dict, "library_versions": dict, "timings": dict, "unknown_words": list,
              "dropped_words": list}
CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # OWASP, CSV injection: what a spreadsheet reads as a formula

def _version_columns() -> list[tuple[str, str]]:
    """SQL column per Version field (annotations are strings here: "int", "str | None", "dict[str, float]"...)."""
    sql_types = {"int": "INTEGER", "float": "REAL", "bool": "INTEGER"}
    return [(f.name, sql_types.get(str(f.type).split("|")[0].strip(), "TEXT")) for f in dataclasses.fields(Version)]


VERSION_COLUMNS = _version_columns()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename: readers never see a half-written file."""
    return atomic_write_files([(path, data)])[0]


def atomic_write_files(contents: list[tuple[str | Path, bytes]]) -> list[Path]:
    """Write several files, all or none: each goes to a temporary file beside it (fsynced) first, and only when every
    one is written are they renamed into place."""
    staged: list[tuple[str, Path]] = []
    try:
        for path, data in contents:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp, fd = _new_temp_file(path)
            staged.append((tmp, path))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    return [path for _, path in staged]


def _new_temp_file(path: Path) -> tuple[str, int]:
    # Not mkstemp: its files are 0600, so a shared deployment's other users could not read the PNGs and exports.
    # O_CREAT | O_EXCL with 0666 gives the usual umask-filtered mode, like any other file the process writes.
    while True:
        tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue


class StudyLog:
    def __init__(self, db_path: str | Path):
        self.db_path = Path(db_path)
        if self.db_path.exists() and self.db_path.is_dir():
            raise AttuneError(f"The log path {self.db_path} is a folder; give a file name such as study.db.")
        if self.db_path.is_file() and self.db_path.stat().st_size > 0:
            # Checked read-only before the first write: someone else's database must not get our tables, or WAL mode.
            self.read_only = True
            try:
                with self._reading() as conn:
                    self._refuse_foreign(conn)
            except sqlite3.DatabaseError as error:
                raise AttuneError(f"{self.db_path} is not a usable SQLite log ({error}).") from None
            finally:
                self.read_only = False
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                # One transaction: another process opening the file meanwhile sees no tables or all of them.
                conn.execute("BEGIN IMMEDIATE")
                self._refuse_foreign(conn)
                columns = ", ".join(f'"{name}" {sql}' for name, sql in VERSION_COLUMNS)
                conn.execute(f"CREATE TABLE IF NOT EXISTS versions ({columns}, logged_at TEXT, PRIMARY KEY (id))")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts TEXT, participant_id TEXT,"
                    " session_id TEXT, study_id TEXT, condition TEXT, page TEXT, action TEXT, payload TEXT)"
                )
                # Older logs: add columns that newer Version records have (before the index that names some of them).
                have = {row[1] for row in conn.execute("PRAGMA table_info(versions)")}
                for name, sql in VERSION_COLUMNS:
                    if name not in have:
                        conn.execute(f'ALTER TABLE versions ADD COLUMN "{name}" {sql}')
                conn.execute("CREATE INDEX IF NOT EXISTS versions_session ON versions (participant_id, session_id)")
                conn.execute("CREATE INDEX IF NOT EXISTS events_session ON events (participant_id, session_id)")
        except sqlite3.DatabaseError as error:
            raise AttuneError(f"{self.db_path} is not a usable SQLite log ({error}).") from None

    def _refuse_foreign(self, conn, *, allow_empty: bool = True) -> None:
        """AttuneError unless the database is an Attune log (or, with allow_empty, has no schema yet).

        An Attune log is one with the tables `versions` and `events`, where versions has the columns every Attune
        log has had since the first (ATTUNE_VERSION_COLUMNS) and events has EVENT_COLUMNS. No application_id:
        the logs written before this check have none, and they must still open."""
        try:
            schema = conn.execute("SELECT type, name FROM sqlite_master").fetchall()
            tables = {name for kind, name in schema if kind == "table"}
            if not schema and allow_empty:
                return
            if not {"versions", "events"} <= tables:
                reason = "it has no versions and events tables"
            else:
                have = {row[1] for row in conn.execute("PRAGMA table_info(versions)")}
                have_events = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
                missing = sorted((ATTUNE_VERSION_COLUMNS - have) | (set(EVENT_COLUMNS) - have_events))
                if not missing:
                    return
                reason = f"its versions and events tables lack the columns {', '.join(missing)}"
        except sqlite3.DatabaseError as error:
            raise AttuneError(f"{self.db_path} is not a usable SQLite log ({error}).") from None
        raise AttuneError(f"{self.db_path} is not an Attune study log ({reason}); it was left as it is.")

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
                log._refuse_foreign(conn, allow_empty=False)
        except sqlite3.DatabaseError as error:
            raise AttuneError(f"{log.db_path} is not a usable SQLite log ({error}).") from None
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

    def version_rows(self, participant_id=None, session_id=None) -> list[dict]:
        """The versions rows as they are stored, oldest first (version_from_row makes each a Version)."""
        where, params = self._where(participant_id, session_id)
        with self._reading() as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute(f"SELECT * FROM versions{where} ORDER BY logged_at, number", params).fetchall()
        return [dict(row) for row in rows]

    def versions(self, participant_id=None, session_id=None) -> list[Version]:
        # sqlite rows, not versions_df: every new app session resumes through here, and pandas costs ~0.3 s to import
        return [self._version(row) for row in self.version_rows(participant_id, session_id)]

    def get_version(self, version_id: str) -> Version:
        with self._reading() as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM versions WHERE id = ?", (version_id,)).fetchone()
        if row is None:
            raise AttuneError(f"No version with id '{version_id}' in the log {self.db_path}.")
        return self._version(dict(row))

    def _version(self, row: dict) -> Version:
        try:
            return version_from_row(row)
        except AttuneError as error:
            raise AttuneError(f"The version row {row.get('id')} in the log {self.db_path} is malformed: {error}.") from None

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
        if table == "all" and path.suffix.lower() != ".zip":
            targets = {"versions": path, "events": path.with_name(f"{path.stem}-events{path.suffix}")}
        else:
            targets = {table: path}
        for target in targets.values():  # before anything is read or written
            self._refuse_own_file(target)
        frames = {"versions": self.versions_df(), "events": self.events_df()}
        if table != "all":
            return atomic_write_files([(path, _frame_bytes(frames[table], format))])
        if path.suffix.lower() == ".zip":
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for name, frame in frames.items():
                    archive.writestr(f"{name}.{format}", _frame_bytes(frame, format))
            return atomic_write_files([(path, buffer.getvalue())])
        return atomic_write_files([(target, _frame_bytes(frames[name], format)) for name, target in targets.items()])

    def _refuse_own_file(self, target: Path) -> None:
        """AttuneError when writing `target` would write over the log or one of SQLite's files beside it (its WAL,
        WAL index or rollback journal): by its name, through a symlink (even one whose target does not exist yet: the
        WAL comes and goes), or as a hard link of an existing one."""
        try:
            resolved_db = self.db_path.resolve()
            own = {Path(str(base) + suffix): suffix or "the log itself"
                   for base in (self.db_path.absolute(), resolved_db) for suffix in DATABASE_FILE_SUFFIXES}
            resolved_target = target.resolve()
        except (OSError, RuntimeError) as error:  # a symlink loop
            raise AttuneError(f"The export path {target} cannot be resolved ({error}); give another file name.") from None
        which = own.get(target.absolute()) or own.get(resolved_target)
        if which is None and target.exists():
            target_id = (target.stat().st_dev, target.stat().st_ino)
            for own_file, suffix in own.items():
                try:
                    if (own_file.stat().st_dev, own_file.stat().st_ino) == target_id:  # a hard link
                        which = suffix or "the log itself"
                        break
                except OSError:
                    continue
        if which is not None:
            what = which if which == "the log itself" else f"the log's SQLite file {self.db_path.name}{which}"
            raise AttuneError(f"The export would write {target}, which is {what}; give another file name.")


def version_from_row(row: dict) -> Version:
    """A Version from a versions row; AttuneError naming the field when the row is malformed (edited by hand, written
    by another tool or a damaged file)."""
    values = dict(row)
    for key, kind in JSON_TYPES.items():
        value = values.get(key)
        if isinstance(value, str) and value:
            try:
                value = values[key] = json.loads(value)
            except ValueError:
                raise AttuneError(f"its {key} field is not valid JSON") from None
        if value not in (None, "") and not isinstance(value, kind):
            raise AttuneError(f"its {key} field is not a JSON {'object' if kind is dict else 'list'}")
    for key in INT_FIELDS:
        value = values.get(key)
        if value is None:
            continue
        try:
            whole = int(value)
        except (TypeError, ValueError, OverflowError):
            whole = None
        if whole is None or isinstance(value, bool) or (isinstance(value, float) and value != whole):
            raise AttuneError(f"its {key} {value!r} is not a whole number")
    try:
        return Version.from_dict(values)
    except AttuneError:
        raise
    except (TypeError, ValueError, AttributeError, OverflowError) as error:
        raise AttuneError(f"its fields do not make a version ({type(error).__name__}: {error})") from None


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """A table as CSV (UTF-8), with every text cell that a spreadsheet would run as a formula neutralised: the one
    home of that rule (CLI export and the app's downloads). Parquet keeps values as they are."""
    safe = frame.copy()
    for column in safe.columns:
        # Text cells only: a number column (-1.5) is written as a number, which a spreadsheet reads as a value, not a
        # formula; the same text in a text column ("-1.5" as a prompt) is neutralised like any other text.
        if safe[column].dtype.kind not in "biufcmM":
            safe[column] = safe[column].map(csv_safe_cell)
    safe.columns = [csv_safe_cell(name) for name in safe.columns]
    # CRLF rows (RFC 4180): the csv writer then quotes every cell holding a CR or LF, which with "\n" rows it leaves
    # bare, and a spreadsheet starts a new row there.
    return safe.to_csv(index=False, lineterminator="\r\n").encode("utf-8")


def csv_safe_cell(value):
    """OWASP's rule for CSV injection: a text starting with = + - @ tab or CR gets a leading single quote."""
    return "'" + value if isinstance(value, str) and value.startswith(CSV_FORMULA_STARTS) else value


def _frame_bytes(frame: pd.DataFrame, format: str) -> bytes:
    if format == "csv":
        return csv_bytes(frame)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()
