"""The night sensor: watch RAW_ROOT and trigger the night deployment once per night.

    qlcp watch RAW_ROOT RED_ROOT [--config FILE] [--marker NAME] [--quiet SECONDS]
               [--sun-altitude DEG] [--polling] [--pattern REGEX] [--deployment NAME] [--state FILE]

Layout
    A *night* is a directory directly under RAW_ROOT (``raw/20240606_85/``)
    whose name matches ``--pattern`` (``re.search``, so anchor it: ``'^\\d{8}'``;
    default any name) and does not start with a dot.  The sensor follows the
    night's FITS files (``.fits .fit .fts .fz``; in sub-directories too; hidden
    files and directories are ignored, so ``rsync``'s ``.name.XXXXXX`` temporary
    files never count).  Other files are ignored, except the marker.

Readiness
    A night is READY when it holds at least one FITS file (an empty night is
    never ready), every FITS file is *stable* (same size and mtime at two checks
    made at different polls at least ``settle`` seconds apart; a file still
    being written is not counted) and one of these holds (reason in the log):

    ``dawn``
        The Sun has risen through ``--sun-altitude`` (default -12 deg, astropy
        ``get_sun``/``AltAz`` at ``site_lon``, ``site_lat``, ``site_ele`` of the
        config, no refraction) after the night received files in the dark: the
        decision time is the first upward crossing after the earliest file
        arrival with the Sun below the altitude (or, when no file arrived in the
        dark, after the newest arrival: a night copied by day waits for the
        next dawn).  Morning frames taken after that crossing do not delay the
        night, so choose the altitude above your morning calibrations.
    ``catch-up``
        The same decision, when that dawn passed before the sensor started: a
        night found at start-up whose files are older than the last dawn is
        ready at once.
    ``marker``
        The completion marker (``--marker DONE``) exists in the night directory.
    ``quiet``
        ``--quiet SECONDS`` passed without any change to the night's files
        (off by default).

    The *arrival* time of a file is when the sensor first saw it; for files
    already present when the sensor starts it is their mtime (never later than
    the clock).  So a night moved into RAW_ROOT while the sensor runs counts as
    received now: give it a marker if it must not wait for the next dawn.
    Where the Sun never crosses the altitude (polar summer or night) only the
    marker and quiet rules apply.

Trigger
    Then ``prefect.deployments.run_deployment(--deployment, parameters=
    {"raw_dir", "red_dir": RED_ROOT/<night>, "config_files"}, timeout=0,
    tags=["sensor", night], idempotency_key=...)`` is called once.  The call is
    an injectable callable (``trigger=``), tests need no server.  If it raises
    (API down, deployment missing) one WARNING line is logged and the night
    stays pending, retried after 5 s, 10 s, 20 s ... at most 5 min apart: a
    night is never dropped.

State and idempotency
    Per night (first seen, newest file time, status pending/triggered/gone,
    flow run id, attempts, last error, ...) in a small SQLite database,
    default ``RED_ROOT/.qlcp-sensor.sqlite``, updated in transactions; a lock
    file next to it keeps a second sensor off the same state.  Duplicate and
    burst events, restarts and catch-up scans therefore lead to exactly one
    run per night; the idempotency key (deployment, night path, first-seen
    time) also makes Prefect return the same flow run if the sensor dies
    between the API call and recording its answer.  A triggered night is never
    looked at again (late files are not processed: run ``qlcp run`` by hand).
    A *renamed* night directory counts as a new night under its new name (a
    rename before the trigger gives one run, under the new name; the old name
    is marked 'gone'; a rename after the trigger gives a second run, under the
    new name, whose cached steps make it cheap).  Nothing is ever written in
    RAW_ROOT.

Events
    A watchdog observer (inotify; ``--polling`` uses the ``PollingObserver``
    for network file systems where inotify sees nothing) watches RAW_ROOT
    (not recursive) and each pending night (recursive).  Its thread only
    queues paths; :meth:`Sensor.poll_once` does the scanning, stability
    checks, decisions and triggers, and :meth:`Sensor.run_forever` calls it
    every ``interval`` seconds and soon after events.  Events only make the
    sensor faster: every pending night is rescanned every ``rescan`` seconds
    (60), so lost events delay, never lose, a night.

Embedding (tests, an integration test with a real server)::

    sensor = Sensor("raw", "red", "site.yaml", clock=clock, trigger=fake, state_path="s.sqlite")
    sensor.start()
    sensor.poll_once(now)        # -> names of the nights triggered by this poll
    sensor.stop()

Code
    :mod:`qlcp.deployments.readiness` (the policy: file stability, the
    readiness rules, retries and ``--max-age``; pure, tested without threads or
    files), :mod:`qlcp.deployments.dawn` (Sun altitude, when a night is over),
    :mod:`qlcp.deployments.scanner` (nights and their files under RAW_ROOT),
    :mod:`qlcp.deployments.night_state` (the SQLite store); this module holds
    the :class:`Sensor`, the watcher that feeds the policy (watchdog loop,
    listings, start-up catch-up, triggering) and the arguments of ``qlcp watch``.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import numpy as np
from watchdog.events import FileSystemEvent, FileSystemEventHandler

from qlcp.core.config import load_config
from qlcp.core.errors import ConfigError, InputError
from qlcp.deployments.dawn import DEFAULT_SUN_ALTITUDE, Dawn, TimeLike, to_unix
from qlcp.deployments.night_state import DEFAULT_STATE_NAME, STATUSES, StateDB, from_iso, read_state, to_iso
from qlcp.deployments.readiness import READY_REASONS, NightFiles, Readiness
from qlcp.deployments.scanner import has_marker, list_fits, newest_file_time, night_names, night_of

__all__ = ["DEFAULT_DEPLOYMENT", "DEFAULT_STATE_NAME", "DEFAULT_SUN_ALTITUDE", "READY_REASONS", "STATUSES",
           "Dawn", "Sensor", "StateDB", "TimeLike", "add_watch_arguments", "main_watch", "prefect_trigger",
           "read_state", "run_watch", "sensor_from_args", "to_unix"]

log = logging.getLogger("qlcp.sensor")

DEFAULT_DEPLOYMENT = "process-night/process-night"


def _utc_now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- trigger
# ---------------------------------------------------------------- trigger
def prefect_trigger(name: str, *, parameters: dict, timeout: float = 0, tags: Iterable[str] | None = None,
                    idempotency_key: str | None = None) -> Any:
    """The default trigger: ``prefect.deployments.run_deployment`` (returns the Scheduled FlowRun at once).

    A trigger is any callable with this signature; it returns a flow run
    (anything with an ``id``) or the id itself, and raises when the run could
    not be created.
    """
    from prefect.deployments import run_deployment

    return run_deployment(name, parameters=parameters, timeout=timeout, tags=list(tags or []),
                          idempotency_key=idempotency_key)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
    return msg[:300]



@dataclass(kw_only=True)
class _Night(NightFiles):
    """A pending night: its files (:class:`~qlcp.deployments.readiness.NightFiles`) and the sensor's bookkeeping."""

    name: str
    key: str                                # idempotency key of its trigger
    scanned_poll: int = -1                  # poll number of the last scan (-1: never)
    attempts: int = 0
    reason: str | None = None               # ready reason logged in this session
    saved: tuple = ()                       # (n_files, last_file, first_dark) last written


