"""Step w: sky coordinates of the base frame (a celestial WCS), from its header or solved offline.

Three pieces:

* :func:`header_wcs` reads a celestial WCS from a FITS header and checks it
  (:func:`check_wcs`: celestial, a zenithal projection such as TAN, a
  non-singular matrix with square pixels, a plausible pixel scale, within 20 %
  of the configured or header pixel scale); :func:`check_position` checks it
  against what the night knows (its configured target, its header RA/DEC).
  When index files fit the field, :func:`base_wcs` also solves the frame's own
  detected stars and rejects a header WCS that disagrees with the solution.
* :func:`solve` plate-solves offline with astrometry.net's ``solve-field`` on
  an x, y, flux list from our own source detection (step p's catalogue of the
  frame), in a temporary directory under the output root, with a generated
  backend configuration naming the index files whose quad sizes fit the field
  (:func:`indexes_for_field`, from the index headers' SCALE_L/SCALE_U), in its
  own process group, killed whole at the time limit.  :func:`base_wcs` gives it
  every hint the night has, best first (:class:`Hints`): the configured
  targets' positions, the header's RA/DEC, the pixel scale; the budget matches
  them (``solve_timeout``, 30 s, with a position; at most 10 s without), and a
  failed field is remembered (:class:`SolveMemory`) and not solved again with
  the same frame shape, scale, indexes and hints.
* :func:`frame_wcs` is the WCS of another frame whose pixels relate to the
  base frame's by an affine matrix (base pixel -> frame pixel), as step o
  measures them.

Pixel coordinates are 0-based everywhere here (astropy ``origin=0``), as in
the rest of the pipeline; astrometry.net's xylists are 1-based (FITS) and are
converted on the way.  Nothing here needs the network.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import signal
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
from .errors import one_line

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
#: wall-time budget of the solves of a frame with a position hint, s (config ``solve_timeout``)
POSITION_BUDGET = 30.0
#: the stated cap of a blind solve (no position hint), s (config ``solve_blind_timeout`` may lower it)
BLIND_CAP = 10.0
#: what a blind solve leaves of its cap for the rest of step w (a crowded 1024² night: step w 10.05 s at a 10 s solve)
BLIND_MARGIN = 0.5
#: at most this many distinct position hints are tried, best first
MAX_POSITIONS = 3
#: the Debian Tycho-2 index packages and their quad diameters (arcmin): not the fields they solve
#: (:func:`index_advice`)
DEBIAN_INDEX_PACKAGES = (("astrometry-data-tycho2-07", 22.0, 30.0), ("astrometry-data-tycho2-08", 30.0, 44.0),
                         ("astrometry-data-tycho2-09", 44.0, 60.0), ("astrometry-data-tycho2-10-19", 60.0, 2000.0))
#: astrometry.net's index scales: quad diameters (arcmin) of scale number k (4100/4200/5200 series)
INDEX_SCALES = ((2.0, 2.8), (2.8, 4.0), (4.0, 5.6), (5.6, 8.0), (8.0, 11.0), (11.0, 16.0), (16.0, 22.0),
                (22.0, 30.0), (30.0, 42.0), (42.0, 60.0), (60.0, 85.0), (85.0, 120.0), (120.0, 170.0),
                (170.0, 240.0), (240.0, 340.0), (340.0, 480.0), (480.0, 680.0), (680.0, 1000.0),
                (1000.0, 1400.0), (1400.0, 2000.0))
#: smallest quad astrometry.net looks for, as a fraction of the field's smaller side (``--quad-size-min``)
QUAD_MIN_FRACTION = 0.1


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


# ------------------------------------------------------------ index files
def index_files(dirs) -> list[Path]:
    """astrometry.net index files (``index*.fits``) in the directories ``dirs`` (sorted, not recursive)."""
    out = []
    for d in dirs or []:
        p = Path(d)
        if p.is_dir():
            out += sorted(p.glob("index*.fits"))
    return out


_INDEX_SCALE_CACHE: dict = {}


def index_scale(path) -> tuple[float, float] | None:
    """The quad diameters (arcmin, lower and upper) an index file holds: its header's SCALE_L / SCALE_U
    (radians), None when the header does not say."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return None
    k = (str(p), st.st_size, st.st_mtime_ns)
    if k not in _INDEX_SCALE_CACHE:
        try:
            h = fits.getheader(p)
            lo, hi = float(h["SCALE_L"]), float(h["SCALE_U"])
            _INDEX_SCALE_CACHE[k] = (np.degrees(lo) * 60.0, np.degrees(hi) * 60.0)
        except Exception:                                    # not an index, or one without the cards
            _INDEX_SCALE_CACHE[k] = None
    return _INDEX_SCALE_CACHE[k]


