"""Step d: differential photometry against a weighted ensemble of comparison stars.

Ensemble (per aperture)
-----------------------
Each comparison star ``i`` is first normalised to its own zero point ``c_i``
(its median magnitude, refined so that ``m_i(f) - c_i`` agrees with the
ensemble over the night), giving ``z_i(f) = m_i(f) - c_i``.  The ensemble of
frame ``f`` is the weighted mean over the comparisons present in that frame::

    E(f) = sum_i w_i z_i(f) / sum_i w_i  +  M0,        M0 = sum_i w_i c_i / sum_i w_i

and a target's differential magnitude is ``m_t(f) - E(f)``.  We average
magnitudes, not fluxes: with ``w_i = 1/sigma_i**2`` this is the minimum-variance
estimate of the frame's zero point from independent stars, and because every
``z_i`` is normalised first, a comparison missing in one frame only drops out
of that frame's mean, without a jump.  ``M0`` is a constant, so the
differential magnitudes stay near ``m_t - <m_ref>`` as in the original.

Weights come from the comparison stars alone (never from a target or check
star), leave-one-out, iterated (cf. Broeg, Fernández & Neuhäuser 2005, AN
326, 134): star ``i`` is compared with the ensemble of the *other*
comparisons, and ``w_i = 1 / s_i**2`` with ``s_i`` the 5-sigma-clipped
standard deviation of that differential light curve.

A comparison star is rejected, with the reason recorded, when it

* saturates (``Flags & 2``) in any usable frame;
* is missing in more than ``pick_bad_max`` of the usable frames;
* varies: its leave-one-out scatter is more than ``ref_var_k`` (default 3)
  times its predicted noise (CCD equation + scintillation of the star and of
  the other comparisons), after dividing by the median of that ratio over all
  comparisons when that median exceeds 1 (so clouds or flat-field errors
  common to all stars do not reject everyone).  Stars are rejected one at a
  time, worst first, and the ensemble refitted (at least 3 comparisons are
  needed to tell which one varies).

Errors: per frame, ``err = sqrt(e_t**2 + sigma_E**2)`` with ``e`` the
catalogue error and scintillation in quadrature, and
``sigma_E**2 = sum w_i**2 e_i**2 / (sum w_i)**2``.

Noise budget (``lc.meta['noise']``, per target/check and aperture): the
predicted scatter, median over frames of :func:`qlcp.core.noise.predicted_sigma`
(CCD equation + scintillation of the star and of the weighted ensemble),
against the achieved one, :func:`robust_scatter` (robust, from second
differences, so an eclipse does not inflate it); ``noisy`` when achieved >
2 x predicted (clouds, systematics), with a warning.

Products: ``{red}/lc_{obj}_{band}.ecsv``, ``{red}/stars_{obj}_{band}.ecsv`` and
the original's text files ``{red}/cali_{obj}_AP{aper}/...txt``
(:func:`write_lightcurve`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table

from . import noise
from .catalogue import FLAG_BORDER, FLAG_INVALID, FLAG_MISSING, FLAG_SATURATED
from .errors import ConfigError
from .columns import describe
from .io import write_table, write_text
from .photometry import SKY_GAP, SKY_THICK
from .products import product_path

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


# ------------------------------------------------------------------ main
def differential(cata: Table, ind_tgt=None, ind_ref=None, ind_chk=None, cfg=None, *,
                 source: str | None = None, gain_source: str | None = None) -> tuple[Table, Table]:
    """Differential light curves of targets and check stars against a weighted ensemble.

    Parameters
    ----------
    cata : Table
        Night catalogue of step c (:func:`qlcp.core.catalogue.build_catalogue`).
    ind_tgt, ind_ref, ind_chk : int or list of int, optional
        Indexes into the catalogue's stars; defaults: ``[0]``, every star not a
        target or check, ``[]``.
    cfg : Config
        ``pick_bad_max``, ``tel_diameter``, ``scint_cy``, ``site_ele``,
        ``gain``, ``rdnoise``, ``aper``, ``sky_annulus``; optional
        ``ref_var_k`` (variability threshold, default 3).
    source : {'given', 'picked'}, optional
        Where the star list came from (default ``cata.meta['source']`` or
        'given'), recorded in the stars table.
    gain_source : str, optional
        Where the frames' gain came from (``GAINSRC`` of step i: config, header,
        flats, sky, assumed); default ``cata.meta['gain_source']``, else
        'config' when ``cfg.gain`` is set, else left for :func:`write_lightcurve`
        to read from the corrected frames.  With 'assumed' the errors are scaled
        (:func:`apply_error_model`).

    Returns
    -------
    lc : Table
        One row per frame: ``file, jd, bjd_tdb, hjd, airmass, fwhm, sky, ok``
        and ``mag_t{k}_a{j}, err_t{k}_a{j}`` (target k, aperture j),
        ``mag_c{k}_a{j}, err_c{k}_a{j}`` (check k).  Meta: ``apertures``,
        ``aper_radius`` (median px), ``stars`` (index, role, x, y),
        ``ind_tgt/ind_ref/ind_chk`` (comparisons actually used),
        ``ind_ref_given``, ``noise`` (predicted vs achieved scatter, ``noisy``),
        ``error_ratio`` and ``budget_ratio`` (per aperture, median over the
        comparisons used of their scatter over their propagated and predicted
        errors), and once the gain source is known ``gain_source``,
        ``error_model`` ('ccd' or 'scaled') and ``error_scale``.
    stars : Table
        ``index, x, y, role, source, weight (n_aper), scatter (n_aper), reason``.
    """
    if cfg is None:
        from .config import Config
        cfg = Config()
    mag = _mag_cube(cata)
    tgt, ref, chk = resolve_indexes(mag.shape[1], ind_tgt, ind_ref, ind_chk)
    d = _load(cata, cfg, mag)
    comps, reason = _reject_unusable(d.flags, d.m, d.frame_ok, ref, cfg.pick_bad_max, tgt, chk)
    k_var = float(getattr(cfg, "ref_var_k", REF_VAR_K))
    comps, fits, var_reason = _reject_variable(d.m, d.nz.err, d.nz.pred, comps, k_var)
    reason.update(var_reason)
    if not comps:
        log.warning("no usable comparison star: every frame is marked not ok")
    ens = _ensemble_curves(d.m, d.nz.err, d.frame_ok, comps, fits)
    lc, noise_rows = _lightcurve_table(cata, d, ens, tgt, chk, comps)
    if not tgt and comps:                   # no target: what the night measured is its comparisons
        noise_rows += _comparison_curves(lc, d, ens, comps, fits)
    _rejected_scatter(ens.scatter, d.m, ens.mag, reason)
    stars, roles, sxy = _stars_table(cata, d.ns, tgt, chk, comps, reason, ens, source)
    lc.meta.update(_lc_meta(cata, cfg, d, roles, sxy, tgt, ref, chk, comps, noise_rows))
    lc.meta["error_ratio"], lc.meta["budget_ratio"] = _error_ratios(fits if comps else None, d.na)
    src = gain_source or cata.meta.get("gain_source") or ("config" if cfg.gain is not None else None)
    if src:
        apply_error_model(lc, src)
    log.info(f"differential: {len(tgt)} target(s), {len(chk)} check(s), {len(comps)} of {len(ref)} "
             f"comparison(s) used, {int(ens.ok.sum())} of {d.nf} frames ok")
    return lc, stars


def _mag_cube(cata: Table) -> np.ndarray:
    """The catalogue's magnitudes as a (frame, star, aperture) array."""
    mag = np.asarray(cata["mag"], dtype=float)
    nf = len(cata)
    return mag.reshape(nf, mag.shape[1] if mag.ndim > 1 else 1, -1)


