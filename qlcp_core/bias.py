"""Step b: master bias.

Sigma-clipped median of tonight's bias frames -> ``{red}/bias.fits`` (float32,
ADU) with NCOMBINE and the input list (IMCMBnnn).  Which bias the correction
uses follows the manual's precedence: ``use_bias`` -> tonight's -> ``alt_bias``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import detector
from .combine import combine_files, master_header, meanwhile
from .calibration import choose_master
from .products import product_path
from .config import Config
from .io import write_fits
from .provenance import fits_key, step_key

log = logging.getLogger("qlcp.bias")


def bias_path(red_dir: str | Path) -> Path:
    return product_path(red_dir, "bias")


def make_master_bias(files: list[Path], red_dir: str | Path, cfg: Config, progress=None) -> Path | None:
    """Combine ``files`` into ``{red}/bias.fits``; None when there are no bias frames.

    Honours the work mode: an existing master is kept under EXIST_SKIP/APPEND
    (a master is a per-night product, not an aggregate), rebuilt under EXIST_OVER.
    """
    out = bias_path(red_dir)
    if not files:
        cfg.mode.missing("bias frames of tonight")
        return None
    key = step_key(cfg, "bias", *files)
    if not cfg.mode.should_write(out, current=fits_key(out) == key):
        return out
    log.info("master bias from %d frames", len(files))
    noise = meanwhile(detector.bias_read_noise, files)
    data = combine_files(files, cfg.combine_sigma, cfg.combine_mem_mb, progress=progress)
    hdr = master_header("bias", files, COMBSIG=(cfg.combine_sigma, "clipping sigma"), QLCPKEY=key)
    hdr.update(read_noise_cards(noise.result()))
    write_fits(out, data, hdr)
    log.info("wrote %s (median %.1f ADU)", out, float(_median(data)))
    return out


def read_noise_cards(estimate: tuple[float, int]) -> dict:
    """``RDNADU`` (read noise, ADU, from pairs of bias frames) and ``NRDNPAIR`` for the master's header,
    from ``estimate`` (:func:`qlcp.core.detector.bias_read_noise`); empty without a pair."""
    rn, n = estimate
    if not n:
        return {}
    log.info("read noise %.3f ADU from %d pair(s) of bias frames", rn, n)
    return {"RDNADU": (round(rn, 4), "read noise, ADU, from bias pairs"), "NRDNPAIR": (n, "bias pairs for RDNADU")}


def _median(a):
    import numpy as np

    return np.median(a[::4, ::4])


def select_bias(red_dir: str | Path, cfg: Config) -> Path | None:
    """The master bias to apply (:func:`qlcp.core.calibration.choose_master`)."""
    p = choose_master(red_dir, cfg, "bias").path
    return None if p is None else Path(p)