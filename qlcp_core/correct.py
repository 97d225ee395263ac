"""Step i: correct science frames and compute their times and airmass.

``(raw - bias - dark x t) / flat``, border cut, float32 ->
``{red}/{obj}_{band}/{rawstem}.bf.fits``.  The raw header is kept and gets
JD, MJD (UTC, mid-exposure), HJD, BJD (TDB, mid-exposure, barycentric for the
target), AZ, ALT, AIRMASS (site from the config), the detector parameters
(GAIN, RDNOISE with where they came from, GAINSRC and RDNSRC — config, raw
header, the masters' photon-transfer estimates, the sky, or assumed: see
:mod:`qlcp.core.detector` —, SATURATE in corrected ADU, the raw level SATRAW and
where it came from, SATSRC — config, raw header, or assumed) and provenance
(RAWFILE, BIASFILE, FLATFILE, DARKFILE).

Headers of the whole (object, band) group are read first (cheap) so the times
are computed in one vectorised astropy call; the pixel data then stream one
frame at a time, so memory does not grow with the number of frames.  A frame
that cannot be read or timed is rejected with a one-line reason and the rest
of the group goes on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.time import Time

from . import timing
from .config import Config
from .errors import InputError, QLCPError
from .flat import load_flat
from .io import fingerprint_record, header_text, read_header, read_image, write_behind, write_fits
from .detector import Detector, header_number, resolve, saturation, sky_gain
from .provenance import file_identity, fits_key, step_key
from .products import product_path

log = logging.getLogger("qlcp.correct")


@dataclass
class CorrectResult:
    """Outputs of one (object, band) group: corrected files and rejected (file, reason)."""

    outputs: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    #: path -> [size, mtime_ns, sha256] of each frame written, hashed while it is fresh in the
    #: page cache (by the worker that wrote it), so an orchestrator keying caches on content need not re-read it
    fingerprints: dict = field(default_factory=dict)
    #: frames corrected now, and kept from before (EXIST_APPEND, same key)
    n_done: int = 0
    n_kept: int = 0
    #: what the group went without (:data:`NO_COORD`), for the summary's ``degraded``
    degraded: list = field(default_factory=list)


def group_dir(red_dir: str | Path, obj: str, band: str) -> Path:
    return product_path(red_dir, "group_dir", obj, band)


def bf_path(red_dir: str | Path, obj: str, band: str, raw: str | Path) -> Path:
    return product_path(red_dir, "corrected", obj, band, frame=raw)


def _header_number(header, *keys) -> float | None:
    """The first of ``keys`` in ``header`` holding a finite positive number, else None."""
    return header_number(header, keys)


def detector(header, cfg: Config) -> tuple[float, float, float]:
    """(gain e-/ADU, read noise e-, raw saturation ADU): config, else header, else defaults.

    For a corrected frame the header holds what step i chose (:func:`frame_detector`:
    config, header, the masters' estimates, the sky, or assumed).
    """
    det = resolve(cfg.gain, cfg.rdnoise, header)
    return det.gain, det.rdnoise, saturation(cfg.saturation, header)[0]


def frame_detector(header, cfg: Config, cals: tuple, sky_frames: tuple) -> Detector:
    """Gain and read noise of a raw frame with their sources (:func:`qlcp.core.detector.resolve`):
    config, header, the master flat's ``GAINEST``, the sky of ``sky_frames`` (two raw frames of
    the group, measured once per process, only when needed), else assumed.

    Parameters
    ----------
    header : Header
        The raw frame's header.
    cfg : Config
    cals : (bias, dark, flat)
        Master paths (or None).
    sky_frames : tuple of str
        Raw frames for the sky estimate (:func:`_sky_frames`).
    """
    bias, _, flat = (str(p) if p else None for p in cals)
    bias_hdr = _master_header(bias, tuple(file_identity(bias) or ()))
    flat_hdr = _master_header(flat, tuple(file_identity(flat) or ()))
    rn_adu = float(bias_hdr.get("RDNADU", np.nan)) if bias_hdr is not None else float("nan")
    ident = tuple(tuple(file_identity(p) or ()) for p in (bias, *sky_frames))
    return resolve(cfg.gain, cfg.rdnoise, header, flat_hdr, bias_hdr,
                   sky=lambda: _sky_gain(bias, sky_frames, rn_adu, ident))


@functools.lru_cache(maxsize=4)
def _master_header(path: str | None, identity) -> dict | None:
    """The estimate cards (``GAINEST``, ``RDNEST``, ``RDNADU``) of a master's header, or None."""
    if path is None:
        return None
    try:
        h = read_header(path)
    except QLCPError:          # unreadable: the frame's correction reports it; no estimate from it
        return None
    return {k: h[k] for k in ("GAINEST", "RDNEST", "RDNADU") if k in h}


