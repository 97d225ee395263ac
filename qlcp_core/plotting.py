"""Figures of a night: the light curve, the finding chart and per-frame source maps.

Everything is drawn on a :class:`matplotlib.figure.Figure` with its own
:class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`; ``matplotlib.pyplot``
is never imported, so no figure is registered in a global manager, nothing
leaks, and figures can be drawn concurrently from a thread pool.  Every file
is written through :func:`qlcp.core.io.atomic_path`.

Light-curve table contract (written by step ``d``, one row per frame):
``file, jd, bjd_tdb, hjd, airmass, fwhm, sky, ok`` and, for target ``k`` and
aperture ``j``, ``mag_t{k}_a{j}``, ``err_t{k}_a{j}``; for check star ``k``,
``mag_c{k}_a{j}``, ``err_c{k}_a{j}``.  Optional meta: ``apertures`` (as
configured: radii in px, negative = multiple of the FWHM), ``aper_radius``
(median radii, px), ``object``, ``band``, ``night``, ``ind_tgt``/``ind_ref``/
``ind_chk`` (star indexes in light-curve order), ``stars``, and ``noise``: a
list of dicts naming the star either as ``star="t0"``/``"c0"`` with
``aper=j`` or as ``role="target"|"check"``, ``k``, ``aperture=j`` (as
:mod:`qlcp.core.differential` writes it), with ``achieved`` and ``predicted``
scatter in magnitudes and ``noisy``.  Every part of the meta may be missing;
so may any column except the magnitudes.

Stars table contract (step ``d``): ``index, x, y`` (0-based pixels of the base
image), ``role`` (``target|comparison|check|rejected``), ``source, weight,
scatter, reason`` (other roles, e.g. ``unused``, are not drawn).  Target
``k`` of the light curve is the star whose ``index`` is ``ind_tgt[k]`` when
that order is known (light-curve meta, ``stars.meta`` or the ``order``
argument of the chart), else the ``k``-th target row.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import numpy as np
from astropy.table import Table
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle

from .errors import InputError
from .io import atomic_path

log = logging.getLogger("qlcp.plotting")

LC_DPI = 150
CHART_DPI = 150

#: display style per star role on the finding chart: colour, line style, label prefix
ROLE_STYLE = {
    "target": ("red", "-", "T"),
    "comparison": ("#009e00", "-", "R"),
    "check": ("blue", "-", "C"),
    "rejected": ("0.3", "--", "X"),
}

#: what the panels' sigma means, printed on every light-curve plot
SIGMA_NOTE = "\u03c3: frame-to-frame scatter (point-to-point, robust), mmag; predicted: CCD equation + scintillation"

_MAG_RE = re.compile(r"^mag_([tcr])(\d+)_a(\d+)$")
#: panel letter -> role of the stars table (``r``: a comparison against the others, written for a
#: light curve without a target)
_PANEL_ROLE = {"t": "target", "c": "check", "r": "comparison"}


# ------------------------------------------------------------------ helpers
def _new_figure(figsize, dpi, layout=None) -> Figure:
    fig = Figure(figsize=figsize, dpi=dpi, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, dest, fmt: str, dpi: int) -> Path:
    meta = {"Software": "qlcp"} if fmt == "png" else {"Creator": "qlcp", "CreationDate": None}
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, metadata=meta)
    return Path(dest)


def _png_bytes(fig: Figure, dpi: int = LC_DPI) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": "qlcp"})
    return buf.getvalue()


def _col(table: Table, name: str, n: int | None = None) -> np.ndarray | None:
    """Column as a float array with masked entries as NaN, or None if absent/unusable."""
    if name not in table.colnames:
        return None
    try:
        a = np.ma.filled(np.ma.asarray(table[name], dtype=float), np.nan)
    except (TypeError, ValueError):
        return None
    if a.ndim != 1 or (n is not None and len(a) != n):
        return None
    return np.asarray(a, dtype=float)


def _meta_str(meta, key) -> str:
    v = meta.get(key) if meta else None
    return "" if v is None else str(v).strip()


def _fmt_num(v) -> str:
    return f"{v:.1f}" if np.isfinite(v) else "?"


def _lc_stars(lc: Table) -> tuple[list[tuple[str, int]], int]:
    """Star panels ``[("t", 0), ..., ("c", 0), ..., ("r", 0), ...]`` and the number of apertures.
    A light curve without a target (``no_target`` in its meta) has check and comparison panels."""
    found: dict[tuple[str, int], set[int]] = {}
    for name in lc.colnames:
        m = _MAG_RE.match(name)
        if m:
            found.setdefault((m.group(1), int(m.group(2))), set()).add(int(m.group(3)))
    if not found:
        raise InputError("light-curve table: no mag_t{k}_a{j}, mag_c{k}_a{j} or mag_r{k}_a{j} column (no star)")
    panels = sorted(found, key=lambda s: ("tcr".index(s[0]), s[1]))
    naper = 1 + max(max(js) for js in found.values())
    return panels, naper


def _noise_entries(lc: Table) -> list[dict]:
    noise = lc.meta.get("noise") if lc.meta else None
    if not isinstance(noise, (list, tuple)):
        return []
    return [d for d in noise if isinstance(d, dict)]


def _noise_value(d: dict, key: str) -> float:
    """``key`` of a noise entry in magnitudes (accepts ``{key}_mmag`` too); NaN if absent."""
    try:
        if d.get(key) is not None:
            return float(d[key])
        if d.get(f"{key}_mmag") is not None:
            return float(d[f"{key}_mmag"]) / 1000.0
    except (TypeError, ValueError):
        pass
    return np.nan


def _noise_key(d: dict) -> tuple[str, int] | None:
    """``("t0", j)`` for a noise entry, from ``star="t0", aper=j`` or ``role="target", k=0, aperture=j``."""
    try:
        aper = d.get("aper", d.get("aperture"))
        j = int(aper)
        star = d.get("star")
        if isinstance(star, str) and re.fullmatch(r"[tcr]\d+", star):
            return star, j
        role = str(d.get("role", ""))
        if role in ("target", "check", "comparison") and d.get("k") is not None:
            return f"{'r' if role == 'comparison' else role[0]}{int(d['k'])}", j
    except (TypeError, ValueError):
        pass
    return None


def _noise_for(lc: Table, star: str, aper: int) -> dict | None:
    for d in _noise_entries(lc):
        if _noise_key(d) == (star, aper):
            return d
    return None


def choose_aperture(lc: Table) -> int:
    """Aperture index with the smallest achieved scatter of target 0.

    Uses ``lc.meta["noise"]`` (entries for target 0: ``star="t0", aper=j`` or
    ``role="target", k=0, aperture=j``; without a target, those of the first panel's star);
    falls back to aperture 0 when that information is missing.
    """
    panels, naper = _lc_stars(lc)
    first = f"{panels[0][0]}{panels[0][1]}"
    best, best_val = 0, np.inf
    for d in _noise_entries(lc):
        key = _noise_key(d)
        if key is None or key[0] != first:
            continue
        j = key[1]
        val = _noise_value(d, "achieved")
        if 0 <= j < naper and f"mag_{first}_a{j}" in lc.colnames and np.isfinite(val) and val < best_val:
            best, best_val = j, val
    return best


def robust_limits(mag, err=None) -> tuple[float, float] | None:
    """Magnitude range ``(bright, faint)`` to display, insensitive to isolated wild points.

    ``mag`` must be in time order.  A point is left outside the range only when
    it is an isolated spike: it departs from the running median of its 5
    neighbours by more than 6 times the point-to-point scatter (or 4 times the
    median error) *and* by more than half the full range of the other points.
    A real eclipse, even sparsely sampled, is a run of consistent points and
    is kept whole; a single bad frame (or two in a row) is not allowed to
    squash the curve.  (A run of three or more consecutive bad points counts as
    signal.)
    """
    m = np.asarray(mag, dtype=float)
    m = m[np.isfinite(m)]
    if m.size == 0:
        return None
    e = np.asarray(err, dtype=float) if err is not None else np.array([])
    e = e[np.isfinite(e) & (e > 0)]
    med_err = float(np.median(e)) if e.size else 0.0
    keep = m
    if m.size >= 5:
        med = np.median(np.lib.stride_tricks.sliding_window_view(m, 5), axis=1)
        ref = np.r_[med[:1], med[:1], med, med[-1:], med[-1:]]
        dev = np.abs(m - ref)
        sig = _p2p_scatter(m)
        noise = max(6 * sig if np.isfinite(sig) else 0.0, 4 * med_err, 1e-4)
        cand = dev > noise
        rest = m[~cand]
        rng = float(np.ptp(rest)) if rest.size else 0.0
        keep = m[~(cand & (dev > max(0.5 * rng, noise)))]
    lo, hi = float(keep.min()), float(keep.max())
    span = max(hi - lo, 0.01)
    pad = 0.08 * span + 1.5 * med_err
    return lo - pad - 0.12 * span, hi + pad   # extra room at the bright (top) side for labels


def _p2p_scatter(m: np.ndarray) -> float:
    """Robust point-to-point scatter (insensitive to slow variability such as eclipses)."""
    m = m[np.isfinite(m)]
    if m.size < 4:
        return np.nan
    d = np.diff(m)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def _time_axis(lc: Table, n: int) -> tuple[np.ndarray, str]:
    for name, label in (("bjd_tdb", "BJD_TDB"), ("hjd", "HJD"), ("jd", "JD (UTC)")):
        t = _col(lc, name, n)
        if t is not None and np.isfinite(t).any():
            off = int(np.floor(np.nanmin(t)))
            return t - off, f"{label} - {off}"
    return np.arange(n, dtype=float), "frame number"


_ORDER_KEYS = {"target": "ind_tgt", "comparison": "ind_ref", "check": "ind_chk"}


def _stars_by_role(stars: Table | None, meta: dict | None = None) -> dict[str, list[dict]]:
    """Stars per role, each ``{"x", "y", "index"}``, in the order of the light curve.

    Target ``k`` is the star whose ``index`` is ``meta["ind_tgt"][k]`` (likewise
    ``ind_chk``, ``ind_ref``) when ``meta`` (or ``stars.meta``) gives that order,
    otherwise the ``k``-th row with that role in table order.
    """
    out: dict[str, list[dict]] = {r: [] for r in ROLE_STYLE}
    if stars is None or len(stars) == 0 or "role" not in stars.colnames:
        return out
    n = len(stars)
    xs, ys = _col(stars, "x", n), _col(stars, "y", n)
    idx = _col(stars, "index", n)
    rows: dict[str, list[int]] = {r: [] for r in ROLE_STYLE}
    for i, role in enumerate(stars["role"]):
        role = (role.decode() if isinstance(role, bytes) else str(role)).strip().lower()
        if role in rows:
            rows[role].append(i)
        else:
            log.debug("star %d: role %r, not drawn", i, role)
    meta = meta if meta is not None else (stars.meta or {})
    for role, key in _ORDER_KEYS.items():
        order = meta.get(key) if meta else None
        if idx is None or not isinstance(order, (list, tuple, np.ndarray)):
            continue
        by_index = {idx[i]: i for i in rows[role]}
        try:
            first = [by_index[float(v)] for v in order if float(v) in by_index]
        except (TypeError, ValueError):
            continue
        rows[role] = first + [i for i in rows[role] if i not in first]
    for role, lst in rows.items():
        out[role] = [{"x": xs[i] if xs is not None else np.nan, "y": ys[i] if ys is not None else np.nan,
                      "index": int(idx[i]) if idx is not None and np.isfinite(idx[i]) else i} for i in lst]
    return out


def _aperture_label(meta: dict, j: int) -> str:
    """``"aperture 1: r = 6.0 px"``, or ``"aperture 1: r = 1.5 FWHM = 4.6 px"`` for FWHM-relative ones."""
    def item(key):
        try:
            v = float(meta.get(key)[j])
            return v if np.isfinite(v) else np.nan
        except (TypeError, ValueError, IndexError, KeyError):
            return np.nan
    conf, med = item("apertures"), item("aper_radius")
    if conf < 0:
        return f"aperture {j}: r = {-conf:g} FWHM" + (f" = {med:.1f} px" if np.isfinite(med) else "")
    r = conf if np.isfinite(conf) else med
    return f"aperture {j}" + (f": r = {r:.1f} px" if np.isfinite(r) else "")


# ------------------------------------------------------------- light curve
def make_lightcurve_figure(lc: Table, stars: Table | None = None, title: str = "",
                           aper_index: int | None = None) -> Figure:
    """Light-curve figure: one panel per target, then one per check star, then conditions.

    Parameters
    ----------
    lc : Table
        Light-curve table (see the module docstring for the contract).
    stars : Table or None
        Stars table of step ``d``; used only to label panels with positions.
    title : str
        First header line; default ``"{object}  {band}  {night}"`` from the meta.
    aper_index : int or None
        Aperture to plot; default :func:`choose_aperture`.

    Returns
    -------
    Figure
        Star panels carry the label ``"star:t0"``, ``"star:c0"``...; the optional
        airmass/FWHM panel ``"conditions"`` (its twin ``"conditions:fwhm"``).
        In each star panel the error-bar data line has gid ``"data:<star>"``,
        rejected frames (``ok`` False) gid ``"rejected:<star>"``, good points
        beyond the y limits gid ``"clipped:<star>"``.  Y axes are inverted
        (magnitudes increase downward).
    """
    panels, naper = _lc_stars(lc)
    j = _lc_aperture(lc, aper_index, naper)
    n = len(lc)
    x, xlabel = _time_axis(lc, n)
    ok = _col(lc, "ok", n)
    ok = np.ones(n, bool) if ok is None else (np.nan_to_num(ok, nan=0.0) != 0)
    airmass, fwhm = _col(lc, "airmass", n), _col(lc, "fwhm", n)
    has_cond = any(a is not None and np.isfinite(a).any() for a in (airmass, fwhm))
    meta = lc.meta or {}
    by_role = _lc_roles(stars, meta)

    heights = [3.0] * len(panels) + ([1.3] if has_cond else [])
    fig = _new_figure((10.0, 1.1 + 2.3 * len(panels) + (1.1 if has_cond else 0.0)), LC_DPI,
                      layout="constrained")
    axes = fig.subplots(len(heights), 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": heights})[:, 0]

    header_scatter = ""
    for ax, (kind, k) in zip(axes, panels):
        sc = _star_panel(ax, lc, kind, k, j, x, ok, by_role)
        if not header_scatter:
            header_scatter = f"{kind.upper()}{k} {sc}"
    _lc_legend(fig, axes[: len(panels)])
    if has_cond:
        _conditions_panel(axes[-1], x, ok, airmass, fwhm)
    _time_limits(axes[-1], x, xlabel)
    fig.suptitle(_lc_header(meta, title, j, header_scatter, ok, len(by_role["comparison"])) + "\n" + SIGMA_NOTE,
                 fontsize=10.5)
    return fig


def _lc_aperture(lc: Table, aper_index: int | None, naper: int) -> int:
    """The aperture to plot: ``aper_index`` checked against the table's ``naper``, default :func:`choose_aperture`."""
    if aper_index is None:
        return choose_aperture(lc)
    j = int(aper_index)
    if not 0 <= j < naper:
        raise InputError(f"aper_index {aper_index}: light-curve table has apertures 0..{naper - 1}")
    return j


def _lc_roles(stars: Table | None, meta: dict) -> dict[str, list[dict]]:
    """:func:`_stars_by_role` of the stars table, else of differential's copy in the meta."""
    if stars is None and isinstance(meta.get("stars"), (list, tuple)):   # differential's copy in the meta
        try:
            stars = Table(rows=[dict(d) for d in meta["stars"]])
        except (TypeError, ValueError, KeyError):
            stars = None
    return _stars_by_role(stars, meta if any(k in meta for k in _ORDER_KEYS.values()) else None)


def _star_panel(ax, lc: Table, kind: str, k: int, j: int, x: np.ndarray, ok: np.ndarray,
                by_role: dict[str, list[dict]]) -> str:
    """Draw target (``kind`` 't') or check ('c') ``k`` in aperture ``j`` on ``ax``.

    Parameters
    ----------
    ax : Axes
        The panel; labelled ``"star:{kind}{k}"``.
    lc : Table
        Light-curve table.
    kind, k, j : str, int, int
        Star and aperture.
    x, ok : ndarray (n,)
        Time axis and usable frames.
    by_role : dict
        :func:`_stars_by_role`, for the star's index and position.

    Returns
    -------
    str
        The scatter label shown at the panel's top right.
    """
    n = len(lc)
    star = f"{kind}{k}"
    name = f"{kind.upper()}{k}"
    ax.set_label(f"star:{star}")
    mag = _col(lc, f"mag_{star}_a{j}", n)
    err = _col(lc, f"err_{star}_a{j}", n)
    if mag is None:
        mag = np.full(n, np.nan)
    if err is None:
        err = np.full(n, np.nan)
    good = ok & np.isfinite(mag) & np.isfinite(x)
    colour = {"t": "black", "c": "tab:blue", "r": "#009e00"}[kind]
    _star_points(ax, star, x, mag, err, ok, colour)
    if kind != "t" and good.any():
        ax.axhline(np.nanmedian(mag[good]), color=colour, lw=0.6, ls=":", zorder=1)

    # left: star name (a target's configured name) and position; right: scatter achieved vs predicted
    info = ""
    role_list = by_role[_PANEL_ROLE[kind]]
    names = (lc.meta or {}).get("targets") or []
    if kind == "t" and k < len(names) and names[k]:
        info = f" {names[k]}"
    if kind == "r":
        info = " vs the other comparisons"
    if k < len(role_list) and np.isfinite(role_list[k]["x"]):
        info += f"  ({role_list[k]['x']:.0f}, {role_list[k]['y']:.0f})"
    box = {"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none", "alpha": 0.75}
    ax.text(0.01, 0.95, name + info, transform=ax.transAxes, ha="left", va="top",
            fontsize=9, fontweight="bold", color=colour, bbox=box, zorder=5)
    sc, noisy = _scatter_label(lc, star, j, mag[good], err[good])
    ax.text(0.99, 0.95, sc, transform=ax.transAxes, ha="right", va="top", fontsize=8.5,
            color="crimson" if noisy else "0.2", bbox=box, zorder=5)
    ax.set_ylabel(f"{name}  \u0394mag")
    ax.grid(alpha=0.25, lw=0.5)
    ax.tick_params(direction="in", top=True, right=True, labelsize=8.5)
    return sc


def _star_points(ax, star: str, x: np.ndarray, mag: np.ndarray, err: np.ndarray, ok: np.ndarray,
                 colour: str) -> None:
    """Good frames with error bars, rejected frames as grey crosses, inverted robust y limits.

    Good points beyond the limits are drawn as open diamonds on the axis edge
    (gid ``"clipped:<star>"``).  Without any good point the limits come from
    the rejected points (else 0..1) and the panel says "no valid data".
    """
    good = ok & np.isfinite(mag) & np.isfinite(x)
    bad = ~ok & np.isfinite(mag) & np.isfinite(x)
    cont = ax.errorbar(x[good], mag[good], yerr=np.where(np.isfinite(err[good]), err[good], 0.0),
                       fmt="o", ms=2.6, mew=0, color=colour, ecolor=colour, elinewidth=0.5,
                       alpha=0.9, capsize=0, zorder=3, label="frames")
    cont.lines[0].set_gid(f"data:{star}")
    if bad.any():
        ax.plot(x[bad], mag[bad], "x", ms=3.5, mew=0.8, color="0.6", zorder=2,
                gid=f"rejected:{star}", label="rejected (ok=False)")
    order = np.argsort(x[good], kind="stable")
    lim = robust_limits(mag[good][order], err[good][order])
    if lim is None:  # nothing good: scale on the rejected points, or a dummy range
        lim = robust_limits(mag[bad][np.argsort(x[bad], kind="stable")]) or (0.0, 1.0)
        ax.text(0.5, 0.5, "no valid data", transform=ax.transAxes, ha="center", va="center",
                color="0.4")
    bright, faint = lim
    ax.set_ylim(faint, bright)  # inverted: fainter (larger mag) downward
    out_b = good & (mag < bright)
    out_f = good & (mag > faint)
    if out_b.any() or out_f.any():
        ax.plot(np.r_[x[out_b], x[out_f]], np.r_[np.full(out_b.sum(), bright), np.full(out_f.sum(), faint)],
                ls="none", marker="d", ms=4, mfc="none", mec="darkorange", clip_on=False,
                gid=f"clipped:{star}", label="beyond axis limits")


def _scatter_label(lc: Table, star: str, j: int, mag_good: np.ndarray, err_good: np.ndarray) -> tuple[str, bool]:
    """Scatter achieved vs predicted (from the noise budget), else point-to-point vs median error, mmag.

    Returns
    -------
    label : str
    noisy : bool
        The budget's ``noisy`` flag (False without a budget).
    """
    d = _noise_for(lc, star, j)
    if d is not None:
        ach, pred = 1000 * _noise_value(d, "achieved"), 1000 * _noise_value(d, "predicted")
        noisy = bool(d.get("noisy", False))
        return f"\u03c3 {_fmt_num(ach)} mmag (predicted {_fmt_num(pred)})" + ("  NOISY" if noisy else ""), noisy
    ach = 1000 * _p2p_scatter(mag_good)
    e_ok = err_good[np.isfinite(err_good)]
    pred = 1000 * float(np.median(e_ok)) if e_ok.size else np.nan
    return f"\u03c3 p2p {_fmt_num(ach)} mmag (median err {_fmt_num(pred)})", False


def _lc_legend(fig: Figure, star_axes) -> None:
    """A figure legend of the star panels' markers, only when there are rejected or clipped points."""
    handles, labels = [], []
    for ax in star_axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if set(labels) - {"frames"}:   # explain the grey crosses / edge markers when there are any
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8,
                   frameon=False)


