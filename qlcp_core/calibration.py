"""Which master calibration a night uses: one policy for bias, dark and flat.

For each kind the order is the same (the manual's, extended to darks):

1. ``use_*``  -- the operator's file, always (an error if it does not exist);
2. tonight's  -- the master the night's own frames made (``{red}/bias.fits`` ...), unless the
   calibration library's QC rejected it;
3. library    -- the nearest good master of the calibration library that matches the night's
   frames (:mod:`qlcp.core.calib_library`), within ``calib_max_age_days``;
4. ``alt_*``  -- the operator's fallback file (logged);
5. none       -- the correction goes on without it, and says so (the work mode's
   ``MISS_*`` decides whether a missing bias or flat is an error).

:func:`choose_master` returns the path *and* why it was chosen, so provenance,
the light curve's metadata and the summary can say what was used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .products import product_path

log = logging.getLogger("qlcp.calibration")

#: the config keys of each kind: (always use, fallback); darks have no fallback key
_KEYS = {"bias": ("use_bias", "alt_bias"), "dark": ("use_dark", None), "flat": ("use_flat", "alt_flat")}
#: every config key the policy reads
POLICY_KEYS = ("use_bias", "alt_bias", "use_dark", "use_flat", "alt_flat", "calib_library", "calib_dir",
               "calib_max_age_days", "calib_prefer_earlier", "instrument", "calibrations")


@dataclass(frozen=True)
class MasterChoice:
    """A chosen master: its path (None: no correction of this kind) and where it came from."""

    kind: str
    band: str | None
    path: str | None
    source: str                 #: "use", "tonight", "library", "alt", "none" or "not needed" (``calibrations``)
    why: str = ""               #: for the library: its id, night and age; for none: what was looked for
    epoch: int | None = None    #: the library's epoch of the camera the master belongs to (when registered)
    camera: str = ""            #: the library's camera key (:func:`qlcp.core.calib_library.camera_key`)
    library_error: str = ""     #: the library could not be read (corrupt index): one line, said in ``degraded``

    def as_dict(self) -> dict:
        d = {"kind": self.kind, "band": self.band, "path": self.path, "source": self.source, "why": self.why}
        d.update({k: v for k, v in (("epoch", self.epoch), ("camera", self.camera),
                                    ("library_error", self.library_error)) if v})
        return d


def _given(cfg, key: str | None, band: str | None) -> str | None:
    if key is None:
        return None
    if band is None:
        return getattr(cfg, key)
    return cfg.flat_for(key, band)


def _existing(key: str, band: str | None, value: str) -> str:
    if not Path(value).is_file():
        where = f"{key}[{band}]" if band else key
        raise InputError(f"{where}: {value}: file not found")
    return str(value)


def choose_master(red, cfg, kind: str, band: str | None = None, frame: dict | None = None,
                  tonight_rejected: bool = False) -> MasterChoice:
    """The master of ``kind`` (``bias``, ``dark``, ``flat``) to apply: use -> tonight's -> alt -> none.

    Parameters
    ----------
    red : str or Path
        The night's output root (where tonight's masters are).
    cfg : Config or a stage's view of it
        Reads only :data:`POLICY_KEYS`.
    kind : str
        ``bias``, ``dark`` or ``flat``.
    band : str, optional
        The band, for flats.
    frame : dict, optional
        The night's frames (:func:`qlcp.core.calib_library.frame_info`): with it, the
        calibration library is searched for a matching master.
    tonight_rejected : bool
        Tonight's master failed the library's QC: not used.

    Raises
    ------
    InputError
        A ``use_*``/``alt_*`` file that does not exist (one line naming the key and file).
    """
    use_key, alt_key = _KEYS[kind]
    band = band if kind == "flat" else None
    use = _given(cfg, use_key, band)
    if use:
        return MasterChoice(kind, band, _existing(use_key, band, use), "use")
    tonight = product_path(red, kind, band=band)
    if tonight.is_file() and not tonight_rejected:
        return MasterChoice(kind, band, str(tonight), "tonight")
    if cfg.calibrations is not None and kind not in cfg.calibrations:     # the camera's frames come calibrated
        return MasterChoice(kind, band, None, "not needed", f"calibrations: {', '.join(cfg.calibrations) or 'none'}")
    lib, notes, error = _from_library(red, cfg, kind, band, frame)
    if lib is not None:
        return lib
    skipped = "; ".join(notes)
    alt = _given(cfg, alt_key, band)
    if alt:
        path = _existing(alt_key, band, alt)
        log.warning("%s: none of tonight: using %s %s", _label(kind, band), alt_key, path)
        return MasterChoice(kind, band, path, "alt", skipped, library_error=error)
    if kind != "dark":                  # no dark is the usual case; no bias or flat is worth a word
        cfg.mode.missing(f"master {_label(kind, band)} (tonight's, {use_key} or {alt_key})")
        log.warning("no %s at all: frames are not corrected for it", _label(kind, band))
    return MasterChoice(kind, band, None, "none", skipped, library_error=error)


def _from_library(red, cfg, kind: str, band: str | None, frame: dict | None) -> tuple:
    """``(choice or None, notes on masters skipped, the library's error or "")``."""
    if not cfg.calib_library or frame is None:
        return None, [], ""
    from . import calib_library as L

    lib = L.library_dir(red, cfg)
    notes: list = []
    try:
        e = L.select(lib, kind, band, frame, cfg.calib_max_age_days.get(kind, 0.0), cfg.calib_prefer_earlier,
                     notes=notes)
    except L.LibraryError as err:       # a corrupt index: the night goes on without the library, degraded
        log.error("%s", err)
        return None, notes, str(err)
    except Exception as err:  # noqa: BLE001 - an unreadable library is no library (sqlite3/OS errors)
        log.warning("calibration library %s not searched: %s", lib, err)
        return None, notes, ""
    if e is None:
        return None, notes, ""
    age = frame["jd_mid"] - e.jd_mid
    why = f"library #{e.id} of night {e.night}, {abs(age):.1f} days {'before' if age >= 0 else 'after'}, " \
          f"epoch {e.epoch}"
    if notes:
        why += f" ({'; '.join(notes)})"
    log.warning("%s: none of tonight's: using the %s", _label(kind, band), why)
    return MasterChoice(kind, band, e.path, "library", why, e.epoch, e.camera), notes, ""


def _label(kind: str, band: str | None) -> str:
    return f"{kind} of band {band}" if band else kind