@functools.lru_cache(maxsize=4)
def _sky_gain(bias: str | None, frames: tuple, rn_adu: float, identity) -> float:
    """Gain from the sky of two raw science frames (:func:`qlcp.core.detector.sky_gain`); NaN
    without a master bias or two readable frames of the bias's shape."""
    if bias is None or len(frames) < 2:
        return float("nan")
    try:
        data = [read_image(f)[0] for f in frames[:2]]
        b = read_image(bias)[0]
    except QLCPError:
        return float("nan")
    if any(d.shape != b.shape for d in data):
        return float("nan")
    g = sky_gain(data, b, rn_adu)
    log.info("gain %.3f e-/ADU from the sky of %s", g, ", ".join(Path(f).name for f in frames[:2]))
    return g


def _sky_frames(files: list[Path], coord_file: Path | None, red_dir, obj: str, band: str) -> tuple:
    """Two raw frames of the group for a sky estimate of the gain: the first two of the group's
    list (``lst/{obj}_{band}.lst``, names relative to the raw directory, whose first is
    ``coord_file``), so every chunk of a group uses the same; else the first two of ``files``."""
    lst = Path(red_dir) / "lst" / f"{obj}_{band}.lst"
    if coord_file is not None and lst.is_file():
        names = [n.strip() for n in lst.read_text().splitlines() if n.strip()]
        c = str(coord_file)
        if len(names) >= 2 and c.endswith(names[0]):
            return (c, str(Path(c[:len(c) - len(names[0])]) / names[1]))
    return tuple(str(f) for f in files[:2])


def corrected_detector(header, cfg: Config) -> tuple[float, float, float]:
    """(gain e-/ADU, read noise e-, saturation) for a *corrected* frame (``.bf.fits``).

    Gain and read noise as for raw frames (:func:`detector`: config, else header).
    The saturation is the frame's own SATURATE first: step i writes it in corrected
    ADU, ``(raw saturation - bias - dark) / flat``, whereas ``cfg.saturation`` is a
    raw level; a star that saturates the detector is then flagged even though the
    bias has been subtracted.  Frames without SATURATE (not made by step i) fall
    back to :func:`detector`.
    """
    gain, rdn, sat = detector(header, cfg)
    return gain, rdn, _header_number(header, "SATURATE") or sat


#: the one line a group without any sky coordinate gets in the summary's ``degraded``
NO_COORD = "no sky coordinate for BJD/HJD/airmass: give targets or alt_coord"


