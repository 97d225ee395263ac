"""Campaign products of one target from all its nights: rebuildable at any time from ``RED_ROOT``.

A target is recognised across nights by name: every ``RED_ROOT/*/lc_{obj}_{band}.ecsv``
whose target ``k`` is named (selection product, field reference, else the
object; :func:`qlcp.core.event_timing.target_names`) like the target, ignoring
case, blanks and dashes (:func:`qlcp.core.targets.norm_name`).  Field references
keep the same stars from night to night, so target ``k`` is the same star.

:func:`build_campaign` writes under ``RED_ROOT/campaign/{target}/``:

* ``lc_{target}_{band}.ecsv`` / ``.png``: all nights on one zero point (each
  night's median of its out-of-event points subtracted);
* ``oc_{target}.ecsv`` / ``.png``: the nights' fully covered event times
  (step ``t``; timed on the fly when a night has no timing table) against the
  catalogue ephemeris: epoch, O-C in days and minutes;
* ``ephemeris_{target}.yaml``: a linear ephemeris by weighted least squares
  (at least 2 events);
* ``period_{target}_{band}.ecsv`` / ``.png``: without a catalogue period and
  with enough coverage, a Generalised Lomb-Scargle periodogram (PyAstronomy)
  and a box search (astropy BoxLeastSquares) of the campaign light curve, and
  the light curve phased on the best period.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import yaml
from astropy.table import Table, vstack

from . import event_timing as et
from .io import write_table, write_text
from .products import product_path
from .targets import norm_name

log = logging.getLogger("qlcp.campaign")

#: settings of the campaign (config keys) and their defaults
DEFAULTS = {
    "campaign_method": "model",        # which timing method's times make the O-C (model|kvw; transits: transit)
    "campaign_min_period": 0.2,        # days: shortest period searched
    "campaign_max_period": None,       # days: longest period searched (default: half the campaign span)
    "campaign_min_nights": 2,          # nights needed for a period search
}


def campaign_settings(cfg=None) -> dict:
    get = cfg.get if isinstance(cfg, dict) else (lambda k, d: getattr(cfg, k, d))
    return {k: (get(k, v) if cfg is not None else v) for k, v in DEFAULTS.items()}


def safe_name(name: str) -> str:
    """A target name usable in a file name (``XO-1`` stays, ``HAT P 32`` becomes ``HAT_P_32``)."""
    return re.sub(r"[^A-Za-z0-9+.\-]+", "_", str(name).strip()) or "target"


# ------------------------------------------------------------------ the nights
def find_nights(red_root, target: str, band: str | None = None) -> list[dict]:
    """The light curves of ``target`` under ``red_root/*/``.

    Returns
    -------
    list of dict
        ``night, red, obj, band, k, lc_path, names`` per night and band, in night order.
    """
    out = []
    for p in sorted(Path(red_root).glob("*/lc_*.ecsv")):
        try:
            lc = Table.read(p, format="ascii.ecsv")
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable light curve (%s)", p, e)
            continue
        obj, b = _object_band(lc.meta, p)
        if band is not None and b != band:
            continue
        names = et.target_names(lc, p.parent, obj, b)
        for k, n in enumerate(names):
            if norm_name(n) == norm_name(target):
                out.append({"night": p.parent.name, "red": p.parent, "obj": obj, "band": b, "k": k,
                            "lc_path": p, "lc": lc, "names": names})
                break
    return out


def _object_band(meta: dict, path: Path) -> tuple[str, str]:
    """A light curve's object and band: its table's metadata (``obj``/``band`` of step d); the file
    name only for a table without them, and then only when it splits one way (a band such as
    ``Filter_2`` holds the separator: ``lc_{obj}_{band}.ecsv`` does not say which ``_`` it is)."""
    obj, b = meta.get("obj") or meta.get("object"), meta.get("band")
    if obj is not None and b is not None:
        return str(obj), str(b)
    m = re.match(r"lc_([^_]+)_([^_]+)\.ecsv$", path.name)
    if m:
        return m.group(1), m.group(2)
    log.warning("%s: no object and band in its metadata, and its name does not say which is which", path)
    return path.stem[3:], ""