def _conditions_panel(axc, x: np.ndarray, ok: np.ndarray, airmass: np.ndarray | None,
                      fwhm: np.ndarray | None) -> None:
    """Airmass (line) and, on a twin axis labelled ``"conditions:fwhm"``, FWHM (rejected frames as crosses)."""
    axc.set_label("conditions")
    if airmass is not None and np.isfinite(airmass).any():
        sel = np.isfinite(airmass) & np.isfinite(x)
        axc.plot(x[sel], airmass[sel], "-", color="0.25", lw=1.0)
        axc.set_ylabel("airmass", fontsize=8.5)
    axc.grid(alpha=0.25, lw=0.5)
    axc.tick_params(direction="in", labelsize=8)
    if fwhm is not None and np.isfinite(fwhm).any():
        axf = axc.twinx()
        axf.set_label("conditions:fwhm")
        sel = np.isfinite(fwhm) & np.isfinite(x)
        axf.plot(x[sel & ok], fwhm[sel & ok], ".", ms=2.5, color="tab:orange")
        axf.plot(x[sel & ~ok], fwhm[sel & ~ok], "x", ms=3, color="0.6")
        axf.set_ylabel("FWHM (px)", color="tab:orange", fontsize=8.5)
        axf.tick_params(direction="in", labelsize=8, colors="tab:orange")


