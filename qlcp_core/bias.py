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
from .products import product_path
from .config import Config
from .io import image_sample, write_fits
from .provenance import fits_key, step_key

log = logging.getLogger("qlcp.bias")


def bias_path(red_dir: str | Path) -> Path:
    return product_path(red_dir, "bias")


def make_master_bias(files: list[Path], red_dir: str | Path, cfg: Config, progress=None,
                     rejected: list | None = None) -> Path | None:
    """Combine ``files`` into ``{red}/bias.fits``; None when there are no bias frames.

    Each frame is checked first (:func:`check_bias_frames`); those that are no bias are left out,
    ``[file, reason]`` appended to ``rejected``.  Honours the work mode: an existing master is kept
    under EXIST_SKIP/APPEND (a master is a per-night product, not an aggregate), rebuilt under
    EXIST_OVER.
    """
    out = bias_path(red_dir)
    if not files:
        cfg.mode.missing("bias frames of tonight")
        return None
    good, bad = check_bias_frames(files, cfg)
    if rejected is not None:
        rejected += bad
    if not good:
        log.warning("no usable bias frame tonight (%d rejected)", len(bad))
        return None
    key = step_key(cfg, "bias", *files)
    if not cfg.mode.should_write(out, current=fits_key(out) == key):
        return out
    files = good
    log.info("master bias from %d frames", len(files))
    noise = meanwhile(detector.bias_read_noise, files)
    data = combine_files(files, cfg.combine_sigma, cfg.combine_mem_mb, progress=progress)
    hdr = master_header("bias", files, COMBSIG=(cfg.combine_sigma, "clipping sigma"), QLCPKEY=key)
    hdr.update(read_noise_cards(noise.result()))
    write_fits(out, data, hdr)
    log.debug("wrote %s (median %.1f ADU)", out, float(_median(data)))
    return out


#: a bias frame whose brightest 0.1 % of pixels lie more than this many times its noise (and
#: :data:`LIGHT_MIN_ADU`) above its level holds light: stars, sky or a lamp
LIGHT_SIGMA = 30.0
LIGHT_MIN_ADU = 100.0


def check_bias_frames(files: list[Path], cfg: Config) -> tuple[list[Path], list[list[str]]]:
    """Tonight's bias frames, each checked before they are combined: ``(good, [[file, reason]])``.

    A frame is not a bias when its exposure time is above 0.01 s, when its level (median) is more
    than ``calib_qc_bias_level`` from the median of the night's bias frames (3 or more), or when it
    holds light (its 99.9th percentile more than :data:`LIGHT_SIGMA` times its noise above its
    level): e.g. a science frame whose IMAGETYP says BIAS.  Each rejection is logged.
    """
    import numpy as np

    from .errors import InputError

    stats = []
    for f in files:
        try:
            a, h = image_sample(f, 2)
            t = h.get(cfg.exptime_key, h.get("EXPTIME", 0.0))
        except Exception as e:  # noqa: BLE001 - the combine step names an unreadable frame
            raise InputError(f"{f}: unreadable bias frame ({type(e).__name__}: {e})") from None
        try:
            t = float(t)
        except (TypeError, ValueError):
            t = 0.0
        med = float(np.median(a))
        noise = float(1.4826 * np.median(np.abs(a - med)))
        stats.append((med, noise, float(np.percentile(a, 99.9)) - med, t))
    levels = [m for m, *_ in stats]
    mid = float(np.median(levels))
    good, bad = [], []
    for f, (med, noise, tail, t) in zip(files, stats):
        why = ""
        if t > 0.01:
            why = f"not a bias: exposure {t:g} s"
        elif len(files) >= 3 and abs(med - mid) > cfg.calib_qc_bias_level:
            why = f"not a bias: level {med:.0f} ADU, {med - mid:+.0f} from the night's bias frames " \
                  f"(limit {cfg.calib_qc_bias_level:g}, calib_qc_bias_level)"
        elif tail > max(LIGHT_MIN_ADU, LIGHT_SIGMA * noise):
            why = f"not a bias: holds light (99.9th percentile {tail:.0f} ADU above its level, noise {noise:.1f})"
        if why:
            log.warning("%s: bias frame rejected: %s", Path(f).name, why)
            bad.append([str(f), why])
        else:
            good.append(f)
    return good, bad


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
