"""Step p on crowded fields: measure on every frame only the stars that matter, tracked from a reference.

A field with 1,500 sources costs the full measurement (:func:`qlcp.core.photometry.measure`:
deblending, windowed centroids, half-light radii, annulus skies) of every one of
them, on every frame, though a light curve needs a few dozen.  So the group's
*reference frame* (its first frame, the one whose coordinates time the group)
is measured in full, once, and from it comes the :class:`StarSet`: the stars
measured on every frame --

* the ``pick_star_n`` brightest unsaturated sources (the candidates the automatic
  pick examines: targets, comparisons and checks come from them), then the
  saturated ones while room is left, so a sparse field keeps all its sources;
* the given ``starxy`` positions (a target fainter than that is added even where
  nothing was detected);

and its alignment stars (the brightest unflagged ones).  Every other frame is
then *tracked* (:func:`measure_tracked`): background, one extraction without
deblending (its segmentation map masks the sources in the sky annuli, its
brightest objects align the frame on the reference by shift, or by similarity
after a meridian flip), and the measurement of the set at the predicted positions,
recentred on their windowed centroids, by the same code as the full measurement.
Per frame this costs the same on a field of 100 or 1,500 sources, less a
deblending-free extraction; a frame that does not align is measured in full, as
before, and the alignment step (o) deals with it.

``frame_catalogues: full`` measures every source of every frame (the original's
catalogues); ``stars`` (default) is the above.  A target by sky position that is
fainter than the ``pick_star_n``-th brightest source of a crowded reference frame is
not measured: raise ``pick_star_n`` or give its position (``starxy``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import offset as off_mod
from . import photometry as P
from .errors import InputError

log = logging.getLogger("qlcp.photometry")

#: most alignment stars per frame (the reference's and each frame's brightest)
ALIGN_N = 60
#: a given position is that source of the reference when within this many px (or its FWHM)
GIVEN_MATCH = 3.0
#: flags that keep a source out of the alignment stars (border, saturated, blended, bad flux, cosmic)
_ALIGN_BAD = P.FLAG_BORDER | P.FLAG_SATURATED | P.FLAG_BLENDED | P.FLAG_BADFLUX | P.FLAG_COSMIC


@dataclass
class StarSet:
    """The stars a group measures on every frame, from its reference frame.

    Attributes
    ----------
    ref : str
        File name of the reference (corrected) frame.
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

    def __len__(self) -> int:
        return len(self.xy)


def star_set(data, cfg, gain: float, rdnoise: float, saturation: float, ref: str, n_max: int,
             given_xy=(), aper=None) -> StarSet:
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

    Raises
    ------
    InputError
        The reference frame has no source (a frame cannot be tracked on it).
    """
    box: dict = {}
    tab, stats = P.measure(data, cfg, gain, rdnoise, saturation, aper=aper, sources_out=box)
    src = box.get("sources")
    if src is None or len(tab) == 0:
        raise InputError(f"{ref}: no source on the reference frame")
    flags = np.asarray(tab["Flags"])
    fa = np.asarray(tab["FluxAUTO"], dtype=float)
    usable = np.isfinite(fa) & (fa > 0)
    sat = (flags & P.FLAG_SATURATED) != 0
    order = np.lexsort((-np.where(usable, fa, 0.0), sat))          # unsaturated first, then by flux
    idx = [int(i) for i in order if usable[i]][:max(int(n_max), 1)]
    xy = np.column_stack([np.asarray(tab["X"], float), np.asarray(tab["Y"], float)])
    a, b, th, bl = src.a, src.b, src.theta, src.merged
    extra = []
    fwhm = stats["FWHM"] if np.isfinite(stats["FWHM"]) else 0.0
    for gx, gy in np.asarray(given_xy, dtype=float).reshape(-1, 2):
        d = np.hypot(xy[:, 0] - gx, xy[:, 1] - gy)
        j = int(np.argmin(d))
        if d[j] <= max(GIVEN_MATCH, fwhm):
            if j not in idx:
                idx.append(j)
        else:
            extra.append((gx, gy))
    idx = np.asarray(idx, dtype=int)
    sig = (fwhm or 3.0) / P._GAUSS_FWHM
    n_extra = len(extra)
    good = ((flags & _ALIGN_BAD) == 0) & usable
    al = np.flatnonzero(good)
    al = al[np.argsort(-fa[al], kind="stable")][:ALIGN_N]
    return StarSet(ref=ref,
                   xy=np.vstack([xy[idx], np.asarray(extra, float).reshape(-1, 2)]),
                   a=np.concatenate([a[idx], np.full(n_extra, sig)]),
                   b=np.concatenate([b[idx], np.full(n_extra, sig)]),
                   theta=np.concatenate([th[idx], np.zeros(n_extra)]),
                   blended=np.concatenate([bl[idx], np.zeros(n_extra, bool)]),
                   align_xy=xy[al], align_flux=fa[al], n_sources=len(tab))


def _align(stars: StarSet, objs, max_dis: float) -> off_mod.OffsetResult:
    """The reference -> frame transform from the frame's brightest objects: a shift, else a similarity."""
    fl = np.asarray(objs["flux"], dtype=float)
    ok = np.isfinite(fl) & (fl > 0)
    ix = np.flatnonzero(ok)
    ix = ix[np.argsort(-fl[ix], kind="stable")][:ALIGN_N]
    fxy = np.column_stack([np.asarray(objs["x"], float)[ix], np.asarray(objs["y"], float)[ix]])
    if len(fxy) < off_mod.MIN_MATCH or len(stars.align_xy) < off_mod.MIN_MATCH:
        return off_mod._fail(f"{len(fxy)} stars on the frame, {len(stars.align_xy)} on the reference")
    n_ref = len(stars.align_xy)
    res = off_mod.find_offset(stars.align_xy, stars.align_flux, fxy, fl[ix], max_dis=max_dis)
    if not off_mod._poor(res, len(fxy), n_ref):
        return res
    # as step o does: a poor shift is tried as a similarity (a meridian flip, a turned camera);
    # what still pairs few stars is not tracked (its catalogue would hold wrong stars): measured in full
    sim = off_mod.find_similarity(stars.align_xy, stars.align_flux, fxy, fl[ix])
    best = sim if off_mod._better(sim, res, stars.align_xy) else res
    if off_mod._poor(best, len(fxy), n_ref):
        return off_mod._fail(f"{best.reason}; {best.n_matched} of {min(len(fxy), n_ref)} stars paired",
                             best.n_matched, best.kind)
    return best


