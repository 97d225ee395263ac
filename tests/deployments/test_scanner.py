"""Scanning RAW_ROOT: which directories are nights, which files are data, stability and readiness."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from qlcp.deployments.scanner import (READY_REASONS, NightFiles, has_marker, list_fits, newest_file_time,
                                      night_names, night_of, ready_reason)


def touch(path: Path, data: bytes = b"x" * 10, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_list_fits_ignores_hidden_marker_and_other_files(tmp_path):
    night = tmp_path / "20240606"
    touch(night / "a.fits")
    touch(night / "B.FIT", b"y" * 20)
    touch(night / "c.fits.fz")
    touch(night / "sub" / "d.fts")
    touch(night / "DONE")                           # the completion marker: not a data file
    touch(night / "notes.txt")
    touch(night / "log.fits.txt")
    touch(night / ".a.fits.Xy12zz")                 # rsync's temporary file
    touch(night / ".hidden.fits")
    touch(night / ".tmp" / "e.fits")                # hidden directory
    (night / "dir.fits").mkdir()                    # a directory named like a file
    found = list_fits(night)
    assert sorted(found) == ["B.FIT", "a.fits", "c.fits.fz", "sub/d.fts"]
    st = (night / "B.FIT").stat()
    assert found["B.FIT"] == (20, st.st_mtime_ns)


def test_list_fits_of_a_missing_night(tmp_path):
    with pytest.raises(FileNotFoundError):
        list_fits(tmp_path / "gone")
    assert list_fits(tmp_path) == {}


def test_night_names(tmp_path):
    for d in ("20240606", "20240607_85", ".staging", "calib"):
        (tmp_path / d).mkdir()
    touch(tmp_path / "20240608")                    # a file, not a night
    assert night_names(tmp_path) == {"20240606", "20240607_85", "calib"}
    assert night_names(tmp_path, re.compile(r"^\d{8}")) == {"20240606", "20240607_85"}
    with pytest.raises(OSError):
        night_names(tmp_path / "missing")


def test_night_of():
    assert night_of("/raw/20240606/sub/a.fits", "/raw") == "20240606"
    assert night_of("/raw/20240606", "/raw") == "20240606"
    assert night_of("/raw", "/raw") is None
    assert night_of("/elsewhere/x", "/raw") is None


def test_has_marker(tmp_path):
    assert not has_marker(tmp_path, "DONE")
    assert not has_marker(tmp_path, None)
    (tmp_path / "DONE").mkdir()
    assert not has_marker(tmp_path, "DONE")         # a directory is not the marker file
    touch(tmp_path / "READY")
    assert has_marker(tmp_path, "READY")


def test_newest_file_time(tmp_path):
    assert newest_file_time(tmp_path) is None
    touch(tmp_path / "a.fits", mtime=1_000_000)
    touch(tmp_path / "b.txt", mtime=2_000_000)      # any file counts, not only FITS
    touch(tmp_path / "sub" / "c.fits", mtime=3_000_000)   # only the directory's own files
    assert newest_file_time(tmp_path) == 2_000_000


def test_update_tracks_new_changed_and_removed_files(tmp_path):
    n = NightFiles(path=tmp_path)
    assert n.update({"a.fits": (10, 5_000_000_000)}, 100.0, use_mtime=False) == [100.0]
    assert n.last_change == 100.0 and n.files["a.fits"].checks == 1
    assert n.update({"a.fits": (10, 5_000_000_000)}, 103.0, use_mtime=False) == []
    assert n.last_change == 100.0 and n.files["a.fits"].checks == 2      # unchanged: no change recorded
    assert n.all_stable(103.0, settle=2.0) and not n.all_stable(101.0, settle=2.0)
    n.update({"a.fits": (20, 6_000_000_000)}, 110.0, use_mtime=False)   # still growing
    f = n.files["a.fits"]
    assert (f.checks, f.since, f.arrival) == (1, 110.0, 100.0) and n.last_change == 110.0
    assert not n.all_stable(200.0, settle=2.0)      # one check of the new size is not enough
    n.update({"b.fits": (1, 1)}, 120.0, use_mtime=False)
    assert list(n.files) == ["b.fits"] and n.last_change == 120.0
    assert n.newest_arrival() == 120.0


def test_update_at_startup_uses_mtimes_never_later_than_now(tmp_path):
    n = NightFiles(path=tmp_path, at_startup=True, last_change=40.0)
    new = n.update({"old.fits": (1, 50 * 10**9), "future.fits": (1, 500 * 10**9)}, 100.0, use_mtime=True)
    assert sorted(new) == [50.0, 100.0]
    assert n.last_change == 100.0                   # the newest arrival
    n2 = NightFiles(path=tmp_path, at_startup=True, last_change=80.0)
    n2.update({"old.fits": (1, 50 * 10**9)}, 100.0, use_mtime=True)
    assert n2.last_change == 80.0                   # a later change recorded before is kept


def _stable_night(tmp_path, **kw) -> NightFiles:
    n = NightFiles(path=tmp_path, **kw)
    n.update({"a.fits": (1, 1)}, 0.0, use_mtime=False)
    n.update({"a.fits": (1, 1)}, 10.0, use_mtime=False)
    return n


def test_ready_reason(tmp_path):
    asked = []

    def due(t):
        return lambda: asked.append(t) or t

    def reason(n, now, dawn=None, quiet=None, started_at=0.0):
        return ready_reason(n, now, settle=2.0, quiet=quiet, dawn_due=due(dawn), started_at=started_at)

    empty = NightFiles(path=tmp_path, marker=True)
    assert reason(empty, 100.0, dawn=50.0) is None and asked == []          # an empty night is never ready
    growing = NightFiles(path=tmp_path, marker=True)
    growing.update({"a.fits": (1, 1)}, 99.0, use_mtime=False)
    assert reason(growing, 100.0, dawn=50.0) is None and asked == []        # dawn not even asked

    n = _stable_night(tmp_path)
    assert reason(n, 20.0) is None                                          # no dawn, marker or quiet
    assert reason(n, 20.0, dawn=30.0) is None                               # dawn still to come
    assert reason(n, 30.0, dawn=30.0, started_at=25.0) == "dawn"
    assert reason(n, 30.0, dawn=30.0, started_at=30.0) == "catch-up"        # dawn passed before the start
    assert reason(n, 24.0, quiet=25.0) is None
    assert reason(n, 25.0, quiet=25.0) == "quiet"                           # 25 s after the last change (0)
    n.marker = True
    assert reason(n, 20.0, dawn=30.0) == "marker"
    assert reason(n, 30.0, dawn=30.0) == "dawn"                             # dawn is reported first
    assert set(READY_REASONS) == {"catch-up", "dawn", "marker", "quiet"}
