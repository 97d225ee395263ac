"""Imported by every worker of the pool (by the fork server before it forks them, or by
each forked worker as it starts): load the heavy modules and astropy's time/ephemeris
tables once, so the first frame job starts warm (``qlcp.core.parallel``).

This module is a run's start in a worker process, not a library module: importing it
makes the run's process-wide settings (:func:`qlcp.core.runtime.configure_run`), so
that the fork server's workers inherit them and the tables it loads come from the
run's IERS cache.  Nothing else imports it."""

import warnings

from .runtime import configure_run

configure_run()

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.time import Time

from . import correct, photometry, steps  # noqa: F401
from . import timing
from .config import Config

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        timing.frame_times(Time(["2024-06-06T14:00:00"], scale="utc"), np.array([60.0]),
                           SkyCoord(250.0, 30.0, unit="deg"), Config())
    except Exception:  # a warm-up only
        pass
