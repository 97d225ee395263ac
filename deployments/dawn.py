"""The dawn rule: the Sun's altitude at a site, and when a night is over.

A night is over at *dawn*: the first upward crossing of the Sun through an
altitude (default -12 deg; astropy ``get_sun``/``AltAz`` at the site, no
refraction) after the earliest file that arrived in the dark, or, when no file
arrived in the dark, after the newest arrival (a night copied by day waits for
the next dawn).  Morning frames taken after that crossing do not delay the
night.  Where the Sun does not cross the altitude within ``horizon_days``
(polar day or night) there is no dawn.

Also here: :func:`to_unix`, the one conversion of the sensor's clock values
(astropy ``Time``, ``datetime``, Unix seconds) to Unix seconds.

Not here: which files a night holds or when they are stable
(:mod:`qlcp.deployments.scanner`), the other readiness rules (marker, quiet),
the state database or any triggering (:mod:`qlcp.deployments.sensor`).
Nothing in this module reads the file system or the clock (astropy's IERS
check did: :class:`Dawn` makes it compute offline whatever the date,
``qlcp.core.runtime.offline_time``, so that a sensor on an installation whose
bundled tables are months or years old still finds dawn).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import numpy as np

DEFAULT_SUN_ALTITUDE = -12.0

TimeLike = Any      # astropy Time, datetime (naive = UTC) or float Unix seconds


def to_unix(t: TimeLike) -> float:
    """Unix seconds (UTC) of an astropy ``Time``, a ``datetime`` (naive means UTC) or a number."""
    if isinstance(t, datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        return t.timestamp()
    if isinstance(t, (int, float, np.floating, np.integer)):
        return float(t)
    unix = getattr(t, "unix", None)         # astropy Time (any scale): seconds since 1970 UTC
    if unix is None:
        raise TypeError(f"clock value {t!r}: expected an astropy Time, a datetime or Unix seconds")
    return float(unix)


class Dawn:
    """Sun altitude and dawn times at one site.

    Parameters
    ----------
    lon, lat, ele : float
        Site longitude (deg east), geodetic latitude (deg), height (m).
    altitude : float
        Sun altitude (deg) whose upward crossing is "dawn".
    horizon_days : float
        How far ahead a crossing is searched; none within it (polar day or
        night) means no dawn.
    """

    def __init__(self, lon: float, lat: float, ele: float, altitude: float = DEFAULT_SUN_ALTITUDE,
                 horizon_days: float = 2.0):
        from astropy import units as u
        from astropy.coordinates import EarthLocation

        from qlcp.core.runtime import offline_time

        offline_time()      # whatever the clock says: the tables it has, no download, no error beyond them
        self.location = EarthLocation.from_geodetic(lon=lon * u.deg, lat=lat * u.deg, height=ele * u.m)
        self.altitude = float(altitude)
        self.horizon = float(horizon_days) * 86400.0
        self._cache: dict[int, float | None] = {}

    def sun_altitude(self, t_unix) -> np.ndarray:
        """Apparent Sun altitude (deg, no refraction) at Unix times ``t_unix``."""
        from astropy.coordinates import AltAz, get_sun
        from astropy.time import Time
        from astropy.utils.exceptions import AstropyWarning
        from erfa import ErfaWarning

        t = Time(np.atleast_1d(np.asarray(t_unix, dtype=float)), format="unix", scale="utc")
        with warnings.catch_warnings():
            # times beyond the bundled IERS table: polar motion held at its edge (~arcsec), harmless here
            warnings.simplefilter("ignore", AstropyWarning)
            warnings.simplefilter("ignore", ErfaWarning)
            alt = get_sun(t).transform_to(AltAz(obstime=t, location=self.location)).alt.deg
        return np.atleast_1d(np.asarray(alt, dtype=float))

    def is_dark(self, t_unix) -> np.ndarray:
        """Whether the Sun is below the altitude at each time (many times: 5-min grid, interpolated)."""
        t = np.atleast_1d(np.asarray(t_unix, dtype=float))
        if t.size == 0:
            return np.zeros(0, bool)
        uniq, inv = np.unique(np.round(t), return_inverse=True)
        span = uniq[-1] - uniq[0]
        if uniq.size <= 64 or span / 300.0 > 4 * uniq.size:
            alt = self.sun_altitude(uniq)
        else:
            grid = uniq[0] + np.arange(int(np.ceil(span / 300.0)) + 1) * 300.0
            alt = np.interp(uniq, grid, self.sun_altitude(grid))
        return (alt < self.altitude)[inv.reshape(-1)]

    def next_dawn(self, t0: float) -> float | None:
        """First time after ``t0`` (Unix s, rounded up to 1 s) at which the Sun rises through the altitude."""
        key = int(np.floor(t0))
        if key in self._cache:
            return self._cache[key]
        step = 600.0
        grid = key + np.arange(0.0, self.horizon + step, step)
        below = self.sun_altitude(grid) < self.altitude
        up = np.nonzero(below[:-1] & ~below[1:])[0]
        result = None if not up.size else self._refine_crossing(float(grid[int(up[0])]), step)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = result
        return result

    def _refine_crossing(self, start: float, step: float) -> float:
        """The upward crossing within ``[start, start + step]``: 10-s grid, interpolated, rounded up."""
        fine = start + np.arange(0.0, step + 1.0, 10.0)
        a = self.sun_altitude(fine)
        above = np.nonzero(a >= self.altitude)[0]
        if not above.size:
            return float(start + step)
        j = int(above[0])
        if j == 0:
            return float(fine[0])
        frac = (self.altitude - a[j - 1]) / (a[j] - a[j - 1])
        return float(np.ceil(fine[j - 1] + frac * (fine[j] - fine[j - 1])))

    def first_dark(self, arrivals: Iterable[float], current: float | None) -> float | None:
        """The earliest arrival in the dark, given new ``arrivals`` and the ``current`` earliest (or None)."""
        early = [a for a in arrivals if current is None or a < current]
        if early:
            dark = np.asarray(early)[self.is_dark(early)]
            if dark.size:
                return float(dark.min())
        return current

    def night_over(self, first_dark: float | None, newest_arrival: float | None) -> float | None:
        """When a night is over: the dawn after its first dark arrival, else after its newest arrival.

        None when the night has no file (``newest_arrival`` None) or no dawn follows.
        """
        if first_dark is not None:
            ref = first_dark
        elif newest_arrival is not None:
            ref = newest_arrival
        else:
            return None
        return self.next_dawn(ref)
