"""Step w: sky coordinates of the base frame (a celestial WCS), from its header or solved offline.

Three pieces:

* :func:`header_wcs` reads a celestial WCS from a FITS header and checks it
  (:func:`check_wcs`: celestial, a zenithal projection such as TAN, a
  non-singular matrix with square pixels, a plausible pixel scale, close to
  the ``pixel_scale`` hint when one is given).  When index files are
  available, :func:`base_wcs` also solves the frame's own detected stars and
  rejects a header WCS that disagrees with the solution.
* :func:`solve` plate-solves offline with astrometry.net's ``solve-field`` on
  an x, y, flux list from our own source detection (step p's catalogue of the
  frame), in a temporary directory under the output root, with a generated
  backend configuration naming the index files of ``astrometry_index``.
* :func:`frame_wcs` is the WCS of another frame whose pixels relate to the
  base frame's by an affine matrix (base pixel -> frame pixel), as step o
  measures them.

Pixel coordinates are 0-based everywhere here (astropy ``origin=0``), as in
the rest of the pipeline; astrometry.net's xylists are 1-based (FITS) and are
converted on the way.  Nothing here needs the network.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning, Sip

from .detector import header_number

log = logging.getLogger("qlcp.astrometry")

#: projections accepted from a header: zenithal ones ("TAN-like"; TPV and SIP are TAN with distortions)
ZENITHAL = frozenset({"TAN", "TPV", "TNX", "SIN", "ARC", "ZEA", "STG", "ZPN", "AZP", "SZP", "ZPX"})
#: plausible pixel scales of a CCD camera on a telescope or lens, arcsec/px
SCALE_RANGE = (0.02, 120.0)
#: the largest disagreement of a header WCS with the solved one, arcsec (and at least this many pixels)
AGREE_ARCSEC, AGREE_PIXELS = 2.0, 1.5
#: header keywords of a pixel-scale hint, arcsec/px
SCALE_KEYS = ("IM_SCALE", "PIXSCALE", "SECPIX")
#: flags of step p's catalogue that disqualify a source from the solve (border, saturated, blended, bad flux, cosmic)
_BAD_FLAGS = 1 | 2 | 4 | 8 | 16
#: at most this many detected stars (the brightest) go to the solver
MAX_STARS = 300


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


class WcsRejected(ValueError):
    """A header WCS that is missing or not usable; the message says why."""


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
        Expected pixel scale, arcsec/px: the WCS must be within 25 % of it.

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
    m = wcs.pixel_scale_matrix
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
    if scale_hint and not 0.8 <= scale / scale_hint <= 1.25:
        raise WcsRejected(f"pixel scale {scale:.4g} arcsec/px, expected about {scale_hint:.4g} (pixel_scale)")


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
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2, relax=True)
    except Exception as e:                                   # astropy raises many types on bad cards
        raise WcsRejected(f"unreadable WCS ({type(e).__name__}: {e})") from None
    check_wcs(wcs, scale_hint)
    return wcs.celestial


def scale_hint_of(header: fits.Header, configured: float | None = None) -> float | None:
    """The pixel-scale hint, arcsec/px: ``configured`` (config ``pixel_scale``), else header
    IM_SCALE / PIXSCALE / SECPIX, else the scale of a header WCS (CD or CDELT), else None."""
    if configured:
        return float(configured)
    v = header_number(header, SCALE_KEYS)
    if v is not None:
        return v
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = WCS(header, naxis=2, relax=True)
        s = pixel_scale(w) if w.has_celestial else np.nan
    except Exception:
        return None
    return s if np.isfinite(s) and SCALE_RANGE[0] <= s <= SCALE_RANGE[1] else None


# ------------------------------------------------------------------ solving
def index_files(dirs) -> list[Path]:
    """astrometry.net index files (``index*.fits``) in the directories ``dirs`` (sorted, not recursive)."""
    out = []
    for d in dirs or []:
        p = Path(d)
        if p.is_dir():
            out += sorted(p.glob("index*.fits"))
    return out


def solve_field_path() -> str | None:
    """The ``solve-field`` program, or None when astrometry.net is not installed."""
    return shutil.which("solve-field")


def write_xylist(path: Path, x, y, flux, shape: tuple[int, int]) -> Path:
    """Write the xylist ``solve-field`` reads: columns X, Y (1-based FITS pixels) and FLUX,
    brightest first, with IMAGEW/IMAGEH.  ``x``, ``y`` are 0-based; ``shape`` is (ny, nx)."""
    order = np.argsort(-np.asarray(flux, dtype=float), kind="stable")
    cols = [fits.Column(name="X", format="D", array=np.asarray(x, float)[order] + 1.0),
            fits.Column(name="Y", format="D", array=np.asarray(y, float)[order] + 1.0),
            fits.Column(name="FLUX", format="D", array=np.asarray(flux, float)[order])]
    hdu = fits.BinTableHDU.from_columns(cols)
    hdu.header["IMAGEW"], hdu.header["IMAGEH"] = int(shape[1]), int(shape[0])
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
    return path


def backend_config(path: Path, indexes: list[Path], cpulimit: float) -> Path:
    """Write astrometry.net's backend configuration: each index file by name, the CPU limit."""
    lines = [f"cpulimit {int(np.ceil(cpulimit))}", "inparallel"] + [f"index {p}" for p in indexes]
    path.write_text("\n".join(lines) + "\n")
    return path