def group_coord(obj: str, cfg: Config, header=None) -> tuple:
    """The sky coordinate of a group's HJD, BJD_TDB and airmass, and where it came from.

    Order (first found wins):

    1. the configured target (``targets``, then ``target_catalog``) named like the group's object
       (:func:`qlcp.core.targets.norm_name`: ``tres1`` is ``TrES-1``);
    2. ``alt_coord`` (one pair, or the object's);
    3. a configured target when the frames name no object (``header`` has no OBJECT): the one on
       the frame (the header's celestial WCS), else the only one configured;
    4. the header's RA/DEC (``ra_key``/``dec_key``, OBJCTRA/OBJCTDEC, a celestial CRVAL): usually
       the pointing, not the star.

    Parameters
    ----------
    obj : str
        The group's object name.
    cfg : Config
    header : Header, optional
        The group's coordinate frame's header (``coord_file``).

    Returns
    -------
    (SkyCoord or None, str)
        The ICRS coordinate and its source (``target NAME``, ``alt_coord``, ``header``), or
        ``(None, "")``.

    Raises
    ------
    ConfigError
        A configured coordinate that cannot be read (also caught before any work by
        :func:`qlcp.core.config.load_config`).
    """
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    from .targets import all_targets, norm_name

    def sky(t):
        return SkyCoord(t.ra * u.deg, t.dec * u.deg, frame="icrs"), f"target {t.name}"

    targets = all_targets(cfg) if (cfg.targets or cfg.target_catalog) else []
    own = [t for t in targets if norm_name(obj) in t.names()]
    if own:
        return sky(own[0])
    alt = cfg.for_object("alt_coord", obj)
    if alt is not None:
        return timing.target_coord({}, cfg, alt), "alt_coord"
    if targets and header is not None and not str(header.get(cfg.object_key, "") or "").strip():
        on = _targets_on_frame(targets, header)
        if on:
            return sky(on[0])
        if len(targets) == 1:
            return sky(targets[0])
    if header is not None:
        c = timing.target_coord(header, cfg)
        if c is not None:
            return c, "header"
    return None, ""


def _targets_on_frame(targets: list, header) -> list:
    """The targets inside the frame through its header's celestial WCS ([] without one)."""
    import warnings

    from astropy.wcs import WCS

    from .targets import targets_for

    if not str(header.get("CTYPE1", "")).upper().startswith("RA"):
        return []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header).celestial
        shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
        return targets_for(targets, "", wcs, shape)
    except Exception:   # a degenerate header WCS: no placement from it  # noqa: BLE001
        return []


def _times(files: list[Path], headers: list, obj: str, cfg: Config, result: CorrectResult, coord_header=None,
           coord=None):
    """Vectorised times for the frames whose date can be read; the others are rejected.

    The coordinate (HJD, BJD, airmass) is ``coord`` (:func:`group_coord` for ``coord_header``,
    the group's coordinate frame chosen by the walk, so times do not depend on how a group is
    split in chunks, or for the first readable frame without one); None: no HJD, BJD, airmass."""
    starts, exps, keep = [], [], []
    for f, h in zip(files, headers):
        try:
            s = timing.obs_start(h, cfg)
            e = float(h.get(cfg.exptime_key, h.get("EXPTIME", 0.0)) or 0.0)
        except QLCPError as err:
            _reject(result, f, str(err))
            continue
        except (TypeError, ValueError) as err:
            _reject(result, f, f"bad {cfg.exptime_key} ({err})")
            continue
        starts.append(s)
        exps.append(e)
        keep.append(f)
    if not keep:
        return [], {}
    t = dict(timing.frame_times(Time(starts), np.array(exps), coord, cfg))
    t["EXPTIME"] = np.array(exps)
    return keep, t


@functools.lru_cache(maxsize=1)
def _masters(bias: str | None, dark: str | None, flat: str | None, identity: tuple) -> tuple:
    """Master frames (read-only arrays) and their levels, read once per process for the
    many chunks of a group (``identity``: their names, sizes and mtimes, so a
    rewritten master is read again)."""
    bias_data = read_image(bias)[0] if bias else None
    dark_data = read_image(dark)[0] if dark else None
    flat_data = load_flat(flat)
    for a in (bias_data, dark_data, flat_data):
        if a is not None:
            a.setflags(write=False)
    bias_level = float(np.median(bias_data[::4, ::4])) if bias_data is not None else 0.0
    dark_rate = float(np.median(dark_data[::4, ::4])) if dark_data is not None else 0.0
    flat_hi = float(np.percentile(flat_data[::2, ::2], 99.9)) if flat_data is not None else 1.0
    return bias_data, dark_data, flat_data, bias_level, dark_rate, flat_hi


def _reject(result: CorrectResult, f: Path, why: str) -> None:
    msg = why if str(f) in why or f.name in why else f"{f.name}: {why}"
    log.error("%s", msg)
    result.rejected.append((f.name, msg))


