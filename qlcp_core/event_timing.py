"""Step ``t``: eclipse minima and transit mid-times of a night's light curve (after ``d``).

For every target of ``lc_{obj}_{band}.ecsv`` the step decides what the night
shows -- an event fully covered (``full``), only part of one (``partial``: no
confident time is given) or none (with the reason, in the table's meta) --
and times what it can:

* eclipses (catalogue ``kind`` ``eclipsing``, ``unknown`` or none): the minimum
  from a symmetric dip profile plus baseline (:func:`qlcp.core.event_fits.fit_dip`,
  method ``model``) and by Kwee-van Woerden on the baseline-removed data
  (method ``kvw``, error by a seeded parametric bootstrap);
* transits (``kind: transit``): a Mandel-Agol model with quadratic limb
  darkening plus baseline (method ``transit``): mid-time, depth and T14.

Uncertainties come from the data: the covariance is scaled by the reduced
chi-square and by a red-noise factor >= 1.  With a catalogue ephemeris
(``t0``, ``period``) every predicted event overlapping the night is fitted in
its own window and numbered by its epoch.

Entry points: :func:`time_events` (a light-curve table in, a timing table out),
:func:`write_timing` (``timing_{obj}_{band}.ecsv`` and ``.png``) and
:func:`run_timing` (a reduced night's group, end to end).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from astropy.table import Table

from . import event_fits as ef
from .products import product_path
from .targets import norm_name

log = logging.getLogger("qlcp.event_timing")

#: settings of step t (config keys) and their defaults
DEFAULTS = {
    "timing_aperture": None,          # aperture index; None: the one with the least achieved scatter
    "timing_baseline": "time",        # baseline terms: time | airmass | both | none
    "timing_min_points": 5,           # points needed in ingress, egress and out of the event
    "timing_snr_min": 7.0,            # detection: sqrt(delta chi2) of dip vs baseline alone
    "timing_clip": 5.0,               # outlier clip, robust sigmas
    "timing_n_boot": 200,             # bootstrap draws of the KvW error
    "timing_seed": 0,                 # seed of the bootstrap
    "timing_prayer_bead": 100,        # residual shifts of the prayer-bead error of eclipse times (0: off)
    "timing_ld": (0.4, 0.25),         # quadratic limb darkening u1, u2 of transits
    "timing_period": 3.0,             # days: orbital period assumed for a transit without one
    "timing_duration": 0.08,          # days: first guess of an event's duration without a catalogue one
    "timing_window": 1.5,             # with an ephemeris: data within this many durations of a predicted event
}

#: the epoch of an event without an ephemeris: stored masked in the table (unknown)
NO_EPOCH = -999999

#: columns of the timing table: name -> (unit, description)
COLUMNS = {
    "target": ("", "target name (catalogue name, else the object)"),
    "star": ("", "light-curve target index k (mag_t{k}_*)"),
    "event": ("", "event number within the night"),
    "epoch": ("", "epoch against the catalogue ephemeris (masked, i.e. unknown, without one)"),
    "kind": ("", "eclipse or transit"),
    "method": ("", "model (symmetric dip + baseline), kvw (Kwee-van Woerden), transit (Mandel-Agol + baseline)"),
    "status": ("", "full: event covered, time trusted; partial: part of the event only, no time given"),
    "time_bjd_tdb": ("d", "time of minimum / mid-transit, BJD_TDB (NaN when partial)"),
    "time_err_d": ("d", "1-sigma uncertainty of the time: max of the scaled covariance (model) or bootstrap "
                        "(kvw) and the prayer-bead scatter (eclipses)"),
    "depth": ("", "depth: mag for eclipses, fractional flux for transits"),
    "depth_err": ("", "1-sigma uncertainty of the depth, same unit"),
    "duration_d": ("d", "duration: full width of the dip / T14 of the transit"),
    "duration_err_d": ("d", "1-sigma uncertainty of the duration"),
    "n_points": ("", "points used in the fit"),
    "rms": ("mag", "rms of the fit residuals"),
    "chi2_red": ("", "reduced chi-square of the fit with the light curve's errors"),
    "beta": ("", "red-noise factor applied to the errors (>= 1)"),
    "snr": ("", "detection significance, sqrt(delta chi2) of the dip against the baseline alone"),
    "aperture": ("", "aperture index j of the light curve used"),
    "reason": ("", "why an event is partial"),
}


def timing_settings(cfg=None) -> dict:
    """The step's settings: :data:`DEFAULTS` overridden by ``cfg`` (an object with attributes or a dict)."""
    get = cfg.get if isinstance(cfg, dict) else (lambda k, d: getattr(cfg, k, d))
    s = {k: (get(k, v) if cfg is not None else v) for k, v in DEFAULTS.items()}
    s = {k: (DEFAULTS[k] if v is None and k != "timing_aperture" else v) for k, v in s.items()}
    s["timing_ld"] = tuple(float(x) for x in s["timing_ld"])
    return s


