"""The pixels and files of a simulated night: bias, flat and science frames with their headers.

Stars are Moffat profiles on a sky with a gradient, over a bias pattern and a pixel response,
with read noise, cosmic rays and saturation; headers as a small telescope's camera writes
them (with a WCS when asked).  Also the truth tables of the frames and cosmic rays.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

from ..io import write_fits
from .options import SimOptions, _ADC_MAX, _S_BIAS, _S_FLAT, _S_NIGHT, _S_PATTERN, _S_SCI, _rng
from .plan import _apply, _iso_ms

log = logging.getLogger("qlcp.simulate")


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
