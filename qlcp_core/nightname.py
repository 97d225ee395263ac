"""The name of a night: its raw directory's name, or the local evening date when that name is generic.

A night's name labels its summary (``night``), plot titles, Prefect artifact keys
and flow runs.  Observatories name night directories by date (``20240606``,
``2024-06-06_85``) and those names are kept; a generic name (``raw``,
``data``, ``images`` ...) says nothing, so the night is then named by the date
of the evening it began, ``YYYYMMDD``: the first science frame's start time
(``date_key``/``time_key``, as step i reads it) in the site's local time
(``site_tz``), minus 12 h, so frames after midnight belong to the evening before.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("qlcp.night")

#: directory names that say nothing about the night (compared in lower case)
GENERIC_NAMES = frozenset({
    "raw", "data", "images", "image", "imgs", "night", "nights", "fits", "fit", "tmp", "temp", "obs",
    "observations", "science", "sci", "frames", "new", "today", "tonight", "latest", "current",
    "incoming", "upload", "uploads", "input", "in", "ccd", "camera", "rawdata", "raw_data", "lights",
})

#: headers examined at most to find a science frame (a night's first files are often bias and flats)
MAX_PROBED = 400


def is_generic(name: str) -> bool:
    """Whether a directory name says nothing about its night (``raw``, ``data``, ``images`` ...)."""
    return name.strip().lower() in GENERIC_NAMES


def evening_date(t, site_tz: float) -> str:
    """``YYYYMMDD`` of the local evening a time belongs to (local time minus 12 h).

    Parameters
    ----------
    t : astropy.time.Time
        A UTC time.
    site_tz : float
        The site's offset from UTC, hours (east positive).
    """
    import astropy.units as u

    return (t + (float(site_tz) - 12.0) * u.hour).to_datetime().strftime("%Y%m%d")


def first_science_start(raw: Path, cfg):
    """Start time of the first science frame (by file name) under ``raw``, or None."""
    from .io import read_header
    from .listing import classify, scan_files
    from .timing import obs_start

    for i, path in enumerate(scan_files(raw)):
        if i >= MAX_PROBED:
            break
        row = classify(path, str(path.relative_to(raw)), cfg)
        if row["kind"] != "science":
            continue
        try:
            return obs_start(read_header(path), cfg)
        except Exception as e:  # a frame without a usable date: try the next one
            log.debug("%s: no start time for the night's name (%s)", path.name, e)
    return None


def night_name(raw_dir, cfg=None) -> str:
    """The night's name: the raw directory's name, or its evening date when the name is generic.

    Parameters
    ----------
    raw_dir : str or Path
        The night's raw directory.
    cfg : Config, optional
        Patterns, header keywords and ``site_tz`` (default: the defaults).

    Returns
    -------
    str
        The directory name, or ``YYYYMMDD`` (local evening date of the first science
        frame) when that name is generic, or the generic name when no science frame
        has a usable date.
    """
    raw = Path(raw_dir).resolve()
    if not is_generic(raw.name):
        return raw.name
    if cfg is None:
        from .config import load_config

        cfg = load_config([])
    try:
        t = first_science_start(raw, cfg)
    except OSError as e:
        log.warning("%s: cannot read the frames for the night's name (%s)", raw, e)
        t = None
    if t is None:
        log.warning("%s: generic directory name and no dated science frame: night named %r", raw, raw.name)
        return raw.name
    return evening_date(t, cfg.site_tz)
