"""Step p's constants and its vectorised pixel work around sources.

The catalogue's flag bits (``FLAG_*``), columns and magnitude zero point; the detection
kernel; aperture radii and the default sky annulus; and the per-star operations on pixels
near the sources, vectorised over the stars: stamps, the clipped annulus sky, windowed
shapes, sharp (single-pixel) sources, half-light radii.  The measurement that uses them is
:mod:`qlcp.core.photometry.measurement`.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import sep
from astropy.table import Table
from scipy.spatial import cKDTree


log = logging.getLogger("qlcp.photometry")


FLAG_BORDER = 1
FLAG_SATURATED = 2
FLAG_BLENDED = 4
FLAG_BADFLUX = 8
FLAG_COSMIC = 16

MAG_ZP = 25.0
MAX_APERTURES = 19
#: 2.5 / ln 10
_MAG_PER_REL = 2.5 / math.log(10.0)
_CLIP = 3.0
#: std of a unit normal truncated at +-3 sigma (corrects the clipped std)
_CLIP_STD = 0.98658
#: SExtractor's PHOT_AUTOPARAMS
_KRON_FACT, _KRON_MIN = 2.5, 3.5
_GAUSS_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: fewest clipped annulus pixels for a local sky
_MIN_SKY_PIX = 10
#: most annulus values per star sorted for the robust start of the clipping
_SKY_START = 255
#: default sky annulus: from the largest aperture + SKY_GAP, SKY_THICK thick (SExtractor's
#: local background is 24 px thick too); px
SKY_GAP, SKY_THICK = 4.0, 24.0
#: background mesh (px) of sep.Background (``cfg.phot_back_mesh`` overrides)
_BACK_MESH = 64
#: deblending levels of sep.extract (``cfg.phot_deblend_nthresh`` overrides)
_DEBLEND_NTHRESH = 32
#: largest number of stamp pixels held at once (bounds memory in crowded frames)
_STAMP_BUDGET = 1_000_000
#: keywords copied from the corrected frame's header into the catalogue
COPY_KEYS = ("JD", "MJD", "HJD", "BJD", "AIRMASS", "ALT", "AZ", "EXPTIME", "RAWFILE", "DATE-OBS")


def _gauss_kernel(fwhm: float = 2.5, size: int = 5) -> np.ndarray:
    """Detection filter: a ``size`` x ``size`` Gaussian (SExtractor's gauss_2.5_5x5)."""
    s = fwhm / _GAUSS_FWHM
    r = np.arange(size) - size // 2
    k = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * s * s))
    return (k / k.sum()).astype(np.float32)


_KERNEL = _gauss_kernel()

COLUMNS = ("X", "Y", "Elong", "FWHM", "FluxAUTO", "FErrAUTO", "MagAUTO", "ErrAUTO",
           "Flux", "FErr", "Mag", "Err", "Sky", "Peak", "Flags")


# ----------------------------------------------------------------- helpers
def _noise_pixels(r: float) -> float:
    """Sum of squared pixel weights of an exact-overlap circle of radius ``r``.

    Edge pixels count with their overlap ``w`` in the flux but with ``w**2`` in
    the variance of uncorrelated pixel noise; averaged over centring the
    deficit is ``(1/6) 2 pi r``, so ``pi r (r - 1/3)`` (numerically checked to
    < 0.5 % for r >= 1.5 px; 11 % fewer than ``pi r^2`` at r = 3 px).
    """
    return math.pi * r * max(r - 1.0 / 3.0, 0.5 * r)


def aperture_radii(aper, fwhm: float) -> np.ndarray:
    """Aperture radii in px: positive values as they are, negative ones x ``fwhm``.

    NaN where an aperture is relative and ``fwhm`` is unknown.
    """
    a = np.asarray(aper, dtype=float).ravel()
    return np.where(a > 0, a, -a * fwhm)