@dataclass
class _Night:
    """The catalogue's arrays that step d works on (see :func:`_load`)."""

    m: np.ndarray          #: (nf, ns, na) magnitudes, NaN where not usable
    flux: np.ndarray       #: (nf, ns, na) fluxes
    flags: np.ndarray      #: (nf, ns) catalogue flags
    frame_ok: np.ndarray   #: (nf,) frame usable (offset and catalogue found)
    nz: _Noise             #: predicted and propagated errors

    @property
    def nf(self) -> int:
        return self.m.shape[0]

    @property
    def ns(self) -> int:
        return self.m.shape[1]

    @property
    def na(self) -> int:
        return self.m.shape[2]

    @property
    def n_ok(self) -> int:
        return int(self.frame_ok.sum())


def _load(cata: Table, cfg, mag: np.ndarray) -> _Night:
    """Read the catalogue's arrays and mask what is not usable.

    Parameters
    ----------
    cata : Table
        Night catalogue of step c.
    cfg : Config
        Noise settings (see :class:`_Noise`).
    mag : ndarray (nf, ns, na)
        The catalogue's magnitudes (:func:`_mag_cube`).

    Returns
    -------
    _Night
        Magnitudes are NaN in frames not ok, where the star is missing, on the
        border or invalid (``_BAD`` flags), or not finite.
    """
    nf, ns, na = mag.shape
    shape3 = (nf, ns, na)
    err = np.asarray(cata["err"], dtype=float).reshape(shape3)
    flux = np.asarray(cata["flux"], dtype=float).reshape(shape3)
    flags = np.asarray(cata["flags"], dtype=np.int64).reshape(nf, ns)
    sky_local = (np.asarray(cata["sky_local"], dtype=float).reshape(nf, ns) if "sky_local" in cata.colnames
                 else np.full((nf, ns), np.nan))
    frame_ok = np.asarray(cata["ok"], dtype=bool)
    usable = frame_ok[:, None, None] & ((flags & _BAD) == 0)[:, :, None] & np.isfinite(mag)
    m = np.where(usable, mag, np.nan)
    nz = _Noise(cata, cfg, flux, err, sky_local, na)
    return _Night(m=m, flux=flux, flags=flags, frame_ok=frame_ok, nz=nz)


