"""Observation times and observing conditions of a frame.

The correction step (``i``) writes into every corrected frame, following
QLCP v2024.6:

* ``JD``, ``MJD`` -- UTC Julian date / modified Julian date of mid-exposure;
* ``HJD`` -- heliocentric Julian date of mid-exposure on the UTC scale
  (``JD_UTC + heliocentric light travel time``), as PyAstronomy's
  ``helio_jd`` gives it;
* ``BJD`` -- barycentric dynamical time of mid-exposure, BJD_TDB
  (``JD_TDB + barycentric light travel time``, Eastman et al. 2010);
* ``AZ``, ``ALT`` (degrees, azimuth from north through east) and
  ``AIRMASS`` (plane-parallel sec z, no refraction) at mid-exposure.

Three steps, so that a whole (object, band) group costs one astropy call::

    >>> t0 = Time([obs_start(h, cfg) for h in headers])         # doctest: +SKIP
    >>> coord = target_coord(headers[0], cfg, alt_coord)         # doctest: +SKIP
    >>> times = frame_times(t0, [exposure_time(h, cfg) for h in headers], coord, cfg)  # doctest: +SKIP

or simply ``header_times(headers, cfg, alt_coord)``.

No network: every calculation runs with astropy's IERS auto-download off and
``auto_max_age = None`` (also set in ``qlcp_core/__init__``), so dates beyond
the bundled Earth-orientation table (recent or future nights) are computed with
UT1-UTC and polar motion held at the table's last value and a logged warning,
never a download or an error.  That degrades ALT/AZ by at most ~0.004 deg and
the light travel times by microseconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import astropy.units as u
from astropy.coordinates import FK4, FK5, ICRS, AltAz, Angle, EarthLocation, SkyCoord
from astropy.time import Time, TimeDelta
from astropy.utils import iers

from .errors import ConfigError, InputError
from .io import atomic_path, qlcp_home

log = logging.getLogger("qlcp.timing")

#: keywords tried, after ``cfg.time_key``, for the time of day when the date
#: keyword holds only a date
TIME_KEYS = ("TIME-OBS", "UT", "UTC", "TIME")
#: keywords tried, after ``cfg.exptime_key``, for the exposure time
EXPTIME_KEYS = ("EXPTIME", "EXPOSURE")
#: two-digit years of the old ``dd/mm/yy`` form below this are 20yy, others 19yy
#: (the FITS standard meant 19yy only, but e.g. MaxIm DL still writes
#: ``DATE = '02/06/25'`` for 2025)
YY_PIVOT = 50

_DATE_ISO = r"(?P<Y>\d{4})-(?P<M>\d{1,2})-(?P<D>\d{1,2})"
_DATE_OLD = r"(?P<d>\d{1,2})/(?P<m>\d{1,2})/(?P<y>\d{4}|\d{2})"
_TIME = r"(?P<h>\d{1,2}):(?P<mi>\d{1,2})(?::(?P<s>\d{1,2}(?:\.\d*)?))?"
_TZ = r"(?P<tz>Z|UTC|UT|GMT|[+-]\d{2}(?::?\d{2})?)?"
_RE_DATETIME = re.compile(rf"^(?:{_DATE_ISO}|{_DATE_OLD})(?:(?:T|\s+){_TIME})?\s*{_TZ}$", re.I)
_RE_TIME = re.compile(rf"^{_TIME}\s*{_TZ}$", re.I)


# --------------------------------------------------------------- IERS guard
@contextlib.contextmanager
def _offline_iers():
    """Run with no IERS download and no error for dates beyond the tables.

    Same values as ``qlcp.core.runtime.configure_run`` sets for a run,
    asserted here too so that a caller who did not call it, or changed the global
    astropy configuration, cannot make this module download or fail on a recent night.  ``set_temp`` changes the process-wide
    configuration for the duration; other threads meanwhile see these same
    (project-wide) values.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(iers.conf.set_temp("auto_download", False))
        stack.enter_context(iers.conf.set_temp("auto_max_age", None))
        stack.enter_context(iers.conf.set_temp("iers_degraded_accuracy", "warn"))
        yield