def _lc_meta(path: Path) -> dict:
    """The metadata of an ECSV light curve, from its header only (not its rows)."""
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("#"):
                break
            lines.append(line.rstrip("\n"))
    try:
        from astropy.io.ascii.ecsv import EcsvHeader

        h = EcsvHeader()
        h.get_cols(lines)               # parses the YAML header: meta and columns
        return dict(h.table_meta or {})
    except Exception:  # an odd header: the whole table
        return dict(Table.read(path, format="ascii.ecsv").meta)


def night_timing(entry: dict, cfg=None, targets=None) -> Table:
    """The night's timing table (``timing_{obj}_{band}.ecsv``), computed when missing."""
    p = product_path(entry["red"], "timing", entry["obj"], entry["band"])
    if p.is_file():
        return Table.read(p, format="ascii.ecsv")
    return et.time_events(entry["lc"], targets, cfg, entry["names"])


def _out_of_event(t: np.ndarray, rows: Table, entry_cat: dict) -> np.ndarray:
    """Mask of points outside every event of the night (timed events, or the catalogue's predicted ones)."""
    out = np.ones(len(t), bool)
    for r in rows:
        tm = r["time_bjd_tdb"]
        if np.isfinite(tm) and np.isfinite(r["duration_d"]):
            out &= np.abs(t - tm) > 0.6 * r["duration_d"]
    t0, per, dur = entry_cat.get("t0"), entry_cat.get("period"), entry_cat.get("duration")
    if t0 is not None and per and dur:
        ph = (t - float(t0)) / float(per)
        out &= np.abs(ph - np.round(ph)) * float(per) > 0.6 * float(dur)
    return out


def campaign_lightcurve(entries: list[dict], timings: list[Table], entry_cat: dict, cfg=None) -> Table:
    """All nights of one band on a common zero point.

    Columns ``night, bjd_tdb, mag, err, airmass, aperture, out_of_event, zero_point``:
    ``mag`` is the night's differential magnitude minus the median of its
    out-of-event points (``zero_point``; all points when none is out of event).
    """
    s = et.timing_settings(cfg)
    parts = []
    for en, tim in zip(entries, timings):
        k = en["k"]
        j = et.choose_aperture(en["lc"], k, s["timing_aperture"])
        t, m, e, x = et.target_series(en["lc"], k, j)
        if not len(t):
            continue
        rows = tim[tim["star"] == k] if len(tim) else tim
        out = _out_of_event(t, rows, entry_cat)
        zp = float(np.median(m[out])) if out.sum() >= 3 else float(np.median(m))
        p = Table({"night": np.full(len(t), en["night"]), "bjd_tdb": t, "mag": m - zp, "err": e,
                   "airmass": x if x is not None else np.full(len(t), np.nan), "aperture": np.full(len(t), j),
                   "out_of_event": out, "zero_point": np.full(len(t), zp)})
        parts.append(p)
    lc = vstack(parts) if parts else Table(names=("night", "bjd_tdb", "mag", "err", "airmass", "aperture",
                                                   "out_of_event", "zero_point"))
    units = {"bjd_tdb": "d", "mag": "mag", "err": "mag", "zero_point": "mag"}
    desc = {"night": "night (directory under RED_ROOT)", "bjd_tdb": "mid-exposure BJD_TDB",
            "mag": "differential magnitude minus the night's zero point", "err": "1-sigma error",
            "airmass": "airmass", "aperture": "aperture index used", "out_of_event": "outside any event",
            "zero_point": "the night's median out-of-event magnitude, subtracted"}
    for c in lc.colnames:
        lc[c].unit, lc[c].description = units.get(c), desc.get(c)
    return lc


def collect_events(entries: list[dict], timings: list[Table], method: str) -> Table:
    """Fully covered event times of the target: one row per event, the preferred method's (transits: transit)."""
    rows = []
    for en, tim in zip(entries, timings):
        if not len(tim):
            continue
        sel = tim[(tim["star"] == en["k"]) & (tim["status"] == "full")]
        for ev in np.unique(sel["event"]) if len(sel) else []:
            r = sel[sel["event"] == ev]
            pick = r[r["method"] == method] if np.any(r["method"] == method) else r[:1]
            rows.append((en["night"], en["band"], float(pick["time_bjd_tdb"][0]), float(pick["time_err_d"][0]),
                         str(pick["method"][0]), str(pick["kind"][0])))
    t = Table(rows=rows or None, names=("night", "band", "time_bjd_tdb", "time_err_d", "method", "kind"),
              dtype=("U64", "U8", float, float, "U8", "U8"))
    t.sort("time_bjd_tdb")
    return t


