"""Gain and read noise of the detector: from the settings, the headers, or tonight's frames.

Real nights often lack GAIN/RDNOISE in their headers and config; assuming 1 e-/ADU
and no read noise then makes every predicted error wrong by a large factor.  The
values used by the correction come, in this order, from (:func:`resolve`):

``config`` -> ``header`` (raw GAIN/RDNOISE) -> ``flats`` (photon transfer on
tonight's calibration frames) -> ``sky`` (photon transfer on two science frames,
when there is no flat estimate) -> ``assumed`` (1 e-/ADU, 0 e-), and the source is
written to each corrected frame (``GAINSRC``, ``RDNSRC``).  The raw saturation
level comes from ``config`` -> ``header`` (SATURATE, DATAMAX, SATLEVEL) ->
``assumed`` (65535 ADU for 8- and 16-bit frames, else none) (:func:`saturation`;
``SATRAW``, ``SATSRC``).  :func:`assumed_lines` says, for the night's summary,
which of them fell back to a built-in default.

Photon transfer (Janesick, *Photon Transfer*, 2007), on differences of frame
pairs so that fixed patterns (bias structure, pixel response) cancel:

* read noise, ADU: ``sigma_r = sqrt(var(b1 - b2) / 2)`` of two bias frames;
* gain, e-/ADU, from two bias-subtracted exposures of uniform light with mean
  levels ``m1``, ``m2`` (ADU) and ``k = m1 / m2``::

      g = (m1 + k**2 m2) / (var(f1 - k f2) - (1 + k**2) sigma_r**2)

  which for ``k = 1`` is the textbook ``(m1 + m2) / (var(f1 - f2) - var(b1 - b2))``.

Each statistic is computed per tile (a grid over the frame) with clipped
variances, and the median over tiles is taken, so stars, cosmic rays, hot
pixels, vignetting and dust do not bias it.  The masters record the estimates:
the master bias ``RDNADU`` (read noise, ADU) and ``NRDNPAIR``, the master flat
``GAINEST`` (e-/ADU), ``RDNEST`` (e-) and ``NGAINPR``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("qlcp.detector")

#: gain and read noise assumed when nothing says otherwise
ASSUMED_GAIN, ASSUMED_RDNOISE = 1.0, 0.0
#: the sources of :func:`resolve`, in precedence order
SOURCES = ("config", "header", "flats", "sky", "assumed")
#: frame pairs used at most (each pair is two full frames read)
MAX_PAIRS = 4
#: header keywords of gain and read noise in raw frames
GAIN_KEYS, RDNOISE_KEYS = ("GAIN", "EGAIN", "CCDGAIN"), ("RDNOISE", "READNOIS", "RON")
#: header keywords of the raw saturation level
SATURATION_KEYS = ("SATURATE", "DATAMAX", "SATLEVEL")
#: saturation assumed for integer frames of 8 or 16 bits (the ADC's limit), and for the others (none)
ASSUMED_SATURATION, NO_SATURATION = 65535.0, 1e30


# ------------------------------------------------------------ statistics
def clipped_var(a: np.ndarray, sigma: float = 4.0, iters: int = 5) -> float:
    """Variance of the finite values of ``a`` after iterative clipping at ``sigma`` robust std.

    Starts from the MAD; the clipped variance of a normal distribution is
    corrected for the truncation (at 4 sigma the loss is 0.1 %).  NaN with
    fewer than 10 values.
    """
    v = np.asarray(a, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < 10:
        return float("nan")
    med = np.median(v)
    s = 1.4826 * np.median(np.abs(v - med))
    keep = v
    for _ in range(iters):
        if not s > 0:
            return float(np.var(keep))
        new = v[np.abs(v - med) <= sigma * s]
        if new.size == keep.size:
            break
        keep = new
        med, s = np.mean(keep), np.std(keep)
    return float(np.var(keep)) / _truncation(sigma)


def _truncation(sigma: float) -> float:
    """Variance of a unit normal truncated at +-sigma."""
    from math import erf, exp, pi, sqrt

    p = erf(sigma / sqrt(2.0))
    return 1.0 - 2.0 * sigma * exp(-sigma * sigma / 2.0) / sqrt(2.0 * pi) / p


def tiles(shape: tuple[int, int], n: int = 8, margin: int = 8) -> list[tuple[slice, slice]]:
    """An ``n`` x ``n`` grid of tiles over a frame of ``shape``, ``margin`` px from its edges."""
    ny, nx = shape
    ys = np.linspace(margin, ny - margin, n + 1).astype(int)
    xs = np.linspace(margin, nx - margin, n + 1).astype(int)
    return [(slice(ys[i], ys[i + 1]), slice(xs[j], xs[j + 1])) for i in range(n) for j in range(n)
            if ys[i + 1] - ys[i] >= 4 and xs[j + 1] - xs[j] >= 4]


# --------------------------------------------------------- photon transfer
def read_noise_adu(b1: np.ndarray, b2: np.ndarray, n_tiles: int = 8) -> float:
    """Read noise (ADU) of two bias frames: median over tiles of ``sqrt(var(b1 - b2) / 2)``."""
    d = np.asarray(b1, dtype=np.float64) - np.asarray(b2, dtype=np.float64)
    v = [clipped_var(d[t]) for t in tiles(d.shape, n_tiles)]
    return float(np.sqrt(np.nanmedian(v) / 2.0))


def pair_gain(f1: np.ndarray, f2: np.ndarray, rdnoise_adu: float = 0.0, n_tiles: int = 8) -> float:
    """Gain (e-/ADU) from two bias-subtracted frames of (locally) uniform light.

    Parameters
    ----------
    f1, f2 : ndarray
        The frames minus bias (and dark), ADU: flats, or science frames whose sky
        is measured (stars are clipped, tiles with many of them are outvoted).
    rdnoise_adu : float
        Read noise, ADU (:func:`read_noise_adu`).
    n_tiles : int
        Tiles per side.

    Returns
    -------
    float
        Median over tiles of ``(m1 + k**2 m2) / (var(f1 - k f2) - (1 + k**2) rdnoise_adu**2)``,
        ``k = m1 / m2`` with ``m`` the tile's median level; NaN when no tile gives a positive value.
    """
    a = np.asarray(f1, dtype=np.float64)
    b = np.asarray(f2, dtype=np.float64)
    out = []
    for t in tiles(a.shape, n_tiles):
        m1, m2 = float(np.median(a[t])), float(np.median(b[t]))
        if not (m1 > 0 and m2 > 0):
            continue
        k = m1 / m2
        excess = clipped_var(a[t] - k * b[t]) - (1.0 + k * k) * rdnoise_adu ** 2
        if excess > 0:
            out.append((m1 + k * k * m2) / excess)
    return float(np.median(out)) if out else float("nan")


def level_pairs(levels: Sequence[float], max_pairs: int = MAX_PAIRS) -> list[tuple[int, int]]:
    """Disjoint pairs of frames of similar level: indexes sorted by level, taken two by two
    (at most ``max_pairs``; with an odd count the faintest frame is left out)."""
    order = [int(i) for i in np.argsort(np.asarray(levels, dtype=float))[::-1]]
    return [(order[i], order[i + 1]) for i in range(0, len(order) - 1, 2)][:max_pairs]


def median_estimate(values: Sequence[float]) -> tuple[float, int]:
    """Median of the finite positive ``values`` and how many there were (NaN, 0 without any)."""
    v = [float(x) for x in values if np.isfinite(x) and x > 0]
    return (float(np.median(v)), len(v)) if v else (float("nan"), 0)


# ------------------------------------------------------------ file level
def bias_read_noise(files: Sequence[str | Path], max_pairs: int = MAX_PAIRS) -> tuple[float, int]:
    """Read noise (ADU) from disjoint pairs of the bias ``files``: (median, number of pairs)."""
    from .io import read_image

    est = []
    for i in range(0, min(len(files), 2 * max_pairs) - 1, 2):
        b1, b2 = read_image(files[i])[0], read_image(files[i + 1])[0]
        if b1.shape == b2.shape:
            est.append(read_noise_adu(b1, b2))
    return median_estimate(est)


def flat_gain(files: Sequence[str | Path], levels: Sequence[float], sub, rdnoise_adu: float,
              max_pairs: int = MAX_PAIRS) -> tuple[float, int]:
    """Gain (e-/ADU) from pairs of flats of similar level: (median over pairs, number of pairs).

    Parameters
    ----------
    files : list of paths
        Flats within the limits.
    levels : list of float
        Their levels above bias (to pair them).
    sub : ndarray, callable(i) -> ndarray, or None
        What to subtract from each (bias, plus dark x exposure): one array for all,
        or a function of the file's index.
    rdnoise_adu : float
        Read noise, ADU (from the master bias; NaN counts as 0).
    """
    from .io import read_image

    rn = rdnoise_adu if np.isfinite(rdnoise_adu) else 0.0
    est = []
    for i, j in level_pairs(levels, max_pairs):
        f1, f2 = read_image(files[i])[0], read_image(files[j])[0]
        s1, s2 = (sub(i), sub(j)) if callable(sub) else (sub, sub)
        if s1 is not None:
            f1, f2 = f1 - s1, f2 - s2
        est.append(pair_gain(f1, f2, rn))
    return median_estimate(est)


def sky_gain(frames: Sequence[np.ndarray], bias: np.ndarray | None, rdnoise_adu: float) -> float:
    """Gain from the sky of science frames (consecutive pairs): NaN without a bias to level them."""
    if bias is None or len(frames) < 2:
        return float("nan")
    rn = rdnoise_adu if np.isfinite(rdnoise_adu) else 0.0
    est = [pair_gain(frames[i] - bias, frames[i + 1] - bias, rn) for i in range(0, len(frames) - 1, 2)]
    return median_estimate(est)[0]


# --------------------------------------------------------------- choice
@dataclass(frozen=True)
class Detector:
    """Gain (e-/ADU) and read noise (e-) with where each came from (one of :data:`SOURCES`;
    the read noise also ``bias``: the bias pairs' ADU at the chosen gain)."""

    gain: float
    rdnoise: float
    gain_source: str
    rdnoise_source: str


def header_number(header, keys: Sequence[str]) -> float | None:
    """The first of ``keys`` in ``header`` holding a finite positive number, else None."""
    for k in keys:
        try:
            v = float(header[k])
        except (KeyError, TypeError, ValueError):
            continue
        if np.isfinite(v) and v > 0:
            return v
    return None


def _finite(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and v > 0 else None


def resolve(cfg_gain: float | None, cfg_rdnoise: float | None, raw_header, flat_header=None, bias_header=None,
            sky=None) -> Detector:
    """Gain and read noise for a frame, and their sources.

    Parameters
    ----------
    cfg_gain, cfg_rdnoise : float or None
        The settings ``gain``, ``rdnoise``.
    raw_header : Header or dict
        The raw frame's header (GAIN/EGAIN/CCDGAIN, RDNOISE/READNOIS/RON).
    flat_header, bias_header : Header or dict, optional
        Headers of the masters applied (``GAINEST``; ``RDNADU``).
    sky : callable() -> float, optional
        Gain from the science frames' sky, called only when nothing before gives one.

    Returns
    -------
    Detector
    """
    gain, gsrc = cfg_gain, "config"
    if gain is None:
        gain, gsrc = header_number(raw_header, GAIN_KEYS), "header"
    if gain is None and flat_header is not None:
        gain, gsrc = _finite(flat_header.get("GAINEST")), "flats"
    if gain is None and sky is not None:
        gain, gsrc = _finite(sky()), "sky"
    if gain is None:
        gain, gsrc = ASSUMED_GAIN, "assumed"
    rdn, rsrc = cfg_rdnoise, "config"
    if rdn is None:
        rdn, rsrc = header_number(raw_header, RDNOISE_KEYS), "header"
    rn_adu = _finite(bias_header.get("RDNADU")) if bias_header is not None else None
    if rdn is None and rn_adu is not None:
        rdn, rsrc = rn_adu * gain, "bias"
    if rdn is None:
        rdn, rsrc = ASSUMED_RDNOISE, "assumed"
    return Detector(float(gain), float(rdn), gsrc, rsrc)


def saturation(cfg_saturation: float | None, raw_header) -> tuple[float, str]:
    """The raw saturation level, ADU, and its source: ``config`` (the setting ``saturation``), else
    ``header`` (:data:`SATURATION_KEYS`), else ``assumed``: :data:`ASSUMED_SATURATION` for 8- and
    16-bit frames, :data:`NO_SATURATION` (none) for the others."""
    if cfg_saturation:
        return float(cfg_saturation), "config"
    sat = header_number(raw_header, SATURATION_KEYS)
    if sat is not None:
        return float(sat), "header"
    return (ASSUMED_SATURATION if raw_header.get("BITPIX") in (16, 8) else NO_SATURATION), "assumed"


# ------------------------------------------------------------- the summary
#: a group's detector record: quantity -> (value card, source card) of the corrected frame (step i)
RECORD_CARDS = {"gain": ("GAIN", "GAINSRC"), "rdnoise": ("RDNOISE", "RDNSRC"), "saturation": ("SATRAW", "SATSRC")}


def record(corrected_header, wcs_header=None) -> dict:
    """A group's detector record for the summary: ``{quantity: {"value": v, "source": s}}`` for
    ``gain`` (e-/ADU), ``rdnoise`` (e-), ``saturation`` (raw ADU; None: none) and ``pixel_scale``
    (arcsec/px), read from what the products say was used.

    Parameters
    ----------
    corrected_header : Header or dict
        A corrected frame's header (step i: GAIN/GAINSRC, RDNOISE/RDNSRC, SATRAW/SATSRC; a card
        missing, from a frame made before the card existed: value None, source ``unknown``).
    wcs_header : Header or dict, optional
        The group's WCS product (step w: PIXSCALE/SCALESRC); without it, or without PIXSCALE, the
        pixel scale is None with source ``none``.
    """
    out = {}
    for name, (vcard, scard) in RECORD_CARDS.items():
        v = _card_number(corrected_header, vcard)
        if name == "saturation" and v is not None and v >= NO_SATURATION:
            v = None
        out[name] = {"value": v, "source": str(corrected_header.get(scard, "unknown"))}
    w = wcs_header if wcs_header is not None else {}
    scale = _card_number(w, "PIXSCALE")
    out["pixel_scale"] = {"value": scale, "source": str(w.get("SCALESRC", "unknown")) if scale else "none"}
    return out


def _card_number(header, card: str) -> float | None:
    """``header[card]`` as a finite number, else None."""
    try:
        v = float(header[card])
    except (KeyError, TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _assumed_text(name: str, value) -> str:
    """What an ``assumed`` ``name`` means, in one line."""
    if name == "gain":
        return f"gain: assumed {value:g} e-/ADU (no {'/'.join(GAIN_KEYS)} header, no gain in the config, " \
               "no master bias to measure it from flats or sky)"
    if name == "rdnoise":
        return f"read noise: assumed {value:g} e- (no {'/'.join(RDNOISE_KEYS)} header, no rdnoise in the " \
               "config, no bias pairs to measure it)"
    keys = "/".join(SATURATION_KEYS)
    if value is None:
        return f"saturation: assumed none (floating-point frames, no {keys} header, no saturation in the config): " \
               "saturated stars are not flagged"
    return f"saturation: assumed {value:g} ADU, the 16-bit limit (no {keys} header, no saturation in the config)"


def assumed_lines(records: dict) -> list[str]:
    """The night's ``assumed`` lines: every quantity of the groups' detector records (:func:`record`)
    that fell back to a built-in default, once each, naming the groups when not all of them did.

    Parameters
    ----------
    records : dict
        Group label (``"obj band"``) -> detector record, in the summary's order.
    """
    groups: dict[str, list[str]] = {}
    for label, rec in records.items():
        for name, q in (rec or {}).items():
            if q.get("source") == "assumed":
                groups.setdefault(_assumed_text(name, q.get("value")), []).append(label)
    n = len([r for r in records.values() if r])
    return [text if len(labels) == n else f"{text} - in {', '.join(labels)}" for text, labels in groups.items()]