def correction_key(cfg: Config, raw, bias, flat, dark) -> str:
    """Provenance key (``QLCPKEY``) of the corrected frame of ``raw`` with these masters."""
    extra = (cfg.target_catalog,) if cfg.target_catalog else ()   # its coordinates time the frames
    return step_key(cfg, "correct", raw, bias, flat, dark, *extra)


def correct_frames(files: list[Path], obj: str, band: str, red_dir: str | Path, cfg: Config,
                   bias: Path | None = None, flat: Path | None = None, dark: Path | None = None,
                   progress=None, fingerprint: bool = False, coord_file: Path | None = None,
                   summary_level: int = logging.INFO, written=None) -> CorrectResult:
    """Correct the science frames ``files`` of one (object, band) group.

    Parameters
    ----------
    files : list of Path
        Raw frames (only read).
    obj, band : str
        The group; outputs go to ``{red}/{obj}_{band}/``.
    red_dir : path
    cfg : Config
    bias, flat, dark : Path or None
        The masters the night uses (:func:`qlcp.core.calibration.choose_master`).
    progress : callable, optional
        Wraps an iterable to show progress.
    fingerprint : bool
        Also return [size, mtime_ns, fingerprint] of every frame written (``fingerprints``;
        :func:`~qlcp.core.io.fingerprint_record` with the frame's provenance key).
    coord_file : Path, optional
        The frame whose header gives the target coordinate (the group's first frame);
        default: the first readable frame of ``files``.
    summary_level : int
        Log level of the one-line summary (the step functions, which call this
        per chunk, log the group's summary themselves).
    written : callable(path, data), optional
        Called with each corrected frame just written and its pixels (float32,
        exactly the file's), e.g. to measure it without reading it back.
    """
    result = CorrectResult()
    files = [Path(f) for f in files]
    outs = {f: bf_path(red_dir, obj, band, f) for f in files}
    keys = {f: correction_key(cfg, f, bias, flat, dark) for f in files}
    todo = [f for f in files
            if cfg.mode.should_write(outs[f], current=(not outs[f].exists() or fits_key(outs[f]) == keys[f]))]
    result.outputs = [str(outs[f]) for f in files if f not in todo]
    result.n_kept = len(files) - len(todo)
    if not todo:
        _coord_of(obj, cfg, _coord_header(coord_file), result)
        log_corrected(obj, band, 0, result.n_kept, 0, summary_level)
        return result
    readable, headers, coord_header = _read_headers(todo, coord_file, result)
    hdr_of = dict(zip(readable, headers))
    coord = _coord_of(obj, cfg, coord_header if coord_header is not None else (headers[0] if headers else None),
                      result)
    keep, times = _times(readable, headers, obj, cfg, result, coord_header, coord)
    _check_altitude(obj, times, result)
    masters = _masters(*(str(p) if p else None for p in (bias, dark, flat)),
                       tuple(tuple(file_identity(p) or ()) for p in (bias, dark, flat)))
    cals = (bias, dark, flat)
    sky_frames = _sky_frames(files, coord_file, red_dir, obj, band)

    n_done = 0
    it = list(enumerate(keep))
    for i, f in (progress(it, desc=f"correct {obj} {band}") if progress else it):
        try:
            data, _ = read_image(f)
        except QLCPError as err:
            _reject(result, f, str(err))
            continue
        exptime = float(times["EXPTIME"][i])
        data = _calibrate(data, f, exptime, cals, masters, cfg.border_cut, result)
        if data is None:
            continue
        out_hdr = _corrected_header(hdr_of[f], f, {k: times[k][i] for k in _COMMENTS}, exptime, cfg,
                                    keys[f], cals, masters, sky_frames)
        data = data.astype(np.float32, copy=False)
        write_fits(outs[f], data, out_hdr)
        write_behind(outs[f])               # not read again in the run: its pages are recycled
        result.outputs.append(str(outs[f]))
        if fingerprint:
            result.fingerprints[str(outs[f])] = fingerprint_record(outs[f], derived=keys[f])
        n_done += 1
        if written is not None:
            written(outs[f], data)
    result.outputs.sort()
    result.n_done = n_done
    log_corrected(obj, band, n_done, result.n_kept, len(result.rejected), summary_level)
    return result