def _time_limits(ax, x: np.ndarray, xlabel: str) -> None:
    """Label the (shared) time axis and pad its limits by 2 % of the span."""
    ax.set_xlabel(xlabel)
    if np.isfinite(x).any():
        x0, x1 = np.nanmin(x), np.nanmax(x)
        pad = 0.02 * (x1 - x0) if x1 > x0 else 0.01
        ax.set_xlim(x0 - pad, x1 + pad)


def _lc_header(meta: dict, title: str, j: int, header_scatter: str, ok: np.ndarray, ncomp: int) -> str:
    """Two-line figure title: object/band/night (or ``title``), then aperture, scatter, frames, comparisons.

    A light curve without a target (``no_target`` in the meta) says so on a third line.

    Parameters
    ----------
    meta : dict
        Light-curve meta (``object, band, night, apertures, aper_radius``, ``no_target``).
    title : str
        First line instead of the meta's; "light curve" when both are empty.
    j : int
        Aperture plotted.
    header_scatter : str
        Scatter label of the first panel ("" for none).
    ok : ndarray of bool
        Usable frames.
    ncomp : int
        Comparison stars (not shown when 0).

    Returns
    -------
    str
    """
    n = len(ok)
    bad_n = int((~ok).sum())
    line1 = title or "  ".join(s for s in (_meta_str(meta, "object"), _meta_str(meta, "band"),
                                           _meta_str(meta, "night")) if s) or "light curve"
    ap = _aperture_label(meta, j)
    frames = f"{int(ok.sum())}/{n} frames" + (f", {bad_n} rejected" if bad_n else "")
    parts = [ap, header_scatter, frames] + ([f"{ncomp} comparison stars"] if ncomp else [])
    out = f"{line1}\n" + "   |   ".join(p for p in parts if p)
    if meta.get("no_target"):
        why = _meta_str(meta, "no_target").split(";")[0]
        out += f"\nno target: {why[:97] + '...' if len(why) > 100 else why}"
    return out


