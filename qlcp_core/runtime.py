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
"""

from __future__ import annotations

#: sep's source-extraction pixel stack and deblending sub-object limit are at least these
#: during a run (sep's own defaults, the values photometry was tuned with; the photometry
#: step enlarges them itself for a frame that needs more, and a larger value is kept)
SEP_MIN_PIXSTACK = 300_000
SEP_MIN_SUB_OBJECTS = 1024


def configure_run() -> None:
    """Make this process ready for a QLCP run (see the module docstring).

    * No network: astropy never downloads Earth-orientation (IERS) tables
      (``auto_download = False``, no maximum age) and only warns for dates beyond
      the tables shipped with ``astropy-iers-data`` (``iers_degraded_accuracy =
      "warn"``); a stale table only degrades UT1-UTC, irrelevant at our 0.1 s.
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
    from astropy.utils import iers

    from . import timing

    iers.conf.auto_download = False
    iers.conf.auto_max_age = None
    iers.conf.iers_degraded_accuracy = "warn"
    if sep.get_extract_pixstack() < SEP_MIN_PIXSTACK:
        sep.set_extract_pixstack(SEP_MIN_PIXSTACK)
    if sep.get_sub_object_limit() < SEP_MIN_SUB_OBJECTS:
        sep.set_sub_object_limit(SEP_MIN_SUB_OBJECTS)
    timing.enable_iers_cache()