# ------------------------------------------------------------------ O-C and ephemeris
def oc_table(events: Table, t0: float, period: float) -> Table:
    """O-C of the event times against ``t0 + E period``: epoch, time, error, O-C (d, min)."""
    e = np.round((events["time_bjd_tdb"] - t0) / period).astype(int) if len(events) else np.array([], int)
    oc = np.asarray(events["time_bjd_tdb"], float) - (t0 + e * period)
    t = Table()
    t["night"] = events["night"]
    t["epoch"] = e
    t["time_bjd_tdb"] = events["time_bjd_tdb"]
    t["time_err_d"] = events["time_err_d"]
    t["oc_d"] = oc
    t["oc_min"] = oc * 1440.0
    t["oc_err_min"] = np.asarray(events["time_err_d"], float) * 1440.0
    t["method"] = events["method"]
    for c, (u, d) in {"epoch": ("", "cycle number against the reference ephemeris"),
                      "time_bjd_tdb": ("d", "observed time of minimum / mid-transit, BJD_TDB"),
                      "time_err_d": ("d", "1-sigma uncertainty"), "oc_d": ("d", "observed minus calculated"),
                      "oc_min": ("min", "observed minus calculated"), "oc_err_min": ("min", "1-sigma uncertainty"),
                      "method": ("", "timing method"), "night": ("", "night")}.items():
        t[c].unit, t[c].description = u or None, d
    t.meta.update(reference_t0=float(t0), reference_period=float(period))
    return t


def fit_ephemeris(epochs, times, errors) -> dict:
    """Linear ephemeris ``T(E) = t0 + E period`` by weighted least squares.

    Errors are the formal ones, multiplied by sqrt(chi2/dof) when that exceeds 1
    (``scaled``).  ``t0`` refers to epoch 0 of the given numbering.

    Returns
    -------
    dict
        ``t0, t0_err, period, period_err, covariance (2x2, d^2), n_events, chi2, dof, scaled``.
    """
    E = np.asarray(epochs, float)
    T = np.asarray(times, float)
    w = 1.0 / np.asarray(errors, float) ** 2
    A = np.column_stack([np.ones_like(E), E])
    Tr = T[0]
    N = A.T @ (A * w[:, None])
    cov = np.linalg.inv(N)
    p = cov @ (A.T @ (w * (T - Tr)))
    chi2 = float(np.sum(w * (T - Tr - A @ p) ** 2))
    dof = len(T) - 2
    scale = chi2 / dof if dof > 0 and chi2 / dof > 1 else 1.0
    cov = cov * scale
    return {"t0": float(p[0] + Tr), "t0_err": float(np.sqrt(cov[0, 0])), "period": float(p[1]),
            "period_err": float(np.sqrt(cov[1, 1])), "covariance": cov.tolist(), "n_events": int(len(T)),
            "chi2": chi2, "dof": int(dof), "scaled": bool(scale > 1)}


