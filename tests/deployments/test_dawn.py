"""The dawn rule against astropy's Sun altitude computed here, independently, at known sites and times.

Truth: at Xinglong (117.58 E, 40.40 N) on 2024-06-06 the Sun is below -12 deg
from about 12:50 to 19:25 UTC (local 20:50 to 03:25).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import AltAz, EarthLocation, get_sun
from astropy.time import Time

from qlcp.deployments.dawn import DEFAULT_SUN_ALTITUDE, Dawn, to_unix

XINGLONG = (117.57722, 40.395833, 960.0)
NEAR_POLE = (15.0, 85.0, 0.0)


def unix(*a) -> float:
    return datetime(*a, tzinfo=UTC).timestamp()


def astropy_alt(site, t_unix) -> np.ndarray:
    """The Sun's altitude straight from astropy (no refraction), for comparison."""
    loc = EarthLocation.from_geodetic(lon=site[0] * u.deg, lat=site[1] * u.deg, height=site[2] * u.m)
    t = Time(np.atleast_1d(t_unix), format="unix", scale="utc")
    return get_sun(t).transform_to(AltAz(obstime=t, location=loc)).alt.deg


@pytest.fixture(scope="module")
def xinglong() -> Dawn:
    return Dawn(*XINGLONG)


def test_default_altitude_is_minus_12(xinglong):
    assert DEFAULT_SUN_ALTITUDE == -12.0 and xinglong.altitude == -12.0


def test_sun_altitude_matches_astropy(xinglong):
    times = unix(2024, 6, 6, 0, 0) + np.arange(0, 86400, 3 * 3600.0)
    np.testing.assert_allclose(xinglong.sun_altitude(times), astropy_alt(XINGLONG, times), atol=1e-6)
    # local noon (~04:10 UTC) in June at 40 N: the Sun stands about 73 deg high; local midnight: far below
    assert 70 < xinglong.sun_altitude(unix(2024, 6, 6, 4, 10))[0] < 74
    assert xinglong.sun_altitude(unix(2024, 6, 6, 16, 10))[0] < -20


def test_next_dawn_is_the_upward_crossing(xinglong):
    dawn = xinglong.next_dawn(unix(2024, 6, 6, 14, 0))
    assert abs(dawn - unix(2024, 6, 6, 19, 25)) < 10 * 60
    before, at, after = astropy_alt(XINGLONG, [dawn - 20, dawn, dawn + 20])
    assert before < -12 < after                     # rising through -12 deg
    assert abs(at + 12) < 0.01                      # within 1 s of the crossing (0.2 deg/min)
    assert dawn == int(dawn)                        # rounded to whole seconds


def test_next_dawn_from_daytime_is_the_next_morning(xinglong):
    """An afternoon start skips the evening (a downward crossing) and finds the next morning's dawn."""
    dawn = xinglong.next_dawn(unix(2024, 6, 6, 6, 0))
    assert abs(dawn - unix(2024, 6, 6, 19, 25)) < 10 * 60
    assert xinglong.next_dawn(unix(2024, 6, 6, 20, 0)) > unix(2024, 6, 7, 19, 0)


def test_other_altitudes_shift_dawn(xinglong):
    civil = Dawn(*XINGLONG, altitude=-6.0).next_dawn(unix(2024, 6, 6, 14, 0))
    nautical = xinglong.next_dawn(unix(2024, 6, 6, 14, 0))
    assert 15 * 60 < civil - nautical < 60 * 60     # the Sun climbs 6 deg in ~30-40 min at 40 N in June
    assert abs(astropy_alt(XINGLONG, civil)[0] + 6.0) < 0.01


def test_no_dawn_in_polar_day_or_night():
    pole = Dawn(*NEAR_POLE)
    assert (astropy_alt(NEAR_POLE, unix(2024, 6, 21, 0, 0) + np.arange(0, 86400, 3600.0)) > 0).all()
    assert pole.next_dawn(unix(2024, 6, 21, 0, 0)) is None          # Sun never sets
    assert (astropy_alt(NEAR_POLE, unix(2024, 12, 21, 0, 0) + np.arange(0, 86400, 3600.0)) < -12).all()
    assert pole.next_dawn(unix(2024, 12, 21, 0, 0)) is None         # Sun never reaches -12


def test_is_dark_matches_astropy_directly_and_on_the_interpolated_grid(xinglong):
    few = unix(2024, 6, 6, 0, 0) + np.arange(0, 86400, 1800.0)                 # 48: computed directly
    many = unix(2024, 6, 6, 0, 0) + np.sort(np.random.default_rng(1).uniform(0, 86400, 500))  # 5-min grid
    for t in (few, many):
        alt = astropy_alt(XINGLONG, t)
        clear = np.abs(alt + 12) > 0.5              # interpolation errors only matter right at the threshold
        np.testing.assert_array_equal(xinglong.is_dark(t)[clear], (alt < -12)[clear])
    assert xinglong.is_dark([]).shape == (0,)
    assert xinglong.is_dark([unix(2024, 6, 6, 16, 0), unix(2024, 6, 6, 6, 0)]).tolist() == [True, False]