#: columns of astropy's combined IERS-A/B table that time and coordinate conversions read
_IERS_COLUMNS = {"MJD": u.d, "UT1_UTC": u.s, "PM_x": u.arcsec, "PM_y": u.arcsec, "dX_2000A": u.marcsec,
                 "dY_2000A": u.marcsec, "UT1Flag": None, "PolPMFlag": None, "NutFlag": None}
#: where this process's table came from: "cache", "parsed" (by astropy), or None (not yet,
#: or the cache is off)
iers_source: str | None = None
#: whether :func:`frame_times` installs the table from the binary cache: off until a run
#: switches it on (``qlcp.core.runtime.configure_run``), so that a library caller's
#: astropy and home directory are left alone
_iers_cache_on = False


def enable_iers_cache() -> None:
    """Let :func:`frame_times` install astropy's Earth-orientation table from the binary
    cache (:func:`use_cached_iers`); called by ``qlcp.core.runtime.configure_run``."""
    global _iers_cache_on
    _iers_cache_on = True


def _cache_dir() -> Path:
    """``$QLCP_CACHE_DIR``, else ``{qlcp_home()}/cache``."""
    if os.environ.get("QLCP_CACHE_DIR"):
        return Path(os.environ["QLCP_CACHE_DIR"]).expanduser()
    return qlcp_home() / "cache"


#: names, in the cache directory, of the fresh tables ``qlcp update-tables`` installs
#: (used instead of the bundled ones when present)
IERS_A_NAME = "finals2000A.all"
LEAP_SECONDS_NAME = "Leap_Second.dat"


def installed_table(name: str) -> Path | None:
    """The table ``name`` (:data:`IERS_A_NAME`, :data:`LEAP_SECONDS_NAME`) that
    ``qlcp update-tables`` installed in the cache directory, or None."""
    try:
        path = _cache_dir() / name
        return path if path.is_file() else None
    except OSError:
        return None


def _iers_a_file() -> str:
    """The IERS-A table in use: the installed one (:func:`installed_table`), else astropy's bundled one."""
    path = installed_table(IERS_A_NAME)
    return str(path) if path is not None else iers.IERS_A_FILE


def _iers_cache_path() -> Path:
    """Cache file of the tables' parse: named for the astropy and table versions and files."""
    import astropy

    ident = [astropy.__version__]
    for f in (_iers_a_file(), iers.IERS_B_FILE):
        st = os.stat(f)
        ident += [str(f), st.st_size, st.st_mtime_ns]
    h = hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]
    return _cache_dir() / f"iers-{h}.npz"


