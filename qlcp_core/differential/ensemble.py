"""The comparison ensemble of step d and its statistics.

Which stars are target, comparisons and checks (:func:`resolve_indexes`); robust scatter from
second differences (:func:`robust_scatter`); the per-star noise model (:class:`_Noise`, CCD
equation and scintillation); the weighted ensemble fit and its leave-one-out sigma.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from astropy.table import Table

from .. import noise
from ..catalogue import FLAG_BORDER, FLAG_INVALID, FLAG_MISSING
from ..errors import ConfigError
from ..photometry import SKY_GAP, SKY_THICK

log = logging.getLogger("qlcp.differential")


#: default of the variability threshold of comparison stars (setting ``ref_var_k``)
REF_VAR_K = 3.0
#: a light curve is ``noisy`` when its point-to-point scatter exceeds this many times its prediction
NOISY_K = 2.0
#: bits that make a star's photometry unusable in a frame
_BAD = FLAG_MISSING | FLAG_BORDER | FLAG_INVALID


# ----------------------------------------------------------------- helpers
def _clipped_std(d: np.ndarray, sigma: float = 5.0, iters: int = 3) -> np.ndarray:
    """Column-wise standard deviation after iterative sigma clipping (NaN ignored)."""
    d = np.array(d, dtype=float, copy=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(iters):
            med = np.nanmedian(d, axis=0)
            s = np.nanstd(d, axis=0)
            out = np.abs(d - med) > sigma * s
            if not out.any():
                break
            d[out] = np.nan
        n = np.sum(np.isfinite(d), axis=0)
        s = np.nanstd(d, axis=0)
    return np.where(n >= 3, s, np.nan)


def robust_scatter(y: np.ndarray) -> float:
    """Frame-to-frame scatter, insensitive to real variations and outliers.

    ``1.4826 MAD(d) / sqrt(1.5)`` of the second differences
    ``d_i = y_i - (y_{i-1} + y_{i+1}) / 2`` (as DER_SNR, Stoehr et al. 2008):
    for white noise of std sigma, ``var(d) = 1.5 sigma**2``.  Unlike the first
    differences, a local slope (the ingress of an eclipse) cancels, so a real
    eclipse does not inflate it.  NaN values are dropped first; NaN with fewer
    than 5 points.
    """
    y = np.asarray(y, dtype=float)
    y = y[np.isfinite(y)]
    if len(y) < 5:
        return float("nan")
    d = y[1:-1] - 0.5 * (y[:-2] + y[2:])
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(1.5))


def _as_list(v) -> list[int] | None:
    if v is None:
        return None
    if isinstance(v, (int, np.integer)):
        return [int(v)]
    return [int(i) for i in v]


def resolve_indexes(n_star: int, ind_tgt=None, ind_ref=None, ind_chk=None) -> tuple[list, list, list]:
    """Default and validate target/comparison/check indexes (manual: target 0, others comparisons).

    A star listed as target or check is removed from the comparisons (with a
    warning): a comparison must be independent of what it measures.
    """
    tgt = _as_list(ind_tgt)
    chk = _as_list(ind_chk)
    ref = _as_list(ind_ref)
    tgt = [0] if tgt is None else tgt
    chk = [] if chk is None else chk
    if ref is None:
        ref = [i for i in range(n_star) if i not in tgt and i not in chk]
    for name, lst in (("ind_tgt", tgt), ("ind_ref", ref), ("ind_chk", chk)):
        bad = [i for i in lst if not 0 <= i < n_star]
        if bad:
            raise ConfigError(f"{name}: index {bad[0]} out of range, the catalogue has {n_star} stars")
    both = [i for i in ref if i in tgt or i in chk]
    if both:
        log.warning(f"stars {both} are targets or checks, removed from the comparison stars")
        ref = [i for i in ref if i not in both]
    ref = list(dict.fromkeys(ref))
    return tgt, ref, chk


def _npix_nsky(cata: Table, cfg, n_aper: int) -> tuple[np.ndarray, np.ndarray]:
    """Aperture and sky-annulus pixel counts per frame and aperture, (nf, na) and (nf,)."""
    nf = len(cata)
    if "aper_r" in cata.colnames:
        r = np.asarray(cata["aper_r"], dtype=float).reshape(nf, -1)[:, :n_aper]
    else:
        r = np.full((nf, n_aper), np.nan)
    conf = list(cata.meta.get("apertures", cfg.aper))
    fwhm = np.asarray(cata["fwhm"], dtype=float) if "fwhm" in cata.colnames else np.full(nf, np.nan)
    for j in range(min(n_aper, len(conf))):
        a = float(conf[j])
        fill = a if a > 0 else abs(a) * fwhm
        r[:, j] = np.where(np.isfinite(r[:, j]), r[:, j], fill)
    npix = np.pi * r**2
    ann = getattr(cfg, "sky_annulus", None)
    if ann is not None:
        nsky = np.full(nf, np.pi * (ann[1] ** 2 - ann[0] ** 2))
    else:
        rmax = np.nanmax(r, axis=1) if n_aper else np.full(nf, np.nan)
        rin = rmax + SKY_GAP
        nsky = np.pi * ((rin + SKY_THICK) ** 2 - rin ** 2)
    return npix, nsky


class _Noise:
    """Per-frame, per-star, per-aperture noise: predicted (CCD + scintillation) and catalogue errors."""

    def __init__(self, cata: Table, cfg, flux, err, sky_local, n_aper):
        nf = len(cata)
        self.npix, self.nsky = _npix_nsky(cata, cfg, n_aper)
        g = cfg.gain if cfg.gain is not None else cata.meta.get("gain", 1.0)
        rn = cfg.rdnoise if cfg.rdnoise is not None else cata.meta.get("rdnoise", 0.0)
        self.gain, self.rdnoise = float(g), float(rn)
        col = (lambda n: np.asarray(cata[n], dtype=float) if n in cata.colnames else np.full(nf, np.nan))
        self.exptime, self.airmass = col("exptime"), col("airmass")
        fsky = col("sky")
        self.sky = np.where(np.isfinite(sky_local), sky_local, fsky[:, None])  # (nf, ns)
        self.scint_kw = dict(diameter_m=float(cfg.tel_diameter), height_m=float(cfg.site_ele), cy=float(cfg.scint_cy))
        sc = noise.MAG_PER_REL * noise.scintillation_sigma(
            cfg.tel_diameter, self.exptime, self.airmass, cfg.site_ele, cfg.scint_cy)
        self.scint_mag = np.where(np.isfinite(sc), sc, 0.0)  # (nf,)
        # predicted error of every star (nf, ns, na)
        self.pred = noise.star_sigma_mag(
            flux, self.npix[:, None, :], self.sky[:, :, None], self.gain, self.rdnoise, self.nsky[:, None, None],
            diameter_m=self.scint_kw["diameter_m"], exptime_s=self.exptime[:, None, None],
            airmass=self.airmass[:, None, None], height_m=self.scint_kw["height_m"], cy=self.scint_kw["cy"])
        # error used for propagation: catalogue error + scintillation, else the prediction
        e = np.sqrt(err**2 + self.scint_mag[:, None, None] ** 2)
        self.err = np.where(np.isfinite(e), e, self.pred)


def _fit_ensemble(m: np.ndarray, e: np.ndarray, p: np.ndarray, n_iter: int = 4):
    """Zero points, leave-one-out weights and scatter of comparison stars in one aperture.

    Parameters
    ----------
    m, e, p : arrays (nf, nc)
        Magnitudes (NaN: not usable), propagation errors, predicted errors.

    Returns
    -------
    dict with ``c`` (nc zero points), ``w`` (nc weights), ``s`` (nc
    leave-one-out clipped scatter), ``pred`` (nc median predicted
    leave-one-out noise), ``err`` (the same from the propagation errors).
    """
    nc = m.shape[1]
    avail = np.isfinite(m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        c = np.nanmedian(m, axis=0)
        e_med = np.nanmedian(np.where(avail, e, np.nan), axis=0)
        w0 = np.where(np.isfinite(e_med) & (e_med > 0), 1.0 / e_med**2, 1.0)
        w = w0.copy()
        s = np.full(nc, np.nan)
        for _ in range(n_iter):
            z = m - c
            wa = np.where(avail, w, 0.0)
            wz = np.where(avail, w * z, 0.0)
            big_w = wa.sum(axis=1)
            ens = wz.sum(axis=1) / np.where(big_w > 0, big_w, np.nan)
            c = c + np.nanmedian(z - ens[:, None], axis=0)
            z = m - c
            wz = np.where(avail, w * z, 0.0)
            loo_w = big_w[:, None] - wa
            loo = (wz.sum(axis=1)[:, None] - wz) / np.where(loo_w > 0, loo_w, np.nan)
            s = _clipped_std(z - loo)
            s = np.where(np.isfinite(s), np.maximum(s, 1e-4), np.nan)
            w = np.where(np.isfinite(s), 1.0 / s**2, w0)
    resid = z - loo
    s_p2p = np.array([robust_scatter(resid[:, k]) for k in range(nc)])     # frame to frame, trends removed
    return dict(c=c, w=w, s=s, s_p2p=s_p2p, pred=_loo_sigma(avail, p, w), err=_loo_sigma(avail, e, w))


def _loo_sigma(avail: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Median over frames of the error of each comparison's leave-one-out curve, (nc,).

    Parameters
    ----------
    avail : ndarray of bool (nf, nc)
        Where each comparison is usable.
    p : ndarray (nf, nc)
        Per-frame errors of the comparisons (predicted, or propagated).
    w : ndarray (nc,)
        Weights.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        wa = np.where(avail, w, 0.0)
        wp2 = np.where(avail & np.isfinite(p), (w * p) ** 2, 0.0)
        loo_w = wa.sum(axis=1)[:, None] - wa
        var_e = (wp2.sum(axis=1)[:, None] - wp2) / np.where(loo_w > 0, loo_w, np.nan) ** 2
        return np.nanmedian(np.where(avail, np.sqrt(p**2 + var_e), np.nan), axis=0)


def _ensemble(m, e, c, w):
    """Ensemble magnitude and its error per frame, (nf,) each; NaN without comparison."""
    avail = np.isfinite(m)
    wa = np.where(avail, w, 0.0)
    big_w = wa.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(avail, w * (m - c), 0.0).sum(axis=1) / big_w
        m0 = np.sum(w * c) / np.sum(w) if np.sum(w) > 0 else np.nan
        sig = np.sqrt(np.where(avail, (w * e) ** 2, 0.0).sum(axis=1)) / big_w
    ok = big_w > 0
    return np.where(ok, z + m0, np.nan), np.where(ok, sig, np.nan)
