"""The results store: one SQLite file (WAL mode) holding every run, tables as Parquet blobs.

Why SQLite: it ships with Python, a run is saved in one ACID transaction (a run killed midway
leaves no trace and earlier runs intact), and in WAL mode readers (the dashboard) read a
consistent snapshot while a writer (the CLI) runs. DuckDB would give faster analytics, but
takes a per-process write lock that stops other processes from even opening the file for
reading while a writer holds it. Tables go in as Parquet (typed, compressed, pandas round-trip).
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from .errors import StoreError, StoreNotWritableError
from .protocols import ProbeResult

SCHEMA_VERSION = 1
DEFAULT_STORE = Path("posbench-results") / "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
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
);
CREATE INDEX IF NOT EXISTS runs_model_probe ON runs (model_id, probe, created_at);
CREATE TABLE IF NOT EXISTS run_tables (
    run_id  TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    name    TEXT NOT NULL,
    n_rows  INTEGER NOT NULL,
    parquet BLOB NOT NULL,
    PRIMARY KEY (run_id, name)
);
"""


def default_store_path() -> Path:
    return Path(os.environ.get("POSBENCH_STORE") or DEFAULT_STORE)


def _to_parquet(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def _from_parquet(blob: bytes) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(blob))


class Store:
    """``Store(path)`` opens (and, when writing, creates) a results database."""

    def __init__(self, path: str | Path | None = None, readonly: bool = False):
        self.path = Path(path) if path is not None else default_store_path()
        self.readonly = readonly
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if exists:
            self._check_schema()  # read-only look first: a foreign file is never written to
            if not readonly:
                self.check_writable()
        elif readonly:
            raise StoreError(f"no results store at {self.path}: run a probe first, or pass --store")
        else:
            self.check_writable()
            with self._connect() as conn:
                conn.executescript(_SCHEMA)
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )

    # ------------------------------------------------------------------ plumbing
    def check_writable(self) -> None:
        """Fail early (before any probe runs) if results could not be saved here."""
        target = self.path
        if target.exists():
            if target.is_dir():
                raise StoreNotWritableError(f"results store {target} is a folder: pass a file path to --store")
            if not os.access(target, os.W_OK):
                raise StoreNotWritableError(
                    f"results store {target} is not writable (permission denied): fix its permissions "
                    "or pass --store to a writable path"
                )
            return
        parent = target.parent if str(target.parent) else Path(".")
        existing = parent
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise StoreNotWritableError(
                f"cannot create results store {target}: {existing} is not writable; "
                "pass --store to a writable path"
            )
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreNotWritableError(
                f"cannot create results store {target} ({err.strerror}): pass --store to a writable path"
            ) from None

    def _connect(self, readonly: bool | None = None) -> sqlite3.Connection:
        readonly = self.readonly if readonly is None else readonly
        uri = f"file:{self.path}{'?mode=ro' if readonly else ''}"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
        except sqlite3.Error as err:
            raise StoreError(f"cannot open results store {self.path}: {err}") from None
        conn.execute("PRAGMA foreign_keys = ON")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect(readonly=True)
        try:
            yield conn
        except sqlite3.DatabaseError as err:
            raise StoreError(f"results store {self.path} is not readable: {err}") from None
        finally:
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything inside lands together or not at all."""
        if self.readonly:
            raise StoreNotWritableError(f"results store {self.path} was opened read-only")
        conn = self._connect()
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

    def _check_schema(self) -> None:
        with open(self.path, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                raise StoreError(
                    f"{self.path} is not a posbench results store (not an SQLite file): "
                    "pass --store to another file"
                )
        try:
            with self._read() as conn:
                row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except (sqlite3.DatabaseError, StoreError) as err:
            raise StoreError(
                f"{self.path} is not a posbench results store ({err}): pass --store to another file"
            ) from None
        if row is None or int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has results schema {row[0] if row else '?'}; this posbench reads "
                f"{SCHEMA_VERSION}: upgrade posbench or use another --store"
            )

    # ------------------------------------------------------------------ writing
    def save(self, result: ProbeResult) -> str:
        """Store a result atomically and return its run id."""
        run_id = result.run_id or uuid.uuid4().hex[:12]
        with self._transaction() as conn:
            self._insert_run(conn, run_id, result)
            for name, frame in result.tables.items():
                self._insert_table(conn, run_id, name, frame)
        result.run_id = run_id
        return run_id

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
                json.dumps(result.interventions, sort_keys=True),
                result.data_digest,
                json.dumps(result.model_card, default=str),
                json.dumps(result.summary, default=str),
                json.dumps(result.metadata, default=str),
            ),
        )

    @staticmethod
    def _insert_table(conn: sqlite3.Connection, run_id: str, name: str, frame: pd.DataFrame) -> None:
        conn.execute(
            "INSERT INTO run_tables VALUES (?, ?, ?, ?)", (run_id, name, len(frame), _to_parquet(frame))
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
            frame[col] = frame[col].map(json.loads)
        return frame

    def table(self, run_id: str, name: str) -> pd.DataFrame:
        with self._read() as conn:
            row = conn.execute(
                "SELECT parquet FROM run_tables WHERE run_id = ? AND name = ?", (run_id, name)
            ).fetchone()
        if row is None:
            raise StoreError(f"run {run_id} has no table '{name}'")
        return _from_parquet(row[0])

    def load(self, run_id: str) -> ProbeResult:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise StoreError(f"no run '{run_id}' in {self.path}: `posbench runs` lists them")
            tables = {
                name: _from_parquet(blob)
                for name, blob in conn.execute(
                    "SELECT name, parquet FROM run_tables WHERE run_id = ? ORDER BY name", (run_id,)
                )
            }
        (rid, _created, model_id, probe, config, interventions, digest_, card, summary, metadata) = row
        return ProbeResult(
            probe=probe,
            model_id=model_id,
            config=json.loads(config),
            tables=tables,
            summary=json.loads(summary),
            model_card=json.loads(card),
            interventions=json.loads(interventions),
            data_digest=digest_,
            metadata=json.loads(metadata),
            run_id=rid,
        )

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

    def _data_source(self, run_id: str) -> str:
        with self._read() as conn:
            (metadata,) = conn.execute("SELECT metadata FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        # runs stored before the data source was recorded are "unknown": never mistaken for default data
        return json.loads(metadata).get("data_source", "unknown")


def _normal(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)