def field_size(shape: tuple[int, int], scale: float | None) -> tuple[float, float] | None:
    """(width, height) of the field in arcmin from its shape (ny, nx) and scale (arcsec/px), None without a scale."""
    if not scale:
        return None
    return shape[1] * scale / 60.0, shape[0] * scale / 60.0


def indexes_for_field(indexes: list[Path], shape: tuple[int, int], scale: float | None) -> list[Path]:
    """The index files whose quads can appear in the field: quad diameters overlapping
    [``QUAD_MIN_FRACTION`` x the smaller side, the diagonal] (scale within 20 %); all of them when the
    scale is unknown (or an index does not say its scale)."""
    size = field_size(shape, scale)
    if size is None:
        return list(indexes)
    qmin, qmax = QUAD_MIN_FRACTION * min(size) / 1.2, float(np.hypot(*size)) * 1.2
    out = []
    for p in indexes:
        r = index_scale(p)
        if r is None or (r[1] >= qmin and r[0] <= qmax):
            out.append(p)
    return out


def index_advice(shape: tuple[int, int], scale: float | None) -> str:
    """What to install to solve a field of this shape and scale: the Debian package when one covers it,
    else the astrometry.net index series (one sentence)."""
    size = field_size(shape, scale)
    if size is None:
        return ("install astrometry.net and index files for the field's width (the pixel scale is unknown: "
                "set pixel_scale, arcsec/px, to know which)")
    # astrometry.net's rule: index files whose quads are 10-100 % of the field (its smaller side); a
    # Debian package is named by its quads' size, not by the field it solves (index 09, quads 44'-60',
    # solved a 60' field of Tycho-2 stars reliably and a 43' one never: measured)
    w_min = min(size)
    pkgs = [p for p, lo, hi in DEBIAN_INDEX_PACKAGES if hi >= QUAD_MIN_FRACTION * w_min and lo <= w_min]
    ks = [k for k, (lo, hi) in enumerate(INDEX_SCALES) if hi >= QUAD_MIN_FRACTION * w_min and lo <= w_min]
    series = (f"index files {ks[0]:02d}-{ks[-1]:02d} of the 4100 (Tycho-2, 07-19), 4200 (2MASS) or 5200 "
              f"(Tycho-2 + Gaia, 00-06) series from data.astrometry.net" if ks else "")
    head = f"install astrometry.net and index files for a field of {size[0]:.1f}' x {size[1]:.1f}'"
    if pkgs:
        return f"{head} (Debian: apt install astrometry.net {' '.join(pkgs)})"
    return f"{head}: {series} (no Debian package: its Tycho-2 index files hold quads of 22' and more, too large for this field)"


