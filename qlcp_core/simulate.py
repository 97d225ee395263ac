"""Night simulator: a realistic synthetic night of a small telescope, with its truth.

:func:`simulate_night` writes, for one object in one band::

    {out_dir}/raw/bias-0001.fit ...        bias frames (EXPTIME 0)
    {out_dir}/raw/flat-0001V.fit ...       evening twilight flats
    {out_dir}/raw/SIMV-0001V.fit ...       science frames (the raw night: nothing else is in raw/)
                                           (``dated=True``: all in ``{out_dir}/raw/YYYYMMDD/``)
    {out_dir}/night.yaml                   a QLCP config of the night (site, detector)
    {out_dir}/truth/stars.ecsv             every star: id, x, y (0-based, base = first science frame),
                                           mag, flux_e, role ('target'|'constant'|'saturated'|'field'), in_base
    {out_dir}/truth/frames.ecsv            one row per science frame (times, offset, seeing, sky, airmass, ...;
                                           with ``flip_at``/``rotation_deg``/``scale`` also rot_deg, scale
                                           and the transform m00..m12: :func:`truth_transforms`)
    {out_dir}/truth/cosmics.ecsv           cosmic-ray hits (frame file, x, y in that frame, electrons)
    {out_dir}/truth/bias.fits              noiseless bias pattern, ADU (float32)
    {out_dir}/truth/flat_{band}.fits       true pixel response, normalised to median 1 (float32)
    {out_dir}/truth/truth.json             site, target RA/Dec, eclipse ephemeris, detector, seed, options

File names follow the original QLCP patterns, so the original program can
reduce the night as well.  Frames are 16-bit unsigned integers (BITPIX 16,
BZERO 32768), written one at a time (memory does not grow with the number of
frames) and atomically through :mod:`qlcp.core.io`.  Everything is
deterministic for a given ``seed``: every frame draws its noise from its own
generator seeded with ``(seed, stream, frame index)``.

Detector and noise model (exactly)
----------------------------------
For every pixel of every frame, with P the pixel response (``truth/flat_{band}.fits``),
B the bias pattern (``truth/bias.fits``), g the gain (e-/ADU) and r the read noise (e-)::

    light_e   = (sky_e(x, y) + stars_e(x, y)) * P(x, y)          expected photo-electrons
    electrons = Poisson(light_e) + cosmic_e(x, y)                 (cosmic rays: no Poisson, no flat)
    ADU       = electrons / g + B(x, y) + Normal(0, r / g)
    raw       = clip(round(ADU), 0, 65535)                        stored as uint16

Bias frames have ``light_e = 0``; flats have ``light_e = level * g * P`` (uniform
twilight illumination); there is no dark current.  So a bias-subtracted,
flat-fielded frame has, per pixel, variance ``light_e / P**2 / g**2 + (r/g)**2 / P**2``
in ADU^2 (plus 1/12 ADU^2 of rounding): the CCD equation.

Stars
-----
A star of ``flux_e`` electrons (one exposure, airmass 1, clear sky) gives, in
frame i, ``flux_e * 10**(-0.4 * k * (X_i - 1)) * T_i`` electrons (times the
eclipse factor for the target), with X_i the airmass (``sec z`` of astropy
AltAz at mid-exposure, no refraction), k the extinction coefficient (mag per
airmass) and T_i the transparency (1 clear, 0.6-0.9 thin clouds, ~0.03 thick
clouds).  Its light is a circular Moffat profile (beta ~3, FWHM from
``frames.ecsv``) sampled at pixel centres (pixel (x, y) has its centre at the
integer coordinates, 0-based, as numpy and sep) in a stamp large enough that
at most ~1e-3 of the flux (or 0.3 e-) is cut off.  The position of a star in
frame i is its base position plus the frame's true offset ``(dx, dy)``.

Magnitudes: ``mag = zeropoint - 2.5 log10(flux_e / exptime)`` (zeropoint: the
magnitude giving 1 e-/s at airmass 1).

The target (id 0) is an eclipsing star: relative flux
``1 - delta * (1 - u**2)**1.5`` for ``|u| < 1``, ``u = 2 (t - t0) / D``, with
t the BJD_TDB, ``delta = 1 - 10**(-0.4 * depth)``, D the duration; out of
eclipse it is exactly 1.  ``frames.ecsv:target_rel_flux`` is its mean over the
exposure.  The ``constant`` stars (ids 1..n) are bright, isolated and never
vary; cosmic rays are kept at least 20 px away from the target, the constant
stars and the saturated star, and no field star lies within ~18 px of the
target or a constant star, so their light curves follow the CCD equation.

The night
---------
Defaults: Xinglong, local night of 2024-06-06.  Bias frames 2.75 h and
evening twilight flats 2 h before the first science exposure (22:00 local);
the flats fade from a saturated one (median ~61000 ADU) through ones inside
the default limits [5000, 50000] to one too faint (~2800 ADU).  Science
frames start every ``cadence`` s (+-0.3 s); the target (RA chosen so it rises
from airmass ~1.8, or is centred on the meridian for long runs) is in
``truth.json``.  The field drifts by ``drift`` px per frame (plus 0.05 px
jitter) and jumps by ``jump`` px at the middle frame; seeing wanders smoothly
between ``fwhm_min`` and ``fwhm_max``; the sky fades after twilight then
brightens slowly, with a linear gradient across the frame
(``truth.json:sky_model``); a few frames have thin clouds and one thick clouds.

Geometry (off by default): ``flip_at`` turns the field 180 deg about the
detector centre from that fraction of the night on, with a pointing offset
``flip_offset`` (a German-equatorial meridian flip); ``rotation_deg`` and
``scale`` turn and scale every frame after the first against the first (a
camera rotated after the base frame, a focus change); ``rotation_total_deg`` turns the field
gradually, from 0 at the first frame to that angle at the last, and ``drift_total`` replaces the
per-frame ``drift`` by a linear drift of that many (dx, dy) px over the night (a real night's
polar misalignment and guiding drift; the jump still applies).  Frame i then sees a
base position p at ``s R(theta) (p - c) + c + (dx, dy)``, c the detector
centre; ``frames.ecsv`` gives the matrix.  With the options off, every file is
byte-identical to that of a version without them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import yaml
from astropy import units as u
from astropy.coordinates import AltAz, EarthLocation, SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

from ._version import __version__
from .errors import ConfigError, InputError
from .io import write_fits, write_json, write_table, write_text

log = logging.getLogger("qlcp.simulate")

# random streams: each is seeded with (seed, stream[, index])
_S_PATTERN, _S_NIGHT, _S_FIELD, _S_BIAS, _S_FLAT, _S_SCI = 1, 2, 3, 10, 11, 12

_ADC_MAX = 65535


@dataclass(frozen=True)
class SimOptions:
    """Options of :func:`simulate_night` (all keyword arguments, recorded in ``truth.json``)."""

    obj: str = "SIMV"                 #: object name (file names and OBJECT)
    band: str = "V"                   #: one-letter band (file names and FILTER)
    n_bias: int = 11                  #: number of bias frames
    n_flats: int = 9                  #: number of twilight flats
    flat_bad: bool = True             #: make the first flat saturated and the last too faint
    exptime: float = 60.0             #: science exposure, s
    cadence: float = 90.0             #: start-to-start interval, s
    gain: float = 1.5                 #: e-/ADU
    rdnoise: float = 8.0              #: e-
    saturation: float = 60000.0       #: SATURATE, ADU (the ADC clips at 65535)
    bias_level: float = 1000.0        #: mean bias, ADU
    telescope: str = "XL85-SIM"       #: TELESCOP
    tel_diameter: float = 0.85        #: m
    site_lon: float = 117.57722       #: degrees east (Xinglong)
    site_lat: float = 40.395833       #: degrees
    site_ele: float = 960.0           #: m
    site_tz: float = 8.0              #: hours from UTC
    night: str = "2024-06-06"         #: local date of the evening
    start_utc: str | None = None      #: first science exposure start (ISO UTC); default 22:00 local
    target_ra: float | None = None    #: degrees; default: rising, airmass ``airmass_start`` at start
    target_dec: float | None = None   #: degrees; default site_lat - 10
    airmass_start: float = 1.8        #: airmass aimed at the first frame (when RA is not given)
    extinction_k: float = 0.2         #: mag per airmass
    zeropoint: float = 23.0           #: mag giving 1 e-/s at airmass 1
    n_stars: int | None = None        #: stars per size x size area; default 200 per 1024^2
    n_constant: int = 6               #: bright constant (comparison/check) stars
    target_flux_e: float = 3.0e5      #: target electrons per exposure, airmass 1, clear
    saturated_flux_e: float = 2.0e7   #: electrons of the saturated star
    psf_beta: float = 3.0             #: Moffat beta
    fwhm_min: float = 2.5             #: px
    fwhm_max: float = 4.5             #: px
    drift: float = 0.3                #: px per frame
    jump: tuple[float, float] = (35.0, -20.0)   #: re-pointing offset (px) from the middle frame on
    sky_adu: float = 250.0            #: dark-sky background, ADU per pixel per exposure
    sky_gradient: float = 0.08        #: relative sky change across the frame
    n_thin_clouds: int | None = None  #: frames with thin clouds; default n_frames / 20 (at least 1)
    thick_cloud: bool = True          #: one frame with thick clouds (almost no stars)
    cosmics_per_frame: float | None = None   #: mean hits per frame; default 5 per 1024^2 (at least 2)
    eclipse_depth: float = 0.3        #: mag
    eclipse_duration: float | None = None    #: s; default min(1 h, 2/3 of the run)
    pixel_rms: float = 0.01           #: pixel-to-pixel response scatter
    vignetting: float = 0.05          #: response loss in the corners
    dust: bool = True                 #: dust donuts in the flat
    flip_at: float | None = None      #: meridian flip: from this fraction of the night on, the field is turned
    #:                                   180 deg about the detector centre (and re-pointed by ``flip_offset``)
    flip_offset: tuple[float, float] = (14.0, -9.0)   #: pointing offset (px) added at the flip
    rotation_deg: float = 0.0         #: camera turned by this angle (deg, counter-clockwise) after the first frame
    drift_total: tuple[float, float] | None = None   #: a drifting night: the field moves by this (dx, dy) px from
    #:                                   the first frame to the last, linearly (replaces ``drift``; jumps still apply)
    rotation_total_deg: float = 0.0   #: a field turning over the night: this angle (deg, counter-clockwise) at the last
    #:                                   frame, growing linearly from 0 at the first (a mount's polar misalignment)
    scale: float = 1.0                #: plate scale of the frames after the first, relative to the first
    field_of: str | None = None       #: another night of the same field: the directory of an earlier simulated
    #:                                   night whose stars (truth/stars.ecsv) this night observes
    pointing: tuple[float, float] = (0.0, 0.0)   #: with ``field_of``: where that night's base-frame pixel
    #:                                   (0, 0) falls on this night's base frame, px (a different pointing)
    detector_seed: int | None = None  #: seed of the bias pattern and pixel response (default: ``seed``): nights
    #:                                   of one camera share it
    flat_gradient: float = 0.0        #: a bad flat set: illumination changing by this fraction across the frame
    wcs: bool = False                 #: write a TAN WCS in every science header (and sky positions in the truth)
    pixel_scale: float = 1.0          #: arcsec per pixel, with ``wcs`` (north up, east left on the base frame)
    ephemeris: tuple[float, float] | None = None   #: (t0 BJD_TDB, period d): the eclipse is the one of this
    #:                                   ephemeris nearest the middle of the run (nights of one binary)


#: options that change the frames' geometry; left out of ``truth.json`` at their defaults, so nights
#: simulated without them are byte-identical to those of earlier versions
_GEOMETRY_DEFAULTS = {"flip_at": None, "flip_offset": (14.0, -9.0), "rotation_deg": 0.0, "scale": 1.0,
                      "drift_total": None, "rotation_total_deg": 0.0,
                      "field_of": None, "pointing": (0.0, 0.0), "detector_seed": None, "flat_gradient": 0.0,
                      "wcs": False, "pixel_scale": 1.0, "ephemeris": None}


@dataclass
class SimulatedNight:
    """What :func:`simulate_night` wrote, with the truth in memory."""

    out_dir: Path
    raw_dir: Path
    truth_dir: Path
    config_path: Path
    stars: Table                      #: truth/stars.ecsv
    frames: Table                     #: truth/frames.ecsv
    info: dict                        #: truth/truth.json
    bias_files: list[Path] = field(default_factory=list)
    flat_files: list[Path] = field(default_factory=list)
    science_files: list[Path] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def target_id(self) -> int:
        return int(self.info["target_id"])

    @property
    def constant_ids(self) -> list[int]:
        return list(self.info["constant_ids"])

    @property
    def saturated_id(self) -> int:
        return int(self.info["saturated_id"])


# ------------------------------------------------------------------ helpers
def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def _options(kw: dict, n_frames: int, size: int, seed: int) -> SimOptions:
    names = {f.name for f in fields(SimOptions)}
    bad = sorted(set(kw) - names)
    if bad:
        import difflib
        close = difflib.get_close_matches(bad[0], sorted(names), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"simulate_night: unknown option {bad[0]!r}{hint}")
    for name in ("jump", "flip_offset", "pointing", "ephemeris", "drift_total"):
        if name in kw and kw[name] is not None:
            kw = dict(kw, **{name: tuple(float(v) for v in kw[name])})
    o = SimOptions(**kw)
    checks = [
        (isinstance(seed, (int, np.integer)) and seed >= 0, f"seed must be a non-negative integer, got {seed!r}"),
        (n_frames >= 1, f"n_frames must be at least 1, got {n_frames}"),
        (size >= 64, f"size must be at least 64 px, got {size}"),
        (o.obj and not any(c in o.obj for c in "-_/ ."), f"option obj {o.obj!r}: no '-', '_', '/', '.' or blank"),
        (len(o.band) == 1 and o.band.isalpha(), f"option band {o.band!r}: one letter"),
        (o.exptime > 0 and o.cadence >= o.exptime, f"options exptime/cadence: need 0 < exptime <= cadence, "
                                                    f"got {o.exptime}/{o.cadence}"),
        (o.gain > 0 and o.rdnoise >= 0, "options gain > 0 and rdnoise >= 0"),
        (0 < o.fwhm_min <= o.fwhm_max, "options fwhm_min/fwhm_max: need 0 < min <= max"),
        (o.psf_beta > 1, "option psf_beta must exceed 1"),
        (o.n_bias >= 0 and o.n_flats >= 0 and o.n_constant >= 0, "counts must be non-negative"),
        (0 <= o.eclipse_depth < 5, "option eclipse_depth: 0 to 5 mag"),
        (o.flip_at is None or 0 < o.flip_at < 1, f"option flip_at: a fraction of the night, got {o.flip_at!r}"),
        (0.5 < o.scale < 2 and abs(o.rotation_deg) <= 180, "options scale (0.5 to 2) and rotation_deg (+-180)"),
        (abs(o.rotation_total_deg) <= 180, "option rotation_total_deg (+-180)"),
        (o.drift_total is None or (len(o.drift_total) == 2 and all(map(math.isfinite, o.drift_total))),
         f"option drift_total: (dx, dy) px, got {o.drift_total!r}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    return o


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


def _moffat_alpha(fwhm: float, beta: float) -> float:
    return fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def _stamp_radius(flux: float, alpha: float, beta: float, cap: int) -> int:
    frac = min(max(0.3 / max(flux, 1e-9), 1e-6), 1e-3)     # flux fraction allowed outside the stamp
    r = alpha * math.sqrt(frac ** (-1.0 / (beta - 1.0)) - 1.0)
    return int(min(max(math.ceil(r), 3), cap))


def _add_moffat(img: np.ndarray, x: float, y: float, flux: float, alpha: float, beta: float, rad: int) -> None:
    """Add a Moffat star of ``flux`` (its full integral) centred at (x, y), inside a stamp."""
    ny, nx = img.shape
    ix, iy = int(round(x)), int(round(y))
    x0, x1 = max(ix - rad, 0), min(ix + rad + 1, nx)
    y0, y1 = max(iy - rad, 0), min(iy + rad + 1, ny)
    if x0 >= x1 or y0 >= y1:
        return
    a2 = alpha * alpha
    ddx = (np.arange(x0, x1) - x) ** 2 / a2
    ddy = (np.arange(y0, y1) - y) ** 2 / a2
    t = 1.0 + ddy[:, None] + ddx[None, :]
    norm = flux * (beta - 1.0) / (math.pi * a2)
    if beta == 3.0:
        img[y0:y1, x0:x1] += norm / (t * t * t)
    else:
        img[y0:y1, x0:x1] += norm * t ** (-beta)


def _bias_pattern(o: SimOptions, size: int, seed: int) -> np.ndarray:
    rng = _rng(seed if o.detector_seed is None else o.detector_seed, _S_PATTERN, 0)
    cols = rng.normal(0.0, 2.0, size)
    cols = np.convolve(cols, np.ones(3) / 3.0, mode="same") * 1.5       # correlated column structure
    hot = rng.choice(size, size=max(1, size // 256), replace=False)
    cols[hot] += rng.uniform(8.0, 20.0, hot.size)                       # a few bright columns
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1.0)
    b = o.bias_level + cols[None, :] + 6.0 * (yy - 0.5) + 10.0 * np.exp(-xx * size / 40.0)
    return b.astype(np.float32)


def _pixel_response(o: SimOptions, size: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    rng = _rng(seed if o.detector_seed is None else o.detector_seed, _S_PATTERN, 1)
    p = 1.0 + rng.normal(0.0, o.pixel_rms, (size, size))
    c = (size - 1) / 2.0
    cx, cy = c + rng.uniform(-0.05, 0.05) * size, c + rng.uniform(-0.05, 0.05) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * c * c)
    p *= 1.0 - o.vignetting * r2
    donuts = []
    if o.dust:
        for _ in range(2):
            rd = max(6.0, 0.025 * size * rng.uniform(0.7, 1.3))
            dx, dy = rng.uniform(0.1, 0.9, 2) * size
            rr = np.hypot(xx - dx, yy - dy) / rd
            att = 0.015 * np.exp(-(rr ** 8)) + 0.03 * np.exp(-0.5 * ((rr - 0.85) / 0.12) ** 2)
            p *= 1.0 - att
            donuts.append({"x": float(dx), "y": float(dy), "radius": float(rd)})
    p /= np.median(p)
    return p.astype(np.float32), donuts


def _header(o: SimOptions, date_obs: str, exptime: float, imagetyp: str, obj: str,
            ra: str | None = None, dec: str | None = None) -> fits.Header:
    h = fits.Header()
    h["DATE-OBS"] = (date_obs, "UTC date/time of exposure start")
    h["EXPTIME"] = (float(exptime), "exposure time, s")
    h["IMAGETYP"] = (imagetyp, "type of image")
    h["FILTER"] = (o.band, "filter name")
    h["OBJECT"] = (obj, "object name")
    if ra is not None:
        h["RA"] = (ra, "target right ascension, hh:mm:ss (J2000)")
        h["DEC"] = (dec, "target declination, dd:mm:ss (J2000)")
        h["EQUINOX"] = (2000.0, "equinox of RA, DEC")
    h["GAIN"] = (o.gain, "e-/ADU")
    h["RDNOISE"] = (o.rdnoise, "read noise, e-")
    h["SATURATE"] = (o.saturation, "saturation level, ADU")
    h["TELESCOP"] = (o.telescope, "telescope")
    h["INSTRUME"] = (f"QLCP-SIM-{getattr(o, '_camera', 0)}", "simulated camera: one per detector_seed")
    h["XBINNING"] = 1
    h["YBINNING"] = 1
    return h


def _write_frame(path: Path, adu: np.ndarray, header: fits.Header) -> None:
    data = np.clip(np.rint(adu), 0, _ADC_MAX).astype(np.uint16)
    write_fits(path, data, header)       # uint16 -> BITPIX 16, BZERO 32768


def _read_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


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


# ---------------------------------------------------------------- the frames
def _cosmics(rng: np.random.Generator, size: int, mean: float, avoid: np.ndarray) -> list[tuple[int, int, float]]:
    hits = []
    n = int(rng.poisson(mean))
    for _ in range(n):
        for _try in range(50):
            x, y = rng.integers(2, size - 2, 2)
            if avoid.size == 0 or np.min(np.hypot(avoid[:, 0] - x, avoid[:, 1] - y)) >= 20:
                break
        else:
            continue
        length = int(rng.integers(1, 5))
        step = rng.choice([-1, 0, 1], size=(length, 2))
        for k in range(length):
            x = int(np.clip(x + (step[k, 0] if k else 0), 0, size - 1))
            y = int(np.clip(y + (step[k, 1] if k else 0), 0, size - 1))
            hits.append((x, y, float(rng.uniform(1500.0, 15000.0))))
    return hits


def _write_bias_frames(o: SimOptions, raw: Path, seed: int, bias: np.ndarray, t0: Time) -> list[Path]:
    """Bias frames (before sunset): pattern + read noise."""
    files = []
    for k in range(o.n_bias):
        rng = _rng(seed, _S_BIAS, k)
        date = _iso_ms(t0 + k * 12.0 * u.s)[0]
        p = raw / f"bias-{k + 1:04d}.fit"
        _write_frame(p, bias + _read_noise(rng, bias.shape, o.rdnoise / o.gain),
                     _header(o, date, 0.0, "BIAS", "bias"))
        files.append(p)
    return files


def _flat_levels(o: SimOptions) -> list[float]:
    """Median light level (ADU above bias) of each flat, in the order taken (evening: fading)."""
    bad = o.flat_bad and o.n_flats >= 3
    levels = list(np.linspace(42000.0, 15000.0, o.n_flats - 2 if bad else o.n_flats))
    if bad:                   # the first one saturated, the last one too faint
        levels = [61000.0 - o.bias_level] + levels + [1800.0]
    return [float(v) for v in levels]


def _write_flat_frames(o: SimOptions, raw: Path, seed: int, bias: np.ndarray, resp: np.ndarray,
                       t0: Time) -> tuple[list[Path], list[float]]:
    """Evening twilight flats: uniform light times the pixel response, Poisson, bias, read noise."""
    files, levels = [], []
    for k, lev in enumerate(_flat_levels(o)):
        rng = _rng(seed, _S_FLAT, k)
        exp = round(3.0 * 1.3 ** k, 1)            # the sky fades, the observer lengthens the exposures
        date = _iso_ms(t0 + k * 75.0 * u.s)[0]
        light = resp.astype(np.float64)
        if o.flat_gradient:             # lights on in the dome: an illumination slope the sky does not have
            light = light * (1.0 + o.flat_gradient * (np.arange(resp.shape[1]) / (resp.shape[1] - 1) - 0.5))[None, :]
        electrons = rng.poisson((lev * o.gain) * light).astype(np.float32)
        adu = electrons / np.float32(o.gain) + bias + _read_noise(rng, bias.shape, o.rdnoise / o.gain)
        p = raw / f"flat-{k + 1:04d}{o.band}.fit"
        _write_frame(p, adu, _header(o, date, exp, "FLAT", "flat"))
        files.append(p)
        levels.append(lev + o.bias_level)
    return files, levels


def _sky_shape(o: SimOptions, size: int, seed: int) -> tuple[np.ndarray, float]:
    """Relative sky pattern (a linear gradient through the centre) and its angle (rad)."""
    ang = float(_rng(seed, _S_NIGHT, 1).uniform(0, 2 * np.pi))
    c = (size - 1) / 2.0
    ramp = (np.arange(size) - c) / size
    shape = 1.0 + o.sky_gradient * (math.cos(ang) * ramp[None, :] + math.sin(ang) * ramp[:, None])
    return shape, ang


def _write_science_frames(o: SimOptions, raw: Path, size: int, seed: int, plan: dict, stars: Table,
                          bias: np.ndarray, resp: np.ndarray, sky_shape: np.ndarray) -> tuple[list[Path], list]:
    """Science frames, one at a time: sky + stars, pixel response, Poisson, cosmics, bias, read noise."""
    n = len(plan["dx"])
    beta = o.psf_beta
    xs, ys, fl = (np.asarray(stars[c], float) for c in ("x", "y", "flux_e"))
    special = np.asarray(stars["role"]) != "field"
    cr_mean = o.cosmics_per_frame if o.cosmics_per_frame is not None else max(2.0, 5.0 * size * size / 1024.0 ** 2)
    cap = size // 2
    files, cr_rows = [], []
    for i in range(n):
        rng = _rng(seed, _S_SCI, i)
        factor = 10 ** (-0.4 * o.extinction_k * (plan["airmass"][i] - 1.0)) * plan["transp"][i]
        alpha = _moffat_alpha(plan["fwhm"][i], beta)
        light = sky_shape * (plan["sky"][i] * o.gain)
        if plan.get("mats") is None:
            fx, fy = xs + plan["dx"][i], ys + plan["dy"][i]
        else:
            fx, fy = _apply(plan["mats"][i], xs, ys)
        for j in np.nonzero((fx > -cap) & (fx < size - 1 + cap) & (fy > -cap) & (fy < size - 1 + cap))[0]:
            f = fl[j] * factor * (plan["target_rel"][i] if j == 0 else 1.0)
            rad = _stamp_radius(f, alpha, beta, cap)
            if -rad <= fx[j] <= size - 1 + rad and -rad <= fy[j] <= size - 1 + rad:
                _add_moffat(light, fx[j], fy[j], f, alpha, beta, rad)
        light *= resp
        electrons = rng.poisson(light).astype(np.float32)
        del light
        name = f"{o.obj}-{i + 1:04d}{o.band}.fit"
        for hx, hy, he in _cosmics(rng, size, cr_mean, np.column_stack([fx[special], fy[special]])):
            electrons[hy, hx] += he
            cr_rows.append((name, hx, hy, he))
        adu = electrons / np.float32(o.gain) + bias + _read_noise(rng, bias.shape, o.rdnoise / o.gain)
        p = raw / name
        hdr = _header(o, plan["date_obs"][i], o.exptime, "LIGHT", o.obj, plan["ra_s"], plan["dec_s"])
        if o.wcs:
            hdr.update(_wcs_cards(o, plan, stars, i))
        _write_frame(p, adu, hdr)
        files.append(p)
        if (i + 1) % 20 == 0:
            log.info("simulated %d/%d science frames", i + 1, n)
    return files, cr_rows


def _base_to_frame(plan: dict, i: int) -> tuple[np.ndarray, np.ndarray]:
    """The 2x2 matrix and translation from base-frame to frame-``i`` pixels."""
    if "mats" in plan:
        m = np.asarray(plan["mats"][i], float)
        return m[:, :2], m[:, 2]
    return np.eye(2), np.array([plan["dx"][i], plan["dy"][i]], float)


def _wcs_cards(o: SimOptions, plan: dict, stars: Table, i: int) -> dict:
    """A TAN WCS of frame ``i``: the target (star 0) at the target's RA/Dec, ``pixel_scale`` arcsec/px,
    north up and east left on the base frame, turned with the frame."""
    a, t = _base_to_frame(plan, i)
    x0, y0 = float(stars["x"][0]), float(stars["y"][0])
    fx, fy = a @ np.array([x0, y0]) + t
    s = o.pixel_scale / 3600.0
    cd = np.array([[-s, 0.0], [0.0, s]]) @ np.linalg.inv(a)
    return {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": float(fx + 1), "CRPIX2": float(fy + 1),
            "CRVAL1": float(plan["ra"]), "CRVAL2": float(plan["dec"]), "CD1_1": float(cd[0, 0]),
            "CD1_2": float(cd[0, 1]), "CD2_1": float(cd[1, 0]), "CD2_2": float(cd[1, 1]), "RADESYS": "ICRS",
            "CUNIT1": "deg", "CUNIT2": "deg"}


def _sky_positions(o: SimOptions, plan: dict, stars: Table) -> Table:
    """The truth's stars with ``ra``, ``dec`` (deg) through the base frame's WCS."""
    from astropy.wcs import WCS

    w = WCS(fits.Header(_wcs_cards(o, plan, stars, 0)))
    ra, dec = w.all_pix2world(np.asarray(stars["x"], float), np.asarray(stars["y"], float), 0)
    stars = Table(stars, copy=True)
    stars["ra"], stars["dec"] = ra, dec
    return stars


def _frames_table(o: SimOptions, plan: dict, files: list[Path]) -> Table:
    fr = Table()
    fr["file"] = [p.name for p in files]
    fr["date_obs"] = plan["date_obs"]
    fr["jd_start_utc"] = plan["t_start"].jd
    fr["jd_mid_utc"] = plan["t_mid"].jd
    fr["bjd_mid_tdb"] = plan["bjd_mid"]
    fr["exptime"] = np.full(len(files), o.exptime)
    fr["dx"] = plan["dx"]
    fr["dy"] = plan["dy"]
    if plan.get("mats") is not None:      # a transformed night: the full transform (absent: a pure shift)
        fr["rot_deg"] = plan["rot_deg"]
        fr["scale"] = plan["scale"]
        for r in range(2):
            for k in range(3):
                fr[f"m{r}{k}"] = plan["mats"][:, r, k]
    fr["fwhm"] = plan["fwhm"]
    fr["sky_adu"] = plan["sky"]
    fr["airmass"] = plan["airmass"]
    fr["alt"] = plan["alt"]
    fr["transparency"] = plan["transp"]
    fr["target_rel_flux"] = plan["target_rel"]
    fr["cloudy"] = plan["transp"] < 1.0
    fr.meta["comments"] = [
        "dx, dy: true offset = position in this frame - position in the base (first) frame, px",
        *(["  (transformed night: where the detector centre of the base frame lands, minus the centre;",
           "  rot_deg, scale, m00..m12: the transform base pixel -> frame pixel, 0-based,",
           "  x' = m00 x + m01 y + m02, y' = m10 x + m11 y + m12)"] if plan.get("mats") is not None else []),
        "fwhm: Moffat FWHM, px",
        "sky_adu: sky at the frame centre, ADU above bias, before the pixel response",
        "airmass: sec z of astropy AltAz at mid-exposure (no refraction); alt in degrees",
        "target_rel_flux: eclipsing target flux / out-of-eclipse flux, mean over the exposure",
    ]
    return fr


def _cosmics_table(rows: list) -> Table:
    cr = Table()
    cr["file"] = np.array([r[0] for r in rows], dtype=str) if rows else np.array([], dtype="U1")
    cr["x"] = np.array([r[1] for r in rows], dtype=int)
    cr["y"] = np.array([r[2] for r in rows], dtype=int)
    cr["electrons"] = np.array([r[3] for r in rows], dtype=float)
    cr.meta["comments"] = ["x, y: pixel hit in that frame (0-based); electrons added after the Poisson draw"]
    return cr


def simulate_night(out_dir, n_frames: int = 60, size: int = 1024, seed: int = 0, *,
                   overwrite: bool = False, dated: bool = False, **options) -> SimulatedNight:
    """Write a synthetic night (raw frames, config, truth) under ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Destination; ``raw/``, ``truth/`` and ``night.yaml`` are created in it.
    n_frames : int
        Number of science frames (cadence ``options['cadence']``, default 90 s).
    size : int
        Frame side, px (square frames).
    seed : int
        Seed of every random draw; the same seed gives byte-identical files.
    overwrite : bool
        Allow an existing non-empty ``raw/`` holding only ``*.fit`` files: they are deleted first.
    dated : bool
        Put the frames in ``raw/YYYYMMDD/`` (the evening's date, ``options['night']``), as
        observatories name night directories, instead of ``raw/`` itself.
    **options
        Fields of :class:`SimOptions` (object name, band, detector, site, stars, clouds, eclipse ...).

    Returns
    -------
    SimulatedNight
        Paths and the truth tables.

    Raises
    ------
    ConfigError
        Unknown or impossible option.
    InputError
        ``raw/`` exists and is not empty, and ``overwrite`` is false or it holds other files.
    """
    tic = time.perf_counter()
    o = _options(dict(options), n_frames, size, seed)
    object.__setattr__(o, "_camera", seed if o.detector_seed is None else o.detector_seed)   # INSTRUME: per camera
    out = Path(out_dir)
    raw, truth = _prepare_dirs(out, overwrite, o.night.replace("-", "") if dated else "")

    plan = _plan(o, n_frames, seed)
    geom = _geometry(o, n_frames, size, plan["dx"], plan["dy"])
    if geom is not None:
        plan.update(geom)
    stars = _field(o, size, seed, plan["dx"], plan["dy"], geom)
    if o.field_of:
        stars = _shared_field(o)
    bias = _bias_pattern(o, size, seed)
    resp, donuts = _pixel_response(o, size, seed)
    sky_shape, sky_ang = _sky_shape(o, size, seed)

    bias_files = _write_bias_frames(o, raw, seed, bias, plan["start0"] - 2.75 * u.hour)
    flat_files, flat_levels = _write_flat_frames(o, raw, seed, bias, resp, plan["start0"] - 2.0 * u.hour)
    sci_files, cr_rows = _write_science_frames(o, raw, size, seed, plan, stars, bias, resp, sky_shape)

    fr = _frames_table(o, plan, sci_files)
    if o.wcs:
        stars = _sky_positions(o, plan, stars)
    info = _truth_info(o, n_frames, size, seed, plan, bias, sky_ang, donuts,
                       bias_files, flat_files, flat_levels, sci_files)
    write_fits(truth / "bias.fits", bias)
    write_fits(truth / f"flat_{o.band}.fits", resp)
    write_table(truth / "stars.ecsv", stars)
    write_table(truth / "frames.ecsv", fr)
    write_table(truth / "cosmics.ecsv", _cosmics_table(cr_rows))
    write_json(truth / "truth.json", info)
    cfg_path = _write_night_config(out, o, seed)

    el = time.perf_counter() - tic
    log.info("simulated night in %s: %d bias, %d flats, %d science frames of %d px in %.1f s",
             out, len(bias_files), len(flat_files), n_frames, size, el)
    return SimulatedNight(out_dir=out, raw_dir=raw, truth_dir=truth, config_path=cfg_path, stars=stars,
                          frames=fr, info=info, bias_files=bias_files, flat_files=flat_files,
                          science_files=sci_files, elapsed_s=el)


def _shared_field(o: SimOptions) -> Table:
    """The stars of the night in ``o.field_of``, moved by ``o.pointing`` (another night of that field:
    the same stars, fluxes and variability, pointed elsewhere)."""
    path = Path(o.field_of) / "truth" / "stars.ecsv"
    if not path.is_file():
        raise ConfigError(f"simulate_night: field_of {o.field_of!r}: no truth/stars.ecsv there")
    stars = Table.read(path, format="ascii.ecsv")
    stars["x"] = np.asarray(stars["x"], float) + o.pointing[0]
    stars["y"] = np.asarray(stars["y"], float) + o.pointing[1]
    return stars


def _prepare_dirs(out: Path, overwrite: bool, night: str = "") -> tuple[Path, Path]:
    """Create ``out/raw`` (``out/raw/{night}`` when ``night`` is given) and ``out/truth``; an earlier
    night's ``*.fit`` frames in ``raw`` are deleted when ``overwrite``.

    Raises
    ------
    InputError
        ``raw/`` is not empty and ``overwrite`` is false, or it holds anything but ``*.fit`` files.
    """
    raw, truth = (out / "raw" / night if night else out / "raw"), out / "truth"
    if raw.exists() and any(raw.iterdir()):
        if not overwrite:
            raise InputError(f"{raw}: not empty (pass overwrite=True to replace a simulated night)")
        if any(p.suffix != ".fit" or not p.is_file() for p in raw.iterdir()):
            raise InputError(f"{raw}: holds files other than .fit frames; not touching it")
        for p in raw.glob("*.fit"):
            p.unlink()
    raw.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    return raw, truth


def _truth_info(o: SimOptions, n_frames: int, size: int, seed: int, plan: dict, bias: np.ndarray,
                sky_ang: float, donuts: list[dict], bias_files: list[Path], flat_files: list[Path],
                flat_levels: list[float], sci_files: list[Path]) -> dict:
    """The content of ``truth/truth.json``: options, site, target, eclipse ephemeris, detector, models,
    the special stars' ids, the jump and drift, and the calibration files."""
    return {
        "generator": f"qlcp.core.simulate {__version__}",
        "seed": int(seed), "n_frames": int(n_frames), "size": int(size),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(o).items()
                    if k not in _GEOMETRY_DEFAULTS or v != _GEOMETRY_DEFAULTS[k]},
        "site": {"lon": o.site_lon, "lat": o.site_lat, "ele": o.site_ele, "tz": o.site_tz},
        "object": o.obj, "band": o.band,
        "target": {"ra_deg": plan["ra"], "dec_deg": plan["dec"], "ra": plan["ra_s"], "dec": plan["dec_s"]},
        "eclipse": {"t0_bjd_tdb": plan["t0_bjd"], "t0_jd_utc": float(plan["t0_utc"].jd),
                    "depth_mag": o.eclipse_depth, "duration_s": plan["dur_s"],
                    "duration_d": plan["dur_s"] / 86400.0,
                    "shape": "1 - delta*(1-u^2)^1.5 for |u|<1, u = 2(BJD_TDB - t0)/duration; "
                             "delta = 1 - 10^(-0.4 depth_mag)"},
        "gain": o.gain, "rdnoise": o.rdnoise, "saturation": o.saturation, "adc_max": _ADC_MAX,
        "bias_level": float(np.median(bias)), "extinction_k": o.extinction_k, "zeropoint": o.zeropoint,
        "psf": {"model": "moffat", "beta": o.psf_beta, "sampling": "pixel centres"},
        "sky_model": {"formula": "sky_adu * (1 + amplitude * (cos(angle) (x - c) + sin(angle) (y - c)) / size), "
                                 "c = (size - 1) / 2; ADU above bias, before the pixel response",
                      "amplitude": o.sky_gradient, "angle_deg": math.degrees(sky_ang)},
        "base_file": sci_files[0].name,
        "target_id": 0, "constant_ids": list(range(1, 1 + o.n_constant)), "saturated_id": 1 + o.n_constant,
        "jump_frame": plan["jump_frame"], "drift_angle_deg": plan["drift_angle"],
        "flats": {"files": [p.name for p in flat_files], "median_adu": flat_levels},
        "dust_donuts": donuts,
        "bias_files": [p.name for p in bias_files],
        **({"flip_frame": plan["flip_frame"]} if plan.get("mats") is not None else {}),
    }