def _reject_unusable(flags: np.ndarray, m: np.ndarray, frame_ok: np.ndarray, ref: Sequence[int], bad_max: float,
                     tgt: Sequence[int] = (), chk: Sequence[int] = ()) -> tuple[list[int], dict[int, str]]:
    """Comparison stars that saturate or drop out too often, rejected with a reason.

    Parameters
    ----------
    flags : ndarray (nf, ns)
        Catalogue flags; ``FLAG_SATURATED`` in any ok frame rejects a comparison.
    m : ndarray (nf, ns, na)
        Usable magnitudes (NaN: not usable).
    frame_ok : ndarray of bool (nf,)
        Usable frames.
    ref : list of int
        Candidate comparison stars.
    bad_max : float
        Largest fraction of ok frames a comparison may miss (in any aperture).
    tgt, chk : list of int
        Targets and checks: only warned about when saturated.

    Returns
    -------
    comps : list of int
        The comparisons kept, in the order of ``ref``.
    reason : dict
        Star index -> why it was rejected.
    """
    n_ok = int(frame_ok.sum())
    reason: dict[int, str] = {}
    sat_n = np.sum(frame_ok[:, None] & ((flags & FLAG_SATURATED) != 0), axis=0)
    for i in list(tgt) + list(chk):
        if sat_n[i]:
            log.warning(f"{'target' if i in tgt else 'check'} star {i} is saturated in {sat_n[i]} frame(s): "
                        "its light curve is not reliable there")
    miss = 1.0 - np.sum(np.all(np.isfinite(m), axis=2), axis=0) / max(n_ok, 1)
    comps = []
    for i in ref:
        if sat_n[i] > 0:
            reason[i] = f"saturated in {sat_n[i]} frame(s)"
        elif miss[i] > bad_max:
            reason[i] = f"missing in {100 * miss[i]:.0f}% of frames > {100 * bad_max:.0f}%"
        else:
            comps.append(i)
            continue
        log.warning(f"comparison star {i} rejected: {reason[i]}")
    return comps, reason


def _reject_variable(m: np.ndarray, err: np.ndarray, pred: np.ndarray, comps: list[int],
                    k_var: float = REF_VAR_K) -> tuple[list[int], list[dict] | None, dict[int, str]]:
    """Reject variable comparison stars one at a time, worst first, refitting the ensemble each time.

    A comparison's statistic is, per aperture, its leave-one-out scatter over
    its predicted noise, divided by the median of that ratio over all
    comparisons when the median exceeds 1, then the median over apertures.
    The worst star is rejected while its statistic exceeds ``k_var`` and at
    least 3 comparisons remain to compare it with.

    Parameters
    ----------
    m, err, pred : ndarray (nf, ns, na)
        Usable magnitudes (NaN: not usable), propagation errors, predicted errors.
    comps : list of int
        Comparison stars (indexes along axis 1); not modified.
    k_var : float
        Variability threshold.

    Returns
    -------
    comps : list of int
        The comparisons kept.
    fits : list of dict or None
        Per aperture, :func:`_fit_ensemble` of the kept comparisons; None when
        there is none.
    reason : dict
        Rejected star index -> why.
    """
    comps = list(comps)
    reason: dict[int, str] = {}
    fits = None
    while comps:
        fits = [_fit_ensemble(m[:, comps, j], err[:, comps, j], pred[:, comps, j]) for j in range(m.shape[2])]
        if len(comps) < 3:
            break
        ratio = np.array([ft["s"] / ft["pred"] for ft in fits])           # (na, nc)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            norm = np.maximum(1.0, np.nanmedian(ratio, axis=1, keepdims=True))
            stat = np.nanmedian(ratio / norm, axis=0)
        if not np.isfinite(stat).any():
            break
        worst = int(np.nanargmax(stat))
        if stat[worst] <= k_var:
            break
        i = comps.pop(worst)
        j0 = int(np.nanargmax(ratio[:, worst]))
        reason[i] = (f"variable: scatter {fits[j0]['s'][worst]:.4f} mag against the other comparisons is "
                     f"{stat[worst]:.1f} x its predicted noise {fits[j0]['pred'][worst]:.4f} (limit {k_var:g})")
        log.warning(f"comparison star {i} rejected: {reason[i]}")
    return comps, fits, reason


