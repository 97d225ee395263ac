"""A whole simulated night on disk: :func:`simulate_night`, the small test night :func:`simulate_small`, their truth.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml
from astropy import units as u
from astropy.table import Table

from .._version import __version__
from ..errors import ConfigError, InputError
from ..io import write_fits, write_json, write_table, write_text
from .frames import (_bias_pattern, _cosmics_table, _frames_table, _pixel_response, _sky_positions, _sky_shape,
                     _write_bias_frames, _write_flat_frames, _write_science_frames)
from .options import SimOptions, SimulatedNight, _ADC_MAX, _GEOMETRY_DEFAULTS, _options
from .plan import _field, _geometry, _plan

log = logging.getLogger("qlcp.simulate")


def simulate_night(out_dir, n_frames: int = 60, size: int = 1024, seed: int = 0, *,
                   overwrite: bool = False, dated: bool = False, **options) -> SimulatedNight:
    """Write a synthetic night (raw frames, config, truth) under ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Destination; ``raw/``, ``truth/`` and ``night.yaml`` are created in it.
    n_frames : int
        Number of science frames (cadence ``options['cadence']``, default 90 s).
    size : int
        Frame side, px (square frames).
    seed : int
        Seed of every random draw; the same seed gives byte-identical files.
    overwrite : bool
        Allow an existing non-empty ``raw/`` holding only ``*.fit`` files: they are deleted first.
    dated : bool
        Put the frames in ``raw/YYYYMMDD/`` (the evening's date, ``options['night']``), as
        observatories name night directories, instead of ``raw/`` itself.
    **options
        Fields of :class:`SimOptions` (object name, band, detector, site, stars, clouds, eclipse ...).

    Returns
    -------
    SimulatedNight
        Paths and the truth tables.

    Raises
    ------
    ConfigError
        Unknown or impossible option.
    InputError
        ``raw/`` exists and is not empty, and ``overwrite`` is false or it holds other files.
    """
    tic = time.perf_counter()
    o = _options(dict(options), n_frames, size, seed)
    object.__setattr__(o, "_camera", seed if o.detector_seed is None else o.detector_seed)   # INSTRUME: per camera
    out = Path(out_dir)
    raw, truth = _prepare_dirs(out, overwrite, o.night.replace("-", "") if dated else "")

    plan = _plan(o, n_frames, seed)
    geom = _geometry(o, n_frames, size, plan["dx"], plan["dy"])
    if geom is not None:
        plan.update(geom)
    stars = _field(o, size, seed, plan["dx"], plan["dy"], geom)
    if o.field_of:
        stars = _shared_field(o)
    bias = _bias_pattern(o, size, seed)
    resp, donuts = _pixel_response(o, size, seed)
    sky_shape, sky_ang = _sky_shape(o, size, seed)

    bias_files = _write_bias_frames(o, raw, seed, bias, plan["start0"] - 2.75 * u.hour)
    flat_files, flat_levels = _write_flat_frames(o, raw, seed, bias, resp, plan["start0"] - 2.0 * u.hour)
    sci_files, cr_rows = _write_science_frames(o, raw, size, seed, plan, stars, bias, resp, sky_shape)

    fr = _frames_table(o, plan, sci_files)
    if o.wcs:
        stars = _sky_positions(o, plan, stars)
    info = _truth_info(o, n_frames, size, seed, plan, bias, sky_ang, donuts,
                       bias_files, flat_files, flat_levels, sci_files)
    write_fits(truth / "bias.fits", bias)
    write_fits(truth / f"flat_{o.band}.fits", resp)
    write_table(truth / "stars.ecsv", stars)
    write_table(truth / "frames.ecsv", fr)
    write_table(truth / "cosmics.ecsv", _cosmics_table(cr_rows))
    write_json(truth / "truth.json", info)
    cfg_path = _write_night_config(out, o, seed)

    el = time.perf_counter() - tic
    log.info("simulated night in %s: %d bias, %d flats, %d science frames of %d px in %.1f s",
             out, len(bias_files), len(flat_files), n_frames, size, el)
    return SimulatedNight(out_dir=out, raw_dir=raw, truth_dir=truth, config_path=cfg_path, stars=stars,
                          frames=fr, info=info, bias_files=bias_files, flat_files=flat_files,
                          science_files=sci_files, elapsed_s=el)


def _shared_field(o: SimOptions) -> Table:
    """The stars of the night in ``o.field_of``, moved by ``o.pointing`` (another night of that field:
    the same stars, fluxes and variability, pointed elsewhere)."""
    path = Path(o.field_of) / "truth" / "stars.ecsv"
    if not path.is_file():
        raise ConfigError(f"simulate_night: field_of {o.field_of!r}: no truth/stars.ecsv there")
    stars = Table.read(path, format="ascii.ecsv")
    stars["x"] = np.asarray(stars["x"], float) + o.pointing[0]
    stars["y"] = np.asarray(stars["y"], float) + o.pointing[1]
    return stars


def _prepare_dirs(out: Path, overwrite: bool, night: str = "") -> tuple[Path, Path]:
    """Create ``out/raw`` (``out/raw/{night}`` when ``night`` is given) and ``out/truth``; an earlier
    night's ``*.fit`` frames in ``raw`` are deleted when ``overwrite``.

    Raises
    ------
    InputError
        ``raw/`` is not empty and ``overwrite`` is false, or it holds anything but ``*.fit`` files.
    """
    raw, truth = (out / "raw" / night if night else out / "raw"), out / "truth"
    if raw.exists() and any(raw.iterdir()):
        if not overwrite:
            raise InputError(f"{raw}: not empty (pass overwrite=True to replace a simulated night)")
        if any(p.suffix != ".fit" or not p.is_file() for p in raw.iterdir()):
            raise InputError(f"{raw}: holds files other than .fit frames; not touching it")
        for p in raw.glob("*.fit"):
            p.unlink()
    raw.mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    return raw, truth


def _truth_info(o: SimOptions, n_frames: int, size: int, seed: int, plan: dict, bias: np.ndarray,
                sky_ang: float, donuts: list[dict], bias_files: list[Path], flat_files: list[Path],
                flat_levels: list[float], sci_files: list[Path]) -> dict:
    """The content of ``truth/truth.json``: options, site, target, eclipse ephemeris, detector, models,
    the special stars' ids, the jump and drift, and the calibration files."""
    return {
        "generator": f"qlcp.core.simulate {__version__}",
        "seed": int(seed), "n_frames": int(n_frames), "size": int(size),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(o).items()
                    if k not in _GEOMETRY_DEFAULTS or v != _GEOMETRY_DEFAULTS[k]},
        "site": {"lon": o.site_lon, "lat": o.site_lat, "ele": o.site_ele, "tz": o.site_tz},
        "object": o.obj, "band": o.band,
        "target": {"ra_deg": plan["ra"], "dec_deg": plan["dec"], "ra": plan["ra_s"], "dec": plan["dec_s"]},
        "eclipse": {"t0_bjd_tdb": plan["t0_bjd"], "t0_jd_utc": float(plan["t0_utc"].jd),
                    "depth_mag": o.eclipse_depth, "duration_s": plan["dur_s"],
                    "duration_d": plan["dur_s"] / 86400.0,
                    "shape": "1 - delta*(1-u^2)^1.5 for |u|<1, u = 2(BJD_TDB - t0)/duration; "
                             "delta = 1 - 10^(-0.4 depth_mag)"},
        "gain": o.gain, "rdnoise": o.rdnoise, "saturation": o.saturation, "adc_max": _ADC_MAX,
        "bias_level": float(np.median(bias)), "extinction_k": o.extinction_k, "zeropoint": o.zeropoint,
        "psf": {"model": "moffat", "beta": o.psf_beta, "sampling": "pixel centres"},
        "sky_model": {"formula": "sky_adu * (1 + amplitude * (cos(angle) (x - c) + sin(angle) (y - c)) / size), "
                                 "c = (size - 1) / 2; ADU above bias, before the pixel response",
                      "amplitude": o.sky_gradient, "angle_deg": math.degrees(sky_ang)},
        "base_file": sci_files[0].name,
        "target_id": 0, "constant_ids": list(range(1, 1 + o.n_constant)), "saturated_id": 1 + o.n_constant,
        "jump_frame": plan["jump_frame"], "drift_angle_deg": plan["drift_angle"],
        "flats": {"files": [p.name for p in flat_files], "median_adu": flat_levels},
        "dust_donuts": donuts,
        "bias_files": [p.name for p in bias_files],
        **({"flip_frame": plan["flip_frame"]} if plan.get("mats") is not None else {}),
    }