def measure_tracked(data, cfg, gain: float, rdnoise: float, saturation: float, stars: StarSet,
                    aper=None, max_dis: float = 250.0) -> tuple | None:
    """Measure the :class:`StarSet` on a frame, at positions tracked from the reference.

    Returns
    -------
    (table, stats) or None
        As :func:`qlcp.core.photometry.measure`, one row per star of the set that is detected
        on the frame (its position inside an object of the extraction; reference order); ``stats`` adds ``NDETECT`` (objects found without
        deblending), ``TRACK`` (``shift`` or ``similarity``) and ``TRACKDX``/``TRACKDY`` (px).
        None when the frame does not align on the reference (measure it in full).
    """
    aper, rdnoise, saturation = P._check_settings(cfg.aper if aper is None else aper, gain, rdnoise, saturation)
    frame = P._background(data, cfg)
    if not (np.isfinite(frame.rms) and frame.rms > 0):
        return None
    objs, seg = P._extract(frame.sub, cfg.detect_thresh * frame.rms, frame.mask, cfg.detect_minarea, nthresh=1)
    res = _align(stars, objs, max_dis)
    if not res.ok:
        log.debug("not tracked on %s (%s): measured in full", stars.ref, res.reason)
        return None
    m = res.matrix()
    pos = off_mod.base_to_frame(m, stars.xy)
    ny, nx = frame.sub.shape
    on = (pos[:, 0] >= -0.5) & (pos[:, 0] <= nx - 0.5) & (pos[:, 1] >= -0.5) & (pos[:, 1] <= ny - 0.5)
    rot = math.atan2(m[1, 0], m[0, 0])
    theta = (stars.theta[on] + rot + math.pi / 2) % math.pi - math.pi / 2
    scale = off_mod.scale_of(m)
    src = P._Sources(pos[on, 0].copy(), pos[on, 1].copy(), stars.a[on] * scale, stars.b[on] * scale, theta,
                     stars.blended[on].copy(), seg, forced=False)
    tab, stats = P.measure_sources(frame, src, cfg, aper, gain, rdnoise, saturation)
    # a star counts where full extraction would have found it: inside a detected object (a cloudy
    # frame keeps only the stars still above the threshold, as before, and is judged by them)
    ix = np.clip(np.rint(np.asarray(tab["X"], float)).astype(int), 0, nx - 1)
    iy = np.clip(np.rint(np.asarray(tab["Y"], float)).astype(int), 0, ny - 1)
    found = seg[iy, ix] != 0
    if not found.all():
        meta = dict(tab.meta)
        tab = tab[found]
        tab.meta.update(meta)
    stats["NSTARS"] = tab.meta["NSTARS"] = int(found.sum())
    stats.update(NDETECT=int(len(objs)), TRACK=res.kind, TRACKDX=float(m[0, 2]), TRACKDY=float(m[1, 2]))
    tab.meta.update(PHOTMODE="tracked", PHOTREF=stars.ref, NDETECT=int(len(objs)))
    return tab, stats


def given_positions(cfg, obj: str) -> np.ndarray:
    """The ``starxy`` of ``obj`` (reference-frame positions always measured), (n, 2)."""
    xy = cfg.for_object("starxy", obj) if obj else None
    return np.asarray(xy or [], dtype=float).reshape(-1, 2)


def reference_of(bf: str | Path, cfg, obj: str = "", aper=None) -> StarSet | None:
    """The :class:`StarSet` of a group from its reference frame ``bf`` (a corrected frame);
    None, with a warning, when it cannot serve (then every frame is measured in full)."""
    from .correct import corrected_detector
    from .io import read_image

    try:
        data, hdr = read_image(bf)
        gain, rdnoise, saturation = corrected_detector(hdr, cfg)
        return star_set(data, cfg, gain, rdnoise, saturation, Path(bf).name, cfg.pick_star_n,
                        given_positions(cfg, obj), aper=aper)
    except (InputError, OSError, ValueError) as e:
        log.warning("%s: cannot be the photometry reference (%s): every frame measured in full", Path(bf).name, e)
        return None