# ------------------------------------------------------------------ inputs
def target_series(lc: Table, k: int, j: int):
    """Usable points of target ``k`` in aperture ``j``: t (BJD_TDB), mag, err, airmass."""
    t = np.ma.filled(np.ma.asarray(lc["bjd_tdb"], dtype=float), np.nan)
    m = np.ma.filled(np.ma.asarray(lc[f"mag_t{k}_a{j}"], dtype=float), np.nan)
    e = np.ma.filled(np.ma.asarray(lc[f"err_t{k}_a{j}"], dtype=float), np.nan)
    ok = np.asarray(lc["ok"], bool) if "ok" in lc.colnames else np.ones(len(lc), bool)
    x = np.ma.filled(np.ma.asarray(lc["airmass"], dtype=float), np.nan) if "airmass" in lc.colnames else None
    use = ok & np.isfinite(t) & np.isfinite(m) & np.isfinite(e) & (e > 0)
    if x is not None:
        use &= np.isfinite(x)
    o = np.argsort(t[use])
    return t[use][o], m[use][o], e[use][o], (x[use][o] if x is not None else None)


def n_targets(lc: Table) -> int:
    k = 0
    while f"mag_t{k}_a0" in lc.colnames:
        k += 1
    return k


def choose_aperture(lc: Table, k: int, fixed=None) -> int:
    """``fixed`` when given, else the aperture of target ``k`` with the least achieved scatter (meta ``noise``)."""
    if fixed is not None:
        return int(fixed)
    best, val = 0, np.inf
    for d in lc.meta.get("noise") or []:
        if d.get("role") == "target" and int(d.get("k", -1)) == k:
            a = float(d.get("achieved", np.nan))
            j = int(d.get("aperture", 0))
            if np.isfinite(a) and a < val and f"mag_t{k}_a{j}" in lc.colnames:
                best, val = j, a
    return best


def target_names(lc: Table, red=None, obj=None, band=None, selection=None) -> list[str]:
    """Names of the light curve's targets: the selection's (or its field reference's) target names, else
    the object for target 0 and ``{object}_t{k}`` for the others.  ``selection``: step k's file (default:
    the group's under ``red``)."""
    obj = obj or lc.meta.get("object") or lc.meta.get("obj") or "target"
    names = []
    if selection is None and red is not None and band is not None:
        selection = product_path(red, "selection", obj, band)
    if selection is not None:
        names = _selection_names(Path(selection))
    n = n_targets(lc)
    return [names[k] if k < len(names) and names[k] else (obj if k == 0 else f"{obj}_t{k}") for k in range(n)]


def _selection_names(p: Path) -> list[str]:
    try:
        sel = json.loads(p.read_text())
    except (OSError, ValueError):
        return []
    if sel.get("targets"):
        return [str(x) for x in sel["targets"]]
    ref = sel.get("field_reference")
    if ref and Path(ref).is_file():
        try:
            return [str(x) for x in (Table.read(ref, format="ascii.ecsv").meta.get("targets") or [])]
        except (OSError, ValueError):
            return []
    return []


def catalogue_entry(targets, name: str) -> dict:
    """The ephemeris fields (``Target.extra``) of the target named ``name``, or {}.

    ``targets`` is a list of :class:`qlcp.core.targets.Target`, or a dict name -> fields.
    """
    if not targets:
        return {}
    if isinstance(targets, dict):
        for n, d in targets.items():
            if norm_name(n) == norm_name(name):
                return dict(d)
        return {}
    for t in targets:
        if norm_name(name) in t.names():
            return dict(t.extra)
    return {}


# ------------------------------------------------------------------ one target
def _kind(entry: dict) -> str:
    k = str(entry.get("kind", "unknown")).strip().lower()
    return k if k in ("eclipsing", "transit", "pulsating") else "unknown"


