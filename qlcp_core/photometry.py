"""Step p: source extraction and aperture photometry of corrected frames (sep).

For one corrected frame (``{rawstem}.bf.fits``, ADU) this module

1. models the background with :class:`sep.Background` (64 px meshes, 3x3
   median filter; ``cfg.phot_back_mesh`` if set) and subtracts the map;
2. finds sources with :func:`sep.extract` on the subtracted image (threshold
   ``cfg.detect_thresh`` x global rms, ``cfg.detect_minarea`` pixels, a 5x5
   Gaussian filter of FWHM 2.5 px, SExtractor's deblending defaults: 32
   levels, or ``cfg.phot_deblend_nthresh``), or takes given positions (forced
   photometry);
3. measures SExtractor-like AUTO (Kron) photometry, the half-light radius of
   every source (per-star FWHM = 2 x ``flux_radius(0.5)``, exact for a
   Gaussian; sep's interpolation reads ~1.5 % large, and the pixel blur adds
   ~1.4 % at 4 px, so expect +3 % at FWHM 4 px, +5 % at 3 px) and windowed
   centroids (:func:`sep.winpos`, ``XWIN_IMAGE``, with the exact pixel
   overlap of its 4-sigma window);
4. takes the frame FWHM as the clipped median over good stars (unsaturated,
   unblended, isolated, S/N > 20, not sharp) and turns negative apertures
   into multiples of it;
5. sums circular apertures (exact pixel overlap) and subtracts a local sky from
   an annulus, with errors from the CCD equation.

Local sky
---------
The residual sky (after the global map) of each star is the 3-sigma clipped
**mean** of the annulus pixels, with detected sources' footprints masked; the
annulus runs by default from the largest aperture + 4 px to 24 px further out
(the thickness of SExtractor's local background).  The clipping starts from a
robust median, so neighbours, cosmic rays and hot pixels are rejected; the
mean then has the variance ``sigma^2/n`` (a median's is ``pi/2`` times more),
and with ~2500 pixels the sky estimate adds ~3 % to the variance of a
sky-limited star in a 5 px aperture (~13 % with an 8 px thick annulus and a
median).  Measured on the benchmark night this matches the scatter of the
original QLCP's global background (bench/bench_pipeline.py --original) while
keeping a local sky that follows gradients and halos.  The per-pixel sky
scatter ``sigma`` is the clipped standard deviation, corrected for the
3-sigma truncation (x 1/0.98658), and holds sky photon noise, read noise and
flat-field noise as they really are in the frame.

Error model (ADU)
-----------------
.. math::

    \\sigma_F^2 = F/g + n_{eff}\\,\\sigma^2 + n_{pix}^2\\,\\frac{\\sigma^2}{n_{sky}}

with ``F`` the sky-subtracted flux (ADU, floored at 0), ``g`` the gain
(e-/ADU), ``n_pix = pi r^2``, ``n_sky`` the annulus pixels kept after
clipping, and ``n_eff = pi r (r - 1/3)`` the sum of squared pixel weights of
the exact-overlap aperture (edge pixels add their overlap ``w`` to the flux
but only ``w^2`` to the noise variance).  In electrons this is the CCD
equation ``N* + (n_eff + n_pix^2/n_sky) (S + R^2)``; the read noise is
used explicitly only where no annulus is available (then ``sigma^2 = sky/g +
(R/g)^2``, floored by the background map's rms).  The global background map
cancels out of ``F`` (it is subtracted from aperture and annulus alike), so its
own noise adds nothing.  AUTO fluxes follow SExtractor (global background,
ellipse ``max(2.5 r_Kron, 3.5)`` x (a, b)) with ``F/g + n_pix sigma^2``.

Flags (bit mask, column ``Flags``)
----------------------------------
``1`` the largest aperture leaves the image; ``2`` saturated (a pixel within
2 px of the centre >= saturation); ``4`` blended (sep's deblending flag; in
forced mode: another position within the largest aperture); ``8`` a flux
(any aperture or AUTO) <= 0 or not finite; ``16`` a masked (NaN/inf) pixel
in an aperture, or a sharp pixel (cosmic ray, hot pixel: sharper than the
peak of a star of half the frame FWHM, > 10 rms) within the largest aperture;
sources that are such pixels carry it too.

Magnitudes are ``25 - 2.5 log10(flux)``, errors ``1.0857 sigma_F / F``, NaN
where ``F <= 0``.

Speed
-----
Per 1024 x 1024 frame the two whole-image sep passes (background ~10 ms,
extraction 9-13 ms) dominate; everything per star is vectorised over the
stars and touches only pixels near them: the annulus pixels are gathered for
all stars at once and clipped with masked sums (only a subsample is sorted,
for the robust start), the half-light radius grows circles bin by bin only up to
half the flux (the same numbers as ``sep.flux_radius``), and sharp pixels
are looked for only around the sources.  ``phot_back_mesh`` (e.g. 128) and
``phot_deblend_nthresh`` (e.g. 16) trade some of the whole-image time for
a (small) change of the results.

    >>> tab, stats = measure(data, cfg, gain=1.3, rdnoise=8.0, saturation=60000)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sep
from astropy.table import Table
from scipy.spatial import cKDTree

from .correct import corrected_detector
from .errors import InputError
from .columns import fits_column_cards
from .io import raw_stem, read_header, read_image, write_table_fast

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


# ------------------------------------------------------------------ measure
@dataclass
class _Frame:
    """One frame's pixels and global background, shared by the steps of :func:`measure`.

    Attributes
    ----------
    img : ndarray (ny, nx), float32
        The image, C order; masked pixels replaced by the median of the others.
    sub : ndarray (ny, nx), float32
        ``img`` minus the background map; masked pixels 0.
    bad : ndarray (ny, nx) of bool
        Masked pixels (not finite in the input).
    mask : ndarray of bool or None
        ``bad`` when any pixel is masked, else None (sep's ``mask`` argument).
    bkg : sep.Background
        The background model.
    sky, rms : float
        Global background level and rms, ADU.
    step : int
        ``bkg`` models every ``step``-th pixel of each axis: its maps are ``step`` times coarser
        (pixel ``(y, x)`` is ``(y // step, x // step)`` there).
    """

    img: np.ndarray
    sub: np.ndarray
    bad: np.ndarray
    mask: np.ndarray | None
    bkg: sep.Background
    sky: float
    rms: float
    step: int = 1

    def rms_at(self, iy, ix) -> np.ndarray:
        """The background rms map at integer pixels ``(iy, ix)``, ADU."""
        return self.bkg.rms()[np.asarray(iy) // self.step, np.asarray(ix) // self.step]


@dataclass
class _Sources:
    """The sources of a frame before they are measured.

    Attributes
    ----------
    x0, y0 : ndarray
        Detection centroids, or the given positions (forced photometry), 0-based px.
    a, b, theta : ndarray
        Shape ellipse: semi-axes (px, ``b >= 0.05``, ``a >= b``) and angle (rad).
    merged : ndarray of bool
        sep's deblending flag (all False in forced mode).
    seg : ndarray or None
        sep's segmentation map (None in forced mode).
    forced : bool
        The positions were given: no recentring.
    """

    x0: np.ndarray
    y0: np.ndarray
    a: np.ndarray
    b: np.ndarray
    theta: np.ndarray
    merged: np.ndarray
    seg: np.ndarray | None
    forced: bool
    #: detected pixels of each source (isophotal area, px; None in forced mode)
    npix: np.ndarray | None = None
    #: isophotal flux of each source, ADU (None in forced mode)
    flux: np.ndarray | None = None
    #: sources measured only as the automatic pick reads them (tracked frames, :mod:`qlcp.core.forced`;
    #: :func:`_measure_light`): no AUTO flux, no half-light radius, out of the frame FWHM (None: all in full)
    light: np.ndarray | None = None
    #: FWHM (px) of each source's centroid window where it is not measured on the frame (``light``)
    win: np.ndarray | None = None

    def brightest(self, n: int) -> _Sources:
        """The ``n`` sources of largest isophotal flux (in their order); all without fluxes."""
        if self.flux is None or len(self.x0) <= n:
            return self
        keep = np.sort(np.argsort(-np.nan_to_num(self.flux, nan=-np.inf), kind="stable")[:n])
        return _Sources(self.x0[keep], self.y0[keep], self.a[keep], self.b[keep], self.theta[keep],
                        self.merged[keep], self.seg, self.forced, self.npix[keep], self.flux[keep])

    @property
    def elong(self) -> np.ndarray:
        """Elongation ``a / b``."""
        return self.a / self.b


def _check_settings(aper, gain, rdnoise, saturation) -> tuple[list, float, float]:
    """Validate the photometry settings of :func:`measure`.

    Parameters
    ----------
    aper : sequence of float
        Aperture radii (px; negative: x frame FWHM).
    gain, rdnoise, saturation : float or None
        e-/ADU (must be > 0), e- (None: 0), ADU (None: no saturation).

    Returns
    -------
    aper : list of float
    rdnoise, saturation : float
        ``saturation`` is ``inf`` when not given.

    Raises
    ------
    InputError
        No aperture, more than :data:`MAX_APERTURES`, a zero or non-finite
        radius, or a gain that is not positive.
    """
    aper = list(aper)
    if not 1 <= len(aper) <= MAX_APERTURES or any(a == 0 or not np.isfinite(a) for a in aper):
        raise InputError(f"aper {aper}: need 1 to {MAX_APERTURES} non-zero radii")
    if not (gain and gain > 0):
        raise InputError(f"gain {gain}: must be > 0 e-/ADU")
    rdnoise = float(rdnoise or 0.0)
    saturation = math.inf if saturation is None else float(saturation)
    return aper, rdnoise, saturation


#: fewest pixels a side of a background mesh on the subsampled image (:func:`_background`'s ``step``)
_MIN_SUBSAMPLED_MESH = 32


def _background(data, cfg, mesh: int | None = None, step: int = 1) -> _Frame:
    """Model the background with :class:`sep.Background` and subtract it.

    Parameters
    ----------
    data : ndarray (ny, nx)
        Image, ADU (any float dtype or byte order; not modified); non-finite
        pixels are masked.
    cfg : Config
        ``phot_back_mesh`` (px) when set, else :data:`_BACK_MESH`; 3x3 median filter.
    mesh : int, optional
        The mesh (px), instead of the config's.
    step : int
        Model the background on every ``step``-th pixel of each axis (meshes of ``mesh / step``
        of those pixels: the same area, the same per-pixel rms as a full model) and subtract the map
        in ``step`` x ``step`` blocks (for tracked frames, whose map only takes the large scales off
        before each star's annulus).  Halved while the meshes would hold fewer than
        :data:`_MIN_SUBSAMPLED_MESH` pixels a side.

    Returns
    -------
    _Frame
        Image, subtracted image, mask, background model and its global level and rms.
    """
    img = np.ascontiguousarray(data, dtype=np.float32)   # native byte order, C order, a copy if needed
    if img.ndim != 2:
        raise InputError(f"image has {img.ndim} dimensions, expected 2")
    bad = ~np.isfinite(img)
    mask = bad if bad.any() else None
    if mask is not None:
        img = img.copy()
        img[bad] = np.median(img[~bad]) if (~bad).any() else 0.0
    mesh = int(mesh or getattr(cfg, "phot_back_mesh", None) or _BACK_MESH)
    step = max(1, int(step))
    while step > 1 and mesh // step < _MIN_SUBSAMPLED_MESH:
        step //= 2
    if step == 1:
        bkg = sep.Background(img, mask=mask, bw=mesh, bh=mesh, fw=3, fh=3)
        sub = img.copy()                 # float32, C order (made so above)
        bkg.subfrom(sub)                 # in place: no background map array
    else:
        sample = np.ascontiguousarray(img[::step, ::step])
        bkg = sep.Background(sample, mask=None if mask is None else np.ascontiguousarray(mask[::step, ::step]),
                             bw=mesh // step, bh=mesh // step, fw=3, fh=3)
        sub = _subtract_blocks(img, bkg.back(), step)
    if mask is not None:
        sub[bad] = 0.0
    return _Frame(img, sub, bad, mask, bkg, float(bkg.globalback), float(bkg.globalrms), step)


def _subtract_blocks(img: np.ndarray, back: np.ndarray, step: int) -> np.ndarray:
    """``img`` minus ``back`` (the map of every ``step``-th pixel), held constant over ``step`` x ``step``
    blocks; float32, one pass, no full-size map."""
    ny, nx = img.shape
    up = np.repeat(back, step, axis=1)[:, :nx]          # (rows of the map, nx)
    out = np.empty_like(img)
    full = ny // step
    if full:
        np.subtract(img[:full * step].reshape(full, step, nx), up[:full, None, :],
                    out=out[:full * step].reshape(full, step, nx))
    if ny > full * step:                                # a last, partial block of rows
        np.subtract(img[full * step:], up[full], out=out[full * step:])
    return out


def _find_sources(frame: _Frame, cfg, positions, gain: float) -> _Sources:
    """Detect the sources (:func:`sep.extract`) or take the given positions, with their shapes.

    Parameters
    ----------
    frame : _Frame
        The background-subtracted frame.
    cfg : Config
        ``detect_thresh`` (x global rms), ``detect_minarea``, ``phot_deblend_nthresh``.
    positions : array (n, 2) or None
        Forced-photometry positions (x, y, 0-based); None: detect.
    gain : float
        e-/ADU (the S/N of the stars that set the window of a forced shape).

    Returns
    -------
    _Sources
        Empty when no source is found (or the background rms is not positive).
        Shapes: sep's isophotal moments, or windowed moments at given positions.
    """
    seg = npix = flux = None
    forced = positions is not None
    if forced:
        pos = np.asarray(positions, dtype=float).reshape(-1, 2) if np.size(positions) else np.zeros((0, 2))
        if not np.isfinite(pos).all():
            raise InputError("positions: every x, y must be finite")
        x0, y0 = pos[:, 0].copy(), pos[:, 1].copy()
        merged = np.zeros(len(x0), dtype=bool)
        a, b, theta = _forced_shape(frame, x0, y0, gain) if len(x0) else (np.zeros(0),) * 3
    elif not (np.isfinite(frame.rms) and frame.rms > 0):
        log.warning("background rms is %s: no source detection on a flat image", frame.rms)
        x0 = y0 = a = b = theta = np.zeros(0)
        merged = np.zeros(0, dtype=bool)
    else:
        objs, seg = _extract(frame.sub, cfg.detect_thresh * frame.rms, frame.mask, cfg.detect_minarea,
                             int(getattr(cfg, "phot_deblend_nthresh", None) or _DEBLEND_NTHRESH))
        x0, y0 = objs["x"].astype(float), objs["y"].astype(float)
        merged = (objs["flag"].astype(np.int64) & sep.OBJ_MERGED) != 0
        a, b, theta = objs["a"].astype(float), objs["b"].astype(float), objs["theta"].astype(float)
        npix, flux = objs["npix"].astype(float), objs["flux"].astype(float)
    b = np.where(np.isfinite(b) & (b > 0.05), b, 0.05)
    a = np.where(np.isfinite(a) & (a >= b), a, b)
    theta = np.where(np.isfinite(theta), np.clip(theta, -np.pi / 2, np.pi / 2), 0.0)
    return _Sources(x0, y0, a, b, theta, merged, seg, forced, npix, flux)


def _forced_shape(frame: _Frame, x0, y0, gain: float):
    """Shape ellipses at given positions: windowed moments with a window fitted to the seeing.

    The window's sigma comes from the median half-light radius of the stars
    with S/N > 20 within a radius that grows with it (10 px, then 3 x the
    FWHM, at most 3 rounds); 1.5 px when no star is good enough.

    Returns
    -------
    a, b, theta : ndarray
        As :func:`_window_shape` (not yet sanitised).
    """
    n = len(x0)
    rmax0 = 10.0
    for _ in range(3):       # half-light radius within a radius adapted to the seeing
        r0, _f = sep.flux_radius(frame.sub, x0, y0, np.full(n, rmax0), 0.5, mask=frame.mask, subpix=5)
        f0, _e, _f = sep.sum_circle(frame.sub, x0, y0, rmax0, mask=frame.mask, subpix=0)
        snr0 = f0 / np.sqrt(np.maximum(f0, 0) / gain + math.pi * rmax0 ** 2 * frame.rms ** 2)
        ok = (snr0 > 20) & np.isfinite(r0) & (r0 > 0)
        fw0 = float(np.median(2 * r0[ok])) if ok.any() else float("nan")
        if not np.isfinite(fw0) or fw0 * 2.5 < rmax0:
            break
        rmax0 = 3.0 * fw0
    sig_w = fw0 / _GAUSS_FWHM if np.isfinite(fw0) else 1.5
    return _window_shape(frame.sub, x0, y0, sig_w)


def _auto_photometry(frame: _Frame, src: _Sources):
    """SExtractor's AUTO (Kron) flux at the detection centroids, on the global background.

    Returns
    -------
    flux : ndarray
        Sum in the ellipse ``max(2.5 r_Kron, 3.5)`` x (a, b), ADU.
    sep_flags : ndarray
        sep's aperture flags (``APER_HASMASKED`` ...).
    area : ndarray
        The ellipse's area, px.
    """
    kr, _kf = sep.kron_radius(frame.sub, src.x0, src.y0, src.a, src.b, src.theta, 6.0, mask=frame.mask)
    kr = np.where(np.isfinite(kr), kr, 0.0)
    r_auto = np.maximum(_KRON_FACT * kr, _KRON_MIN)
    flux, _e, sep_flags = sep.sum_ellipse(frame.sub, src.x0, src.y0, src.a, src.b, src.theta, r_auto,
                                          mask=frame.mask, subpix=5)
    return flux, sep_flags, np.pi * src.a * src.b * r_auto ** 2


def _star_fwhm(frame: _Frame, src: _Sources, f_auto) -> np.ndarray:
    """Per-source FWHM, px: twice the half-light radius (of the AUTO flux, within 6 a).

    NaN where the AUTO flux is not positive or the radius is not.
    """
    pos_auto = np.flatnonzero(f_auto > 0)
    rh = np.full(len(src.x0), np.nan)
    rh[pos_auto] = _half_light_radius(frame.sub, src.x0[pos_auto], src.y0[pos_auto], 6.0 * src.a[pos_auto],
                                      f_auto[pos_auto].astype(float), frame.mask)
    with np.errstate(invalid="ignore"):
        return np.where(rh > 0, 2.0 * rh, np.nan)


#: the centroid window's FWHM is at most this many times the sources' median FWHM
_WIN_CAP = 2.0


def _centroids(frame: _Frame, src: _Sources, fwhm_star):
    """Windowed centroids (``XWIN_IMAGE``); the given positions in forced mode.

    The window is a Gaussian of the star's FWHM (2 px if unknown, at most
    :data:`_WIN_CAP` x the median over the sources); a
    centroid that fails or moves by 1 px or more keeps the detection centroid.

    Returns
    -------
    x, y : ndarray
        0-based px.
    """
    if src.forced:
        return src.x0, src.y0
    x0, y0 = src.x0, src.y0
    sig = np.where(np.isfinite(fwhm_star), fwhm_star / _GAUSS_FWHM, 2.0 / _GAUSS_FWHM)
    fin = np.isfinite(fwhm_star)
    if fin.any():      # a faint or blended source's half-light radius can be huge: its window costs its area
        sig = np.minimum(sig, _WIN_CAP * float(np.median(fwhm_star[fin])) / _GAUSS_FWHM)
    # exact pixel overlap of the 4-sigma window (sep's default: 11x11 sub-pixels, ~20x slower;
    # the positions agree to ~1e-5 px, as the Gaussian weight at the window edge is e^-8)
    xw, yw, wf = sep.winpos(frame.sub, x0, y0, sig, mask=frame.mask, subpix=0)
    good_w = (wf == 0) & np.isfinite(xw) & np.isfinite(yw) & (np.hypot(xw - x0, yw - y0) < 1.0)
    return np.where(good_w, xw, x0), np.where(good_w, yw, y0)


#: a source with more than this fraction of its AUTO flux in its brightest pixel is a hot pixel or a
#: cosmic ray (a star sampled with FWHM >= 1 px puts at most ~0.6 in one pixel; real stars ~0.05)
SINGLE_PIXEL_FRACTION = 0.7


def _single_pixel(frame: _Frame, x, y, peak, f_auto) -> np.ndarray:
    """Sources whose light is (nearly) all in one pixel: hot pixels of an uncalibrated frame, cosmic rays.

    The peak above the background map at the source over its AUTO flux exceeds
    :data:`SINGLE_PIXEL_FRACTION`.  Without dark frames the hot pixels of a camera
    outnumber the stars of a sparse field and would otherwise set the frame's FWHM
    and pin the alignment to the detector.
    """
    ny, nx = frame.img.shape
    ix = np.clip(np.round(x).astype(int), 0, nx - 1)
    iy = np.clip(np.round(y).astype(int), 0, ny - 1)
    back = frame.img[iy, ix] - frame.sub[iy, ix]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = (peak - back) / f_auto
    return (f_auto > 0) & np.isfinite(frac) & (frac > SINGLE_PIXEL_FRACTION)


def _peaks(frame: _Frame, x, y) -> np.ndarray:
    """Highest raw pixel (ADU, background included) within 2 px (a 5x5 box) of each position.

    NaN when the box holds no unmasked pixel inside the image.
    """
    img = frame.img if frame.mask is None else np.where(frame.bad, np.nan, frame.img)
    pk, _, _ = _stamps(img, x, y, 2)
    peak = np.max(np.nan_to_num(pk.reshape(len(x), -1), nan=-np.inf), axis=1)
    peak[~np.isfinite(peak)] = np.nan
    return peak


def _fwhm_candidates(shape, x, y, src: _Sources, fwhm_star, snr_auto, saturated) -> np.ndarray:
    """Sources that may set the frame FWHM: a FWHM, unsaturated, unblended, S/N > 20, 3 a inside."""
    ny, nx = shape
    a = src.a
    inside = (x > 3 * a) & (y > 3 * a) & (x < nx - 1 - 3 * a) & (y < ny - 1 - 3 * a)
    return np.isfinite(fwhm_star) & ~saturated & ~src.merged & (snr_auto > 20) & inside


def _good_stars(cand, sharp, nn, elong, fwhm_star, saturated, fw_pre: float) -> np.ndarray:
    """The stars behind the frame FWHM.

    Parameters
    ----------
    cand : ndarray of bool
        :func:`_fwhm_candidates`.
    sharp : ndarray of bool
        A sharp pixel within 1.5 px (a cosmic ray or hot pixel, not a star).
    nn, elong, fwhm_star : ndarray
        Nearest-neighbour distance (px), elongation and FWHM (px) per source.
    saturated : ndarray of bool
    fw_pre : float
        Median FWHM of the candidates (NaN if none).

    Returns
    -------
    ndarray of bool
        Candidates that are not sharp, isolated (``nn > 4 fw_pre``) and round
        (``elong < 2``); if fewer than 3, the candidates that are not sharp;
        without candidates, every unsaturated source with a FWHM.
    """
    if np.isfinite(fw_pre):
        good = cand & ~sharp & (nn > 4 * fw_pre) & (elong < 2.0)
        if good.sum() < 3:
            good = cand & ~sharp
    else:
        good = np.isfinite(fwhm_star) & (fwhm_star > 0) & ~saturated
    return good


def _apertures(cfg, aper, fwhm: float):
    """Aperture radii and sky annulus of a frame, with warnings for unusable settings.

    Returns
    -------
    radii : ndarray
        px (:func:`aperture_radii`; NaN for relative apertures without a FWHM).
    rin, rout : float
        Sky annulus, px (:func:`sky_annulus`).
    rmax : float
        Largest finite radius (0 if none).
    """
    radii = aperture_radii(aper, fwhm)
    if not np.isfinite(radii).all():
        log.warning("frame FWHM unknown (no good star): FWHM-relative apertures %s give no flux",
                    [v for v in aper if v < 0])
    rin, rout = sky_annulus(cfg, radii)
    rmax = float(np.nanmax(radii)) if np.isfinite(radii).any() else 0.0
    if rin < rmax:
        log.warning("sky annulus %.1f..%.1f px starts inside the largest aperture (%.1f px): "
                    "star light biases the sky", rin, rout, rmax)
    return radii, rin, rout, rmax


def _sky(frame: _Frame, seg, x, y, rin: float, rout: float, gain: float, rdnoise: float):
    """Local sky of each source: the background map at its pixel plus the annulus residual.

    Parameters
    ----------
    frame : _Frame
    seg : ndarray or None
        Segmentation map (footprints left out of the annulus).
    x, y : ndarray
        Positions, px.
    rin, rout : float
        Sky annulus, px.
    gain, rdnoise : float
        e-/ADU, e- (only where no annulus is usable).

    Returns
    -------
    back : ndarray
        Background map at the source's pixel (the global level at a masked pixel), ADU.
    resid : ndarray
        Clipped-mean residual of the annulus (0 where none), ADU.
    var : ndarray
        Per-pixel sky variance, ADU^2 (annulus scatter, else ``back/g + (R/g)^2``
        floored by the background map's rms).
    est_var : ndarray
        Variance of ``resid`` (``var / n_sky``; 0 where no annulus).
    """
    ny, nx = frame.sub.shape
    sky_res, sky_sig, nsky = _local_sky(frame.sub, seg, x, y, rin, rout)
    ix = np.clip(np.rint(x).astype(int), 0, nx - 1)
    iy = np.clip(np.rint(y).astype(int), 0, ny - 1)
    # the map at the star's pixel (image minus subtracted image; a masked pixel: the global level)
    back_xy = np.where(frame.bad[iy, ix], frame.sky, frame.img[iy, ix].astype(float) - frame.sub[iy, ix])
    no_ann = ~np.isfinite(sky_res)
    fallback_var = np.maximum(back_xy, 0) / gain + (rdnoise / gain) ** 2
    if no_ann.any():
        fallback_var = np.maximum(fallback_var, frame.rms_at(iy, ix) ** 2)
    sky_res = np.where(no_ann, 0.0, sky_res)
    sky_var = np.where(no_ann, fallback_var, sky_sig ** 2)
    sky_est_var = np.where(no_ann, 0.0, sky_var / np.maximum(nsky, 1))
    return back_xy, sky_res, sky_var, sky_est_var


def _aperture_photometry(frame: _Frame, x, y, radii, sky_res, sky_var, sky_est_var, gain: float):
    """Circular-aperture fluxes (exact overlap) minus the local sky, with CCD-equation errors.

    Parameters
    ----------
    frame : _Frame
    x, y : ndarray (n,)
        Positions, px.
    radii : ndarray (naper,)
        px; NaN or <= 0: no flux in that aperture.
    sky_res, sky_var, sky_est_var : ndarray (n,)
        From :func:`_sky`.
    gain : float
        e-/ADU.

    Returns
    -------
    flux, ferr : ndarray (n, naper)
        ADU; NaN for unusable apertures.
    sep_flags : ndarray (n,) of int64
        sep's aperture flags, OR-ed over the apertures.
    """
    n = len(x)
    flux = np.full((n, len(radii)), np.nan)
    ferr = np.full((n, len(radii)), np.nan)
    aflag = np.zeros(n, dtype=np.int64)
    for k, r in enumerate(radii):      # at most 19 apertures; sep vectorises over stars
        if not np.isfinite(r) or r <= 0:
            continue
        s, _e, fl = sep.sum_circle(frame.sub, x, y, r, mask=frame.mask, subpix=0)
        npix = math.pi * r * r
        f = s - npix * sky_res
        flux[:, k] = f
        ferr[:, k] = np.sqrt(np.maximum(f, 0) / gain + _noise_pixels(r) * sky_var + npix * npix * sky_est_var)
        aflag |= fl.astype(np.int64)
    return flux, ferr, aflag


def _flags(shape, x, y, rmax: float, saturated, blended, flux, f_auto, sep_flags, sharp) -> np.ndarray:
    """The ``Flags`` bit mask of each source (see the module doc).

    Parameters
    ----------
    shape : (ny, nx)
        Image shape.
    x, y : ndarray
        Positions, px.
    rmax : float
        Largest aperture radius, px.
    saturated, blended : ndarray of bool
    flux : ndarray (n, naper)
        Aperture fluxes.
    f_auto : ndarray
        AUTO fluxes.
    sep_flags : ndarray of int
        sep's aperture flags (apertures and AUTO, OR-ed).
    sharp : ndarray of bool
        A sharp pixel within ``max(rmax, 1.5)`` px.

    Returns
    -------
    ndarray of int32
    """
    ny, nx = shape
    flags = np.zeros(len(x), dtype=np.int32)
    border = (x - rmax < -0.5) | (y - rmax < -0.5) | (x + rmax > nx - 0.5) | (y + rmax > ny - 0.5)
    flags[border] |= FLAG_BORDER
    flags[saturated] |= FLAG_SATURATED
    flags[blended] |= FLAG_BLENDED
    with np.errstate(invalid="ignore"):
        badflux = ~(np.isfinite(flux) & (flux > 0)).all(axis=1) | ~(f_auto > 0)
    flags[badflux] |= FLAG_BADFLUX
    cosmic = ((sep_flags & sep.APER_HASMASKED) != 0) | sharp
    flags[cosmic] |= FLAG_COSMIC
    return flags


def _output_table(x, y, elong, fwhm_star, f_auto, ferr_auto, flux, ferr, sky, peak, flags, meta) -> Table:
    """The catalogue of :func:`measure`: :data:`COLUMNS`, magnitudes from the fluxes, ``meta``."""
    mag, err = mag_err(flux, ferr)
    mag_auto, err_auto = mag_err(f_auto, ferr_auto)
    tab = Table()
    tab["X"], tab["Y"], tab["Elong"], tab["FWHM"] = x, y, elong, fwhm_star
    tab["FluxAUTO"], tab["FErrAUTO"], tab["MagAUTO"], tab["ErrAUTO"] = f_auto, ferr_auto, mag_auto, err_auto
    tab["Flux"], tab["FErr"], tab["Mag"], tab["Err"] = flux, ferr, mag, err
    tab["Sky"] = sky
    tab["Peak"] = peak
    tab["Flags"] = flags
    tab.meta.update(meta)
    return tab


def _no_sources(cfg, aper, stats: dict, gain, rdnoise, saturation) -> tuple[Table, dict]:
    """The result of :func:`measure` for a frame without sources: an empty table, stats."""
    radii = aperture_radii(aper, np.nan)
    rin, rout = sky_annulus(cfg, radii)
    stats.update(APER=[float(r) for r in radii], SKYANN=(rin, rout))
    tab = _empty_table(len(aper))
    tab.meta.update(_meta(stats, gain, rdnoise, saturation))
    log.info("no sources (sky %.1f, rms %.2f)", stats["SKY"], stats["SKYRMS"])
    return tab, stats


def measure(data: np.ndarray, cfg, gain: float, rdnoise: float, saturation: float,
            aper=None, positions=None, sources_out: dict | None = None,
            max_sources: int | None = None) -> tuple[Table, dict]:
    """Detect (or take) sources and measure AUTO and aperture photometry.

    Parameters
    ----------
    data : ndarray
        Corrected image, ADU (any float dtype or byte order; not modified).
    cfg : Config
        Uses ``aper``, ``detect_thresh``, ``detect_minarea``, ``sky_annulus``,
        and, when present, ``phot_back_mesh`` and ``phot_deblend_nthresh``.
    gain : float
        e-/ADU.
    rdnoise : float
        Read noise, e- (only where no sky annulus is usable).
    saturation : float
        Saturation level, ADU (of ``data``).
    aper : list of float, optional
        Aperture radii (px; negative: x frame FWHM); default ``cfg.aper``.
    positions : array (n, 2), optional
        x, y (0-based) for forced photometry: no detection, no recentring,
        rows in the given order.
    sources_out : dict, optional
        Receives ``"sources"``: the :class:`_Sources` found (shapes, deblending
        flags, segmentation map), for a reference frame (:mod:`qlcp.core.forced`).
    max_sources : int, optional
        Measure only this many detected sources, the largest isophotal fluxes
        (every detected one still masked in the sky annuli): a frame of a crowded
        field that could not be tracked (:mod:`qlcp.core.forced`).

    Returns
    -------
    table : astropy.table.Table
        One row per source; columns X, Y, Elong, FWHM, FluxAUTO, FErrAUTO,
        MagAUTO, ErrAUTO, Flux, FErr, Mag, Err (vectors, one element per
        aperture), Sky, Peak, Flags (see the module doc).  ``meta`` holds
        APER, FWHM, SKY, SKYRMS, NSTARS, SKYIN, SKYOUT, GAIN, RDNOISE, SATURATE.
    stats : dict
        FWHM (px, NaN if no good star), SKY (global background median, ADU),
        SKYRMS, NSTARS, NGOOD (stars behind the FWHM), APER (radii in px),
        SKYANN (inner, outer px).
    """
    aper, rdnoise, saturation = _check_settings(cfg.aper if aper is None else aper, gain, rdnoise, saturation)
    frame = _background(data, cfg)
    src = _find_sources(frame, cfg, positions, gain)
    if max_sources is not None:
        src = src.brightest(int(max_sources))
    if sources_out is not None:
        sources_out["sources"] = src
    return measure_sources(frame, src, cfg, aper, gain, rdnoise, saturation)


def measure_sources(frame: _Frame, src: _Sources, cfg, aper, gain: float, rdnoise: float,
                    saturation: float) -> tuple[Table, dict]:
    """The measurements of :func:`measure` for sources already found (or predicted) on a frame.

    ``aper``, ``rdnoise`` and ``saturation`` as checked by :func:`_check_settings`.
    Detected (or predicted, ``src.forced`` False) positions are recentred on the
    windowed centroid; given positions (``src.forced``) are kept.
    """
    n = len(src.x0)
    stats = {"FWHM": float("nan"), "SKY": frame.sky, "SKYRMS": frame.rms, "NSTARS": n, "NGOOD": 0}
    if n == 0:
        return _no_sources(cfg, aper, stats, gain, rdnoise, saturation)
    light = src.light if src.light is not None and src.light.any() and not src.light.all() else None
    if light is not None:              # the pick's candidates: what the pick reads, measured alone
        return _measure_light(frame, src, light, cfg, aper, gain, rdnoise, saturation)

    f_auto, fl_auto, area_auto = _auto_photometry(frame, src)
    fwhm_star = _star_fwhm(frame, src, f_auto)
    x, y = _centroids(frame, src, fwhm_star)
    peak = _peaks(frame, x, y)
    saturated = peak >= saturation
    single = _single_pixel(frame, x, y, peak, f_auto)     # hot pixels, cosmic rays: not stars

    # ---- frame FWHM from good stars
    snr_auto = f_auto / np.sqrt(np.maximum(f_auto, 0) / gain + area_auto * frame.rms ** 2)
    nn = _nn_dist(x, y)
    cand = _fwhm_candidates(frame.sub.shape, x, y, src, fwhm_star, snr_auto, saturated) & ~single
    fw_pre = float(np.median(fwhm_star[cand])) if cand.any() else np.nan
    sharp = _SharpPixels(frame.sub, fw_pre, frame.rms, x, y)   # cosmic rays, hot pixels
    good = _good_stars(cand, sharp.near(1.5) | single, nn, src.elong, fwhm_star, saturated, fw_pre)
    fwhm = _clipped_median_1d(fwhm_star[good])
    stats["FWHM"], stats["NGOOD"] = fwhm, int(good.sum())

    # ---- apertures, local sky, photometry
    radii, rin, rout, rmax = _apertures(cfg, aper, fwhm)
    stats.update(APER=[float(r) for r in radii], SKYANN=(rin, rout))
    back_xy, sky_res, sky_var, sky_est_var = _sky(frame, src.seg, x, y, rin, rout, gain, rdnoise)
    flux, ferr, aflag = _aperture_photometry(frame, x, y, radii, sky_res, sky_var, sky_est_var, gain)
    ferr_auto = np.sqrt(np.maximum(f_auto, 0) / gain + area_auto * sky_var)

    blended = nn < max(rmax, 1.0) if src.forced else src.merged
    flags = _flags(frame.sub.shape, x, y, rmax, saturated, blended, flux, f_auto, aflag | fl_auto,
                   sharp.near(max(rmax, 1.5)) | single)
    tab = _output_table(x, y, src.elong, fwhm_star, f_auto, ferr_auto, flux, ferr, back_xy + sky_res, peak,
                        flags, _meta(stats, gain, rdnoise, saturation))
    log.debug("%d sources, FWHM %.2f px from %d stars, sky %.1f +- %.2f", n, fwhm, stats["NGOOD"],
              frame.sky, frame.rms)
    return tab, stats


def _subset(src: _Sources, keep: np.ndarray) -> _Sources:
    return _Sources(src.x0[keep], src.y0[keep], src.a[keep], src.b[keep], src.theta[keep], src.merged[keep],
                    src.seg, src.forced)


#: light sources follow the full ones' recentring when at least this many unflagged full sources moved
#: less than LIGHT_MOVE_MAX px; the affine fit's clipped rms must stay below LIGHT_RMS_MAX px
LIGHT_MIN_FIT, LIGHT_MOVE_MAX, LIGHT_RMS_MAX = 8, 1.0, 0.25


def _follow_full(pred_full: np.ndarray, tab_full: Table, pred_light: np.ndarray) -> np.ndarray | None:
    """Positions of the light sources through the affine map from the full sources' predicted positions
    to their windowed centroids (least squares, one 3-sigma clip): a transform fitted to a few dozen bright
    stars places a faint star better than its own windowed centroid, at no cost.  None when too few full
    sources recentred (then the light ones are recentred one by one)."""
    got = np.column_stack([np.asarray(tab_full["X"], float), np.asarray(tab_full["Y"], float)])
    d = np.hypot(*(got - pred_full).T)
    ok = (np.asarray(tab_full["Flags"]) == 0) & np.isfinite(d) & (d < LIGHT_MOVE_MAX)
    for _ in range(2):
        if ok.sum() < LIGHT_MIN_FIT:
            return None
        a = np.column_stack([pred_full[ok], np.ones(int(ok.sum()))])
        coef, *_ = np.linalg.lstsq(a, got[ok], rcond=None)
        res = np.hypot(*(np.column_stack([pred_full, np.ones(len(pred_full))]) @ coef - got).T)
        rms = float(np.sqrt(np.mean(res[ok] ** 2)))
        ok &= res < max(3.0 * rms, 1e-3)
    if not rms < LIGHT_RMS_MAX:
        return None
    return np.column_stack([pred_light, np.ones(len(pred_light))]) @ coef


def _measure_light(frame: _Frame, src: _Sources, light: np.ndarray, cfg, aper, gain: float, rdnoise: float,
                   saturation: float) -> tuple[Table, dict]:
    """:func:`measure_sources` with ``src.light`` sources measured only as the automatic pick reads them.

    The other (``~light``) sources are measured by :func:`measure_sources` alone, so their rows and the
    frame's FWHM are what a set of only them gives (the same as with the stars given).  The light ones
    get peak, local sky, aperture fluxes and flags (bad flux: an aperture flux not positive; no
    single-pixel test, the sharp-pixel one stays) at their positions mapped as the full ones recentred
    (:func:`_follow_full`), else recentred on a window of FWHM ``src.win`` (their half-light FWHM on the
    reference, capped as :func:`_centroids` caps it); no AUTO flux and no FWHM (NaN): the pick reads their
    first aperture's magnitude, position, flags, peak and sky.  Rows in ``src`` order.
    """
    full = ~light
    tab_f, stats = measure_sources(frame, _subset(src, full), cfg, aper, gain, rdnoise, saturation)
    lt = _subset(src, light)
    xy = _follow_full(np.column_stack([src.x0[full], src.y0[full]]), tab_f, np.column_stack([lt.x0, lt.y0]))
    if xy is None or lt.forced:
        x, y = _centroids(frame, lt, src.win[light])
    else:
        x, y = xy[:, 0], xy[:, 1]
    peak = _peaks(frame, x, y)
    saturated = peak >= saturation
    radii = np.asarray(stats["APER"], float)
    rin, rout = stats["SKYANN"]
    rmax = float(np.nanmax(radii)) if np.isfinite(radii).any() else 0.0
    back_xy, sky_res, sky_var, sky_est_var = _sky(frame, src.seg, x, y, rin, rout, gain, rdnoise)
    flux, ferr, aflag = _aperture_photometry(frame, x, y, radii, sky_res, sky_var, sky_est_var, gain)
    sharp = _SharpPixels(frame.sub, stats["FWHM"], frame.rms, x, y)
    blended = _nn_dist(x, y) < max(rmax, 1.0) if lt.forced else lt.merged
    nan = np.full(len(x), np.nan)
    flags = _flags(frame.sub.shape, x, y, rmax, saturated, blended, flux, np.ones(len(x)), aflag,
                   sharp.near(max(rmax, 1.5)))
    tab_l = _output_table(x, y, lt.elong, nan, nan, nan, flux, ferr, back_xy + sky_res, peak, flags, {})
    tab = Table()
    for c in tab_f.colnames:
        col = np.empty((len(src.x0),) + tab_f[c].shape[1:], dtype=tab_f[c].dtype)
        col[full], col[light] = tab_f[c], tab_l[c]
        tab[c] = col
    tab.meta.update(tab_f.meta)
    stats["NSTARS"] = tab.meta["NSTARS"] = len(tab)
    return tab, stats


def _meta(stats, gain, rdnoise, saturation) -> dict:
    return {"APER": list(stats["APER"]), "FWHM": stats["FWHM"], "SKY": stats["SKY"],
            "SKYRMS": stats["SKYRMS"], "NSTARS": stats["NSTARS"], "SKYIN": stats["SKYANN"][0],
            "SKYOUT": stats["SKYANN"][1], "GAIN": float(gain), "RDNOISE": float(rdnoise),
            "SATURATE": float(saturation)}


# --------------------------------------------------------------------- file
def catalogue_path(bf_path, out_path) -> Path:
    """``out_path`` itself when it ends in .fits, else ``out_path/{rawstem}.cat.fits``."""
    out = Path(out_path)
    if out.name.lower().endswith(".fits"):
        return out
    stem = raw_stem(bf_path)
    return out / f"{stem.removesuffix('.bf')}.cat.fits"


def photometry_file(bf_path, out_path, cfg, aper=None, key: str | None = None, data=None, stars=None,
                    sources_out: dict | None = None) -> dict:
    """Photometry of one corrected frame into ``{rawstem}.cat.fits`` (and ``.cat.png``).

    Parameters
    ----------
    bf_path : str or Path
        Corrected frame ``{rawstem}.bf.fits``.
    out_path : str or Path
        The catalogue file (``*.fits``), or the directory to put
        ``{rawstem}.cat.fits`` in.
    cfg : Config
        Detector values (:func:`qlcp.core.correct.corrected_detector`: gain and
        read noise from the config, else the header; saturation from the frame's
        SATURATE, in corrected ADU, else the config), photometry settings,
        ``draw_phot``, ``draw_phot_err``.
    aper : list of float, optional
        Apertures instead of ``cfg.aper``.
    key : str, optional
        Provenance key written as ``QLCPKEY``.
    data : ndarray, optional
        The frame's pixels when already in memory (as step i just wrote them);
        only the header is then read from ``bf_path``.
    stars : qlcp.core.forced.StarSet, optional
        Measure only these stars, tracked from their reference frame
        (:func:`qlcp.core.forced.measure_tracked`; ``cfg.offset_max_dis``); when the
        frame does not align, its ``max(len(stars), pick_star_n)`` brightest sources.
    sources_out : dict, optional
        Receives the measured ``table``, ``stats`` and ``sources`` (:func:`measure`).

    Returns
    -------
    dict
        The frame stats of :func:`measure` plus ``file`` (the catalogue path).

    Notes
    -----
    The catalogue header carries JD, MJD, HJD, BJD, AIRMASS, ALT, AZ, EXPTIME,
    RAWFILE, DATE-OBS and the filter/object keywords of the frame (when
    present), BFFILE, PHOTMODE (``full``: every source detected; ``tracked``: the
    reference PHOTREF's stars), the measured FWHM, SKY, SKYRMS, NSTARS, the SKYIN/SKYOUT
    annulus, the GAIN, RDNOISE, SATURATE used, and NAPER with APER0 ..
    APER{n-1}, the radii in px of the ``Flux`` vector elements (NaN values are
    left out: FITS headers cannot hold them).
    """
    if data is None:
        data, hdr = read_image(bf_path)
    else:
        hdr = read_header(bf_path)
    gain, rdnoise, saturation = corrected_detector(hdr, cfg)
    res = None
    if stars is not None:
        from .forced import measure_tracked

        res = measure_tracked(data, cfg, gain, rdnoise, saturation, stars, aper=aper, max_dis=cfg.offset_max_dis)
    if res is None:     # not tracked (the reference, or a frame that does not align): in full, crowding capped
        cap = None if stars is None else max(len(stars), cfg.pick_star_n)
        res = measure(data, cfg, gain, rdnoise, saturation, aper=aper, max_sources=cap, sources_out=sources_out)
    tab, stats = res
    if sources_out is not None:
        sources_out.update(table=tab, stats=dict(stats))
    tab.meta.setdefault("PHOTMODE", "full")

    meta = {}
    for card in COPY_KEYS + (cfg.filter_key, cfg.object_key):
        if card in hdr and card not in meta:
            meta[card] = hdr[card]
    meta["BFFILE"] = Path(bf_path).name
    if key:
        meta["QLCPKEY"] = key          # settings+inputs key (qlcp.core.provenance)
    for mkey, val in tab.meta.items():
        if mkey == "APER":
            meta["NAPER"] = len(val)
            for i, r in enumerate(val):     # APER0 .. APER{n-1}: index of the Flux vector
                if np.isfinite(r):
                    meta[f"APER{i}"] = r
        elif not isinstance(val, float) or np.isfinite(val):   # FITS headers hold no NaN
            meta[mkey] = val
    meta.update(fits_column_cards(tab, "frame_catalogue"))    # TUNITn, TCOMMn: units, descriptions
    tab.meta = meta
    cat = catalogue_path(bf_path, out_path)
    write_table_fast(cat, tab)
    if cfg.draw_phot:
        tab.meta["APER"] = stats["APER"]
        from .plotting import plot_frame_sources

        plot_frame_sources(data, tab, cat.with_name(cat.name[: -len(".fits")] + ".png"), cfg.draw_phot_err,
                           title=cat.name[: -len(".cat.fits")])
    log.debug("%s: %d sources, FWHM %.2f px, sky %.1f", cat.name, stats["NSTARS"], stats["FWHM"], stats["SKY"])
    return {**stats, "file": str(cat)}
