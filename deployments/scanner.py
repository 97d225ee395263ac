"""Scanning RAW_ROOT: which nights exist, which files each holds, and when a night is ready.

Layout
    A *night* is a directory directly under RAW_ROOT (``raw/20240606_85/``)
    whose name matches a pattern (``re.search``; None: any name) and does not
    start with a dot.  Its *data files* are its FITS files (``FITS_SUFFIXES``
    of :mod:`qlcp.core.io`: ``.fits .fit .fts .fz`` ...), in sub-directories
    too.  Hidden files and directories never count (``rsync``'s
    ``.name.XXXXXX`` temporary files), nor does any other file: the
    completion marker (e.g. ``DONE``) is only looked for, never a data file.

Files
    A file's *signature* is its (size, mtime_ns).  :class:`NightFiles` keeps
    what was seen of a night from one scan to the next: each file's
    signature, when that signature was first seen, how many scans saw it and
    when the night received the file (its *arrival*: when first seen, or its
    mtime, never later than now, for files present when the sensor started).
    A file is *stable* once two scans at least ``settle`` seconds apart saw
    the same signature.

Readiness (:func:`ready_reason`)
    A night is ready when it holds at least one file, all of them stable, and
    one of: its dawn has passed (``dawn``, or ``catch-up`` when that dawn
    came before the sensor started), the marker exists (``marker``), or
    ``quiet`` seconds passed without a change (``quiet``).

Not here: computing the dawn (:mod:`qlcp.deployments.dawn`; the caller passes
it in), remembering nights across restarts (:mod:`qlcp.deployments.night_state`),
watching for events, the ``--max-age`` policy and triggering
(:mod:`qlcp.deployments.sensor`).  Nothing here writes to RAW_ROOT or logs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qlcp.core.io import FITS_SUFFIXES

READY_REASONS = ("catch-up", "dawn", "marker", "quiet")

Signature = tuple[int, int]     # size, mtime_ns


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


@dataclass
class SeenFile:
    """One data file as seen by successive scans."""

    sig: Signature          # size, mtime_ns
    since: float            # clock time this signature was first seen
    checks: int             # scans that saw this signature
    arrival: float          # when the night received the file

    def stable(self, now: float, settle: float) -> bool:
        """Unchanged at two scans at least ``settle`` seconds apart."""
        return self.checks >= 2 and now - self.since >= settle


@dataclass(kw_only=True)
class NightFiles:
    """What successive scans saw of one night's data files."""

    path: Path
    at_startup: bool = False                # present when the sensor started (mtime = arrival)
    files: dict[str, SeenFile] = field(default_factory=dict)
    last_change: float | None = None        # clock time of the newest change to the files
    marker: bool = False                    # the completion marker exists

    def update(self, found: dict[str, Signature], now: float, *, use_mtime: bool) -> list[float]:
        """Fold one listing (:func:`list_fits`) in; returns the arrival times of the new files.

        ``use_mtime``: the night's first scan at start-up, where a file's
        arrival is its mtime (at most ``now``) and the last change the newest
        arrival (or the last change recorded before, if later).
        """
        changed = False
        new_arrivals = []
        for rel, sig in found.items():
            f = self.files.get(rel)
            if f is None:
                arrival = min(sig[1] / 1e9, now) if use_mtime else now
                self.files[rel] = SeenFile(sig=sig, since=now, checks=1, arrival=arrival)
                new_arrivals.append(arrival)
                changed = True
            elif f.sig != sig:
                f.sig, f.since, f.checks = sig, now, 1
                changed = True
            else:
                f.checks += 1
        for rel in set(self.files) - found.keys():
            del self.files[rel]
            changed = True
        if changed:
            if use_mtime:
                newest = max((f.arrival for f in self.files.values()), default=now)
                self.last_change = max(self.last_change or -float("inf"), newest)
            else:
                self.last_change = now
        return new_arrivals

    def all_stable(self, now: float, settle: float) -> bool:
        return all(f.stable(now, settle) for f in self.files.values())

    def newest_arrival(self) -> float | None:
        return max((f.arrival for f in self.files.values()), default=None)


def ready_reason(night: NightFiles, now: float, *, settle: float, quiet: float | None,
                 dawn_due: Callable[[], float | None], started_at: float) -> str | None:
    """Why the night is ready now (one of :data:`READY_REASONS`), or None.

    ``dawn_due()`` gives the time the night is over by the dawn rule (None:
    never); it is only asked once the night holds files, all stable.  A dawn
    at or before ``started_at`` (the sensor's start) is a ``catch-up``.
    """
    if not night.files or not night.all_stable(now, settle):
        return None
    due = dawn_due()
    if due is not None and now >= due:
        return "catch-up" if due <= started_at else "dawn"
    if night.marker:
        return "marker"
    if quiet and night.last_change is not None and now - night.last_change >= quiet:
        return "quiet"
    return None
