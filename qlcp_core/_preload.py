"""Imported by every worker of the pool (by the fork server before it forks them, or by
each forked worker as it starts): load the heavy modules and astropy's time/ephemeris
tables once, so the first frame job starts warm (``qlcp.core.parallel``)."""

import warnings

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