# ------------------------------------------------------------ failure memory
class SolveMemory:
    """Solves that failed, per field and configuration, in a small JSON file beside the field references:
    the next night of the same field with the same frame shape, scale hint, index files and position hints
    is not solved again (a change in any of them, or ``refresh``, retries)."""

    def __init__(self, path, night: str = ""):
        self.path, self.night = Path(path), night

    @staticmethod
    def key(field_name: str, shape, scale, indexes, positions, budget) -> str:
        idx = []
        for p in indexes:
            try:
                st = Path(p).stat()
                idx.append([Path(p).name, st.st_size, int(st.st_mtime)])
            except OSError:
                idx.append([str(p), -1, -1])
        doc = {"field": field_name, "shape": list(map(int, shape)), "scale": round(scale, 3) if scale else None,
               "indexes": idx, "positions": [[round(ra, 3), round(dec, 3)] for _, ra, dec in positions],
               "budget": round(float(budget), 1)}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]

    def _read(self) -> dict:
        try:
            d = json.loads(self.path.read_text())
            return d if isinstance(d, dict) else {}
        except (OSError, ValueError):
            return {}

    def failed(self, key: str) -> dict | None:
        return self._read().get(key)

    def remember(self, key: str, reason: str) -> None:
        from .io import write_json

        d = self._read()
        d[key] = {"reason": one_line(reason, 300), "night": self.night,
                  "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
        try:
            write_json(self.path, d)
        except Exception as e:                               # an unwritable field directory costs a retry
            log.warning("%s: failed solve not remembered (%s)", self.path, one_line(e))

    def forget(self, key: str) -> None:
        from .io import write_json

        d = self._read()
        if d.pop(key, None) is not None:
            try:
                write_json(self.path, d)
            except Exception as e:
                log.warning("%s: not updated (%s)", self.path, one_line(e))


# ------------------------------------------------------------------ solving
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


def run_bounded(cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess | None:
    """Run ``cmd`` in its own session (process group); after ``timeout`` seconds of wall time kill the
    whole group (``solve-field`` is a script that starts ``astrometry-engine`` and others: killing only
    the script left them running).  None on a timeout."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        return subprocess.CompletedProcess(cmd, p.returncode, out, err)
    except subprocess.TimeoutExpired:
        return None
    finally:
        _kill_group(p)


def _kill_group(p: subprocess.Popen) -> None:
    """SIGKILL the process group led by ``p`` (any child still in it) and reap ``p``."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.communicate(timeout=5)
    except Exception:                                       # pipes held open by an unkillable child
        p.kill()


def solve(x, y, flux, shape: tuple[int, int], work_root, index_dirs, scale: float | None = None,
          center: tuple[float, float] | None = None, radius: float = 2.0,
          timeout: float = POSITION_BUDGET, indexes: list[Path] | None = None) -> tuple[WCS | None, str, dict]:
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
        Wall-time limit, s (also the solver's CPU limit): the solver and its children are killed then.
    indexes : list of Path, optional
        The index files to use (default: all of ``index_dirs``).

    Returns
    -------
    wcs : WCS or None
        The solution (0-based with ``origin=0``), None when not solved.
    reason : str
        What happened, in one line.
    info : dict
        ``n_stars``, ``solve_seconds``, ``match_rms_arcsec`` / ``n_match`` (stars matched to the index).
    """
    indexes = index_files(index_dirs) if indexes is None else list(indexes)
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
        done = run_bounded(cmd, timeout, env={**os.environ, "TMPDIR": str(tmp)})
        info["solve_seconds"] = round(time.perf_counter() - t0, 3)
        if done is None:
            return None, f"solve-field did not finish in {timeout:.0f} s (stopped)", info
        return _read_solution(tmp, done, info, len(indexes))


def _read_solution(tmp: Path, done: subprocess.CompletedProcess, info: dict, n_index: int):
    """The WCS ``solve-field`` wrote in ``tmp`` (and match statistics), or why there is none."""
    wcs_file = tmp / "solution.wcs"
    if not wcs_file.is_file():
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-1:] or [""]
        why = f"exit status {done.returncode}: {one_line(tail[0], 160)}" if done.returncode else "no match"
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


@dataclass
class Hints:
    """What a night knows about where its frame points, best first.

    Attributes
    ----------
    positions : list of (label, ra, dec)
        Position hints for the solver, degrees: the object's configured target(s), the header's RA/DEC,
        then the other configured targets.
    known : list of (label, ra, dec, slack_arcmin)
        Positions a header WCS must agree with (:func:`check_position`): the object's own target(s) and
        the header's RA/DEC.
    """

    positions: list = field(default_factory=list)
    known: list = field(default_factory=list)


def _distinct(positions: list, sep_deg: float) -> list:
    """``positions`` without those within ``sep_deg`` of an earlier one, at most :data:`MAX_POSITIONS`."""
    out = []
    for p in positions:
        if all(angular_sep(p[1], p[2], q[1], q[2]) / 3600.0 > sep_deg for q in out):
            out.append(p)
    return out[:MAX_POSITIONS]


def base_wcs(header: fits.Header, stars: tuple, shape: tuple[int, int], work_root, index_dirs,
             scale_hint: float | None = None, center: tuple[float, float] | None = None,
             timeout: float = POSITION_BUDGET, hints: Hints | None = None, blind_timeout: float = BLIND_CAP,
             memory: SolveMemory | None = None, field_name: str = "", refresh: bool = False) -> WcsResult:
    """The WCS of the base frame: its header's when that is usable (and agrees with a solution
    of its detected stars when index files fit the field), else solved with every hint the night has,
    else none (with the reason in one line).

    Parameters
    ----------
    header : Header
        The base frame's header.
    stars : (x, y, flux)
        Its detected stars (:func:`usable_stars`).
    shape : (ny, nx)
    work_root, index_dirs
        As in :func:`solve`.
    scale_hint : float, optional
        Configured pixel scale, arcsec/px (else read from the header: :func:`scale_hint_of`).
    center : (ra, dec), optional
        The header's pointing, degrees (used when ``hints`` is not given).
    timeout : float
        Wall-time budget of the solves with a position hint, s (all hints together).
    hints : Hints, optional
        Position hints, best first, and the positions a header WCS must agree with.
    blind_timeout : float
        Budget of a solve without a position hint, s (capped at :data:`BLIND_CAP`).
    memory : SolveMemory, optional
        Failed solves of earlier nights: the same field and configuration is not solved again.
    field_name : str
        The field (object) name, part of the memory's key.
    refresh : bool
        Solve even when the memory says it failed before.
    """
    if hints is None:
        hints = Hints([("the header's RA/DEC", *center)], [("the header's RA/DEC", *center, 10.0)]) \
            if center is not None else Hints()
    known_scale = scale_hint_of(header, scale_hint, from_wcs=False)
    try:
        hw, why_not = header_wcs(header, known_scale), ""
        check_position(hw, shape, hints.known)
    except WcsRejected as e:
        hw, why_not = None, f"header WCS not used: {e}"
    scale = known_scale or (pixel_scale(hw) if hw is not None else None)
    positions = list(hints.positions)
    if hw is not None:
        ra, dec = hw.all_pix2world((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0, 0)
        positions.insert(0, ("the header WCS's centre", float(ra), float(dec)))
    size = field_size(shape, scale)
    diag_deg = float(np.hypot(*size)) / 60.0 if size else None
    positions = _distinct(positions, 0.5 * diag_deg if diag_deg else 0.1)
    sw, why, info = _solve_with_hints(stars, shape, work_root, index_dirs, scale, positions, diag_deg, timeout,
                                      min(blind_timeout, BLIND_CAP), memory, field_name, refresh)
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


def _solve_with_hints(stars, shape, work_root, index_dirs, scale, positions, diag_deg, budget, blind_budget,
                      memory, field_name, refresh) -> tuple:
    """Solve with each position hint in turn within ``budget`` s, or blind within ``blind_budget`` s;
    only with the index files that fit the field; not at all when the memory says this failed before."""
    info = {"n_stars": int(len(stars[0]))}
    if solve_field_path() is None:
        return None, "astrometry.net (solve-field) is not installed", info
    all_idx = index_files(index_dirs)
    if not all_idx:
        return None, f"no astrometry.net index files (index*.fits) in {list(index_dirs or [])}", info
    idx = indexes_for_field(all_idx, shape, scale)
    if not idx:
        size = field_size(shape, scale)
        have = ", ".join(f"{p.name} ({r[0]:.0f}'-{r[1]:.0f}')" if (r := index_scale(p)) else p.name
                         for p in all_idx[:4]) + (" ..." if len(all_idx) > 4 else "")
        info["no_index_for_scale"] = True
        return None, (f"no index file for a field of {size[0]:.1f}' x {size[1]:.1f}' ({scale:.3g} arcsec/px) "
                      f"among {len(all_idx)}: {have}"), info
    if len(stars[0]) < 5:
        return None, f"only {len(stars[0])} usable stars detected, too few to solve", info
    key = SolveMemory.key(field_name, shape, scale, idx, positions, budget if positions else blind_budget)
    if memory is not None and not refresh:
        prev = memory.failed(key)
        if prev is not None:
            info["remembered"] = True
            return None, (f"not solved again: the same field, indexes and hints failed on "
                          f"{prev.get('night') or prev.get('when')} ({prev.get('reason', '')}); --refresh retries"), info
    t0 = time.perf_counter()
    sw, why, tries = None, "", []
    if positions:
        radius = max(0.75 * diag_deg, 0.1) if diag_deg else 2.0
        for label, ra, dec in positions:
            left = budget - (time.perf_counter() - t0)
            if left < 1.0:
                tries.append(f"{label}: no time left")
                break
            sw, w, i = solve(*stars, shape, work_root, index_dirs, scale, (ra, dec), radius, left, indexes=idx)
            info.update(i)
            tries.append(f"near {label}: {w}")
            if sw is not None:
                why = f"{w} near {label} (radius {radius:.2g} deg, {len(idx)} index file(s))"
                break
        info["hint"] = "position"
    else:
        # the cap is the step's: the solver stops BLIND_MARGIN s earlier for reading the solution and the product
        sw, w, i = solve(*stars, shape, work_root, index_dirs, scale, None, 180.0,
                         max(1.0, blind_budget - BLIND_MARGIN), indexes=idx)
        info.update(i)
        info["hint"] = "blind"
        tries.append(f"blind ({'scale ' + format(scale, '.3g') + ' arcsec/px' if scale else 'no scale'}, "
                     f"no position hint, capped at {blind_budget:.0f} s): {w}")
        why = w
    info["solve_seconds"] = round(time.perf_counter() - t0, 3)
    if sw is None:
        why = "not solved: " + "; ".join(tries)
        if memory is not None:
            memory.remember(key, why)
    elif memory is not None:
        memory.forget(key)
    return sw, one_line(why, 600), info


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
    h["WCSWHY"] = one_line(res.reason, 1000)
    if res.advice:
        h["WCSHELP"] = one_line(res.advice, 1000)
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
    return WcsResult(wcs, source, str(h.get("WCSWHY", "")), info, str(h.get("WCSHELP", "")))
