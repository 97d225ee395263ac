"""Step o: the offset (or transform) of every corrected frame against the base image.

Output: ``{red}/offset_{obj}_{band}.ecsv`` (read back by later steps) and a
human-readable ``.txt``.  Convention: offset = position of a star in the frame
minus its position in the base image, in 0-based pixels; in general the
transform base pixel -> frame pixel ``x' = m00 x + m01 y + m02,
y' = m10 x + m11 y + m12`` (columns ``m00..m12``; ``dx, dy`` = ``m02, m12``).
Every consumer maps positions with :func:`base_to_frame` and
:func:`frame_to_base`, which read a row of either form (a table without the
matrix columns is a table of shifts).

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
   give all three.  No rotation is searched here: frames of an ordinary
   night differ by a shift, and this search is cheap; rotation is item 4.
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
4. **Similarity** (:func:`find_similarity`), only for frames the shift
   search fails on or on which it pairs fewer than ``POOR_FRACTION`` of the
   smaller star list (a German-equatorial meridian flip turns the field by
   180 deg, a turned camera by a few): ``astroalign.find_transform`` on the
   two star lists (triangle-invariant asterisms, any rotation), then a
   least-squares similarity on every star paired within ``tol``, clipped as
   above, accepted with at least 3 pairs, a scale within 5 % of 1 and a
   false-alarm probability below 1e-3 over every shift and rotation
   (:func:`false_alarm_similarity`).  It replaces the shift only when it
   pairs clearly more stars, or as many with a turn that moves some star by
   more than ``TURN_PX``, and it must keep the field's centre within
   ``offset_max_dis`` of the base or of the neighbouring frames.  A frame too
   sparse for asterisms (clouds) is searched again as a shift against the
   base stars turned as the last frame aligned by a similarity.

Step p's transforms: a frame that step p tracked from this very base (its catalogue's
``PHOTREF`` and ``PHOTM00..PHOTM12``, :func:`qlcp.core.forced.transform_of`) is not searched: the
transform is checked by pairing the frame's stars through it (:func:`verify_transform`) and
used as is; only frames without one, or whose transform fails the check, are searched as below.

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
from dataclasses import dataclass, replace
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
#: a shift pairing fewer than this fraction of the smaller star list is tried again as a similarity
POOR_FRACTION = 0.4
#: brightest stars of each list given to astroalign (its control points)
N_SIM = 50
#: a similarity pairing as many stars as a shift replaces it when its turn moves a base star by more, px
TURN_PX = 0.5
#: a similarity refined from an accepted shift replaces it, pairing as many stars, when the shift's rms is
#: this many times the similarity's (a turn of a fraction of a pixel at the field's edge)
TURN_RMS_RATIO = 1.5
#: a fit with more parameters (a turn; a scale) replaces the simpler one when it lowers the sum of squared
#: residuals this significantly: F = (drop / extra) / (residual / dof) above this (F(1, 60) > 25: p < 1e-5)
TURN_F = 25.0
#: fewest pairs for refitting the rotation of a shift searched with a neighbour's rotation
REFIT_MIN = 6
#: largest accepted departure of a similarity's scale from 1 (a focus or temperature change, not another camera)
SCALE_TOL = 0.05
#: sigma clipping of the paired differences
CLIP_SIGMA = 3.0
#: floor of the clipping sigma, px (noise-free lists would clip everything)
CLIP_FLOOR = 0.05
#: with fewer pairs than this the MAD is meaningless: clip at a fixed distance instead
CLIP_MIN_N = 6
#: that fixed clipping distance from the median, px
CLIP_FIXED = 1.0

METHOD = ("step p's transform from the base, checked on the catalogue's stars, else: "
          "sep stars (winpos) + 2-D pair-difference vote (+qmatch.offset1d candidate) "
          "+ one-to-one nearest match, 3-sigma-clipped mean; search box at the base, "
          "else at the previous good frame's offset; frames failing it or pairing < 40 % of their stars: "
          "similarity transform (astroalign asterisms, refined by least squares on every star)")


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
    mat : tuple of 6 float or None
        The transform base pixel -> frame pixel ``(m00, m01, m02, m10, m11, m12)`` of a
        similarity match; None for a shift (the matrix is then :func:`shift_matrix` of dx, dy).
    kind : str
        ``"shift"`` (:func:`find_offset`) or ``"similarity"`` (:func:`find_similarity`).
    given : bool
        Step p's transform, checked (:func:`verify_transform`), not searched.
    shared : int
        Stars of the smaller list inside the other's field through the transform (:func:`with_shared`;
        -1 unknown): the stars that could pair on a frame that shares part of the base's field.
    """

    dx: float
    dy: float
    n_matched: int
    ok: bool
    reason: str
    rms: float = math.nan
    mat: tuple | None = None
    kind: str = "shift"
    given: bool = False
    shared: int = -1

    def matrix(self) -> np.ndarray:
        """The (2, 3) transform base pixel -> frame pixel (NaN when not ok)."""
        return np.array(self.mat, float).reshape(2, 3) if self.mat is not None else shift_matrix(self.dx, self.dy)


def _fail(reason: str, n: int = 0, kind: str = "shift") -> OffsetResult:
    return OffsetResult(math.nan, math.nan, int(n), False, reason, kind=kind)


# ------------------------------------------------------------- transforms
CONVENTION = ("offset = position in frame - position in base image, 0-based px; "
              "transform: x' = m00 x + m01 y + m02, y' = m10 x + m11 y + m12 (base -> frame)")
#: offsets-table columns of the transform base pixel -> frame pixel: x' = m00 x + m01 y + m02, y' = m10 x + ...
MATRIX_COLUMNS = ("m00", "m01", "m02", "m10", "m11", "m12")