def use_cached_iers() -> None:
    """Give astropy its Earth-orientation table (bundled IERS-A with IERS-B) from a binary cache.

    Astropy parses the two bundled text tables the first time a process needs
    UT1-UTC or polar motion: ~0.7 s, paid by every worker process.  The parsed
    columns are kept in ``{cache dir}/iers-{hash}.npz`` (hash of the astropy
    version and the tables' files, so an update makes a new one); later
    processes load it in milliseconds and install it as astropy's own
    ``IERS_Auto`` table, the one it would have built (same values, same
    out-of-range handling).  No cache directory, or an unreadable file: astropy
    parses as usual.  Never downloads anything.

    A fresh IERS-A table installed by ``qlcp update-tables`` (:func:`installed_table`)
    replaces the bundled one (in the cache's name too); a ``finals2000A.all`` in the
    current directory, which astropy's own ``open()`` would read, is not used.

    Opt-in: :func:`frame_times` calls it only once a run has switched the cache
    on (``qlcp.core.runtime.configure_run``); a direct call installs it at once.
    """
    global iers_source
    if iers_source is not None or iers.IERS_Auto.iers_table is not None:
        return
    iers_source = "parsed"
    try:
        path = _iers_cache_path()
    except OSError as e:
        log.debug("IERS cache: %s", e)
        return
    try:
        with np.load(path, allow_pickle=False) as z:
            cols = {c: (z[c] * unit if unit is not None else z[c]) for c, unit in _IERS_COLUMNS.items()}
            meta = json.loads(str(z["meta"]))
        iers.IERS_Auto.iers_table = iers.IERS_Auto(cols, meta=meta)
        iers_source = "cache"
        log.debug("IERS table from %s", path)
        _mark_used(path)
        return
    except FileNotFoundError:
        pass
    except Exception as e:  # a damaged cache: parse as usual, and write it again
        log.debug("IERS cache %s unusable (%s): rebuilt", path, e)
    with _offline_iers():
        # the file named (astropy's open() would prefer a finals2000A.all in the current directory)
        table = iers.IERS_Auto.iers_table = iers.IERS_Auto.read(file=_iers_a_file())
    try:
        meta = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in table.meta.items()}
        arrays = {c: np.asarray(getattr(table[c], "value", table[c])) for c in _IERS_COLUMNS}
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
        _prune_unused(path)
    except (OSError, TypeError, ValueError) as e:   # read-only home, odd meta: no cache
        log.debug("IERS cache not written: %s", e)


#: an IERS cache of another astropy or table version is removed once unused this long (days).  Not at
#: once: several installations (venvs, images) sharing one home each have their own, and removing each
#: other's made every process of each parse the tables again (0.7-3.7 s a flow run)
IERS_CACHE_UNUSED_DAYS = 30.0


def _mark_used(path: Path) -> None:
    """Touch the cache ``path`` when loaded, at most once a day, so that it is not pruned as unused."""
    try:
        if time.time() - path.stat().st_mtime > 86400:
            os.utime(path)
    except OSError:
        pass


def _prune_unused(keep: Path) -> None:
    """Remove the IERS caches beside ``keep`` unused for :data:`IERS_CACHE_UNUSED_DAYS`."""
    limit = time.time() - IERS_CACHE_UNUSED_DAYS * 86400
    for old in keep.parent.glob("iers-*.npz"):
        try:
            if old != keep and old.stat().st_mtime < limit:
                old.unlink(missing_ok=True)
        except OSError:
            pass


#: set by ``qlcp.core.runtime.offline_time`` once it has warned that this process computes with
#: out-of-date tables: times beyond them are then that same news, logged at INFO
tables_announced = False


def _warn_iers_range(t: Time) -> None:
    """Log one warning if some times lie outside the Earth-orientation table."""
    _, status = t.get_delta_ut1_utc(return_status=True)
    status = np.atleast_1d(status)
    out = status < 0    # TIME_BEFORE_IERS_RANGE (-1), TIME_BEYOND_IERS_RANGE (-2)
    if out.any():
        tt = np.sort(np.atleast_1d(t.utc.isot)[out])
        log.log(logging.INFO if tables_announced else logging.WARNING,
                "%d time(s) from %s to %s lie outside the bundled IERS table: UT1-UTC and polar motion "
                "held at the table's edge (ALT/AZ good to ~0.004 deg; a leap second announced after "
                "the tables would shift JD/HJD/BJD by 1 s)", int(out.sum()), tt[0], tt[-1])


# -------------------------------------------------------------- date / time
def _text(header, key: str) -> str | float | None:
    """Header value as a stripped string (or a number), None if missing/blank."""
    if not key or key not in header:
        return None
    v = header[key]
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    if not isinstance(v, str):          # astropy's Undefined value
        return None
    v = v.strip()
    return v or None


def _tz_seconds(tz: str | None) -> float:
    """Offset of a time-zone designator from UTC, seconds (``-0700`` -> -25200)."""
    if not tz or tz.upper() in ("Z", "UTC", "UT", "GMT"):
        return 0.0
    sign = -1.0 if tz[0] == "-" else 1.0
    digits = tz[1:].replace(":", "")
    hh = int(digits[:2])
    mm = int(digits[2:4]) if len(digits) >= 4 else 0
    return sign * (hh * 3600 + mm * 60)


