"""Step k: choose target, comparison and check stars automatically.

The algorithm of QLCP v2024.6 (manual, step k):

1. good stars of the reference frame (the base image when usable): AUTO
   magnitude error below ``pick_err_max``, not on the border, valid flux;
2. each is looked for in every usable frame at its base position through the
   frame's transform of step o (:func:`qlcp.core.offset.base_to_frame`; the
   conservative matching of :func:`qlcp.core.catalogue.match_stars`);
3. fluxes are roughly aligned: each frame's zero point is the median of its
   stars' magnitude differences to their night medians (iterated);
4. per star: night standard deviation, max - min range, fraction of usable
   frames where it is missing;
5. variable candidates: std above ``pick_var_std``, missing in at most
   ``pick_bad_max`` of the frames, inside the central box of half-size
   ``pick_var_rad`` x (image half-size), not saturated; most variable first;
6. stable candidates: std below ``pick_ref_std``, range below
   ``pick_ref_dif``, missing at most ``pick_bad_max``, never saturated
   (``Flags & 2`` in any frame, or peak + sky within 10 % of saturation);
   the ``pick_ref_n`` lowest-std ones are comparisons; one or two further
   stable stars (the next most stable; taken from the end of the comparison
   list when there are no more) are check stars.

As the manual warns, a variable that is not in eclipse tonight cannot be
found this way: with no variable candidate the target list is empty and the
caller decides (a warning is logged).

Products: ``{red}/pick_{obj}_{band}.ecsv`` (:func:`write_pick`,
:func:`read_pick` for step K).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.table import Table

from .catalogue import (FLAG_BORDER, FLAG_INVALID, FLAG_SATURATED, _col1d, _col2d, _meta_float, _n_aper_of,
                        _offset_lookup, cat_stem, match_stars, read_frame_catalogue)
from .errors import InputError, MissingInputError
from .columns import describe
from .io import raw_stem, write_table
from .offset import base_to_frame, frame_to_base
from .products import product_path

log = logging.getLogger("qlcp.pick")

#: a star whose peak + sky reaches this fraction of saturation is "near saturation"
SAT_FRACTION = 0.9
DEFAULT_SATURATION = 60000.0


@dataclass
class Selection:
    """Result of step k.

    Attributes
    ----------
    starxy : list of (x, y)
        Chosen stars, base-image coordinates (mean over the night): targets
        first, then comparisons, then checks.
    ind_tgt, ind_ref, ind_chk : list of int
        Indexes into ``starxy``.
    report : Table
        Every candidate: ``cand, x, y, mag, std, range, missing, saturated,
        n_frames, role, star, reason`` (``star``: index in ``starxy`` or -1).
    """

    starxy: list[tuple[float, float]]
    ind_tgt: list[int]
    ind_ref: list[int]
    ind_chk: list[int]
    report: Table = field(default_factory=Table)


def pick_path(red_dir: str | Path, obj: str, band: str) -> Path:
    return product_path(red_dir, "pick", obj, band)


def _frames(cat_files, offsets_table):
    offs = _offset_lookup(offsets_table)
    cat_by_stem = {cat_stem(p): Path(p) for p in cat_files}
    stems = list(offs) + [s for s in cat_by_stem if s not in offs]
    usable = [s for s in stems if s in offs and offs[s]["ok"] and s in cat_by_stem and cat_by_stem[s].is_file()]
    return offs, cat_by_stem, stems, usable


def _first_aperture_mag(t) -> np.ndarray:
    """The first aperture's magnitude of every source (what the light curves are made of; AUTO where a
    catalogue has no aperture column).  AUTO magnitudes hang on each frame's shape ellipses, which a
    tracked frame (:mod:`qlcp.core.photometry.forced`) measures differently from a full one; fixed apertures
    do not."""
    if "Mag" not in t.colnames or len(t) == 0:
        return _col1d(t, "MagAUTO")
    return _col2d(t, "Mag", _n_aper_of(t))[:, 0]


def _good_sources(t, err_max: float) -> np.ndarray:
    err = _col1d(t, "ErrAUTO")
    mag = _col1d(t, "MagAUTO")
    fl = _col1d(t, "Flags", dtype=np.int64, fill=0)
    good = (err < err_max) & np.isfinite(mag) & ((fl & (FLAG_BORDER | FLAG_INVALID)) == 0)
    ix = np.flatnonzero(good)
    return ix[np.argsort(err[ix], kind="stable")]


def pick_stars(cat_files: Sequence[str | Path], offsets_table: Table, cfg,
               image_shape: tuple[int, int], targets_xy=None, no_targets: bool = False) -> Selection:
    """Choose targets, comparisons and checks from the night's frame catalogues.

    Parameters
    ----------
    cat_files : list of paths
        Per-frame catalogues of step p.
    offsets_table : Table
        Offsets of step o (``file, jd, dx, dy, ok``, the transform ``m00..m12``).
    cfg : Config
        ``pick_*`` settings, ``match_max_dis``, ``base_img``, ``saturation``;
        optional ``pick_star_n`` (most stars examined, 500), ``pick_var_n``
        (most targets, 10), ``pick_chk_n`` (most check stars, 2).
    image_shape : (ny, nx)
        Shape of the base image, for the central region of variables.
    targets_xy : array (n, 2), optional
        Known targets' positions on the base image (from their sky positions): they
        are the targets, whatever their scatter, and comparisons and checks are
        chosen for them (:func:`_classify_for_targets`).
    no_targets : bool
        Comparisons and checks only, as the automatic pick chooses them; the variable
        stars it finds are not made targets (a configured target that is not on the
        frames is not replaced by another star).

    Returns
    -------
    Selection
    """
    offs, cat_by_stem, stems, usable = _frames(cat_files, offsets_table)
    if not usable:
        raise InputError("pick: no frame with both a catalogue and a good offset")
    err_max = cfg.pick_err_max
    ref, tref = _reference_frame(cat_by_stem, stems, usable, cfg.base_img, err_max)
    good = _good_sources(tref, err_max)[:int(getattr(cfg, "pick_star_n", 500))]
    tgt_src = _target_sources(tref, offs[ref], targets_xy, cfg.match_max_dis)
    good = np.concatenate([tgt_src[tgt_src >= 0], [g for g in good if g not in set(tgt_src)]]).astype(int)
    ng = len(good)
    if ng == 0:
        log.warning(f"pick: no star with AUTO error < {err_max} in any frame")
        return Selection([], [], [], [], _report_table(0))
    o = offs[ref]
    base = frame_to_base(o, np.column_stack([_col1d(tref, "X")[good], _col1d(tref, "Y")[good]]))
    log.info(f"pick: {ng} good stars in reference frame {ref}, {len(usable)} usable frames")

    mags, xb, yb, sat = _measure_candidates(base, usable, ref, tref, cat_by_stem, offs, cfg)
    st = _night_statistics(mags, xb, yb)
    log.info(f"pick: {st.n_frames} of {len(usable)} frames aligned "
             f"({len(usable) - st.n_frames} with too few stars left out)")
    if targets_xy is None or no_targets:
        cls = _classify(st, sat, cfg, image_shape)
        role, reason = _roles_and_reasons(st, sat, cls, cfg)
        if no_targets:
            for i in cls.var_ix:
                role[i], reason[i] = "rejected", f"variable (std {st.std[i]:.3f}), not made a target: no_targets"
            cls.var_ix, cls.no_targets = np.zeros(0, dtype=int), True
    else:
        n_t = int(np.sum(tgt_src >= 0))
        cls = _classify_for_targets(st, sat, cfg, np.arange(n_t), _isolated(tref, good, cfg))
        role, reason = _roles_and_reasons(st, sat, cls, cfg)
        for i in cls.var_ix:
            reason[i] = "target given by sky position"
        for i in cls.ref_ix:
            reason[i] += f"; {st.mag[i] - st.mag[cls.var_ix[0]]:+.2f} mag from the target"
    return _selection(st, sat, cls, role, reason, ref, cfg)


def _target_sources(tref: Table, off_row, targets_xy, max_dis: float) -> np.ndarray:
    """Index in the reference frame's catalogue of each known target (-1: not detected there)."""
    if targets_xy is None or len(targets_xy) == 0:
        return np.zeros(0, dtype=int)
    src = np.column_stack([_col1d(tref, "X"), _col1d(tref, "Y")])
    want = base_to_frame(off_row, np.asarray(targets_xy, float))
    idx, _ = match_stars(want, src, max_dis, _meta_float(tref.meta, "FWHM"))
    if np.any(idx < 0):
        log.warning("pick: %d known target(s) not detected in the reference frame", int(np.sum(idx < 0)))
    return np.asarray(idx, dtype=int)


