"""A synthetic night of per-frame catalogues, shared by the catalogue, pick and
differential tests.

``make_night`` writes the outputs of steps p and o for a field of 30 stars with known
fluxes: an eclipsing target, Poisson-like noise of known sigma (CCD equation +
scintillation), extinction and clouds, a drift and a jump in the offsets.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from astropy.table import Table

from qlcp.core.config import Config
from qlcp.core.photometry import SKY_GAP, SKY_THICK

SHAPE = (1024, 1024)
GAIN, RDNOISE, SKY = 1.5, 8.0, 300.0
APER = [4.0, 6.0]
APER_FRAC = np.array([0.85, 0.97])      # fraction of the star's light in each aperture
# default annulus: largest aperture + SKY_GAP .. + SKY_GAP + SKY_THICK
NSKY = math.pi * ((max(APER) + SKY_GAP + SKY_THICK) ** 2 - (max(APER) + SKY_GAP) ** 2)
FWHM = 3.0
EXPTIME = 30.0
K_EXT = 0.25

# special stars
TGT, SAT, NEAR_SAT, VAR_COMP, DROP_COMP, CHK, PAIR_A, PAIR_B = 0, 7, 8, 9, 10, 11, 5, 6
BAD_OFFSET_FRAME, NO_CAT_FRAME, MISSING_FRAME = 10, 20, 30
ROUGH_OFFSET_FRAMES = (61, 62)


def cfg_for_tests(**kw) -> Config:
    base = dict(gain=GAIN, rdnoise=RDNOISE, aper=APER, tel_diameter=0.85, site_ele=960.0, scint_cy=1.5)
    base.update(kw)
    return Config(**base)


def scint_rel(airmass):
    """Osborn et al. 2015 eq. 7, written out independently of qlcp.core.noise."""
    return np.sqrt(1e-5 * 1.5**2 * 0.85 ** (-4 / 3) / EXPTIME * airmass**3 * np.exp(-2 * 960.0 / 8000.0))


def ccd_sigma_adu(mu, npix):
    return np.sqrt(mu * GAIN + npix * (1 + npix / NSKY) * (SKY * GAIN + RDNOISE**2)) / GAIN


def eclipse(t, depth, t0, width=0.04):
    return depth * np.exp(-0.5 * ((t - t0) / width) ** 2)


def _positions(rng, n):
    xy = [(500.0, 520.0)]
    while len(xy) < n:
        p = rng.uniform(80, 930, 2)
        if len(xy) == PAIR_B:           # the close neighbour of star 5, 6 px away
            p = np.array(xy[PAIR_A]) + (6.0, 0.0)
        elif min(math.dist(p, q) for q in xy) < 35:
            continue
        xy.append(tuple(p))
    return np.array(xy)


def make_night(tmp: Path, *, seed=1, nf=100, depth=0.3, var_comp=False, drop_comp=False):
    """Write ``{tmp}/M1_V/*.cat.fits`` and an offsets table; return everything a test needs."""
    rng = np.random.default_rng(seed)
    ns = 30
    xy0 = _positions(rng, ns)
    flux = 10 ** rng.uniform(np.log10(2e4), np.log10(3e5), ns)
    flux[TGT] = 1.5e5
    flux[SAT] = 1.5e6
    # peak + sky at 95 % of saturation (60000 ADU) in the frames of lowest airmass
    flux[NEAR_SAT] = (0.95 * 60000 - SKY) * 2 * math.pi * (FWHM / 2.3548) ** 2 / 10 ** (-0.4 * K_EXT * 1.05)
    flux[DROP_COMP] = 3e5
    flux[CHK] = 1e5
    field = rng.uniform(60, 960, (15, 2))                 # faint stars not in starxy
    field = field[np.min(np.hypot(*(field[:, None, :] - xy0[None]).transpose(2, 0, 1)), axis=1) > 25]

    jd = 2460400.0 + 0.0025 * np.arange(nf)
    t = jd - jd[0]
    airmass = 1.05 + 3.0 * (t / t[-1] - 0.3) ** 2
    cloud = np.zeros(nf)
    cloud[40:48] = rng.uniform(0.3, 0.7, 8)
    atten = 10 ** (-0.4 * (K_EXT * airmass + cloud))
    var = np.zeros((nf, ns))
    var[:, TGT] = eclipse(t, depth, 0.12)
    if var_comp:
        var[:, VAR_COMP] = eclipse(t, 0.25, 0.18, 0.03)
    off_true = np.column_stack([0.08 * np.arange(nf), -0.05 * np.arange(nf)])
    off_true[nf // 2:] += (35.0, -22.0)                  # a jump (meridian flip, re-pointing)
    npix = math.pi * np.array(APER) ** 2
    sig_s = scint_rel(airmass)

    d = tmp / "M1_V"
    d.mkdir(parents=True, exist_ok=True)
    cat_files, rows = [], []
    true_xy = np.full((nf, ns, 2), np.nan)
    sigma_mag = np.zeros((nf, ns, 2))
    for f in range(nf):
        raw = f"M1-{f:04d}V.fit"
        mu = flux[None, :] * 10 ** (-0.4 * var[f])[None, :] * atten[f] * APER_FRAC[:, None]   # (2, ns)
        mu_auto = flux * 10 ** (-0.4 * var[f]) * atten[f]
        s_ccd = ccd_sigma_adu(mu, npix[:, None])
        n1, n2 = rng.standard_normal(ns), rng.standard_normal(ns)
        obs = mu * (1 + sig_s[f] * n1) + s_ccd * n2
        obs_auto = mu_auto * (1 + sig_s[f] * n1) + ccd_sigma_adu(mu_auto, 2 * npix[1]) * n2
        sigma_mag[f] = (1.0857 * np.sqrt((s_ccd / mu) ** 2 + sig_s[f] ** 2)).T
        pos = xy0 + off_true[f] + rng.normal(0, 0.03, (ns, 2))
        true_xy[f] = pos
        keep = np.ones(ns, bool)
        if f == MISSING_FRAME:
            keep[PAIR_A] = False
        if drop_comp and f >= nf // 2:
            keep[DROP_COMP] = False
        true_xy[f, ~keep] = np.nan
        nfield = len(field)
        fobs = np.full((2, nfield), 800.0) * atten[f] + rng.normal(0, 60, (2, nfield))
        X = np.concatenate([pos[keep, 0], field[:, 0] + off_true[f, 0]])
        Y = np.concatenate([pos[keep, 1], field[:, 1] + off_true[f, 1]])
        Fl = np.concatenate([obs[:, keep], fobs], axis=1).T
        Fe = np.concatenate([s_ccd[:, keep], np.full((2, nfield), 60.0)], axis=1).T
        FA = np.concatenate([obs_auto[keep], fobs[1]])
        FAe = np.concatenate([ccd_sigma_adu(mu_auto, 2 * npix[1])[keep], np.full(nfield, 80.0)])
        peak = FA / (2 * math.pi * (FWHM / 2.3548) ** 2)
        flags = np.zeros(len(X), dtype=np.int16)
        isat = np.flatnonzero(np.arange(ns)[keep] == SAT)
        flags[isat] |= 2
        peak[isat] = 65535 - SKY
        order = rng.permutation(len(X))               # catalogue rows in no particular order
        tab = Table()
        tab["X"], tab["Y"] = X[order], Y[order]
        tab["Elong"] = np.ones(len(X))
        tab["FWHM"] = np.full(len(X), FWHM)
        tab["FluxAUTO"], tab["FErrAUTO"] = FA[order], FAe[order]
        tab["MagAUTO"] = 25 - 2.5 * np.log10(FA[order])
        tab["ErrAUTO"] = 1.0857 * FAe[order] / FA[order]
        tab["Flux"], tab["FErr"] = Fl[order], Fe[order]
        tab["Mag"] = 25 - 2.5 * np.log10(Fl[order])
        tab["Err"] = 1.0857 * Fe[order] / Fl[order]
        tab["Sky"] = np.full(len(X), SKY)
        tab["Peak"] = peak[order]
        tab["Flags"] = flags[order]
        tab.meta.update(JD=jd[f], MJD=jd[f] - 2400000.5, HJD=jd[f] + 0.0029, BJD=jd[f] + 0.0030,
                        AIRMASS=airmass[f], EXPTIME=EXPTIME, RAWFILE=raw, FWHM=FWHM, SKY=SKY, NSTARS=len(X),
                        APER0=APER[0], APER1=APER[1])
        p = d / f"M1-{f:04d}V.cat.fits"
        if f != NO_CAT_FRAME:
            tab.write(p, overwrite=True)
        cat_files.append(p)
        est = off_true[f] + rng.normal(0, 0.4, 2)      # step o is good to a fraction of a pixel
        if f in ROUGH_OFFSET_FRAMES:
            est += (2.5, -2.0)                          # ... but not always
        ok = f != BAD_OFFSET_FRAME
        rows.append((raw, f"M1_V/M1-{f:04d}V.bf.fits", jd[f], est[0] if ok else np.nan,
                     est[1] if ok else np.nan, ns if ok else 0, ok))
    offsets = Table(rows=rows, names=("file", "bf", "jd", "dx", "dy", "n_matched", "ok"))
    m_true = 25 - 2.5 * np.log10(flux[None, :, None] * APER_FRAC[None, None, :]) + var[:, :, None]
    return dict(cat_files=cat_files, offsets=offsets, starxy=[tuple(p) for p in xy0], true_xy=true_xy,
                off_true=off_true, m_true=m_true, var=var, sigma_mag=sigma_mag, airmass=airmass, jd=jd,
                cloud=cloud, flux=flux, nf=nf, ns=ns)