def _parse_date(s: str):
    """``(Y, M, D, time-groups or None, tz)`` from an ISO or ``dd/mm/yy`` string, None if neither."""
    m = _RE_DATETIME.match(s)
    if not m:
        return None
    g = m.groupdict()
    if g["Y"]:
        ymd = int(g["Y"]), int(g["M"]), int(g["D"])
    else:
        y = int(g["y"])
        if len(g["y"]) == 2:
            y += 2000 if y < YY_PIVOT else 1900
        ymd = y, int(g["m"]), int(g["d"])
    hms = (g["h"], g["mi"], g["s"]) if g["h"] is not None else None
    return ymd, hms, g["tz"]


def _parse_time(s: str):
    """``(time-groups, tz)`` from ``hh:mm[:ss.sss]``, None if not a time of day."""
    m = _RE_TIME.match(s)
    if not m:
        return None
    return (m["h"], m["mi"], m["s"]), m["tz"]


def _make_time(ymd, hms, tz, what: str) -> Time:
    h, mi, s = hms
    s = s or "0"
    ip, _, fp = s.partition(".")
    sec = f"{int(ip):02d}" + (f".{fp}" if fp else "")
    iso = f"{ymd[0]:04d}-{ymd[1]:02d}-{ymd[2]:02d}T{int(h):02d}:{int(mi):02d}:{sec}"
    try:
        t = Time(iso, format="isot", scale="utc")
    except ValueError:
        raise InputError(f"{what}: not a valid date/time") from None
    off = _tz_seconds(tz)
    if off:
        t = t - TimeDelta(off, format="sec")     # local = UTC + offset
    return t


def _numeric_time(v: float, key: str) -> Time:
    """A numeric date keyword: a JD (> 2 400 000) or an MJD, both taken as UTC."""
    if v > 2_400_000:
        return Time(v, format="jd", scale="utc")
    if 0 < v < 200_000:
        return Time(v, format="mjd", scale="utc")
    raise InputError(f"header keyword {key} = {v!r}: not a date (expected ISO text, a JD or an MJD)")


def exposure_time(header, cfg) -> float:
    """Exposure time in seconds from ``cfg.exptime_key`` (then EXPTIME, EXPOSURE).

    Raises
    ------
    InputError
        If none of the keywords holds a non-negative number.
    """
    keys = dict.fromkeys([cfg.exptime_key, *EXPTIME_KEYS])
    for key in keys:
        v = _text(header, key)
        if v is None:
            continue
        try:
            e = float(v)
        except ValueError:
            raise InputError(f"header keyword {key} = {v!r}: not an exposure time in seconds") from None
        if not np.isfinite(e) or e < 0:
            raise InputError(f"header keyword {key} = {v!r}: not an exposure time in seconds")
        return e
    raise InputError(f"header keyword {cfg.exptime_key} missing: no exposure time")