# ------------------------------------------------------------------ period search
def period_search(lc: Table, s: dict, dur: float = 0.08) -> tuple[Table, dict] | None:
    """GLS and box-search periodograms of a campaign light curve, or None when coverage does not allow.

    Coverage: at least ``campaign_min_nights`` nights and a span of at least
    two shortest periods.  Periods from ``campaign_min_period`` to
    ``campaign_max_period`` (default half the span).

    Returns
    -------
    table : Table
        ``period, gls_power, bls_power`` on one grid.
    best : dict
        ``gls_period``, ``bls_period``, ``bls_t0``, ``bls_depth``, ``bls_duration``, ``fap`` (GLS).
    """
    from astropy.timeseries import BoxLeastSquares
    from PyAstronomy.pyTiming import pyPeriod

    t, m, e = (np.asarray(lc[c], float) for c in ("bjd_tdb", "mag", "err"))
    span = float(np.ptp(t)) if len(t) else 0.0
    pmin = float(s["campaign_min_period"])
    pmax = float(s["campaign_max_period"] or span / 2.0)
    if len(set(lc["night"])) < int(s["campaign_min_nights"]) or pmax <= pmin or span < 2 * pmin:
        return None
    fmin, fmax = 1.0 / pmax, 1.0 / pmin
    nf = int(min(max(5 * span * (fmax - fmin) / max(dur, 0.01), 2000), 200000))
    freq = np.linspace(fmin, fmax, nf)
    gls = pyPeriod.Gls((t, m, e), freq=freq, norm="ZK", verbose=False)
    bls = BoxLeastSquares(t, -m, e)      # BLS looks for dips: an eclipse lowers -mag
    durations = np.clip(np.array([0.5, 1.0, 1.5]) * dur, 0.005, 0.9 * pmin)
    res = bls.power(1.0 / freq, durations, objective="snr")
    best = _shortest_harmonic(res.period, res.power, int(np.argmax(res.power)))
    tab = Table({"period": 1.0 / freq, "gls_power": np.asarray(gls.power), "bls_power": np.asarray(res.power)})
    tab["period"].unit = "d"
    out = {"gls_period": float(1.0 / freq[int(np.argmax(gls.power))]), "fap": float(gls.FAP(np.max(gls.power))),
           "bls_period": float(res.period[best]), "bls_t0": float(res.transit_time[best]),
           "bls_depth": float(res.depth[best]), "bls_duration": float(res.duration[best])}
    tab.meta.update(out)
    return tab, out


def _shortest_harmonic(periods, power, best: int, frac: float = 0.8) -> int:
    """Index of the shortest P_best / k (k = 2, 3, 4) whose box power is at least ``frac`` of the best:
    with sparse nightly coverage an eclipse folded on a multiple of its period loses nothing, so
    the box search cannot prefer the true period; the shortest period the data allow equally is."""
    for k in (4, 3, 2):
        i = int(np.argmin(np.abs(periods - periods[best] / k)))
        lo, hi = max(i - 3, 0), min(i + 4, len(periods))
        j = lo + int(np.argmax(power[lo:hi]))
        if abs(periods[j] * k / periods[best] - 1) < 0.01 and power[j] >= frac * power[best]:
            return j
    return best


# ------------------------------------------------------------------ plots
def _fig(size):
    from .plotting import _new_figure
    return _new_figure(size, 110, layout="constrained")


def plot_campaign_lc(lc: Table, path: Path, title: str, ephem: dict | None = None) -> Path:
    """The campaign light curve against time, and phased on ``ephem`` (t0, period) when given."""
    from .plotting import _save

    fig = _fig((10, 4.5))
    axes = fig.subplots(1, 2 if ephem else 1, squeeze=False)[0]
    t0 = np.floor(np.min(lc["bjd_tdb"])) if len(lc) else 0.0
    for i, n in enumerate(sorted(set(lc["night"]))):
        r = lc[lc["night"] == n]
        axes[0].plot(r["bjd_tdb"] - t0, r["mag"], ".", ms=2, color=f"C{i % 10}", label=str(n))
        if ephem:
            ph = ((r["bjd_tdb"] - ephem["t0"]) / ephem["period"] + 0.5) % 1.0 - 0.5
            axes[1].plot(ph, r["mag"], ".", ms=2, color=f"C{i % 10}")
    axes[0].set_xlabel(f"BJD_TDB - {t0:.0f}")
    axes[0].legend(fontsize=6, markerscale=3)
    if ephem:
        axes[1].set_xlabel(f"phase (P = {ephem['period']:.6f} d)")
        axes[1].invert_yaxis()
    axes[0].invert_yaxis()
    axes[0].set_ylabel("mag - night zero point")
    fig.suptitle(title)
    return _save(fig, path, "png", 110)


