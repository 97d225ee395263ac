"""Targets by name and sky position: the ``targets`` config, the ``target_catalog`` file.

A target is ``{name, ra, dec}`` (sexagesimal hours/degrees or decimal degrees),
with optional ``aliases`` and the ephemeris fields the timing step uses
(``t0``, ``period``, ``duration``, ``depth``, ``kind``).  A night's frames name
their object in OBJECT; :func:`norm_name` makes ``HATP-32`` and ``HAT-P-32``
the same name.  Every catalogue target that falls on a frame (through its WCS)
is measured as a target; :func:`targets_for` says which.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError

log = logging.getLogger("qlcp.targets")

#: ephemeris and description fields a target may carry
EXTRA_FIELDS = ("t0", "period", "duration", "depth", "kind")


@dataclass(frozen=True)
class Target:
    """A target: name, sky position (degrees, ICRS) and what the timing step may use."""

    name: str
    ra: float
    dec: float
    aliases: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def names(self) -> set[str]:
        return {norm_name(n) for n in (self.name, *self.aliases)}


def norm_name(name) -> str:
    """A name for matching: case, spaces, dashes, underscores and dots ignored (``HAT-P-32`` = ``hatp32``)."""
    return re.sub(r"[\s\-_.]+", "", str(name)).upper()


def parse_ra_dec(ra, dec) -> tuple[float, float]:
    """RA, Dec in degrees from sexagesimal strings (RA in hours) or numbers (degrees).

    Raises
    ------
    ConfigError
        An unreadable or impossible coordinate (one line naming it).
    """
    from astropy import units as u
    from astropy.coordinates import Angle

    try:
        if isinstance(ra, str) and (":" in ra or " " in ra.strip() or "h" in ra):
            ra_deg = Angle(ra, unit=u.hourangle).deg
        else:
            ra_deg = float(ra)
        dec_deg = Angle(dec, unit=u.deg).deg if isinstance(dec, str) else float(dec)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"target coordinate {ra!r}, {dec!r}: {e}") from None
    if not (0 <= ra_deg < 360 and -90 <= dec_deg <= 90):
        raise ConfigError(f"target coordinate {ra!r}, {dec!r}: outside RA 0..360, Dec -90..90 degrees")
    return float(ra_deg), float(dec_deg)


def make_target(d: dict) -> Target:
    """A :class:`Target` from a config mapping (or a catalogue row as a dict)."""
    try:
        name = str(d["name"]).strip()
        ra, dec = parse_ra_dec(d["ra"], d["dec"])
    except KeyError as e:
        raise ConfigError(f"target {d!r}: missing {e.args[0]!r} (need name, ra, dec)") from None
    aliases = d.get("aliases") or ()
    if isinstance(aliases, str):
        aliases = tuple(a.strip() for a in re.split(r"[;,]", aliases) if a.strip())
    extra = {k: d[k] for k in EXTRA_FIELDS if k in d and d[k] is not None and str(d[k]) not in ("", "--", "nan")}
    return Target(name, ra, dec, tuple(aliases), extra)


def read_catalog(path) -> list[Target]:
    """Targets of an ECSV or CSV file with columns ``name, ra, dec`` (and optional extras)."""
    from astropy.table import Table

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"target_catalog: {p}: file not found")
    fmt = "ascii.ecsv" if p.suffix.lower() == ".ecsv" else "ascii.csv"
    try:
        t = Table.read(p, format=fmt)
    except Exception as e:  # astropy raises many kinds on a bad file
        raise ConfigError(f"target_catalog: {p}: unreadable ({e})") from None
    return [make_target({c: _plain(r[c]) for c in t.colnames}) for r in t]


def _plain(v):
    if np.ma.is_masked(v):
        return None
    return v.item() if hasattr(v, "item") else v


def all_targets(cfg) -> list[Target]:
    """The ``targets`` of the config, then those of ``target_catalog`` (the config wins on a name)."""
    out = [make_target(d) for d in (cfg.targets or [])]
    if cfg.target_catalog:
        seen = {n for t in out for n in t.names()}
        out += [t for t in read_catalog(cfg.target_catalog) if not t.names() & seen]
    return out


def targets_for(targets: list[Target], obj: str, wcs=None, shape=None, margin: float = 10.0) -> list[Target]:
    """The targets of a group: every target on the frame (through ``wcs``), else those named like ``obj``.

    Parameters
    ----------
    targets : list of Target
    obj : str
        The group's object name (OBJECT of its frames).
    wcs : astropy.wcs.WCS, optional
        The group's base-frame WCS; with it, position decides.
    shape : (ny, nx), optional
        The frame's shape, with ``wcs``.
    margin : float
        Pixels from the edge within which a target does not count as on the frame.

    Returns
    -------
    list of Target
        The object's own target first (matched by name), then the others on the frame.
    """
    own = [t for t in targets if norm_name(obj) in t.names()]
    if wcs is None or shape is None:
        return own
    on = [t for t, (x, y) in zip(targets, sky_to_pixel(wcs, targets))
          if margin <= x <= shape[1] - 1 - margin and margin <= y <= shape[0] - 1 - margin]
    return sorted(on, key=lambda t: t not in own)


def sky_to_pixel(wcs, targets: list[Target]) -> np.ndarray:
    """(n, 2) 0-based pixel positions of ``targets`` on a frame with ``wcs``."""
    if not targets:
        return np.empty((0, 2))
    x, y = wcs.all_world2pix(np.array([t.ra for t in targets]), np.array([t.dec for t in targets]), 0)
    return np.column_stack([x, y])
