"""The instrument registry: one YAML file per camera, the camera of a frame chosen from its header.

An instrument file names the camera (``name``, ``aliases``), says how its frames are recognised
(``match``: header values, case- and blank-insensitive, ``*`` globs; image size and binning),
when it was in use (``valid_from``, ``valid_to``: a camera swap on the same telescope is a new
instrument from that date) and which settings it brings (``settings``: any key of the site config,
checked by :class:`~qlcp.core.config.Config` itself)::

    name: arcsat
    match:
      header: {TELESCOP: "ARCSAT 0.5-m", INSTRUME: "dcam*"}
    settings: {site_lat: 32.78028, site_lon: -105.82028}

The registry is on when the config sets ``instruments_dir``: a directory of such files, or
``builtin`` for the examples shipped in the package (:data:`BUILTIN_DIR`).  A run then takes the
night's instrument (:func:`choose`) and layers its settings under the night's own
(:func:`qlcp.core.runsetup.for_night`); a frame of no instrument, of two, or of another one than
the night's is rejected by the listing (:func:`frame_problem`), never reduced with guessed settings.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

#: the instrument files shipped in the package (``instruments_dir: builtin``)
BUILTIN_DIR = Path(__file__).parent / "instrument_files"
BUILTIN = "builtin"
#: settings an instrument file may not hold: they choose the instrument, or are a run's, not a camera's
NOT_SETTINGS = frozenset({"instruments_dir", "instrument", "steps", "obj", "band", "mode"})
#: header keys an unknown frame is described by (with the keys the registry's rules use)
DESCRIBE_KEYS = ("TELESCOP", "INSTRUME", "DETECTOR")
#: a listing's reason for a frame of another instrument than the night's starts with this
OTHER_INSTRUMENT = "another instrument"


def _norm(v: Any) -> str:
    """A header value or rule as compared: text, blanks collapsed, lower case (``True`` -> ``t``)."""
    if isinstance(v, bool):
        return "t" if v else "f"
    return " ".join(str(v).split()).lower()


def _same(value: Any, rule: Any) -> bool:
    a, b = _norm(value), _norm(rule)
    try:
        return float(a) == float(b)
    except ValueError:
        return fnmatch.fnmatchcase(a, b)


def image_size(hdr) -> tuple[int, int]:
    """(NAXIS1, NAXIS2) of the image a header describes (a compressed image's own)."""
    z = "Z" if hdr.get("ZIMAGE") else ""
    return int(hdr.get(f"{z}NAXIS1", 0) or 0), int(hdr.get(f"{z}NAXIS2", 0) or 0)


class Match(BaseModel):
    """How a frame of the instrument is recognised: every rule given must hold."""

    model_config = ConfigDict(extra="forbid")

    header: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="header key -> value (case and blanks ignored, * and ? globs); "
                                          "'' matches a blank or missing card")
    size: list[tuple[int, int]] | None = Field(None, description="allowed image sizes [NAXIS1, NAXIS2]")
    binning: tuple[int, int] | None = Field(None, description="binning [x, y] (XBINNING/YBINNING, CCDSUM...)")

    @field_validator("header")
    @classmethod
    def _upper(cls, v):
        return {str(k).strip().upper(): x for k, x in v.items()}

    def failed(self, hdr) -> str:
        """The first rule ``hdr`` breaks (``''``: it matches)."""
        for key, rule in self.header.items():
            if not _same(hdr.get(key, ""), rule):
                return f"{key}={str(hdr.get(key, '')).strip()!r} is not {rule!r}"
        if self.size is not None:
            size = image_size(hdr)
            if size not in [tuple(s) for s in self.size]:
                return f"size {size[0]}x{size[1]} is not one of {[f'{a}x{b}' for a, b in self.size]}"
        if self.binning is not None:
            from .calib_library import binning_of

            b = binning_of(hdr)
            if b != f"{self.binning[0]},{self.binning[1]}":
                return f"binning {b} is not {self.binning[0]},{self.binning[1]}"
        return ""


