"""Step b: master bias.

Sigma-clipped median of tonight's bias frames -> ``{red}/bias.fits`` (float32,
ADU) with NCOMBINE and the input list (IMCMBnnn).  Which bias the correction
uses follows the manual's precedence: ``use_bias`` -> tonight's -> ``alt_bias``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .combine import combine_files, master_header
from .config import Config
from .errors import InputError
from .io import write_fits
from .provenance import fits_key, step_key

log = logging.getLogger("qlcp.bias")


def bias_path(red_dir: str | Path) -> Path:
    return Path(red_dir) / "bias.fits"


def make_master_bias(files: list[Path], red_dir: str | Path, cfg: Config, progress=None) -> Path | None:
    """Combine ``files`` into ``{red}/bias.fits``; None when there are no bias frames.

    Honours the work mode: an existing master is kept under EXIST_SKIP/APPEND
    (a master is a per-night product, not an aggregate), rebuilt under EXIST_OVER.
    """
    out = bias_path(red_dir)
    if not files:
        cfg.mode.missing("bias frames of tonight")
        return None
    key = step_key(cfg, "b", *files)
    if not cfg.mode.should_write(out, current=fits_key(out) == key):
        return out
    log.info("master bias from %d frames", len(files))
    data = combine_files(files, cfg.combine_sigma, cfg.combine_mem_mb, progress=progress)
    hdr = master_header("bias", files, COMBSIG=(cfg.combine_sigma, "clipping sigma"), QLCPKEY=key)
    write_fits(out, data, hdr)
    log.info("wrote %s (median %.1f ADU)", out, float(_median(data)))
    return out


def _median(a):
    import numpy as np

    return np.median(a[::4, ::4])


def select_bias(red_dir: str | Path, cfg: Config) -> Path | None:
    """The master bias to apply: ``use_bias`` -> tonight's -> ``alt_bias`` -> None."""
    if cfg.use_bias:
        p = Path(cfg.use_bias)
        if not p.is_file():
            raise InputError(f"use_bias: {p}: file not found")
        return p
    p = bias_path(red_dir)
    if p.is_file():
        return p
    if cfg.alt_bias:
        p = Path(cfg.alt_bias)
        if not p.is_file():
            raise InputError(f"alt_bias: {p}: file not found")
        log.warning("no bias of tonight: using alt_bias %s", p)
        return p
    cfg.mode.missing("master bias (tonight's, use_bias or alt_bias)")
    log.warning("no bias at all: continuing with zero bias")
    return None
