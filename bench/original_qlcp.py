"""Run the ORIGINAL QLCP (PyPI ``qlcp`` 0.24.x, the v2024 script library) on a simulated night.

This is the reference side of the benchmark: the same raw night our pipeline reduces is
reduced by the original program, in its own virtual environment, single-threaded, and we
report its wall time (per step and per frame) and the scatter of its light curves.

Public functions
----------------
``setup_original(venv_dir=None, version=None) -> str``
    Idempotent install: a separate venv with ``qlcp==version`` and the SExtractor binary
    (Debian ``source-extractor``).  Returns the venv's python.  Raises
    :class:`OriginalNotAvailable` with one clear message when impossible.
``truth_stars(night_dir, n_check=1) -> dict``
    ``starxy``/``ind_tgt``/``ind_ref``/``ind_chk`` from ``truth/stars.ecsv`` (target + constant stars).
``site_from_night(night_dir) -> dict``
    ``site_lon``/``site_lat``/``site_ele``/``site_tz`` from ``night.yaml``.
``run_original(raw_dir, red_dir, python, starxy, ind_tgt, ind_ref, ind_chk, aper, ...) -> dict``
    Run it in a subprocess, time every step, return seconds, seconds per frame, output paths.
``original_scatter(red_dir, aper, ...) -> dict``
    Read its differential light curves (its TEXT files, never its pickles) and compute the
    robust scatter of the check star(s) and of the target residual against the truth.

Command line: ``python bench/original_qlcp.py --frames 200 --size 1024 --workdir /tmp/origbench``.

Facts about the original that this module handles (found by reading its source)
-------------------------------------------------------------------------------
* ``qlcp.run(raw_dir, red_dir, steps, obj, band, ..., aper, starxy, ind_tgt, ind_ref, ind_chk,
  mode, ini_file, **config)``; extra keywords become configuration (``site_lon`` ...).
  (Its ``ini_file`` handling is broken: a list is wrapped in a tuple and never read, a string
  is iterated by character; so configuration goes in as keywords.)
* File names: ``(?P<obj>[^-_]*)-(?P<sn>[0-9]{3,6})(?P<band>[a-zA-Z]?).fit(s)?`` (objects named
  ``bias``/``flat`` are calibrations).  Headers read: ``DATE-OBS`` (+ ``TIME-OBS``),
  ``EXPTIME``, ``RA`` (sexagesimal HOURS) and ``DEC`` of the first science frame, ``FILTER``
  (copied to the catalogue), ``GAIN`` and ``SATURATE`` (by SExtractor).
* Apertures are handed to SExtractor's ``PHOT_APERTURES``, which are DIAMETERS.  Our ``aper``
  is a radius, so :func:`run_original` passes ``2 * aper`` (the same physical aperture).
  Its aperture label is ``f"{diameter:04.1f}"`` (radius 5 -> ``"10.0"``).
* Outputs under ``red_dir``: ``lst/``, ``log/``, ``bias.fits``, ``flat_{band}.fits``,
  ``{obj}_{band}/{raw}.bf.fits|se.fits|cat.fits|cat.txt``, ``offset_{obj}_{band}.pkl|txt|png``,
  ``cata_{obj}_{band}.pkl|fits|txt|png``, ``cali_{obj}_{band}.pkl``,
  ``cali_{obj}_AP{label}/{obj}_{band}_v{k:02d}_{refs}.txt`` (target) and ``..._ch{k:02d}_{refs}.txt``
  (check), three columns ``BJD mag err`` (``%15.7f %6.3f %6.3f``, ``nan`` when unmatched),
  ``lc_{obj}_{band}_AP{label}_{v..}_{ch..}_{c..}.png``.  The differential magnitude is
  ``mag_star - mean(mag_refs)`` (mean of magnitudes).
* Bug (0.24.913): a flat outside ``[flat_limit_low, flat_limit_high]`` is set to NaN and the
  master flat is ``np.median`` of the cube, so ONE rejected flat makes the whole master flat
  NaN, every corrected frame NaN, and step ``o`` dies (``TypeError: expected non-empty vector
  for x`` in ``qmatch.mean_xy``).  (0.24.610 instead dies at once: ``data_cube[f] = nan`` with
  ``f`` a file name -> ``IndexError``.)  Our simulated nights have a saturated first flat and a
  too-faint last flat on purpose, so by default :func:`run_original` shows the original a
  symlinked copy of ``raw_dir`` without the flats it would reject (``exclude_bad_flats``).
* Bug (0.24.610 only): unmatched stars keep ``np.empty`` garbage in the catalogue (0.000 in
  the light curve instead of NaN); fixed in 0.24.913, which is why 0.24.913 is the default.
* Mode ``EXIST_APPEND`` skips frames whose ``.bf.fits``/``.cat.fits`` exist, so every timed
  run starts from an empty ``red_dir``.  A ``default.sex`` in the working directory would be
  used instead of the packaged one, so the run's working directory is ``red_dir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from glob import glob
from pathlib import Path

import numpy as np

log = logging.getLogger("qlcp.bench.original")

#: qlcp release installed by default: the last 2024 release (the v2024 line).  0.24.606-0.24.610
#: are the June 2024 ("v2024.6") builds; they crash on a night with a rejected flat (see above).
DEFAULT_VERSION = "0.24.913"
#: SExtractor executables the original looks for, in its order.
SE_NAMES = ("sex", "source-extractor", "sextractor")
#: the original's default flat limits (mean of bias-subtracted flat, ADU).
FLAT_LIMITS = (5000.0, 50000.0)
#: file written in every red_dir made by run_original (marks it as safe to wipe).
MARKER = "_bench_original.json"
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


class OriginalError(RuntimeError):
    """Anything that went wrong with the original program."""


class OriginalNotAvailable(OriginalError):
    """The original cannot be installed or run on this machine (one-line reason)."""


class OriginalRunFailed(OriginalError):
    """The original ran but failed or produced no light curve (message ends with its log tail)."""


# ------------------------------------------------------------------ setup
def default_venv_dir() -> Path:
    """``$QLCP_ORIGINAL_VENV`` or ``bench/.venv-original`` beside this file."""
    env = os.environ.get("QLCP_ORIGINAL_VENV")
    return Path(env) if env else Path(__file__).resolve().parent / ".venv-original"


def _venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def _installed_version(python: Path) -> str | None:
    if not python.exists():
        return None
    r = subprocess.run([str(python), "-I", "-c",
                        "import importlib.metadata as m, qlcp; print(m.version('qlcp'))"],
                       capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def find_source_extractor(path: str | None = None) -> str | None:
    """Full path of the first SExtractor executable the original would find, or None."""
    for name in SE_NAMES:
        p = shutil.which(name, path=path)
        if p:
            return p
    return None


def _install_source_extractor() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise OriginalNotAvailable(
            "SExtractor not found (none of sex/source-extractor/sextractor on PATH) and cannot "
            "install it here: run as root 'apt-get update && apt-get install -y source-extractor'")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "source-extractor"]):
        log.info("running %s", " ".join(cmd))
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
            raise OriginalNotAvailable(f"'{' '.join(cmd)}' failed (exit {r.returncode}): {tail[0]}")


def setup_original(venv_dir: str | os.PathLike | None = None, version: str | None = None) -> str:
    """Install the original QLCP in its own venv (idempotent) and make sure SExtractor exists.

    Parameters
    ----------
    venv_dir : path, optional
        Where the venv lives; default :func:`default_venv_dir` (``$QLCP_ORIGINAL_VENV`` or
        ``bench/.venv-original``).  Never /work/venv: the original's ``qlcp`` package would
        clash with ours.
    version : str, optional
        ``qlcp`` release; default ``$QLCP_ORIGINAL_VERSION`` or :data:`DEFAULT_VERSION`.

    Returns
    -------
    str
        Path of the venv's python (pass it to :func:`run_original`).

    Raises
    ------
    OriginalNotAvailable
        No python >= 3.10, pip failed (e.g. no package index), or SExtractor cannot be installed.
    """
    venv = Path(venv_dir) if venv_dir else default_venv_dir()
    version = version or os.environ.get("QLCP_ORIGINAL_VERSION") or DEFAULT_VERSION
    py = _venv_python(venv)

    if _installed_version(py) != version:
        base = Path(getattr(sys, "_base_executable", sys.executable))
        if sys.version_info < (3, 10):
            raise OriginalNotAvailable(f"the original needs python >= 3.10; this is {sys.version.split()[0]}")
        if not py.exists():
            log.info("creating venv %s", venv)
            r = subprocess.run([str(base), "-m", "venv", str(venv)], capture_output=True, text=True)
            if r.returncode != 0:
                raise OriginalNotAvailable(f"cannot create venv {venv}: {(r.stderr or r.stdout).strip()[-300:]}")
        log.info("installing qlcp==%s into %s", version, venv)
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", f"qlcp=={version}"],
                           capture_output=True, text=True)
        got = _installed_version(py)
        if r.returncode != 0 or got != version:
            err = [ln for ln in (r.stderr or r.stdout).splitlines() if "ERROR" in ln or "Error" in ln]
            raise OriginalNotAvailable(
                f"pip install qlcp=={version} into {venv} failed (exit {r.returncode}): "
                f"{err[-1] if err else (r.stderr or r.stdout).strip()[-300:]}")

    if find_source_extractor() is None:
        _install_source_extractor()
        if find_source_extractor() is None:
            raise OriginalNotAvailable("source-extractor installed but not on PATH")
    if shutil.which("which") is None:       # the original calls os.system("which sex") to find SE
        raise OriginalNotAvailable("the original needs the 'which' command (Debian package debianutils)")
    return str(py)


# ------------------------------------------------------------------ inputs from the simulated night
def truth_stars(night_dir: str | os.PathLike, n_check: int = 1) -> dict:
    """Target and constant stars of a simulated night, in the original's ``starxy`` form.

    ``starxy[0]`` is the target (truth id 0), then the constant stars in id order; the last
    ``n_check`` constant stars are check stars, the others comparison (reference) stars.
    Coordinates are 0-based pixels of the base (first science) frame, which is also what the
    original matches against (its catalogue X, Y are SExtractor's minus 1).
    """
    from astropy.table import Table
    st = Table.read(Path(night_dir) / "truth" / "stars.ecsv")
    tgt = st[st["role"] == "target"]
    const = st[st["role"] == "constant"]
    const = const[np.argsort(const["id"])]
    if len(tgt) != 1 or len(const) < n_check + 1:
        raise OriginalError(f"{night_dir}: need 1 target and >= {n_check + 1} constant stars in truth/stars.ecsv")
    rows = [tgt[0]] + list(const)
    n = len(rows)
    return {
        "starxy": [[float(r["x"]), float(r["y"])] for r in rows],
        "ids": [int(r["id"]) for r in rows],
        "ind_tgt": [0],
        "ind_ref": list(range(1, n - n_check)),
        "ind_chk": list(range(n - n_check, n)),
    }


def site_from_night(night_dir: str | os.PathLike) -> dict:
    """``site_lon``, ``site_lat``, ``site_ele``, ``site_tz`` from ``night.yaml`` (original's config names)."""
    import yaml
    cfg = yaml.safe_load((Path(night_dir) / "night.yaml").read_text())
    return {k: float(cfg[k]) for k in ("site_lon", "site_lat", "site_ele", "site_tz") if k in cfg}


# ------------------------------------------------------------------ running
def aper_label(aper: float | str) -> str:
    """The original's label of our aperture RADIUS ``aper`` (it is given the diameter): 5 -> ``'10.0'``."""
    if isinstance(aper, str):
        return aper
    return f"{2.0 * float(aper):04.1f}"


def _raw_view(raw_dir: Path, view: Path, limits: tuple[float, float]) -> list[str]:
    """Symlink every FITS file of raw_dir into view, except flats the original would reject.

    The original rejects a flat when mean(flat - master bias) is outside ``limits``; the bias
    level here is the median of the first bias frame.  Returns the names left out.
    """
    from astropy.io import fits
    files = sorted(p for p in raw_dir.iterdir() if re.search(r"\.fits?$", p.name))
    bias = [p for p in files if "bias" in p.name.lower()]
    level = float(np.median(fits.getdata(bias[0]))) if bias else 0.0
    view.mkdir(parents=True)
    dropped = []
    for p in files:
        if "flat" in p.name.lower():
            m = float(np.mean(fits.getdata(p), dtype=np.float64)) - level
            if not limits[0] < m < limits[1]:
                dropped.append(p.name)
                continue
        (view / p.name).symlink_to(p.resolve())
    return dropped


_DRIVER = r"""
import json, sys, time, traceback
args = json.load(open(sys.argv[1]))
res = {"steps": {}, "error": None}
def dump():
    with open(args["result"] + ".tmp", "w") as f:
        json.dump(res, f, indent=1)
    import os; os.replace(args["result"] + ".tmp", args["result"])
t0 = time.perf_counter()
try:
    import qlcp, importlib.metadata as md
    res["version"] = md.version("qlcp")
    res["import_s"] = time.perf_counter() - t0
    dump()
    for s in (args["steps"] if args["per_step"] else [args["steps"]]):
        t = time.perf_counter()
        qlcp.run(args["raw_dir"], args["red_dir"], steps=s, obj=args["obj"], band=args["band"],
                 aper=args["aper"], starxy=args["starxy"], ind_tgt=args["ind_tgt"],
                 ind_ref=args["ind_ref"], ind_chk=args["ind_chk"], **args["conf"])
        res["steps"][s] = time.perf_counter() - t
        dump()
except BaseException as e:
    res["error"] = f"{type(e).__name__}: {e}"
    res["traceback"] = traceback.format_exc()
    dump()
    raise
"""


def _tail(path: Path, n: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return "(no log)"
    lines = [ln for ln in text.splitlines() if ln.strip() and "%|" not in ln]
    return "\n".join(lines[-n:])


def _prepare_red_dir(red: Path) -> None:
    if red.exists() and any(red.iterdir()):
        if not (red / MARKER).exists():
            raise OriginalError(f"{red}: not empty and not made by run_original; refusing to delete it")
        shutil.rmtree(red)
    red.mkdir(parents=True, exist_ok=True)


def run_original(raw_dir, red_dir, python, starxy, ind_tgt, ind_ref, ind_chk, aper=5.0,
                 steps: str = "lbfiopcd", site: dict | None = None, timeout: float = 3600.0, *,
                 obj: str | None = None, band: str | None = None, per_step: bool = True,
                 exclude_bad_flats: bool = True, conf: dict | None = None) -> dict:
    """Reduce ``raw_dir`` with the original QLCP, single-threaded, timing each step.

    Parameters
    ----------
    raw_dir : path
        The raw night (``bias-0001.fit``, ``flat-0001V.fit``, ``SIMV-0001V.fit`` ...).
    red_dir : path
        Output directory of the original; emptied first if a previous :func:`run_original`
        made it, refused if it holds anything else.
    python : str
        The original's python (from :func:`setup_original`).
    starxy, ind_tgt, ind_ref, ind_chk
        Stars (0-based x, y in the first science frame) and the indices of target,
        comparison and check stars in ``starxy`` (see :func:`truth_stars`).
    aper : float
        Aperture RADIUS in px, as our ``Config.aper`` (negative: multiple of the FWHM).  The
        original gets ``2 * aper`` because SExtractor's PHOT_APERTURES are diameters.
    steps : str
        The original's step letters (``l b f i o p c d``; ``k``/``w``/``g`` are not used here).
    site : dict, optional
        ``site_lon``/``site_lat``/``site_ele``/``site_tz`` (or ``lon``/``lat``/``ele``/``tz``);
        default: the original's defaults (Xinglong, as the simulator's).
    timeout : float
        Seconds before the run is killed (its process group).
    obj, band : str, optional
        Restrict to one object/band (default: all, as the original).
    per_step : bool
        True: one ``qlcp.run`` call per step letter in one process (same order and work as one
        call; gives the time of every step).  False: one call with all steps (total only).
    exclude_bad_flats : bool
        Hide from the original the flats it would reject (see the module notes: a rejected
        flat makes its master flat all NaN).  The names left out are in the result.
    conf : dict, optional
        Any other configuration of the original (``flat_limit_low``, ``match_max_dis`` ...).

    Returns
    -------
    dict
        ``version``, ``steps``, ``n_frames`` (science frames), ``seconds`` (sum of the steps:
        the work, without interpreter start and imports), ``seconds_per_frame``,
        ``step_seconds`` and ``step_seconds_per_frame`` (per letter, when ``per_step``),
        ``import_s``, ``wall_s`` (whole subprocess), ``aper_radius``, ``aper_original``
        (diameter given to it), ``aper_label``, ``excluded_flats``, ``red_dir``, ``raw_dir_used``,
        ``log`` (its screen output), ``outputs`` (``target_txt``, ``check_txt``, ``lc_png``,
        ``cata_fits``, ``offset_txt`` and ``pickles``: paths; the pickles are never read).

    Raises
    ------
    OriginalRunFailed
        Non-zero exit, timeout, or no light-curve text file after a run with step ``d``.
    """
    raw = Path(raw_dir).resolve()
    red = Path(red_dir).resolve()
    python = str(python)
    if not raw.is_dir():
        raise OriginalError(f"{raw}: raw directory not found")
    _prepare_red_dir(red)
    conf = dict(conf or {})
    for k, v in (site or {}).items():
        conf[k if k.startswith("site_") else f"site_{k}"] = float(v)
    as_list = lambda v: [int(v)] if isinstance(v, (int, np.integer)) else [int(i) for i in v]  # noqa: E731
    aper_orig = 2.0 * float(aper)

    dropped: list[str] = []
    raw_used = raw
    if exclude_bad_flats and "f" in steps:
        limits = (float(conf.get("flat_limit_low", FLAT_LIMITS[0])), float(conf.get("flat_limit_high", FLAT_LIMITS[1])))
        raw_used = red / "_raw_view"
        dropped = _raw_view(raw, raw_used, limits)
        if dropped:
            log.info("hiding %d flat(s) the original would reject: %s", len(dropped), ", ".join(dropped))

    result_json = red / "_bench_result.json"
    args = {
        "raw_dir": str(raw_used), "red_dir": str(red), "steps": steps, "per_step": per_step,
        "obj": obj, "band": band, "aper": aper_orig,
        "starxy": [[float(x), float(y)] for x, y in starxy],
        "ind_tgt": as_list(ind_tgt), "ind_ref": as_list(ind_ref), "ind_chk": as_list(ind_chk),
        "conf": conf, "result": str(result_json),
    }
    (red / MARKER).write_text(json.dumps(args, indent=1))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CONDA"))}
    env.update({k: "1" for k in _THREAD_VARS})
    env["MPLBACKEND"] = "Agg"
    venv_bin = str(Path(python).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "/usr/local/bin:/usr/bin:/bin")])
    if find_source_extractor(env["PATH"]) is None:
        raise OriginalNotAvailable("SExtractor not on PATH (run setup_original first)")

    logfile = red / "_bench_original.log"
    tic = time.perf_counter()
    with open(logfile, "wb") as out:
        proc = subprocess.Popen([python, "-I", "-c", _DRIVER, str(red / MARKER)], cwd=red, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)       # our own child's process group
            proc.wait()
            raise OriginalRunFailed(f"original QLCP timed out after {timeout:.0f} s; log {logfile}:\n{_tail(logfile)}")
    wall = time.perf_counter() - tic

    res = json.loads(result_json.read_text()) if result_json.exists() else {"steps": {}}
    if rc != 0 or res.get("error"):
        raise OriginalRunFailed(f"original QLCP failed (exit {rc}) at step "
                                f"{next((s for s in steps if s not in res['steps']), '?')}: "
                                f"{res.get('error')}; log {logfile}:\n{_tail(logfile)}")

    n_frames = 0
    for lst in sorted((red / "lst").glob("*.lst")):
        if lst.stem == "bias" or lst.stem.startswith("flat_"):
            continue
        if obj and not lst.stem.startswith(f"{obj}_"):
            continue
        n_frames += sum(1 for ln in lst.read_text().splitlines() if ln.strip())
    outputs = {
        "target_txt": sorted(glob(str(red / "cali_*_AP*" / "*_v[0-9]*.txt"))),
        "check_txt": sorted(glob(str(red / "cali_*_AP*" / "*_ch[0-9]*.txt"))),
        "lc_png": sorted(glob(str(red / "lc_*.png"))),
        "cata_fits": sorted(glob(str(red / "cata_*.fits"))),
        "offset_txt": sorted(glob(str(red / "offset_*.txt"))),
        "pickles": sorted(glob(str(red / "*.pkl"))),
    }
    if "d" in steps and not outputs["target_txt"]:
        raise OriginalRunFailed(f"original QLCP wrote no light curve (cali_*_AP*/*.txt) in {red}; "
                                f"log {logfile}:\n{_tail(logfile)}")

    step_s = {s: float(t) for s, t in res["steps"].items()}
    seconds = float(sum(step_s.values()))
    nf = max(n_frames, 1)
    return {
        "version": res.get("version"), "steps": steps, "n_frames": n_frames,
        "seconds": seconds, "seconds_per_frame": seconds / nf,
        "step_seconds": step_s if per_step else {},
        "step_seconds_per_frame": {s: t / nf for s, t in step_s.items()} if per_step else {},
        "import_s": float(res.get("import_s", float("nan"))), "wall_s": wall,
        "aper_radius": float(aper), "aper_original": aper_orig, "aper_label": aper_label(aper),
        "excluded_flats": dropped, "red_dir": str(red), "raw_dir_used": str(raw_used),
        "log": str(logfile), "outputs": outputs,
    }


# ------------------------------------------------------------------ scatter
def robust_std(x) -> float:
    """1.4826 * MAD of the finite values (NaN when fewer than 3)."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if x.size < 3:
        return float("nan")
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def p2p_scatter(x) -> float:
    """Point-to-point robust scatter: 1.4826 * MAD(diff(x)) / sqrt(2), on the finite values in order."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if x.size < 4:
        return float("nan")
    return robust_std(np.diff(x)) / np.sqrt(2.0)


def _read_lc_txt(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One of the original's ``BJD mag err`` text files (``nan`` allowed)."""
    a = np.loadtxt(path, ndmin=2)
    if a.shape[1] < 3:
        raise OriginalError(f"{path}: expected 3 columns BJD mag err, got {a.shape[1]}")
    return a[:, 0], a[:, 1], a[:, 2]


def _lc_stats(bjd, mag, err, truth_bjd=None, truth_dmag=None) -> dict:
    ok = np.isfinite(mag)
    d = {"n": int(mag.size), "n_valid": int(ok.sum()),
         "p2p_mag": p2p_scatter(mag), "robust_std_mag": robust_std(mag),
         "std_mag": float(np.nanstd(mag)) if ok.any() else float("nan"),
         "median_err_mag": float(np.nanmedian(err)) if ok.any() else float("nan")}
    if truth_bjd is not None:
        idx = np.clip(np.searchsorted(truth_bjd, bjd), 1, len(truth_bjd) - 1)
        idx = np.where(np.abs(truth_bjd[idx - 1] - bjd) < np.abs(truth_bjd[idx] - bjd), idx - 1, idx)
        dt = np.abs(truth_bjd[idx] - bjd) * 86400.0
        matched = dt < 30.0
        d["max_abs_dbjd_s"] = float(dt[matched].max()) if matched.any() else float("nan")
        d["n_matched_truth"] = int(matched.sum())
        if truth_dmag is not None:
            res = np.where(matched, mag - truth_dmag[idx], np.nan)
            res -= np.nanmedian(res)
            d["resid_robust_std_mag"] = robust_std(res)
            d["resid_p2p_mag"] = p2p_scatter(res)
    return d


def original_scatter(red_dir, aper: float | str = 5.0, *, obj: str | None = None, band: str | None = None,
                     truth_dir=None, source: str = "txt", ind_ref=None, ind_tgt=None, ind_chk=None) -> dict:
    """Scatter of the original's differential light curves.

    Parameters
    ----------
    red_dir : path
        The ``red_dir`` of :func:`run_original`.
    aper : float or str
        Our aperture RADIUS (the original's label is that of ``2 * aper``), or ``"AUTO"``.
    obj, band : str, optional
        Needed only when ``red_dir`` holds several objects/bands.
    truth_dir : path, optional
        ``{night}/truth``: BJDs are matched to ``frames.ecsv:bjd_mid_tdb`` (a check of the
        original's times) and the target residual against ``-2.5 log10(target_rel_flux)``
        is computed.
    source : ``"txt"`` or ``"fits"``
        ``"txt"``: its light-curve text files (3 decimals, i.e. 1 mmag steps: adds ~0.3 mmag rms).
        ``"fits"``: recompute its differential magnitudes exactly as it does (``mag - mean(ref
        mags)``) from its ``cata_{obj}_{band}.fits`` (float32), which needs ``ind_tgt``,
        ``ind_ref``, ``ind_chk``.  Never the pickles.

    Returns
    -------
    dict
        ``aper_label``, ``source``, ``target``: {index: stats}, ``check``: {index: stats},
        ``check_p2p_mag`` (median over check stars), ``target_resid_robust_std_mag``; stats:
        ``n``, ``n_valid``, ``p2p_mag`` (1.4826 MAD(diff)/sqrt 2), ``robust_std_mag``, ``std_mag``,
        ``median_err_mag`` and with truth ``n_matched_truth``, ``max_abs_dbjd_s`` and, for
        targets, ``resid_robust_std_mag``, ``resid_p2p_mag``.
    """
    red = Path(red_dir)
    label = aper_label(aper)
    dirs = sorted(red.glob(f"cali_{obj or '*'}_AP{label}"))
    if not dirs:
        raise OriginalError(f"{red}: no cali_*_AP{label}/ directory (aperture radius {aper})")
    aper_dir = dirs[0]
    if obj is None:
        obj = aper_dir.name[len("cali_"):-len(f"_AP{label}")]
    if band is None:
        names = sorted(p.name for p in aper_dir.glob(f"{obj}_*_v[0-9]*.txt"))
        if not names:
            raise OriginalError(f"{aper_dir}: no target light curve {obj}_*_vNN_*.txt")
        band = names[0][len(obj) + 1:].split("_")[0]

    truth_bjd = truth_dmag = None
    if truth_dir is not None:
        from astropy.table import Table
        fr = Table.read(Path(truth_dir) / "frames.ecsv")
        order = np.argsort(fr["bjd_mid_tdb"])
        truth_bjd = np.asarray(fr["bjd_mid_tdb"], float)[order]
        truth_dmag = -2.5 * np.log10(np.asarray(fr["target_rel_flux"], float)[order])

    curves: dict[str, dict[int, tuple]] = {"target": {}, "check": {}}
    if source == "txt":
        for kind, tag in (("target", "v"), ("check", "ch")):
            for p in sorted(aper_dir.glob(f"{obj}_{band}_{tag}[0-9]*.txt")):
                k = int(re.match(rf"{re.escape(obj)}_{re.escape(band)}_{tag}(\d+)_", p.name).group(1))
                curves[kind][k] = _read_lc_txt(p)
    elif source == "fits":
        from astropy.io import fits
        if ind_tgt is None or ind_ref is None or ind_chk is None:
            raise OriginalError("source='fits' needs ind_tgt, ind_ref and ind_chk")
        cat = fits.getdata(red / f"cata_{obj}_{band}.fits", 1)
        mags = np.array(cat[f"Mag{label}"], dtype=np.float64)
        errs = np.array(cat[f"Err{label}"], dtype=np.float64)
        mags[mags == -1] = np.nan                      # as the original does
        ref_mean = np.mean(mags[:, list(ind_ref)], axis=1)
        bjd = np.asarray(cat["BJD"], float)
        for kind, ind in (("target", ind_tgt), ("check", ind_chk)):
            for k in ([ind] if np.isscalar(ind) else ind):
                curves[kind][int(k)] = (bjd, mags[:, k] - ref_mean, errs[:, k])
    else:
        raise OriginalError(f"source must be 'txt' or 'fits', not {source!r}")
    if not curves["target"] and not curves["check"]:
        raise OriginalError(f"{aper_dir}: no light curve of {obj} {band}")

    out = {"aper_label": label, "source": source, "obj": obj, "band": band, "dir": str(aper_dir),
           "target": {}, "check": {}}
    for k, (bjd, mag, err) in curves["target"].items():
        out["target"][k] = _lc_stats(bjd, mag, err, truth_bjd, truth_dmag)
    for k, (bjd, mag, err) in curves["check"].items():
        out["check"][k] = _lc_stats(bjd, mag, err, truth_bjd, None)
    chk = [s["p2p_mag"] for s in out["check"].values()]
    out["check_p2p_mag"] = float(np.median(chk)) if chk else float("nan")
    tr = [s.get("resid_robust_std_mag", np.nan) for s in out["target"].values()]
    out["target_resid_robust_std_mag"] = float(tr[0]) if tr else float("nan")
    return out


# ------------------------------------------------------------------ command line
def _night(workdir: Path, frames: int, size: int, seed: int) -> Path:
    """A simulated night in ``workdir/night_{frames}x{size}_s{seed}`` (made once, reused)."""
    night = workdir / f"night_{frames}x{size}_s{seed}"
    info = night / "truth" / "truth.json"
    if info.exists():
        return night
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from qlcp.core.simulate import simulate_night
    tic = time.perf_counter()
    simulate_night(night, n_frames=frames, size=size, seed=seed, overwrite=True)
    log.info("simulated %d frames of %d px in %.1f s", frames, size, time.perf_counter() - tic)
    return night


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Time the original QLCP (PyPI qlcp) on a simulated night.")
    ap.add_argument("--frames", type=int, default=20, help="science frames (default 20)")
    ap.add_argument("--size", type=int, default=1024, help="frame side, px (default 1024)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, required=True, help="where the night and the original's output go")
    ap.add_argument("--aper", type=float, default=5.0, help="aperture RADIUS px (given to the original as diameter)")
    ap.add_argument("--steps", default="lbfiopcd")
    ap.add_argument("--n-check", type=int, default=1, help="constant stars used as check stars (the last ones)")
    ap.add_argument("--venv", type=Path, default=None, help="venv of the original (default $QLCP_ORIGINAL_VENV or bench/.venv-original)")
    ap.add_argument("--version", default=None, help=f"qlcp release (default {DEFAULT_VERSION})")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        python = setup_original(a.venv, a.version)
    except OriginalNotAvailable as e:
        print(f"original not available: {e}")
        return 2
    night = _night(a.workdir.resolve(), a.frames, a.size, a.seed)
    stars = truth_stars(night, a.n_check)
    red = a.workdir.resolve() / f"red_original_{a.frames}x{a.size}_s{a.seed}"
    r = run_original(night / "raw", red, python, stars["starxy"], stars["ind_tgt"], stars["ind_ref"],
                     stars["ind_chk"], a.aper, a.steps, site=site_from_night(night), timeout=a.timeout)
    sc = {}
    if "d" in a.steps:
        sc["txt"] = original_scatter(red, a.aper, truth_dir=night / "truth")
        sc["fits"] = original_scatter(red, a.aper, truth_dir=night / "truth", source="fits",
                                      ind_tgt=stars["ind_tgt"], ind_ref=stars["ind_ref"], ind_chk=stars["ind_chk"])
        sc["auto"] = original_scatter(red, "AUTO", truth_dir=night / "truth")

    print(f"\nOriginal QLCP {r['version']} on {r['n_frames']} frames of {a.size}x{a.size} px, "
          f"steps {r['steps']}, single-threaded (excluded flats: {', '.join(r['excluded_flats']) or 'none'})")
    print(f"{'step':>6} {'seconds':>9} {'s/frame':>9}")
    for s, t in r["step_seconds"].items():
        print(f"{s:>6} {t:9.2f} {r['step_seconds_per_frame'][s]:9.3f}")
    print(f"{'total':>6} {r['seconds']:9.2f} {r['seconds_per_frame']:9.3f}   "
          f"(+ {r['import_s']:.2f} s imports; process wall {r['wall_s']:.2f} s)")
    for name, s in sc.items():
        chk = ", ".join(f"#{k}: {v['p2p_mag'] * 1e3:.2f} ({v['n_valid']}/{v['n']})" for k, v in s["check"].items())
        tgt = s["target"].get(stars["ind_tgt"][0], {})
        print(f"scatter AP{s['aper_label']} [{name}]: check p2p mmag {chk}; target residual vs truth "
              f"{tgt.get('resid_robust_std_mag', float('nan')) * 1e3:.2f} mmag (p2p "
              f"{tgt.get('resid_p2p_mag', float('nan')) * 1e3:.2f}); max |dBJD| {tgt.get('max_abs_dbjd_s', float('nan')):.3f} s")
    if a.json:
        a.json.write_text(json.dumps({"run": r, "scatter": sc, "stars": stars}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
