"""One run per output directory, and a clean start after a killed one.

Both drivers (``qlcp.core.pipeline.run`` and the Prefect flow
``qlcp.flows.night.process_night``) open their night with :func:`guarded_run`:

* the directories are checked (:func:`check_dirs`: nothing is
  created inside the raw directory);
* ``{red}/.qlcp.lock`` is locked (``flock``, exclusive, held until the run ends)
  and says who holds it: pid, host, start time.  A second run on the same output
  directory stops at once with :class:`~qlcp.core.errors.RunLockedError` naming
  the holder.  The kernel releases the lock when its holder dies, so a killed
  run never blocks the next one;
* the temporaries of :func:`qlcp.core.io.atomic_path` that a killed run left under
  ``red`` are removed (only their own name pattern, never under the raw directory
  or under another run's output directory nested in this one).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import logging
import os
import re
import socket
from pathlib import Path

from .errors import InputError, RunLockedError, output_error
from .io import LOCK_NAME, TEMP_NAME, link_refused

log = logging.getLogger("qlcp.runguard")


#: lock file descriptors this process holds (closed in forked children, which must not keep them)
_held: set[int] = set()
_at_fork_registered = False


def _close_in_child() -> None:
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


def _open_lock(path: Path) -> int:
    """Open (create) the lock file, never through a symbolic link: a link planted at
    ``RED/.qlcp.lock`` would have the run truncate and write its target."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise link_refused(path) from None
        err = output_error(e, path.parent)
        if err is not None:
            raise err from e
        raise


def holder(path: str | Path) -> str:
    """What the lock file at ``path`` says about its holder (one line), or ``"unknown"``."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "unknown"


@contextlib.contextmanager
def run_lock(red: str | Path):
    """Hold the exclusive lock of the output directory ``red`` for the block.

    Parameters
    ----------
    red : str or Path
        An existing output directory.

    Yields
    ------
    Path
        The lock file, ``{red}/.qlcp.lock``, holding ``pid N on HOST since ISO-TIME``.

    Raises
    ------
    RunLockedError
        When another run (of this process or another, on this host or one sharing the
        file system) holds it; the message names the holder.
    OutputError
        When the lock file cannot be created (read-only, full, no permission).
    """
    global _at_fork_registered
    path = Path(red) / LOCK_NAME
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunLockedError(f"{red}: in use by another run ({holder(path)}); "
                             f"wait for it to finish or stop it") from None
    if not _at_fork_registered:
        os.register_at_fork(after_in_child=_close_in_child)
        _at_fork_registered = True
    _held.add(fd)
    try:
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {now}\n".encode(), 0)
    except OSError as e:
        _release(fd)
        err = output_error(e, path)
        if err is not None:
            raise err from e
        raise
    try:
        yield path
    finally:
        _release(fd)


def _release(fd: int) -> None:
    """Unlock (even if a forked child still has the descriptor) and close."""
    _held.discard(fd)
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        os.close(fd)


def remove_stale_temps(red: str | Path, keep_out=()) -> list[Path]:
    """Remove the temporaries of :func:`qlcp.core.io.atomic_path` under ``red``.

    Call it only while holding ``red``'s lock: then no other run is writing them.

    Parameters
    ----------
    red : str or Path
        The output directory.
    keep_out : iterable of Path
        Directories not to enter (the raw directory, when it lies under ``red``).
        Directories holding their own lock file (another night's output) are not
        entered either, nor symbolic links.

    Returns
    -------
    list of Path
        The files removed.
    """
    red = Path(red)
    skip = {Path(p).resolve() for p in keep_out}
    removed = []
    for top, dirs, files in os.walk(red):
        here = Path(top)
        dirs[:] = [d for d in dirs if not (here / d).is_symlink() and (here / d).resolve() not in skip
                   and not (here / d / LOCK_NAME).exists()]
        for f in files:
            p = here / f
            if TEMP_NAME.match(f) and not p.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run under %s", len(removed), red)
    return removed


def check_dirs(raw_dir: str | Path, red_dir: str | Path) -> tuple[Path, Path]:
    """Validate the directories: raw exists; red is neither raw nor inside it."""
    raw = Path(raw_dir).expanduser()
    red = Path(red_dir).expanduser()
    if not raw.is_dir():
        raise InputError(f"{raw}: raw directory not found")
    nights = nights_inside(raw)
    if nights:
        shown = ", ".join(nights[:5]) + (f", ... ({len(nights)} in all)" if len(nights) > 5 else "")
        raise InputError(f"{raw}: a directory of nights, not one night (no FITS frame at its top; nights "
                         f"inside: {shown}): give one night's directory, e.g. {raw / nights[0]}")
    r_raw, r_red = raw.resolve(), red.resolve()
    if r_red == r_raw or r_raw in r_red.parents:
        raise InputError(f"{red}: the output directory must not be the raw directory or inside it")
    try:
        red.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{red}: cannot create output directory ({e.strerror})") from None
    # absolute, as on the Prefect path (the CLI resolves them): summary.json's paths are one form on both
    raw, red = r_raw, r_red
    return raw, red


#: a sub-directory named like a night: 20250601, 2025-06-01, 2025_06_01 (possibly with a prefix or suffix)
_NIGHT_DIR = re.compile(r"(?<!\d)(19|20)\d\d[-_]?(0[1-9]|1[0-2])[-_]?(0[1-9]|[12]\d|3[01])(?!\d)")


def nights_inside(raw: Path) -> list[str]:
    """Sub-directories of ``raw`` named like nights and holding FITS frames, when ``raw`` itself holds
    none at its top: a directory of nights given as one night (``[]`` otherwise)."""
    from .io import FITS_SUFFIXES

    def fits_in(d: Path, deep: bool) -> bool:
        it = d.rglob("*") if deep else d.iterdir()
        return any(p.name.lower().endswith(FITS_SUFFIXES) and not p.name.startswith(".") for p in it)

    try:
        if fits_in(raw, deep=False):
            return []
        subs = sorted(d for d in raw.iterdir() if d.is_dir() and _NIGHT_DIR.search(d.name))
        return [d.name for d in subs if fits_in(d, deep=True)]
    except OSError:
        return []


@contextlib.contextmanager
def guarded_run(raw_dir: str | Path, red_dir: str | Path):
    """Check the directories, lock the output directory, remove a killed run's temporaries.

    Yields
    ------
    (Path, Path)
        The raw and output directories (as :func:`check_dirs` returns them).
    """
    raw, red = check_dirs(raw_dir, red_dir)
    with run_lock(red):
        remove_stale_temps(red, keep_out=[raw])
        yield raw, red
