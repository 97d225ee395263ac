"""Scanning RAW_ROOT: which directories are nights and which files are data (the policy that reads the
listings: tests/deployments/test_readiness.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from qlcp.deployments.scanner import has_marker, list_fits, newest_file_time, night_names, night_of


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