class _Handler(FileSystemEventHandler):
    """Observer-thread side: only queue the paths of events."""

    def __init__(self, sensor: Sensor):
        super().__init__()
        self.sensor = sensor

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        self.sensor.notify(event.src_path)
        dest = getattr(event, "dest_path", "")
        if dest:
            self.sensor.notify(dest)


# ------------------------------------------------------------------ sensor
def _config_files(config_path) -> list[str]:
    """Absolute paths of ``config_path``: None, one path or a list of paths."""
    if config_path is None:
        files = []
    elif isinstance(config_path, (str, Path)):
        files = [config_path]
    else:
        files = list(config_path)
    return [str(Path(f).absolute()) for f in files]


def _check_options(marker: str | None, pattern: str | None, sun_altitude: float,
                   max_age: float | None) -> re.Pattern | None:
    """Raise ConfigError (one line) on a bad option; returns the compiled ``pattern`` (None: any name)."""
    if marker is not None and (not marker or "/" in marker or marker.startswith(".")):
        raise ConfigError(f"--marker {marker!r}: a plain, non-hidden file name is needed")
    try:
        compiled = re.compile(pattern) if pattern else None
    except re.error as e:
        raise ConfigError(f"--pattern {pattern!r}: bad regular expression: {e}") from None
    if not -90 <= sun_altitude <= 90:
        raise ConfigError(f"--sun-altitude {sun_altitude}: must lie in -90..90 deg")
    if max_age is not None and not max_age > 0:
        raise ConfigError(f"--max-age {max_age}: must be > 0 days")
    return compiled