def _write_night_config(out: Path, o: SimOptions, seed: int) -> Path:
    """``out/night.yaml``: the site and detector settings a reduction of the night needs."""
    cfg = {"site_lon": o.site_lon, "site_lat": o.site_lat, "site_ele": o.site_ele, "site_tz": o.site_tz,
           "gain": o.gain, "rdnoise": o.rdnoise, "saturation": o.saturation, "tel_diameter": o.tel_diameter}
    return write_text(out / "night.yaml",
                      f"# QLCP config of the simulated night {o.night} ({o.obj} {o.band}, seed {seed})\n"
                      + yaml.safe_dump(cfg, sort_keys=False))


def truth_transforms(frames: Table) -> np.ndarray:
    """The true transform of every frame, base pixel -> frame pixel (0-based), from ``truth/frames.ecsv``.

    Parameters
    ----------
    frames : Table
        ``truth/frames.ecsv`` (or :attr:`SimulatedNight.frames`).

    Returns
    -------
    ndarray (n, 2, 3)
        ``m00..m12`` of a transformed night; ``[[1, 0, dx], [0, 1, dy]]`` of a night of shifts.
    """
    n = len(frames)
    if "m00" in frames.colnames:
        return np.stack([[np.asarray(frames[f"m{r}{k}"], float) for k in range(3)] for r in range(2)]).transpose(2, 0, 1)
    mats = np.zeros((n, 2, 3))
    mats[:, 0, 0] = mats[:, 1, 1] = 1.0
    mats[:, 0, 2] = np.asarray(frames["dx"], float)
    mats[:, 1, 2] = np.asarray(frames["dy"], float)
    return mats


def simulate_small(out_dir, n_frames: int = 12, size: int = 256, seed: int = 0, **options) -> SimulatedNight:
    """A small, fast night for tests (default 12 frames of 256 x 256 px, 5 bias, 5 flats).

    Same model as :func:`simulate_night`; ``options`` override the small defaults.
    """
    options.setdefault("n_bias", 5)
    options.setdefault("n_flats", 5)
    options.setdefault("n_constant", 4)
    return simulate_night(out_dir, n_frames=n_frames, size=size, seed=seed, **options)
