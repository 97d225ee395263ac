"""The process-wide settings a QLCP run needs, made by one explicit call where a run starts.

Importing ``qlcp.core`` (or any of its modules) changes nothing outside it: not
astropy's IERS configuration, not the process umask, not sep's global buffer
limits.  A run changes what it needs by calling :func:`configure_run` once at
its start, in every process that does the run's work:

* the plain driver, :func:`qlcp.core.pipeline.run` (``qlcp run --no-prefect``);
* the Prefect night flow, ``qlcp.flows.night.process_night``;
* each worker process of the frame pool (``qlcp.core.parallel``), and its fork
  server (``qlcp.core._preload``).

The settings last for the rest of the process (a run's worker processes and
its Prefect threads share them); calling again is cheap and changes nothing.

Time, whatever today's date: :func:`offline_time` (part of :func:`configure_run`,
and called first by every other entry point: the ``qlcp`` command before any
sub-command, the night sensor and its dawn rule, ``qlcp serve``/``up``, the
campaign flow) makes astropy compute with the tables it has, offline: no
download, no error for dates beyond them, and one logged warning per process
tree when they are out of date (:func:`table_status`).  ``qlcp update-tables``
installs fresh ones (:func:`install_table`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

log = logging.getLogger("qlcp.time")

#: sep's source-extraction pixel stack and deblending sub-object limit are at least these
#: during a run (sep's own defaults, the values photometry was tuned with; the photometry
#: step enlarges them itself for a frame that needs more, and a larger value is kept)
SEP_MIN_PIXSTACK = 300_000
SEP_MIN_SUB_OBJECTS = 1024


def configure_run() -> None:
    """Make this process ready for a QLCP run (see the module docstring).

    * No network, whatever the date (:func:`offline_time`): astropy never downloads
      Earth-orientation (IERS) or leap-second tables and computes with those it has
      for dates beyond them; a stale table only degrades UT1-UTC, irrelevant at our 0.1 s.
    * The binary cache of those tables (``qlcp.core.timing.use_cached_iers``,
      under ``$QLCP_CACHE_DIR`` or ``$QLCP_HOME/cache``) is switched on: the first
      time the run needs the tables it installs them from the cache (writing it
      if absent).  Without this call QLCP leaves astropy's tables alone.
    * sep's global buffer limits are at least :data:`SEP_MIN_PIXSTACK` and
      :data:`SEP_MIN_SUB_OBJECTS`.

    The process umask is not changed (output files get the permissions it
    gives: ``qlcp.core.io.atomic_path`` reads it without setting it).
    """
    import sep

    offline_time()
    if sep.get_extract_pixstack() < SEP_MIN_PIXSTACK:
        sep.set_extract_pixstack(SEP_MIN_PIXSTACK)
    if sep.get_sub_object_limit() < SEP_MIN_SUB_OBJECTS:
        sep.set_sub_object_limit(SEP_MIN_SUB_OBJECTS)


# ---------------------------------------------------------------- time, offline
#: the age (days) of the IERS-A predictions beyond which astropy itself calls them stale (its default
#: ``auto_max_age``, where it would download, or refuse to compute offline)
STALE_DAYS = 30.0
#: set in the environment once a process has warned about out-of-date tables: the processes it
#: starts (``qlcp serve`` under ``qlcp up``, flow-run subprocesses, pool workers) say it at INFO
ANNOUNCED_ENV = "QLCP_TABLES_WARNED"

_announced = False


@dataclass(frozen=True)
class TableStatus:
    """How old this process's time tables are, on its clock (:func:`table_status`)."""

    now: float                  #: the clock (Unix s) the ages are counted on
    iers_source: str            #: the IERS-A file in use (bundled or installed by ``qlcp update-tables``)
    predicted_from: str         #: first date (ISO) of the IERS-A predictions: measured values end there
    iers_age_days: float        #: days from ``predicted_from`` to ``now``
    iers_last: str              #: last date of the table (predictions end): beyond it values are held
    leap_expires: str           #: date the leap-second list in use expires
    leap_expired: bool

    @property
    def stale(self) -> bool:
        return self.iers_age_days > STALE_DAYS or self.leap_expired

    def message(self) -> str:
        """The one warning: what is old, what QLCP does about it, and why it does not matter."""
        old = []
        if self.iers_age_days > STALE_DAYS:
            old.append(f"the Earth-rotation table (IERS-A, measured to {self.predicted_from}, predicted to "
                       f"{self.iers_last}) is {self.iers_age_days:.0f} days old")
        if self.leap_expired:
            old.append(f"the leap-second list expired on {self.leap_expires}")
        return (f"time tables out of date: {' and '.join(old)}. Computing offline with them (no download): "
                "UT1-UTC stays within 0.9 s and beyond the table is held at its last value, which moves the "
                "Sun's altitude for dawn and the ALT/AZ/AIRMASS of frames by < 0.004 deg and HJD/BJD by "
                "microseconds; only a leap second announced after the list would shift JD/HJD/BJD by 1 s "
                "(the last one was 2016-12-31). Fresh tables: qlcp update-tables finals2000A.all "
                "Leap_Second.dat")