def obs_start(header, cfg) -> Time:
    """UTC time of the start of the exposure, from the header.

    The date keyword ``cfg.date_key`` (default DATE-OBS) may hold

    * a full ISO date-time, ``2025-06-02T04:10:14.288`` (a space instead of
      ``T`` is accepted), optionally with a time zone, ``Z`` or an offset such
      as ``2017-12-19T18:33:43.317-0700`` (converted to UTC);
    * a date only, ``2025-06-02`` or the old FITS form ``dd/mm/yy``
      (``dd/mm/yyyy`` too; two-digit years below :data:`YY_PIVOT` are 20yy),
      the time of day then comes from ``cfg.time_key`` (default TIME-OBS),
      else the first of TIME-OBS, UT, UTC, TIME present;
    * a time of day only, ``04:10:14.3`` (e.g. ``date_key = 'UT-OBS'``), the
      date then comes from DATE-OBS;
    * a number: a JD if above 2 400 000, else an MJD (taken as UTC).

    Blank padding is ignored.  With ``cfg.time_ref == 'mid'`` the keyword marks
    mid-exposure and the start is that minus half of the exposure time
    (:func:`exposure_time`).

    Parameters
    ----------
    header : astropy.io.fits.Header or mapping
        Raw frame header.
    cfg : qlcp.core.config.Config
        Uses ``date_key``, ``time_key``, ``time_ref``, ``exptime_key``.

    Returns
    -------
    astropy.time.Time
        Scalar, scale UTC.

    Raises
    ------
    InputError
        One line naming the keyword when the date or time is missing or
        unparseable (the caller prefixes the file name).
    """
    key = cfg.date_key
    v = _text(header, key)
    if v is None:
        raise InputError(f"header keyword {key} missing: no observation date")
    if isinstance(v, float):
        t = _numeric_time(v, key)
    elif (p := _parse_date(v)) is not None:
        ymd, hms, tz = p
        what = f"header keyword {key} = {v!r}"
        if hms is None:
            hms, tz, tkey = _time_of_day(header, cfg, key, v)
            what = f"header keywords {key} = {v!r}, {tkey}"
        t = _make_time(ymd, hms, tz, what)
    elif (p := _parse_time(v)) is not None:
        hms, tz = p
        if key.upper() == "DATE-OBS":
            raise InputError(f"header keyword {key} = {v!r} holds only a time of day, no date")
        dv = _text(header, "DATE-OBS")
        d = _parse_date(dv) if isinstance(dv, str) else None
        if d is None:
            raise InputError(f"header keyword {key} = {v!r} holds only a time of day and DATE-OBS "
                             f"gives no date ({'missing' if dv is None else repr(dv)})")
        t = _make_time(d[0], hms, tz, f"header keywords DATE-OBS = {dv!r}, {key} = {v!r}")
    else:
        raise InputError(f"header keyword {key} = {v!r}: not a date/time "
                         "(expected 'YYYY-MM-DDThh:mm:ss[.s][+hhmm]', 'dd/mm/yy' or 'hh:mm:ss')")
    if cfg.time_ref == "mid":
        t = t - TimeDelta(exposure_time(header, cfg) / 2.0, format="sec")
    return t


def _time_of_day(header, cfg, date_key: str, date_val: str):
    """Time of day for a date-only keyword: ``cfg.time_key`` first, then :data:`TIME_KEYS`."""
    keys = [k for k in dict.fromkeys([cfg.time_key, *TIME_KEYS]) if k and k.upper() != date_key.upper()]
    for k in keys:
        tv = _text(header, k)
        if tv is None:
            continue
        p = _parse_time(tv) if isinstance(tv, str) else None
        if p is not None:
            return p[0], p[1], f"{k} = {tv!r}"
        if k == cfg.time_key:      # the configured keyword must parse; fall-backs may be anything
            raise InputError(f"header keyword {k} = {tv!r}: not a time of day (expected 'hh:mm:ss[.s]')")
    raise InputError(f"header keyword {date_key} = {date_val!r} holds only a date and no time keyword "
                     f"({', '.join(keys)}) gives the time of day")