def solve_command(xyls: Path, cfg_file: Path, out_dir: Path, shape: tuple[int, int], timeout: float,
                  scale: float | None = None, center: tuple[float, float] | None = None,
                  radius: float = 2.0) -> list[str]:
    """The ``solve-field`` command line for an xylist (see :func:`solve` for the parameters).

    ``--no-verify``: an xylist has no WCS to verify; we compare with the header's ourselves.
    ``--no-remove-lines``: our detections are stars, not the bleed columns it removes.
    ``--tweak-order 1``: a linear (TAN) fit; a 2nd-order SIP fitted to a few dozen matches over a
    small-telescope field adds more error at the corners than it removes (0.58 vs 0.1 arcsec on the
    synthetic field of the tests).
    """
    cmd = [solve_field_path() or "solve-field", str(xyls), "--no-plots", "--overwrite", "--no-verify",
           "--no-remove-lines", "--backend-config", str(cfg_file), "--dir", str(out_dir),
           "--temp-dir", str(out_dir), "--width", str(shape[1]), "--height", str(shape[0]),
           "--x-column", "X", "--y-column", "Y", "--sort-column", "FLUX", "--cpulimit", str(int(np.ceil(timeout))),
           "--wcs", str(out_dir / "solution.wcs"), "--corr", str(out_dir / "solution.corr"),
           "--new-fits", "none", "--index-xyls", "none", "--rdls", "none", "--match", "none", "--crpix-center", "--tweak-order", "1"]
    if scale:
        cmd += ["--scale-units", "arcsecperpix", "--scale-low", f"{scale / 1.2:.6g}", "--scale-high",
                f"{scale * 1.2:.6g}"]
    if center is not None:
        cmd += ["--ra", f"{center[0]:.6f}", "--dec", f"{center[1]:.6f}", "--radius", f"{radius:.4g}"]
    return cmd


