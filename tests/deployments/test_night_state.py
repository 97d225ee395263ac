"""The sensor's SQLite store: what it keeps survives a reopen; bad changes are refused and leave nothing."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import pytest

from qlcp.deployments.night_state import StateDB, from_iso, read_state, to_iso

T0 = datetime(2024, 6, 6, 14, 0, 0, 123000, tzinfo=UTC).timestamp()


@pytest.fixture
def db(tmp_path):
    d = StateDB(tmp_path / "s.sqlite")
    yield d
    d.close()


def _add(db, name="20240606", t=T0):
    db.insert(name, f"/raw/{name}", f"/red/{name}", t, f"key-{name}")


def test_iso_round_trip():
    assert to_iso(T0) == "2024-06-06T14:00:00.123Z"
    assert from_iso(to_iso(T0)) == pytest.approx(T0, abs=1e-6)
    assert to_iso(None) is None and from_iso(None) is None and from_iso("") is None


def test_new_night_is_pending_with_defaults(db):
    _add(db)
    row = db.get("20240606")
    assert row["status"] == "pending" and row["first_seen"] == "2024-06-06T14:00:00.123Z"
    assert (row["raw_dir"], row["red_dir"], row["idempotency_key"]) == ("/raw/20240606", "/red/20240606",
                                                                        "key-20240606")
    assert row["attempts"] == 0 and row["n_files"] == 0 and row["flow_run_id"] is None
    assert db.get("missing") is None
    with pytest.raises(sqlite3.IntegrityError):     # one row per night name
        _add(db)


def test_state_survives_a_reopen(tmp_path):
    path = tmp_path / "s.sqlite"
    db = StateDB(path)
    _add(db, "20240606")
    _add(db, "20240607")
    db.update("20240606", status="triggered", flow_run_id="run-1", n_files=12, last_file=to_iso(T0 + 60))
    db.set_meta("raw_root", "/raw")
    assert db.begin_attempt("20240607", "marker", T0 + 5) == 1
    db.close()

    again = StateDB(path)                           # schema creation is idempotent; nothing is reset
    try:
        assert again.meta("raw_root") == "/raw" and again.meta("schema") == "1"
        assert [r["name"] for r in again.rows("triggered")] == ["20240606"]
        assert [r["name"] for r in again.rows("pending")] == ["20240607"]
        r = again.get("20240606")
        assert (r["flow_run_id"], r["n_files"], from_iso(r["last_file"])) == ("run-1", 12,
                                                                              pytest.approx(T0 + 60))
        assert again.begin_attempt("20240607", "dawn", T0 + 99) == 2    # counts on from the stored value
        r = again.get("20240607")
        assert (r["reason"], r["ready_at"]) == ("marker", to_iso(T0 + 5))  # the first reason and time stay
    finally:
        again.close()
    assert [r["name"] for r in read_state(path)] == ["20240606", "20240607"]


def test_begin_attempt_only_on_pending_nights(db):
    _add(db)
    db.update("20240606", status="triggered")
    with pytest.raises(RuntimeError, match="not pending"):
        db.begin_attempt("20240606", "dawn", T0)
    with pytest.raises(RuntimeError, match="not pending"):
        db.begin_attempt("missing", "dawn", T0)
    assert db.get("20240606")["attempts"] == 0


def test_bad_updates_are_refused(db):
    _add(db)
    with pytest.raises(ValueError, match="not updatable"):
        db.update("20240606", first_seen=to_iso(T0 + 1))
    with pytest.raises(ValueError, match="not updatable"):
        db.update("20240606", idempotency_key="k2")
    with pytest.raises(sqlite3.IntegrityError):     # the schema's CHECK on status
        db.update("20240606", status="done")
    row = db.get("20240606")
    assert row["status"] == "pending" and row["idempotency_key"] == "key-20240606"
    assert row["first_seen"] == to_iso(T0)


def test_a_failed_transaction_leaves_nothing(db):
    _add(db)
    with pytest.raises(ZeroDivisionError), db.tx() as c:
        c.execute("UPDATE nights SET n_files = 7 WHERE name = '20240606'")
        1 / 0
    assert db.get("20240606")["n_files"] == 0
    db.update("20240606", n_files=3)                # the connection is usable afterwards
    assert db.get("20240606")["n_files"] == 3


def test_a_second_connection_sees_committed_changes(tmp_path):
    a, b = StateDB(tmp_path / "s.sqlite"), StateDB(tmp_path / "s.sqlite")
    try:
        _add(a)
        a.update("20240606", last_error="ConnectionError: down")
        assert b.get("20240606")["last_error"] == "ConnectionError: down"
    finally:
        a.close()
        b.close()