class Sensor:
    """Watch RAW_ROOT, decide when each night is ready, trigger its deployment once.

    Parameters
    ----------
    raw_root, red_root : path
        Directory of night directories (only read), and of their reductions.
    config_path : path or list of paths, optional
        QLCP config file(s): the site (``site_lon``, ``site_lat``, ``site_ele``)
        and what the flow receives as ``config_files``.
    clock : callable, optional
        Returns the current time as an astropy ``Time`` or ``datetime`` (naive
        = UTC); default the system clock.  Tests inject one to jump to dawn.
    trigger : callable, optional
        ``trigger(deployment, parameters=..., timeout=0, tags=[...],
        idempotency_key=...)``; default :func:`prefect_trigger`.
    state_path : path, optional
        SQLite state; default ``red_root/.qlcp-sensor.sqlite``.
    marker : str, optional
        Name of the completion marker file in a night directory.
    quiet : float, optional
        Seconds without change after which a night is ready (None: off).
    sun_altitude : float
        Dawn is the Sun rising through this altitude (deg).
    pattern : str, optional
        Regex (``re.search``) night directory names must match.
    deployment : str
        ``flow-name/deployment-name`` to run.
    watch : bool
        Start a watchdog observer in :meth:`start` (False: polls only, for tests).
    polling : bool
        Use watchdog's ``PollingObserver`` (network file systems).
    polling_timeout : float
        Seconds between the polling observer's snapshots.
    settle : float
        A file is stable when unchanged at two polls at least this many seconds apart.
    rescan : float
        Seconds between full rescans of every pending night (events may be lost).
    backoff : (float, float)
        First retry delay and the largest one (s) after a failed trigger.
    """

    def __init__(self, raw_root: str | Path, red_root: str | Path, config_path=None, *,
                 clock: Callable[[], TimeLike] | None = None, trigger: Callable[..., Any] | None = None,
                 state_path: str | Path | None = None, marker: str | None = None, quiet: float | None = None,
                 sun_altitude: float = DEFAULT_SUN_ALTITUDE, pattern: str | None = None,
                 deployment: str = DEFAULT_DEPLOYMENT, watch: bool = True, polling: bool = False,
                 polling_timeout: float = 1.0, settle: float = 2.0, rescan: float = 60.0,
                 backoff: tuple[float, float] = (5.0, 300.0), max_age: float | None = None):
        self.raw_root = Path(raw_root).absolute()
        self.red_root = Path(red_root).absolute()
        if not self.raw_root.is_dir():
            raise InputError(f"{raw_root}: RAW_ROOT is not a directory")
        self.config_files = _config_files(config_path)
        cfg = load_config(self.config_files)
        self.state_path = Path(state_path).absolute() if state_path else self.red_root / DEFAULT_STATE_NAME
        real_raw = self.raw_root.resolve()
        for what, p in (("RED_ROOT", self.red_root), ("the state database", self.state_path)):
            if p.resolve() == real_raw or p.resolve().is_relative_to(real_raw):
                raise InputError(f"{p}: {what} must not be inside RAW_ROOT {self.raw_root} (never written)")
        self.pattern = _check_options(marker, pattern, sun_altitude, max_age)
        self.marker = marker
        self.deployment = deployment
        self.clock = clock or _utc_now
        self.trigger = trigger or prefect_trigger
        self.watch = watch
        self.polling = polling
        self.polling_timeout = float(polling_timeout)
        self.rescan = float(rescan)
        self.site = (cfg.site_lon, cfg.site_lat, cfg.site_ele)
        self.dawn = Dawn(cfg.site_lon, cfg.site_lat, cfg.site_ele, altitude=sun_altitude)
        self.policy = Readiness(self.dawn, settle=settle, quiet=quiet, backoff=backoff,
                                max_age=None if max_age is None else float(max_age) * 86400.0,
                                on_dawn_error=self._dawn_failed)

        self._events: queue.Queue[str] = queue.Queue()
        self._wake = threading.Event()
        self._nights: dict[str, _Night] = {}
        self._done: set[str] = set()            # triggered nights: never looked at again
        self._old: dict[str, int] = {}          # nights older than max_age: directory mtime when judged
        self._db: StateDB | None = None
        self._lock_fd: int | None = None
        self._observer = None
        self._watches: dict[str, Any] = {}
        self._started = False
        self._started_at = 0.0
        self._in_startup = False
        self._poll = 0
        self._last_full = -np.inf
        self._awaiting = False                  # some file awaits its second check
        self._root_error: str | None = None
        self._dawn_errors: set[str] = set()     # nights whose dawn rule failed (logged once)

    # ---------------------------------------------------------- lifecycle
    def start(self) -> Sensor:
        """Open the state, start the observer and scan RAW_ROOT (catch-up).  Idempotent."""
        if self._started:
            return self
        now = self._now()
        self.red_root.mkdir(parents=True, exist_ok=True)
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._db = StateDB(self.state_path)
            old_root = self._db.meta("raw_root")
            if old_root and old_root != str(self.raw_root):
                log.warning("state %s was kept for RAW_ROOT %s, now %s: nights are matched by name",
                            self.state_path, old_root, self.raw_root)
            self._db.set_meta("raw_root", str(self.raw_root))
            self._done = {r["name"] for r in self._db.rows("triggered")}
            self._started_at = now
            self._started = True
            if self.watch:
                self._start_observer()
            self._in_startup = True
            try:
                self._discover(now)
                for night in list(self._nights.values()):
                    self._scan(night, now)
            finally:
                self._in_startup = False
        except BaseException:
            self.stop()
            raise
        if self.policy.max_age is None and len(self._nights) > 5:
            log.warning("%d nights pending at start-up: each will be reduced at its dawn; --max-age DAYS skips "
                        "old ones", len(self._nights))
        obs = "no observer" if self._observer is None else ("polling observer" if self.polling else "inotify observer")
        log.info("watching %s (%s): %d pending and %d triggered nights known; dawn = Sun above %.1f deg at "
                 "lon %.4f lat %.4f; marker %s; quiet %s; state %s", self.raw_root, obs, len(self._nights),
                 len(self._done), self.dawn.altitude, self.site[0], self.site[1], self.marker or "off",
                 f"{self.policy.quiet:g} s" if self.policy.quiet else "off", self.state_path)
        return self

    def stop(self) -> None:
        """Stop the observer, close the state database and release its lock.  Idempotent."""
        obs, self._observer = self._observer, None
        if obs is not None:
            try:
                obs.stop()
                obs.join(timeout=5.0)
            except Exception as e:   # noqa: BLE001 - stopping must not fail
                log.debug("observer stop: %s", e)
        self._watches.clear()
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)        # releases the flock
            self._lock_fd = None
        self._nights.clear()
        self._started = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def notify(self, path: str | bytes) -> None:
        """Note a file-system event at ``path``; thread-safe (the observer thread calls it)."""
        self._events.put(os.fsdecode(path))
        self._wake.set()

    def wake(self) -> None:
        """Make :meth:`run_forever` poll now (e.g. from a signal handler)."""
        self._wake.set()

    def state(self) -> list[dict]:
        """Every night in the state database, as dicts."""
        if self._db is None:
            return read_state(self.state_path)
        return self._db.rows()

    # ---------------------------------------------------------- main loop
    def run_forever(self, stop_event: threading.Event | None = None, interval: float = 5.0) -> None:
        """Poll every ``interval`` s, soon after events, until ``stop_event`` is set.

        While files await their second (stability) check the next poll comes
        after ``settle`` s.  An error in one poll is logged and the loop goes on.
        """
        stop_event = stop_event or threading.Event()
        self.start()
        min_gap = min(0.5, interval)
        while not stop_event.is_set():
            t0 = time.monotonic()
            self._wake.clear()
            try:
                self.poll_once()
            except Exception as e:
                log.error("poll failed: %s", _one_line(e))
                log.debug("poll failure", exc_info=True)
            wait = min(interval, max(self.policy.settle, 0.1)) if self._awaiting else interval
            deadline = t0 + wait
            while not stop_event.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if self._wake.wait(min(left, 0.2)):
                    # an event: poll soon, but at most every min_gap (bursts of events)
                    stop_event.wait(max(0.0, t0 + min_gap - time.monotonic()))
                    break

    def poll_once(self, now: TimeLike | None = None) -> list[str]:
        """One deterministic step: scan, check stability, decide, trigger.

        Parameters
        ----------
        now : astropy Time, datetime or Unix seconds, optional
            The current time (default: the clock).

        Returns
        -------
        list of str
            Names of the nights triggered in this poll.
        """
        if not self._started:
            self.start()
        now = self._now() if now is None else to_unix(now)
        self._poll += 1
        dirty = self._drain_events()
        full = self._observer is None or now - self._last_full >= self.rescan
        if full:
            self._last_full = now
        self._discover(now)
        for night in list(self._nights.values()):
            due = full or night.name in dirty or night.scanned_poll < 0
            if due or not night.all_stable(now, self.policy.settle):
                self._scan(night, now)
        triggered = [n.name for n in list(self._nights.values()) if self._consider(n, now)]
        self._awaiting = any(not n.all_stable(now, self.policy.settle) for n in self._nights.values())
        return triggered

    # ------------------------------------------------------------ helpers
    def _now(self) -> float:
        return to_unix(self.clock())

    def _lock(self) -> None:
        import fcntl

        path = f"{self.state_path}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(f"{self.state_path}: another qlcp watch uses this state database") from None
        self._lock_fd = fd

    def _start_observer(self) -> None:
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        obs = PollingObserver(timeout=self.polling_timeout) if self.polling else Observer()
        try:
            obs.schedule(_Handler(self), str(self.raw_root), recursive=False)
            obs.start()
        except OSError as e:
            if self.polling:
                raise
            log.warning("inotify observer failed (%s): using the polling observer", _one_line(e))
            self.polling = True
            obs = PollingObserver(timeout=self.polling_timeout)
            obs.schedule(_Handler(self), str(self.raw_root), recursive=False)
            obs.start()
        self._observer = obs

    def _watch_night(self, night: _Night) -> None:
        if self._observer is None or night.name in self._watches:
            return
        try:
            self._watches[night.name] = self._observer.schedule(_Handler(self), str(night.path), recursive=True)
        except Exception as e:   # noqa: BLE001 - e.g. inotify watch limit: rescans still find the files
            log.warning("night %s: cannot watch (%s); relying on rescans every %g s", night.name,
                        _one_line(e), self.rescan)

    def _unwatch_night(self, name: str) -> None:
        w = self._watches.pop(name, None)
        if w is not None and self._observer is not None:
            try:
                self._observer.unschedule(w)
            except Exception as e:   # noqa: BLE001
                log.debug("unschedule %s: %s", name, e)

    def _drain_events(self) -> set[str]:
        names = set()
        root = str(self.raw_root)
        while True:
            try:
                p = self._events.get_nowait()
            except queue.Empty:
                return names
            name = night_of(p, root)
            if name is not None:                # None: RAW_ROOT itself, listed every poll anyway
                names.add(name)

    def _night_names(self) -> set[str] | None:
        try:
            names = night_names(self.raw_root, self.pattern)
        except OSError as e:
            msg = _one_line(e)
            if msg != self._root_error:
                log.warning("cannot list RAW_ROOT %s: %s", self.raw_root, msg)
                self._root_error = msg
            return None
        self._root_error = None
        return names

    def _discover(self, now: float) -> None:
        """Register new night directories; mark vanished pending ones 'gone'."""
        names = self._night_names()
        if names is None:
            return
        skipped = []
        for name in sorted(names - self._nights.keys() - self._done):
            path = self.raw_root / name
            row = self._db.get(name)
            if row is None:
                known_old = name in self._old
                if self._too_old(path, now):
                    if not known_old:           # say so once
                        skipped.append(name)
                    continue
            self._register(name, path, row, now)
        if skipped:
            log.info("%d night(s) with no file newer than --max-age %g d: not reduced (%s%s); the reprocess "
                     "deployment reduces old nights", len(skipped), self.policy.max_age / 86400.0,
                     ", ".join(skipped[:5]), ", ..." if len(skipped) > 5 else "")
        for name in sorted(set(self._nights) - names):
            self._gone(name)
        if self._in_startup:    # pending in the state, absent now (moved while the sensor was down)
            for row in self._db.rows("pending"):
                if row["name"] not in names:
                    self._gone(row["name"])

    def _register(self, name: str, path: Path, row: dict | None, now: float) -> None:
        """Follow the night ``name`` as pending (new, or back after 'gone'), unless already triggered."""
        if row is None:
            key = f"qlcp-sensor:{self.deployment}:{path}:{to_iso(now)}"
            self._db.insert(name, str(path), str(self.red_root / name), now, key)
            row = self._db.get(name)
            log.info("new night %s: %s", name, path)
        elif row["status"] == "triggered":
            self._done.add(name)
            return
        elif row["status"] == "gone":
            self._db.update(name, status="pending", raw_dir=str(path))
            log.info("night %s is back: %s", name, path)
        night = _Night(name=name, path=path, key=row["idempotency_key"], at_startup=self._in_startup,
                       last_change=from_iso(row["last_file"]), first_dark=from_iso(row["first_dark"]),
                       attempts=int(row["attempts"]), next_attempt=from_iso(row["next_attempt"]))
        night.saved = (row["n_files"], row["last_file"], row["first_dark"])
        self._nights[name] = night
        self._watch_night(night)

    def _too_old(self, path: Path, now: float) -> bool:
        """A night never registered whose newest file (or, empty, the directory) is older than
        ``max_age``: skipped, so a sensor started on years of nights does not reduce them all.
        Judged again only when the directory changes (a file added or removed)."""
        if self.policy.max_age is None:
            return False
        try:
            dm = path.stat().st_mtime_ns
        except OSError:
            return False
        if self._old.get(path.name) == dm:
            return True
        try:
            newest = newest_file_time(path)
        except OSError:
            return False
        if newest is None:
            newest = dm / 1e9
        if self.policy.too_old(newest, now):
            self._old[path.name] = dm
            return True
        self._old.pop(path.name, None)
        return False

    def _gone(self, name: str) -> None:
        self._nights.pop(name, None)
        self._unwatch_night(name)
        self._db.update(name, status="gone")
        log.info("night %s vanished from %s (renamed or removed): not triggered", name, self.raw_root)

    def _scan(self, night: _Night, now: float) -> None:
        """Look at the night's files: new, changed, removed, marker; record what changed."""
        if night.scanned_poll == self._poll:
            return                              # at most one check per poll
        use_mtime = night.scanned_poll < 0 and night.at_startup
        try:
            found = list_fits(night.path)
        except FileNotFoundError:
            self._gone(night.name)
            return
        except OSError as e:
            log.warning("night %s: cannot scan (%s)", night.name, _one_line(e))
            return
        self.policy.observe(night, found, has_marker(night.path, self.marker), now, use_mtime=use_mtime)
        night.scanned_poll = self._poll
        saved = (len(night.files), to_iso(night.last_change), to_iso(night.first_dark))
        if saved != night.saved:
            self._db.update(night.name, n_files=saved[0], last_file=saved[1], first_dark=saved[2])
            night.saved = saved

    def dawn_due(self, name: str) -> float | None:
        """Unix time at which the night ``name`` becomes ready by dawn (None: unknown or never)."""
        night = self._nights.get(name)
        return None if night is None else self.policy.dawn_due(night)

    def _dawn_failed(self, night: NightFiles, e: BaseException) -> None:
        """Log (once per night) that the dawn rule failed for ``night``: it then waits for its
        marker or quiet time (or the next poll, when the failure passes) instead of stopping the
        sensor (``qlcp up`` exited with 'internal error: ValueError' on an aged IERS table)."""
        if night.name not in self._dawn_errors:
            self._dawn_errors.add(night.name)
            log.error("night %s: the dawn rule failed (%s); it waits for its marker or quiet time "
                      "(--marker, --quiet) meanwhile", night.name, _one_line(e))
            log.debug("dawn rule failure", exc_info=True)

    def _consider(self, night: _Night, now: float) -> bool:
        """Trigger the night if the policy says it is ready (and not backing off); True when triggered."""
        decision = self.policy.decide(night, now, started_at=self._started_at)
        if not decision.ready:
            return False
        if night.scanned_poll != self._poll:   # a fresh look before the one-time decision
            self._scan(night, now)
            if night.name not in self._nights:
                return False
            decision = self.policy.decide(night, now, started_at=self._started_at)
            if not decision.ready:
                return False
        reason = decision.reason
        if night.reason is None:
            night.reason = reason
            newest = max(f.arrival for f in night.files.values())
            log.info("night %s ready (%s): %d FITS files, newest arrived %s", night.name, reason,
                     len(night.files), to_iso(newest))
        return self._trigger(night, reason, now)

    def _trigger(self, night: _Night, reason: str, now: float) -> bool:
        params = {"raw_dir": str(night.path), "red_dir": str(self.red_root / night.name),
                  "config_files": list(self.config_files)}
        attempt = self._db.begin_attempt(night.name, reason, now)
        night.attempts = attempt
        try:
            result = self.trigger(self.deployment, parameters=params, timeout=0, tags=["sensor", night.name],
                                  idempotency_key=night.key)
        except Exception as e:   # noqa: BLE001 - API down or refused: keep the night, retry later
            night.next_attempt = self.policy.retry_at(attempt, now)
            delay = night.next_attempt - now
            err = _one_line(e)
            self._db.update(night.name, last_error=err, next_attempt=to_iso(night.next_attempt))
            log.warning("night %s: trigger of %s failed (attempt %d: %s); retry in %.0f s", night.name,
                        self.deployment, attempt, err, delay)
            return False
        run_id = getattr(result, "id", result)
        run_id = None if run_id is None else str(run_id)
        self._db.update(night.name, status="triggered", flow_run_id=run_id, triggered_at=to_iso(now),
                        next_attempt=None)
        self._nights.pop(night.name, None)
        self._done.add(night.name)
        self._unwatch_night(night.name)
        log.info("night %s: triggered %s, flow run %s (%s, attempt %d)", night.name, self.deployment, run_id,
                 reason, attempt)
        return True


