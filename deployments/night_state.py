"""The sensor's memory: an SQLite store of the nights seen, triggered and gone.

One row per night directory name (first seen, newest file time, first file in
the dark, number of files, status ``pending``/``triggered``/``gone``, ready
reason, trigger attempts and next retry, last error, flow run id,
idempotency key) plus a ``meta`` table (schema version, the RAW_ROOT the
state was kept for).  Times are stored as ISO 8601 UTC text with
milliseconds (:func:`to_iso`, :func:`from_iso`).  Every change is one
transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``), so a sensor killed at any
point leaves a consistent file that the next sensor reopens as it was.

Not here: deciding anything (when a night is ready, when to retry), the lock
that keeps a second sensor off the same file, scanning or triggering: those
are :mod:`qlcp.deployments.sensor`'s.  This module never looks at RAW_ROOT.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_STATE_NAME = ".qlcp-sensor.sqlite"
STATUSES = ("pending", "triggered", "gone")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS nights (
        name TEXT PRIMARY KEY,            -- night directory name under RAW_ROOT
        raw_dir TEXT NOT NULL,
        red_dir TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'triggered', 'gone')),
        first_seen TEXT NOT NULL,         -- ISO UTC, sensor clock
        last_file TEXT,                   -- newest change to the night's FITS files
        first_dark TEXT,                  -- earliest file arrival with the Sun below the altitude
        n_files INTEGER NOT NULL DEFAULT 0,
        reason TEXT,                      -- catch-up / dawn / marker / quiet
        ready_at TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt TEXT,
        last_error TEXT,
        flow_run_id TEXT,
        triggered_at TEXT,
        idempotency_key TEXT NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_UPDATABLE = {"raw_dir", "red_dir", "status", "last_file", "first_dark", "n_files", "reason", "ready_at",
              "attempts", "next_attempt", "last_error", "flow_run_id", "triggered_at"}


def to_iso(t: float | None) -> str | None:
    """Unix seconds as stored: ISO 8601 UTC with milliseconds and a ``Z`` (None stays None)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_iso(s: str | None) -> float | None:
    """Unix seconds of a stored time (None or '' give None)."""
    if not s:
        return None
    return datetime.fromisoformat(s).timestamp()


class StateDB:
    """The sensor's per-night state: one SQLite file, every change in a transaction.

    One connection, usable from any thread (a sensor may be started in one
    thread and run in another); a lock serialises its use.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self.conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        with self.tx() as c:
            for stmt in SCHEMA:
                c.execute(stmt)
            c.execute("INSERT OR IGNORE INTO meta VALUES ('schema', '1')")

    @contextlib.contextmanager
    def tx(self):
        """An atomic transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on error)."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.conn.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def meta(self, key: str) -> str | None:
        r = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return r[0][0] if r else None

    def set_meta(self, key: str, value: str) -> None:
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def get(self, name: str) -> dict | None:
        r = self._query("SELECT * FROM nights WHERE name = ?", (name,))
        return dict(r[0]) if r else None

    def rows(self, status: str | None = None) -> list[dict]:
        if status is None:
            return [dict(r) for r in self._query("SELECT * FROM nights ORDER BY name")]
        return [dict(r) for r in self._query("SELECT * FROM nights WHERE status = ? ORDER BY name", (status,))]

    def insert(self, name: str, raw_dir: str, red_dir: str, first_seen: float, key: str) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO nights (name, raw_dir, red_dir, status, first_seen, idempotency_key) "
                      "VALUES (?, ?, ?, 'pending', ?, ?)", (name, raw_dir, red_dir, to_iso(first_seen), key))

    def update(self, name: str, **cols) -> None:
        bad = set(cols) - _UPDATABLE
        if bad:
            raise ValueError(f"not updatable: {sorted(bad)}")
        sets = ", ".join(f"{k} = ?" for k in cols)
        with self.tx() as c:
            c.execute(f"UPDATE nights SET {sets} WHERE name = ?", (*cols.values(), name))

    def begin_attempt(self, name: str, reason: str, now: float) -> int:
        """Count one trigger attempt (committed before the call); returns the attempt number."""
        with self.tx() as c:
            c.execute("UPDATE nights SET attempts = attempts + 1, reason = COALESCE(reason, ?), "
                      "ready_at = COALESCE(ready_at, ?) WHERE name = ? AND status = 'pending'",
                      (reason, to_iso(now), name))
            r = c.execute("SELECT attempts, status FROM nights WHERE name = ?", (name,)).fetchone()
        if r is None or r["status"] != "pending":
            raise RuntimeError(f"night {name} is not pending in {self.path}")
        return int(r["attempts"])


def read_state(path: str | Path) -> list[dict]:
    """Every night recorded in a sensor state database (for reports and tests)."""
    db = StateDB(path)
    try:
        return db.rows()
    finally:
        db.close()