def test_first_dark_keeps_the_earliest_arrival_in_the_dark(xinglong):
    day, dusk, night, later = unix(2024, 6, 6, 6), unix(2024, 6, 6, 12), unix(2024, 6, 6, 14), unix(2024, 6, 6, 16)
    assert xinglong.first_dark([day, dusk], None) is None          # no arrival in the dark yet
    assert xinglong.first_dark([later, day, night], None) == night
    assert xinglong.first_dark([later], night) == night            # later arrivals do not move it
    assert xinglong.first_dark([], night) == night


def test_night_over(xinglong):
    dawn = xinglong.next_dawn(unix(2024, 6, 6, 14, 0))
    assert xinglong.night_over(unix(2024, 6, 6, 14, 0), unix(2024, 6, 6, 20, 0)) == dawn    # first dark wins
    # copied by day (no arrival in the dark): the dawn after the newest arrival, the next morning
    assert xinglong.night_over(None, unix(2024, 6, 6, 21, 0)) == xinglong.next_dawn(unix(2024, 6, 6, 21, 0))
    assert xinglong.night_over(None, unix(2024, 6, 6, 21, 0)) > unix(2024, 6, 7, 19, 0)
    assert xinglong.night_over(None, None) is None                 # no file: never over


def test_to_unix():
    t = unix(2024, 6, 6, 14, 0)
    assert to_unix(datetime(2024, 6, 6, 14, 0)) == t                                   # naive = UTC
    assert to_unix(datetime(2024, 6, 6, 22, 0, tzinfo=timezone(timedelta(hours=8)))) == t
    assert to_unix(Time("2024-06-06T14:00:00", scale="utc")) == pytest.approx(t, abs=1e-6)
    assert to_unix(Time("2024-06-06T14:00:00", scale="utc").tt) == pytest.approx(t, abs=1e-6)
    assert to_unix(np.float64(t)) == t and to_unix(int(t)) == t
    with pytest.raises(TypeError, match="clock value"):
        to_unix("2024-06-06")


# ------------------------------------------------ a clock years past the bundled tables
def _table_last_unix() -> float:
    """Unix time of the last date of astropy's bundled Earth-orientation table (IERS-A)."""
    from astropy.utils import iers

    with iers.conf.set_temp("auto_download", False):
        return float(Time(iers.IERS_A.open(iers.IERS_A_FILE)["MJD"][-1], format="mjd").unix)


@pytest.fixture
def aged_astropy(monkeypatch):
    """Astropy as an installation finds it: its own defaults (IERS predictions may be 30 days old,
    no more; downloads would be tried, but are refused here: no network), and a clock 3 years ahead."""
    from astropy.utils import iers

    tried = []

    def no_download(*a, **k):
        tried.append(a)
        raise OSError("no network")

    ahead = Time.now() + 3 * 365.25 * u.day
    monkeypatch.setattr(Time, "now", classmethod(lambda cls: ahead.copy()))
    monkeypatch.setattr(iers.iers, "download_file", no_download)
    with iers.conf.set_temp("auto_download", True), iers.conf.set_temp("auto_max_age", 30.0), \
            iers.conf.set_temp("iers_degraded_accuracy", "error"):
        yield ahead, tried


def test_dawn_under_a_clock_years_past_the_tables(aged_astropy):
    """The dawn rule with its clock (the times it is given, and astropy's own ``now``) three years
    ahead, and 1000 days past the bundled table's last date: no error, no download, the same Sun
    altitude as astropy computed offline, dawn at the upward crossing.  (Before, astropy raised
    'IERS_Auto using predictive values that are more than 30 days old' and the sensor never
    declared a night ready: issue 24, R3.)"""
    from astropy.utils import iers

    ahead, tried = aged_astropy
    site = Dawn(*XINGLONG)                         # makes astropy compute offline, whatever the date
    for t0 in (float(ahead.unix), _table_last_unix() + 1000 * 86400.0):
        times = t0 + np.arange(0, 86400, 3 * 3600.0)
        with iers.conf.set_temp("auto_max_age", None):
            truth = astropy_alt(XINGLONG, times)
        np.testing.assert_allclose(site.sun_altitude(times), truth, atol=1e-6)
        dawn = site.next_dawn(t0)
        assert dawn is not None and t0 < dawn < t0 + 86400 * 1.01
        with iers.conf.set_temp("auto_max_age", None):
            before, after = astropy_alt(XINGLONG, [dawn - 20, dawn + 20])
        assert before < -12 < after
        assert site.night_over(None, t0) == dawn
    assert not tried, "a download was tried"