@dataclass
class _EnsembleCurves:
    """Ensemble of every aperture (see :func:`_ensemble_curves`)."""

    mag: np.ndarray        #: (nf, na) ensemble magnitude, NaN without comparison
    sig: np.ndarray        #: (nf, na) its error
    weights: np.ndarray    #: (ns, na) normalised weights, 0 for non-comparisons
    scatter: np.ndarray    #: (ns, na) clipped scatter (comparisons: leave-one-out)
    ok: np.ndarray         #: (nf,) frame ok and an ensemble in every aperture


def _ensemble_curves(m: np.ndarray, err: np.ndarray, frame_ok: np.ndarray, comps: list[int],
                    fits: list[dict] | None) -> _EnsembleCurves:
    """Ensemble magnitude of every frame and aperture from the kept comparisons.

    Parameters
    ----------
    m, err : ndarray (nf, ns, na)
        Usable magnitudes and propagation errors.
    frame_ok : ndarray of bool (nf,)
        Usable frames.
    comps : list of int
        Comparison stars kept.
    fits : list of dict or None
        Per aperture, :func:`_fit_ensemble` of ``comps`` (from :func:`_reject_variable`).

    Returns
    -------
    _EnsembleCurves
        A frame without an ensemble in some aperture is not ok (with a warning).
    """
    nf, ns, na = m.shape
    weights = np.zeros((ns, na))
    scatter = np.full((ns, na), np.nan)
    lc_ok = frame_ok.copy()
    ens = np.full((nf, na), np.nan)
    ens_sig = np.full((nf, na), np.nan)
    for j in range(na):
        if comps:
            ft = fits[j]
            w = ft["w"] / np.sum(ft["w"])
            weights[comps, j] = w
            scatter[comps, j] = ft["s"]
            ens[:, j], ens_sig[:, j] = _ensemble(m[:, comps, j], err[:, comps, j], ft["c"], w)
        lc_ok &= np.isfinite(ens[:, j])
    n_bad = int(np.sum(frame_ok & ~lc_ok))
    if n_bad:
        log.warning(f"{n_bad} frame(s) without a usable comparison star marked not ok")
    return _EnsembleCurves(mag=ens, sig=ens_sig, weights=weights, scatter=scatter, ok=lc_ok)


def _lightcurve_table(cata: Table, d: _Night, ens: _EnsembleCurves, tgt: list[int], chk: list[int],
                      comps: list[int]) -> tuple[Table, list[dict]]:
    """The light-curve table (contract columns, then differential magnitudes) and the noise budget.

    Parameters
    ----------
    cata : Table
        Night catalogue (times, airmass, fwhm, sky).
    d : _Night
        Loaded arrays.
    ens : _EnsembleCurves
        The ensemble; ``ens.scatter`` of targets and checks is filled in here.
    tgt, chk, comps : list of int
        Targets, checks and the comparisons used.

    Returns
    -------
    lc : Table
        Without meta.
    noise_rows : list of dict
        :func:`_budget` of every target/check and aperture, with ``star, role, k, aperture``.
    """
    nf, na = d.nf, d.na
    lc = Table()
    col = (lambda n, fill=np.nan: np.asarray(cata[n]) if n in cata.colnames else np.full(nf, fill))
    lc["file"] = np.asarray(cata["file"]).astype(str)
    for name in ("jd", "bjd_tdb", "hjd", "airmass", "fwhm", "sky"):
        lc[name] = np.asarray(col(name), dtype=float)
    lc["ok"] = ens.ok
    noise_rows = []
    dm = d.m - ens.mag[:, None, :]                      # (nf, ns, na)
    de = np.sqrt(d.nz.err**2 + ens.sig[:, None, :] ** 2)
    dm[~ens.ok] = np.nan
    de[~ens.ok] = np.nan
    for role, letter, lst in (("target", "t", tgt), ("check", "c", chk)):
        for k, i in enumerate(lst):
            for j in range(na):
                lc[f"mag_{letter}{k}_a{j}"] = dm[:, i, j]
                lc[f"err_{letter}{k}_a{j}"] = np.where(np.isfinite(dm[:, i, j]), de[:, i, j], np.nan)
                row = _budget(d.nz, d.m, d.flux, i, comps, ens.weights[comps, j] if comps else None, j,
                              dm[:, i, j], ens.ok)
                row.update(star=int(i), role=role, k=k, label=f"{letter.upper()}{k}", aperture=j)
                noise_rows.append(row)
                ens.scatter[i, j] = _clipped_std(dm[:, i, j][:, None])[0]
                if row["noisy"]:
                    log.warning(f"{role} {letter.upper()}{k} (star index {i}) aperture {j}: scatter {row['achieved']:.4f} > 2 x "
                                f"predicted {row['predicted']:.4f} (clouds or systematics?)")
    return lc, noise_rows