def plot_oc(oc: Table, path: Path, title: str, ephem: dict | None) -> Path:
    """O-C diagram (minutes against epoch), with the refined ephemeris' line when there is one."""
    from .plotting import _save

    fig = _fig((6.5, 4))
    ax = fig.add_subplot(111)
    if len(oc):
        ax.errorbar(oc["epoch"], oc["oc_min"], oc["oc_err_min"], fmt="o", ms=4, capsize=2)
    if ephem and len(oc):
        E = np.linspace(np.min(oc["epoch"]), np.max(oc["epoch"]), 50)
        line = (ephem["t0"] + E * ephem["period"] - oc.meta["reference_t0"] - E * oc.meta["reference_period"]) * 1440
        ax.plot(E, line, "-", color="C1", label=f"refined P = {ephem['period']:.7f} ± {ephem['period_err']:.7f} d")
        ax.legend(fontsize=7)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("O - C (min)")
    fig.suptitle(title)
    return _save(fig, path, "png", 110)


def plot_period(tab: Table, best: dict, lc: Table, path: Path, title: str) -> Path:
    """GLS and box periodograms and the light curve phased on the box search's best period."""
    from .plotting import _save

    fig = _fig((10, 4.5))
    a1, a2 = fig.subplots(1, 2)
    a1.plot(tab["period"], tab["gls_power"] / np.max(tab["gls_power"]), lw=0.7, label="GLS")
    a1.plot(tab["period"], tab["bls_power"] / np.max(tab["bls_power"]), lw=0.7, label="box (BLS)")
    a1.set_xscale("log")
    a1.set_xlabel("period (d)")
    a1.set_ylabel("power / max")
    a1.legend(fontsize=7)
    ph = ((lc["bjd_tdb"] - best["bls_t0"]) / best["bls_period"] + 0.5) % 1.0 - 0.5
    a2.plot(ph, lc["mag"], ".", ms=2)
    a2.invert_yaxis()
    a2.set_xlabel(f"phase (P = {best['bls_period']:.6f} d)")
    fig.suptitle(title)
    return _save(fig, path, "png", 110)


# ------------------------------------------------------------------ the campaign
def build_campaign(red_root, target: str, cfg=None, targets=None, band: str | None = None) -> dict:
    """Rebuild the campaign products of ``target`` from every night under ``red_root``.

    Parameters
    ----------
    red_root : path
        The output root holding one directory per night.
    target : str
        Target name (catalogue name or object), matched with :func:`norm_name`.
    cfg : Config or dict, optional
        Settings (:data:`DEFAULTS`, :data:`qlcp.core.event_timing.DEFAULTS`) and the catalogue.
    targets : list of Target or dict, optional
        Catalogue entries (default: from ``cfg``); the target's ``t0``, ``period`` make the O-C.
    band : str, optional
        Only this band.

    Returns
    -------
    dict
        Paths by product kind (``campaign_lc``/``campaign_lc_png`` keyed ``..._{band}``
        when several bands, ``oc``, ``oc_png``, ``ephemeris``, ``period``, ``period_png``);
        ``notes`` (list of str) says what could not be made and why.
    """
    s = campaign_settings(cfg)
    if targets is None and cfg is not None and hasattr(cfg, "targets"):
        from .targets import all_targets
        targets = all_targets(cfg)
    cat = et.catalogue_entry(targets, target)
    entries = find_nights(red_root, target, band)
    out, notes, name = {}, [], safe_name(target)
    if not entries:
        log.warning("campaign %s: no light curve of it under %s", target, red_root)
        return {"notes": [f"no light curve of {target} under {red_root}"]}
    timings = [night_timing(en, cfg, targets) for en in entries]
    bands = sorted({en["band"] for en in entries})
    lcs = {}
    for b in bands:
        idx = [i for i, en in enumerate(entries) if en["band"] == b]
        lcs[b] = campaign_lightcurve([entries[i] for i in idx], [timings[i] for i in idx], cat, cfg)
        lcs[b].meta.update(target=target, band=b, nights=[entries[i]["night"] for i in idx])
        key = "" if len(bands) == 1 else f"_{b}"
        out[f"campaign_lc{key}"] = write_table(product_path(red_root, "campaign_lc", name, b), lcs[b])
    method = "transit" if str(cat.get("kind", "")).lower() == "transit" else s["campaign_method"]
    events = collect_events(entries, timings, method)
    ref, searched = _reference(cat, lcs[bands[0]], events, s, red_root, name, bands[0], out, notes)
    ephem = None
    if ref is None:
        notes.append("no period: no catalogue period and no period search possible; no O-C")
    else:
        oc = oc_table(events, *ref)
        oc.meta.update(target=target, reference="catalogue" if not searched else "period search")
        if len(events) >= 2 and len(set(oc["epoch"])) >= 2:
            ephem = fit_ephemeris(oc["epoch"], oc["time_bjd_tdb"], oc["time_err_d"])
            ephem.update(target=target, epochs=[int(x) for x in oc["epoch"]], method=method,
                         reference={"t0": float(ref[0]), "period": float(ref[1]),
                                    "source": oc.meta["reference"]}, nights=[str(n) for n in oc["night"]])
            out["ephemeris"] = write_text(product_path(red_root, "ephemeris", name),
                                          yaml.safe_dump(ephem, sort_keys=False))
        else:
            notes.append(f"{len(events)} fully covered event(s): no refined ephemeris (need 2 epochs)")
        oc.meta["ephemeris"] = ephem
        out["oc"] = write_table(product_path(red_root, "oc", name), oc)
        out["oc_png"] = plot_oc(oc, product_path(red_root, "oc_png", name), f"{target}: O-C", ephem)
    phase_on = ephem or ({"t0": ref[0], "period": ref[1]} if ref else None)
    for b in bands:
        key = "" if len(bands) == 1 else f"_{b}"
        out[f"campaign_lc_png{key}"] = plot_campaign_lc(lcs[b], product_path(red_root, "campaign_lc_png", name, b),
                                                        f"{target} {b}: {len(set(lcs[b]['night']))} nights", phase_on)
    out["notes"] = notes
    log.info("campaign %s: %d night(s), %d event(s)%s", target, len(entries), len(events),
             f", P = {ephem['period']:.7f} +- {ephem['period_err']:.7f} d" if ephem else "")
    return out