def render_lightcurve_png(lc: Table, stars: Table | None = None, title: str = "",
                          aper_index: int | None = None) -> bytes:
    """The light-curve PNG (150 dpi) as bytes, e.g. for a data URI in a report."""
    return _png_bytes(make_lightcurve_figure(lc, stars, title, aper_index), LC_DPI)


def plot_lightcurve(lc: Table, stars: Table | None, out_png: Path, out_pdf: Path | None = None,
                    title: str = "", aper_index: int | None = None) -> list[Path]:
    """Write the light curve as PNG (and PDF), atomically; return the paths written.

    See :func:`make_lightcurve_figure` for the content; the usual names are
    ``{red}/lc_{obj}_{band}.png`` and ``.pdf``.
    """
    fig = make_lightcurve_figure(lc, stars, title, aper_index)
    png = _png_bytes(fig, LC_DPI)
    with atomic_path(out_png) as tmp:
        tmp.write_bytes(png)
    written = [Path(out_png)]
    if out_pdf is not None:
        fig.set_layout_engine("none")       # keep the layout the PNG's drawing computed
        written.append(_save(fig, out_pdf, "pdf", LC_DPI))
    log.debug("light curve: %s", ", ".join(str(p) for p in written))
    return written


# ------------------------------------------------------------------ images
def _image_axes(image: np.ndarray, width_in: float = 8.0, dpi: int = CHART_DPI, cmap: str = "gray_r",
                extra_width_in: float = 0.0):
    """Figure and axes showing ``image`` with a zscale + sqrt stretch, origin lower."""
    from astropy.visualization import ImageNormalize, SqrtStretch, ZScaleInterval

    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2 or img.size == 0:
        raise InputError(f"image has shape {img.shape}, expected a non-empty 2-D array")
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        vmin, vmax = 0.0, 1.0
    else:
        try:
            vmin, vmax = ZScaleInterval().get_limits(finite)
        except (ValueError, IndexError, FloatingPointError):   # degenerate image
            vmin, vmax = float(finite.min()), float(finite.max())
    if not vmax > vmin:
        vmax = vmin + 1.0
    norm = ImageNormalize(vmin=vmin, vmax=vmax, stretch=SqrtStretch(), clip=True)
    ny, nx = img.shape
    fig = _new_figure((width_in + extra_width_in, width_in * ny / nx + 0.7), dpi, layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(img, origin="lower", cmap=cmap, norm=norm, interpolation="antialiased")
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    ax.tick_params(labelsize=8)
    return fig, ax


def _sky_compass(ax, wcs, shape) -> None:
    """North and East arrows (gids ``compass:N``, ``compass:E``) and a scale bar (gid ``scalebar``)
    in the lower left of a chart whose image has the celestial WCS ``wcs`` (0-based pixels)."""
    ny, nx = shape
    scale = float(np.sqrt(abs(np.linalg.det(wcs.celestial.pixel_scale_matrix)))) * 3600.0   # arcsec/px
    x0, y0 = 0.1 * nx, 0.1 * ny
    ra0, dec0 = wcs.all_pix2world(x0, y0, 0)
    step = 0.07 * min(nx, ny) * scale / 3600.0           # degrees: arrows ~7 % of the frame
    tips = {"N": wcs.all_world2pix(ra0, dec0 + step, 0),
            "E": wcs.all_world2pix(ra0 + step / max(np.cos(np.radians(dec0)), 1e-6), dec0, 0)}
    halo = [patheffects.withStroke(linewidth=3, foreground="white")]
    for name, (tx, ty) in tips.items():
        dx, dy = float(tx) - x0, float(ty) - y0
        ann = ax.annotate("", xy=(x0 + dx, y0 + dy), xytext=(x0, y0),
                          arrowprops={"arrowstyle": "-|>", "color": "darkorange", "lw": 1.6})
        ann.set_gid(f"compass:{name}")
        ax.text(x0 + 1.3 * dx, y0 + 1.3 * dy, name, color="darkorange", fontsize=9, fontweight="bold",
                ha="center", va="center", path_effects=halo, gid=f"compass-label:{name}")
    nice = [1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1800, 3600]      # arcsec
    want = 0.2 * nx * scale
    length = max([v for v in nice if v <= want] or [nice[0]])
    bx, by = 0.95 * nx - length / scale, 0.05 * ny
    ax.plot([bx, bx + length / scale], [by, by], color="darkorange", lw=2.5, solid_capstyle="butt",
            gid="scalebar", path_effects=[patheffects.withStroke(linewidth=4.5, foreground="white")])
    label = f"{length / 60:g}'" if length >= 60 else f'{length:g}"'
    ax.text(bx + 0.5 * length / scale, by + 0.015 * ny, label, color="darkorange", fontsize=9, ha="center",
            va="bottom", fontweight="bold", path_effects=halo, gid="scalebar-label")


def make_chart_figure(image: np.ndarray, stars: Table, title: str = "", order: dict | None = None,
                      wcs=None, target_names: list | None = None) -> Figure:
    """Finding chart: the base image with targets, comparison, check and rejected stars.

    Each star is a :class:`~matplotlib.patches.Circle` centred on its (x, y)
    with gid ``"{role}:{label}"`` (e.g. ``"target:T0"``, ``"rejected:X2"``)
    and a text label of the same name.  ``Tk`` is target ``k`` of the light
    curve when ``order`` (or ``stars.meta``) has ``ind_tgt``/``ind_ref``/
    ``ind_chk`` (star ``index`` values in light-curve order), else the
    ``k``-th target row of ``stars``.  ``target_names`` (the configured names
    of T0, T1, ...) label the targets (``T0 XO-1``); with a celestial ``wcs``
    the chart has North/East arrows and a scale bar (:func:`_sky_compass`).
    """
    fig, ax = _image_axes(image, extra_width_in=1.6)   # room for the legend on the right
    ny, nx = np.shape(image)
    radius = max(6.0, 0.012 * max(nx, ny))
    handles = []
    by_role = _stars_by_role(stars, order)
    for role in ("rejected", "check", "comparison", "target"):  # targets drawn on top
        colour, ls, prefix = ROLE_STYLE[role]
        entries = by_role[role]
        for i, s in enumerate(entries):
            if not (np.isfinite(s["x"]) and np.isfinite(s["y"])):
                log.warning("chart: %s %s%d has no finite position, not drawn", role, prefix, i)
                continue
            label = f"{prefix}{i}"
            shown = label + (f" {target_names[i]}" if role == "target" and target_names
                             and i < len(target_names) and target_names[i] else "")
            lw = 1.0 if role == "rejected" else 1.4
            halo = [patheffects.withStroke(linewidth=lw + 1.6, foreground="white"), patheffects.Normal()]
            ax.add_patch(Circle((s["x"], s["y"]), radius, fill=False, edgecolor=colour, linestyle=ls,
                                linewidth=lw, gid=f"{role}:{label}", path_effects=halo))
            right = s["x"] + 4 * radius > nx      # near the right/top edge: label on the inside
            top = s["y"] + 2.5 * radius > ny
            ax.text(s["x"] + (-0.75 if right else 0.75) * radius, s["y"] + (-0.75 if top else 0.75) * radius,
                    shown, color=colour, fontsize=7 if role == "rejected" else 8.5,
                    fontweight="normal" if role == "rejected" else "bold",
                    ha="right" if right else "left", va="top" if top else "bottom", clip_on=True,
                    gid=f"label:{label}",
                    path_effects=[patheffects.withStroke(linewidth=1.4 if role == "rejected" else 2.2,
                                                         foreground="white")])
        if entries:
            handles.append(Line2D([], [], ls="none", marker="o", mfc="none", mec=colour, ms=8,
                                  label=f"{role} ({len(entries)})"))
    if handles:
        fig.legend(handles=handles[::-1], loc="outside right upper", fontsize=8, frameon=False)
    if wcs is not None:
        _sky_compass(ax, wcs, (ny, nx))
    ax.set_title(title or "finding chart", fontsize=10)
    return fig


def plot_chart(image: np.ndarray, stars: Table, out_png: Path, title: str = "",
               order: dict | None = None, wcs=None, target_names: list | None = None) -> Path:
    """Write the finding chart ``chart_{obj}_{band}.png`` (atomic); see :func:`make_chart_figure`."""
    path = _save(make_chart_figure(image, stars, title, order, wcs, target_names), out_png, "png", CHART_DPI)
    log.debug("finding chart: %s", path)
    return path


def make_numbered_chart_figure(image: np.ndarray, x, y, title: str = "") -> Figure:
    """Chart for placing a target by hand: the base image with stars ``x``, ``y`` (0-based, brightest
    first) circled and numbered 0, 1, ... (gids ``"star:{n}"``, labels ``"label:{n}"``): the numbers of
    the table step w writes beside it (``chart_numbered_{obj}_{band}.txt``)."""
    fig, ax = _image_axes(image)
    ny, nx = np.shape(image)
    radius = max(5.0, 0.01 * max(nx, ny))
    halo = [patheffects.withStroke(linewidth=2.2, foreground="white")]
    for n, (xi, yi) in enumerate(zip(np.asarray(x, float), np.asarray(y, float))):
        if not (np.isfinite(xi) and np.isfinite(yi)):
            continue
        ax.add_patch(Circle((xi, yi), radius, fill=False, edgecolor="magenta", linewidth=1.2, gid=f"star:{n}",
                            path_effects=[patheffects.withStroke(linewidth=2.6, foreground="white"),
                                          patheffects.Normal()]))
        right, top = xi + 4 * radius > nx, yi + 2.5 * radius > ny
        ax.text(xi + (-0.8 if right else 0.8) * radius, yi + (-0.8 if top else 0.8) * radius, str(n),
                color="magenta", fontsize=8.5, fontweight="bold", ha="right" if right else "left",
                va="top" if top else "bottom", clip_on=True, gid=f"label:{n}", path_effects=halo)
    ax.set_title(title or "numbered stars", fontsize=10)
    return fig


def plot_numbered_chart(image: np.ndarray, x, y, out_png: Path, title: str = "") -> Path:
    """Write the numbered chart (atomic); see :func:`make_numbered_chart_figure`."""
    path = _save(make_numbered_chart_figure(image, x, y, title), out_png, "png", CHART_DPI)
    log.info("numbered finding chart: %s", path)
    return path


def make_frame_sources_figure(image: np.ndarray, cat: Table, err_max: float, title: str = "") -> Figure:
    """Frame with the sources whose first-aperture ``Err`` < ``err_max`` circled (gid ``"sources"``)."""
    fig, ax = _image_axes(image, width_in=7.0, dpi=100, cmap="gray")
    n_good = 0
    if cat is not None and len(cat) and {"X", "Y", "Err"} <= set(cat.colnames):
        e = np.ma.filled(np.ma.asarray(cat["Err"], dtype=float), np.nan)
        e = e[:, 0] if e.ndim == 2 else e
        with np.errstate(invalid="ignore"):
            sel = np.isfinite(e) & (e < err_max)
        n_good = int(sel.sum())
        ax.plot(np.asarray(cat["X"], float)[sel], np.asarray(cat["Y"], float)[sel], ls="none",
                marker="o", ms=9, mfc="none", mec="lime", mew=0.7, gid="sources")
    ax.set_title(f"{title + ': ' if title else ''}{n_good} sources with err < {err_max:g} mag", fontsize=9)
    return fig


def plot_frame_sources(image: np.ndarray, cat: Table, out_png: Path, err_max: float, title: str = "") -> Path:
    """PNG of one frame with its good sources circled (atomic), for the ``draw_phot`` option."""
    return _save(make_frame_sources_figure(image, cat, err_max, title), out_png, "png", 100)


__all__ = [
    "choose_aperture",
    "make_chart_figure",
    "make_frame_sources_figure",
    "make_lightcurve_figure",
    "make_numbered_chart_figure",
    "plot_chart",
    "plot_frame_sources",
    "plot_lightcurve",
    "plot_numbered_chart",
    "render_lightcurve_png",
    "robust_limits",
]