def _comparison_curves(lc: Table, d: _Night, ens: _EnsembleCurves, comps: list[int],
                       fits: list[dict]) -> list[dict]:
    """Columns ``mag_r{k}_a{j}``, ``err_r{k}_a{j}`` (in place): comparison ``comps[k]`` against the
    ensemble of the other comparisons (its leave-one-out light curve, the zero points and weights
    of the fit); the noise budget of each.  Written for a group without a target, whose
    comparisons are then what the night measured.  A single comparison has no other to compare with.

    Returns
    -------
    list of dict
        :func:`_budget` rows with ``star, role='comparison', k, label='R{k}', aperture``.
    """
    rows = []
    if len(comps) < 2:
        return rows
    for k, i in enumerate(comps):
        others = [p for p in range(len(comps)) if p != k]
        idx = [comps[p] for p in others]
        for j in range(d.na):
            ft = fits[j]
            w = np.asarray(ft["w"], float)[others]
            e_mag, e_sig = _ensemble(d.m[:, idx, j], d.nz.err[:, idx, j], np.asarray(ft["c"], float)[others], w)
            dm = np.where(ens.ok, d.m[:, i, j] - e_mag, np.nan)
            de = np.where(np.isfinite(dm), np.sqrt(d.nz.err[:, i, j] ** 2 + e_sig ** 2), np.nan)
            lc[f"mag_r{k}_a{j}"], lc[f"err_r{k}_a{j}"] = dm, de
            row = _budget(d.nz, d.m, d.flux, i, idx, w / np.sum(w), j, dm, ens.ok)
            row.update(star=int(i), role="comparison", k=k, label=f"R{k}", aperture=j)
            rows.append(row)
    return rows


def _rejected_scatter(scatter: np.ndarray, m: np.ndarray, ens: np.ndarray, reason: dict) -> None:
    """Clipped scatter of the rejected comparisons against the ensemble, for the stars table.

    Parameters
    ----------
    scatter : ndarray (ns, na)
        Filled in (in place) for the stars of ``reason``, in apertures with an ensemble.
    m : ndarray (nf, ns, na)
        Usable magnitudes.
    ens : ndarray (nf, na)
        Ensemble magnitudes.
    reason : dict
        Rejected star index -> reason.
    """
    for i in reason:
        for j in range(m.shape[2]):
            if np.isfinite(ens[:, j]).any():
                scatter[i, j] = _clipped_std((m[:, i, j] - ens[:, j])[:, None])[0]


def star_labels(roles: list[str], tgt: list[int], chk: list[int], comps: list[int]) -> np.ndarray:
    """The one name of each star everywhere (stars table, chart, plots, summary): role letter and
    rank in that role: ``T{k}`` = ``tgt[k]``, ``C{k}`` = ``chk[k]``, ``R{k}`` = ``comps[k]``, ``X{k}``
    the k-th rejected star by index; ``""`` for unused stars."""
    out = [""] * len(roles)
    for letter, order in (("T", tgt), ("C", chk), ("R", comps),
                          ("X", [i for i, r in enumerate(roles) if r == "rejected"])):
        for k, i in enumerate(order):
            if 0 <= int(i) < len(out):
                out[int(i)] = f"{letter}{k}"
    return np.array(out, dtype="U8")


