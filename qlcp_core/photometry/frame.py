"""A frame before it is measured: its global background (:class:`_Frame`) and its sources (:class:`_Sources`).

The background is sep's mesh model (optionally on every ``step``-th pixel, for tracked frames);
the sources are detected (sep's extraction and deblending) or given (forced photometry: shapes
from windowed moments).  :mod:`qlcp.core.photometry.measurement` measures them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import sep

from ..errors import InputError
from .pixels import MAX_APERTURES, _BACK_MESH, _DEBLEND_NTHRESH, _GAUSS_FWHM, _extract, _window_shape

log = logging.getLogger("qlcp.photometry")


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
    #: sources measured only as the automatic pick reads them (tracked frames, :mod:`qlcp.core.photometry.forced`;
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
