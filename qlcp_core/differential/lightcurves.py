"""Step d on a group: :func:`differential`, the light curves of the targets and checks against the ensemble.

The magnitude cube loaded from the group catalogue, unusable and variable comparisons
rejected, the ensemble curves, the light-curve and stars tables with their metadata.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from ..catalogue import FLAG_SATURATED
from .ensemble import REF_VAR_K, _BAD, _Noise, _clipped_std, _ensemble, _fit_ensemble, resolve_indexes
from .error_model import _budget, _error_ratios, apply_error_model

log = logging.getLogger("qlcp.differential")


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
        from ..config import Config
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