def _isolated(tref: Table, good: np.ndarray, cfg) -> np.ndarray:
    """Candidates with no other source of at least a tenth of their flux within 3 × ``match_max_dis``."""
    x, y, f = _col1d(tref, "X"), _col1d(tref, "Y"), _col1d(tref, "FluxAUTO")
    out = np.ones(len(good), dtype=bool)
    r2 = (3.0 * cfg.match_max_dis) ** 2
    for k, i in enumerate(good):
        d2 = (x - x[i]) ** 2 + (y - y[i]) ** 2
        near = (d2 < r2) & (d2 > 0) & (np.nan_to_num(f) > 0.1 * np.nan_to_num(f[i]))
        out[k] = not near.any()
    return out


def _classify_for_targets(st: _NightStats, sat: np.ndarray, cfg, tgt_ix: np.ndarray,
                          isolated: np.ndarray) -> _Classes:
    """Comparisons and checks for known targets: stable, present, unsaturated, isolated stars
    within ``pick_cmp_dmag`` of the (first) target's brightness, the nearest in brightness first.

    The ensemble's weights (each comparison by its own scatter against the others,
    the target left out) and the rejection of variables are the differential
    step's (:mod:`qlcp.core.differential`), in the spirit of Broeg et al. (2005).
    """
    base = _classify(st, sat, cfg, (1, 1))
    ok = base.present & ~sat & isolated & (base.std_f < cfg.pick_ref_std) & (base.rng_f < cfg.pick_ref_dif)
    ok[tgt_ix] = False
    mag_t = st.mag[tgt_ix[0]] if len(tgt_ix) and np.isfinite(st.mag[tgt_ix[0]]) else np.nanmedian(st.mag)
    dmag = np.abs(st.mag - mag_t)
    ok &= np.isfinite(dmag) & (dmag <= cfg.pick_cmp_dmag)
    ix = np.flatnonzero(ok)
    ix = ix[np.lexsort((st.std[ix], np.round(dmag[ix], 1)))]
    n_ref = int(cfg.pick_ref_n)
    n_chk = min(int(cfg.pick_chk_n), 2 if len(ix) >= 8 else 1 if len(ix) >= 3 else 0)
    ref_ix = ix[:min(n_ref, len(ix) - n_chk)]
    chk_ix = ix[len(ref_ix):len(ref_ix) + n_chk]
    return _Classes(central=np.ones_like(base.central), present=base.present, std_f=base.std_f,
                    rng_f=base.rng_f, var_ix=np.asarray(tgt_ix, int), ref_ix=ref_ix, chk_ix=chk_ix)