# -------------------------------------------------------------- coordinates
def _angle(v: Any, is_ra: bool) -> float | None:
    """Degrees from a sexagesimal string (RA in hours) or a decimal number (degrees)."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        deg = float(v)
    else:
        s = str(v).strip()
        if not s:
            return None
        if re.search(r"[:\sdhms°]", s):
            deg = Angle(s, unit=u.hourangle if is_ra else u.deg).deg
        else:
            deg = float(s)
    if not np.isfinite(deg):
        return None
    return deg


def _pair(ra_v, dec_v) -> tuple[float, float] | None:
    try:
        ra, dec = _angle(ra_v, True), _angle(dec_v, False)
    except (ValueError, TypeError, u.UnitsError):
        return None
    if ra is None or dec is None or not -90 <= dec <= 90 or not -360 <= ra <= 360:
        return None
    return ra % 360.0, dec


def _header_frame(header):
    """Frame of header coordinates from RADESYS/RADECSYS and EQUINOX (ICRS ~ J2000 by default)."""
    sys_ = _text(header, "RADESYS") or _text(header, "RADECSYS")
    sys_ = sys_.upper() if isinstance(sys_, str) else None
    eq = _text(header, "EQUINOX")
    if isinstance(eq, str):
        try:
            eq = float(eq.lstrip("JB"))
        except ValueError:
            eq = None
    if sys_ == "ICRS" or (sys_ not in ("FK4", "FK5") and eq is None):
        return ICRS()
    if sys_ == "FK4" or (sys_ is None and eq < 1984.0):
        return FK4(equinox=Time(eq if eq is not None else 1950.0, format="byear"))
    if eq is None or abs(eq - 2000.0) < 0.01:
        return ICRS()        # FK5 J2000 = ICRS to 0.02 arcsec, far below what matters here
    return FK5(equinox=Time(eq, format="jyear"))


def target_coord(header, cfg, alt_coord=None) -> SkyCoord | None:
    """Target position (ICRS) for the light-travel-time and airmass calculations.

    Taken from ``alt_coord`` if given, else from the header: ``cfg.ra_key`` /
    ``cfg.dec_key``, then OBJCTRA / OBJCTDEC, then the WCS reference point
    CRVAL1 / CRVAL2 when CTYPE1 starts with ``RA``.  A pair that does not
    parse is skipped with a debug message.

    Strings with separators (``'16:02:11.8'``, ``'16 02 11.8'``,
    ``'16h02m11.8s'``) are sexagesimal, RA in hours and Dec in degrees;
    numbers and decimal strings are degrees for both, so an RA written as
    decimal hours (``'16.0366'``) would be misread as degrees: give it
    sexagesimal.  Header coordinates follow RADESYS/RADECSYS and EQUINOX
    (FK4/FK5 of another equinox are precessed to ICRS, which matters: 25 years
    of precession shift BJD by up to ~3 s); ``alt_coord`` is taken as ICRS
    (J2000).

    Header coordinates are usually the pointing or field centre: an error of
    1 arcmin changes HJD/BJD by up to 0.15 s.  Give ``alt_coord`` for
    sub-second timing.

    Parameters
    ----------
    header : astropy.io.fits.Header or mapping
    cfg : qlcp.core.config.Config
        Uses ``ra_key``, ``dec_key``.
    alt_coord : tuple of two str or float, optional
        ``('hh:mm:ss.s', '+dd:mm:ss.s')`` or decimal degrees.

    Returns
    -------
    astropy.coordinates.SkyCoord or None
        Scalar ICRS coordinate; None when nothing usable is found.

    Raises
    ------
    ConfigError
        If ``alt_coord`` is given but is not a usable RA, Dec pair.
    """
    if alt_coord is not None:
        p = None
        if isinstance(alt_coord, (tuple, list)) and len(alt_coord) == 2:
            p = _pair(*alt_coord)
        if p is None:
            raise ConfigError(f"alt_coord {alt_coord!r}: not an RA, Dec pair "
                              "('hh:mm:ss.s', '+dd:mm:ss.s' or decimal degrees)")
        return SkyCoord(p[0] * u.deg, p[1] * u.deg, frame="icrs")

    pairs = [(cfg.ra_key, cfg.dec_key), ("OBJCTRA", "OBJCTDEC")]
    ctype1, ctype2 = _text(header, "CTYPE1"), _text(header, "CTYPE2")
    if isinstance(ctype1, str) and ctype1.upper().startswith("RA") and \
            isinstance(ctype2, str) and ctype2.upper().startswith("DEC"):
        pairs.append(("CRVAL1", "CRVAL2"))
    for rk, dk in pairs:
        rv, dv = _text(header, rk), _text(header, dk)
        if rv is None or dv is None:
            continue
        if rk == "CRVAL1" and not (isinstance(rv, float) and isinstance(dv, float)):
            continue
        p = _pair(rv, dv)
        if p is None:
            log.debug("header %s = %r, %s = %r: not a usable RA, Dec", rk, rv, dk, dv)
            continue
        frame = _header_frame(header)
        c = SkyCoord(p[0] * u.deg, p[1] * u.deg, frame=frame)
        return c if isinstance(frame, ICRS) else c.icrs
    return None


#: header keywords of the site's latitude and longitude, in the pairs cameras write
SITE_KEYS = (("SITELAT", "SITELONG"), ("LAT-OBS", "LONG-OBS"), ("OBSLAT", "OBSLONG"), ("LATITUDE", "LONGITUD"))


def header_site(header) -> tuple[float, float, str] | None:
    """``(lat, lon, 'KEYS')`` of the site a header states (degrees; sexagesimal ``'32 46 49'``,
    ``'-105:49:13'`` or numbers), else None.  The longitude is as written (east or west positive:
    :func:`site_disagreement` tries both)."""
    for lk, ok in SITE_KEYS:
        lat, lon = _text(header, lk), _text(header, ok)
        if lat is None or lon is None:
            continue
        try:
            la, lo = _angle(lat, False), _angle(lon, False)
        except (ValueError, TypeError, u.UnitsError):
            continue
        if la is not None and lo is not None and -90 <= la <= 90:
            return la, lo, f"{lk}/{ok}"
    return None


def site_disagreement(header, cfg, limit_deg: float = 0.5) -> str:
    """'' when the configured site agrees with the header's (:func:`header_site`; none is agreement),
    else one line naming both: a site off by more than ``limit_deg`` in latitude or longitude (a
    longitude written west-positive agrees when its negation does)."""
    got = header_site(header)
    if got is None:
        return ""
    lat, lon, keys = got

    def dlon(a):
        return abs((a - cfg.site_lon + 180.0) % 360.0 - 180.0)

    if abs(lat - cfg.site_lat) <= limit_deg and min(dlon(lon), dlon(-lon)) <= limit_deg:
        return ""
    return (f"the configured site (site_lat {cfg.site_lat:.4f}, site_lon {cfg.site_lon:.4f}) disagrees with the "
            f"header's {keys} ({lat:.4f}, {lon:.4f}) by more than {limit_deg:g} deg: airmass and BJD use the "
            "configured site (check site_lat, site_lon; east longitude positive)")


# -------------------------------------------------------------------- times
def site_location(cfg) -> EarthLocation:
    """The observatory (``cfg.site_lon`` east, ``site_lat`` geodetic WGS84, ``site_ele`` m)."""
    return EarthLocation.from_geodetic(lon=cfg.site_lon * u.deg, lat=cfg.site_lat * u.deg,
                                       height=cfg.site_ele * u.m)


def frame_times(start: Time, exptime, coord: SkyCoord | None, cfg) -> dict:
    """JD, MJD, HJD, BJD, AZ, ALT, AIRMASS at mid-exposure, for one or many frames at once.

    Vectorised: pass the starts of a whole group as one ``Time`` of N (or a
    list of scalar ``Time``) and N exposure times; the cost is one astropy
    call per quantity, not one per frame.

    Parameters
    ----------
    start : astropy.time.Time or sequence of Time
        Exposure starts (any scale; converted to UTC).
    exptime : float or array_like
        Exposure times in seconds, broadcast against ``start``.
    coord : astropy.coordinates.SkyCoord or None
        Target (scalar, or one per frame).  None: HJD, BJD, AZ, ALT and
        AIRMASS are NaN.
    cfg : qlcp.core.config.Config
        Uses ``site_lon``, ``site_lat``, ``site_ele``.

    Returns
    -------
    dict
        Keys ``JD``, ``MJD`` (UTC, mid-exposure), ``HJD`` (UTC-based
        heliocentric JD, ``JD + heliocentric light travel time``), ``BJD``
        (BJD_TDB, ``JD_TDB + barycentric light travel time``), ``AZ`` (deg,
        north through east), ``ALT`` (deg, geometric, no refraction) and
        ``AIRMASS`` (sec z = 1/sin ALT, NaN where ALT <= 0).  Values are float
        arrays of the broadcast shape of ``start`` and ``exptime``, Python
        floats when both are scalars.

    Notes
    -----
    Light travel times are astropy's ``Time.light_travel_time`` (erfa epv00
    ephemeris, ~4 us) for the observatory, not the geocentre.  Times beyond
    the bundled IERS tables are computed with a logged warning (see module
    docstring).
    """
    if not isinstance(start, Time):
        start = Time(start)
    exptime = np.asarray(exptime, dtype=float)
    if _iers_cache_on:
        use_cached_iers()
    with _offline_iers():
        mid = start.utc + TimeDelta(exptime / 2.0, format="sec")
        scalar = mid.isscalar
        jd = np.asarray(mid.jd, dtype=float)
        out = {"JD": jd, "MJD": np.asarray(mid.mjd, dtype=float)}
        nan = np.full(jd.shape, np.nan)
        if coord is None:
            out.update(HJD=nan, BJD=nan, AZ=nan.copy(), ALT=nan.copy(), AIRMASS=nan.copy())
        else:
            _warn_iers_range(mid)
            loc = site_location(cfg)
            helio = mid.light_travel_time(coord, kind="heliocentric", location=loc)
            bary = mid.light_travel_time(coord, kind="barycentric", location=loc)
            out["HJD"] = np.broadcast_to(jd + helio.to_value(u.day), jd.shape).astype(float)
            out["BJD"] = np.broadcast_to((mid.tdb + bary).jd, jd.shape).astype(float)
            aa = coord.transform_to(AltAz(obstime=mid, location=loc, pressure=0 * u.hPa))
            alt = np.broadcast_to(aa.alt.to_value(u.deg), jd.shape).astype(float)
            out["ALT"] = alt
            out["AZ"] = np.broadcast_to(aa.az.to_value(u.deg), jd.shape).astype(float)
            with np.errstate(divide="ignore", invalid="ignore"):
                am = 1.0 / np.sin(np.deg2rad(alt))
            out["AIRMASS"] = np.where(alt > 0, am, np.nan)
    if scalar:
        return {k: float(v) for k, v in out.items()}
    return out


def header_times(headers: Sequence, cfg, alt_coord=None) -> dict:
    """:func:`frame_times` for a group of raw headers (e.g. one object and band).

    The target is ``alt_coord`` or the first header with usable coordinates
    (:func:`target_coord`), used for every frame.

    Parameters
    ----------
    headers : sequence of astropy.io.fits.Header
    cfg : qlcp.core.config.Config
    alt_coord : tuple of two str or float, optional

    Returns
    -------
    dict
        As :func:`frame_times`, arrays of ``len(headers)``, plus ``EXPTIME``.

    Raises
    ------
    InputError
        From :func:`obs_start` / :func:`exposure_time` on a bad header (the
        message names the keyword, not the file).
    """
    if len(headers) == 0:
        e = np.empty(0)
        return {k: e.copy() for k in ("JD", "MJD", "HJD", "BJD", "AZ", "ALT", "AIRMASS", "EXPTIME")}
    starts = Time([obs_start(h, cfg) for h in headers])
    expt = np.array([exposure_time(h, cfg) for h in headers], dtype=float)
    if alt_coord is not None:
        coord = target_coord({}, cfg, alt_coord)
    else:
        coord = next((c for c in (target_coord(h, cfg) for h in headers) if c is not None), None)
    out = frame_times(starts, expt, coord, cfg)
    out["EXPTIME"] = expt
    return out
