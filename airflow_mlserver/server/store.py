"""Persistence of the local server: one SQLite database plus files under the data directory.

Layout of ``data_dir``::

    mlserver.db                      services, tokens, sessions, snapshots, executions, records
    sessions/<id>/<object>           workspace objects (dill bytes), as the client uploaded them
    snapshots/<id>/<object>          a snapshot's copy of its session's objects
    services/<name>/<version>/objects/<object>   a published service's own copy of its objects
    executions/<id>/<index>/         artifacts of each batch record (made only for a record that has some)
    workers/<pid>/                   each worker process's scratch folder, where every execution runs

Every finished record is committed with its result before it counts as completed (a batch commits its
records a group at a time, one transaction each), so stopping the server loses no committed record; a
record without a result runs again after a restart.

All writes go through one connection owned by the event loop's thread; long reads (a results list)
open their own read-only connection so that they can stream from another thread (WAL mode).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token TEXT PRIMARY KEY, kind TEXT NOT NULL, username TEXT NOT NULL, expires_on REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS services (
    name TEXT NOT NULL, version TEXT NOT NULL, seq INTEGER NOT NULL, revision TEXT NOT NULL,
    body TEXT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (id TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL,
    state TEXT NOT NULL, parallel_count INTEGER NOT NULL, total INTEGER NOT NULL,
    completed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0, owner TEXT NOT NULL,
    created REAL NOT NULL, finished REAL, error TEXT NOT NULL DEFAULT '',
    cancel_requests INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS executions_by_service ON executions (name, version, seq);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    owner TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, key TEXT NOT NULL, execution_id TEXT NOT NULL,
    PRIMARY KEY (owner, name, version, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    execution_id TEXT NOT NULL, idx INTEGER NOT NULL, input TEXT NOT NULL, result TEXT,
    PRIMARY KEY (execution_id, idx)) WITHOUT ROWID;
"""

#: The columns of an :class:`Execution`, in its fields' order.
_EXECUTION_COLUMNS = (
    "id, name, version, state, parallel_count, total, completed, failed, owner, created, finished, error,"
    " cancel_requests"
)

# Execution states (compared case-insensitively by clients).
PENDING, RUNNING, COMPLETE, FAILED, CANCELED = "Pending", "Running", "Complete", "Failed", "Canceled"
FINISHED = {COMPLETE, FAILED, CANCELED}


@dataclass
class Execution:
    """One batch execution's row, without its records."""

    id: str
    name: str
    version: str
    state: str
    parallel_count: int
    total: int
    completed: int
    failed: int
    owner: str
    created: float
    finished: float | None
    error: str
    cancel_requests: int = 0


