"""Step o: the offset of every corrected frame against the base image.

Output: ``{red}/offset_{obj}_{band}.ecsv`` (read back by later steps) and a
human-readable ``.txt``.  Convention: offset = position of a star in the frame
minus its position in the base image, in 0-based pixels.

Method
------
1. **Stars** (:func:`detect_stars`): sep background, extraction at a high
   threshold (10 sigma; 4 sigma when that finds fewer than 8 stars, e.g. a
   cloudy frame), edge-truncated, saturated and cosmic-ray-sharp objects
   dropped, the ``n_max`` brightest kept and re-centred with windowed
   positions (``sep.winpos``, SExtractor's XWIN/YWIN) for sub-pixel precision.
2. **Rough offset** (:func:`find_offset`): a 2-D vote over all pair
   differences (frame - base) of the brightest stars of both lists, inside the
   search box ``|offset - prior| <= max_dis`` per axis.  Each difference
   counts the differences within ``tol`` of it (a k-d tree on the
   difference points, no binning); the densest clusters are the candidates.
   ``qmatch.offset1d`` (the original's method: a histogram of the x and of the
   y differences, separately) adds one more candidate.  qmatch falls short
   on its own because the two axes are voted independently, so the x peak and
   the y peak can come from different chance pairs, and its 1-D background
   grows with the square of the number of stars: it breaks first on cloudy
   frames and frames full of cosmic rays.  The 2-D vote has a far lower
   background (chance pairs must agree in both axes) and still finds a
   re-pointing jump as large as ``max_dis``.  ``qmatch.mean_offset1d`` (cross
   matching of projected image profiles) is not used: it needs both images
   in memory, loops in Python over every trial shift, gives whole pixels
   only, and has no measure of whether its answer is right; the star lists
   give all three.  No rotation is searched: frames
   of one night on one telescope differ by a shift (triangle matching,
   ``qmatch.match_triangle``, is not needed).
3. **Verification and refinement**: every candidate is applied, stars are
   paired one-to-one with the nearest star within ``2 tol`` then ``tol``
   (``scipy.spatial.cKDTree``), and the offset is the 3-sigma-clipped
   (median/MAD) mean of the paired differences: 0.01 px or better on a good
   frame (0.002 px on simulated 1024x1024 frames with 200 stars).  The candidate with most pairs wins.  It is accepted (``ok``) only
   with at least 3 pairs, no different offset with as many pairs, and a
   false-alarm probability below 1e-3 (:func:`false_alarm`: the chance that
   that many pairs, as tight as they are, turn up by chance anywhere in the
   search box, given the star density).  So 3 or 4 stars through clouds are
   enough when they agree to a fraction of a pixel, while 3 loose chance
   pairs in a sparse field are rejected.  Otherwise ``ok`` is False, dx, dy
   are NaN and ``reason`` says why.  A failed frame never stops the step.

Drift and jumps (:func:`compute_offsets`): every frame is matched against the
base star list, never chained frame to frame, so errors do not accumulate.
Every frame is first searched in a box centred on the base position (the
frames independently, so in parallel).  A walk outwards from the base image
(base..last, then base-1..first) then keeps the offset of the previous good
frame (the *prior*): a frame whose base-centred offset is missing, or further
than ``offset_max_dis`` from the prior, is searched again in a box centred on
the prior, so ``offset_max_dis`` bounds the jump from one frame to the next,
and a slow drift can take the field further than ``offset_max_dis`` from the
base over the night.  When that search fails too, the base-centred result
stands (a telescope re-pointed back to the start).  The table keeps the given
order.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sep
from astropy.table import Table
from scipy.spatial import cKDTree
from scipy.special import gammainc

from .correct import corrected_detector
from .errors import ConfigError, InputError
from .io import FITS_SUFFIXES, raw_stem, read_header, read_image, write_table
from .products import product_path

try:  # the original's matcher; optional here (one extra candidate)
    import qmatch as _qmatch
except ImportError:  # pragma: no cover - qmatch is a declared dependency
    _qmatch = None

log = logging.getLogger("qlcp.offset")

#: pairing radius, px (vote cluster radius and final match radius)
MATCH_TOL = 2.0
#: fewest paired stars for an accepted offset
MIN_MATCH = 3
#: largest false-alarm probability of an accepted match (see :func:`false_alarm`)
FAP_MAX = 1e-3
#: smallest radius, px, in which genuine pairs are assumed to scatter (false_alarm)
FAP_RMIN = 0.3
#: stars of each list used in the pair vote
N_VOTE = 60
#: candidates (distinct vote peaks) verified by matching
N_CAND = 3
#: objects whose peak reaches this fraction of saturation are dropped
SAT_FRACTION = 0.95
#: objects whose peak pixel holds this many times the median share of its 3x3
#: neighbourhood are dropped (cosmic rays: 1 px wide tracks and hits)
SHARP_FACTOR = 1.6
#: sigma clipping of the paired differences
CLIP_SIGMA = 3.0
#: floor of the clipping sigma, px (noise-free lists would clip everything)
CLIP_FLOOR = 0.05
#: with fewer pairs than this the MAD is meaningless: clip at a fixed distance instead
CLIP_MIN_N = 6
#: that fixed clipping distance from the median, px
CLIP_FIXED = 1.0

METHOD = ("sep stars (winpos) + 2-D pair-difference vote (+qmatch.offset1d candidate) "
          "+ one-to-one nearest match, 3-sigma-clipped mean; search box at the base, "
          "else at the previous good frame's offset")


@dataclass(frozen=True)
class OffsetResult:
    """Offset of one frame against the base.

    Attributes
    ----------
    dx, dy : float
        Position in the frame minus position in the base, px (NaN when not ok).
    n_matched : int
        Stars paired after clipping (the best candidate's, even when not ok).
    ok : bool
        Whether the offset is reliable.
    reason : str
        ``"ok"``, or why the frame failed.
    rms : float
        RMS of the paired differences about the offset, px.
    """

    dx: float
    dy: float
    n_matched: int
    ok: bool
    reason: str
    rms: float = math.nan


def _fail(reason: str, n: int = 0) -> OffsetResult:
    return OffsetResult(math.nan, math.nan, int(n), False, reason)


# --------------------------------------------------------------- star lists
def _as_xy(xy, name: str) -> np.ndarray:
    """``(x, y)`` pair of 1-D arrays, or an (N, 2) array -> float (N, 2) array."""
    if isinstance(xy, (tuple, list)) and len(xy) == 2 and np.ndim(xy[0]) == 1:
        a = np.column_stack([np.asarray(xy[0], float), np.asarray(xy[1], float)])
    else:
        a = np.asarray(xy, float)
        if a.size == 0:
            return np.zeros((0, 2))
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"{name}: expected (x, y) arrays or an (N, 2) array, got shape {a.shape}")
    return a.reshape(-1, 2)


def _clean(xy, flux, name):
    xy = _as_xy(xy, name)
    flux = np.full(len(xy), 1.0) if flux is None else np.asarray(flux, float).ravel()
    if len(flux) != len(xy):
        raise ValueError(f"{name}: {len(xy)} positions but {len(flux)} fluxes")
    good = np.isfinite(xy).all(axis=1)
    flux = np.where(np.isfinite(flux), flux, -np.inf)
    return xy[good], flux[good]


def _brightest(flux: np.ndarray, n: int) -> np.ndarray:
    return np.argsort(-flux, kind="stable")[:n]


# ------------------------------------------------------------ matching core
def _pair(frame_xy, base_tree, off, tol):
    """One-to-one pairs: each frame star with its nearest base star within tol."""
    dist, j = base_tree.query(frame_xy - off, distance_upper_bound=tol)
    i = np.flatnonzero(np.isfinite(dist))
    if len(i) == 0:
        return i, i
    j = j[i]
    # one frame star per base star: keep the closest
    order = np.argsort(dist[i], kind="stable")
    _, first = np.unique(j[order], return_index=True)
    keep = order[first]
    return i[keep], j[keep]


def _median0(a: np.ndarray) -> np.ndarray:
    """``np.median(a, axis=0)`` of a small (N, 2) array (N >= 1), without its per-call overhead."""
    s = np.sort(a, axis=0)
    n = len(s)
    return 0.5 * (s[(n - 1) // 2] + s[n // 2])


def _clipped_mean(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3-sigma (median/MAD) clipped mean of (N, 2) differences; returns mean, kept mask.

    Below ``CLIP_MIN_N`` pairs, differences further than ``CLIP_FIXED`` px from
    the median are dropped instead (a wrong pair is off by more than that).
    """
    keep = np.ones(len(d), bool)
    for _ in range(5):
        med = _median0(d[keep])
        if keep.sum() < CLIP_MIN_N:
            lim = np.full(2, CLIP_FIXED)
        else:
            lim = CLIP_SIGMA * np.maximum(1.4826 * _median0(np.abs(d[keep] - med)), CLIP_FLOOR)
        new = (np.abs(d - med) <= lim).all(axis=1)
        if new.sum() < 2 or np.array_equal(new, keep):
            keep = new if new.sum() >= 2 else keep
            break
        keep = new
    return d[keep].mean(axis=0), keep


def _refine(frame_xy, base_xy, base_tree, start, tol):
    """Pair around ``start`` (2 tol, then tol twice), clip; -> (offset, n, rms)."""
    off = np.asarray(start, float)
    n, rms = 0, math.nan
    for radius in (2 * tol, tol, tol):
        i, j = _pair(frame_xy, base_tree, off, radius)
        if len(i) == 0:
            return off, 0, math.nan
        d = frame_xy[i] - base_xy[j]
        if len(i) == 1:
            off, n, rms = d[0], 1, 0.0
            continue
        off, keep = _clipped_mean(d)
        n = int(keep.sum())
        rms = float(np.sqrt(np.mean(np.sum((d[keep] - off) ** 2, axis=1))))
    return off, n, rms


def _vote(fb, bb, prior, max_dis, tol, n_cand):
    """Densest clusters of pair differences ``fb - bb`` in the box around ``prior``."""
    d = (fb[:, None, :] - bb[None, :, :]).reshape(-1, 2) - prior
    d = d[(np.abs(d) <= max_dis + tol).all(axis=1)]
    if len(d) == 0:
        return []
    counts = cKDTree(d).query_ball_point(d, tol, return_length=True)
    order = np.argsort(-counts, kind="stable")
    free = np.ones(len(d), bool)
    cands = []
    for k in order:
        if len(cands) >= n_cand or counts[k] < 2:
            break
        if not free[k]:
            continue
        near = np.hypot(*(d - d[k]).T)
        cands.append(np.median(d[near <= tol], axis=0) + prior)
        free &= near > 2 * tol
    return cands


def _qmatch_candidate(fb, bb, prior, max_dis, tol):
    if _qmatch is None or len(fb) < 2 or len(bb) < 2:
        return None
    bins = max(20, int(round(2 * max_dis / tol)))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            ox, _ = _qmatch.offset1d(fb[:, 0] - prior[0], bb[:, 0], maxd=max_dis, bins=bins)
            oy, _ = _qmatch.offset1d(fb[:, 1] - prior[1], bb[:, 1], maxd=max_dis, bins=bins)
        except (ValueError, IndexError):
            return None
    if not (np.isfinite(ox) and np.isfinite(oy)):
        return None
    return np.array([ox, oy]) + prior


def false_alarm(n: int, rms: float, n_frame: int, base_xy: np.ndarray, max_dis: float,
                tol: float = MATCH_TOL) -> float:
    """Probability that ``n`` pairs this tight arise by chance somewhere in the search box.

    Chance pairs at a trial offset are Poisson with mean
    ``lam = n_frame * rho * pi r^2``: ``rho`` is the density of base stars
    (their number over their bounding box) and ``r = clip(3 rms, 0.3, tol)``
    the radius in which the pairs actually scatter (genuine pairs are tight,
    chance pairs spread over the whole ``tol``).  The search box holds
    ``K = (2 max_dis)^2 / (pi r^2)`` independent trial offsets, so the
    false-alarm probability is ``K * P(Poisson(lam) >= n)`` (at most 1).
    """
    r = float(np.clip(3 * rms if np.isfinite(rms) else tol, FAP_RMIN, tol))
    w = max(float(np.ptp(base_xy[:, 0])), 2 * tol) if len(base_xy) else 2 * tol
    h = max(float(np.ptp(base_xy[:, 1])), 2 * tol) if len(base_xy) else 2 * tol
    rho = len(base_xy) / (w * h)
    cell = math.pi * r * r
    lam = n_frame * rho * cell
    k = max(1.0, (2 * max_dis) ** 2 / cell)
    return float(min(1.0, k * gammainc(n, lam))) if n > 0 else 1.0


def find_offset(base_xy, base_flux, frame_xy, frame_flux, max_dis: float = 250.0,
                prior: tuple[float, float] = (0.0, 0.0), *, tol: float = MATCH_TOL,
                min_match: int = MIN_MATCH, fap_max: float = FAP_MAX,
                n_vote: int = N_VOTE) -> OffsetResult:
    """Offset of a frame's star list against the base star list.

    Parameters
    ----------
    base_xy, frame_xy : (x, y) pair of 1-D arrays, or (N, 2) array
        0-based star positions.
    base_flux, frame_flux : array or None
        Fluxes (any unit; only their order matters: the brightest stars vote).
    max_dis : float
        Largest offset searched, per axis, around ``prior`` (px).
    prior : (float, float)
        Centre of the search box (e.g. the previous good frame's offset).
    tol : float
        Pairing radius, px.
    min_match : int
        Fewest paired stars for ``ok``.
    fap_max : float
        Largest accepted false-alarm probability (:func:`false_alarm`).
    n_vote : int
        Brightest stars of each list used in the vote.

    Returns
    -------
    OffsetResult
        Never raises on bad star lists: ``ok`` is False with a reason.
    """
    bxy, bfl = _clean(base_xy, base_flux, "base_xy")
    fxy, ffl = _clean(frame_xy, frame_flux, "frame_xy")
    nb, nf = len(bxy), len(fxy)
    if nf == 0:
        return _fail("no stars in frame")
    if nb == 0:
        return _fail("no stars in base image")
    if nf < min_match:
        return _fail(f"only {nf} star(s) in frame, need {min_match}")
    if nb < min_match:
        return _fail(f"only {nb} star(s) in base image, need {min_match}")
    prior = np.asarray(prior, float)
    if not np.isfinite(prior).all():
        prior = np.zeros(2)

    fb = fxy[_brightest(ffl, n_vote)]
    bb = bxy[_brightest(bfl, n_vote)]
    cands = _vote(fb, bb, prior, max_dis, tol, N_CAND)
    qc = _qmatch_candidate(fb, bb, prior, max_dis, tol)
    if qc is not None and not any(np.hypot(*(qc - c)) <= tol for c in cands):
        cands.append(qc)          # (one within tol of a vote's candidate would refine to the same)
    if not cands:
        return _fail(f"no consistent star pairs within {max_dis:g} px of ({prior[0]:.1f}, {prior[1]:.1f})")

    tree = cKDTree(bxy)
    results = []
    for c in cands:
        off, n, rms = _refine(fxy, bxy, tree, c, tol)
        if n > 0 and np.isfinite(off).all():
            results.append((n, -rms if np.isfinite(rms) else -np.inf, off, rms))
    if not results:
        return _fail("no star pairs at any candidate offset")
    results.sort(key=lambda r: (r[0], r[1]), reverse=True)
    n, _, off, rms = results[0]

    if n < min_match:
        return _fail(f"only {n} star(s) matched, need {min_match} (of {nf} in frame, {nb} in base)", n)
    fap = false_alarm(n, rms, nf, bxy, max_dis, tol)
    if fap > fap_max:
        return _fail(f"no reliable match: {n} of {nf} stars matched at ({off[0]:.1f}, {off[1]:.1f}) "
                     f"with rms {rms:.2f} px, as likely by chance (p={fap:.2g})", n)
    if (np.abs(off - prior) > max_dis + tol).any():
        return _fail(f"offset ({off[0]:.1f}, {off[1]:.1f}) beyond max_dis {max_dis:g} px", n)
    for n2, _, off2, _ in results[1:]:
        if n2 >= n and np.hypot(*(off2 - off)) > 2 * tol:
            return _fail(f"ambiguous: ({off[0]:.1f}, {off[1]:.1f}) and ({off2[0]:.1f}, {off2[1]:.1f}) "
                         f"both match {n} stars", n)
    return OffsetResult(float(off[0]), float(off[1]), int(n), True, "ok", float(rms))


# ------------------------------------------------------------ star detection
def _sharpness(sub: np.ndarray, xp, yp) -> np.ndarray:
    """Peak pixel over the sum of the 3x3 pixels around it (star FWHM 3 px: ~0.16; a track: ~0.3+)."""
    ny, nx = sub.shape
    xp = np.clip(np.asarray(xp, int), 1, nx - 2)
    yp = np.clip(np.asarray(yp, int), 1, ny - 2)
    tot = np.zeros(len(xp))
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            tot += sub[yp + dy, xp + dx]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = sub[yp, xp] / tot
    return np.where(tot > 0, s, np.inf)


def detect_stars(data, n_max: int = 60, thresh: float = 10.0, *, thresh_low: float = 4.0,
                 n_min: int = 8, minarea: int = 5, saturation: float | None = None,
                 border: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fast detection of bright stars for alignment.

    Parameters
    ----------
    data : 2-D array
        Image (any float dtype or byte order; not modified).
    n_max : int
        Keep at most this many of the brightest stars.
    thresh : float
        Extraction threshold, in sigma of the global background RMS.
    thresh_low : float
        Threshold of a second extraction when the first keeps fewer than
        ``n_min`` stars (faint frames through clouds).
    n_min : int
        See ``thresh_low``.
    minarea : int
        Fewest pixels above threshold.
    saturation : float, optional
        Objects whose peak (with sky) reaches ``0.95 * saturation`` are dropped.
    border : int
        Objects closer than this to the edge are dropped.

    Returns
    -------
    x, y, flux : np.ndarray
        0-based windowed positions and background-subtracted isophotal fluxes,
        brightest first.  Empty arrays when nothing is found.
    """
    empty = (np.zeros(0), np.zeros(0), np.zeros(0))
    prepared = _detection_image(data)
    if prepared is None:
        return empty
    img, mask, bad = prepared
    try:
        bkg = sep.Background(img, mask=mask)
    except Exception as e:  # sep raises plain Exception on internal errors
        log.debug("sep.Background failed: %s", e)
        return empty
    sub = img - bkg
    rms = float(bkg.globalrms)
    if not np.isfinite(rms) or rms <= 0:
        rms = float(np.std(sub[~bad])) or 1.0
    objs = _extract_stars(sub, bkg, rms, mask, (thresh, thresh_low) if thresh_low < thresh else (thresh,),
                          n_min, minarea, saturation, border)
    if objs is None or len(objs) == 0:
        return empty
    objs = objs[_brightest(objs["flux"], n_max)]
    x, y = _windowed_positions(sub, objs, mask)
    return x, y, objs["flux"].astype(float)


def _detection_image(data) -> tuple[np.ndarray, np.ndarray | None, np.ndarray] | None:
    """Native-order float32 copy of ``data`` with non-finite pixels set to 0.

    Returns
    -------
    (img, mask, bad) or None
        ``bad``: the non-finite pixels; ``mask`` is ``bad`` when there are any,
        else None.  None when ``data`` is not a 2-D image or has no finite pixel.
    """
    img = np.ascontiguousarray(data, dtype=np.float32)
    if not img.dtype.isnative:
        img = img.astype(img.dtype.newbyteorder("="))
    if img.ndim != 2 or img.size == 0:
        return None
    bad = ~np.isfinite(img)
    mask = None
    if bad.any():
        if bad.all():
            return None
        mask = bad
        img = np.where(bad, np.float32(0), img)
    return img, mask, bad


def _extract_stars(sub: np.ndarray, bkg, rms: float, mask, thresholds: tuple, n_min: int, minarea: int,
                   saturation: float | None, border: int):
    """Extract objects at each threshold in turn until at least ``n_min`` are kept.

    Dropped: truncated or singular objects, those within ``border`` of the edge,
    of non-positive flux, near saturation (peak + global background >=
    ``SAT_FRACTION * saturation``), and, among 5 or more, the cosmic rays
    (:func:`_sharpness` above ``SHARP_FACTOR`` times the median).

    Returns
    -------
    structured array or None
        sep objects kept at the last threshold tried; None when every extraction failed.
    """
    ny, nx = sub.shape
    objs = None
    for th in thresholds:
        try:
            o = sep.extract(sub, th, err=rms, mask=mask, minarea=minarea)
        except Exception as e:  # pixel stack / deblend overflow
            log.debug("sep.extract at %.1f sigma failed: %s", th, e)
            continue
        keep = (o["flag"] & (sep.OBJ_TRUNC | sep.OBJ_SINGU)) == 0
        keep &= (o["x"] >= border) & (o["x"] <= nx - 1 - border)
        keep &= (o["y"] >= border) & (o["y"] <= ny - 1 - border)
        keep &= o["flux"] > 0
        if saturation is not None:
            keep &= o["peak"] + bkg.globalback < SAT_FRACTION * saturation
        o = o[keep]
        if len(o) >= 5:  # cosmic rays: much sharper than the stars of the frame
            sharp = _sharpness(sub, o["xpeak"], o["ypeak"])
            o = o[sharp <= SHARP_FACTOR * np.median(sharp)]
        objs = o
        if len(o) >= n_min:
            break
    return objs


def _windowed_positions(sub: np.ndarray, objs, mask) -> tuple[np.ndarray, np.ndarray]:
    """Windowed centroids of the objects.

    Parameters
    ----------
    sub : ndarray
        Background-subtracted image.
    objs : structured array
        sep objects (``x, y, a, flux``).
    mask : ndarray of bool or None
        Pixels to ignore.

    Returns
    -------
    x, y : ndarray
        ``sep.winpos`` with a Gaussian of the half-light radius; the isophotal
        centroid where it fails, is flagged or moves by 1 px or more.
    """
    x, y = objs["x"].astype(float), objs["y"].astype(float)
    try:
        rmax = np.maximum(6.0 * objs["a"], 3.0)
        rh, _ = sep.flux_radius(sub, x, y, rmax, 0.5, normflux=objs["flux"], mask=mask, subpix=5)
        sig = 2.0 / 2.35 * np.clip(np.nan_to_num(rh, nan=1.5), 0.5, 10.0)
        xw, yw, wflag = sep.winpos(sub, x, y, sig, mask=mask)
        good = (wflag == 0) & np.isfinite(xw) & np.isfinite(yw) & (np.hypot(xw - x, yw - y) < 1.0)
        x = np.where(good, xw, x)
        y = np.where(good, yw, y)
    except Exception as e:  # keep the isophotal centroids
        log.debug("winpos refinement failed: %s", e)
    return x, y


# ------------------------------------------------------------- whole night
def _bf_key(path) -> str:
    """``.../UYUMa-0003I.bf.fits`` or ``UYUMa-0003I.fit`` -> ``UYUMa-0003I``."""
    name = Path(str(path)).name
    s = raw_stem(name) if name.lower().endswith(FITS_SUFFIXES) else name
    return s[:-3] if s.endswith(".bf") else s


def _resolve_base(spec, files: list[Path]) -> tuple[int | None, Path]:
    """Index into ``files`` (None for a file outside the list) and path of the base image.

    An int is an index from 0 (negative from the end).  A bare file name is
    matched by raw stem against the list (``X.fit``, ``X.bf.fits`` and ``X``
    all name frame ``X``).  A path with a directory is that file, unless it is
    one of the list's files; a path that does not exist falls back to the
    name match.  A string of digits not naming a file is an index.
    """
    n = len(files)
    if spec is None:
        spec = 0
    if isinstance(spec, bool):
        raise ConfigError(f"base_img {spec!r}: expected an index or a file name")
    if isinstance(spec, (int, np.integer)):
        i = int(spec)
        if not -n <= i < n:
            raise ConfigError(f"base_img {i}: out of range, there are {n} frames (index from 0)")
        return i % n, files[i]
    spec = str(spec).strip()
    p = Path(spec)
    bare = p.name == spec
    if not bare:
        try:
            rp = p.resolve()
            for i, f in enumerate(files):
                if f.resolve() == rp:
                    return i, f
        except OSError:
            pass
        if p.is_file():
            return None, p
    key = _bf_key(spec)
    for i, f in enumerate(files):
        if _bf_key(f) == key:
            return i, f
    if p.is_file():
        return None, p
    if spec.lstrip("-").isdigit():
        return _resolve_base(int(spec), files)
    raise InputError(f"base_img {spec!r}: not a frame of this list and no such file")


def _saturation(cfg, hdr) -> float:
    """Saturation of a corrected frame, in its own ADU (:func:`qlcp.core.correct.corrected_detector`)."""
    return corrected_detector(hdr, cfg)[2]


def _stars(data, hdr, cfg):
    x, y, f = detect_stars(data, saturation=_saturation(cfg, hdr),
                           minarea=int(getattr(cfg, "detect_minarea", 5)))
    return np.column_stack([x, y]), f


def _jd(hdr) -> float:
    try:
        v = float(hdr["JD"])
        return v if math.isfinite(v) else math.nan
    except (KeyError, TypeError, ValueError):
        return math.nan


def _rawfile(hdr, path) -> str:
    v = hdr.get("RAWFILE") if hdr is not None else None
    return str(v).strip() if v not in (None, "") else _bf_key(path)


def _check_same_camera(base_path, base_data_shape, base_hdr, first: Path) -> None:
    try:
        hdr = read_header(first)
    except InputError:
        return
    shape = (hdr.get("NAXIS2"), hdr.get("NAXIS1"))
    if None not in shape and tuple(shape) != tuple(base_data_shape):
        raise InputError(f"base_img {base_path}: image is {base_data_shape[1]}x{base_data_shape[0]}, "
                         f"tonight's frames are {shape[1]}x{shape[0]}: not the same telescope "
                         "(or not a corrected frame)")
    for key in ("TELESCOP", "INSTRUME"):
        a, b = base_hdr.get(key), hdr.get(key)
        if a and b and str(a).strip() != str(b).strip():
            raise InputError(f"base_img {base_path}: {key} {a!r} differs from tonight's {b!r}")


def _serial_map(fn, items):
    return [fn(x) for x in items]


def _load_stars(path: Path, cfg, star_lists=None):
    """(xy, flux, header) of a frame: from ``star_lists`` when it gives them, else from the image."""
    got = star_lists(path) if star_lists else None
    if got is not None:
        return got
    data, hdr = read_image(path)
    xy, fl = _stars(data, hdr, cfg)
    return xy, fl, hdr


def _centred_chunk(args) -> list[tuple]:
    """Offsets of a chunk of frames in the search box centred on the base position.

    One job of the parallel phase of :func:`compute_offsets`:
    ``[(rawfile, jd, OffsetResult, n_stars), ...]`` (``n_stars`` -1: unreadable).
    """
    files, bxy, bfl, max_dis, cfg, star_lists = args
    out = []
    for f in files:
        f = Path(f)
        try:
            fxy, ffl, hdr = _load_stars(f, cfg, star_lists)
        except InputError as e:
            out.append((_rawfile(None, f), math.nan, _fail(f"unreadable: {e}"), -1))
            continue
        out.append((_rawfile(hdr, f), _jd(hdr), find_offset(bxy, bfl, fxy, ffl, max_dis, (0.0, 0.0)), len(fxy)))
    return out


def compute_offsets(bf_files, cfg, base_img=None, star_lists=None, map_fn=None) -> Table:
    """Offsets of corrected frames against the base image.

    Parameters
    ----------
    bf_files : list of Path
        Corrected frames (``*.bf.fits``), in time order.
    cfg : Config
        Uses ``offset_max_dis``, ``base_img``, ``saturation``, ``detect_minarea``.
    base_img : int or str, optional
        Overrides ``cfg.base_img``: an index from 0 into ``bf_files``, or a file
        name (matched by raw stem against the list) or path (a frame from
        another night of the same telescope).
    star_lists : callable(path) -> (xy, flux, header) or None, optional
        Star lists already measured (the photometry catalogues): used instead
        of reading and searching the image when it returns a list.  Module
        level (picklable) when ``map_fn`` runs jobs in other processes.
    map_fn : callable(fn, items) -> list, optional
        Map for the per-frame phase, e.g. a process pool's; default serial.
        The result does not depend on it.

    Returns
    -------
    astropy.table.Table
        One row per frame in the given order: file, bf, jd, dx, dy, n_matched,
        ok, reason; meta base, base_bf, base_index, base_nstars, method,
        max_dis, convention.

    Raises
    ------
    InputError
        No frames, an unknown or unusable base image (fewer than 3 stars, or
        another camera).
    ConfigError
        A base index out of range.

    Notes
    -----
    Two phases.  First, independently for every frame (in parallel through
    ``map_fn``), the search box is centred on the base position
    (:func:`_centred_offsets`).  Then a chain walks outwards from the base
    (:func:`_chain_offsets`).  So ``offset_max_dis`` bounds the jump from
    one frame to the next, and a slow drift can take the field further than
    ``offset_max_dis`` from the base over the night.
    """
    files = [Path(f) for f in bf_files]
    if not files:
        raise InputError("offset: no corrected frames to align")
    max_dis = float(getattr(cfg, "offset_max_dis", 250.0))
    spec = getattr(cfg, "base_img", 0) if base_img is None else base_img
    bidx, bpath = _resolve_base(spec, files)
    bxy, bfl, bhdr = _base_stars(bidx, bpath, files, cfg, star_lists)

    n = len(files)
    t0 = time.perf_counter()
    centred = _centred_offsets(files, bidx, bxy, bfl, max_dis, cfg, star_lists, map_fn or _serial_map)
    rows = _chain_offsets(files, bidx, bxy, bfl, bhdr, centred, max_dis, cfg, star_lists)
    dt = time.perf_counter() - t0

    tab = Table(rows=rows, names=("file", "bf", "jd", "dx", "dy", "n_matched", "ok", "reason"),
                dtype=(str, str, float, float, float, int, bool, str))
    tab["dx"].unit = tab["dy"].unit = "pix"
    n_ok = int(np.sum(tab["ok"]))
    tab.meta.update({
        "base": _rawfile(bhdr, bpath),
        "base_bf": str(bpath),
        "base_index": bidx,
        "base_nstars": len(bxy),
        "method": METHOD,
        "max_dis": max_dis,
        "convention": "offset = position in frame - position in base image, 0-based px",
        "n_ok": n_ok,
    })
    log.info("offsets: %d of %d frames ok (%.3f s/frame)", n_ok, n, dt / max(n, 1))
    return tab


def _base_stars(bidx: int | None, bpath: Path, files: list[Path], cfg, star_lists=None):
    """Stars of the base image: (xy, flux, header).

    A base outside the list (``bidx`` None) is read and searched, after
    checking it comes from the same camera as ``files[0]``; a base in the
    list is loaded as any frame (:func:`_load_stars`).

    Raises
    ------
    InputError
        Fewer than ``MIN_MATCH`` stars, or another camera.
    """
    if bidx is None:
        bdata, bhdr = read_image(bpath)
        _check_same_camera(bpath, bdata.shape, bhdr, files[0])
        bxy, bfl = _stars(bdata, bhdr, cfg)
        del bdata
    else:
        bxy, bfl, bhdr = _load_stars(bpath, cfg, star_lists)
    if len(bxy) < MIN_MATCH:
        raise InputError(f"{bpath}: base image has {len(bxy)} usable star(s), need {MIN_MATCH}; "
                         "choose another with base_img")
    log.info("base image %s: %d stars", bpath.name, len(bxy))
    return bxy, bfl, bhdr


def _centred_offsets(files: list[Path], bidx: int | None, bxy, bfl, max_dis: float, cfg, star_lists,
                     map_fn) -> dict:
    """Every frame but the base, searched around the base position, in 16 jobs through ``map_fn``.

    Returns
    -------
    dict
        Frame index -> ``(rawfile, jd, OffsetResult, n_stars)`` (:func:`_centred_chunk`).
    """
    others = [i for i in range(len(files)) if i != bidx]
    size = max(1, -(-len(others) // 16))            # 16 jobs: balanced over the workers
    jobs = [others[k:k + size] for k in range(0, len(others), size)]
    parts = map_fn(_centred_chunk, [([str(files[i]) for i in job], bxy, bfl, max_dis, cfg, star_lists)
                                    for job in jobs])
    return {i: r for job, part in zip(jobs, parts) for i, r in zip(job, part)}


def _chain_offsets(files: list[Path], bidx: int | None, bxy, bfl, bhdr, centred: dict, max_dis: float, cfg,
                   star_lists) -> list[tuple]:
    """Walk outwards from the base keeping the last good offset as the prior.

    The chain runs base..last, then base-1..first (the prior restarting at
    0), or first..last for a base outside the list.  A frame's base-centred
    result stands when it is good and within ``max_dis`` of the prior, as a
    search centred on the prior would find the same match; otherwise a frame
    with enough stars is searched again around the prior, and the
    base-centred result is the fallback (a telescope re-pointed back to the
    start).

    Returns
    -------
    list of tuple
        Per frame, in the given order: ``(file, bf, jd, dx, dy, n_matched, ok, reason)``.
    """
    n = len(files)
    order = list(range(n)) if bidx is None else list(range(bidx, n)) + list(range(bidx - 1, -1, -1))
    rows: list[tuple | None] = [None] * n
    prior = np.zeros(2)
    for i in order:
        f = files[i]
        if bidx is not None and i == bidx - 1:
            prior = np.zeros(2)  # the backward chain starts again at the base
        if i == bidx:
            name, jd = _rawfile(bhdr, f), _jd(bhdr)
            res = OffsetResult(0.0, 0.0, len(bxy), True, "ok (base image)", 0.0)
        else:
            name, jd, res, nstars = centred[i]
            near = res.ok and (np.abs(np.array([res.dx, res.dy]) - prior) <= max_dis).all()
            if nstars >= MIN_MATCH and prior.any() and not near:
                fxy, ffl, _ = _load_stars(f, cfg, star_lists)
                again = find_offset(bxy, bfl, fxy, ffl, max_dis, tuple(prior))
                if again.ok or not res.ok:
                    res = again
        if res.ok:
            prior = np.array([res.dx, res.dy])
        else:
            log.warning("%s: no offset: %s", f.name, res.reason)
        rows[i] = (name, str(f), jd, res.dx, res.dy, res.n_matched, res.ok, res.reason)
    return rows


# ------------------------------------------------------------------ output
def offset_paths(red_dir, obj: str, band: str) -> tuple[Path, Path]:
    """``{red}/offset_{obj}_{band}.ecsv`` and ``.txt``."""
    return product_path(red_dir, "offsets", obj, band), product_path(red_dir, "offsets_txt", obj, band)


def write_offsets(table: Table, red_dir, obj: str, band: str) -> tuple[Path, Path]:
    """Write the offset table as ECSV (machine-readable) and aligned text, atomically."""
    ecsv, txt = offset_paths(red_dir, obj, band)
    write_table(ecsv, table)
    t = table.copy(copy_data=True)
    t.meta.clear()
    if "bf" in t.colnames:
        t.remove_column("bf")
    for c, fmt in (("jd", ".6f"), ("dx", ".3f"), ("dy", ".3f")):
        if c in t.colnames:
            t[c].format = fmt
    write_table(txt, t)
    return ecsv, txt


def read_offsets(red_dir, obj: str, band: str) -> Table:
    """Read ``{red}/offset_{obj}_{band}.ecsv`` back (raises InputError when missing)."""
    ecsv, _ = offset_paths(red_dir, obj, band)
    if not ecsv.is_file():
        raise InputError(f"{ecsv}: offset table not found (run step o)")
    return Table.read(ecsv, format="ascii.ecsv")
