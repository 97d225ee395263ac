"""Step p on crowded fields: measure on every frame only the stars that matter, tracked from a reference.

A field with 1,500 sources costs the full measurement (:func:`qlcp.core.photometry.measurement.measure`:
deblending, windowed centroids, half-light radii, annulus skies) of every one of
them, on every frame, though a light curve needs a few dozen.  So the group's
*reference frame* (its first frame, the one whose coordinates time the group)
is measured in full, once, and from it comes the :class:`StarSet`: the stars
measured on every frame --

* the ``pick_star_n`` brightest unsaturated sources (the candidates the automatic
  pick examines: targets, comparisons and checks come from them), then the
  saturated ones while room is left, so a sparse field keeps all its sources --
  unless the stars are given (``starxy``) and no pick is asked for (no ``k`` or
  ``K`` in ``steps``): then only the alignment stars (below), for step o;
* the given ``starxy`` positions and the targets given by sky position (``targets``,
  ``target_catalog``) placed through the reference's header WCS (:func:`target_positions`):
  a target fainter than the candidates is added even where nothing was detected;

and its alignment stars (the brightest unflagged ones).  Every other frame is
then *tracked* (:func:`measure_tracked`): its background; its transform from the
reference, *followed* (the alignment stars recentred from their reference positions, no
extraction; the reference's footprints masked in the sky annuli: a frame within a few px of
the reference) or else from one extraction without deblending (its brightest
objects by peak: a shift searched within 60 % of the frame from the reference, so a night's drift
needs no other frame, refined as a similarity on its pairs when the field turns; the reference
turned by each of :data:`TURN_VOTES` (a meridian flip first) when it fails; a similarity search
(astroalign, :data:`SIM_N` stars) only when all fail; its segmentation map masks the annuli); then
the measurement of the set at the predicted positions, recentred on their windowed centroids, by
the same code as the full measurement -- but for the
pick's candidates that are neither alignment nor given stars (``StarSet.light``): those are measured
only as step k reads them (:func:`qlcp.core.photometry.measurement._measure_light`: first-aperture flux, position,
peak, sky, flags; no AUTO flux, no half-light radius, placed by the alignment stars' recentring), so a
night without ``starxy`` costs little more per frame than one with them (issue #25: a tracked 1024^2
frame with 500 candidates 88 ms against 145 ms measured in full and 40 ms with the stars given), and the
alignment and given stars are measured exactly as when the stars are given.
The transform, refitted on the measured stars' centroids, goes in the catalogue's header
(:data:`TRANSFORM_CARDS`): step o checks it instead of searching again (one alignment a frame).
A frame's measurement depends on that frame and the reference only, never on the frames
measured before it in the same process: the catalogues, and so the light curves, are the same
bit for bit whatever the number of workers, the split of a group in chunks, or which frames a
rerun found done (following from the last frames' transforms made them depend on all three:
up to 0.4 mmag between 1 and 2 workers).
Per frame this costs the same on a field of 100 or 1,500 sources; a frame that
aligns neither way is measured at its ``pick_star_n`` brightest sources, and the
alignment step (o) deals with it.

``frame_catalogues: full`` measures every source of every frame (the original's
catalogues); ``stars`` (default) is the above.  A target by sky position on a frame
without a usable header WCS (step w solves one later) that is fainter than the
``pick_star_n``-th brightest source is not measured: raise ``pick_star_n`` or give its
position (``starxy``).
The frames are tracked with a coarser background map than the reference's
(:data:`TRACKED_MESH`), modelled on every 4th pixel where the meshes are large against the sky
annulus (:data:`TRACKED_STEP`): their stars' sky is their annulus.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sep

from ..errors import InputError
from ..offset.matching import (CLIP_MIN_N, MIN_MATCH, OffsetResult, TURN_F, TURN_PX, _better, _brightest,
                               _clipped_mean, _fail, _fit_similarity, _poor, find_offset, find_similarity,
                               refine_turn, similarity_result, with_shared)
from ..offset.transforms import base_to_frame, overlap, scale_of, shift_matrix, transform_cards
from .frame import _Sources, _background, _check_settings
from .measurement import _WIN_CAP, measure, measure_sources
from .pixels import (FLAG_BADFLUX, FLAG_BLENDED, FLAG_BORDER, FLAG_COSMIC, FLAG_SATURATED, _BACK_MESH, _GAUSS_FWHM,
                     _KERNEL, _extract, _stamps, aperture_radii, sky_annulus)

log = logging.getLogger("qlcp.photometry")

#: most alignment stars per frame (the reference's and each frame's brightest)
ALIGN_N = 60
#: turns (deg, about the frame's centre) of the reference tried by a shift search when a plain shift fails
#: or pairs few (a meridian flip first; ~1.5 ms each on 60 stars): astroalign only when all fail
TURN_VOTES = (180.0, 0.7, -0.7, 1.5, -1.5, 3.0, -3.0)
#: brightest stars of each list given to astroalign when a frame aligns neither by a shift nor a flip
#: (its cost grows with the triangles of these: 25 stars, ~0.1 s a frame; 50, ~1 s)
SIM_N = 25
#: a given position is that source of the reference when within this many px (or its FWHM)
GIVEN_MATCH = 3.0
#: a frame is followed from the last transforms when this fraction of the alignment stars recentre
#: within FOLLOW_TOL px of the prediction, consistently (clipped residuals below FOLLOW_RMS px)
FOLLOW_FRACTION, FOLLOW_TOL, FOLLOW_RMS = 0.7, 3.0, 0.35
#: ... and hold a star: flux within 2 FWHM above this S/N (sky-limited)
FOLLOW_SNR = 10.0
#: the recorded transform is refitted on the measured stars weighted by (S/N)^2, S/N capped at this (a bright
#: star's centroid error is then set by the PSF's sampling and the seeing, not its photons)
REFIT_SNR_CAP = 200.0
#: background mesh of a tracked frame (px), as long as the frame keeps 8 meshes a side: its stars' sky is
#: their annulus, the map only takes the large scales off (and costs 4.5 ms a 1024^2 frame, against
#: 9.5 ms at 64 px); light curves equal within 1 % on a sparse and a crowded 200-frame night
TRACKED_MESH = 128
#: a tracked frame's background is modelled on every 4th pixel of each axis (the same meshes and per-pixel
#: rms, 1/16 of the pixels; ``photometry.frame._background``): 1.4 ms a 1024^2 frame with the subtraction,
#: against 6.7 ms; only on meshes of at least :data:`SUBSAMPLE_MESH_PER_ANNULUS` sky-annulus radii
TRACKED_STEP = 4
#: a sparser map is noisier per mesh, and its noise reaches a star's sky through the map's curvature
#: across the annulus (~ (annulus / mesh)^2): on meshes >= 2.5 outer annulus radii, sampled every 2nd or
#: 4th pixel, that stays below the full map's on 64 px meshes (a 256^2 test night with 64 px meshes
#: sampled every 2nd pixel moved a target by 2.7 mmag; 1024^2 nights at 128 px: light curves within 0.5 %)
SUBSAMPLE_MESH_PER_ANNULUS = 2.5
#: a frame sharing less of the reference's field than this is measured in full (a reference pointed
#: off, e.g. a first frame taken before the telescope settled: the frames share ~36 % of it, and the
#: stars only it lacks are measured too); a drifting night's frames are tracked down to this (a drift
#: of 42 % of the frame in x and 12 % in y with a 5 % jump leaves 48 %; 0.5 measured those in full)
TRACK_MIN_OVERLAP = 0.4
#: flags that keep a source out of the alignment stars (border, saturated, blended, bad flux, cosmic)
_ALIGN_BAD = FLAG_BORDER | FLAG_SATURATED | FLAG_BLENDED | FLAG_BADFLUX | FLAG_COSMIC


@dataclass
class StarSet:
    """The stars a group measures on every frame, from its reference frame.

    Attributes
    ----------
    ref : str
        Path of the reference (corrected) frame (its identity is part of the
        provenance key of every catalogue measured with the set).
    xy : ndarray (m, 2)
        Reference positions (0-based px) of the stars measured.
    a, b, theta : ndarray (m,)
        Their shape ellipses on the reference (px, px, rad; for AUTO fluxes).
    blended : ndarray (m,) of bool
        Deblended on the reference (the ``4`` flag on every frame).
    align_xy : ndarray (k, 2), align_flux : ndarray (k,)
        The reference's alignment stars (brightest unflagged).
    n_sources : int
        Sources of the reference frame.
    fwhm : float
        The reference's FWHM, px (the window of the followed alignment stars).
    mask_xy : ndarray (n, 2), mask_r : ndarray (n,)
        Every source of the reference and the radius (px) of its detected footprint: the
        pixels left out of the sky annuli of a frame followed without an extraction.
    made : dict or None
        Step p's stats of the reference frame when its catalogue was written with the set.
    light : ndarray (m,) of bool or None
        The candidates measured on tracked frames only as the automatic pick reads them (neither
        alignment stars nor given); None: every star in full.
    win : ndarray (m,) or None
        The reference's FWHM of each star (px, capped at ``photometry.measurement._WIN_CAP`` x the median): the
        centroid window of a light star when the alignment stars cannot place it.
    """

    ref: str
    xy: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    blended: np.ndarray
    align_xy: np.ndarray
    align_flux: np.ndarray
    n_sources: int
    fwhm: float = math.nan
    mask_xy: np.ndarray = None
    mask_r: np.ndarray = None
    made: dict | None = None
    #: stars measured on the tracked frames only as the automatic pick reads them (the candidates that are
    #: neither alignment stars nor given): :class:`qlcp.core.photometry.frame._Sources` ``light``; None: none
    light: np.ndarray | None = None
    #: the reference's FWHM of each star, px (capped): the centroid window of a ``light`` star
    win: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.xy)


def star_set(data, cfg, gain: float, rdnoise: float, saturation: float, ref: str, n_max: int,
             given_xy=(), aper=None, candidates: bool = True) -> StarSet:
    """Measure the reference frame in full and choose the stars measured on every frame.

    Parameters
    ----------
    data : ndarray
        The reference frame's pixels, ADU.
    cfg : Config
        Photometry settings (as :func:`qlcp.core.photometry.measure`).
    gain, rdnoise, saturation : float
        e-/ADU, e-, ADU.
    ref : str
        The reference frame's file name (recorded in every tracked catalogue).
    n_max : int
        Most unsaturated sources kept, brightest AUTO flux first (``pick_star_n``);
        saturated ones fill the set up to ``n_max`` when fewer are unsaturated.
    given_xy : (n, 2) array-like
        Positions on the reference always measured (``starxy``): the nearest source
        within :data:`GIVEN_MATCH` px (or the FWHM), else the position itself.
    candidates : bool
        Measure the ``n_max`` candidates of the automatic pick; False (the stars are
        given and nothing is picked): only ``given_xy`` and the alignment stars (so step o
        still aligns on the frames' catalogues).

    Raises
    ------
    InputError
        The reference frame has no source (a frame cannot be tracked on it).
    """
    box: dict = {}
    tab, stats = measure(data, cfg, gain, rdnoise, saturation, aper=aper, sources_out=box)
    return choose(tab, stats, box.get("sources"), ref, n_max, given_xy, candidates)


def choose(tab, stats: dict, src, ref: str, n_max: int, given_xy=(), candidates: bool = True) -> StarSet:
    """The :class:`StarSet` from the reference frame's full measurement (:func:`star_set`): its
    catalogue ``tab``, ``stats`` and sources ``src`` (:func:`qlcp.core.photometry.measure`)."""
    if src is None or len(tab) == 0:
        raise InputError(f"{ref}: no source on the reference frame")
    flags = np.asarray(tab["Flags"])
    fa = np.asarray(tab["FluxAUTO"], dtype=float)
    usable = np.isfinite(fa) & (fa > 0)
    sat = (flags & FLAG_SATURATED) != 0
    good = ((flags & _ALIGN_BAD) == 0) & usable
    al = np.flatnonzero(good)
    al = al[_brightest(fa[al], ALIGN_N)]
    if candidates:
        order = np.lexsort((-np.where(usable, fa, 0.0), sat))          # unsaturated first, then by flux
        idx = [int(i) for i in order if usable[i]][:max(int(n_max), 1)]
    else:
        idx = [int(i) for i in al]
    xy = np.column_stack([np.asarray(tab["X"], float), np.asarray(tab["Y"], float)])
    a, b, th, bl = src.a, src.b, src.theta, src.merged
    extra, given_ix = [], set()
    fwhm = stats["FWHM"] if np.isfinite(stats["FWHM"]) else 0.0
    for gx, gy in np.asarray(given_xy, dtype=float).reshape(-1, 2):
        d = np.hypot(xy[:, 0] - gx, xy[:, 1] - gy)
        j = int(np.argmin(d))
        if d[j] <= max(GIVEN_MATCH, fwhm):
            given_ix.add(j)
            if j not in idx:
                idx.append(j)
        else:
            extra.append((gx, gy))
    full = set(int(i) for i in al) | given_ix
    light = np.array([int(i) not in full for i in idx] + [False] * len(extra), dtype=bool)
    fw_src = np.asarray(tab["FWHM"], float)
    fin = np.isfinite(fw_src)
    win = np.concatenate([fw_src[np.asarray(idx, dtype=int)], np.full(len(extra), np.nan)])
    if fin.any():      # as measure._centroids caps a window: at _WIN_CAP x the sources' median FWHM
        win = np.minimum(win, _WIN_CAP * float(np.median(fw_src[fin])))
    idx = np.asarray(idx, dtype=int)
    sig = (fwhm or 3.0) / _GAUSS_FWHM
    n_extra = len(extra)
    return StarSet(ref=ref,
                   xy=np.vstack([xy[idx], np.asarray(extra, float).reshape(-1, 2)]),
                   a=np.concatenate([a[idx], np.full(n_extra, sig)]),
                   b=np.concatenate([b[idx], np.full(n_extra, sig)]),
                   theta=np.concatenate([th[idx], np.zeros(n_extra)]),
                   blended=np.concatenate([bl[idx], np.zeros(n_extra, bool)]),
                   align_xy=xy[al], align_flux=fa[al], n_sources=len(tab), fwhm=float(stats["FWHM"]),
                   mask_xy=xy,
                   mask_r=np.sqrt(np.maximum(src.npix, 1.0) / math.pi),
                   light=light if light.any() else None, win=win)


def _align(stars: StarSet, objs, max_dis: float, shape=None) -> OffsetResult:
    """The reference -> frame transform from the frame's brightest objects (``objs``), from the
    reference and this frame only (no other frame's solution: see the module docstring).

    1. a shift searched within ``max_dis`` of the reference, then (when that fails or pairs few)
       within ``1 - TRACK_MIN_OVERLAP`` of the frame: a night's drift of half the frame and more,
       with a jump, while the frame is still tracked;
    2. the shift refined as a similarity on the stars it pairs (no search: least squares, the pairs
       regathered through each fit), kept when it pairs clearly more stars or turns the field by more
       than ``offset.TURN_PX`` at its edge (a field turning over the night);
    3. when the shift fails or pairs few: the same search against the reference turned about the
       frame's centre by each of :data:`TURN_VOTES` (a meridian flip; a field turned by a degree or
       two, sparse, where a shift pairs too few stars), refined the same way, until one pairs enough;
    4. only when all fail: a similarity search (``astroalign``) on the :data:`SIM_N` brightest
       stars of each."""
    fl = np.asarray(objs["peak"], dtype=float)       # bright stars, not the large blends of faint ones
    ok = np.isfinite(fl) & (fl > 0)
    ix = np.flatnonzero(ok)
    ix = ix[_brightest(fl[ix], ALIGN_N)]
    fxy = np.column_stack([np.asarray(objs["x"], float)[ix], np.asarray(objs["y"], float)[ix]])
    bxy, bfl = stars.align_xy, stars.align_flux
    if len(fxy) < MIN_MATCH or len(bxy) < MIN_MATCH:
        return _fail(f"{len(fxy)} stars on the frame, {len(bxy)} on the reference")
    n_ref = len(bxy)
    # every shift at which the frame still shares TRACK_MIN_OVERLAP of the reference's field (an axis's at most);
    # the usual box first (the vote's cost grows with the box: 2.5 ms against 7 on 60 stars of 768^2)
    reach = max(max_dis, (1 - TRACK_MIN_OVERLAP) * max(shape)) if shape is not None else max_dis
    for box in dict.fromkeys((max_dis, reach)):
        res = refine_turn(find_offset(bxy, bfl, fxy, fl[ix], max_dis=box), bxy, fxy,
                                  min_turn=TURN_PX)     # smaller turns: _refined, on the measured stars
        res = with_shared(res, bxy, fxy)
        if not _poor(res, len(fxy), n_ref):
            break
    if shape is not None:
        c = np.array([(shape[1] - 1) / 2, (shape[0] - 1) / 2])
        for ang in TURN_VOTES:
            if not _poor(res, len(fxy), n_ref):
                break
            th = math.radians(ang)
            lin = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
            turn = np.column_stack([lin, c - lin @ c])                  # about the frame's centre
            r = find_offset(base_to_frame(turn, bxy), bfl, fxy, fl[ix], max_dis=reach)
            if r.ok:
                m = np.column_stack([lin, turn[:, 2] + (r.dx, r.dy)])
                cand = refine_turn(similarity_result(m, r.n_matched, r.rms, f"shift searched with "
                                                                     f"the reference turned {ang:g} deg"), bxy, fxy)
                if _better(cand, res, bxy):
                    res = with_shared(cand, bxy, fxy)
    if res.ok:      # a shift that pairs few but is ok stands (a crowded field's undeblended brightest objects
        return res  # pair fewer of the reference's stars; a drifting frame shares part of its field)
    sim = find_similarity(bxy, bfl, fxy, fl[ix], n_ctrl=SIM_N)
    return sim if _better(sim, res, bxy) else res


def _follow(stars: StarSet, frame, sig: float):
    """The transform of a frame from the reference, without an extraction: the alignment stars
    recentred (windowed centroids) from their reference positions, and a shift fitted to them.
    None when too few follow (a drift beyond ``FOLLOW_TOL``, a jump, a flip, clouds).

    The start is the reference itself, never the last frames' transforms: a frame's result then
    depends on no other frame (what a process measured before it, how the group was split)."""
    pred = np.asarray(stars.align_xy, dtype=float)
    ny, nx = frame.sub.shape
    on = (pred[:, 0] > 5) & (pred[:, 1] > 5) & (pred[:, 0] < nx - 6) & (pred[:, 1] < ny - 6)
    if on.sum() < max(MIN_MATCH + 2, 8):
        return None
    px, py = pred[on, 0], pred[on, 1]
    xw, yw, wf = sep.winpos(frame.sub, px, py, np.full(px.size, sig), mask=frame.mask, subpix=0)
    d = np.column_stack([xw - px, yw - py])
    # a star must be there: windows on empty sky (after a jump) also settle near where they start
    r = 2.0 * _GAUSS_FWHM * sig
    fl, _e, _f = sep.sum_circle(frame.sub, np.nan_to_num(xw), np.nan_to_num(yw), r, mask=frame.mask, subpix=0)
    bright = fl > FOLLOW_SNR * frame.rms * math.sqrt(math.pi) * r
    good = (wf == 0) & np.isfinite(d).all(axis=1) & (np.hypot(*d.T) < FOLLOW_TOL) & bright
    if good.sum() < FOLLOW_FRACTION * on.sum():
        return None
    med = np.median(d[good], axis=0)
    keep = good & (np.hypot(*(d - med).T) < 3 * FOLLOW_RMS)
    if keep.sum() < FOLLOW_FRACTION * on.sum():
        return None
    b, f = stars.align_xy[on][keep], np.column_stack([xw, yw])[keep]
    m = shift_matrix(*np.mean(f - b, axis=0))
    res = np.hypot(*(base_to_frame(m, b) - f).T)
    if np.sqrt(np.mean(res ** 2)) > FOLLOW_RMS:
        return None
    return m


def _refined(m: np.ndarray, kind: str, ref_xy: np.ndarray, tab, found: np.ndarray) -> np.ndarray:
    """The transform ``m`` refitted on the measured stars (their windowed centroids, ~0.01 px for the bright
    ones, against the extraction's barycentres' few tenths and the followed alignment stars' ~0.03),
    weighted by (S/N)^2: a shift (their mean difference), then a rotation, then a scale, each kept
    when significant (:func:`_significant`: a field turned by 0.01 deg moves a 768 px frame's corners
    by 0.1 px, lost in the barycentres' noise); a frame aligned turned (``kind`` similarity) keeps its turn.
    ``m`` when fewer than ``offset.CLIP_MIN_N`` unflagged stars were measured."""
    xy = np.column_stack([np.asarray(tab["X"], float), np.asarray(tab["Y"], float)])
    snr = np.asarray(tab["FluxAUTO"], float) / np.asarray(tab["FErrAUTO"], float)
    use = found & ((np.asarray(tab["Flags"]) & _ALIGN_BAD) == 0) & np.isfinite(xy).all(axis=1) & (snr > 0)
    if use.sum() < CLIP_MIN_N:
        return m
    # a centroid's error goes as 1 / (S/N): weights (S/N)^2, capped where other errors take over
    b, f, w = ref_xy[use], xy[use], np.minimum(snr[use], REFIT_SNR_CAP) ** 2
    # outliers (a blend, a cosmic ray) clipped about the fullest fit, so a turn is not clipped away
    _, keep = _clipped_mean(f - base_to_frame(_fit_similarity(b, f, w), b))
    if keep.sum() < CLIP_MIN_N:
        return m
    b, f, w = b[keep], f[keep], w[keep]
    fits = [shift_matrix(*(w @ (f - b) / w.sum())), _fit_similarity(b, f, w, scale=False),
            _fit_similarity(b, f, w)]
    ss = [float(w @ np.sum((f - base_to_frame(t, b)) ** 2, axis=1)) for t in fits]
    best = 1 if kind == "similarity" else 0       # a turned frame stays turned
    for k in (1, 2):                              # a turn, then a scale: each kept when significant
        if k > best and _significant(ss[best], ss[k], k - best, 2 * len(b) - 2 - k):
            best = k
    return fits[best]


def _significant(ss0: float, ss1: float, extra: int, dof: int) -> bool:
    """Whether a fit with ``extra`` more parameters, leaving the residual sum of squares ``ss1`` on ``dof``
    degrees of freedom, explains the data better than one leaving ``ss0``: an F test above
    :data:`offset.TURN_F`."""
    if dof <= 0 or ss1 >= ss0:
        return False
    return ss1 <= 0 or ((ss0 - ss1) / extra) / (ss1 / dof) > TURN_F


def _footprints(shape, stars: StarSet, m: np.ndarray) -> np.ndarray:
    """Pixels of the reference's sources on a frame (their footprints' discs through ``m``)."""
    ny, nx = shape
    mask = np.zeros(shape, dtype=bool)
    xy = base_to_frame(m, stars.mask_xy)
    r = stars.mask_r * scale_of(m)
    h_all = np.ceil(r).astype(int)
    ix, iy = np.rint(xy[:, 0]).astype(int), np.rint(xy[:, 1]).astype(int)
    on = (ix >= -h_all) & (iy >= -h_all) & (ix < nx + h_all) & (iy < ny + h_all)
    for h in np.unique(h_all[on]):
        sel = on & (h_all == h)
        o = np.arange(-h, h + 1)
        oy, ox = np.meshgrid(o, o, indexing="ij")
        disc = np.hypot(ox, oy) <= h
        cx = ix[sel, None] + ox[disc]
        cy = iy[sel, None] + oy[disc]
        ok = (cx >= 0) & (cy >= 0) & (cx < nx) & (cy < ny)
        mask[cy[ok], cx[ok]] = True
    return mask


def _detected(frame, x, y, thresh: float) -> np.ndarray:
    """Whether the detection-filtered image exceeds ``thresh`` at each position (what an extraction
    would have found there: a star still above the threshold)."""
    k = _KERNEL / _KERNEL.sum()
    vals, _, _ = _stamps(frame.sub, np.asarray(x, float), np.asarray(y, float), k.shape[0] // 2)
    return np.nansum(vals * k, axis=(1, 2)) > thresh


def tracked_mesh(cfg, shape) -> int:
    """Background mesh of a tracked frame: :data:`TRACKED_MESH`, or less on a frame under 8 of them a
    side, never finer than the configured ``phot_back_mesh`` (the reference's)."""
    mesh = int(getattr(cfg, "phot_back_mesh", None) or _BACK_MESH)
    return max(mesh, min(TRACKED_MESH, min(shape) // 8))


def measure_tracked(data, cfg, gain: float, rdnoise: float, saturation: float, stars: StarSet,
                    aper=None, max_dis: float = 250.0) -> tuple | None:
    """Measure the :class:`StarSet` on a frame, at positions tracked from the reference.

    Returns
    -------
    (table, stats) or None
        As :func:`qlcp.core.photometry.measure`, one row per star of the set still detected on
        the frame (inside an object of the extraction, or above the threshold in the filtered image
        when followed; reference order); ``stats`` adds ``NDETECT`` (objects found without
        deblending; -1 when followed), ``TRACK`` (``followed``, ``shift`` or ``similarity``) and
        ``TRACKDX``/``TRACKDY`` (px).
        None when the frame does not align on the reference (measure it in full).
    """
    aper, rdnoise, saturation = _check_settings(cfg.aper if aper is None else aper, gain, rdnoise, saturation)
    mesh = tracked_mesh(cfg, np.shape(data))
    rout = sky_annulus(cfg, aperture_radii(aper, stars.fwhm if np.isfinite(stars.fwhm) else 3.0))[1]
    frame = _background(data, cfg, mesh, step=TRACKED_STEP if mesh >= SUBSAMPLE_MESH_PER_ANNULUS * rout else 1)
    if not (np.isfinite(frame.rms) and frame.rms > 0):
        return None
    thresh = cfg.detect_thresh * frame.rms
    sig = stars.fwhm / _GAUSS_FWHM if np.isfinite(stars.fwhm) else 1.5
    m = _follow(stars, frame, sig)
    if m is not None:
        kind, n_det, seg = "followed", -1, _footprints(frame.sub.shape, stars, m)
    else:
        objs, seg = _extract(frame.sub, thresh, frame.mask, cfg.detect_minarea, nthresh=1)
        res = _align(stars, objs, max_dis, frame.sub.shape)
        if not res.ok:
            log.debug("not tracked on %s (%s): measured in full", Path(stars.ref).name, res.reason)
            return None
        m, kind, n_det = res.matrix(), res.kind, int(len(objs))
    shared = overlap(m, frame.sub.shape)
    if shared < TRACK_MIN_OVERLAP:                                  # its stars are not all the reference's
        log.debug("%.0f%% field shared with the reference %s: measured in full", 100 * shared, Path(stars.ref).name)
        return None
    pos = base_to_frame(m, stars.xy)
    ny, nx = frame.sub.shape
    on = (pos[:, 0] >= -0.5) & (pos[:, 0] <= nx - 0.5) & (pos[:, 1] >= -0.5) & (pos[:, 1] <= ny - 0.5)
    x0, y0 = pos[on, 0].copy(), pos[on, 1].copy()
    rot = math.atan2(m[1, 0], m[0, 0])
    theta = (stars.theta[on] + rot + math.pi / 2) % math.pi - math.pi / 2
    # the reference's shapes (AUTO fluxes of a frame of worse seeing are then cut short at 6 a: the pick
    # judges stars by fixed apertures; growing them with a seeing ratio lost stars on the real XO-1 night)
    grow = scale_of(m)
    src = _Sources(x0, y0, stars.a[on] * grow, stars.b[on] * grow, theta, stars.blended[on].copy(), seg,
                     forced=False, light=None if stars.light is None else stars.light[on],
                     win=None if stars.win is None else stars.win[on] * grow)
    tab, stats = measure_sources(frame, src, cfg, aper, gain, rdnoise, saturation)
    # a star counts where full extraction would have found it: inside a detected object (a cloudy
    # frame keeps only the stars still above the threshold, as before, and is judged by them)
    if n_det >= 0:
        ix = np.clip(np.rint(np.asarray(tab["X"], float)).astype(int), 0, nx - 1)
        iy = np.clip(np.rint(np.asarray(tab["Y"], float)).astype(int), 0, ny - 1)
        found = seg[iy, ix] != 0
    else:
        found = _detected(frame, tab["X"], tab["Y"], thresh)
    m = _refined(m, kind, stars.xy[on], tab, found & ((tab["X"] != x0) | (tab["Y"] != y0)))   # not left where
    # predicted (a windowed centroid moving >= 1 px keeps the prediction): the recentred stars refine m
    if not found.all():
        meta = dict(tab.meta)
        tab = tab[found]
        tab.meta.update(meta)
    stats["NSTARS"] = tab.meta["NSTARS"] = int(found.sum())
    stats.update(NDETECT=n_det, TRACK=kind, TRACKDX=float(m[0, 2]), TRACKDY=float(m[1, 2]))
    tab.meta.update(PHOTMODE="tracked", PHOTREF=Path(stars.ref).name, PHOTTRK=kind)
    tab.meta.update(transform_cards(m))            # step o uses it (offset.verify_transform): aligned once
    if n_det >= 0:
        tab.meta["NDETECT"] = n_det
    return tab, stats


def needs_candidates(cfg, given: np.ndarray) -> bool:
    """Whether the frames must carry the automatic pick's candidates: unless the stars are given
    (``starxy``) and no pick is asked for (``k``/``K`` not in ``steps``: step c then uses them)."""
    return not (len(given) and not any(s in cfg.steps for s in "kK"))


def given_positions(cfg, obj: str) -> np.ndarray:
    """The ``starxy`` of ``obj`` (reference-frame positions always measured), (n, 2)."""
    xy = cfg.for_object("starxy", obj) if obj else None
    return np.asarray(xy or [], dtype=float).reshape(-1, 2)


def target_positions(bf: str | Path, cfg, obj: str) -> np.ndarray:
    """Reference-frame pixel positions (n, 2) of the group's targets given by sky position
    (``targets``, ``target_catalog``; :func:`qlcp.core.targets.targets_for`), through the reference's
    header WCS when it passes the checks: measured on every frame however faint.  Empty without
    targets or such a WCS (a WCS that step w solves comes later: then only ``starxy`` and the pick's
    candidates are measured)."""
    from .. import targets as T
    from ..astrometry import WcsRejected, header_wcs, scale_hint_of
    from ..io import read_header

    none = np.empty((0, 2))
    try:
        tg = T.all_targets(cfg)
        if not tg:
            return none
        hdr = read_header(bf)
        wcs = header_wcs(hdr, scale_hint_of(hdr, getattr(cfg, "pixel_scale", None)))
        on = T.targets_for(tg, obj, wcs, (int(hdr["NAXIS2"]), int(hdr["NAXIS1"])))
    except (WcsRejected, InputError, OSError, KeyError, ValueError) as e:
        log.debug("%s: targets not placed on the reference (%s)", Path(bf).name, e)
        return none
    return T.sky_to_pixel(wcs, on).reshape(-1, 2) if on else none