class Instrument(BaseModel):
    """One camera on one telescope, over the dates it was in use (one YAML file)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$", description="short name (products, library)")
    aliases: list[str] = Field(default_factory=list, description="other names it is known by")
    description: str = ""
    match: Match = Field(description="how its frames are recognised")
    valid_from: dt.date | None = Field(None, description="first night (UTC date of the frames) it was in use")
    valid_to: dt.date | None = Field(None, description="the date it was replaced (not included)")
    calibrations: list[str] | str | None = Field(
        None, description="the calibrations it needs (bias, dark, flat; 'none': its frames come calibrated); "
                          "None: the config's calibrations")
    settings: dict[str, Any] = Field(default_factory=dict, description="config keys of this camera")
    file: str = Field("", exclude=True, description="the file it was read from (set when loaded)")

    def in_use(self, when: dt.date | None) -> bool:
        if self.valid_from is None and self.valid_to is None:
            return True
        if when is None:
            return False
        return (self.valid_from is None or when >= self.valid_from) and (self.valid_to is None or when < self.valid_to)

    def validity(self) -> str:
        if self.valid_from is None and self.valid_to is None:
            return "always"
        return f"{self.valid_from or '...'} to {self.valid_to or '...'}"

    def layer(self) -> dict:
        """The config keys it brings: its settings and ``calibrations``."""
        return {**self.settings, **({} if self.calibrations is None else {"calibrations": self.calibrations})}

    def names(self) -> set[str]:
        return {self.name.lower(), *(a.lower() for a in self.aliases)}


@dataclass(frozen=True)
class Verdict:
    """A frame's instrument (``instrument``) or why it has none (``reason``: unknown, ambiguous)."""

    instrument: Instrument | None
    reason: str

    @property
    def name(self) -> str | None:
        return self.instrument.name if self.instrument else None


def load_instrument(path: Path) -> Instrument:
    """One instrument file, checked: an unknown key or a bad value is a :class:`ConfigError` naming
    the file and the key."""
    from .config import Config, _refuse_base60, _suggest, read_config_file

    data = read_config_file(path)
    _refuse_base60(data, str(path))
    try:
        inst = Instrument(**data, file=str(path))
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        hint = _suggest(str(err["loc"][0]), set(Instrument.model_fields) - {"file"}) \
            if err["type"] == "extra_forbidden" else ""
        raise ConfigError(f"{path}: key {key!r}: {err['msg']}{hint}") from None
    fields = set(Config.model_fields)
    for k in inst.settings:
        if k == "calibrations":
            raise ConfigError(f"{path}: settings: key 'calibrations' belongs at the top level of the file")
        if k not in fields:
            raise ConfigError(f"{path}: settings: unknown key {k!r}{_suggest(k, fields)}")
        if k in NOT_SETTINGS:
            raise ConfigError(f"{path}: settings: key {k!r} is not an instrument's setting")
    try:
        Config(**inst.layer())
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "settings"
        where = "" if key == "calibrations" else "settings: "
        raise ConfigError(f"{path}: {where}key {key!r}: {err['msg'].removeprefix('Value error, ')} "
                          f"(got {err.get('input')!r})") from None
    return inst