def shift_matrix(dx: float, dy: float) -> np.ndarray:
    """The (2, 3) matrix of a pure shift: ``[[1, 0, dx], [0, 1, dy]]``."""
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])


def _get(t, name):
    """``t[name]`` of a table row or mapping, None when it has no such field."""
    names = t.colnames if hasattr(t, "colnames") else t.keys()
    return t[name] if name in names else None


def as_matrix(t) -> np.ndarray:
    """The (2, 3) transform base pixel -> frame pixel of an offsets-table row, a mapping or a matrix.

    Parameters
    ----------
    t : astropy Row, dict, or array of shape (2, 3) or (6,)
        A row (or dict) with ``m00..m12`` (used when all are finite), else ``dx, dy`` (a shift,
        as in tables written before the transform columns existed); a dict may hold ``mat``.

    Returns
    -------
    ndarray (2, 3)
    """
    if isinstance(t, (np.ndarray, list, tuple)):
        return np.asarray(t, float).reshape(2, 3)
    mat = _get(t, "mat")
    if mat is not None:
        return np.asarray(mat, float).reshape(2, 3)
    m = [_get(t, c) for c in MATRIX_COLUMNS]
    if all(v is not None for v in m) and np.all(np.isfinite(np.asarray(m, float))):
        return np.asarray(m, float).reshape(2, 3)
    return shift_matrix(float(t["dx"]), float(t["dy"]))


def base_to_frame(t, xy) -> np.ndarray:
    """Positions in the base image -> positions in a frame.

    Parameters
    ----------
    t : astropy Row, dict or array
        The frame's transform (:func:`as_matrix`): a row of the offsets table, an entry of
        :func:`qlcp.core.catalogue._offset_lookup`, or the (2, 3) matrix.
    xy : (N, 2) array or (x, y) pair of 1-D arrays
        0-based base-image positions.

    Returns
    -------
    ndarray (N, 2)
        0-based frame positions (a shift adds dx, dy exactly).
    """
    m = as_matrix(t)
    a = _as_xy(xy, "xy")
    x, y = a[:, 0], a[:, 1]
    return np.column_stack([m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]])


def frame_to_base(t, xy) -> np.ndarray:
    """Positions in a frame -> positions in the base image (the inverse of :func:`base_to_frame`).

    Parameters
    ----------
    t : astropy Row, dict or array
        The frame's transform (:func:`as_matrix`).
    xy : (N, 2) array or (x, y) pair of 1-D arrays
        0-based frame positions.

    Returns
    -------
    ndarray (N, 2)
        0-based base-image positions (a shift subtracts dx, dy exactly).
    """
    m = as_matrix(t)
    a = _as_xy(xy, "xy")
    x, y = a[:, 0] - m[0, 2], a[:, 1] - m[1, 2]
    det = m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]
    if m[0, 1] == 0.0 and m[1, 0] == 0.0 and m[0, 0] == 1.0 and m[1, 1] == 1.0:
        return np.column_stack([x, y])
    return np.column_stack([(m[1, 1] * x - m[0, 1] * y) / det, (-m[1, 0] * x + m[0, 0] * y) / det])


def rotation_deg(m) -> float:
    """Rotation angle of a (2, 3) similarity, degrees counter-clockwise, in [-90, 270).

    The range keeps a small turn of either sign near 0 and a meridian flip
    near 180 (not jumping between -180 and 180 from frame to frame).
    """
    m = as_matrix(m)
    a = math.degrees(math.atan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1]))
    return a + 360.0 if a < -90.0 else a


def scale_of(m) -> float:
    """Scale of a (2, 3) similarity (square root of the determinant)."""
    m = as_matrix(m)
    return math.sqrt(abs(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]))


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


# ------------------------------------------------------- similarity match
def _fit_similarity(b: np.ndarray, f: np.ndarray, w: np.ndarray | None = None, scale: bool = True) -> np.ndarray:
    """Least-squares similarity (rotation, scale, shift) taking points ``b`` onto ``f`` (weights ``w``,
    default equal); ``scale`` False: rotation and shift only (scale 1).  (2, 3) matrix."""
    w = np.ones(len(b)) if w is None else np.asarray(w, float)
    bc, fc = w @ b / w.sum(), w @ f / w.sum()
    zb = (b[:, 0] - bc[0]) + 1j * (b[:, 1] - bc[1])
    zf = (f[:, 0] - fc[0]) + 1j * (f[:, 1] - fc[1])
    c = np.sum(w * np.conj(zb) * zf)
    if scale:
        den = float(np.sum(w * np.abs(zb) ** 2))
        a = c / den if den > 0 else 1.0 + 0j
    else:
        a = c / abs(c) if abs(c) > 0 else 1.0 + 0j
    lin = np.array([[a.real, -a.imag], [a.imag, a.real]])
    return np.column_stack([lin, fc - lin @ bc])