def _quiet_astropy_about_tables() -> None:
    """Astropy's and ERFA's own per-call warnings about dates beyond the tables (``dubious year``,
    polar motion from the 50-year mean) repeat what the one warning of :func:`offline_time` says."""
    from astropy.utils.exceptions import AstropyWarning
    from erfa import ErfaWarning

    warnings.filterwarnings("ignore", message=r".*dubious year", category=ErfaWarning)
    warnings.filterwarnings("ignore", message=r"Tried to get polar motions for times after IERS data",
                            category=AstropyWarning)
    warnings.filterwarnings("ignore", message=r"leap-second file is expired", category=AstropyWarning)


def _use_installed_leap_seconds() -> None:
    """The leap-second list ``qlcp update-tables`` installed, if any, becomes astropy's candidate
    (and ERFA's table at once, when it expires later than the one ERFA has)."""
    from astropy.utils import iers

    from . import timing

    path = timing.installed_table(timing.LEAP_SECONDS_NAME)
    if path is None or iers.conf.system_leap_second_file == str(path):
        return
    iers.conf.system_leap_second_file = str(path)
    try:
        import erfa

        erfa.leap_seconds.update(iers.LeapSeconds.open(str(path)))
    except Exception as e:  # noqa: BLE001 - a damaged file: the bundled list, and a debug line
        log.debug("installed leap-second list %s unusable: %s", path, e)


def table_status(now: float | None = None) -> TableStatus:
    """The ages of the IERS-A table and the leap-second list in use, at ``now`` (Unix s, default the clock).

    Loads the IERS-A table as a run does (``qlcp.core.timing.use_cached_iers``: milliseconds once
    cached).  Call after :func:`offline_time` (which calls it), so that nothing is downloaded.
    """
    from astropy.time import Time
    from astropy.utils import iers

    from . import timing

    now = time.time() if now is None else float(now)
    timing.use_cached_iers()
    table = iers.IERS_Auto.open()
    pred_mjd = float(table.meta["predictive_mjd"])
    last_mjd = float(table["MJD"][-1].value if hasattr(table["MJD"][-1], "value") else table["MJD"][-1])
    now_mjd = now / 86400.0 + 40587.0
    leap = iers.LeapSeconds.auto_open()
    expires_mjd = float(leap.expires.mjd)

    def iso(mjd):
        return Time(mjd, format="mjd", scale="tai").iso[:10]

    return TableStatus(now=now, iers_source=str(table.meta.get("data_path", timing._iers_a_file())),
                       predicted_from=iso(pred_mjd), iers_age_days=now_mjd - pred_mjd, iers_last=iso(last_mjd),
                       leap_expires=iso(expires_mjd), leap_expired=now_mjd > expires_mjd)