def _coord_header(coord_file):
    """``coord_file``'s header, or None (none, or unreadable)."""
    if coord_file is None:
        return None
    with contextlib.suppress(QLCPError):
        return read_header(coord_file)
    return None


def _coord_of(obj: str, cfg: Config, header, result: CorrectResult):
    """:func:`group_coord` for the group, logged; without one the group is degraded (:data:`NO_COORD`)."""
    try:
        coord, source = group_coord(obj, cfg, header)
    except InputError:
        coord, source = None, ""
    if header is not None:
        site = timing.site_disagreement(header, cfg)
        if site:
            log.warning("%s: %s", obj, site)
            result.degraded.append(f"{obj}: {site}")
    if coord is None:
        log.warning("%s: %s", obj, NO_COORD)
        result.degraded.append(f"{obj}: {NO_COORD}")
    else:
        log.debug("%s: sky coordinate for BJD/HJD/airmass from %s: %s", obj, source,
                  coord.to_string("hmsdms", precision=1))
    return coord


#: the line a group gets when its target is below the horizon in frames of the night
BELOW_HORIZON = ("the target is below the horizon (ALT < 0) in frames of this night: check site_lat, site_lon "
                 "(east positive) and the target's coordinates")


def _check_altitude(obj: str, times: dict, result: CorrectResult) -> None:
    """A target below the horizon cannot have been observed: a wrong site or coordinate (the group is
    degraded with :data:`BELOW_HORIZON`; airmass is NaN there)."""
    alt = np.asarray(times.get("ALT", []), float)
    low = np.isfinite(alt) & (alt < 0)
    if low.any():
        log.warning("%s: %d of %d frames: %s (ALT down to %.1f deg)", obj, int(low.sum()), alt.size,
                    BELOW_HORIZON, float(alt[low].min()))
        result.degraded.append(f"{obj}: {BELOW_HORIZON}")


def _read_headers(todo: list[Path], coord_file: Path | None,
                  result: CorrectResult) -> tuple[list[Path], list, object]:
    """Headers of the frames to correct (unreadable ones rejected) and the target coordinate's header.

    Returns
    -------
    readable : list of Path
        The frames of ``todo`` whose header could be read, in order.
    headers : list of Header
        Their headers.
    coord_header : Header or None
        ``coord_file``'s header (None without one, or when it cannot be read).
    """
    headers, readable = [], []
    for f in todo:
        try:
            headers.append(read_header(f))
            readable.append(f)
        except QLCPError as err:
            _reject(result, f, str(err))
    hdr_of = dict(zip(readable, headers))
    coord_header = None
    if coord_file is not None:
        coord_header = hdr_of.get(Path(coord_file))
        if coord_header is None:
            with contextlib.suppress(QLCPError):   # unreadable: the first readable frame here gives it
                coord_header = read_header(coord_file)
    return readable, headers, coord_header


def _calibrate(data: np.ndarray, f: Path, exptime: float, cals: tuple, masters: tuple, cut: int,
               result: CorrectResult) -> np.ndarray | None:
    """``(data - bias - dark x exptime) / flat``, in place, then the border cut.

    Parameters
    ----------
    data : ndarray
        The raw frame ``f`` (float; modified).
    exptime : float
        Exposure time, s.
    cals : (bias, dark, flat)
        Master paths (or None), for messages.
    masters : tuple
        :func:`_masters`.
    cut : int
        Pixels cut from each edge.
    result : CorrectResult
        Gets the rejection when a master's shape differs from the frame's.

    Returns
    -------
    ndarray or None
        None when the frame was rejected.

    Raises
    ------
    InputError
        The border cut leaves nothing of the frame.
    """
    bias_data, dark_data, flat_data = masters[:3]
    for name, cal, cal_data in zip(("bias", "dark", "flat"), cals, (bias_data, dark_data, flat_data)):
        if cal_data is not None and cal_data.shape != data.shape:
            _reject(result, f, f"{f.name}: shape {data.shape} differs from {name} {cal} {cal_data.shape}")
            return None
    if bias_data is not None:
        data -= bias_data
    if dark_data is not None:
        data -= dark_data * exptime
    if flat_data is not None:
        data /= flat_data
    if cut:
        if 2 * cut >= min(data.shape):
            raise InputError(f"border_cut: {cut} px leaves nothing of {f.name} {data.shape}")
        data = data[cut:-cut, cut:-cut]
    return data


