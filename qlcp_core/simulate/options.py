"""What a simulated night is asked for (:class:`SimOptions`) and what it returns (:class:`SimulatedNight`).

Also the seeded random streams every part of the simulator draws from (:func:`_rng`): the
same options and seed give the same frames, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from astropy.table import Table

from ..errors import ConfigError

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