def _reference_frame(cat_by_stem: dict, stems: list[str], usable: list[str], base_img,
                     err_max: float) -> tuple[str, Table]:
    """The frame whose good stars are the candidates, and its catalogue.

    Parameters
    ----------
    cat_by_stem : dict
        Frame stem -> catalogue path.
    stems, usable : list of str
        Every frame (in offsets order) and the usable ones.
    base_img : int, str or None
        The configured base image (index into ``stems`` or file name).
    err_max : float
        AUTO magnitude error limit of a good star.

    Returns
    -------
    ref : str
        The base image if usable and it has a good star, else the usable
        frame with most good stars (the first of equals).
    tref : Table
        Its catalogue.
    """
    ref = None
    b = base_img
    if isinstance(b, int) and 0 <= b < len(stems) and stems[b] in usable:
        ref = stems[b]
    elif isinstance(b, str) and raw_stem(b) in usable:
        ref = raw_stem(b)
    tref = read_frame_catalogue(cat_by_stem[ref]) if ref is not None else None
    if tref is None or len(_good_sources(tref, err_max)) == 0:
        best = -1
        for s in usable:
            t = read_frame_catalogue(cat_by_stem[s])
            n = len(_good_sources(t, err_max))
            if n > best:
                best, ref, tref = n, s, t
    return ref, tref