def solve(x, y, flux, shape: tuple[int, int], work_root, index_dirs, scale: float | None = None,
          center: tuple[float, float] | None = None, radius: float = 2.0,
          timeout: float = 60.0) -> tuple[WCS | None, str, dict]:
    """Plate-solve detected stars offline with ``solve-field``.

    Parameters
    ----------
    x, y, flux : array_like
        Detected sources, 0-based pixels, and their fluxes.
    shape : (ny, nx)
        The frame's shape.
    work_root : Path
        Directory under which a temporary working directory is made (the output root).
    index_dirs : list of str
        Directories holding astrometry.net index files.
    scale : float, optional
        Pixel-scale hint, arcsec/px (searched within a factor 1.2).
    center : (ra, dec), optional
        Field-centre hint, degrees, searched within ``radius`` degrees.
    timeout : float
        CPU limit of the solver, s (the process is killed 30 s after).

    Returns
    -------
    wcs : WCS or None
        The solution (0-based with ``origin=0``), None when not solved.
    reason : str
        What happened, in words.
    info : dict
        ``n_stars``, ``solve_seconds``, ``match_rms_arcsec`` / ``n_match`` (stars matched to the index).
    """
    indexes = index_files(index_dirs)
    info = {"n_stars": int(len(x))}
    if solve_field_path() is None:
        return None, "astrometry.net (solve-field) is not installed", info
    if not indexes:
        return None, f"no astrometry.net index files (index*.fits) in {list(index_dirs or [])}", info
    if len(x) < 5:
        return None, f"only {len(x)} usable stars detected, too few to solve", info
    Path(work_root).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".astrometry-", dir=work_root) as tmp:
        tmp = Path(tmp)
        xyls = write_xylist(tmp / "stars.xyls", x, y, flux, shape)
        cmd = solve_command(xyls, backend_config(tmp / "backend.cfg", indexes, timeout), tmp, shape, timeout,
                            scale, center, radius)
        t0 = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30, check=False,
                                  env={**os.environ, "TMPDIR": str(tmp)})
        except subprocess.TimeoutExpired:
            return None, f"solve-field did not finish in {timeout + 30:.0f} s", info
        info["solve_seconds"] = round(time.perf_counter() - t0, 3)
        return _read_solution(tmp, done, info, len(indexes))


def _read_solution(tmp: Path, done: subprocess.CompletedProcess, info: dict, n_index: int):
    """The WCS ``solve-field`` wrote in ``tmp`` (and match statistics), or why there is none."""
    wcs_file = tmp / "solution.wcs"
    if not wcs_file.is_file():
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-1:] or [""]
        why = f"exit status {done.returncode}: {tail[0]}" if done.returncode else "no match"
        return None, f"solve-field found no solution with {n_index} index file(s) ({why})", info
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(fits.getheader(wcs_file), relax=True)
    info.update(_match_stats(tmp / "solution.corr", wcs))
    return wcs, f"solved by astrometry.net from {info['n_stars']} detected stars", info


def _match_stats(corr: Path, wcs: WCS) -> dict:
    """Number of detected stars matched to index stars and their rms distance (arcsec) under ``wcs``."""
    if not corr.is_file():
        return {}
    t = fits.getdata(corr, 1)
    if len(t) == 0:
        return {"n_match": 0}
    ra, dec = wcs.all_pix2world(t["field_x"] - 1.0, t["field_y"] - 1.0, 0)
    sep = angular_sep(ra, dec, t["index_ra"], t["index_dec"])
    return {"n_match": int(len(t)), "match_rms_arcsec": round(float(np.sqrt(np.mean(sep ** 2))), 4)}


