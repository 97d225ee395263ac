"""Matching two star lists: the shift vote, its verification, and the similarity search.

:func:`find_offset` (a 2-D vote over pair differences, verified by one-to-one pairing and a
false-alarm probability), :func:`find_similarity` (astroalign asterisms refined by least squares),
:func:`verify_transform` (a given transform checked on the stars) and the result of each,
:class:`OffsetResult`.  The method is described in :mod:`qlcp.core.offset`.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, replace

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import gammainc

from .transforms import _as_xy, base_to_frame, frame_to_base, rotation_deg, scale_of, shift_matrix

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


# --------------------------------------------------------------- star lists
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