def _pair_mapped(frame_xy: np.ndarray, mapped_base: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs (frame index, base index): each frame star with its nearest mapped base star."""
    return _pair(frame_xy, cKDTree(mapped_base), np.zeros(2), tol)


def _refine_similarity(frame_xy, base_xy, mat, tol) -> tuple[np.ndarray, int, float]:
    """Pair every star through ``mat`` (within 2 tol, then tol until the pairs settle), fit, clip.

    Returns
    -------
    mat : ndarray (2, 3)
    n : int
        Pairs kept after clipping.
    rms : float
        RMS residual of those pairs, px.
    """
    n, rms, last = 0, math.nan, None
    for k, radius in enumerate((2 * tol, tol, tol, tol, tol)):
        i, j = _pair_mapped(frame_xy, base_to_frame(mat, base_xy), radius)
        if len(i) < 3:
            return mat, len(i), math.nan
        key = (tuple(i), tuple(j))
        if k >= 2 and key == last:
            break
        last = key
        fit = _fit_similarity(base_xy[j], frame_xy[i])
        res = frame_xy[i] - base_to_frame(fit, base_xy[j])
        _, keep = _clipped_mean(res)
        mat = _fit_similarity(base_xy[j[keep]], frame_xy[i[keep]])
        res = frame_xy[i[keep]] - base_to_frame(mat, base_xy[j[keep]])
        n, rms = int(keep.sum()), float(np.sqrt(np.mean(np.sum(res ** 2, axis=1))))
    return mat, n, rms


def false_alarm_similarity(n: int, rms: float, n_frame: int, base_xy: np.ndarray, tol: float = MATCH_TOL) -> float:
    """Probability that ``n`` pairs this tight arise by chance for some similarity transform.

    :func:`false_alarm` with the search box covering every shift that keeps
    the fields overlapping (the base stars' extent), times the number of
    distinguishable rotations (``2 pi R / r``: ``R`` the field's half
    diagonal, ``r`` the pair scatter radius).
    """
    if len(base_xy) == 0:
        return 1.0
    half = 0.5 * math.hypot(float(np.ptp(base_xy[:, 0])), float(np.ptp(base_xy[:, 1])))
    r = float(np.clip(3 * rms if np.isfinite(rms) else tol, FAP_RMIN, tol))
    n_rot = max(1.0, 2 * math.pi * half / r)
    return float(min(1.0, n_rot * false_alarm(n, rms, n_frame, base_xy, max(half, tol), tol)))


def similarity_result(mat: np.ndarray, n: int, rms: float, how: str) -> OffsetResult:
    """An accepted :class:`OffsetResult` of kind ``similarity`` for the transform ``mat`` (``how`` in its reason)."""
    mat = np.asarray(mat, float).reshape(2, 3)
    return OffsetResult(float(mat[0, 2]), float(mat[1, 2]), int(n), True,
                        f"ok (similarity: rotation {rotation_deg(mat):.3f} deg, scale {scale_of(mat):.5f}, {how})",
                        float(rms), tuple(float(v) for v in mat.ravel()), "similarity")


def refine_turn(res: OffsetResult, base_xy, frame_xy, tol: float = MATCH_TOL, min_turn: float = 0.0) -> OffsetResult:
    """``res`` (an accepted shift or flip) refined as a similarity on the stars it pairs, no search: the
    pairs regathered through each least-squares fit (:func:`_refine_similarity`), so a field turned by a
    fraction of a degree pairs out to its edges.  The similarity replaces ``res`` when it is
    :func:`_better`, or pairs 80 % as many stars within ``tol`` with an rms below ``res``'s by
    :data:`TURN_RMS_RATIO` (a turn that moves the edge stars by a fraction of a pixel); ``res``
    otherwise (and when not ok).  ``min_turn`` (px): ``res`` as it is when one fit on its pairs moves no
    base star by that much (a caller that refines small turns itself skips the iterations)."""
    if not res.ok:
        return res
    bxy, fxy = _as_xy(base_xy, "base_xy"), _as_xy(frame_xy, "frame_xy")
    if min_turn > 0:
        i, j = _pair_mapped(fxy, base_to_frame(res.matrix(), bxy), tol)
        if len(i) < MIN_MATCH or np.abs(base_to_frame(_fit_similarity(bxy[j], fxy[i]), bxy)
                                        - base_to_frame(res.matrix(), bxy)).max() < min_turn:
            return res
    mat, n, rms = _refine_similarity(fxy, bxy, res.matrix(), tol)
    if n < MIN_MATCH or not np.isfinite(rms) or abs(scale_of(mat) - 1.0) > SCALE_TOL:
        return res
    sim = similarity_result(mat, n, rms, "refined on the pairs")
    if _better(sim, res, bxy):
        return sim
    # nearly as many stars within tol of either transform (the fit's clipping keeps fewer; a loose shift
    # gathers a chance pair or two), far tighter
    reach = len(_pair_mapped(fxy, base_to_frame(mat, bxy), tol)[0])
    tight = np.isfinite(res.rms) and res.rms > TURN_RMS_RATIO * rms
    return sim if tight and reach >= 0.8 * len(_pair_mapped(fxy, base_to_frame(res.matrix(), bxy), tol)[0]) else res


def verify_transform(mat, base_xy, frame_xy, tol: float = MATCH_TOL) -> OffsetResult:
    """A transform found elsewhere (step p's, from the same base), checked on these star lists without a
    search: the base stars mapped through ``mat`` paired one-to-one with the frame's within ``tol``.
    Accepted with at least :data:`MIN_MATCH` pairs that are not chance (:func:`false_alarm` over a
    box of ``tol``), and with at least :data:`POOR_FRACTION` of the base stars that land on the frame's
    stars' extent; ``mat`` itself is returned (a shift when it is one)."""
    mat = np.asarray(mat, float).reshape(2, 3)
    bxy, fxy = _as_xy(base_xy, "base_xy"), _as_xy(frame_xy, "frame_xy")
    if not np.isfinite(mat).all() or len(bxy) < MIN_MATCH or len(fxy) < MIN_MATCH:
        return _fail("the given transform cannot be checked (too few stars)")
    mapped = base_to_frame(mat, bxy)
    i, j = _pair_mapped(fxy, mapped, tol)
    lo, hi = fxy.min(axis=0) - tol, fxy.max(axis=0) + tol
    n_in = int(np.sum(((mapped >= lo) & (mapped <= hi)).all(axis=1)))
    d = fxy[i] - mapped[j]
    rms = float(np.sqrt(np.mean(np.sum(d ** 2, axis=1)))) if len(i) else math.nan
    n = len(i)
    if n < MIN_MATCH or n < POOR_FRACTION * min(n_in, len(fxy)) \
            or false_alarm(n, rms, len(fxy), bxy, tol, tol) > FAP_MAX:
        return _fail(f"the given transform pairs {n} of {min(n_in, len(fxy))} stars", n)
    shift = mat[0, 0] == 1.0 and mat[1, 1] == 1.0 and mat[0, 1] == 0.0 and mat[1, 0] == 0.0
    if shift:
        return OffsetResult(float(mat[0, 2]), float(mat[1, 2]), n, True, "ok (step p's shift)", rms, given=True)
    return replace(similarity_result(mat, n, rms, "step p's transform"), given=True)


def _astroalign_matrix(bb: np.ndarray, fb: np.ndarray) -> tuple[np.ndarray | None, str]:
    """astroalign's transform base -> frame from the two (brightest first) point lists, or None and why.
    Each call logs one INFO line ``astroalign.find_transform`` (the benchmark and the tests count them
    in the steps' logs: 1 s a call on 50 stars, the cost a night must not pay frame after frame)."""
    import astroalign

    log.info("astroalign.find_transform on %d and %d stars", len(bb), len(fb))
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            t, _ = astroalign.find_transform(bb, fb, max_control_points=max(len(bb), len(fb)))
    except (astroalign.MaxIterError, ValueError, TypeError, IndexError) as e:
        return None, f"astroalign found no transform ({type(e).__name__})"
    return np.asarray(t.params, float)[:2], ""


def find_similarity(base_xy, base_flux, frame_xy, frame_flux, *, tol: float = MATCH_TOL,
                    min_match: int = MIN_MATCH, fap_max: float = FAP_MAX, n_ctrl: int = N_SIM) -> OffsetResult:
    """Similarity transform (rotation of any angle, small scale change, shift) base -> frame.

    astroalign (triangle-invariant asterisms, RANSAC) matches the ``n_ctrl``
    brightest stars of each list; the transform is then refined on every
    star: one-to-one pairs within ``2 tol`` then ``tol`` of the mapped base
    stars, a least-squares similarity, 3-sigma clipping.  Accepted (``ok``)
    with at least ``min_match`` pairs, a scale within ``SCALE_TOL`` of 1 and
    a false-alarm probability (:func:`false_alarm_similarity`) below
    ``fap_max``.

    Parameters
    ----------
    base_xy, frame_xy : (x, y) pair of 1-D arrays, or (N, 2) array
        0-based star positions.
    base_flux, frame_flux : array or None
        Fluxes (only their order matters).
    tol : float
        Pairing radius, px.
    min_match : int
        Fewest pairs for ``ok``.
    fap_max : float
        Largest accepted false-alarm probability.
    n_ctrl : int
        Brightest stars of each list given to astroalign.

    Returns
    -------
    OffsetResult
        ``kind="similarity"``, ``mat`` the transform, ``dx, dy`` its translation
        (``m02, m12``); never raises on bad lists: ``ok`` False with a reason.
    """
    bxy, bfl = _clean(base_xy, base_flux, "base_xy")
    fxy, ffl = _clean(frame_xy, frame_flux, "frame_xy")
    if min(len(bxy), len(fxy)) < max(3, min_match):
        return _fail(f"similarity: {len(fxy)} star(s) in frame, {len(bxy)} in base", kind="similarity")
    mat0, why = _astroalign_matrix(bxy[_brightest(bfl, n_ctrl)], fxy[_brightest(ffl, n_ctrl)])
    if mat0 is None:
        return _fail(f"similarity: {why}", kind="similarity")
    mat, n, rms = _refine_similarity(fxy, bxy, mat0, tol)
    sc = scale_of(mat)
    if n < min_match:
        return _fail(f"similarity: only {n} star(s) matched, need {min_match}", n, "similarity")
    if abs(sc - 1.0) > SCALE_TOL:
        return _fail(f"similarity: scale {sc:.3f} is not a small change", n, "similarity")
    fap = false_alarm_similarity(n, rms, len(fxy), bxy, tol)
    if fap > fap_max:
        return _fail(f"similarity: {n} stars matched with rms {rms:.2f} px, as likely by chance (p={fap:.2g})",
                     n, "similarity")
    return OffsetResult(float(mat[0, 2]), float(mat[1, 2]), int(n), True,
                        f"ok (similarity: rotation {rotation_deg(mat):.3f} deg, scale {sc:.5f})", float(rms),
                        tuple(float(v) for v in mat.ravel()), "similarity")


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
    files, bxy, bfl, max_dis, cfg, star_lists, base_name, turn = args
    out = []
    for f in files:
        f = Path(f)
        try:
            fxy, ffl, hdr = _load_stars(f, cfg, star_lists)
        except InputError as e:
            out.append((_rawfile(None, f), math.nan, _fail(f"unreadable: {e}"), -1))
            continue
        res = _given_transform(hdr, base_name, bxy, fxy)
        if res is None or not res.ok or (res.kind != "shift" and not turn):     # turn False: shifts only
            res = _searched(bxy, bfl, fxy, ffl, max_dis, (0.0, 0.0), turn)
        out.append((_rawfile(hdr, f), _jd(hdr), res, len(fxy)))
    return out


def _searched(bxy, bfl, fxy, ffl, max_dis: float, prior, turn: bool = True) -> OffsetResult:
    """A frame's shift searched around ``prior`` (:func:`find_offset`), refined as a similarity when the
    field turns (:func:`refine_turn`; not when ``turn`` is False: shifts only), with its stars inside both
    fields counted (:func:`with_shared`)."""
    res = find_offset(bxy, bfl, fxy, ffl, max_dis, tuple(prior))
    return with_shared(refine_turn(res, bxy, fxy) if turn else res, bxy, fxy)


def _given_transform(hdr, base_name: str, bxy, fxy) -> OffsetResult | None:
    """Step p's transform of a frame (its catalogue's header, :func:`qlcp.core.forced.transform_of`),
    checked, when step p tracked it from this very base (``PHOTREF``); None without one."""
    from .forced import transform_of

    if hdr is None or not base_name or str(hdr.get("PHOTREF", "")).strip() != base_name:
        return None
    m = transform_of(hdr)
    if m is None:
        return None
    res = verify_transform(m, bxy, fxy)
    if not res.ok:
        log.debug("step p's transform of %s not used: %s", hdr.get("RAWFILE", "a frame"), res.reason)
    return res


def compute_offsets(bf_files, cfg, base_img=None, star_lists=None, map_fn=None, *,
                    similarity: bool = True) -> Table:
    """Transforms (shift, or rotation, scale and shift) of corrected frames against the base image.

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
        Map for the per-frame phases, e.g. a process pool's; default serial.
        The result does not depend on it.
    similarity : bool
        Try a similarity transform (:func:`find_similarity`) on the frames the
        shift search fails or matches poorly (default); False: shifts only.

    Returns
    -------
    astropy.table.Table
        One row per frame in the given order: file, bf, jd, dx, dy, n_matched,
        ok, reason, align (``shift``, ``similarity``, ``base``; ``none`` when not
        ok), rot_deg, scale, m00 m01 m02 m10 m11 m12 (the transform base pixel ->
        frame pixel, 0-based; NaN when not ok; :func:`base_to_frame`).  ``dx, dy``
        are the translation ``m02, m12`` (the offset of a frame that is not
        turned).  Meta: base, base_bf, base_index, base_nstars, method,
        max_dis, convention, n_ok, n_similarity.

    Raises
    ------
    InputError
        No frames; an unknown base, or a named one unusable (a default base that
        cannot serve is replaced by the frame with most stars).
    ConfigError
        A base index out of range.

    Notes
    -----
    Phases: a search around the base position (:func:`_centred_offsets`), a chain
    out from the base (:func:`_chain_offsets`), similarities where shifts fail
    (:func:`_similarity_pass`).
    """
    files = [Path(f) for f in bf_files]
    if not files:
        raise InputError("offset: no corrected frames to align")
    max_dis = float(getattr(cfg, "offset_max_dis", 250.0))
    spec = getattr(cfg, "base_img", 0) if base_img is None else base_img
    bidx, bpath = _resolve_base(spec, files)
    counts: list = []                       # stars per frame, counted once, when a base must be replaced
    try:
        base = _base_stars(bidx, bpath, files, cfg, star_lists)
    except InputError as e:                 # the default base (the first frame) cannot serve: the best frame
        if bidx != 0:                       # a base the operator named is theirs: the error says why
            raise
        bidx, bpath = _replacement_base(files, bidx, cfg, star_lists, counts, e)
        base = _base_stars(bidx, bpath, files, cfg, star_lists)

    t0 = time.perf_counter()
    mapper = map_fn or _serial_map
    run = (bidx, bpath, base, *_align_all(files, bidx, base, max_dis, cfg, star_lists, mapper, similarity))
    bidx, bpath, base, frames, _ = _retry_base(run, files, max_dis, cfg, star_lists, mapper, similarity, counts)
    return _finish_table(files, bidx, bpath, base, frames, max_dis, time.perf_counter() - t0)


def _finish_table(files, bidx, bpath, base, frames, max_dis: float, dt: float) -> Table:
    """The offsets table with its meta; the frames that could not be aligned logged."""
    bxy, bfl, bhdr = base
    for f, (_, _, res, _) in zip(files, frames):
        if not res.ok:
            log.warning("%s: no offset: %s", f.name, res.reason)
    tab = _offsets_table(files, bidx, frames)
    n_given = sum(1 for r in frames if r[2].ok and r[2].given)
    n_sim = int(np.sum(tab["align"] == "similarity"))       # searched here (the pass), or step p's
    tab.meta.update(base=_rawfile(bhdr, bpath), base_bf=str(bpath), base_index=bidx, base_nstars=len(bxy),
                    method=METHOD, max_dis=max_dis, convention=CONVENTION, n_ok=int(np.sum(tab["ok"])),
                    n_similarity=n_sim)
    n = len(files)
    log.info("offsets: %d of %d frames ok, %d by similarity, %d step p's transforms checked (%.3f s/frame)",
             tab.meta["n_ok"], n, n_sim, n_given, dt / max(n, 1))
    return tab


def _offsets_table(files: list[Path], bidx: int | None, frames: list[list]) -> Table:
    """The offsets table from the per-frame ``[name, jd, OffsetResult, n_stars]`` (see :func:`compute_offsets`)."""
    rows = []
    for i, (name, jd, res, _) in enumerate(frames):
        mat = res.matrix() if res.ok else np.full((2, 3), np.nan)
        align = "base" if i == bidx else (res.kind if res.ok else "none")
        rot, sc = (rotation_deg(mat), scale_of(mat)) if res.ok else (math.nan, math.nan)
        rows.append((name, str(files[i]), jd, res.dx, res.dy, res.n_matched, res.ok, res.reason, align, rot, sc,
                     *mat.ravel()))
    names = ("file", "bf", "jd", "dx", "dy", "n_matched", "ok", "reason", "align", "rot_deg", "scale",
             *MATRIX_COLUMNS)
    tab = Table(rows=rows, names=names, dtype=(str, str, float, float, float, int, bool, str, str, *[float] * 8))
    for c in ("dx", "dy", "m02", "m12"):
        tab[c].unit = "pix"
    tab["rot_deg"].unit = "deg"
    return tab


def _similarity_chunk(args) -> list[OffsetResult]:
    """Similarity matches of a chunk of frames (one job of :func:`_similarity_pass`)."""
    files, bxy, bfl, cfg, star_lists = args
    out = []
    for f in files:
        try:
            fxy, ffl, _ = _load_stars(Path(f), cfg, star_lists)
        except InputError as e:
            out.append(_fail(f"unreadable: {e}", kind="similarity"))
            continue
        out.append(find_similarity(bxy, bfl, fxy, ffl))
    return out


#: a base whose field the group's frames share less than this fraction of (median over the aligned
#: frames, :func:`overlap`) is replaced by the group's best frame when that aligns as many frames
MIN_BASE_OVERLAP = 0.5


def overlap(t, shape) -> float:
    """Fraction of a frame's field inside the base image's (both ``shape`` (ny, nx)), from its
    transform ``t``: the frame's centre mapped to the base, as a box of the same size (rotation
    ignored); 0 when ``t`` is not finite."""
    ny, nx = shape
    c = frame_to_base(t, [((nx - 1) / 2, (ny - 1) / 2)])[0]
    if not np.all(np.isfinite(c)):
        return 0.0
    return max(0.0, 1 - abs(c[0] - (nx - 1) / 2) / nx) * max(0.0, 1 - abs(c[1] - (ny - 1) / 2) / ny)


def _image_shape(path: Path) -> tuple[int, int]:
    """(ny, nx) of an image from its header; (0, 0) when unreadable."""
    try:
        hdr = read_header(path)
        return int(hdr.get("NAXIS2", 0) or 0), int(hdr.get("NAXIS1", 0) or 0)
    except (InputError, OSError, ValueError, TypeError):
        return 0, 0


def _median_overlap(frames: list[list], bidx: int | None, shape) -> float:
    """Median :func:`overlap` of the aligned frames but the base (1 without any)."""
    ov = [overlap(r[2].matrix(), shape) for i, r in enumerate(frames) if r[2].ok and i != bidx]
    return float(np.median(ov)) if ov else 1.0


def _poor(res: OffsetResult, n_stars: int, n_base: int) -> bool:
    """Whether a shift result should be tried again as a similarity: failed, or paired few of the stars
    (of those inside both fields, :attr:`OffsetResult.shared`, when known: a drifting frame's others
    cannot pair)."""
    n = min(n_stars, n_base) if res.shared < 0 else min(n_stars, n_base, res.shared)
    return n_stars >= MIN_MATCH and (not res.ok or res.n_matched < POOR_FRACTION * n)


def with_shared(res: OffsetResult, base_xy, frame_xy, tol: float = MATCH_TOL) -> OffsetResult:
    """``res`` with :attr:`OffsetResult.shared`: the fewer of the base stars mapped into the frame stars'
    extent and the frame stars mapped back into the base stars' extent (``tol`` margin)."""
    if not res.ok:
        return res
    bxy, fxy = _as_xy(base_xy, "base_xy"), _as_xy(frame_xy, "frame_xy")
    if not len(bxy) or not len(fxy):
        return res
    m = res.matrix()

    def inside(xy, ref):
        return int(np.sum(((xy >= ref.min(axis=0) - tol) & (xy <= ref.max(axis=0) + tol)).all(axis=1)))
    return replace(res, shared=min(inside(base_to_frame(m, bxy), fxy), inside(frame_to_base(m, fxy), bxy)))


def _similarity_pass(files: list[Path], bidx: int | None, bxy, bfl, frames: list[list], cfg, star_lists,
                     map_fn) -> int:
    """Match the poorly aligned frames as similarities, in place; returns how many were replaced.

    Each poorly aligned frame is matched by :func:`find_similarity` (in
    parallel through ``map_fn``); where that is no better than its shift
    (:func:`_better`), a walk in time order tries the shift search again with
    the base stars turned as the last frame aligned by a similarity
    (:func:`_rotated_shift`: sparse frames through clouds after a flip).  A
    similarity must keep the field's centre within ``offset_max_dis`` of the
    base, the previous aligned frame or the next frame aligned by a shift
    (:func:`_reach`).  When all fail, the reason names each.
    """
    todo = [i for i, (_, _, res, ns) in enumerate(frames) if i != bidx and not res.given and _poor(res, ns, len(bxy))]
    if not todo:
        return 0
    size = max(1, -(-len(todo) // 16))
    jobs = [todo[k:k + size] for k in range(0, len(todo), size)]
    parts = map_fn(_similarity_chunk, [([str(files[i]) for i in job], bxy, bfl, cfg, star_lists) for job in jobs])
    sims = dict(zip((i for job in jobs for i in job), (r for part in parts for r in part)))
    max_dis = float(getattr(cfg, "offset_max_dis", 250.0))
    centre = bxy.mean(axis=0)
    nxt = _next_shift_centres(frames, centre)
    last, last_sim, n_sim = np.zeros(2), None, 0
    for i, (_, _, res, _) in enumerate(frames):
        sim = sims.get(i)
        if sim is not None:
            near = [np.zeros(2), last] + ([nxt[i]] if nxt[i] is not None else [])
            sim = _reach(sim, centre, near, max_dis)
            if not _better(sim, res, bxy) and last_sim is not None:
                again = _reach(_rotated_shift(files[i], bxy, bfl, last_sim, cfg, star_lists, max_dis), centre, near,
                               max_dis)
                sim = again if _better(again, res, bxy) or not sim.ok else sim
            if _better(sim, res, bxy):
                frames[i][2] = res = sim
                n_sim += 1
            elif not res.ok:
                frames[i][2] = res = _fail(f"{res.reason}; {sim.reason}", max(res.n_matched, sim.n_matched))
        if res.ok:
            last = _centre_shift(res, centre)
            last_sim = res if res.kind == "similarity" else last_sim
    return n_sim


def _better(sim: OffsetResult, res: OffsetResult, bxy: np.ndarray) -> bool:
    """Whether similarity ``sim`` replaces shift ``res``: the shift failed; or ``sim`` pairs at least
    ``max(n + 3, 1.25 n)`` stars (``n``: the shift's pairs); or as many, and its rotation and scale move
    some base star by more than ``TURN_PX`` (the shift's pairs are then the few near the turning point)."""
    if not sim.ok:
        return False
    if not res.ok or sim.n_matched >= max(res.n_matched + 3, 1.25 * res.n_matched):
        return True
    lin = sim.matrix()[:, :2] - np.eye(2)
    turn = np.hypot(*(lin @ (bxy - bxy.mean(axis=0)).T)).max() if len(bxy) else 0.0
    return sim.n_matched >= res.n_matched and turn > TURN_PX


def _reach(sim: OffsetResult, centre: np.ndarray, near: list, max_dis: float) -> OffsetResult:
    """``sim``, or a failure when it moves the field's centre further than ``max_dis`` (per axis) from
    every one of the centre shifts ``near``."""
    c = _centre_shift(sim, centre)
    if sim.ok and not any((np.abs(c - p) <= max_dis + MATCH_TOL).all() for p in near):
        return _fail(f"similarity: the field's centre moves ({c[0]:.1f}, {c[1]:.1f}) px, beyond offset_max_dis "
                     f"of the base and the neighbouring frames", sim.n_matched, "similarity")
    return sim


def _rotated_shift(f: Path, bxy, bfl, ref: OffsetResult, cfg, star_lists, max_dis: float) -> OffsetResult:
    """The shift search (:func:`find_offset`) against the base stars turned and scaled as in ``ref`` (the
    last frame aligned by a similarity), around its translation; refined as a similarity when at least
    ``REFIT_MIN`` stars pair.  For frames too sparse for asterisms (clouds after a meridian flip)."""
    try:
        fxy, ffl, _ = _load_stars(f, cfg, star_lists)
    except InputError as e:
        return _fail(f"unreadable: {e}", kind="similarity")
    lin = ref.matrix()[:, :2]
    r = find_offset(bxy @ lin.T, bfl, fxy, ffl, max_dis, (ref.dx, ref.dy))
    if not r.ok:
        return _fail(f"similarity: {r.reason} (base turned as the previous frame)", r.n_matched, "similarity")
    mat, n, rms = np.column_stack([lin, [r.dx, r.dy]]), r.n_matched, r.rms
    if n >= REFIT_MIN:
        mat2, n2, rms2 = _refine_similarity(_as_xy(fxy, "frame_xy"), bxy, mat, MATCH_TOL)
        if n2 >= n and abs(scale_of(mat2) - 1.0) <= SCALE_TOL:
            mat, n, rms = mat2, n2, rms2
    return OffsetResult(float(mat[0, 2]), float(mat[1, 2]), int(n), True,
                        f"ok (similarity: rotation {rotation_deg(mat):.3f} deg, shift searched with the base turned "
                        f"as the previous frame)", float(rms), tuple(float(v) for v in mat.ravel()), "similarity")


def _centre_shift(res: OffsetResult, centre: np.ndarray) -> np.ndarray:
    """Where a frame's transform puts the base stars' centroid, minus the centroid (a shift: dx, dy)."""
    return base_to_frame(res.matrix(), centre[None, :])[0] - centre


def _next_shift_centres(frames: list[list], centre: np.ndarray) -> list:
    """For every frame, :func:`_centre_shift` of the next frame aligned by a shift (None at the end)."""
    out, nxt = [None] * len(frames), None
    for i in range(len(frames) - 1, -1, -1):
        out[i] = nxt
        res = frames[i][2]
        if res.ok and res.kind == "shift":
            nxt = _centre_shift(res, centre)
    return out


def _align_all(files: list[Path], bidx: int | None, base: tuple, max_dis: float, cfg, star_lists, mapper,
               similarity: bool) -> tuple[list, int]:
    """The three phases of :func:`compute_offsets` against ``base`` (xy, flux, header):
    ``([name, jd, OffsetResult, n_stars] per frame, frames matched by similarity)``."""
    bxy, bfl, bhdr = base
    centred = _centred_offsets(files, bidx, bxy, bfl, max_dis, cfg, star_lists, mapper, similarity)
    frames = _chain_offsets(files, bidx, bxy, bfl, bhdr, centred, max_dis, cfg, star_lists, similarity)
    n_sim = _similarity_pass(files, bidx, bxy, bfl, frames, cfg, star_lists, mapper) if similarity else 0
    return frames, n_sim


def _retry_base(run: tuple, files: list[Path], max_dis: float, cfg, star_lists, mapper, similarity: bool,
                counts: list) -> tuple:
    """``run`` (bidx, bpath, base, frames, n_sim) again with the group's best frame as base when
    fewer than half the frames align with its base (a base pointed elsewhere), or when the frames
    share less than :data:`MIN_BASE_OVERLAP` of its field (a base pointed a few hundred px off: the
    stars the pick and the light curves can use are those of the base's field); the run that aligns
    more frames wins, and of two that align as many, the one whose field the frames share more."""
    bidx, bpath, _, frames, _ = run
    n, n_good = len(files), sum(r[2].ok for r in frames)
    shape = _image_shape(bpath)
    ov = _median_overlap(frames, bidx, shape) if min(shape) > 0 else 1.0
    if bidx != 0 or n <= 2 or (n_good >= 0.5 * n and ov >= MIN_BASE_OVERLAP):  # only the default base
        return run
    why = InputError(f"{bpath.name}: only {n_good} of {n} frames align with it" if n_good < 0.5 * n else
                     f"{bpath.name}: the frames share {ov:.0%} of its field (median)")
    alt = _replacement_base(files, bidx, cfg, star_lists, counts, why, required=False)
    if alt is None:
        return run
    abase = _base_stars(alt[0], alt[1], files, cfg, star_lists)
    again = (*alt, abase, *_align_all(files, alt[0], abase, max_dis, cfg, star_lists, mapper, similarity))
    a_good = sum(r[2].ok for r in again[3])
    if a_good > n_good or (a_good == n_good and min(shape) > 0
                           and _median_overlap(again[3], alt[0], shape) > ov):
        return again
    log.warning("%s: kept as base: %s aligns no more frames", bpath.name, alt[1].name)
    return run


def _star_count(path: Path, cfg, star_lists) -> int:
    """Good stars of a frame (its catalogue's alignment stars, else a search of the image); -1 unreadable."""
    try:
        return len(_load_stars(path, cfg, star_lists)[0])
    except (InputError, OSError, ValueError):
        return -1


def _replacement_base(files: list[Path], bidx: int | None, cfg, star_lists, counts: list, why: Exception,
                      required: bool = True) -> tuple[int, Path] | None:
    """The group's frame with the most good stars, to replace base ``bidx`` that cannot serve
    (``why``); logged.  ``counts`` caches the star counts.  None (or ``why`` raised, when
    ``required``) when the base is outside the list or no other frame has enough stars."""
    if bidx is not None and not counts:
        counts.extend(_star_count(f, cfg, star_lists) for f in files)
    ranked = sorted((i for i in range(len(counts)) if i != bidx), key=lambda i: (-counts[i], i))
    if bidx is None or not ranked or counts[ranked[0]] < MIN_MATCH:
        if required:
            raise why
        return None
    best = ranked[0]
    log.warning("base image replaced: %s; using %s (%d stars, the most of the group)", why, files[best].name,
                counts[best])
    return best, files[best]


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
                     map_fn, turn: bool = True) -> dict:
    """Every frame but the base, searched around the base position, in 16 jobs through ``map_fn``
    (``turn``: shifts refined as similarities, :func:`_searched`; step p's transforms checked instead).

    Returns
    -------
    dict
        Frame index -> ``(rawfile, jd, OffsetResult, n_stars)`` (:func:`_centred_chunk`).
    """
    others = [i for i in range(len(files)) if i != bidx]
    size = max(1, -(-len(others) // 16))            # 16 jobs: balanced over the workers
    jobs = [others[k:k + size] for k in range(0, len(others), size)]
    base_name = files[bidx].name if bidx is not None else ""
    parts = map_fn(_centred_chunk, [([str(files[i]) for i in job], bxy, bfl, max_dis, cfg, star_lists, base_name,
                                     turn) for job in jobs])
    return {i: r for job, part in zip(jobs, parts) for i, r in zip(job, part)}


def _chain_offsets(files: list[Path], bidx: int | None, bxy, bfl, bhdr, centred: dict, max_dis: float, cfg,
                   star_lists, similarity: bool = True) -> list[tuple]:
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
    list of list
        Per frame, in the given order: ``[rawfile, jd, OffsetResult, n_stars]`` (``n_stars``: of
        its star list; -1 unreadable).
    """
    n = len(files)
    order = list(range(n)) if bidx is None else list(range(bidx, n)) + list(range(bidx - 1, -1, -1))
    rows: list[list | None] = [None] * n
    prior = np.zeros(2)
    for i in order:
        f = files[i]
        if bidx is not None and i == bidx - 1:
            prior = np.zeros(2)  # the backward chain starts again at the base
        if i == bidx:
            name, jd, nstars = _rawfile(bhdr, f), _jd(bhdr), len(bxy)
            res = OffsetResult(0.0, 0.0, len(bxy), True, "ok (base image)", 0.0)
        else:
            name, jd, res, nstars = centred[i]
            near = res.ok and (res.given or (np.abs(np.array([res.dx, res.dy]) - prior) <= max_dis).all())
            if nstars >= MIN_MATCH and prior.any() and not near:
                fxy, ffl, _ = _load_stars(f, cfg, star_lists)
                again = _searched(bxy, bfl, fxy, ffl, max_dis, prior, similarity)
                if again.ok or not res.ok:
                    res = again
        if res.ok:
            prior = np.array([res.dx, res.dy])
        rows[i] = [name, jd, res, nstars]
    return rows


# ------------------------------------------------------------------ output
def offset_paths(red_dir, obj: str, band: str) -> tuple[Path, Path]:
    """``{red}/offset_{obj}_{band}.ecsv`` and ``.txt``."""
    return product_path(red_dir, "offsets", obj, band), product_path(red_dir, "offsets_txt", obj, band)


def write_offsets(table: Table, red_dir, obj: str, band: str) -> tuple[Path, Path]:
    """Write the offset table as ECSV (machine-readable) and aligned text, atomically."""
    ecsv, txt = offset_paths(red_dir, obj, band)
    from .columns import describe

    write_table(ecsv, describe(table, "offsets"))
    t = table.copy(copy_data=True)
    t.meta.clear()
    if "bf" in t.colnames:
        t.remove_column("bf")
    for c, fmt in (("jd", ".6f"), ("dx", ".3f"), ("dy", ".3f"), ("rot_deg", ".4f"), ("scale", ".6f"),
                   *((m, ".6f" if m[2] != "2" else ".3f") for m in MATRIX_COLUMNS)):
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