def angular_sep(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Angular distance in arcsec between positions in degrees (Vincenty's formula, exact at small angles)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(a, dtype=float)) for a in (ra1, dec1, ra2, dec2))
    d = ra2 - ra1
    num = np.hypot(np.cos(dec2) * np.sin(d), np.cos(dec1) * np.sin(dec2) - np.sin(dec1) * np.cos(dec2) * np.cos(d))
    den = np.sin(dec1) * np.sin(dec2) + np.cos(dec1) * np.cos(dec2) * np.cos(d)
    return np.degrees(np.arctan2(num, den)) * 3600.0


# ------------------------------------------------------------- the base frame
def usable_stars(cat: np.ndarray, n_max: int = MAX_STARS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y (0-based), flux of the brightest clean sources of a step-p catalogue (structured array)."""
    flux = np.asarray(cat["FluxAUTO"], dtype=float)
    ok = np.isfinite(flux) & (flux > 0) & ((np.asarray(cat["Flags"]) & _BAD_FLAGS) == 0)
    ok &= np.isfinite(cat["X"]) & np.isfinite(cat["Y"])
    idx = np.flatnonzero(ok)[np.argsort(-flux[ok], kind="stable")][:n_max]
    return np.asarray(cat["X"], float)[idx], np.asarray(cat["Y"], float)[idx], flux[idx]


def compare_wcs(a: WCS, b: WCS, x, y) -> float:
    """Median distance, arcsec, between the sky positions ``a`` and ``b`` give the pixels ``x``, ``y``."""
    ra1, de1 = a.all_pix2world(x, y, 0)
    ra2, de2 = b.all_pix2world(x, y, 0)
    return float(np.median(angular_sep(ra1, de1, ra2, de2)))


def solve_hints(header: fits.Header, scale: float | None, shape, center) -> tuple:
    """``(center, radius)`` for the solver: the header WCS's centre when it has one (radius 2 fields),
    else ``center`` (the header's RA/DEC), else none; radius from the field size when the scale is known."""
    diag = np.hypot(*shape) * scale / 3600.0 if scale else 1.0
    try:
        w = header_wcs(header)
        ra, dec = w.all_pix2world((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0, 0)
        return (float(ra), float(dec)), max(0.1, 2 * diag)
    except WcsRejected:
        pass
    return (center, max(0.5, 2 * diag)) if center is not None else (None, 180.0)


def base_wcs(header: fits.Header, stars: tuple, shape: tuple[int, int], work_root, index_dirs,
             scale_hint: float | None = None, center: tuple[float, float] | None = None,
             timeout: float = 60.0) -> WcsResult:
    """The WCS of the base frame: its header's when that is usable (and agrees with a solution
    of its detected stars when index files are available), else solved, else none.

    Parameters
    ----------
    header : Header
        The base frame's header.
    stars : (x, y, flux)
        Its detected stars (:func:`usable_stars`).
    shape : (ny, nx)
    work_root, index_dirs, timeout
        As in :func:`solve`.
    scale_hint : float, optional
        Configured pixel scale, arcsec/px (else read from the header: :func:`scale_hint_of`).
    center : (ra, dec), optional
        The header's pointing, degrees: a search hint when the header has no WCS.
    """
    scale = scale_hint_of(header, scale_hint)
    try:
        hw, why_not = header_wcs(header, scale_hint), ""
    except WcsRejected as e:
        hw, why_not = None, f"header WCS not used: {e}"
    c, radius = solve_hints(header, scale, shape, center)
    sw, why, info = solve(*stars, shape, work_root, index_dirs, scale, c, radius, timeout)
    info["scale"] = round(pixel_scale(hw or sw), 5) if (hw or sw) else scale
    if hw is not None and sw is not None:
        d = compare_wcs(hw, sw, stars[0], stars[1])
        info["agree_arcsec"] = round(d, 4)
        if d <= max(AGREE_ARCSEC, AGREE_PIXELS * pixel_scale(sw)):
            return WcsResult(hw, "header", f"header WCS agrees with the solution of the detected stars "
                                           f"(median {d:.2f} arcsec)", info)
        return WcsResult(sw, "solved", f"header WCS rejected: {d:.1f} arcsec from the solution of the "
                                       f"detected stars; {why}", info)
    if hw is not None:
        return WcsResult(hw, "header", f"header WCS checked (celestial, TAN-like, {info['scale']:.3f} arcsec/px); "
                                       f"not compared with the stars: {why}", info)
    if sw is not None:
        return WcsResult(sw, "solved", f"{why_not}; {why}", info)
    return WcsResult(None, "none", f"{why_not}; {why}: pixel coordinates only", info)


# -------------------------------------------------------------- other frames
def frame_wcs(base: WCS, m) -> WCS:
    """The WCS of a frame whose pixels relate to the base frame's by the affine matrix ``m``.

    Parameters
    ----------
    base : WCS
        The base frame's celestial WCS (TAN, optionally with SIP distortion).
    m : array_like, shape (2, 3)
        ``[[a, b, dx], [c, d, dy]]``: a base pixel (x, y), 0-based, is at
        ``(a x + b y + dx, c x + d y + dy)`` in the frame.  A pure shift
        (step o's offsets) is ``[[1, 0, dx], [0, 1, dy]]``.

    Returns
    -------
    WCS
        A new WCS (``base`` is not modified): the same sky position at the
        mapped pixel.  Exact for linear WCSs; SIP polynomials are re-expanded
        in the frame's pixels (same order, exact up to rounding).

    Raises
    ------
    ValueError
        A singular matrix, or a distortion other than SIP (lookup tables).
    """
    m = np.asarray(m, dtype=float).reshape(2, 3)
    a, t = m[:, :2], m[:, 2]
    if abs(np.linalg.det(a)) < 1e-12:
        raise ValueError(f"singular affine matrix {m.tolist()}")
    if base.cpdis1 is not None or base.cpdis2 is not None or base.det2im1 is not None or base.det2im2 is not None:
        raise ValueError("frame_wcs: lookup-table distortions are not supported")
    ainv = np.linalg.inv(a)
    out = copy.deepcopy(base)
    out.wcs.crpix = a @ (np.asarray(base.wcs.crpix, float) - 1.0) + t + 1.0
    new = base.pixel_scale_matrix @ ainv
    if base.wcs.has_cd():
        out.wcs.cd = new
    else:
        out.wcs.pc, out.wcs.cdelt = new, [1.0, 1.0]
    if base.sip is not None:
        out.sip = _sip_in_frame(base.sip, a, out.wcs.crpix)
    out.wcs.set()
    return out


def _sip_in_frame(sip: Sip, a: np.ndarray, crpix) -> Sip:
    """SIP coefficients in frame pixels: base pixels offsets u = A^-1 u', distortion g(u') = A f(A^-1 u')."""
    ainv = np.linalg.inv(a)

    def remap(pa, pb):
        if pa is None:
            return None, None
        order = pa.shape[0] - 1
        g = np.linspace(-1000.0, 1000.0, 2 * order + 3)
        up, vp = (c.ravel() for c in np.meshgrid(g, g))
        u, v = ainv @ np.vstack([up, vp])
        f = np.vstack([_poly(pa, u, v), _poly(pb, u, v)])
        fa, fb = a @ f
        return _fit_poly(up, vp, fa, order), _fit_poly(up, vp, fb, order)

    na, nb = remap(sip.a, sip.b)
    nap, nbp = remap(sip.ap, sip.bp)
    return Sip(na, nb, nap, nbp, crpix)


def _poly(c: np.ndarray, u, v) -> np.ndarray:
    """Sum of ``c[p, q] u^p v^q``."""
    out = np.zeros_like(np.asarray(u, dtype=float))
    for p, q in zip(*np.nonzero(c)):
        out += c[p, q] * u ** p * v ** q
    return out


def _fit_poly(u, v, f, order: int) -> np.ndarray:
    """Coefficients ``c[p, q]`` (p + q <= order) of the polynomial through ``f`` at (u, v)."""
    s = 1000.0                                          # scaled for a well-conditioned fit
    terms = [(p, q) for p in range(order + 1) for q in range(order + 1 - p)]
    design = np.column_stack([(u / s) ** p * (v / s) ** q for p, q in terms])
    sol, *_ = np.linalg.lstsq(design, f, rcond=None)
    c = np.zeros((order + 1, order + 1))
    for (p, q), k in zip(terms, sol):
        c[p, q] = k / s ** (p + q)
    return c


# ------------------------------------------------------------------ product
def write_wcs_product(res: WcsResult, path, base_file: str = "", key: str = "") -> Path:
    """Write ``wcs_{obj}_{band}.fits``: a header-only FITS file with the base frame's WCS (when there
    is one) and ``WCSSRC`` (header/solved/none), ``WCSWHY`` (reason), ``BASEFILE``, the numbers of
    :attr:`WcsResult.info` and ``QLCPKEY``.  Read back with :func:`read_wcs_product`."""
    from .io import atomic_path

    h = res.wcs.to_header(relax=True) if res.wcs is not None else fits.Header()
    h["WCSSRC"] = (res.source, "where the WCS comes from: header, solved, none")
    h["WCSWHY"] = res.reason
    h["BASEFILE"] = (Path(base_file).name, "base frame of the group")
    for k, card in (("scale", "PIXSCALE"), ("agree_arcsec", "WCSAGREE"), ("match_rms_arcsec", "WCSRMS"),
                    ("n_match", "WCSNMAT"), ("n_stars", "WCSNSTAR"), ("solve_seconds", "SOLVESEC")):
        if res.info.get(k) is not None:
            h[card] = res.info[k]
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
    return WcsResult(wcs, source, str(h.get("WCSWHY", "")), info)