class Registry:
    """The instruments of one directory."""

    def __init__(self, instruments: list[Instrument], where: str = ""):
        self.instruments = instruments
        self.where = where
        seen: dict[str, str] = {}
        for inst in instruments:
            for n in inst.names():
                if n in seen:
                    raise ConfigError(f"{inst.file}: name {n!r} is also used by {seen[n]}")
                seen[n] = inst.file

    def get(self, name: str) -> Instrument:
        for inst in self.instruments:
            if name.lower() in inst.names():
                return inst
        raise ConfigError(f"instrument {name!r}: not in {self.where} (it has: "
                          f"{', '.join(i.name for i in self.instruments) or 'none'})")

    def keys(self) -> list[str]:
        """The header keys its rules read, the usual ones first."""
        keys = list(DESCRIBE_KEYS)
        for inst in self.instruments:
            keys += [k for k in inst.match.header if k not in keys]
        return keys

    def describe(self, hdr) -> str:
        """``TELESCOP='X' INSTRUME='Y' NAXIS1=512 NAXIS2=512 binning 1,1``: what a frame says it is."""
        from .calib_library import binning_of

        parts = [f"{k}={str(hdr.get(k, '')).strip()!r}" for k in self.keys() if k in hdr or k in DESCRIBE_KEYS[:2]]
        nx, ny = image_size(hdr)
        return " ".join(parts + [f"NAXIS1={nx} NAXIS2={ny} binning {binning_of(hdr)}"])

    def match(self, hdr, when: dt.date | None) -> Verdict:
        """The one instrument whose rules and dates ``hdr`` meets, else why not."""
        fits_rules = [i for i in self.instruments if not i.match.failed(hdr)]
        hits = [i for i in fits_rules if i.in_use(when)]
        if len(hits) == 1:
            return Verdict(hits[0], f"{self.describe(hdr)}, on {when or 'an unknown date'}")
        if hits:
            return Verdict(None, f"ambiguous instrument: matches {' and '.join(i.name for i in hits)} "
                                 f"({self.describe(hdr)})")
        out = "".join(f"; {i.name} matches the header but is in use {i.validity()}, not on {when or 'an undated frame'}"
                      for i in fits_rules)
        return Verdict(None, f"unknown instrument: {self.describe(hdr)}{out}")


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in (".yaml", ".yml") and not p.name.startswith("."))


_CACHE: dict = {}


def registry(instruments_dir: str) -> Registry:
    """The registry of ``instruments_dir`` (``builtin``: the package's examples), read once per
    change of its files."""
    d = BUILTIN_DIR if str(instruments_dir).strip().lower() == BUILTIN else Path(instruments_dir).expanduser()
    if not d.is_dir():
        raise ConfigError(f"instruments_dir {instruments_dir}: directory not found")
    files = _files(d)
    key = (str(d), tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files))
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = Registry([load_instrument(p) for p in files], str(d))
    return _CACHE[key]


def header_date(hdr, date_key: str = "DATE-OBS") -> dt.date | None:
    """The UTC date of a frame (``date_key``, else DATE-OBS, else DATE), None when unreadable."""
    for k in (date_key, "DATE-OBS", "DATE"):
        v = str(hdr.get(k, "") or "").strip()
        try:
            return dt.date.fromisoformat(v[:10])
        except ValueError:
            continue
    return None


def choose(verdicts: list[Verdict]) -> tuple[Instrument | None, str]:
    """The night's instrument: the only one its frames match, or the one most of them match (the
    others' frames are then rejected by the listing); ``None`` and why when none or a tie."""
    counts = Counter(v.name for v in verdicts if v.instrument is not None)
    if not counts:
        return None, "no frame matches an instrument of the registry"
    ranked = counts.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None, f"as many frames of {ranked[0][0]} as of {ranked[1][0]}"
    best = next(v.instrument for v in verdicts if v.name == ranked[0][0])
    return best, ", ".join(f"{n}: {c} frame(s)" for n, c in ranked)


def frame_problem(hdr, cfg) -> str:
    """Why a frame is not reduced in this night under ``cfg``'s registry (``''``: it is the night's
    instrument's, or no registry is configured)."""
    if not cfg.instruments_dir:
        return ""
    v = registry(cfg.instruments_dir).match(hdr, header_date(hdr, cfg.date_key))
    if v.instrument is None:
        return v.reason
    if cfg.instrument is None:
        return f"{OTHER_INSTRUMENT} ({v.name}): no single instrument for this night: mixed-instrument " \
               "nights are not reduced yet"
    if v.instrument.name != cfg.instrument and cfg.instrument.lower() not in v.instrument.names():
        return f"{OTHER_INSTRUMENT} ({v.name}) in this night: mixed-instrument nights are not reduced yet"
    return ""


def instrument_problem(reason: str) -> bool:
    """A listing's rejection reason that is about the instrument (the night says so)."""
    return reason.startswith(("unknown instrument", "ambiguous instrument", OTHER_INSTRUMENT))