# --------------------------------------------------------------------- CLI
def add_watch_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the arguments of ``qlcp watch`` to ``parser`` (a sub-command parser)."""
    parser.add_argument("raw_root", metavar="RAW_ROOT", help="directory of night directories (only read)")
    parser.add_argument("red_root", metavar="RED_ROOT", help="reductions go to RED_ROOT/<night>")
    parser.add_argument("--config", metavar="FILE", action="append",
                        help="QLCP config (site_lon/lat/ele; passed to the flow); repeatable, later wins")
    parser.add_argument("--marker", metavar="NAME", default=None,
                        help="completion marker file (e.g. DONE): its appearance makes a night ready")
    parser.add_argument("--quiet", metavar="SECONDS", type=float, default=None,
                        help="a night is ready after this long without new files (default: off)")
    parser.add_argument("--sun-altitude", metavar="DEG", type=float, default=DEFAULT_SUN_ALTITUDE,
                        dest="sun_altitude", help="dawn = the Sun rising above this altitude (default -12)")
    parser.add_argument("--polling", action="store_true",
                        help="poll the file system (NFS/SMB mounts, where inotify sees nothing)")
    parser.add_argument("--pattern", metavar="REGEX", default=None,
                        help="night directory names must match this (re.search; default: any directory)")
    parser.add_argument("--deployment", metavar="NAME", default=DEFAULT_DEPLOYMENT,
                        help=f"deployment to run per night (default {DEFAULT_DEPLOYMENT})")
    parser.add_argument("--state", metavar="FILE", default=None,
                        help=f"sensor state database (default RED_ROOT/{DEFAULT_STATE_NAME})")
    parser.add_argument("--max-age", metavar="DAYS", type=float, default=None, dest="max_age",
                        help="skip night directories whose newest file is older than this (e.g. a sensor "
                             "started on years of nights); default: reduce every night found")
    return parser


def sensor_from_args(args: argparse.Namespace, **kwargs) -> Sensor:
    """A :class:`Sensor` configured from parsed ``qlcp watch`` arguments (``kwargs`` override)."""
    opts = {"config_path": args.config or None, "state_path": args.state, "marker": args.marker,
            "quiet": args.quiet, "sun_altitude": args.sun_altitude, "pattern": args.pattern,
            "deployment": args.deployment, "polling": args.polling, "max_age": getattr(args, "max_age", None)}
    opts.update(kwargs)
    return Sensor(args.raw_root, args.red_root, **opts)


def _setup_logging() -> None:
    if not logging.getLogger().handlers and not logging.getLogger("qlcp").handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)


def run_watch(args: argparse.Namespace, *, trigger: Callable[..., Any] | None = None,
              stop_event: threading.Event | None = None, interval: float = 5.0, **sensor_kwargs) -> int:
    """Run ``qlcp watch`` until SIGTERM or SIGINT; returns the exit status (0).

    Bad arguments raise :class:`~qlcp.core.errors.QLCPError` (one line).
    ``trigger``, ``stop_event`` and ``sensor_kwargs`` (extra :class:`Sensor`
    options) are for tests and embedding.
    """
    _setup_logging()
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # a temporary ephemeral server cannot know the deployment: fail (and retry) instead of starting one
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_ENABLED", "false")
    if trigger is None and not os.environ.get("PREFECT_API_URL"):
        log.warning("PREFECT_API_URL is not set: triggers use the active Prefect profile's API, if any")
    sensor = sensor_from_args(args, trigger=trigger, **sensor_kwargs)
    stop_event = stop_event or threading.Event()

    def _on_signal(signum, _frame):
        log.info("%s: stopping", signal.Signals(signum).name)
        stop_event.set()
        sensor.wake()

    old = {}
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT):
            old[s] = signal.signal(s, _on_signal)
    try:
        sensor.start()
        sensor.run_forever(stop_event, interval=interval)
    finally:
        sensor.stop()
        for s, h in old.items():
            signal.signal(s, h)
    log.info("sensor stopped")
    return 0


main_watch = run_watch