def _stars_table(cata: Table, ns: int, tgt: list[int], chk: list[int], comps: list[int], reason: dict,
                 ens: _EnsembleCurves, source: str | None) -> tuple[Table, list[str], np.ndarray]:
    """The stars table: position, role, weight, scatter and reason of every catalogue star.

    Returns
    -------
    stars : Table
        ``index, x, y, role, source, weight, scatter, reason``; meta ``ind_tgt, ind_ref, ind_chk``.
    roles : list of str
        Role of each star.
    sxy : ndarray (ns, 2)
        Positions (``cata.meta['starxy']``; NaN when absent or of the wrong length).
    """
    sxy = np.asarray(cata.meta.get("starxy", np.full((ns, 2), np.nan)), dtype=float).reshape(-1, 2)
    if len(sxy) != ns:
        sxy = np.full((ns, 2), np.nan)
    roles = []
    for i in range(ns):
        roles.append("target" if i in tgt else "check" if i in chk else "comparison" if i in comps
                     else "rejected" if i in reason else "unused")
    src = source or str(cata.meta.get("source", "given"))
    stars = Table()
    stars["index"] = np.arange(ns)
    stars["label"] = star_labels(roles, tgt, chk, comps)
    stars["x"] = sxy[:, 0]
    stars["y"] = sxy[:, 1]
    stars["role"] = np.array(roles, dtype=str)
    stars["source"] = np.array([src] * ns, dtype=str)
    stars["weight"] = ens.weights
    stars["scatter"] = ens.scatter
    stars["reason"] = np.array([reason.get(i, "") for i in range(ns)], dtype=str)
    stars.meta.update(ind_tgt=[int(i) for i in tgt], ind_ref=[int(i) for i in comps], ind_chk=[int(i) for i in chk])
    return stars, roles, sxy


def _lc_meta(cata: Table, cfg, d: _Night, roles: list[str], sxy: np.ndarray, tgt: list[int], ref_given: list[int],
             chk: list[int], comps: list[int], noise_rows: list[dict]) -> dict:
    """The light curve's meta: apertures and their median radius, stars, indexes, noise budget, gain.

    Parameters
    ----------
    cata : Table
        Night catalogue (``aper_r`` per frame, ``apertures`` in the meta).
    cfg : Config
        ``aper`` when the catalogue does not say.
    d : _Night
        Loaded arrays (usable frames, gain and read noise).
    roles, sxy : list of str, ndarray (ns, 2)
        From :func:`_stars_table`.
    tgt, ref_given, chk, comps : list of int
        Targets, comparisons asked for, checks, comparisons used.
    noise_rows : list of dict
        From :func:`_lightcurve_table`.

    Returns
    -------
    dict
    """
    nf, na = d.nf, d.na
    aper_r = (np.asarray(cata["aper_r"], dtype=float).reshape(nf, -1) if "aper_r" in cata.colnames
              else np.full((nf, na), np.nan))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r_med = np.nanmedian(aper_r[d.frame_ok], axis=0) if d.n_ok else np.full(na, np.nan)
    return dict(
        apertures=[float(a) for a in cata.meta.get("apertures", cfg.aper)],
        aper_radius=[float(r) for r in r_med],
        stars=[dict(index=i, role=roles[i], x=float(sxy[i, 0]), y=float(sxy[i, 1])) for i in range(d.ns)],
        ind_tgt=tgt, ind_ref=list(comps), ind_chk=chk, ind_ref_given=list(ref_given),
        ensemble="weighted mean of median-normalised comparison magnitudes, leave-one-out 1/variance weights",
        noise=noise_rows,
        gain=d.nz.gain, rdnoise=d.nz.rdnoise,
    )