class Store:
    """The server's persistent state."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / "mlserver.db"
        self._db = self._connect()
        self._db.executescript(_SCHEMA)
        self._db.commit()
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=10000")
        return db

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        with self._lock:
            row: tuple[Any, ...] | None = self._db.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- tokens ---------------------------------------------------------------------------------
    def add_token(self, token: str, kind: str, username: str, expires_on: float) -> None:
        self._write("INSERT INTO tokens VALUES (?, ?, ?, ?, 0)", (token, kind, username, expires_on))

    def get_token(self, token: str, kind: str) -> tuple[str, float, bool] | None:
        row = self._one(
            "SELECT username, expires_on, revoked FROM tokens WHERE token=? AND kind=?", (token, kind)
        )
        return (row[0], row[1], bool(row[2])) if row else None

    def revoke_token(self, token: str, kind: str) -> bool:
        return self._write("UPDATE tokens SET revoked=1 WHERE token=? AND kind=?", (token, kind)).rowcount > 0

    def purge_tokens(self, now: float) -> None:
        self._write("DELETE FROM tokens WHERE expires_on < ?", (now - 24 * 3600,))

    # -- services -------------------------------------------------------------------------------
    def service_dir(self, name: str, version: str) -> Path:
        return self.data_dir / "services" / name / version

    def put_service(self, body: dict[str, Any], objects_from: Path | None) -> None:
        """Insert or replace a service version; its objects are copied from a snapshot when given."""
        name, version = body["name"], body["version"]
        objects = self.service_dir(name, version) / "objects"
        if objects_from is not None:
            if objects.exists():
                shutil.rmtree(objects)
            shutil.copytree(objects_from, objects)
        # A new revision id on every publish or patch: workers cache a loaded service by it, so a patched, or
        # deleted and republished, service is never run with stale code or objects.
        revision = uuid.uuid4().hex
        with self._lock:
            row = self._db.execute(
                "SELECT seq FROM services WHERE name=? AND version=?", (name, version)
            ).fetchone()
            if row:
                self._db.execute(
                    "UPDATE services SET revision=?, body=? WHERE name=? AND version=?",
                    (revision, json.dumps(body), name, version),
                )
            else:
                seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM services").fetchone()[0]
                self._db.execute(
                    "INSERT INTO services VALUES (?, ?, ?, ?, ?)",
                    (name, version, seq, revision, json.dumps(body)),
                )

    def get_service(self, name: str, version: str) -> tuple[dict[str, Any], str] | None:
        row = self._one("SELECT body, revision FROM services WHERE name=? AND version=?", (name, version))
        return (json.loads(row[0]), row[1]) if row else None

    def list_services(self, name: str | None = None) -> list[dict[str, Any]]:
        if name is None:
            rows = self._all("SELECT body FROM services ORDER BY seq")
        else:
            rows = self._all("SELECT body FROM services WHERE name=? ORDER BY seq", (name,))
        return [json.loads(r[0]) for r in rows]

    def delete_service(self, name: str, version: str) -> None:
        self._write("DELETE FROM services WHERE name=? AND version=?", (name, version))
        shutil.rmtree(self.service_dir(name, version), ignore_errors=True)

    # -- sessions and snapshots -----------------------------------------------------------------
    def session_dir(self, session_id: str) -> Path:
        return self.data_dir / "sessions" / session_id

    def snapshot_dir(self, snapshot_id: str) -> Path:
        return self.data_dir / "snapshots" / snapshot_id

    def put_session(self, body: dict[str, Any]) -> None:
        self.session_dir(body["id"]).mkdir(parents=True, exist_ok=True)
        self._write("INSERT OR REPLACE INTO sessions VALUES (?, ?)", (body["id"], json.dumps(body)))

    def get_session(self, session_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT body FROM sessions WHERE id=?", (session_id,))
        return json.loads(row[0]) if row else None

    def list_sessions(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self._all("SELECT body FROM sessions")]

    def delete_session(self, session_id: str) -> None:
        self._write("DELETE FROM sessions WHERE id=?", (session_id,))
        shutil.rmtree(self.session_dir(session_id), ignore_errors=True)

    def put_snapshot(self, body: dict[str, Any], session_id: str) -> None:
        target = self.snapshot_dir(body["id"])
        shutil.copytree(self.session_dir(session_id), target)
        body["contentSize"] = sum(p.stat().st_size for p in target.iterdir())
        self._write("INSERT INTO snapshots VALUES (?, ?)", (body["id"], json.dumps(body)))

    def get_snapshot(self, snapshot_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT body FROM snapshots WHERE id=?", (snapshot_id,))
        return json.loads(row[0]) if row else None

    def list_snapshots(self) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self._all("SELECT body FROM snapshots")]

    def delete_snapshot(self, snapshot_id: str) -> None:
        self._write("DELETE FROM snapshots WHERE id=?", (snapshot_id,))
        shutil.rmtree(self.snapshot_dir(snapshot_id), ignore_errors=True)

    # -- executions -----------------------------------------------------------------------------
    def execution_dir(self, execution_id: str) -> Path:
        return self.data_dir / "executions" / execution_id

    def create_execution(
        self,
        name: str,
        version: str,
        records: list[str],
        parallel_count: int,
        owner: str,
        key: str | None = None,
    ) -> tuple[Execution, bool]:
        """Register an execution and its records (each already a JSON text) in one transaction; answer it and
        whether it is new. With an idempotency ``key`` that this owner already started this service with, the
        execution that start created is answered instead (not new)."""
        execution_id = str(uuid.uuid4())
        now = time.time()
        with self._lock:
            if key is not None:
                found = self._db.execute(
                    f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE id = (SELECT execution_id FROM"
                    " idempotency_keys WHERE owner=? AND name=? AND version=? AND key=?)",
                    (owner, name, version, key),
                ).fetchone()
                if found is not None:
                    return Execution(*found), False
            self._db.execute("BEGIN")
            try:
                if key is not None:
                    self._db.execute(
                        "INSERT OR REPLACE INTO idempotency_keys (owner, name, version, key, execution_id)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (owner, name, version, key, execution_id),
                    )
                seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM executions").fetchone()[0]
                self._db.execute(
                    "INSERT INTO executions (id, seq, name, version, state, parallel_count, total, owner, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (execution_id, seq, name, version, PENDING, parallel_count, len(records), owner, now),
                )
                self._db.executemany(
                    "INSERT INTO records (execution_id, idx, input) VALUES (?, ?, ?)",
                    ((execution_id, i, r) for i, r in enumerate(records)),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        execution = Execution(
            execution_id, name, version, PENDING, parallel_count, len(records), 0, 0, owner, now, None, ""
        )
        return execution, True

    def get_execution(self, execution_id: str) -> Execution | None:
        row = self._one(f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE id=?", (execution_id,))
        return Execution(*row) if row else None

    def list_execution_ids(self, name: str, version: str) -> list[str]:
        rows = self._all("SELECT id FROM executions WHERE name=? AND version=? ORDER BY seq", (name, version))
        return [r[0] for r in rows]

    def unfinished_execution_ids(self) -> list[str]:
        rows = self._all("SELECT id FROM executions WHERE state IN (?, ?) ORDER BY seq", (PENDING, RUNNING))
        return [r[0] for r in rows]

    def count_cancel_request(self, execution_id: str) -> None:
        self._write("UPDATE executions SET cancel_requests=cancel_requests+1 WHERE id=?", (execution_id,))

    def set_state(self, execution_id: str, state: str, error: str = "") -> None:
        finished = time.time() if state in FINISHED else None
        self._write(
            "UPDATE executions SET state=?, finished=?, error=? WHERE id=? AND state NOT IN (?, ?, ?)",
            (state, finished, error, execution_id, *sorted(FINISHED)),
        )

    def pending_records(self, execution_id: str, after: int, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` records after index ``after`` that have no result yet: (index, input as JSON text)."""
        rows = self._all(
            "SELECT idx, input FROM records WHERE execution_id=? AND idx>? AND result IS NULL ORDER BY idx LIMIT ?",
            (execution_id, after, limit),
        )
        return [(r[0], r[1]) for r in rows]

    def save_results(self, execution_id: str, results: list[tuple[int, bool, str]]) -> None:
        """Store records' results, each (index, success, result as JSON text), in one transaction.

        A record's result is stored once: a second result for the same record is ignored (and not counted).
        """
        with self._lock:
            self._db.execute("BEGIN")
            try:
                counts = []
                for success in (True, False):
                    counts.append(
                        self._db.executemany(
                            "UPDATE records SET result=? WHERE execution_id=? AND idx=? AND result IS NULL",
                            ((text, execution_id, index) for index, ok, text in results if ok is success),
                        ).rowcount
                    )
                succeeded, failed = counts
                if succeeded or failed:
                    self._db.execute(
                        "UPDATE executions SET completed=completed+?, failed=failed+? WHERE id=?",
                        (succeeded + failed, failed, execution_id),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def get_result(self, execution_id: str, index: int) -> dict[str, Any] | None:
        row = self._one("SELECT result FROM records WHERE execution_id=? AND idx=?", (execution_id, index))
        return json.loads(row[0]) if row and row[0] else None

    def iter_result_texts(self, execution_id: str, page: int = 2000, first_page: int = 64) -> Iterator[str]:
        """Every finished record's result as stored JSON text, in input order, from a private connection.

        The first page is small: a client that reads only the head of the answer (a status poll) and hangs up
        leaves the server little work already under way.
        """
        db = sqlite3.connect(self.db_path, check_same_thread=False)
        try:
            after = -1
            limit = first_page
            while True:
                rows = db.execute(
                    "SELECT idx, result FROM records WHERE execution_id=? AND idx>? AND result IS NOT NULL"
                    " ORDER BY idx LIMIT ?",
                    (execution_id, after, limit),
                ).fetchall()
                if not rows:
                    return
                for idx, text in rows:
                    yield text
                    after = idx
                limit = page
        finally:
            db.close()