def _measure_candidates(base: np.ndarray, usable: list[str], ref: str, tref: Table, cat_by_stem: dict,
                        offs: dict, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """AUTO magnitudes, base positions and saturation of the candidates in every usable frame.

    Parameters
    ----------
    base : ndarray (ng, 2)
        Candidates' positions in base-image coordinates.
    usable : list of str
        Usable frames.
    ref, tref : str, Table
        Reference frame and its (already read) catalogue.
    cat_by_stem, offs : dict
        Frame stem -> catalogue path, offset row.
    cfg : Config
        ``match_max_dis``, ``saturation`` (else the catalogue's SATURATE, else 60000).

    Returns
    -------
    mags, xb, yb : ndarray (nu, ng)
        First-aperture magnitude (NaN: not found, border or invalid), position in base
        coordinates through the frame's offset.
    sat : ndarray of bool (ng,)
        Flagged saturated, or peak + sky >= ``SAT_FRACTION`` of saturation, in any frame.
    """
    nu, ng = len(usable), len(base)
    mags = np.full((nu, ng), np.nan)
    xb = np.full((nu, ng), np.nan)
    yb = np.full((nu, ng), np.nan)
    sat = np.zeros(ng, dtype=bool)
    sat_level = cfg.saturation
    for f, s in enumerate(usable):
        t = tref if s == ref else read_frame_catalogue(cat_by_stem[s])
        o = offs[s]
        lev = sat_level if sat_level is not None else _meta_float(t.meta, "SATURATE")
        lev = lev if np.isfinite(lev) else DEFAULT_SATURATION
        src = np.column_stack([_col1d(t, "X"), _col1d(t, "Y")])
        idx, _ = match_stars(base_to_frame(o, base), src, cfg.match_max_dis, _meta_float(t.meta, "FWHM"))
        hit = np.flatnonzero(idx >= 0)
        j = idx[hit]
        fl = _col1d(t, "Flags", dtype=np.int64, fill=0)[j]
        m = _first_aperture_mag(t)[j]
        bad = (fl & (FLAG_BORDER | FLAG_INVALID)) != 0
        mags[f, hit] = np.where(bad, np.nan, m)
        # positions in base coordinates through the offsets of step o (their errors average out
        # over the night; the refined shift would tie them to the reference frame's offset instead)
        xb[f, hit], yb[f, hit] = frame_to_base(o, src[j]).T
        pk = _col1d(t, "Peak")[j] + np.nan_to_num(_col1d(t, "Sky")[j])
        sat[hit] |= ((fl & FLAG_SATURATED) != 0) | (pk >= SAT_FRACTION * lev)
    return mags, xb, yb, sat


@dataclass
class _NightStats:
    """Per-candidate statistics over the aligned frames (see :func:`_night_statistics`)."""

    magc: np.ndarray       #: (n_frames, ng) zero-point-corrected magnitudes of the aligned frames
    n_frames: int          #: aligned frames
    missing: np.ndarray    #: fraction of aligned frames where the star is missing
    std: np.ndarray        #: night standard deviation
    rng: np.ndarray        #: max - min
    mag: np.ndarray        #: median magnitude
    x: np.ndarray          #: mean base position
    y: np.ndarray


def _night_statistics(mags: np.ndarray, xb: np.ndarray, yb: np.ndarray) -> _NightStats:
    """Roughly align the frames and measure every candidate's variability.

    A frame is aligned when at least ``max(3, 30 %)`` of the candidates are
    found in it (any found star when there are fewer than 3 candidates, or
    when no frame qualifies); its zero point is the median difference of its
    stars to their night medians (3 iterations).

    Parameters
    ----------
    mags, xb, yb : ndarray (nu, ng)
        From :func:`_measure_candidates`.

    Returns
    -------
    _NightStats
    """
    nu, ng = mags.shape
    n_match = np.sum(np.isfinite(mags), axis=1)
    frame_ok = n_match >= max(3, int(np.ceil(0.3 * ng))) if ng >= 3 else n_match >= 1
    if not frame_ok.any():
        frame_ok[:] = n_match > 0
    zp = np.zeros(nu)
    with np.errstate(all="ignore"), _quiet():
        for _ in range(3):
            med = np.nanmedian(mags[frame_ok] - zp[frame_ok, None], axis=0)
            zp = np.nanmedian(mags - med, axis=1)
            zp = np.where(np.isfinite(zp), zp, 0.0)
        magc = mags[frame_ok] - zp[frame_ok, None]
        nfr = int(frame_ok.sum())
        return _NightStats(
            magc=magc, n_frames=nfr,
            missing=1.0 - np.sum(np.isfinite(magc), axis=0) / max(nfr, 1),
            std=np.nanstd(magc, axis=0),
            rng=np.nanmax(magc, axis=0) - np.nanmin(magc, axis=0),
            mag=np.nanmedian(magc, axis=0),
            x=np.nanmean(xb, axis=0),
            y=np.nanmean(yb, axis=0),
        )


@dataclass
class _Classes:
    """Masks and chosen indexes of :func:`_classify`."""

    central: np.ndarray    #: inside the central box
    present: np.ndarray    #: missing at most ``pick_bad_max``
    std_f: np.ndarray      #: std, +inf when not finite
    rng_f: np.ndarray      #: range, +inf when not finite
    var_ix: np.ndarray     #: targets, most variable first
    ref_ix: np.ndarray     #: comparisons, most stable first
    chk_ix: np.ndarray     #: checks
    no_targets: bool = False   #: targets not wanted (:func:`pick_stars`'s ``no_targets``)


def _classify(st: _NightStats, sat: np.ndarray, cfg, image_shape: tuple[int, int]) -> _Classes:
    """Variable candidates (targets) and stable ones (comparisons, then checks).

    Parameters
    ----------
    st : _NightStats
        Candidates' statistics.
    sat : ndarray of bool
        Saturated candidates (never chosen).
    cfg : Config
        ``pick_var_rad, pick_var_std, pick_var_n, pick_ref_std, pick_ref_dif,
        pick_ref_n, pick_chk_n, pick_bad_max``.
    image_shape : (ny, nx)
        For the central box.

    Returns
    -------
    _Classes
        Checks are the next most stable stars after the ``pick_ref_n``
        comparisons, else taken from the end of the stable list; 2 when there
        are at least 8 stable stars, 1 from 3 (at most ``pick_chk_n``).
    """
    std, rng = st.std, st.rng
    ny, nx = image_shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    central = (np.abs(st.x - cx) <= cfg.pick_var_rad * nx / 2.0) & \
              (np.abs(st.y - cy) <= cfg.pick_var_rad * ny / 2.0)
    present = st.missing <= cfg.pick_bad_max
    std_f = np.where(np.isfinite(std), std, np.inf)
    rng_f = np.where(np.isfinite(rng), rng, np.inf)

    is_var = present & (std_f > cfg.pick_var_std) & np.isfinite(std) & central & ~sat
    var_ix = np.flatnonzero(is_var)
    var_ix = var_ix[np.argsort(-std[var_ix], kind="stable")][: int(getattr(cfg, "pick_var_n", 10))]
    stable = present & ~sat & ~is_var & (std_f < cfg.pick_ref_std) & (rng_f < cfg.pick_ref_dif)
    st_ix = np.flatnonzero(stable)
    st_ix = st_ix[np.argsort(std[st_ix], kind="stable")]
    n_ref = int(cfg.pick_ref_n)
    chk_max = int(getattr(cfg, "pick_chk_n", 2))
    n_chk = min(chk_max, 2 if len(st_ix) >= 8 else 1 if len(st_ix) >= 3 else 0)
    if len(st_ix) > n_ref:
        ref_ix, chk_ix = st_ix[:n_ref], st_ix[n_ref:n_ref + n_chk]
    else:
        ref_ix, chk_ix = st_ix[:len(st_ix) - n_chk], st_ix[len(st_ix) - n_chk:]
    return _Classes(central=central, present=present, std_f=std_f, rng_f=rng_f,
                    var_ix=var_ix, ref_ix=ref_ix, chk_ix=chk_ix)


def _roles_and_reasons(st: _NightStats, sat: np.ndarray, cls: _Classes, cfg) -> tuple[np.ndarray, np.ndarray]:
    """Role (target, comparison, check, rejected) and the reason for it of every candidate.

    Parameters
    ----------
    st : _NightStats
        Candidates' statistics.
    sat : ndarray of bool
        Saturated candidates.
    cls : _Classes
        From :func:`_classify`.
    cfg : Config
        The ``pick_*`` limits, quoted in the reasons.

    Returns
    -------
    role, reason : ndarray of object (ng,)
    """
    ng = len(st.std)
    std, rng, std_f, rng_f = st.std, st.rng, cls.std_f, cls.rng_f
    role = np.full(ng, "", dtype=object)
    reason = np.full(ng, "", dtype=object)
    for i in range(ng):
        why = []
        if not cls.present[i]:
            why.append(f"missing in {100 * st.missing[i]:.0f}% of frames > {100 * cfg.pick_bad_max:.0f}%")
        if sat[i]:
            why.append("saturated")
        if std_f[i] > cfg.pick_var_std and not cls.central[i]:
            why.append("variable but outside the central region")
        if not why and std_f[i] >= cfg.pick_ref_std and std_f[i] <= cfg.pick_var_std:
            why.append(f"std {std[i]:.3f} neither stable nor variable")
        if not why and rng_f[i] >= cfg.pick_ref_dif and std_f[i] < cfg.pick_ref_std:
            why.append(f"range {rng[i]:.3f} >= {cfg.pick_ref_dif}")
        if not why and std_f[i] > cfg.pick_var_std:
            why.append("variable beyond pick_var_n")
        if not why:
            why.append("stable, beyond pick_ref_n and the check stars")
        role[i], reason[i] = "rejected", "; ".join(why)
    for i in cls.var_ix:
        role[i], reason[i] = "target", f"variable: std {std[i]:.3f} > {cfg.pick_var_std}"
    for i in cls.ref_ix:
        role[i], reason[i] = "comparison", f"stable: std {std[i]:.4f}, range {rng[i]:.3f}"
    for i in cls.chk_ix:
        role[i], reason[i] = "check", f"stable, not a comparison: std {std[i]:.4f}"
    return role, reason


def _selection(st: _NightStats, sat: np.ndarray, cls: _Classes, role: np.ndarray, reason: np.ndarray,
               ref: str, cfg) -> Selection:
    """The :class:`Selection`, with its report; logged.

    Parameters
    ----------
    st : _NightStats
        Candidates' statistics (positions become ``starxy``).
    sat : ndarray of bool
        Saturated candidates.
    cls : _Classes
        Chosen targets, comparisons and checks.
    role, reason : ndarray of object
        From :func:`_roles_and_reasons`.
    ref : str
        Reference frame (report meta ``ref_frame``).
    cfg : Config
        ``pick_var_std`` for the warning of an empty target list.

    Returns
    -------
    Selection
        ``starxy`` lists targets, then comparisons, then checks.
    """
    var_ix, ref_ix, chk_ix = cls.var_ix, cls.ref_ix, cls.chk_ix
    ng = len(st.std)
    chosen = list(var_ix) + list(ref_ix) + list(chk_ix)
    star = np.full(ng, -1, dtype=int)
    star[chosen] = np.arange(len(chosen))
    nt, nr = len(var_ix), len(ref_ix)
    sel = Selection(
        starxy=[(float(st.x[i]), float(st.y[i])) for i in chosen],
        ind_tgt=list(range(nt)),
        ind_ref=list(range(nt, nt + nr)),
        ind_chk=list(range(nt + nr, len(chosen))),
        report=_report_table(ng, st.x, st.y, st.mag, st.std, st.rng, st.missing, sat,
                             np.sum(np.isfinite(st.magc), axis=0), role, star, reason),
    )
    sel.report.meta.update(ref_frame=ref, n_frames=st.n_frames)
    if nt == 0 and not cls.no_targets:
        log.warning(f"pick: no variable star found (std > {cfg.pick_var_std} in the central region); "
                    "target list empty, give starxy/ind_tgt by hand")
    for k, i in enumerate(var_ix):
        log.info(f"  target {k}: ({st.x[i]:7.1f} {st.y[i]:7.1f}) mag {st.mag[i]:6.3f} std {st.std[i]:.3f}")
    log.info(f"pick: {nt} target(s), {nr} comparison(s), {len(chk_ix)} check(s)")
    if nr == 0:
        log.warning("pick: no stable comparison star found")
    return sel


@contextlib.contextmanager
def _quiet():
    """Silence numpy's all-NaN slice warnings inside a block."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _report_table(n, x=None, y=None, mag=None, std=None, rng=None, missing=None, sat=None, nfr=None,
                  role=None, star=None, reason=None) -> Table:
    def col(v, dtype=float):
        return np.zeros(0, dtype=dtype) if v is None else np.asarray(v, dtype=dtype)
    return Table({
        "cand": np.arange(n),
        "x": col(x), "y": col(y), "mag": col(mag), "std": col(std), "range": col(rng),
        "missing": col(missing), "saturated": col(sat, bool), "n_frames": col(nfr, int),
        "role": np.array([str(r) for r in (role if role is not None else [])], dtype=str),
        "star": col(star, int),
        "reason": np.array([str(r) for r in (reason if reason is not None else [])], dtype=str),
    })


def write_pick(selection: Selection, red_dir: str | Path, obj: str, band: str) -> Path:
    """Write ``{red}/pick_{obj}_{band}.ecsv`` atomically: the report table, the choice in the meta."""
    t = Table(selection.report, copy=True)
    t.meta = dict(t.meta)
    t.meta.update(
        obj=obj, band=band,
        starxy=[[float(a), float(b)] for a, b in selection.starxy],
        ind_tgt=[int(i) for i in selection.ind_tgt],
        ind_ref=[int(i) for i in selection.ind_ref],
        ind_chk=[int(i) for i in selection.ind_chk],
    )
    for k, v in list(t.meta.items()):
        if isinstance(v, np.generic):
            t.meta[k] = v.item()
    path = pick_path(red_dir, obj, band)
    write_table(path, describe(t, "pick"))
    log.debug(f"wrote {path}")
    return path


def read_pick(red_dir: str | Path, obj: str, band: str) -> Selection:
    """Read the last pick of ``obj``/``band`` (step K).  Raises MissingInputError when absent."""
    path = pick_path(red_dir, obj, band)
    if not path.is_file():
        raise MissingInputError(f"{path}: no saved pick for {obj} {band} (run step k)")
    try:
        t = Table.read(path, format="ascii.ecsv")
    except Exception as e:
        raise InputError(f"{path}: unreadable pick file ({type(e).__name__}: {e})") from None
    m = t.meta
    try:
        sel = Selection(
            starxy=[(float(a), float(b)) for a, b in m["starxy"]],
            ind_tgt=[int(i) for i in m["ind_tgt"]],
            ind_ref=[int(i) for i in m["ind_ref"]],
            ind_chk=[int(i) for i in m["ind_chk"]],
            report=t,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path}: pick file lacks {e}") from None
    return sel