def offline_time(now: float | None = None) -> TableStatus | None:
    """Make astropy compute times and coordinates offline with the tables it has, whatever the date.

    Every QLCP entry point calls this first (idempotent, cheap after the first call):

    * no download ever (``auto_download = False``) and no maximum age
      (``auto_max_age = None``): astropy neither fetches a new IERS-A or leap-second
      table nor raises ("IERS_Auto using predictive values that are more than 30 days
      old") when the clock is past the tables; dates beyond them are computed with
      UT1-UTC and polar motion held at the tables' edge (``iers_degraded_accuracy =
      "warn"``);
    * fresh tables installed by ``qlcp update-tables`` (:func:`install_table`) are used;
    * the IERS-A table comes from QLCP's binary cache (``qlcp.core.timing.use_cached_iers``);
    * ONE warning per process tree (logger ``qlcp.time``) when the tables are out of
      date on this clock (:class:`TableStatus`: IERS-A predictions more than
      :data:`STALE_DAYS` old, or the leap-second list expired), saying by how much
      that matters; astropy's and ERFA's own repeated warnings about it are silenced.
      A process started by one that warned (:data:`ANNOUNCED_ENV`) says it at INFO.

    Returns the tables' status the first time (None on later calls).
    """
    global _announced
    from astropy.utils import iers

    from . import timing

    iers.conf.auto_download = False
    iers.conf.auto_max_age = None
    iers.conf.iers_degraded_accuracy = "warn"
    _quiet_astropy_about_tables()
    _use_installed_leap_seconds()
    timing.enable_iers_cache()
    if _announced:
        return None
    _announced = True
    try:
        status = table_status(now)
    except Exception as e:  # noqa: BLE001 - the check must never stop a run
        log.debug("time tables: status unknown (%s: %s)", type(e).__name__, e)
        return None
    if status.stale:
        timing.tables_announced = True
        inherited = os.environ.get(ANNOUNCED_ENV) == "1"
        log.log(logging.INFO if inherited else logging.WARNING, status.message())
        os.environ[ANNOUNCED_ENV] = "1"
    return status


def install_table(path: str | Path, now: float | None = None) -> tuple[str, Path, str]:
    """Install a fresh IERS-A (``finals2000A.all``/``.data``) or leap-second list into QLCP's cache.

    The file is parsed first (astropy's own readers); junk, or a table older than the one in
    use, is refused with one line (:class:`~qlcp.core.errors.InputError`).  Later processes
    (:func:`offline_time`) use it instead of the bundled one.

    Returns
    -------
    (kind, destination, what): ``"IERS-A"`` or ``"leap seconds"``, where it went, and its dates.
    """
    from astropy.time import Time
    from astropy.utils import iers

    from . import timing
    from .io import atomic_path

    src = Path(path)
    if not src.is_file():
        raise InputError(f"{src}: no such file")
    try:
        leap = iers.LeapSeconds.open(str(src))
        if leap.expires is None or len(leap) < 20:
            raise ValueError("no expiry date or too few leap seconds")
    except Exception:  # noqa: BLE001 - not a leap-second list: an IERS-A table?
        leap = None
    if leap is not None:
        current = iers.LeapSeconds.auto_open().expires
        if leap.expires < current:
            raise InputError(f"{src}: leap-second list expires {leap.expires.iso[:10]}, before the one in use "
                             f"({current.iso[:10]}): not installed")
        kind, name, what = "leap seconds", timing.LEAP_SECONDS_NAME, f"expires {leap.expires.iso[:10]}"
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = iers.IERS_A.read(str(src))
            mjd = table["MJD"]
            mjd = getattr(mjd, "value", mjd)
            if len(table) < 100 or "predictive_mjd" not in table.meta:
                raise ValueError("too few rows")
        except Exception as e:  # noqa: BLE001 - neither: refused in one line
            raise InputError(f"{src}: neither an IERS-A table (finals2000A.all / finals2000A.data) nor a "
                             f"leap-second list (Leap_Second.dat, leap-seconds.list) "
                             f"({type(e).__name__}: {str(e).strip().splitlines()[0][:120] if str(e).strip() else ''})"
                             ) from None
        pred = float(table.meta["predictive_mjd"])
        offline_time(now)
        in_use = float(iers.IERS_Auto.open().meta["predictive_mjd"])
        iso = lambda m: Time(m, format="mjd").iso[:10]   # noqa: E731
        if pred < in_use:
            raise InputError(f"{src}: IERS-A measured to {iso(pred)}, older than the table in use "
                             f"({iso(in_use)}): not installed")
        kind, name, what = "IERS-A", timing.IERS_A_NAME, f"measured to {iso(pred)}, predicted to {iso(float(mjd[-1]))}"
    dest = timing._cache_dir() / name
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return kind, dest, what
