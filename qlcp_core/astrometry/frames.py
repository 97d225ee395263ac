"""Step w's frames: the base frame's WCS (its header's, else solved with position hints) and the other frames'.

:func:`base_wcs` tries the header WCS, then solves with each position hint (:class:`Hints`) in
turn within a time budget, else blind; :func:`frame_wcs` gives another frame the base's WCS
composed with its transform of step o (a polynomial fit when the field turns or scales).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, Sip

from ..errors import one_line
from .solve_field import (POSITION_BUDGET, SolveMemory, field_size, index_files, index_scale, indexes_for_field,
                          solve, solve_field_path)
from .wcs import (AGREE_ARCSEC, AGREE_PIXELS, WcsRejected, WcsResult, angular_sep, check_position, header_wcs,
                  pixel_scale, scale_hint_of)

#: flags of step p's catalogue that disqualify a source from the solve (border, saturated, blended, bad flux, cosmic)
_BAD_FLAGS = 1 | 2 | 4 | 8 | 16
#: at most this many detected stars (the brightest) go to the solver
MAX_STARS = 300
#: the stated cap of a blind solve (no position hint), s (config ``solve_blind_timeout`` may lower it)
BLIND_CAP = 10.0
#: what a blind solve leaves of its cap for the rest of step w (a crowded 1024² night: step w 10.05 s at a 10 s solve)
BLIND_MARGIN = 0.5
#: at most this many distinct position hints are tried, best first
MAX_POSITIONS = 3


# ------------------------------------------------------------- the base frame
def usable_stars(cat: np.ndarray, n_max: int = MAX_STARS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y (0-based), flux of the brightest clean sources of a step-p catalogue (structured array)."""
    flux = np.asarray(cat["FluxAUTO"], dtype=float)
    ok = np.isfinite(flux) & (flux > 0) & ((np.asarray(cat["Flags"]) & _BAD_FLAGS) == 0)
    ok &= np.isfinite(cat["X"]) & np.isfinite(cat["Y"])
    idx = np.flatnonzero(ok)[np.argsort(-flux[ok], kind="stable")][:n_max]
    return np.asarray(cat["X"], float)[idx], np.asarray(cat["Y"], float)[idx], flux[idx]


def compare_wcs(a: WCS, b: WCS, x, y) -> float:
    """Median distance, arcsec, between the sky positions ``a`` and ``b`` give the pixels ``x``, ``y``."""
    ra1, de1 = a.all_pix2world(x, y, 0)
    ra2, de2 = b.all_pix2world(x, y, 0)
    return float(np.median(angular_sep(ra1, de1, ra2, de2)))


@dataclass
class Hints:
    """What a night knows about where its frame points, best first.

    Attributes
    ----------
    positions : list of (label, ra, dec)
        Position hints for the solver, degrees: the object's configured target(s), the header's RA/DEC,
        then the other configured targets.
    known : list of (label, ra, dec, slack_arcmin)
        Positions a header WCS must agree with (:func:`check_position`): the object's own target(s) and
        the header's RA/DEC.
    """

    positions: list = field(default_factory=list)
    known: list = field(default_factory=list)


def _distinct(positions: list, sep_deg: float) -> list:
    """``positions`` without those within ``sep_deg`` of an earlier one, at most :data:`MAX_POSITIONS`."""
    out = []
    for p in positions:
        if all(angular_sep(p[1], p[2], q[1], q[2]) / 3600.0 > sep_deg for q in out):
            out.append(p)
    return out[:MAX_POSITIONS]