def _reference(cat, lc, events, s, red_root, name, band, out, notes) -> tuple[tuple | None, bool]:
    """The ephemeris the O-C is computed against: the catalogue's, else a period search's (written)."""
    if cat.get("t0") is not None and cat.get("period"):
        return (float(cat["t0"]), float(cat["period"])), False
    if cat.get("period") and len(events):
        return (float(events["time_bjd_tdb"][0]), float(cat["period"])), False
    found = period_search(lc, s, float(cat.get("duration") or et.DEFAULTS["timing_duration"]))
    if found is None:
        notes.append("period search: coverage too short (nights or span)")
        return None, False
    tab, best = found
    out["period"] = write_table(product_path(red_root, "period", name, band), tab)
    out["period_png"] = plot_period(tab, best, lc, product_path(red_root, "period_png", name, band),
                                    f"{name} {band}: period search")
    t0 = float(events["time_bjd_tdb"][0]) if len(events) else best["bls_t0"]
    return (t0, best["bls_period"]), True


def campaign_targets(red_root) -> list[str]:
    """Every target with a light curve under ``red_root``: the names its nights' selections give (targets
    by sky position), else the nights' objects."""
    import json

    names: dict[str, str] = {}
    for p in sorted(Path(red_root).glob("*/lc_*.ecsv")):
        try:
            meta = _lc_meta(p)
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable light curve (%s)", p, e)
            continue
        obj, band = _object_band(meta, p)
        if not meta.get("ind_tgt") and "ind_tgt" in meta:
            continue                                # a night without a target: nothing of it to follow
        try:
            d = json.loads(product_path(p.parent, "selection", obj, band).read_text())
        except (OSError, ValueError):
            d = {}
        for n in meta.get("targets") or d.get("targets") or [obj]:
            names.setdefault(norm_name(n), n)
    return sorted(names.values())


def campaign_inputs(red_root, target: str) -> list[str]:
    """The files a target's campaign is made from: its nights' light curves and timing tables."""
    out = []
    for en in find_nights(red_root, target):
        out.append(str(en["lc_path"]))
        t = Path(en["lc_path"]).with_name(Path(en["lc_path"]).name.replace("lc_", "timing_", 1))
        if t.is_file():
            out.append(str(t))
    return sorted(set(out))
