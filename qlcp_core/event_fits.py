"""Fitting one eclipse or transit in a light curve: the numerical core of step ``t``.

Everything here works on plain arrays ``t`` (BJD_TDB, days), ``m`` (differential
magnitudes) and ``e`` (their errors) and knows nothing of files:

* :func:`fit_dip` -- a symmetric eclipse profile plus a baseline polynomial
  (time, optionally airmass), least squares; uncertainties from the
  covariance scaled by the reduced chi-square and a red-noise factor;
* :func:`kwee_van_woerden` -- the minimum by Kwee & van Woerden (1956) on the
  baseline-removed data, and :func:`kvw_bootstrap` its uncertainty by a
  parametric bootstrap of the residuals (deterministic with a seed);
* :func:`fit_transit` -- a Mandel & Agol (2002) transit with quadratic limb
  darkening (PyAstronomy ``MandelAgolLC``) plus the same baseline; mid-time,
  depth and duration T14 with uncertainties propagated from the covariance;
* :func:`coverage` -- whether the data cover the event (``full``), only part of
  it (``partial``) and why.

The dip profile is ``m = base(t) - 2.5 log10(1 - a (1 - u^2)^g)`` for
``|u| < 1``, ``u = 2 (t - tmin) / D``, with free ``tmin, a, D, g``: ``g = 1`` is a
parabola, large ``g`` a narrow Gaussian-like dip; out of the event ``m = base``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

#: number of baseline terms per option: constant + time slope (+ airmass)
BASELINES = ("time", "airmass", "both", "none")


@dataclass
class Fit:
    """A fitted model: parameters, scaled covariance and the goodness of fit."""

    names: list
    p: np.ndarray
    cov: np.ndarray
    chi2: float
    dof: int
    rms: float                 #: rms of the residuals, mag
    beta: float                #: red-noise factor applied to the covariance (>= 1)
    model: np.ndarray          #: the model at the data
    resid: np.ndarray          #: data - model
    used: np.ndarray           #: mask of the points used (after clipping)
    extra: dict = field(default_factory=dict)

    def value(self, name: str) -> float:
        return float(self.p[self.names.index(name)])

    def error(self, name: str) -> float:
        i = self.names.index(name)
        return float(np.sqrt(max(self.cov[i, i], 0.0)))


# ------------------------------------------------------------------ baseline
def baseline_design(t: np.ndarray, airmass: np.ndarray | None, kind: str, tref: float) -> np.ndarray:
    """Columns of the baseline: 1, (t - tref) [days], (airmass - 1) as ``kind`` asks."""
    cols = [np.ones_like(t)]
    if kind in ("time", "both"):
        cols.append(t - tref)
    if kind in ("airmass", "both") and airmass is not None and np.ptp(airmass) > 1e-3:
        cols.append(airmass - 1.0)
    return np.column_stack(cols)


def red_noise_beta(t: np.ndarray, resid: np.ndarray, span: float) -> float:
    """Time-averaging red-noise factor (Winn et al. 2008), at least 1.

    The residuals are binned over 10-30 min (up to a third of ``span``) and
    the binned scatter compared with the white-noise expectation; the median
    ratio over bin sizes is returned.
    """
    n = len(resid)
    s1 = np.std(resid)
    if n < 12 or s1 <= 0:
        return 1.0
    ratios = []
    for width in np.linspace(10.0, 30.0, 5) / 1440.0:
        if width > span / 3.0:
            break
        idx = np.floor((t - t.min()) / width).astype(int)
        means = np.array([resid[idx == b].mean() for b in np.unique(idx)])
        nb = len(resid) / max(len(means), 1)
        if len(means) < 3 or nb < 2:
            continue
        expect = s1 / np.sqrt(nb) * np.sqrt(len(means) / (len(means) - 1.0))
        ratios.append(np.std(means) / expect)
    return float(max(1.0, np.median(ratios))) if ratios else 1.0


def _scaled_cov(res, n_used: int) -> tuple[np.ndarray, float, int]:
    """Covariance of a ``least_squares`` result (weighted residuals) scaled by the reduced chi-square."""
    j = res.jac
    dof = max(n_used - j.shape[1], 1)
    chi2 = float(np.sum(res.fun ** 2))
    try:
        cov = np.linalg.pinv(j.T @ j)
    except np.linalg.LinAlgError:
        cov = np.full((j.shape[1], j.shape[1]), np.nan)
    return cov * (chi2 / dof), chi2, dof


def _robust_fit(fun, p0, lo, hi, t, m, e, clip: float):
    """``least_squares`` on weighted residuals, refitted once without points beyond ``clip`` sigma (MAD)."""
    used = np.isfinite(m) & np.isfinite(e) & (e > 0)
    res = None
    for _ in range(2):
        w = 1.0 / e[used]
        res = least_squares(lambda p: (m[used] - fun(p, used)) * w, p0, bounds=(lo, hi), x_scale="jac")
        r = m - fun(res.x, np.ones_like(used))
        mad = 1.4826 * np.median(np.abs(r[used] - np.median(r[used])))
        keep = used & (np.abs(r - np.median(r[used])) < clip * max(mad, 1e-6))
        if keep.sum() == used.sum() or keep.sum() < len(p0) + 3:
            break
        used, p0 = keep, res.x
    return res, used


# ------------------------------------------------------------------ eclipse (dip) model
def dip_mag(t: np.ndarray, tmin: float, a: float, dur: float, g: float) -> np.ndarray:
    """Magnitude excess of the symmetric dip profile (0 outside ``|t - tmin| < dur / 2``)."""
    u = 2.0 * (t - tmin) / dur
    shape = np.clip(1.0 - u * u, 0.0, None) ** g
    return -2.5 * np.log10(1.0 - a * shape)


def fit_dip(t, m, e, guess: dict, airmass=None, baseline: str = "time", clip: float = 5.0) -> Fit:
    """Least-squares fit of the symmetric dip plus baseline.

    Parameters
    ----------
    t, m, e : ndarray
        BJD_TDB (days), magnitudes, errors.
    guess : dict
        ``tmin``, ``depth`` (mag), ``dur`` (days).
    airmass : ndarray, optional
        For an airmass baseline term.
    baseline : str
        One of :data:`BASELINES`.
    clip : float
        Outlier clip after the first fit, in robust sigmas.

    Returns
    -------
    Fit
        Parameters ``tmin, a, dur, g, c0, c1 ...``; ``extra['depth_mag']`` and
        ``extra['depth_err']`` the depth in magnitudes at the minimum.
    """
    tref = float(np.median(t))
    X = baseline_design(t, airmass, baseline, tref)
    nb = X.shape[1]
    t = t - tref                      # times relative to tref: finite-difference steps scale with |x|
    a0 = float(np.clip(1.0 - 10 ** (-0.4 * max(guess["depth"], 1e-4)), 1e-4, 0.95))
    span = float(np.ptp(t))
    p0 = np.r_[guess["tmin"] - tref, a0, guess["dur"], 1.5, np.median(m), np.zeros(nb - 1)]
    lo = np.r_[t.min() - guess["dur"], 1e-6, max(span / len(t), 2e-3), 0.5, -np.inf * np.ones(nb)]
    hi = np.r_[t.max() + guess["dur"], 0.99, max(3.0 * span, 2.0 * guess["dur"]), 6.0, np.inf * np.ones(nb)]
    p0 = np.clip(p0, lo + 1e-9, hi - 1e-9)

    def fun(p, sel):
        return X[sel] @ p[4:] + dip_mag(t[sel], *p[:4])

    res, used = _robust_fit(fun, p0, lo, hi, t, m, e, clip)
    cov, chi2, dof = _scaled_cov(res, int(used.sum()))
    model = fun(res.x, np.ones_like(used))
    beta = red_noise_beta(t[used], (m - model)[used], span)
    cov = cov * beta ** 2
    res.x[0] += tref
    names = ["tmin", "a", "dur", "g"] + [f"c{i}" for i in range(nb)]
    fit = Fit(names, res.x, cov, chi2, dof, float(np.std((m - model)[used])), beta, model, m - model, used)
    a, sa = fit.value("a"), fit.error("a")
    fit.extra.update(depth_mag=float(-2.5 * np.log10(1 - a)), depth_err=float(2.5 / np.log(10) * sa / (1 - a)),
                     tref=tref, baseline=baseline, X=X)
    return fit


def baseline_only_chi2(m, e, X, used) -> float:
    """Chi-square of the baseline alone (linear least squares) on the points ``used``."""
    w = 1.0 / e[used]
    c, *_ = np.linalg.lstsq(X[used] * w[:, None], m[used] * w, rcond=None)
    return float(np.sum(((m[used] - X[used] @ c) * w) ** 2))


# ------------------------------------------------------------------ Kwee-van Woerden
def kwee_van_woerden(t, m, tguess: float, half: float, n_trial: int = 41) -> tuple[float, float]:
    """Time of minimum by Kwee & van Woerden (1956), generalised to a fine trial grid.

    The data within ``tguess +- half`` are interpolated linearly; for each trial
    time T the mean squared difference of the branches reflected about T,
    S(T), is computed over the same reflection offsets; a parabola fitted to S
    around its smallest value gives the minimum and the formal KvW error
    ``sqrt((4AC - B^2) / (4 A^2 (Z - 1)))`` with Z = N/4 independent pairs.

    Returns
    -------
    tmin, sigma : float
        NaN when the window holds too few points on either side.
    """
    w = np.abs(t - tguess) <= half
    tw, mw = t[w], m[w]
    if (tw < tguess).sum() < 3 or (tw > tguess).sum() < 3:
        return np.nan, np.nan
    o = np.argsort(tw)
    tw, mw = tw[o], mw[o]
    shift = 0.3 * half
    trial = tguess + np.linspace(-shift, shift, n_trial)
    lo, hi = tw[0], tw[-1]
    dmax = min(trial[0] - lo, hi - trial[-1], half - shift)
    if dmax <= 0:
        return np.nan, np.nan
    n = len(tw)
    dt = np.linspace(dmax / n, dmax, max(n // 2, 4))
    s = np.array([np.mean((np.interp(T + dt, tw, mw) - np.interp(T - dt, tw, mw)) ** 2) for T in trial])
    k = int(np.argmin(s))
    sel = slice(max(k - 5, 0), min(k + 6, n_trial))
    x = trial[sel] - tguess
    if len(x) < 5:
        return np.nan, np.nan
    A, B, C = np.polyfit(x, s[sel], 2)
    if A <= 0:
        return np.nan, np.nan
    t0 = -B / (2 * A)
    if abs(t0) > shift:
        return np.nan, np.nan
    z = max(n / 4.0, 2.0)
    var = (4 * A * C - B * B) / (4 * A * A * (z - 1))
    return float(tguess + t0), float(np.sqrt(var)) if var > 0 else np.nan


def kvw_bootstrap(t, model, resid, tguess, half, n_boot: int, seed: int) -> tuple[float, np.ndarray]:
    """Uncertainty of the KvW minimum: rerun on ``model`` + resampled ``resid`` ``n_boot`` times.

    Returns
    -------
    sigma : float
        Standard deviation of the bootstrap minima (NaN when fewer than half succeed).
    times : ndarray
        The bootstrap minima.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        tb, _ = kwee_van_woerden(t, model + rng.choice(resid, len(resid), replace=True), tguess, half)
        if np.isfinite(tb):
            out.append(tb)
    out = np.asarray(out)
    return (float(np.std(out, ddof=1)) if len(out) >= max(n_boot // 2, 3) else np.nan), out


# ------------------------------------------------------------------ coverage
def coverage(t, tmid: float, dur: float, n_min: int) -> tuple[str, str]:
    """Whether the points ``t`` cover an event at ``tmid`` lasting ``dur``.

    ``full`` needs: the mid-time inside the data, at least ``n_min`` points in
    each outer half of the event (ingress and egress seen), and at least
    ``n_min`` points out of the event (a baseline).  Otherwise ``partial``
    (some of the event is in the data) or ``none`` (none of it), with why.
    """
    h = dur / 2.0
    inside = np.abs(t - tmid) < h
    if not inside.any():
        return "none", "no data inside the event window"
    ingress = (t > tmid - h) & (t < tmid - h / 2)
    egress = (t < tmid + h) & (t > tmid + h / 2)
    out = ~inside
    if not (t.min() < tmid < t.max()):
        side = "egress" if tmid < t.min() else "ingress"
        return "partial", f"mid-event outside the data: {side} only"
    if ingress.sum() < n_min or egress.sum() < n_min:
        seen = "ingress" if ingress.sum() >= n_min else ("egress" if egress.sum() >= n_min else "the bottom")
        return "partial", (f"{seen} only ({int(ingress.sum())} points in ingress, "
                           f"{int(egress.sum())} in egress, need {n_min})")
    if out.sum() < n_min:
        return "partial", f"only {int(out.sum())} points out of the event (need {n_min}): no baseline"
    return "full", ""


# ------------------------------------------------------------------ transit model
def _transit_geometry(p: float, t14: float, b: float, period: float) -> tuple[float, float]:
    """a/R* and inclination (deg) of a circular orbit giving T14 for radius ratio p and impact b."""
    chord = np.sqrt(max((1.0 + p) ** 2 - b * b, 1e-12))
    asini = chord / max(np.sin(np.pi * t14 / period), 1e-12)
    a = float(np.sqrt(asini * asini + b * b))
    return a, float(np.degrees(np.arccos(min(b / a, 1.0))))


class TransitModel:
    """Flux of a transit (PyAstronomy ``MandelAgolLC``, circular orbit, quadratic limb darkening)."""

    def __init__(self, period: float, ld: tuple[float, float]):
        from PyAstronomy.modelSuite import forTrans

        self.m = forTrans.MandelAgolLC(orbit="circular", ld="quad")
        self.m["per"], self.m["linLimb"], self.m["quadLimb"], self.m["b"] = period, ld[0], ld[1], 0.0
        self.period = period

    def flux(self, t, t0: float, p: float, t14: float, b2: float) -> np.ndarray:
        """Relative flux at ``t``; ``b2`` the squared impact parameter (smooth at b = 0, unlike b)."""
        a, inc = _transit_geometry(p, t14, np.sqrt(max(b2, 0.0)), self.period)
        self.m["T0"], self.m["p"], self.m["a"], self.m["i"] = t0, p, a, inc
        return np.asarray(self.m.evaluate(np.asarray(t, float)), float)

    def depth(self, p: float, t14: float, b2: float) -> float:
        """Fractional flux loss at mid-transit."""
        return float(1.0 - self.flux(np.array([0.0]), 0.0, p, t14, b2)[0])


def fit_transit(t, m, e, guess: dict, period: float, ld=(0.4, 0.25), airmass=None, baseline: str = "time",
                clip: float = 5.0) -> Fit:
    """Fit a limb-darkened transit plus baseline to magnitudes.

    Parameters: ``t0`` (BJD_TDB), ``p`` (Rp/R*), ``t14`` (days, first to
    fourth contact), ``b2`` (squared impact parameter: the model is even in b,
    so b itself has no curvature at 0 and its covariance breaks down there),
    baseline ``c0, c1, ...``;
    period and limb darkening fixed.  ``guess``: ``t0``, ``depth`` (fraction),
    ``dur`` (days).

    Returns
    -------
    Fit
        With ``extra['depth']``, ``extra['depth_err']`` (fractional depth at
        mid-transit, limb darkening included), ``extra['a_rs']``, ``extra['inc']``.
    """
    tm = TransitModel(period, ld)
    tref = float(np.median(t))
    X = baseline_design(t, airmass, baseline, tref)
    nb = X.shape[1]
    t = t - tref
    p0 = np.r_[guess["t0"] - tref, np.sqrt(np.clip(guess["depth"], 1e-4, 0.25)), guess["dur"], 0.1,
               np.median(m), np.zeros(nb - 1)]
    lo = np.r_[t.min() - guess["dur"], 0.01, 0.2 * guess["dur"], 0.0, -np.inf * np.ones(nb)]
    hi = np.r_[t.max() + guess["dur"], 0.5, min(3.0 * guess["dur"], 0.3 * period), 0.9, np.inf * np.ones(nb)]
    p0 = np.clip(p0, lo + 1e-9, hi - 1e-9)

    def fun(p, sel):
        return X[sel] @ p[4:] - 2.5 * np.log10(tm.flux(t[sel], *p[:4]))

    res, used = _robust_fit(fun, p0, lo, hi, t, m, e, clip)
    cov, chi2, dof = _scaled_cov(res, int(used.sum()))
    model = fun(res.x, np.ones_like(used))
    beta = red_noise_beta(t[used], (m - model)[used], float(np.ptp(t)))
    cov = cov * beta ** 2
    res.x[0] += tref
    names = ["t0", "p", "t14", "b2"] + [f"c{i}" for i in range(nb)]
    fit = Fit(names, res.x, cov, chi2, dof, float(np.std((m - model)[used])), beta, model, m - model, used)
    grad = np.zeros(len(res.x))
    d0 = tm.depth(*res.x[1:4])
    for i in (1, 2, 3):
        step = 1e-5 * max(abs(res.x[i]), 1e-3)
        q = res.x.copy()
        q[i] += step
        grad[i] = (tm.depth(*q[1:4]) - d0) / step
    a_rs, inc = _transit_geometry(res.x[1], res.x[2], float(np.sqrt(max(res.x[3], 0.0))), period)
    fit.extra.update(depth=d0, depth_err=float(np.sqrt(max(grad @ cov @ grad, 0.0))), a_rs=a_rs, inc=inc,
                     tref=tref, baseline=baseline, X=X, period=period, ld=list(ld), model_obj=tm)
    return fit


# ------------------------------------------------------------------ correlated noise
def prayer_bead(model: np.ndarray, resid: np.ndarray, refit, n_max: int) -> float:
    """Residual-permutation ("prayer bead") scatter of a fitted time.

    The residuals are shifted cyclically (up to ``n_max`` shifts spread over
    all of them), added back to the model and the time refitted by ``refit``
    (a function of the data returning a time, NaN on failure); correlated
    noise keeps its structure, so the scatter of the refitted times includes
    it.  Returns NaN with fewer than 5 successful refits.
    """
    n = len(resid)
    shifts = np.unique(np.linspace(1, n - 1, min(n_max, n - 1)).astype(int))
    out = np.array([refit(model + np.roll(resid, k)) for k in shifts])
    out = out[np.isfinite(out)]
    return float(np.std(out, ddof=1)) if len(out) >= 5 else np.nan