def base_wcs(header: fits.Header, stars: tuple, shape: tuple[int, int], work_root, index_dirs,
             scale_hint: float | None = None, center: tuple[float, float] | None = None,
             timeout: float = POSITION_BUDGET, hints: Hints | None = None, blind_timeout: float = BLIND_CAP,
             memory: SolveMemory | None = None, field_name: str = "", refresh: bool = False) -> WcsResult:
    """The WCS of the base frame: its header's when that is usable (and agrees with a solution
    of its detected stars when index files fit the field), else solved with every hint the night has,
    else none (with the reason in one line).

    Parameters
    ----------
    header : Header
        The base frame's header.
    stars : (x, y, flux)
        Its detected stars (:func:`usable_stars`).
    shape : (ny, nx)
    work_root, index_dirs
        As in :func:`solve`.
    scale_hint : float, optional
        Configured pixel scale, arcsec/px (else read from the header: :func:`scale_hint_of`).
    center : (ra, dec), optional
        The header's pointing, degrees (used when ``hints`` is not given).
    timeout : float
        Wall-time budget of the solves with a position hint, s (all hints together).
    hints : Hints, optional
        Position hints, best first, and the positions a header WCS must agree with.
    blind_timeout : float
        Budget of a solve without a position hint, s (capped at :data:`BLIND_CAP`).
    memory : SolveMemory, optional
        Failed solves of earlier nights: the same field and configuration is not solved again.
    field_name : str
        The field (object) name, part of the memory's key.
    refresh : bool
        Solve even when the memory says it failed before.
    """
    if hints is None:
        hints = Hints([("the header's RA/DEC", *center)], [("the header's RA/DEC", *center, 10.0)]) \
            if center is not None else Hints()
    known_scale = scale_hint_of(header, scale_hint, from_wcs=False)
    try:
        hw, why_not = header_wcs(header, known_scale), ""
        check_position(hw, shape, hints.known)
    except WcsRejected as e:
        hw, why_not = None, f"header WCS not used: {e}"
    scale = known_scale or (pixel_scale(hw) if hw is not None else None)
    positions = list(hints.positions)
    if hw is not None:
        ra, dec = hw.all_pix2world((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0, 0)
        positions.insert(0, ("the header WCS's centre", float(ra), float(dec)))
    size = field_size(shape, scale)
    diag_deg = float(np.hypot(*size)) / 60.0 if size else None
    positions = _distinct(positions, 0.5 * diag_deg if diag_deg else 0.1)
    sw, why, info = _solve_with_hints(stars, shape, work_root, index_dirs, scale, positions, diag_deg, timeout,
                                      min(blind_timeout, BLIND_CAP), memory, field_name, refresh)
    info["scale"] = round(pixel_scale(hw or sw), 5) if (hw or sw) else scale
    if info["scale"] is not None:       # where PIXSCALE comes from (a configured hint is not a measurement)
        info["scale_source"] = "header" if hw is not None else "solved" if sw is not None else \
            "config" if scale_hint else "header"
    if hw is not None and sw is not None:
        d = compare_wcs(hw, sw, stars[0], stars[1])
        info["agree_arcsec"] = round(d, 4)
        if d <= max(AGREE_ARCSEC, AGREE_PIXELS * pixel_scale(sw)):
            return WcsResult(hw, "header", f"header WCS agrees with the solution of the detected stars "
                                           f"(median {d:.2f} arcsec)", info)
        return WcsResult(sw, "solved", f"header WCS rejected: {d:.1f} arcsec from the solution of the "
                                       f"detected stars; {why}", info)
    if hw is not None:
        return WcsResult(hw, "header", f"header WCS checked (celestial, TAN-like, {info['scale']:.3f} arcsec/px); "
                                       f"not compared with the stars: {why}", info)
    if sw is not None:
        return WcsResult(sw, "solved", f"{why_not}; {why}", info)
    return WcsResult(None, "none", f"{why_not}; {why}: pixel coordinates only", info)


def _solve_with_hints(stars, shape, work_root, index_dirs, scale, positions, diag_deg, budget, blind_budget,
                      memory, field_name, refresh) -> tuple:
    """Solve with each position hint in turn within ``budget`` s, or blind within ``blind_budget`` s;
    only with the index files that fit the field; not at all when the memory says this failed before."""
    info = {"n_stars": int(len(stars[0]))}
    if solve_field_path() is None:
        return None, "astrometry.net (solve-field) is not installed", info
    all_idx = index_files(index_dirs)
    if not all_idx:
        return None, f"no astrometry.net index files (index*.fits) in {list(index_dirs or [])}", info
    idx = indexes_for_field(all_idx, shape, scale)
    if not idx:
        size = field_size(shape, scale)
        have = ", ".join(f"{p.name} ({r[0]:.0f}'-{r[1]:.0f}')" if (r := index_scale(p)) else p.name
                         for p in all_idx[:4]) + (" ..." if len(all_idx) > 4 else "")
        info["no_index_for_scale"] = True
        return None, (f"no index file for a field of {size[0]:.1f}' x {size[1]:.1f}' ({scale:.3g} arcsec/px) "
                      f"among {len(all_idx)}: {have}"), info
    if len(stars[0]) < 5:
        return None, f"only {len(stars[0])} usable stars detected, too few to solve", info
    key = SolveMemory.key(field_name, shape, scale, idx, positions, budget if positions else blind_budget)
    if memory is not None and not refresh:
        prev = memory.failed(key)
        if prev is not None:
            info["remembered"] = True
            return None, (f"not solved again: the same field, indexes and hints failed on "
                          f"{prev.get('night') or prev.get('when')} ({prev.get('reason', '')}); --refresh retries"), info
    t0 = time.perf_counter()
    sw, why, tries = None, "", []
    if positions:
        radius = max(0.75 * diag_deg, 0.1) if diag_deg else 2.0
        for label, ra, dec in positions:
            left = budget - (time.perf_counter() - t0)
            if left < 1.0:
                tries.append(f"{label}: no time left")
                break
            sw, w, i = solve(*stars, shape, work_root, index_dirs, scale, (ra, dec), radius, left, indexes=idx)
            info.update(i)
            tries.append(f"near {label}: {w}")
            if sw is not None:
                why = f"{w} near {label} (radius {radius:.2g} deg, {len(idx)} index file(s))"
                break
        info["hint"] = "position"
    else:
        # the cap is the step's: the solver stops BLIND_MARGIN s earlier for reading the solution and the product
        sw, w, i = solve(*stars, shape, work_root, index_dirs, scale, None, 180.0,
                         max(1.0, blind_budget - BLIND_MARGIN), indexes=idx)
        info.update(i)
        info["hint"] = "blind"
        tries.append(f"blind ({'scale ' + format(scale, '.3g') + ' arcsec/px' if scale else 'no scale'}, "
                     f"no position hint, capped at {blind_budget:.0f} s): {w}")
        why = w
    info["solve_seconds"] = round(time.perf_counter() - t0, 3)
    if sw is None:
        why = "not solved: " + "; ".join(tries)
        if memory is not None:
            memory.remember(key, why)
    elif memory is not None:
        memory.forget(key)
    return sw, one_line(why, 600), info


# -------------------------------------------------------------- other frames
def frame_wcs(base: WCS, m) -> WCS:
    """The WCS of a frame whose pixels relate to the base frame's by the affine matrix ``m``.

    Parameters
    ----------
    base : WCS
        The base frame's celestial WCS (TAN, optionally with SIP distortion).
    m : array_like, shape (2, 3)
        ``[[a, b, dx], [c, d, dy]]``: a base pixel (x, y), 0-based, is at
        ``(a x + b y + dx, c x + d y + dy)`` in the frame.  A pure shift
        (step o's offsets) is ``[[1, 0, dx], [0, 1, dy]]``.

    Returns
    -------
    WCS
        A new WCS (``base`` is not modified): the same sky position at the
        mapped pixel.  Exact for linear WCSs; SIP polynomials are re-expanded
        in the frame's pixels (same order, exact up to rounding).

    Raises
    ------
    ValueError
        A singular matrix, or a distortion other than SIP (lookup tables).
    """
    m = np.asarray(m, dtype=float).reshape(2, 3)
    a, t = m[:, :2], m[:, 2]
    if abs(np.linalg.det(a)) < 1e-12:
        raise ValueError(f"singular affine matrix {m.tolist()}")
    if base.cpdis1 is not None or base.cpdis2 is not None or base.det2im1 is not None or base.det2im2 is not None:
        raise ValueError("frame_wcs: lookup-table distortions are not supported")
    ainv = np.linalg.inv(a)
    out = copy.deepcopy(base)
    out.wcs.crpix = a @ (np.asarray(base.wcs.crpix, float) - 1.0) + t + 1.0
    new = base.pixel_scale_matrix @ ainv
    if base.wcs.has_cd():
        out.wcs.cd = new
    else:
        out.wcs.pc, out.wcs.cdelt = new, [1.0, 1.0]
    if base.sip is not None:
        out.sip = _sip_in_frame(base.sip, a, out.wcs.crpix)
    out.wcs.set()
    return out


def _sip_in_frame(sip: Sip, a: np.ndarray, crpix) -> Sip:
    """SIP coefficients in frame pixels: base pixels offsets u = A^-1 u', distortion g(u') = A f(A^-1 u')."""
    ainv = np.linalg.inv(a)

    def remap(pa, pb):
        if pa is None:
            return None, None
        order = pa.shape[0] - 1
        g = np.linspace(-1000.0, 1000.0, 2 * order + 3)
        up, vp = (c.ravel() for c in np.meshgrid(g, g))
        u, v = ainv @ np.vstack([up, vp])
        f = np.vstack([_poly(pa, u, v), _poly(pb, u, v)])
        fa, fb = a @ f
        return _fit_poly(up, vp, fa, order), _fit_poly(up, vp, fb, order)

    na, nb = remap(sip.a, sip.b)
    nap, nbp = remap(sip.ap, sip.bp)
    return Sip(na, nb, nap, nbp, crpix)


def _poly(c: np.ndarray, u, v) -> np.ndarray:
    """Sum of ``c[p, q] u^p v^q``."""
    out = np.zeros_like(np.asarray(u, dtype=float))
    for p, q in zip(*np.nonzero(c)):
        out += c[p, q] * u ** p * v ** q
    return out


def _fit_poly(u, v, f, order: int) -> np.ndarray:
    """Coefficients ``c[p, q]`` (p + q <= order) of the polynomial through ``f`` at (u, v)."""
    s = 1000.0                                          # scaled for a well-conditioned fit
    terms = [(p, q) for p in range(order + 1) for q in range(order + 1 - p)]
    design = np.column_stack([(u / s) ** p * (v / s) ** q for p, q in terms])
    sol, *_ = np.linalg.lstsq(design, f, rcond=None)
    c = np.zeros((order + 1, order + 1))
    for (p, q), k in zip(terms, sol):
        c[p, q] = k / s ** (p + q)
    return c