def sky_annulus(cfg, radii) -> tuple[float, float]:
    """Inner and outer sky radius (px): ``cfg.sky_annulus``, or from the largest aperture
    + :data:`SKY_GAP` to that + :data:`SKY_THICK` (``radii`` may be an array of any shape:
    the largest finite value counts)."""
    ann = getattr(cfg, "sky_annulus", None)
    if ann is not None:
        return float(ann[0]), float(ann[1])
    r = np.asarray(radii, dtype=float)
    rmax = float(np.nanmax(r)) if np.isfinite(r).any() else 0.0
    return rmax + SKY_GAP, rmax + SKY_GAP + SKY_THICK


def mag_err(flux, ferr):
    """Instrumental magnitude and error; NaN where the flux is not positive."""
    flux = np.asarray(flux, dtype=float)
    ok = np.isfinite(flux) & (flux > 0)
    safe = np.where(ok, flux, 1.0)
    mag = np.where(ok, MAG_ZP - 2.5 * np.log10(safe), np.nan)
    err = np.where(ok, _MAG_PER_REL * np.asarray(ferr, dtype=float) / safe, np.nan)
    return mag, err


def _stamps(img: np.ndarray, x, y, h: int):
    """Cut-outs of ``2h+1`` px around the rounded positions.

    Returns values ``(n, s, s)`` (NaN outside the image) and the pixel offsets
    ``dx`` ``(n, 1, s)``, ``dy`` ``(n, s, 1)`` from ``(x, y)``.
    """
    ny, nx = img.shape
    off = np.arange(-h, h + 1)
    cx = np.rint(x).astype(np.int64)[:, None] + off
    cy = np.rint(y).astype(np.int64)[:, None] + off
    okx = (cx >= 0) & (cx < nx)
    oky = (cy >= 0) & (cy < ny)
    vals = img[np.clip(cy, 0, ny - 1)[:, :, None], np.clip(cx, 0, nx - 1)[:, None, :]].astype(np.float64)
    vals[~(oky[:, :, None] & okx[:, None, :])] = np.nan
    dx = (cx - x[:, None])[:, None, :]
    dy = (cy - y[:, None])[:, :, None]
    return vals, dx, dy


