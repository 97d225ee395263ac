"""The stars step o aligns on: bright, unsaturated, not sharp, with windowed positions (:func:`detect_stars`).
"""

from __future__ import annotations

import logging

import numpy as np
import sep

from .matching import _brightest

log = logging.getLogger("qlcp.offset")


#: objects whose peak reaches this fraction of saturation are dropped
SAT_FRACTION = 0.95
#: objects whose peak pixel holds this many times the median share of its 3x3
#: neighbourhood are dropped (cosmic rays: 1 px wide tracks and hits)
SHARP_FACTOR = 1.6


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
