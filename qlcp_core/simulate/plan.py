"""The plan of a simulated night and its field: times, pointing and drift, conditions, eclipse, geometry, stars.

Everything decided before a pixel is drawn: the frames' start times and the observatory's
pointing (drift, jumps, a meridian flip), clouds and seeing, the target's eclipse, the
camera geometry of each frame, and the star field with its sky positions.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from astropy import units as u
from astropy.coordinates import AltAz, EarthLocation, SkyCoord
from astropy.table import Table
from astropy.time import Time

from ..errors import ConfigError
from .options import SimOptions, _S_FIELD, _S_NIGHT, _rng

log = logging.getLogger("qlcp.simulate")


def _ra_str(ra_deg: float) -> tuple[str, float]:
    """``hh:mm:ss.ss`` and the degrees it exactly stands for."""
    cs = int(round(ra_deg % 360.0 / 15.0 * 360000.0)) % (24 * 360000)
    s = f"{cs // 360000:02d}:{cs // 6000 % 60:02d}:{cs % 6000 / 100:05.2f}"
    return s, cs / 360000.0 * 15.0


def _dec_str(dec_deg: float) -> tuple[str, float]:
    """``+dd:mm:ss.s`` and the degrees it exactly stands for."""
    sign = "-" if dec_deg < 0 else "+"
    ds = int(round(abs(dec_deg) * 36000.0))
    s = f"{sign}{ds // 36000:02d}:{ds // 600 % 60:02d}:{ds % 600 / 10:04.1f}"
    return s, (-1 if sign == "-" else 1) * ds / 36000.0


def _iso_ms(t: Time) -> list[str]:
    t = Time(t, precision=3)
    return [str(s) for s in np.atleast_1d(t.isot)]


# ------------------------------------------------------------ the night plan
def _plan(o: SimOptions, n: int, seed: int) -> dict:
    """Times, pointing, seeing, sky, clouds, offsets and eclipse of the science frames.

    Parameters
    ----------
    o : SimOptions
    n : int
        Number of science frames.
    seed : int
        Seed of the night's random stream (drawn from in a fixed order: start
        jitter, eclipse time, seeing, clouds, offsets).

    Returns
    -------
    dict
        ``loc, start0, date_obs, t_start, t_mid, span_h, ra, dec, ra_s, dec_s,
        airmass, alt, bjd_mid, t0_bjd, t0_utc, dur_s, delta, target_rel, fwhm,
        sky, transp, dx, dy, jump_frame, drift_angle``.
    """
    rng = _rng(seed, _S_NIGHT)
    loc = EarthLocation.from_geodetic(o.site_lon * u.deg, o.site_lat * u.deg, o.site_ele * u.m)
    start0 = _start_time(o)
    # exposure starts: cadence plus a little jitter, rounded to ms as written to DATE-OBS
    jit = np.concatenate([[0.0], rng.uniform(-0.3, 0.3, n - 1)])
    starts = start0 + (np.arange(n) * o.cadence + jit) * u.s
    date_obs = _iso_ms(starts)
    t_start = Time(date_obs, format="isot", scale="utc")
    t_mid = t_start + (o.exptime / 2.0) * u.s
    span_h = ((n - 1) * o.cadence + o.exptime) / 3600.0

    ra, dec = _pointing(o, t_start[0], span_h)
    ra_s, ra = _ra_str(ra)
    dec_s, dec = _dec_str(dec)
    coo = SkyCoord(ra * u.deg, dec * u.deg, frame="icrs")
    altaz = coo.transform_to(AltAz(obstime=t_mid, location=loc))
    airmass = np.asarray(altaz.secz, dtype=float)
    if np.any(altaz.alt.deg < 15):
        log.warning("target below 15 deg altitude in part of the run (airmass up to %.1f)", airmass.max())

    ecl = _eclipse(o, rng, coo, loc, t_start, t_mid, span_h)
    fwhm, sky, transp = _conditions(o, rng, t_mid, n)
    dx, dy, ang = _pointing_offsets(o, rng, n)
    return dict(loc=loc, start0=start0, date_obs=date_obs, t_start=t_start, t_mid=t_mid, span_h=span_h,
                ra=ra, dec=dec, ra_s=ra_s, dec_s=dec_s, airmass=airmass, alt=np.asarray(altaz.alt.deg),
                **ecl, fwhm=fwhm, sky=sky, transp=transp, dx=dx, dy=dy,
                jump_frame=int(n // 2) if n >= 2 else None, drift_angle=math.degrees(ang))


def _start_time(o: SimOptions) -> Time:
    """Start of the first science exposure: ``o.start_utc``, default 22:00 local time of ``o.night``."""
    try:
        if o.start_utc is None:     # 22:00 local time of the evening
            return Time(f"{o.night}T00:00:00", scale="utc") + (22.0 - o.site_tz) * u.hour
        return Time(o.start_utc, scale="utc")
    except ValueError as e:
        raise ConfigError(f"options night/start_utc: not a date ({e})") from None


def _pointing(o: SimOptions, t0: Time, span_h: float) -> tuple[float, float]:
    """Target coordinates.

    Parameters
    ----------
    o : SimOptions
        ``target_ra``, ``target_dec``, ``airmass_start``, site.
    t0 : Time
        Start of the run.
    span_h : float
        Length of the run, hours.

    Returns
    -------
    ra, dec : float
        Degrees: the options', default Dec = latitude - 10 and an RA for which
        the target rises through airmass ~``airmass_start`` at ``t0``, or the
        run is centred on the meridian when starting there would take it past
        airmass 2 or the meridian.
    """
    dec = o.target_dec if o.target_dec is not None else float(np.clip(o.site_lat - 10.0, -85, 85))
    if o.target_ra is not None:
        return o.target_ra, dec
    phi, d = math.radians(o.site_lat), math.radians(dec)

    def ha_at(x):            # hour angle (h) where the airmass is x (plane-parallel)
        c = (1.0 / x - math.sin(phi) * math.sin(d)) / (math.cos(phi) * math.cos(d))
        return math.degrees(math.acos(min(max(c, -1.0), 1.0))) / 15.0

    h0, h2 = ha_at(o.airmass_start), ha_at(2.0)
    ha_start = -h0 if -h0 + span_h <= min(h0, h2) else -span_h / 2.0
    lst = t0.sidereal_time("apparent", longitude=o.site_lon * u.deg).hour
    return (lst - ha_start) * 15.0, dec


def _eclipse(o: SimOptions, rng: np.random.Generator, coo: SkyCoord, loc: EarthLocation, t_start: Time,
             t_mid: Time, span_h: float) -> dict:
    """Barycentric mid-exposure times and the eclipse (one draw from ``rng``: its time in the run).

    Returns
    -------
    dict
        ``bjd_mid`` (BJD_TDB per frame), ``t0_bjd``, ``t0_utc``, ``dur_s``,
        ``delta`` (fractional depth) and ``target_rel`` (relative flux averaged
        over 7 samples of each exposure).
    """
    def bjd(t):
        return (t.tdb + t.light_travel_time(coo, "barycentric", location=loc)).jd

    bjd_mid = bjd(t_mid)
    dur_s = o.eclipse_duration if o.eclipse_duration is not None else min(3600.0, span_h * 3600.0 * 2.0 / 3.0)
    t0_utc = t_start[0] + rng.uniform(0.4, 0.6) * span_h * u.hour      # drawn always: the stream stays the same
    t0_bjd = float(bjd(t0_utc))
    if o.ephemeris is not None:         # the ephemeris' event nearest the middle of the run
        e0, per = o.ephemeris
        mid = float(bjd(t_start[0] + 0.5 * span_h * u.hour))
        t0_bjd = e0 + round((mid - e0) / per) * per
        t0_utc = t0_utc + (t0_bjd - float(bjd(t0_utc))) * u.day
    delta = 1.0 - 10.0 ** (-0.4 * o.eclipse_depth)
    sub = (np.arange(7) / 6.0 - 0.5) * o.exptime / 86400.0          # samples over the exposure

    def rel_flux(tb):
        uu = 2.0 * (tb - t0_bjd) / (dur_s / 86400.0)
        return 1.0 - delta * np.where(np.abs(uu) < 1, np.clip(1.0 - uu * uu, 0, None) ** 1.5, 0.0)

    target_rel = rel_flux(bjd_mid[:, None] + sub[None, :]).mean(axis=1)
    return dict(bjd_mid=bjd_mid, t0_bjd=t0_bjd, t0_utc=t0_utc, dur_s=dur_s, delta=delta, target_rel=target_rel)


def _conditions(o: SimOptions, rng: np.random.Generator, t_mid: Time, n: int) -> tuple[np.ndarray, ...]:
    """Seeing (FWHM, px), sky (ADU) and transparency of each frame.

    The seeing wanders between ``fwhm_min`` and ``fwhm_max``; the sky fades
    after twilight and rises slowly; one frame (not the first) has thick
    clouds, ``n_thin_clouds`` others thin ones.
    """
    tau = (t_mid - t_mid[0]).to_value(u.hour)
    ph = rng.uniform(0, 2 * np.pi, 2)
    mid, amp = (o.fwhm_min + o.fwhm_max) / 2.0, (o.fwhm_max - o.fwhm_min) / 2.0
    fwhm = mid + 0.7 * amp * np.sin(2 * np.pi * tau / 1.7 + ph[0]) + 0.25 * amp * np.sin(2 * np.pi * tau / 0.4 + ph[1])
    fwhm = np.clip(fwhm + rng.normal(0, 0.03 * amp, n), o.fwhm_min, o.fwhm_max)
    sky = o.sky_adu * (1.0 + 0.6 * np.exp(-tau / 0.6)) * (1.0 + 0.15 * tau)
    transp = np.ones(n)
    free = list(range(1, n))
    rng.shuffle(free)
    if o.thick_cloud and free:
        transp[free.pop()] = rng.uniform(0.02, 0.05)
    n_thin = o.n_thin_clouds if o.n_thin_clouds is not None else max(1, round(n / 20))
    for _ in range(min(n_thin, len(free))):
        transp[free.pop()] = rng.uniform(0.6, 0.9)
    return fwhm, sky, transp


def _pointing_offsets(o: SimOptions, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Frame offsets: drift, one re-pointing jump and guiding jitter.

    Parameters
    ----------
    o : SimOptions
        ``drift`` (px per frame) and ``jump`` (px).
    rng : Generator
        Drawn from: the drift angle, then the jitter of frames 1.. (0.05 px).
    n : int
        Number of frames.

    Returns
    -------
    dx, dy : ndarray (n,)
        Offsets, px; the jump applies from frame ``n // 2`` on (not with one frame).
    ang : float
        Drift direction, rad.
    """
    ang = rng.uniform(0, 2 * np.pi)
    i = np.arange(n)
    jump_on = (i >= n // 2) & (n >= 2)
    jit_xy = np.vstack([np.zeros((1, 2)), rng.normal(0, 0.05, (n - 1, 2))])
    if o.drift_total is not None:            # a fixed direction and total (the angle is drawn all the same)
        frac = i / max(n - 1, 1)
        ang = math.atan2(o.drift_total[1], o.drift_total[0])
        dx = o.drift_total[0] * frac + o.jump[0] * jump_on + jit_xy[:, 0]
        dy = o.drift_total[1] * frac + o.jump[1] * jump_on + jit_xy[:, 1]
        return dx, dy, ang
    dx = o.drift * i * math.cos(ang) + o.jump[0] * jump_on + jit_xy[:, 0]
    dy = o.drift * i * math.sin(ang) + o.jump[1] * jump_on + jit_xy[:, 1]
    return dx, dy, ang


def _transformed(o: SimOptions) -> bool:
    """Whether the frames differ from the base by more than a shift (flip, rotation or scale)."""
    return o.flip_at is not None or o.rotation_deg != 0.0 or o.scale != 1.0 or o.rotation_total_deg != 0.0


def _geometry(o: SimOptions, n: int, size: int, dx: np.ndarray, dy: np.ndarray) -> dict | None:
    """The transform of every frame from the base (first) frame's pixels, or None (shifts only).

    Frame ``i`` sees a base position ``p`` at ``s_i R(theta_i) (p - c) + c + (dx_i, dy_i)``: ``c`` the
    detector centre, ``theta_i`` = ``rotation_deg`` (frames 1..) + 180 deg (from the flip frame,
    ``round(flip_at * n)``, on) + ``rotation_total_deg * i / (n - 1)``, ``s_i`` = ``scale``
    (frames 1..), and ``dx, dy`` the pointing offsets
    (plus ``flip_offset`` from the flip on).

    Returns
    -------
    dict or None
        ``dx, dy`` (n,), ``rot_deg`` (n,), ``scale`` (n,), ``mats`` (n, 2, 3): base pixel -> frame
        pixel, 0-based; ``flip_frame`` (int or None).
    """
    if not _transformed(o):
        return None
    i = np.arange(n)
    flip = None if o.flip_at is None else max(1, int(round(o.flip_at * n)))
    flipped = (i >= flip) if flip is not None else np.zeros(n, bool)
    rot = np.where(i >= 1, o.rotation_deg, 0.0) + o.rotation_total_deg * i / max(n - 1, 1) + 180.0 * flipped
    sc = np.where(i >= 1, o.scale, 1.0)
    dx = dx + o.flip_offset[0] * flipped
    dy = dy + o.flip_offset[1] * flipped
    c = (size - 1) / 2.0
    th = np.radians(rot)
    cs, sn = sc * np.cos(th), sc * np.sin(th)
    mats = np.empty((n, 2, 3))
    mats[:, 0, 0], mats[:, 0, 1], mats[:, 1, 0], mats[:, 1, 1] = cs, -sn, sn, cs
    mats[:, 0, 2] = c + dx - (cs * c - sn * c)
    mats[:, 1, 2] = c + dy - (sn * c + cs * c)
    return dict(dx=dx, dy=dy, rot_deg=rot, scale=sc, mats=mats, flip_frame=flip)


def _apply(mat: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Base positions -> frame positions through one (2, 3) matrix."""
    return (mat[0, 0] * x + mat[0, 1] * y + mat[0, 2], mat[1, 0] * x + mat[1, 1] * y + mat[1, 2])


def _regions(geom: dict, size: int, m: float, pad: float) -> tuple[tuple, tuple, tuple, tuple]:
    """Base-frame boxes of a transformed night: where a star stays ``m`` px inside every frame
    (``sx, sy``), and the union of the frames' footprints grown by ``pad`` (``fx, fy``)."""
    mats = geom["mats"]
    c = (size - 1) / 2.0
    a = mats[:, :, :2]
    inv = np.linalg.inv(a)
    q = np.einsum("nij,nj->ni", inv, np.full((len(a), 2), c) - mats[:, :, 2])   # frame centres in base px
    th = np.radians(geom["rot_deg"])
    k = (np.abs(np.cos(th)) + np.abs(np.sin(th))) / geom["scale"]
    inner = (c - m) / k
    outer = (c + pad) * k
    sx = (float(np.max(q[:, 0] - inner)), float(np.min(q[:, 0] + inner)))
    sy = (float(np.max(q[:, 1] - inner)), float(np.min(q[:, 1] + inner)))
    fx = (float(np.min(q[:, 0] - outer)), float(np.max(q[:, 0] + outer)))
    fy = (float(np.min(q[:, 1] - outer)), float(np.max(q[:, 1] + outer)))
    return sx, sy, fx, fy


# ------------------------------------------------------------------ the field
def _field(o: SimOptions, size: int, seed: int, dx: np.ndarray, dy: np.ndarray, geom: dict | None = None) -> Table:
    rng = _rng(seed, _S_FIELD)
    mag_of = lambda f: o.zeropoint - 2.5 * np.log10(np.asarray(f) / o.exptime)   # noqa: E731
    t_mag = float(mag_of(o.target_flux_e))
    # region where a star stays well inside every frame
    m = max(24.0, 0.12 * size)
    pad = 12.0
    if geom is None:
        sx = (m - dx.min(), size - 1 - m - dx.max())
        sy = (m - dy.min(), size - 1 - m - dy.max())
    else:
        sx, sy, fx, fy = _regions(geom, size, m, pad)
    if sx[0] >= sx[1] or sy[0] >= sy[1]:
        raise ConfigError(f"simulate_night: offsets of up to {np.ptp(dx):.0f}, {np.ptp(dy):.0f} px leave no room "
                          f"for the stars in a {size} px frame; lower drift/jump or raise size")
    cx, cy = (sx[0] + sx[1]) / 2.0, (sy[0] + sy[1]) / 2.0

    def uniform_safe():
        return rng.uniform(*sx), rng.uniform(*sy)

    tgt = (cx + rng.uniform(-0.03, 0.03) * size, cy + rng.uniform(-0.03, 0.03) * size)

    def place(min_d: list[tuple[tuple[float, float], float]]):
        for relax in (1.0, 0.8, 0.6, 0.4, 0.2, 0.0):
            for _ in range(2000):
                p = uniform_safe()
                if all(math.hypot(p[0] - q[0], p[1] - q[1]) >= d * relax for q, d in min_d):
                    return p
        return uniform_safe()      # pragma: no cover  (relax 0 always succeeds)

    sat = place([(tgt, 0.28 * size)])
    consts: list[tuple[float, float]] = []
    for _ in range(o.n_constant):
        consts.append(place([(tgt, max(25.0, 0.06 * size)), (sat, 0.2 * size)]
                            + [(c, max(20.0, 0.06 * size)) for c in consts]))

    rows = [(tgt[0], tgt[1], o.target_flux_e, "target")]
    cm = t_mag + rng.uniform(-0.5, 1.0, o.n_constant)
    for (x, y), mm in zip(consts, cm):
        rows.append((x, y, o.exptime * 10 ** (-0.4 * (mm - o.zeropoint)), "constant"))
    rows.append((sat[0], sat[1], o.saturated_flux_e, "saturated"))

    # field stars over the union of all footprints (plus a margin for wings)
    if geom is None:
        fx = (-pad - dx.max(), size - 1 + pad - dx.min())
        fy = (-pad - dy.max(), size - 1 + pad - dy.min())
    dens = (o.n_stars if o.n_stars is not None else 200.0 * size * size / 1024.0 ** 2) / float(size * size)
    n_field = int(rng.poisson(dens * (fx[1] - fx[0]) * (fy[1] - fy[0])))
    xs, ys = rng.uniform(*fx, n_field), rng.uniform(*fy, n_field)
    # magnitudes: dN/dm ~ 10**(0.3 m), from 0.4 mag brighter than the target to 6.5 mag fainter
    m0, m1 = t_mag - 0.4, t_mag + 6.5
    a = 0.3 * math.log(10)
    uu = rng.uniform(0, 1, n_field)
    ms = np.log(np.exp(a * m0) + uu * (np.exp(a * m1) - np.exp(a * m0))) / a
    iso = max(18.0, 4.0 * o.fwhm_max)
    keep = np.ones(n_field, bool)
    for x, y, _, _ in rows[: 1 + o.n_constant]:
        keep &= np.hypot(xs - x, ys - y) >= iso
    for x, y, mm in zip(xs[keep], ys[keep], ms[keep]):
        rows.append((x, y, o.exptime * 10 ** (-0.4 * (mm - o.zeropoint)), "field"))

    x = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    flux = np.array([r[2] for r in rows])
    t = Table()
    t["id"] = np.arange(len(rows))
    t["x"] = x
    t["y"] = y
    t["mag"] = mag_of(flux)
    t["flux_e"] = flux
    t["role"] = [r[3] for r in rows]
    t["in_base"] = (x >= 0) & (x <= size - 1) & (y >= 0) & (y <= size - 1)
    t["x"].unit = t["y"].unit = "pix"
    t["flux_e"].unit = "electron"
    t.meta["comments"] = ["x, y: 0-based position in the base (first science) frame",
                          "flux_e: electrons in one exposure at airmass 1, clear sky"]
    return t
