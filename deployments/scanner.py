"""Scanning RAW_ROOT: which nights exist and which files each holds (the file system side of the sensor).

Layout
    A *night* is a directory directly under RAW_ROOT (``raw/20240606_85/``)
    whose name matches a pattern (``re.search``; None: any name) and does not
    start with a dot.  Its *data files* are its FITS files (``FITS_SUFFIXES``
    of :mod:`qlcp.core.io`: ``.fits .fit .fts .fz`` ...), in sub-directories
    too.  Hidden files and directories never count (``rsync``'s
    ``.name.XXXXXX`` temporary files), nor does any other file: the
    completion marker (e.g. ``DONE``) is only looked for, never a data file.

Not here: what the listings mean (file stability, when a night is ready, the
``--max-age`` policy: :mod:`qlcp.deployments.readiness`), computing the dawn
(:mod:`qlcp.deployments.dawn`), remembering nights across restarts
(:mod:`qlcp.deployments.night_state`), watching for events and triggering
(:mod:`qlcp.deployments.sensor`).  Nothing here writes to RAW_ROOT or logs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from qlcp.core.io import FITS_SUFFIXES
from qlcp.deployments.readiness import Signature


def is_fits(name: str) -> bool:
    """Whether a file name has a FITS suffix (any case)."""
    low = name.lower()
    return any(low.endswith(s) for s in FITS_SUFFIXES)


def night_names(raw_root: Path, pattern: re.Pattern | None = None) -> set[str]:
    """Names of the night directories directly under ``raw_root`` (raises OSError when unreadable)."""
    with os.scandir(raw_root) as it:
        return {e.name for e in it if not e.name.startswith(".") and e.is_dir()
                and (pattern is None or pattern.search(e.name))}


def night_of(path: str, raw_root: str) -> str | None:
    """The night directory name a path under ``raw_root`` belongs to (None: RAW_ROOT itself or outside)."""
    rel = os.path.relpath(path, raw_root)
    if rel == os.curdir or rel.startswith(os.pardir):
        return None
    return rel.split(os.sep, 1)[0]


def list_fits(top: Path) -> dict[str, Signature]:
    """FITS files under ``top`` (recursive, hidden entries skipped): relative path -> (size, mtime_ns).

    Raises FileNotFoundError when ``top`` itself is missing; a sub-directory
    that vanishes meanwhile is skipped.
    """
    out: dict[str, Signature] = {}
    stack = [(str(top), "")]
    first = True
    while stack:
        d, prefix = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            if first:
                raise FileNotFoundError(top) from None
            continue                        # a sub-directory vanished meanwhile
        first = False
        with it:
            for e in it:
                if e.name.startswith("."):
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append((e.path, f"{prefix}{e.name}/"))
                    elif is_fits(e.name) and e.is_file():
                        st = e.stat()
                        out[prefix + e.name] = (st.st_size, st.st_mtime_ns)
                except FileNotFoundError:
                    continue
    return out


def has_marker(night_dir: Path, marker: str | None) -> bool:
    """Whether the completion marker file exists in the night directory (False when no marker is set)."""
    return bool(marker) and (night_dir / marker).is_file()


def newest_file_time(night_dir: Path) -> float | None:
    """Newest mtime (Unix s) of the regular files directly in ``night_dir`` (None: none; OSError raised)."""
    newest = None
    with os.scandir(night_dir) as it:
        for e in it:
            if e.is_file(follow_symlinks=False):
                t = e.stat(follow_symlinks=False).st_mtime
                newest = t if newest is None else max(newest, t)
    return newest