def event_windows(t, entry: dict, s: dict) -> tuple[list[tuple[int, float, float]], str]:
    """The windows to fit: ``(epoch, t_guess, half_width)``, and a reason when there is none.

    With a catalogue ``t0`` and ``period``, one window per predicted event
    whose span (``duration``) overlaps the data; otherwise one window over the
    whole night, centred on its faintest (smoothed) point.
    """
    dur = float(entry.get("duration") or s["timing_duration"])
    t0, per = entry.get("t0"), entry.get("period")
    if t0 is not None and per:
        t0, per = float(t0), float(per)
        e_lo = int(np.ceil((t.min() - dur / 2 - t0) / per))
        e_hi = int(np.floor((t.max() + dur / 2 - t0) / per))
        wins = [(e, t0 + e * per, s["timing_window"] * dur) for e in range(e_lo, e_hi + 1)]
        if not wins:
            e = int(np.round((np.mean(t) - t0) / per))
            gap = min(abs(t0 + e * per - t.min()), abs(t0 + e * per - t.max())) * 24
            return [], f"the ephemeris predicts no event in the night (nearest, epoch {e}, {gap:.1f} h from the data)"
        return wins, ""
    return [(NO_EPOCH, float("nan"), float("inf"))], ""


def _faintest(t, m) -> float:
    k = max(3, len(m) // 15)
    sm = np.convolve(m, np.ones(k) / k, mode="same")
    sm[: k // 2], sm[len(sm) - k // 2:] = -np.inf, -np.inf       # edges of a running mean are biased
    return float(t[int(np.argmax(sm))]) if np.isfinite(sm).any() else float(np.median(t))


def _guess(t, m, entry: dict, kind: str, tg: float, s: dict) -> dict:
    dur = float(entry.get("duration") or s["timing_duration"])
    tg = tg if np.isfinite(tg) else _faintest(t, m)
    base = np.median(m[np.abs(t - tg) > dur / 2]) if np.any(np.abs(t - tg) > dur / 2) else np.min(m)
    dm = max(float(np.median(m[np.abs(t - tg) < dur / 6])) - base if np.any(np.abs(t - tg) < dur / 6) else 0, 1e-3)
    depth = entry.get("depth")
    if kind == "transit":
        return {"t0": tg, "dur": dur, "depth": float(depth) if depth else 1 - 10 ** (-0.4 * dm)}
    return {"tmin": tg, "dur": dur, "depth": float(depth) if depth else dm}


def _snr(fit: ef.Fit, m, e) -> float:
    """sqrt of the chi-square gained by the event model over the baseline alone, in units of the fit's
    reduced chi-square (so over- or under-estimated errors do not change it)."""
    c_base = ef.baseline_only_chi2(m, e, fit.extra["X"], fit.used)
    scale = max(fit.chi2 / fit.dof, 1e-12) * fit.beta ** 2
    return float(np.sqrt(max(c_base - fit.chi2, 0.0) / scale))


def _row(name, k, ev, epoch, kind, method, status, time, terr, depth, derr, dur, durerr, fit, snr, j, reason):
    return {"target": name, "star": k, "event": ev, "epoch": epoch, "kind": kind, "method": method,
            "status": status, "time_bjd_tdb": time, "time_err_d": terr, "depth": depth, "depth_err": derr,
            "duration_d": dur, "duration_err_d": durerr, "n_points": int(fit.used.sum()), "rms": fit.rms,
            "chi2_red": fit.chi2 / fit.dof, "beta": fit.beta, "snr": snr, "aperture": j, "reason": reason}


def _fit_window(t, m, e, x, kind, entry, tg, s):
    """The event model fitted in one window (``transit`` or the dip), or None when it fails."""
    g = _guess(t, m, entry, kind, tg, s)
    try:
        if kind == "transit":
            per = float(entry.get("period") or s["timing_period"])
            return ef.fit_transit(t, m, e, g, per, s["timing_ld"], x, s["timing_baseline"], s["timing_clip"])
        return ef.fit_dip(t, m, e, g, x, s["timing_baseline"], s["timing_clip"])
    except (ValueError, np.linalg.LinAlgError) as exc:
        log.warning("event fit failed: %s", exc)
        return None


def _event_rows(name, k, ev, epoch, kind, fit, t, m, e, entry, s, j) -> tuple[list[dict], str]:
    """Rows of one fitted, detected event: the model's, and KvW's for a fully covered eclipse."""
    snr = _snr(fit, m, e)
    tcol, dcol = ("t0", "t14") if kind == "transit" else ("tmin", "dur")
    tm, dur = fit.value(tcol), fit.value(dcol)
    cov_dur = float(entry.get("duration") or dur)
    status, reason = ef.coverage(t[fit.used], tm, max(dur, cov_dur) if entry.get("duration") else dur,
                                 s["timing_min_points"])
    if status == "none":
        return [], f"{name}: fitted event outside the data ({reason})"
    full = status == "full"
    if kind == "transit":
        depth, derr = fit.extra["depth"], fit.extra["depth_err"]
    else:
        depth, derr = fit.extra["depth_mag"], fit.extra["depth_err"]
    method = "transit" if kind == "transit" else "model"
    label = "transit" if kind == "transit" else "eclipse"
    rows = [_row(name, k, ev, epoch, label, method, status, tm if full else np.nan, fit.error(tcol) if full else np.nan,
                 depth, derr, dur if full else np.nan, fit.error(dcol) if full else np.nan, fit, snr, j, reason)]
    if full and kind != "transit":
        rows += _kvw_and_prayer_bead(rows[0], fit, t, m, e, s)
    return rows, ""


def _kvw_and_prayer_bead(row: dict, fit: ef.Fit, t, m, e, s: dict) -> list[dict]:
    """The KvW row of a fully covered eclipse; both rows' errors raised to their prayer-bead scatter.

    The model's error is max(scaled covariance, prayer bead); KvW's is max(bootstrap x beta,
    prayer bead): the bootstrap resamples white residuals, the prayer bead keeps their correlations.
    """
    u = fit.used
    base = fit.extra["X"] @ fit.p[4:]
    tu, mu, eu, mod, res = t[u], (m - base)[u], e[u], (fit.model - base)[u], fit.resid[u]
    tm, dur = row["time_bjd_tdb"], row["duration_d"]
    n_pb = int(s["timing_prayer_bead"])
    if n_pb > 0:
        guess = {"tmin": tm, "depth": row["depth"], "dur": dur}
        pb = ef.prayer_bead(fit.model[u], res, lambda y: ef.fit_dip(tu, y, eu, guess, None, "time", 1e9).value("tmin"),
                            n_pb)      # refitted with a time baseline: its slope trades with the time
        row["time_err_d"] = float(np.nanmax([row["time_err_d"], pb]))
    tk, _ = ef.kwee_van_woerden(tu, mu, tm, dur / 2)
    sk, _ = ef.kvw_bootstrap(tu, mod, res, tm, dur / 2, s["timing_n_boot"], s["timing_seed"])
    if not (np.isfinite(tk) and np.isfinite(sk)):
        return []
    sk *= fit.beta
    if n_pb > 0:
        sk = float(np.nanmax([sk, ef.prayer_bead(mod, res, lambda y: ef.kwee_van_woerden(tu, y, tm, dur / 2)[0], n_pb)]))
    return [dict(row, method="kvw", time_bjd_tdb=tk, time_err_d=sk, reason="")]


def time_target(lc: Table, k: int, name: str, entry: dict, s: dict) -> tuple[list[dict], list[dict], list[str]]:
    """Time target ``k`` of ``lc``.

    Returns
    -------
    rows : list of dict
        Timing rows (:data:`COLUMNS`).
    plots : list of dict
        What the plot draws: ``t, m, fit, title``.
    notes : list of str
        Why nothing (or less than expected) was timed.
    """
    kind = _kind(entry)
    j = choose_aperture(lc, k, s["timing_aperture"])
    t, m, e, x = target_series(lc, k, j)
    n_min = int(s["timing_min_points"])
    if kind == "pulsating":
        return [], [], [f"{name}: kind pulsating: no eclipse or transit timing (period search in the campaign)"]
    if len(t) < 3 * n_min:
        return [], [], [f"{name}: {len(t)} usable points, need {3 * n_min}"]
    wins, why = event_windows(t, entry, s)
    rows, plots, notes = [], [], ([f"{name}: {why}"] if why else [])
    for ev, (epoch, tg, half) in enumerate(wins):
        w = np.abs(t - tg) < half if np.isfinite(tg) else np.ones(len(t), bool)
        if w.sum() < 3 * n_min:
            notes.append(f"{name}: epoch {epoch}: {int(w.sum())} points in its window, need {3 * n_min}")
            continue
        fit = _fit_window(t[w], m[w], e[w], None if x is None else x[w], kind, entry, tg, s)
        if fit is None:
            notes.append(f"{name}: event {ev}: the fit failed")
            continue
        snr = _snr(fit, m[w], e[w])
        plots.append({"t": t[w], "m": m[w], "fit": fit, "title": f"{name} a{j} ev{ev}"})
        if snr < s["timing_snr_min"] or (fit.extra.get("depth_mag", fit.extra.get("depth", 0)) <= 0):
            notes.append(f"{name}: no significant event (S/N {snr:.1f} < {s['timing_snr_min']:g})")
            plots[-1]["note"] = f"no significant event: S/N {snr:.1f} < {s['timing_snr_min']:g}"
            continue
        r, note = _event_rows(name, k, ev, epoch, "transit" if kind == "transit" else "eclipse",
                              fit, t[w], m[w], e[w], entry, s, j)
        rows += r
        notes += [note] if note else []
        plots[-1]["status"] = r[0]["status"] if r else "none"
    return rows, plots, notes


# ------------------------------------------------------------------ the night
def _time_all(lc: Table, targets=None, cfg=None, names=None) -> tuple[Table, list[dict]]:
    s = timing_settings(cfg)
    names = names or target_names(lc)
    rows, plots, summary = [], [], []
    for k in range(n_targets(lc)):
        entry = catalogue_entry(targets, names[k])
        r, p, notes = time_target(lc, k, names[k], entry, s)
        rows += r
        plots += p
        status = "full" if any(x["status"] == "full" for x in r) else ("partial" if r else "none")
        summary.append({"target": names[k], "star": k, "kind": _kind(entry), "status": status,
                        "reason": "; ".join(notes) if notes else (r[0]["reason"] if status == "partial" else "")})
        log.info("timing %s: %s%s", names[k], status, f" ({summary[-1]['reason']})" if summary[-1]["reason"] else "")
    return timing_table(rows, s, summary, lc.meta), plots


def time_events(lc: Table, targets=None, cfg=None, names=None) -> Table:
    """Time the eclipses / transits of every target of a light curve.

    Parameters
    ----------
    lc : Table
        A light curve (``lc_{obj}_{band}.ecsv`` contract).
    targets : list of Target or dict, optional
        Catalogue entries (``Target.extra``: kind, t0, period, duration [d], depth
        [mag for eclipses, fraction for transits]), matched by name.
    cfg : Config or dict, optional
        Settings (:data:`DEFAULTS`).
    names : list of str, optional
        Names of the light curve's targets (default :func:`target_names`).

    Returns
    -------
    Table
        One row per event and method (:data:`COLUMNS`); meta ``settings`` and
        ``targets``: per target its ``status`` (full|partial|none) and ``reason``.
    """
    return _time_all(lc, targets, cfg, names)[0]


def timing_table(rows: list[dict], s: dict, summary: list[dict], lc_meta: dict | None = None) -> Table:
    """The timing table with units and descriptions on every column."""
    dtypes = {"target": "U64", "kind": "U8", "method": "U8", "status": "U8", "reason": "U200",
              "star": int, "event": int, "epoch": int, "n_points": int, "aperture": int}
    t = Table()
    for c, (unit, desc) in COLUMNS.items():
        t[c] = np.array([r[c] for r in rows], dtype=dtypes.get(c, float))
        if c == "epoch":                     # unknown without an ephemeris: masked, not a number
            t[c] = np.ma.MaskedArray(t[c], mask=np.asarray(t[c]) == NO_EPOCH)
        t[c].unit = unit or None
        t[c].description = desc
    lc_meta = lc_meta or {}
    t.meta.update({"object": lc_meta.get("object") or lc_meta.get("obj"), "band": lc_meta.get("band"),
                   "night": lc_meta.get("night"), "time_scale": "BJD_TDB",
                   "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()},
                   "methods": {"model": "symmetric dip m = base - 2.5 log10(1 - a (1-u^2)^g), u = 2(t-tmin)/D, "
                                        "scipy least_squares; covariance x reduced chi2 x beta^2",
                               "kvw": "Kwee & van Woerden 1956 on baseline-removed data; error: parametric "
                                      "bootstrap of the residuals",
                               "transit": "PyAstronomy MandelAgolLC, circular, quadratic limb darkening "
                                          "(timing_ld), period fixed; fitted t0, Rp/R*, T14, b + baseline"},
                   "targets": summary})
    return t


# ------------------------------------------------------------------ products
def timing_figure(plots: list[dict], table: Table, title: str = ""):
    """Data, model and residuals of every fitted event (one column each); a note when there is none.
    A window whose status is ``none`` (no significant event) shows its data and why, no model: a
    drawn model would read as a detection."""
    from .plotting import _new_figure

    n = max(len(plots), 1)
    fig = _new_figure((4.2 * n + 0.8, 5.6), 110, layout="constrained")
    if not plots:
        ax = fig.add_subplot(111)
        ax.axis("off")
        notes = [f"{d['target']}: {d['status']} {d['reason']}" for d in table.meta.get("targets", [])]
        ax.text(0.02, 0.5, "\n".join(notes) or "no target", wrap=True, va="center", fontsize=8)
        fig.suptitle(title or "timing")
        return fig
    gs = fig.add_gridspec(2, n, height_ratios=(3, 1))
    for i, p in enumerate(plots):
        fit, t, m = p["fit"], p["t"], p["m"]
        t_ref = np.floor(t.min())
        x = t - t_ref
        top, bot = fig.add_subplot(gs[0, i]), fig.add_subplot(gs[1, i])
        top.plot(x[fit.used], m[fit.used], ".", ms=3, color="0.3", label="data")
        top.plot(x[~fit.used], m[~fit.used], "x", ms=4, color="r", label="clipped")
        status = p.get("status", "none")
        o = np.argsort(x)
        if status == "none":
            top.invert_yaxis()
            top.set_ylabel("differential mag")
            top.set_title(f"{p['title']}: none", fontsize=9)
            top.text(0.5, 0.05, p.get("note") or "no event timed", transform=top.transAxes, ha="center",
                     va="bottom", fontsize=7, color="0.3")
            bot.axis("off")
            bot.set_label("no model")
            continue
        top.plot(x[o], fit.model[o], "-", color="C0", lw=1.2, label="model", gid="model")
        for r in table[(table["target"] == p["title"].split(" a")[0])] if len(table) else []:
            if np.isfinite(r["time_bjd_tdb"]):
                top.axvline(r["time_bjd_tdb"] - t_ref, color="C1" if r["method"] == "kvw" else "C2", lw=0.8,
                            ls="--", label=f"{r['method']} {r['time_bjd_tdb']:.5f}±{r['time_err_d'] * 86400:.0f}s")
        top.invert_yaxis()
        top.set_ylabel("differential mag")
        top.set_title(f"{p['title']}: {p.get('status', 'none')}", fontsize=9)
        top.legend(fontsize=6, loc="best")
        bot.plot(x[fit.used], fit.resid[fit.used], ".", ms=3, color="0.3")
        bot.axhline(0, color="C0", lw=0.8)
        bot.invert_yaxis()
        bot.set_xlabel(f"BJD_TDB - {t_ref:.0f}")
        bot.set_ylabel(f"resid (rms {fit.rms * 1e3:.1f} mmag)", fontsize=7)
    fig.suptitle(title)
    return fig


def write_timing(table: Table, red, obj: str, band: str, plots: list[dict] | None = None) -> dict:
    """Write ``timing_{obj}_{band}.ecsv`` and its plot ``timing_{obj}_{band}.png`` under ``red``.

    Returns
    -------
    dict
        ``{"timing": path, "timing_png": path}``.
    """
    from .io import write_table
    from .plotting import _save

    out = {"timing": product_path(red, "timing", obj, band), "timing_png": product_path(red, "timing_png", obj, band)}
    write_table(out["timing"], table)
    fig = timing_figure(plots or [], table, f"{obj} {band}: event timing")
    _save(fig, out["timing_png"], "png", 110)
    return out


def run_timing(red, obj: str, band: str, cfg=None, targets=None, lightcurve=None, selection=None) -> dict:
    """Step ``t`` of one group of a reduced night: read its light curve, time its events, write the products.

    Parameters
    ----------
    red : path
        The night's output root (holding ``lc_{obj}_{band}.ecsv``).
    obj, band : str
    cfg : Config, optional
        Settings (:data:`DEFAULTS`) and, when ``targets`` is not given, the
        catalogue (``targets`` / ``target_catalog``).
    targets : list of Target or dict, optional
    lightcurve, selection : path, optional
        The group's light curve (step d's) and star selection (step k's); default: the group's under ``red``.

    Returns
    -------
    dict
        Paths by product kind (``timing``, ``timing_png``).
    """
    lc = Table.read(lightcurve or product_path(red, "lightcurve", obj, band), format="ascii.ecsv")
    if targets is None and cfg is not None and hasattr(cfg, "targets"):
        from .targets import all_targets
        targets = all_targets(cfg)
    names = target_names(lc, red, obj, band, selection)
    table, plots = _time_all(lc, targets, cfg, names)
    return write_timing(table, red, obj, band, plots)
