"""Optional dark current: master dark per second of exposure.

Beyond the original (which has no dark step): tonight's DARK frames, each
bias-subtracted and divided by its exposure time, are clipped-median combined
into ``{red}/dark.fits`` (ADU/s).  The correction and the flat subtract
``dark x exptime``.  ``use_dark`` names a master to use instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .combine import combine_files, master_header
from .products import product_path
from .config import Config
from .errors import InputError
from .io import read_header, read_image, write_fits
from .provenance import fits_key, step_key

log = logging.getLogger("qlcp.dark")


def dark_path(red_dir: str | Path) -> Path:
    return product_path(red_dir, "dark")


def exptime_of(path: Path, cfg: Config) -> float:
    h = read_header(path)
    for k in (cfg.exptime_key, "EXPTIME", "EXPOSURE"):
        if k in h:
            try:
                return float(h[k])
            except (TypeError, ValueError):
                break
    raise InputError(f"{path}: no valid exposure time ({cfg.exptime_key})")


def make_master_dark(files: list[Path], red_dir: str | Path, cfg: Config, bias: Path | None,
                     progress=None) -> Path | None:
    """Combine tonight's darks into ``{red}/dark.fits`` (ADU per second); None without darks."""
    out = dark_path(red_dir)
    if not files:
        return None
    key = step_key(cfg, "dark", bias, *files)
    if not cfg.mode.should_write(out, current=fits_key(out) == key):
        return out
    times = [exptime_of(f, cfg) for f in files]
    keep = [(f, t) for f, t in zip(files, times) if t > 0]
    if not keep:
        log.warning("darks have no positive exposure time: ignored")
        return None
    files, times = [k[0] for k in keep], [k[1] for k in keep]
    bias_data = read_image(bias)[0] if bias else None

    def prep(i, rows, block):
        if bias_data is not None:
            block = block - bias_data[rows]
        return block / times[i]

    log.info("master dark from %d frames (%s s)", len(files), ", ".join(f"{t:g}" for t in sorted(set(times))))
    data = combine_files(files, cfg.combine_sigma, cfg.combine_mem_mb, prepare=prep, progress=progress)
    hdr = master_header("dark", files, BUNIT="ADU/s", BIASFILE=Path(bias).name if bias else "none",
                        QLCPKEY=key)
    write_fits(out, data, hdr)
    log.debug("wrote %s (median %.3g ADU/s)", out, float(np.median(data[::4, ::4])))
    return out