def _clipped_mean(v: np.ndarray):
    """Per-row 3-sigma clipped mean, std and count of ``v`` (NaN = excluded).

    The start is robust: median and interquartile sigma of an evenly spaced
    subsample of each row (at most :data:`_SKY_START` values, sorted), so a
    bright neighbour's wing cannot drag the first centre.  Then each round
    keeps ``|v - mean| <= 3 sigma`` of the whole row and recomputes mean and
    std (no sort: masked sums), until the number kept stops changing (each row
    on its own; 8 rounds at most).  The std is corrected for the truncation
    (x 1/0.98658).  For Gaussian noise the mean's variance is ``sigma^2 / n``, against
    ``(pi/2) sigma^2 / n`` for a median; contamination beyond 3 sigma
    (cosmic rays, hot pixels, faint neighbours' cores) is clipped, and what
    stays below it is the same in every frame, so it cancels in differential
    photometry.  Rows with fewer than :data:`_MIN_SKY_PIX` kept values give NaN.
    """
    v = np.asarray(v)
    if v.dtype not in (np.float32, np.float64):
        v = v.astype(np.float64)
    n, p = v.shape
    step = max(1, -(-p // _SKY_START))
    s = np.sort(v[:, ::step], axis=1)                  # NaN last
    nn = s.shape[1] - np.count_nonzero(np.isnan(s), axis=1)
    rows = np.arange(n)
    last = max(s.shape[1] - 1, 0)

    def q(frac):
        return s[rows, np.clip(((nn - 1) * frac).astype(np.int64), 0, last)].astype(np.float64)

    cen = 0.5 * (q(0.5) + s[rows, np.clip(nn // 2, 0, last)])
    sig = (q(0.75) - q(0.25)) / 1.349
    # excluded values far away, so no clipping window holds them (and 0 x them is 0)
    big = np.finfo(v.dtype).max / 4
    va = np.where(np.isnan(v), big, v)
    cnt = np.full(n, -1, dtype=np.int64)
    act = np.arange(n)                 # rows still changing: a row whose count holds is done
    for _ in range(8):
        lo = (cen[act] - _CLIP * sig[act]).astype(v.dtype)[:, None]
        hi = (cen[act] + _CLIP * sig[act]).astype(v.dtype)[:, None]
        keep = (va >= lo) & (va <= hi)
        new = np.count_nonzero(keep, axis=1)
        moved = new != cnt[act]
        if not moved.any():
            break
        if not moved.all():            # only the rows still moving go on (crowded rings: ~half the work)
            act, va, keep, new = act[moved], va[moved], keep[moved], new[moved]
        cnt[act] = new
        w = va * keep
        m = np.maximum(new, 2)
        c = w.sum(axis=1).astype(np.float64) / m         # pairwise sums: float32 is plenty
        var = np.maximum(np.einsum("ij,ij->i", w, w).astype(np.float64) / m - c * c, 0.0) * m / (m - 1)
        cen[act], sig[act] = c, np.sqrt(var) / _CLIP_STD
    bad = cnt < _MIN_SKY_PIX
    cen = np.where(bad, np.nan, cen)
    sig = np.where(bad, np.nan, sig)
    return cen, sig, cnt


#: a pixel centre is at most this far from the rounded position's pixel centre offset (sqrt(2)/2, rounded up)
_HALF_DIAG = 0.7072


def _ring_offsets(rin: float, rout: float):
    """Integer offsets (row-major) that can fall in ``rin <= d < rout`` of a position rounded to a pixel.

    Also returns ``sure``: the offsets inside the ring whatever the position's
    fraction of a pixel, and ``h``, the largest offset.
    """
    h = math.ceil(rout)
    o = np.arange(-h, h + 1)
    oy, ox = np.meshgrid(o, o, indexing="ij")
    r = np.hypot(ox, oy)
    keep = (r + _HALF_DIAG >= rin) & (r - _HALF_DIAG < rout)
    sure = (r - _HALF_DIAG >= rin) & (r + _HALF_DIAG < rout)
    return ox[keep], oy[keep], sure[keep], h


def _local_sky(sub, exclude, x, y, rin, rout):
    """Clipped mean, std and pixel count of ``sub`` in an annulus around each star.

    Gathers, for all stars at once, only the pixels that can lie in the
    annulus (a ring of offsets around the rounded position), then keeps those
    with ``rin**2 <= d**2 < rout**2`` from the exact position (computed only
    for the offsets near the ring's edges), inside the image and outside
    ``exclude`` (segmentation map; 0 = sky).
    """
    n = len(x)
    cen = np.full(n, np.nan)
    sig = np.full(n, np.nan)
    cnt = np.zeros(n, dtype=np.int64)
    if n == 0 or not rout > 0:
        return cen, sig, cnt
    ny, nx = sub.shape
    ox, oy, sure, h = _ring_offsets(rin, rout)
    if ox.size == 0:
        return cen, sig, cnt
    order = np.argsort(~sure, kind="stable")             # the sure offsets first
    ox, oy = ox[order], oy[order]
    ns = int(sure.sum())
    oxe, oye = ox[ns:].astype(float), oy[ns:].astype(float)
    off = oy * nx + ox
    flat_sub = sub.ravel()
    flat_ex = None if exclude is None else exclude.ravel()
    ix_all = np.rint(x).astype(np.int64)
    iy_all = np.rint(y).astype(np.int64)
    # x - rint(x) is exact, so ox - fx rounds the same real number as (ix + ox) - x
    fx_all, fy_all = x - ix_all, y - iy_all
    edge_all = (ix_all < h) | (iy_all < h) | (ix_all >= nx - h) | (iy_all >= ny - h)
    r2in, r2out = rin * rin, rout * rout
    nan = np.float32(np.nan) if sub.dtype == np.float32 else np.nan
    chunk = max(1, _STAMP_BUDGET // ox.size)
    for i in range(0, n, chunk):
        sl = slice(i, i + chunk)
        ix, iy, edge = ix_all[sl], iy_all[sl], edge_all[sl]
        idx = (iy * nx + ix)[:, None] + off
        valid = None
        if edge.any():
            cx = ix[edge, None] + ox
            cy = iy[edge, None] + oy
            valid = np.ones(idx.shape, dtype=bool)
            valid[edge] = (cx >= 0) & (cx < nx) & (cy >= 0) & (cy < ny)
            idx[edge] = np.clip(cy, 0, ny - 1) * nx + np.clip(cx, 0, nx - 1)
        v = flat_sub.take(idx)
        if oxe.size:
            dx = oxe - fx_all[sl, None]
            dy = oye - fy_all[sl, None]
            d2 = dx * dx + dy * dy
            ve = v[:, ns:]
            ve[(d2 < r2in) | (d2 >= r2out)] = nan
        if valid is not None:
            v[~valid] = nan
        if flat_ex is not None:
            v[flat_ex.take(idx) != 0] = nan
        cen[sl], sig[sl], cnt[sl] = _clipped_mean(v)
    return cen, sig, cnt


def _window_shape(sub, x, y, sig_w):
    """Ellipse (a, b, theta) from Gaussian-windowed second moments.

    For a Gaussian star of the window's width the windowed moments are half the
    true ones, hence the factor 2.  Falls back to a circle of ``sig_w``.
    """
    n = len(x)
    a = np.full(n, sig_w)
    b = np.full(n, sig_w)
    th = np.zeros(n)
    if n == 0 or not np.isfinite(sig_w) or sig_w <= 0:
        return a, b, th
    h = int(math.ceil(4 * sig_w))
    vals, dx, dy = _stamps(sub, x, y, h)
    d2 = dx * dx + dy * dy
    w = np.exp(-d2 / (2 * sig_w * sig_w)) * (d2 < (4 * sig_w) ** 2)
    wi = w * np.nan_to_num(vals)
    s = wi.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (wi * dx).sum(axis=(1, 2)) / s
        my = (wi * dy).sum(axis=(1, 2)) / s
        xx = 2 * ((wi * dx * dx).sum(axis=(1, 2)) / s - mx * mx)
        yy = 2 * ((wi * dy * dy).sum(axis=(1, 2)) / s - my * my)
        xy = 2 * ((wi * dx * dy).sum(axis=(1, 2)) / s - mx * my)
        t1 = 0.5 * (xx + yy)
        t2 = np.sqrt(0.25 * (xx - yy) ** 2 + xy * xy)
        aa = np.sqrt(t1 + t2)
        bb = np.sqrt(t1 - t2)
    ok = (s > 0) & np.isfinite(aa) & np.isfinite(bb) & (bb > 0.1) & (aa < 4 * sig_w)
    a[ok], b[ok] = aa[ok], bb[ok]
    th[ok] = 0.5 * np.arctan2(2 * xy[ok], (xx - yy)[ok])
    return a, b, th


def _extract(sub, thresh, mask, minarea, nthresh=_DEBLEND_NTHRESH):
    """sep.extract with SExtractor-like settings; enlarges sep's buffers if a crowded frame needs it."""
    for _ in range(4):
        try:
            return sep.extract(sub, thresh, mask=mask, minarea=minarea, filter_kernel=_KERNEL,
                               deblend_nthresh=nthresh, deblend_cont=0.005, clean=True,
                               segmentation_map=True)
        except Exception as e:  # sep raises a bare Exception for its buffer limits
            msg = str(e)
            if "pixel buffer full" in msg:
                sep.set_extract_pixstack(sep.get_extract_pixstack() * 4)
            elif "deblending overflow" in msg:
                sep.set_sub_object_limit(sep.get_sub_object_limit() * 4)
            else:
                raise
            log.debug("sep.extract: %s; retrying with larger buffers", msg.split(":")[0])
    return sep.extract(sub, thresh, mask=mask, minarea=minarea, filter_kernel=_KERNEL,
                       deblend_nthresh=nthresh, deblend_cont=0.005, clean=True, segmentation_map=True)


def _nn_dist(x, y):
    """Distance of each source to its nearest neighbour (inf when alone)."""
    n = len(x)
    if n < 2:
        return np.full(n, np.inf)
    d, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
    return d[:, 1]


def _sharp_index(sub, fwhm, rms, x, y, r, r_done=0.0):
    """Flat indices (sorted, unique) of the sharp pixels that can lie within ``r`` px of a source.

    Parameters
    ----------
    sub : ndarray (ny, nx)
        Background-subtracted image.
    fwhm, rms : float
        Frame FWHM (px) and background rms (ADU); no pixel is sharp unless both
        are finite and positive.
    x, y : ndarray
        Source positions, 0-based px.
    r : float
        Radius (px) around each source to test.
    r_done : float, optional
        Radius already tested: only the offsets beyond what
        ``_sharp_index(..., r_done)`` tested are looked at (0: all).

    Returns
    -------
    ndarray of int64
        ``y * nx + x`` of the sharp pixels found (see :func:`_sharp_pixels`).
    """
    none = np.zeros(0, dtype=np.int64)
    ny, nx = sub.shape
    if not (np.isfinite(fwhm) and fwhm > 0 and rms > 0) or min(sub.shape) < 3 or len(x) == 0:
        return none
    s_half = fwhm / 2.0 / _GAUSS_FWHM
    thr = 1.0 - math.exp(-1.0 / (2.0 * s_half * s_half))
    ox, oy, _sure, _h = _ring_offsets(0.0, r + 1e-6)
    if r_done > 0:
        # the complement of _ring_offsets(0, r_done + 1e-6)'s offsets (the same test, negated)
        new = np.hypot(ox, oy) - _HALF_DIAG >= r_done + 1e-6
        ox, oy = ox[new], oy[new]
    if ox.size == 0:
        return none
    cx = np.rint(x).astype(np.int64)[:, None] + ox
    cy = np.rint(y).astype(np.int64)[:, None] + oy
    ok = (cx >= 1) & (cx <= nx - 2) & (cy >= 1) & (cy <= ny - 2)
    idx = (np.clip(cy, 1, ny - 2) * nx + np.clip(cx, 1, nx - 2))[ok]
    f = sub.ravel()
    c = f[idx]
    # the same float32 operations, in the same order, as on the whole image
    d = c - 0.25 * (f[idx - nx] + f[idx + nx] + f[idx - 1] + f[idx + 1])
    return np.unique(idx[(d > 10 * rms) & (d > thr * c)])


def _sharp_pixels(sub, fwhm, rms, x, y, r):
    """Pixels too sharp for a star (cosmic-ray hits, hot pixels) near the sources (x, y arrays).

    The sharpness ``(P - <4 neighbours>) / P`` of a background-subtracted
    pixel is at most ``1 - exp(-1 / 2 sigma^2)`` at the peak of a Gaussian
    star; a pixel is sharp when it beats a Gaussian of half the frame FWHM and
    stands more than 10 rms above its neighbours.  Only pixels that can lie
    within ``r`` px of a source (``x``, ``y``) are tested (all of the image's
    sharp pixels within ``r`` of a source are returned, maybe a few more);
    border pixels (no 4 neighbours) never count.

    Returns
    -------
    xp, yp : ndarray of int64
        Column and row of each sharp pixel.
    """
    hit = _sharp_index(sub, fwhm, rms, x, y, r)
    nx = sub.shape[1]
    return hit % nx, hit // nx


class _SharpPixels:
    """The sharp pixels (:func:`_sharp_pixels`) near a frame's sources, each tested once.

    :meth:`near` asks for a radius; only the pixels beyond the largest radius
    asked for so far are tested, so asking for 1.5 px (good stars) and then for
    the largest aperture (flags) costs one test per pixel.

    Parameters
    ----------
    sub : ndarray
        Background-subtracted image.
    fwhm, rms : float
        Frame FWHM (px) and background rms, as in :func:`_sharp_pixels`.
    x, y : ndarray
        Source positions, 0-based px.
    """

    def __init__(self, sub, fwhm, rms, x, y):
        self.sub, self.fwhm, self.rms, self.x, self.y = sub, fwhm, rms, x, y
        self.r = 0.0
        self.index = np.zeros(0, dtype=np.int64)

    def near(self, r: float) -> np.ndarray:
        """Boolean per source: a sharp pixel within ``r`` px (inclusive) of it."""
        if r > self.r:
            new = _sharp_index(self.sub, self.fwhm, self.rms, self.x, self.y, r, self.r)
            self.index = np.union1d(self.index, new)
            self.r = r
        n = len(self.x)
        if self.index.size == 0:
            return np.zeros(n, dtype=bool)
        nx = self.sub.shape[1]
        tree = cKDTree(np.column_stack([self.index % nx, self.index // nx]))
        return tree.query_ball_point(np.column_stack([self.x, self.y]), r=r, return_length=True) > 0


#: annuli of the emulated sep.flux_radius (its FLUX_RADIUS_BUFSIZE) and its sub-pixel grid
_FR_BINS, _FR_SUBPIX = 64, 5


def _half_light_radius(sub, x, y, rmax, flux, mask):
    """``sep.flux_radius(sub, x, y, rmax, 0.5, normflux=flux, subpix=5)`` for ``flux > 0``, faster.

    sep sums 64 annuli out to ``rmax`` (every pixel on a 5x5 sub-pixel grid)
    and interpolates the cumulative sum at half the flux.  The cumulative sum
    at bin ``i`` is the flux within ``(i + 1) rmax / 64`` on the same
    sub-pixel grid, which is what ``sep.sum_circle(subpix=5)`` measures; so
    grow the circle bin by bin and stop each star at the first bin reaching
    half its flux (sep's rule), instead of summing all pixels out to ``rmax``.
    Same radii to ~1e-15 (summation order).  With a ``mask`` (sep rescales
    each annulus for its masked area) every star, and otherwise stars with
    ``rmax >= 90`` (sep skips sub-pixels there) or still growing after 16
    bins when only a few are left, go to sep itself.
    """
    n = len(x)
    r = np.full(n, np.nan)
    if n == 0:
        return r
    step = rmax / _FR_BINS
    targ = 0.5 * flux
    prev = np.zeros(n)
    if mask is not None:
        act = np.zeros(0, dtype=np.int64)
        rest = np.arange(n)
    else:
        fast = rmax < 90.0
        act = np.flatnonzero(fast)
        rest = np.flatnonzero(~fast)
    for i in range(_FR_BINS):
        if act.size == 0:
            break
        if i >= 16 and act.size <= 8:            # a few slow growers: cheaper in one sep call
            rest = np.concatenate([rest, act])
            act = act[:0]
            break
        yi = sep.sum_circle(sub, x[act], y[act], (i + 1) * step[act], subpix=_FR_SUBPIX)[0]
        hit = yi >= targ[act]
        if hit.any():
            h, yh = act[hit], yi[hit]
            if i == 0:
                with np.errstate(divide="ignore", invalid="ignore"):
                    r[h] = np.where((targ[h] <= 0) | (yh == 0), 0.0, step[h] * targ[h] / yh)
            else:
                r[h] = step[h] * (i + (targ[h] - prev[h]) / (yh - prev[h]))
        prev[act] = yi
        act = act[~hit]
    r[act] = rmax[act]                           # never reached: sep returns rmax
    if rest.size:
        r[rest] = sep.flux_radius(sub, x[rest], y[rest], rmax[rest], 0.5, normflux=flux[rest],
                                  mask=mask, subpix=_FR_SUBPIX)[0]
    return r


def _clipped_median_1d(v):
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan
    med = np.median(v)
    for _ in range(5):
        mad = 1.4826 * np.median(np.abs(v - med))
        if mad <= 0:
            break
        k = np.abs(v - med) <= 3 * mad
        if k.all():
            break
        v = v[k]
        med = np.median(v)
    return float(med)


def _empty_table(naper: int) -> Table:
    t = Table()
    for c in COLUMNS:
        if c in ("Flux", "FErr", "Mag", "Err"):
            t[c] = np.zeros((0, naper))
        elif c == "Flags":
            t[c] = np.zeros(0, dtype=np.int32)
        else:
            t[c] = np.zeros(0)
    return t
