"""Step f: master flat per band.

Each flat is bias (and dark) subtracted; frames whose raw median lies outside
``[flat_limit_low, flat_limit_high]`` are rejected (each rejection logged);
the rest are normalised by their own median, clipped-median combined and the
result normalised to median 1 -> ``{red}/flat_{band}.fits``.  Which flat the
correction uses: ``use_flat[band]`` -> tonight's -> ``alt_flat[band]``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import detector
from .combine import combine_files, frame_median, master_header, meanwhile
from .products import product_path
from .config import Config
from .dark import exptime_of
from .io import read_image, write_fits
from .provenance import fits_key, step_key

log = logging.getLogger("qlcp.flat")


def flat_path(red_dir: str | Path, band: str) -> Path:
    return product_path(red_dir, "flat", band=band)


def make_master_flat(files: list[Path], band: str, red_dir: str | Path, cfg: Config,
                     bias: Path | None = None, dark: Path | None = None, progress=None) -> Path | None:
    """Build ``{red}/flat_{band}.fits`` from ``files``; None when no usable flat remains.

    Returns
    -------
    Path or None
    """
    out = flat_path(red_dir, band)
    if not files:
        cfg.mode.missing(f"flat frames of band {band}")
        return None
    key = step_key(cfg, "flat", bias, dark, *files)
    if not cfg.mode.should_write(out, current=fits_key(out) == key):
        return out
    bias_data, bias_hdr = read_image(bias) if bias else (None, {})
    dark_data = read_image(dark)[0] if dark else None
    good, levels, times, rejected = [], [], [], []
    for f in files:
        raw_med = frame_median(f)
        if not cfg.flat_limit_low <= raw_med <= cfg.flat_limit_high:
            why = "below flat_limit_low" if raw_med < cfg.flat_limit_low else "above flat_limit_high"
            log.warning("%s: flat rejected: median %.0f ADU %s [%g, %g]", f.name, raw_med, why,
                        cfg.flat_limit_low, cfg.flat_limit_high)
            rejected.append(f)
            continue
        t = exptime_of(f, cfg) if dark_data is not None else 0.0
        sub = None
        if bias_data is not None:
            sub = bias_data
        if dark_data is not None:
            sub = (sub if sub is not None else 0) + dark_data * t
        level = frame_median(f, sub)
        if level <= 0:
            log.warning("%s: flat rejected: non-positive level %.1f after bias", f.name, level)
            rejected.append(f)
            continue
        good.append(f)
        levels.append(level)
        times.append(t)
    if not good:
        log.warning("band %s: no flat within the limits (%d rejected)", band, len(rejected))
        cfg.mode.missing(f"usable flat frames of band {band}")
        return None

    def prep(i, rows, block):
        if bias_data is not None:
            block = block - bias_data[rows]
        if dark_data is not None:
            block = block - dark_data[rows] * times[i]
        return block / levels[i]

    log.info("band %s: master flat from %d frames (%d rejected)", band, len(good), len(rejected))

    def subs(i):
        return _sub(bias_data, dark_data, times[i])

    gain, rn_adu = None, float(bias_hdr.get("RDNADU", np.nan))
    if bias_data is not None:
        gain = meanwhile(detector.flat_gain, good, levels, subs, rn_adu)
    data = combine_files(good, cfg.combine_sigma, cfg.combine_mem_mb, prepare=prep, progress=progress)
    norm = float(np.median(data))
    data /= norm
    hdr = master_header("flat", good, FILTER=band, NREJECT=(len(rejected), "flats outside the limits"),
                        BIASFILE=Path(bias).name if bias else "none",
                        DARKFILE=Path(dark).name if dark else "none", QLCPKEY=key)
    if gain is not None:
        hdr.update(gain_cards(gain.result(), rn_adu))
    write_fits(out, data.astype(np.float32), hdr)
    log.debug("wrote %s", out)
    return out


def _sub(bias_data, dark_data, t: float):
    """What is subtracted from a flat of exposure ``t``: the bias, plus the dark x ``t``."""
    return bias_data if dark_data is None else bias_data + dark_data * t


def gain_cards(estimate: tuple[float, int], rn_adu: float) -> dict:
    """``GAINEST`` (e-/ADU, photon transfer on pairs of flats), ``NGAINPR`` and, when the master
    bias has a read noise, ``RDNEST`` (e-) for the master flat's header; empty without a pair.

    Parameters
    ----------
    estimate : (gain, pairs)
        :func:`qlcp.core.detector.flat_gain` of the flats within the limits.
    rn_adu : float
        The master bias's ``RDNADU`` (read noise, ADU; NaN when it has none).
    """
    gain, n = estimate
    if not n:
        return {}
    cards = {"GAINEST": (round(gain, 4), "gain e-/ADU, from flat pairs"), "NGAINPR": (n, "flat pairs for GAINEST")}
    if np.isfinite(rn_adu):
        cards["RDNEST"] = (round(rn_adu * gain, 3), "read noise e-, RDNADU of the bias x GAINEST")
    log.info("gain %.3f e-/ADU from %d pair(s) of flats%s", gain, n,
             f", read noise {rn_adu * gain:.2f} e-" if np.isfinite(rn_adu) else "")
    return cards


def load_flat(path: Path | None) -> np.ndarray | None:
    """Flat data with dead (<= 0.05) or non-finite pixels set to 1 (left uncorrected)."""
    if path is None:
        return None
    data = read_image(path)[0]
    bad = ~np.isfinite(data) | (data <= 0.05)
    if bad.any():
        log.debug("%s: %d dead flat pixels left uncorrected", path, int(bad.sum()))
        data[bad] = 1.0
    return data
