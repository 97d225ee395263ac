"""A celestial WCS judged and kept: the checks a WCS must pass, and step w's product file.

:class:`WcsResult` (a WCS with its source and reason), :class:`WcsRejected`; the pixel scale,
projection and position checks (:func:`check_wcs`, :func:`check_position`), a header's WCS
(:func:`header_wcs`) and its scale hint; the product ``wcs_{obj}_{band}`` written and read
(:func:`write_wcs_product`, :func:`read_wcs_product`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ..detector import header_number
from ..errors import one_line

#: projections accepted from a header: zenithal ones ("TAN-like"; TPV and SIP are TAN with distortions)
ZENITHAL = frozenset({"TAN", "TPV", "TNX", "SIN", "ARC", "ZEA", "STG", "ZPN", "AZP", "SZP", "ZPX"})
#: plausible pixel scales of a CCD camera on a telescope or lens, arcsec/px
SCALE_RANGE = (0.02, 120.0)
#: the largest disagreement of a header WCS with the solved one, arcsec (and at least this many pixels)
AGREE_ARCSEC, AGREE_PIXELS = 2.0, 1.5
#: header keywords of a pixel-scale hint, arcsec/px
SCALE_KEYS = ("IM_SCALE", "PIXSCALE", "SECPIX")


@dataclass
class WcsResult:
    """The sky coordinates of a frame and where they come from.

    Attributes
    ----------
    wcs : astropy.wcs.WCS or None
        The celestial WCS (0-based pixels with ``origin=0``), None when there is none.
    source : str
        ``header`` (read from the frame and checked), ``solved`` (astrometry.net) or ``none``.
    reason : str
        Why this source: what was checked, or why there is no WCS.
    info : dict
        Numbers: ``scale`` (arcsec/px), ``n_stars`` (stars given to the solver),
        ``agree_arcsec`` (header vs solution), ``solve_seconds``.
    """

    wcs: WCS | None
    source: str
    reason: str
    info: dict = field(default_factory=dict)
    advice: str = ""              #: without a WCS: what to do to place the target (one line)


class WcsRejected(ValueError):
    """A header WCS that is missing or not usable; the message says why (one line)."""

    def __init__(self, msg):
        super().__init__(one_line(msg))


# ----------------------------------------------------------------- checking
def pixel_scale(wcs: WCS) -> float:
    """Mean pixel scale of a celestial WCS at its reference point, arcsec/px (sqrt of |det CD|)."""
    m = wcs.celestial.pixel_scale_matrix
    return float(np.sqrt(abs(np.linalg.det(m))) * 3600.0)


def check_wcs(wcs: WCS, scale_hint: float | None = None) -> None:
    """Check that ``wcs`` is a usable celestial WCS of a CCD frame; raise :class:`WcsRejected` if not.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
    scale_hint : float, optional
        Expected pixel scale, arcsec/px: the WCS must be within 20 % of it.

    Raises
    ------
    WcsRejected
        Not celestial, not a zenithal (TAN-like) projection, singular or
        non-finite matrix, pixels far from square, implausible scale.
    """
    if not wcs.has_celestial or wcs.naxis != 2:
        raise WcsRejected(f"not a 2-D celestial WCS (CTYPE {list(wcs.wcs.ctype)})")
    proj = wcs.wcs.ctype[0][5:8].strip("-")
    if proj not in ZENITHAL:
        raise WcsRejected(f"projection {proj or 'none'!r} is not a zenithal (TAN-like) one")
    try:
        m = wcs.pixel_scale_matrix
    except Exception as e:                                   # wcslib refuses a degenerate matrix
        raise WcsRejected(f"degenerate WCS ({type(e).__name__}: {e})") from None
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(wcs.wcs.crval)) and np.all(np.isfinite(wcs.wcs.crpix))):
        raise WcsRejected("non-finite CD/CDELT, CRVAL or CRPIX")
    sv = np.linalg.svd(m, compute_uv=False) * 3600.0
    if sv[1] <= 0:
        raise WcsRejected("singular CD matrix")
    if sv[0] / sv[1] > 1.1:
        raise WcsRejected(f"pixels far from square: scales {sv[0]:.3g} and {sv[1]:.3g} arcsec/px")
    scale = pixel_scale(wcs)
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        raise WcsRejected(f"implausible pixel scale {scale:.4g} arcsec/px (accepted {SCALE_RANGE[0]}-{SCALE_RANGE[1]})")
    if scale_hint and not 1 / 1.2 <= scale / scale_hint <= 1.2:
        raise WcsRejected(f"pixel scale {scale:.4g} arcsec/px, expected about {scale_hint:.4g} (pixel_scale "
                          f"or the header's IM_SCALE/PIXSCALE/SECPIX; 20 % accepted)")


def check_position(wcs: WCS, shape: tuple[int, int], known: list) -> None:
    """Check a header WCS against the positions known for the field; raise :class:`WcsRejected` if the
    frame's centre is farther than a field width from any of them.

    Parameters
    ----------
    known : list of (label, ra, dec, slack_arcmin)
        The object's configured target(s) and the header's RA/DEC (degrees); ``slack_arcmin`` is added to
        the allowed distance (a telescope's pointing keywords are rougher than a catalogue position).
    """
    if not known:
        return
    ny, nx = shape
    ra0, dec0 = wcs.all_pix2world((nx - 1) / 2.0, (ny - 1) / 2.0, 0)
    width = max(shape) * pixel_scale(wcs) / 60.0
    for label, ra, dec, slack in known:
        d = float(angular_sep(ra0, dec0, ra, dec)) / 60.0
        if not np.isfinite(d) or d > width + slack:
            raise WcsRejected(f"the header WCS's field centre (RA {float(ra0):.4f}, Dec {float(dec0):.4f} deg) is "
                              f"{d:.1f}' from {label} (RA {ra:.4f}, Dec {dec:.4f}); a field is {width:.1f}' wide")


def header_wcs(header: fits.Header, scale_hint: float | None = None) -> WCS:
    """The celestial WCS of ``header``, checked (:func:`check_wcs`).

    Raises
    ------
    WcsRejected
        No WCS cards, an unreadable WCS, or one that fails the checks.
    """
    if not any(k in header for k in ("CTYPE1", "CTYPE2")):
        raise WcsRejected("the header has no WCS (no CTYPE1/CTYPE2)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header, naxis=2, relax=True)
    except Exception as e:                                   # astropy raises many types on bad cards
        raise WcsRejected(f"unreadable WCS ({type(e).__name__}: {e})") from None
    check_wcs(wcs, scale_hint)
    return wcs.celestial


def scale_hint_of(header: fits.Header, configured: float | None = None, from_wcs: bool = True) -> float | None:
    """The pixel-scale hint, arcsec/px: ``configured`` (config ``pixel_scale``), else header
    IM_SCALE / PIXSCALE / SECPIX, else (``from_wcs``) the scale of a header WCS (CD or CDELT), else None."""
    if configured:
        return float(configured)
    v = header_number(header, SCALE_KEYS)
    if v is not None:
        return v
    if not from_wcs:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = WCS(header, naxis=2, relax=True)
            s = pixel_scale(w) if w.has_celestial else np.nan
    except Exception:
        return None
    return s if np.isfinite(s) and SCALE_RANGE[0] <= s <= SCALE_RANGE[1] else None


def angular_sep(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Angular distance in arcsec between positions in degrees (Vincenty's formula, exact at small angles)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(a, dtype=float)) for a in (ra1, dec1, ra2, dec2))
    d = ra2 - ra1
    num = np.hypot(np.cos(dec2) * np.sin(d), np.cos(dec1) * np.sin(dec2) - np.sin(dec1) * np.cos(dec2) * np.cos(d))
    den = np.sin(dec1) * np.sin(dec2) + np.cos(dec1) * np.cos(dec2) * np.cos(d)
    return np.degrees(np.arctan2(num, den)) * 3600.0


# ------------------------------------------------------------------ product
def write_wcs_product(res: WcsResult, path, base_file: str = "", key: str = "") -> Path:
    """Write ``wcs_{obj}_{band}.fits``: a header-only FITS file with the base frame's WCS (when there
    is one) and ``WCSSRC`` (header/solved/none), ``WCSWHY`` (reason), ``BASEFILE``, the numbers of
    :attr:`WcsResult.info`, ``SCALESRC`` (where ``PIXSCALE`` comes from: config, header, solved) and
    ``QLCPKEY``.  Read back with :func:`read_wcs_product`."""
    from ..io import atomic_path

    h = res.wcs.to_header(relax=True) if res.wcs is not None else fits.Header()
    h["WCSSRC"] = (res.source, "where the WCS comes from: header, solved, none")
    h["WCSWHY"] = one_line(res.reason, 1000)
    if res.advice:
        h["WCSHELP"] = one_line(res.advice, 1000)
    h["BASEFILE"] = (Path(base_file).name, "base frame of the group")
    for k, card in (("scale", "PIXSCALE"), ("agree_arcsec", "WCSAGREE"), ("match_rms_arcsec", "WCSRMS"),
                    ("n_match", "WCSNMAT"), ("n_stars", "WCSNSTAR"), ("solve_seconds", "SOLVESEC")):
        if res.info.get(k) is not None:
            h[card] = res.info[k]
    if res.info.get("scale_source"):
        h["SCALESRC"] = (res.info["scale_source"], "PIXSCALE from: config|header|solved")
    if key:
        h["QLCPKEY"] = (key, "settings+inputs key of this product")
    with atomic_path(path) as tmp:
        fits.PrimaryHDU(header=h).writeto(tmp, overwrite=True)
    return Path(path)


def read_wcs_product(path) -> WcsResult:
    """The :class:`WcsResult` stored by :func:`write_wcs_product` (``info``: the numbers it holds)."""
    h = fits.getheader(path)
    source = str(h.get("WCSSRC", "none"))
    wcs = None
    if source != "none":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(h, naxis=2, relax=True)
    info = {k: h[c] for k, c in (("scale", "PIXSCALE"), ("agree_arcsec", "WCSAGREE"), ("match_rms_arcsec", "WCSRMS"),
                                 ("n_match", "WCSNMAT"), ("n_stars", "WCSNSTAR"), ("solve_seconds", "SOLVESEC"))
            if c in h}
    if "SCALESRC" in h:
        info["scale_source"] = str(h["SCALESRC"])
    return WcsResult(wcs, source, str(h.get("WCSWHY", "")), info, str(h.get("WCSHELP", "")))
