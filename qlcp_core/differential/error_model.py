"""The error bars of step d's light curves: noise budget, error scaling, and the gain they rest on.

Predicted against achieved scatter per curve and aperture (:func:`_budget`, ``noisy``), the
errors scaled to the achieved scatter (:func:`apply_error_model`), and the source of the gain
behind the predicted errors, ``GAINSRC`` of the group's corrected frames
(:func:`corrected_gain_source`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
from astropy.table import Table

from .. import noise
from .ensemble import NOISY_K, _Noise, robust_scatter

log = logging.getLogger("qlcp.differential")


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
    from ..io import read_header

    if bf0 is None:
        return None
    src = read_header(bf0).get("GAINSRC")
    return str(src) if src else None
