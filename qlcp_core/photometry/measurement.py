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

import numpy as np
import sep
from astropy.table import Table

from .frame import _Frame, _Sources, _background, _check_settings, _find_sources
from .pixels import (FLAG_BADFLUX, FLAG_BLENDED, FLAG_BORDER, FLAG_COSMIC, FLAG_SATURATED, _GAUSS_FWHM, _KRON_FACT,
                     _KRON_MIN, _SharpPixels, _clipped_median_1d, _empty_table, _half_light_radius, _local_sky,
                     _nn_dist, _noise_pixels, _stamps, aperture_radii, mag_err, sky_annulus)

log = logging.getLogger("qlcp.photometry")


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
        flags, segmentation map), for a reference frame (:mod:`qlcp.core.photometry.forced`).
    max_sources : int, optional
        Measure only this many detected sources, the largest isophotal fluxes
        (every detected one still masked in the sky annuli): a frame of a crowded
        field that could not be tracked (:mod:`qlcp.core.photometry.forced`).

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
