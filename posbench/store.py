"""The results store: one SQLite file (WAL mode) holding every run, tables as Parquet blobs.

Why SQLite: it ships with Python, a run is saved in one ACID transaction (a run killed midway
leaves no trace and earlier runs intact), and in WAL mode readers (the dashboard) read a
consistent snapshot while a writer (the CLI) runs. DuckDB would give faster analytics, but
takes a per-process write lock that stops other processes from even opening the file for
reading while a writer holds it. Tables go in as Parquet (typed, compressed, pandas round-trip).
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from .bundle import field_problem, from_parquet, read_bundle, to_parquet, write_recovery
from .errors import StoreBusyError, StoreError, StoreMissingError, StoreNotWritableError
from .protocols import ProbeResult

SCHEMA_VERSION = 1
STORE_ENV = "POSBENCH_STORE"
WAIT_ENV = "POSBENCH_STORE_WAIT"  # seconds a save keeps trying a locked store (default below)
DEFAULT_WAIT = 300.0
_ATTEMPT_TIMEOUT = 30.0  # SQLite busy timeout of one attempt; attempts repeat until the wait is spent

_SCHEMA = [
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY,
    created_at    TEXT NOT NULL,
    model_id      TEXT NOT NULL,
    probe         TEXT NOT NULL,
    config        TEXT NOT NULL,
    interventions TEXT NOT NULL,
    data_digest   TEXT NOT NULL,
    model_card    TEXT NOT NULL,
    summary       TEXT NOT NULL,
    metadata      TEXT NOT NULL
)""",
    "CREATE INDEX runs_model_probe ON runs (model_id, probe, created_at)",
    """CREATE TABLE run_tables (
    run_id  TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    name    TEXT NOT NULL,
    n_rows  INTEGER NOT NULL,
    parquet BLOB NOT NULL,
    PRIMARY KEY (run_id, name)
)""",
]