def _corrected_header(hdr, f: Path, times: dict, exptime: float, cfg: Config, key: str, cals: tuple,
                      masters: tuple, sky_frames: tuple = ()):
    """The corrected frame's header: the raw one with times, detector, provenance and border cut.

    Parameters
    ----------
    hdr : Header
        The raw header (not modified).
    f : Path
        The raw frame.
    times : dict
        ``JD, MJD, HJD, BJD, AZ, ALT, AIRMASS`` of this frame (NaN written as "NaN").
    exptime : float
        Exposure time, s (for the dark level in SATURATE).
    cfg : Config
        Detector settings and ``border_cut``.
    key : str
        Provenance key, ``QLCPKEY``.
    cals, masters : tuple
        Master paths (bias, dark, flat) and :func:`_masters`.
    sky_frames : tuple of str
        Raw frames for a sky estimate of the gain (:func:`frame_detector`).
    """
    bias, dark, flat = cals
    bias_level, dark_rate, flat_hi = masters[3:]
    cut = cfg.border_cut
    sat, sat_source = saturation(cfg.saturation, hdr)
    det = frame_detector(hdr, cfg, cals, sky_frames)
    dark_level = dark_rate * exptime
    out_hdr = hdr.copy()
    for k in ("BZERO", "BSCALE", "BLANK"):
        out_hdr.remove(k, ignore_missing=True, remove_all=True)
    for k in ("JD", "MJD", "HJD", "BJD", "AZ", "ALT", "AIRMASS"):
        v = float(times[k])
        out_hdr[k] = (v if np.isfinite(v) else "NaN", _COMMENTS[k])
    out_hdr["GAIN"] = (det.gain, "e-/ADU")
    out_hdr["RDNOISE"] = (det.rdnoise, "read noise, e-")
    out_hdr["GAINSRC"] = (det.gain_source, "GAIN from: config|header|flats|sky|assumed")
    out_hdr["RDNSRC"] = (det.rdnoise_source, "RDNOISE from: config|header|bias|assumed")
    out_hdr["SATURATE"] = ((sat - bias_level - dark_level) / flat_hi, "saturation in corrected ADU")
    out_hdr["SATRAW"] = (sat, "raw saturation, ADU (1e30: none)")
    out_hdr["SATSRC"] = (sat_source, "SATRAW from: config|header|assumed")
    out_hdr["RAWFILE"] = (header_text(f.name), "raw frame (%-escaped)")
    out_hdr["BIASFILE"] = (Path(bias).name if bias else "none", "master bias")
    out_hdr["FLATFILE"] = (Path(flat).name if flat else "none", "master flat")
    out_hdr["DARKFILE"] = (Path(dark).name if dark else "none", "master dark (ADU/s)")
    if cut:
        out_hdr["BORDCUT"] = (cut, "pixels cut from each edge")
        for k in ("CRPIX1", "CRPIX2"):
            if k in out_hdr:
                out_hdr[k] = out_hdr[k] - cut
    out_hdr["QLCPKEY"] = (key, "settings+inputs key of this product")
    out_hdr.add_history("QLCP step i: (raw - bias - dark*t) / flat")
    return out_hdr


def log_corrected(obj: str, band: str, done: int, kept: int, rejected: int, level: int = logging.INFO) -> None:
    log.log(level, "%s %s: %d frames corrected, %d kept from before, %d rejected", obj, band, done, kept, rejected)


_COMMENTS = {
    "JD": "UTC Julian date, mid-exposure",
    "MJD": "UTC modified Julian date, mid-exposure",
    "HJD": "heliocentric JD (UTC), mid-exposure",
    "BJD": "barycentric JD (TDB), mid-exposure",
    "AZ": "azimuth, deg (N=0, E=90)",
    "ALT": "altitude, deg",
    "AIRMASS": "sec z at mid-exposure",
}