def _write_night_config(out: Path, o: SimOptions, seed: int) -> Path:
    """``out/night.yaml``: the site and detector settings a reduction of the night needs."""
    cfg = {"site_lon": o.site_lon, "site_lat": o.site_lat, "site_ele": o.site_ele, "site_tz": o.site_tz,
           "gain": o.gain, "rdnoise": o.rdnoise, "saturation": o.saturation, "tel_diameter": o.tel_diameter}
    return write_text(out / "night.yaml",
                      f"# QLCP config of the simulated night {o.night} ({o.obj} {o.band}, seed {seed})\n"
                      + yaml.safe_dump(cfg, sort_keys=False))


def truth_transforms(frames: Table) -> np.ndarray:
    """The true transform of every frame, base pixel -> frame pixel (0-based), from ``truth/frames.ecsv``.

    Parameters
    ----------
    frames : Table
        ``truth/frames.ecsv`` (or :attr:`SimulatedNight.frames`).

    Returns
    -------
    ndarray (n, 2, 3)
        ``m00..m12`` of a transformed night; ``[[1, 0, dx], [0, 1, dy]]`` of a night of shifts.
    """
    n = len(frames)
    if "m00" in frames.colnames:
        return np.stack([[np.asarray(frames[f"m{r}{k}"], float) for k in range(3)] for r in range(2)]).transpose(2, 0, 1)
    mats = np.zeros((n, 2, 3))
    mats[:, 0, 0] = mats[:, 1, 1] = 1.0
    mats[:, 0, 2] = np.asarray(frames["dx"], float)
    mats[:, 1, 2] = np.asarray(frames["dy"], float)
    return mats


def simulate_small(out_dir, n_frames: int = 12, size: int = 256, seed: int = 0, **options) -> SimulatedNight:
    """A small, fast night for tests (default 12 frames of 256 x 256 px, 5 bias, 5 flats).

    Same model as :func:`simulate_night`; ``options`` override the small defaults.
    """
    options.setdefault("n_bias", 5)
    options.setdefault("n_flats", 5)
    options.setdefault("n_constant", 4)
    return simulate_night(out_dir, n_frames=n_frames, size=size, seed=seed, **options)


__all__ = ["SimOptions", "SimulatedNight", "simulate_night", "simulate_small", "truth_transforms"]