def default_store_path() -> Path:
    """``$POSBENCH_STORE``, else ``$XDG_DATA_HOME/posbench/results.sqlite`` (XDG_DATA_HOME
    defaults to ``~/.local/share``): one place shared by the CLI, the API and the dashboard."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(data_home).expanduser() / "posbench" / "results.sqlite"


def _wait_seconds() -> float:
    text = os.environ.get(WAIT_ENV)
    if not text:
        return DEFAULT_WAIT
    try:
        value = float(text)
    except ValueError:
        raise StoreError(f"${WAIT_ENV}={text!r} is not a number of seconds: set e.g. {WAIT_ENV}=300") from None
    if not value >= 0:
        raise StoreError(f"${WAIT_ENV}={text!r} must be 0 or more seconds")
    return value


def _is_busy(err: sqlite3.Error) -> bool:
    return isinstance(err, sqlite3.OperationalError) and any(
        word in str(err).lower() for word in ("locked", "busy")
    )


class Store:
    """``Store(path)`` opens (and, when writing, creates) a results database.

    ``wait`` is how long a save keeps trying while another process holds the write lock
    (default ``$POSBENCH_STORE_WAIT`` or 300 s); past it, or on any other write failure, the
    result goes to a recovery file (``posbench.bundle``) and ``StoreBusyError`` says where.
    """

    def __init__(self, path: str | Path | None = None, readonly: bool = False, wait: float | None = None):
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        self.readonly = readonly
        self.wait = _wait_seconds() if wait is None else float(wait)
        self._check_kind()
        if readonly:
            if not self._has_content():
                raise StoreMissingError(f"no results store at {self.path}: run a probe first, or pass --store")
            if self._check_schema() is None:
                raise StoreMissingError(f"results store {self.path} holds no runs yet: run a probe first")
            return
        # a foreign file is refused by a read-only look first, and never written to
        version = self._check_schema() if self._has_content() else None
        self.check_writable()
        if version is None:
            self._create()

    def __repr__(self) -> str:
        try:
            with self._read() as conn:
                rows = conn.execute("SELECT probe, COUNT(*) FROM runs GROUP BY probe ORDER BY probe").fetchall()
                models = conn.execute("SELECT COUNT(DISTINCT model_id) FROM runs").fetchone()[0]
        except (sqlite3.Error, StoreError):
            return f"<Store {self.path}>"
        total = sum(n for _, n in rows)
        probes = ", ".join(f"{p} {n}" for p, n in rows)
        return f"<Store {self.path}: {total} runs of {models} models{' (' + probes + ')' if rows else ''}>"

    # ------------------------------------------------------------------ plumbing
    def _check_kind(self) -> None:
        try:
            mode = self.path.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as err:
            raise StoreError(f"cannot read results store {self.path} ({err.strerror}): pass --store to another file") from None
        if stat.S_ISDIR(mode):
            raise StoreNotWritableError(f"results store {self.path} is a folder: pass a file path to --store")
        if not stat.S_ISREG(mode):
            raise StoreNotWritableError(
                f"results store {self.path} is not a regular file (a device or pipe): pass --store to a file path"
            )

    def _has_content(self) -> bool:
        """Whether the file exists and holds bytes (st_size is 0 for /proc files: read instead)."""
        try:
            with open(self.path, "rb") as fh:
                return bool(fh.read(1))
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as err:
            raise StoreError(f"cannot read results store {self.path} ({err.strerror}): pass --store to another file") from None

    def check_writable(self) -> None:
        """Fail early (before any probe runs) if results could not be saved here."""
        target = self.path
        if target.exists():  # a regular file: _check_kind refused folders and devices
            if not os.access(target, os.W_OK):
                raise StoreNotWritableError(
                    f"results store {target} is not writable (permission denied): fix its permissions "
                    "or pass --store to a writable path"
                )
            if not os.access(target.parent, os.W_OK | os.X_OK):
                raise StoreNotWritableError(
                    f"the folder of results store {target} is not writable (SQLite writes its journal beside "
                    "the store): fix its permissions or pass --store to a writable path"
                )
            return
        parent = target.parent if str(target.parent) else Path(".")
        existing = parent
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise StoreNotWritableError(
                f"cannot create results store {target}: {existing} is not a writable folder; "
                "pass --store to a writable path"
            )
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreNotWritableError(
                f"cannot create results store {target} ({err.strerror}): pass --store to a writable path"
            ) from None

    def _connect(self, readonly: bool | None = None, timeout: float = _ATTEMPT_TIMEOUT) -> sqlite3.Connection:
        readonly = self.readonly if readonly is None else readonly
        uri = f"{self.path.resolve().as_uri()}{'?mode=ro' if readonly else ''}"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as err:
            raise StoreError(f"cannot open results store {self.path}: {err}") from None
        return conn

    def _create(self) -> None:
        """Create the schema once, safely when several processes open a new store at the same
        moment: WAL mode first (each switch waits its turn), then the check and the creation
        under one write lock, in one transaction, so nobody ever sees half a schema."""
        deadline = time.monotonic() + max(self.wait, _ATTEMPT_TIMEOUT)
        while True:
            try:
                conn = self._connect(timeout=max(1.0, deadline - time.monotonic()))
                try:
                    conn.execute("PRAGMA journal_mode = WAL")  # persistent; readers never wait for the writer
                finally:
                    conn.close()
                with self._transaction(timeout=max(1.0, deadline - time.monotonic())) as conn:
                    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                    if not names:
                        for statement in _SCHEMA:
                            conn.execute(statement)
                        conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                    elif "meta" not in names:
                        raise StoreError(
                            f"{self.path} is not a posbench results store (an SQLite file with other tables): "
                            "pass --store to another file"
                        )
                break
            except sqlite3.Error as err:
                if _is_busy(err) and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise StoreError(f"cannot create results store {self.path}: {err}; pass --store to another file") from None
        self._check_schema()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect(readonly=True)
        try:
            yield conn
        except sqlite3.DatabaseError as err:
            raise StoreError(f"results store {self.path} is not readable ({err}): it may be damaged; "
                             "pass --store to another file") from None
        finally:
            conn.close()

    @contextmanager
    def _transaction(self, timeout: float = _ATTEMPT_TIMEOUT) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything inside lands together or not at all."""
        if self.readonly:
            raise StoreNotWritableError(f"results store {self.path} was opened read-only")
        conn = self._connect(readonly=False, timeout=timeout)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def _check_schema(self) -> int | None:
        """The store's schema version; None for an SQLite file with no tables yet. Raises for a
        file that is not a posbench store or is newer than this posbench."""
        with open(self.path, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                raise StoreError(
                    f"{self.path} is not a posbench results store (not an SQLite file): pass --store to another file"
                )
        try:
            with self._read() as conn:
                names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if not names:
                    return None
                row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() if "meta" in names else None
        except (sqlite3.DatabaseError, StoreError) as err:
            raise StoreError(f"{self.path} is not a posbench results store ({err}): pass --store to another file") from None
        foreign = f"{self.path} is not a posbench results store"
        if row is None:
            where = "its meta table has no schema_version" if "meta" in names else "it has other tables"
            raise StoreError(f"{foreign} ({where}): pass --store to another file")
        try:
            version = int(row[0])
        except (TypeError, ValueError):
            raise StoreError(f"{foreign} (schema_version {str(row[0])[:40]!r} is not a number): pass --store to another file") from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has results schema {version}; this posbench reads {SCHEMA_VERSION}: "
                "upgrade posbench or use another --store"
            )
        return version

    # ------------------------------------------------------------------ writing
    def save(self, result: ProbeResult) -> str:
        """Store a result atomically and return its run id. Saving the same result again is a
        no-op. While another process holds the write lock this waits (up to ``wait`` seconds,
        retrying); if the result still cannot be written it goes to a recovery file and
        ``StoreBusyError`` names it: a computed result is never lost."""
        result.run_id = result.run_id or uuid.uuid4().hex[:12]
        try:
            return self._save_retrying(result)
        except (sqlite3.Error, OSError, StoreError) as err:
            reason = str(err).split(": pass --store")[0] if isinstance(err, StoreError) else f"{type(err).__name__}: {err}"
            try:
                path = write_recovery(result, self._recovery_folders())
            except OSError as second:
                raise StoreBusyError(
                    f"could not write the result to {self.path} ({reason}) nor a recovery file ({second.strerror}): "
                    "the result is still in memory (StoreBusyError.result); free some disk space and save it again",
                    None, result,
                ) from None
            raise StoreBusyError(
                f"could not write the result to {self.path} ({reason}); it is safe in {path}: "
                f"run `posbench import {path} --store {self.path}` once the store is free",
                path, result,
            ) from None

    def _save_retrying(self, result: ProbeResult) -> str:
        deadline = time.monotonic() + self.wait
        while True:
            remaining = deadline - time.monotonic()
            try:
                with self._transaction(timeout=max(0.05, min(_ATTEMPT_TIMEOUT, remaining))) as conn:
                    if self._already_stored(conn, result):
                        return result.run_id
                    self._insert_run(conn, result.run_id, result)
                    for name, frame in result.tables.items():
                        self._insert_table(conn, result.run_id, name, frame)
                return result.run_id
            except sqlite3.Error as err:
                if not _is_busy(err) or time.monotonic() >= deadline:
                    raise
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    @staticmethod
    def _already_stored(conn: sqlite3.Connection, result: ProbeResult) -> bool:
        """True if this very result is stored; a different run that holds its id gets a new id."""
        row = conn.execute(
            "SELECT probe, model_id, created_at, data_digest FROM runs WHERE run_id = ?", (result.run_id,)
        ).fetchone()
        if row is None:
            return False
        if row == (result.probe, result.model_id, result.metadata.get("started_at", ""), result.data_digest):
            return True
        result.run_id = uuid.uuid4().hex[:12]
        return False

    def _recovery_folders(self) -> list[Path]:
        return [self.path.parent, Path(tempfile.gettempdir())]

    def import_bundle(self, path: str | Path) -> tuple[str, bool]:
        """Store a recovery bundle (``posbench import``); returns (run id, whether it was new)."""
        result = read_bundle(path)
        run_id = result.run_id
        with self._read() as conn:
            known = conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is not None
        saved = self.save(result)  # a different run holding the same id makes it take a new one
        return saved, saved != run_id or not known

    @staticmethod
    def _insert_run(conn: sqlite3.Connection, run_id: str, result: ProbeResult) -> None:
        conn.execute(
            "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run_id,
                result.metadata.get("started_at", ""),
                result.model_id,
                result.probe,
                json.dumps(result.config, sort_keys=True, default=str),
                json.dumps(result.interventions, sort_keys=True, default=str),
                result.data_digest,
                json.dumps(result.model_card, default=str),
                json.dumps(result.summary, default=str),
                json.dumps(result.metadata, default=str),
            ),
        )

    @staticmethod
    def _insert_table(conn: sqlite3.Connection, run_id: str, name: str, frame: pd.DataFrame) -> None:
        conn.execute(
            "INSERT INTO run_tables VALUES (?, ?, ?, ?)", (run_id, name, len(frame), to_parquet(frame))
        )

    def delete(self, run_id: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    # ------------------------------------------------------------------ reading
    def runs(self, model: str | None = None, probe: str | None = None) -> pd.DataFrame:
        """One row per stored run, newest first."""
        query = "SELECT run_id, created_at, model_id, probe, config, interventions, data_digest, summary FROM runs"
        clauses, args = [], []
        if model:
            clauses.append("model_id = ?")
            args.append(model)
        if probe:
            clauses.append("probe = ?")
            args.append(probe)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY created_at DESC, rowid DESC"
        with self._read() as conn:
            frame = pd.read_sql_query(query, conn, params=args)
        for col in ("config", "interventions", "summary"):
            frame[col] = [self._json(v, col, rid) for v, rid in zip(frame[col], frame["run_id"])]
        return frame

    def timings(self, probe: str) -> list[tuple[str, dict, dict]]:
        """(model id, config, metadata) of every stored run of ``probe``, newest first: what
        time estimates learn from (``posbench.estimate``)."""
        with self._read() as conn:
            rows = list(conn.execute("SELECT run_id, model_id, config, metadata FROM runs WHERE probe = ? "
                                     "ORDER BY created_at DESC, rowid DESC", (probe,)))
        out = []
        for run_id, model_id, config, metadata in rows:
            metadata = self._json(metadata, "metadata", run_id)
            out.append((model_id, self._json(config, "config", run_id), metadata if isinstance(metadata, dict) else {}))
        return out

    def _json(self, text: Any, what: str, run_id: str) -> Any:
        try:
            return json.loads(text)
        except (TypeError, ValueError):
            raise StoreError(
                f"run {run_id} in {self.path} is damaged (its {what} is not JSON): delete it or use another --store"
            ) from None

    def _table_blob(self, blob: Any, run_id: str, name: str) -> pd.DataFrame:
        try:
            return from_parquet(blob)
        except Exception as err:  # pyarrow raises many types for a damaged blob
            raise StoreError(
                f"table '{name}' of run {run_id} in {self.path} is damaged ({type(err).__name__}): "
                "delete the run or use another --store"
            ) from None

    def table(self, run_id: str, name: str) -> pd.DataFrame:
        with self._read() as conn:
            row = conn.execute(
                "SELECT parquet FROM run_tables WHERE run_id = ? AND name = ?", (run_id, name)
            ).fetchone()
        if row is None:
            raise StoreError(f"run {run_id} has no table '{name}'")
        return self._table_blob(row[0], run_id, name)

    def load(self, run_id: str) -> ProbeResult:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise StoreError(f"no run '{run_id}' in {self.path}: `posbench runs` lists them")
            blobs = list(conn.execute("SELECT name, parquet FROM run_tables WHERE run_id = ? ORDER BY name", (run_id,)))
        (rid, _created, model_id, probe, config, interventions, digest_, card, summary, metadata) = row
        fields = {
            "probe": probe, "model_id": model_id, "data_digest": digest_, "run_id": rid,
            "config": self._json(config, "config", rid), "summary": self._json(summary, "summary", rid),
            "model_card": self._json(card, "model card", rid), "interventions": self._json(interventions, "interventions", rid),
            "metadata": self._json(metadata, "metadata", rid),
        }
        problem = field_problem(fields)
        if problem:
            raise StoreError(f"run {rid} in {self.path} is damaged ({problem}): delete it or use another --store")
        tables = {str(name): self._table_blob(blob, rid, name) for name, blob in blobs}
        return ProbeResult(tables=tables, **fields)

    def latest(
        self,
        model: str,
        probe: str,
        config: dict[str, Any] | None = None,
        interventions: list | None = None,
        data_source: str | None = None,
    ) -> str | None:
        """Newest run of ``probe`` on ``model`` with this config, interventions and data source
        ("default" for the probe's own data, "user" for data the user passed), if any."""
        frame = self.runs(model=model, probe=probe)
        for _, row in frame.iterrows():
            if config is not None and _normal(row.config) != _normal(config):
                continue
            if interventions is not None and row.interventions != interventions:
                continue
            if data_source is not None and self._data_source(row.run_id) != data_source:
                continue
            return row.run_id
        return None

    def intervened(self, model: str, probe: str, config: dict[str, Any], data_source: str = "default") -> list[str]:
        """The newest run of ``probe`` on ``model`` with this config and data source under each
        distinct list of interventions (none excluded), newest first."""
        seen, out = set(), []
        for _, row in self.runs(model=model, probe=probe).iterrows():
            key = _normal(row.interventions)
            if not row.interventions or key in seen or _normal(row.config) != _normal(config):
                continue
            if self._data_source(row.run_id) == data_source:
                seen.add(key)
                out.append(row.run_id)
        return out

    def _data_source(self, run_id: str) -> str:
        with self._read() as conn:
            (metadata,) = conn.execute("SELECT metadata FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        # runs stored before the data source was recorded are "unknown": never mistaken for default data
        metadata = self._json(metadata, "metadata", run_id)
        return metadata.get("data_source", "unknown") if isinstance(metadata, dict) else "unknown"


def _normal(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)
