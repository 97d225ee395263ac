"""The offline plate solver: astrometry.net's ``solve-field`` with local index files.

Which index files cover a field's scale (:func:`indexes_for_field`, with advice on the Debian
packages to install, :func:`index_advice`), the memory of failed solves (:class:`SolveMemory`),
the command, its bounded run in its own process group (:func:`run_bounded`) and the solution
read back (:func:`solve`).
"""

from __future__ import annotations

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
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from ..errors import one_line
from .wcs import angular_sep

log = logging.getLogger("qlcp.astrometry")


#: wall-time budget of the solves of a frame with a position hint, s (config ``solve_timeout``)
POSITION_BUDGET = 30.0
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
        from ..io import write_json

        d = self._read()
        d[key] = {"reason": one_line(reason, 300), "night": self.night,
                  "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
        try:
            write_json(self.path, d)
        except Exception as e:                               # an unwritable field directory costs a retry
            log.warning("%s: failed solve not remembered (%s)", self.path, one_line(e))

    def forget(self, key: str) -> None:
        from ..io import write_json

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