def _budget(nz: _Noise, m, flux, i, comps, w, j, dmag, ok) -> dict:
    """Predicted vs achieved scatter of one differential light curve."""
    good = ok & np.isfinite(dmag)
    achieved = robust_scatter(dmag[good])
    if comps and good.any():
        fr = np.where(np.isfinite(m[:, comps, j]), flux[:, comps, j], np.nan)
        pf = noise.predicted_sigma(
            flux[:, i, j], nz.sky[:, i], fr, nz.sky[:, comps], w, nz.npix[:, j], nz.gain, nz.rdnoise, nz.nsky,
            diameter_m=nz.scint_kw["diameter_m"], exptime_s=nz.exptime,
            airmass=nz.airmass, height_m=nz.scint_kw["height_m"], cy=nz.scint_kw["cy"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            predicted = float(np.nanmedian(pf[good]))
    else:
        predicted = float("nan")
    return dict(predicted=predicted, achieved=achieved, noisy=_is_noisy(achieved, predicted))


def _error_ratios(fits: list[dict] | None, na: int) -> tuple[list[float], list[float]]:
    """Per aperture, the median over the comparisons used of scatter / propagated error and of
    scatter / predicted noise of their leave-one-out curves (NaN without comparisons).

    The scatter is the frame-to-frame one (:func:`robust_scatter`): per-point errors
    describe the noise of a point, and slow trends between comparison stars (colour
    terms of extinction, flat-field errors along a drift) would inflate a plain std.
    The comparisons kept are the constant stars (variables were rejected), so these
    ratios measure how wrong the error model is, e.g. with an assumed gain.
    """
    if not fits:
        return [float("nan")] * na, [float("nan")] * na
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        err = [float(np.nanmedian(ft["s_p2p"] / ft["err"])) for ft in fits]
        pred = [float(np.nanmedian(ft["s_p2p"] / ft["pred"])) for ft in fits]
    return err, pred


def _scale_errors(lc: Table, scale: list[float]) -> dict:
    """Scale each star's ``err_*`` column, in place, to its own frame-to-frame scatter
    (:func:`robust_scatter`, blind to slow variability such as an eclipse or a transit);
    a star with fewer than 8 good points takes its aperture's comparison ratio.

    Returns
    -------
    dict
        Column name -> factor.
    """
    ok = np.asarray(lc["ok"], dtype=bool) if "ok" in lc.colnames else np.ones(len(lc), bool)
    out = {}
    for name in lc.colnames:
        j = _aperture_of(name)
        if not name.startswith("err_") or j is None or j >= len(scale):
            continue
        e = np.asarray(lc[name], dtype=float)
        mag = np.asarray(lc["mag_" + name[4:]], dtype=float) if "mag_" + name[4:] in lc.colnames else None
        f = scale[j]
        if mag is not None:
            good = ok & np.isfinite(mag) & np.isfinite(e) & (e > 0)
            if good.sum() >= 8:
                own = robust_scatter(mag[good]) / float(np.median(e[good]))
                f = own if np.isfinite(own) and own > 0 else f
        lc[name] = e * f
        out[name] = float(f)
    return out


def apply_error_model(lc: Table, gain_source: str) -> Table:
    """Settle the light curve's error model from where the gain came from (in place).

    With the gain only assumed (``gain_source == 'assumed'``), the CCD errors are
    off by an unknown factor: each star's ``err_*`` columns are scaled to its own
    frame-to-frame scatter (``error_scale_star``; the aperture's comparison ratio
    ``error_ratio`` for a star with few points), and each noise row's prediction
    by ``budget_ratio`` (the CCD value is kept as ``predicted_ccd``, ``noisy``
    recomputed), and ``error_model`` is 'scaled'.  Otherwise ``error_model`` is
    'ccd' and ``error_scale`` 1.  Every noise row gets ``gain_source`` and
    ``error_model``.  A light curve already settled is left as it is.

    Returns
    -------
    Table
        ``lc``.
    """
    m = lc.meta
    if m.get("error_model"):
        return lc
    na = len(m.get("apertures", [])) or len(m.get("error_ratio", []))
    err_r = list(m.get("error_ratio") or [float("nan")] * na)
    pred_r = list(m.get("budget_ratio") or [float("nan")] * na)
    scaled = gain_source == "assumed" and bool(err_r) and all(np.isfinite(err_r))
    scale = [float(r) for r in err_r] if scaled else [1.0] * len(err_r)
    if scaled:
        m["error_scale_star"] = _scale_errors(lc, scale)
        log.warning(f"gain assumed: errors scaled to each star's frame-to-frame scatter (comparisons: "
                    f"{', '.join(f'{v:.3g}' for v in scale)} per aperture)")
    model = "scaled" if scaled else "ccd"
    for row in m.get("noise", []):
        j = int(row.get("aperture", 0))
        if scaled and j < len(pred_r) and np.isfinite(pred_r[j]):
            row["predicted_ccd"] = row["predicted"]
            row["predicted"] = float(row["predicted"] * pred_r[j])
            row["noisy"] = _is_noisy(row["achieved"], row["predicted"])
        row.update(gain_source=gain_source, error_model=model)
    m.update(gain_source=gain_source, error_model=model, error_scale=scale)
    return lc


def _aperture_of(colname: str) -> int | None:
    """The aperture index of a ``mag_t0_a1``-style column name, else None."""
    head, _, tail = colname.rpartition("_a")
    return int(tail) if head and tail.isdigit() else None


def _is_noisy(achieved: float, predicted: float) -> bool:
    """``achieved > NOISY_K x predicted`` (both finite)."""
    return bool(np.isfinite(achieved) and np.isfinite(predicted) and achieved > NOISY_K * predicted)


def corrected_gain_source(bf0: str | Path | None) -> str | None:
    """``GAINSRC`` of the corrected frame ``bf0`` (None without a frame or card)."""
    from .io import read_header

    if bf0 is None:
        return None
    src = read_header(bf0).get("GAINSRC")
    return str(src) if src else None


# ------------------------------------------------------------------ writing
def _aper_label(a: float) -> str:
    return f"{a:g}"


def _refs_label(refs: list[int]) -> str:
    """Comparison indexes joined by '-'; long lists shortened to first-last and count."""
    s = "-".join(str(i) for i in refs)
    if len(s) > 40:
        s = f"{refs[0]}-{refs[-1]}n{len(refs)}"
    return s or "none"


def _plain(v):
    """numpy scalars/arrays inside meta -> plain Python (for YAML/ECSV)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, np.generic):
        return v.item()
    return v


def write_lightcurve(lc: Table, stars: Table, red_dir: str | Path, obj: str, band: str,
                     provenance: dict | None = None, gain_source: str | None = None) -> list[Path]:
    """Write the light curve, the star table and the original's text files, atomically.

    Files: ``{red}/lc_{obj}_{band}.ecsv`` (``provenance`` in its meta),
    ``{red}/stars_{obj}_{band}.ecsv``, and per aperture ``j`` with configured
    radius ``a``: ``{red}/cali_{obj}_AP{a}/{obj}_{band}_vc{k}_{refs}.txt``
    (target k) and ``..._chk{k}_{refs}.txt`` (check k), columns ``bjd mag
    err`` (BJD_TDB; JD UTC when no BJD is known, said in the header), rows
    of usable frames with a finite magnitude only.  ``refs`` is the used
    comparison indexes joined by '-'.

    A light curve whose error model is not settled yet (:func:`differential` did not
    know the gain source) is settled first, in place, from ``gain_source`` (the
    ``GAINSRC`` of the group's corrected frames, :func:`corrected_gain_source`;
    None: unknown), by :func:`apply_error_model`.

    Returns
    -------
    list of Path
        Every file written.
    """
    red = Path(red_dir)
    out = []
    if not lc.meta.get("error_model"):
        apply_error_model(lc, gain_source or "unknown")
    lc = Table(lc, copy=True)
    lc.meta = _plain(dict(lc.meta))
    lc.meta["provenance"] = _plain(dict(provenance or {}))
    lc.meta.update(obj=obj, band=band)
    p = product_path(red, "lightcurve", obj, band)
    write_table(p, describe(lc, "lightcurve"))
    out.append(p)
    st = Table(stars, copy=True)
    st.meta = _plain(dict(st.meta))
    st.meta.update(obj=obj, band=band)
    p = product_path(red, "stars", obj, band)
    write_table(p, describe(st, "stars"))
    out.append(p)

    refs = _refs_label(list(lc.meta.get("ind_ref", [])))
    t = np.asarray(lc["bjd_tdb"], dtype=float)
    tname = "bjd_tdb"
    if not np.isfinite(t).any():
        t, tname = np.asarray(lc["jd"], dtype=float), "jd_utc"
    ok = np.asarray(lc["ok"], dtype=bool)
    apertures = lc.meta.get("apertures", [])
    for j in range(len(apertures)):
        d = red / f"cali_{obj}_AP{_aper_label(apertures[j])}"
        for letter, stem in (("t", "vc"), ("c", "chk"), ("r", "ref")):
            k = 0
            while f"mag_{letter}{k}_a{j}" in lc.colnames:
                mg = np.asarray(lc[f"mag_{letter}{k}_a{j}"], dtype=float)
                er = np.asarray(lc[f"err_{letter}{k}_a{j}"], dtype=float)
                use = ok & np.isfinite(mg) & np.isfinite(t)
                who = {"t": "target", "c": "check", "r": "comparison"}[letter]
                lines = [f"# {tname} mag err   ({obj} {band} {who} {k}, aperture {apertures[j]:g}, comparisons {refs})"]
                lines += [f"{t[f]:.7f} {mg[f]:8.5f} {er[f]:7.5f}" for f in np.flatnonzero(use)]
                p = d / f"{obj}_{band}_{stem}{k}_{refs}.txt"
                write_text(p, "\n".join(lines) + "\n")
                out.append(p)
                k += 1
    log.debug(f"wrote light curves of {obj} {band}: {len(out)} files")
    return out
