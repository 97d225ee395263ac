"""Field references: the same target, comparisons and checks every night of a field.

The first night of a field writes ``{field_dir}/{field}.ecsv``: the chosen stars
(role, position on that night's base frame, magnitude, sky position when the
frame has a WCS) and the brightest other stars of the frame (role ``field``,
for matching star patterns).  A later night of the field maps the reference
onto its own base frame — through both WCSs when both exist, otherwise by
matching the star patterns (astroalign's asterisms, robust to shifts,
rotations and flips) — and uses the stars found there in their roles.  A
reference star not found tonight is dropped for tonight and reported, never
replaced.  References are plain ECSV: a person may read and edit them;
``refresh_field`` rebuilds one.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.table import Table

from .errors import InputError
from .io import write_table
from .products import shared_dir
from .targets import norm_name

log = logging.getLogger("qlcp.field")

#: roles in a reference, in the order of a selection's star list
ROLES = ("target", "comparison", "check")
#: bright field stars kept for pattern matching
N_PATTERN = 40


def field_dir(red, cfg) -> Path:
    """Where field references live: ``field_dir`` of the config, else ``$QLCP_FIELD_DIR``, else
    ``{red}/../fields`` (shared by the nights under one output root, as the service lays them out)."""
    return shared_dir(red, cfg.field_dir, "QLCP_FIELD_DIR", "fields")


def reference_path(red, cfg, obj: str) -> Path:
    """The reference file of the field of ``obj``."""
    return field_dir(red, cfg) / f"{norm_name(obj) or 'FIELD'}.ecsv"


@dataclass
class Mapped:
    """A reference on tonight's base frame."""

    starxy: list                         #: positions of the stars found, targets first
    ind_tgt: list
    ind_ref: list
    ind_chk: list
    method: str                          #: "wcs" or "pattern"
    lost: list = field(default_factory=list)     #: [(role, x_ref, y_ref, why)] of stars not found


def write_reference(path: Path, selection: dict, base_xy: np.ndarray, base_mag: np.ndarray, wcs, meta: dict) -> Path:
    """Write a field reference from tonight's selection and the base frame's brightest stars.

    Parameters
    ----------
    path : Path
    selection : dict
        ``starxy``, ``ind_tgt``, ``ind_ref``, ``ind_chk`` (base-frame pixels).
    base_xy, base_mag : arrays
        The base frame's good stars, brightest first (pattern stars).
    wcs : astropy.wcs.WCS or None
        The base frame's celestial WCS, for sky positions.
    meta : dict
        Night, object, band, base frame: stored as the table's meta.
    """
    rows = []
    for role, key in zip(ROLES, ("ind_tgt", "ind_ref", "ind_chk")):
        for i in selection.get(key) or []:
            x, y = selection["starxy"][i]
            rows.append((role, float(x), float(y), _mag_at(base_xy, base_mag, x, y)))
    for (x, y), m in zip(base_xy[:N_PATTERN], base_mag[:N_PATTERN]):
        if all(np.hypot(x - r[1], y - r[2]) > 1.0 for r in rows):
            rows.append(("field", float(x), float(y), float(m)))
    t = Table(rows=rows, names=("role", "x", "y", "mag"), dtype=(str, float, float, float))
    t["ra"], t["dec"] = np.full(len(t), np.nan), np.full(len(t), np.nan)
    if wcs is not None and len(t):
        t["ra"], t["dec"] = wcs.all_pix2world(t["x"], t["y"], 0)
    t.meta.update({k: v for k, v in meta.items() if v is not None})
    t.meta["created"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    t.meta["comment"] = ("QLCP field reference: x, y are 0-based pixels of the reference night's base frame; "
                         "role target/comparison/check is used every night; role field only matches patterns")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(path, t)
    log.info("field reference %s: %s", path, ", ".join(f"{np.sum(t['role'] == r)} {r}" for r in ROLES))
    return path


def _mag_at(xy: np.ndarray, mag: np.ndarray, x: float, y: float) -> float:
    if len(xy) == 0:
        return float("nan")
    d = np.hypot(xy[:, 0] - x, xy[:, 1] - y)
    return float(mag[np.argmin(d)]) if d.min() < 3.0 else float("nan")


def made_by(path: Path) -> str | None:
    """The night (output directory name) that wrote the reference at ``path``; None when absent or unreadable."""
    try:
        return str(Table.read(path, format="ascii.ecsv").meta.get("night"))
    except Exception:  # absent or damaged: not another night's reference
        return None


def reference_of_other_night(red, cfg, obj: str) -> Path | None:
    """The field reference of ``obj`` when another night wrote it (this night's own is its output, not
    an input: a rerun of the night that made it chooses as it did)."""
    path = reference_path(red, cfg, obj)
    night = made_by(path) if path.is_file() else None
    return path if night is not None and night != Path(red).name else None


def read_reference(path: Path) -> Table:
    try:
        t = Table.read(path, format="ascii.ecsv")
    except Exception as e:  # an edited file may be anything
        raise InputError(f"{path}: unreadable field reference ({type(e).__name__}: {e})") from None
    missing = {"role", "x", "y"} - set(t.colnames)
    if missing:
        raise InputError(f"{path}: field reference lacks column(s) {sorted(missing)}")
    return t


def map_reference(ref: Table, wcs, base_xy: np.ndarray, max_dis: float) -> Mapped:
    """The reference's stars on tonight's base frame, found among tonight's stars ``base_xy``.

    By sky position when the reference has one and ``wcs`` is given; otherwise the
    similarity transform between the reference's and tonight's star patterns.

    Raises
    ------
    InputError
        The patterns do not match (another field, or too few stars).
    """
    has_sky = "ra" in ref.colnames and np.isfinite(np.asarray(ref["ra"], float)).any()
    if wcs is not None and has_sky:
        x, y = wcs.all_world2pix(np.asarray(ref["ra"], float), np.asarray(ref["dec"], float), 0)
        xy, method = np.column_stack([x, y]), "wcs"
    else:
        xy, method = _pattern_map(ref, base_xy), "pattern"
    return _assign_roles(ref, xy, base_xy, max_dis, method)


def _pattern_map(ref: Table, base_xy: np.ndarray) -> np.ndarray:
    """Reference positions mapped through the asterism transform reference -> tonight."""
    import astroalign

    src = np.column_stack([np.asarray(ref["x"], float), np.asarray(ref["y"], float)])
    order = np.argsort(np.nan_to_num(np.asarray(ref["mag"], float), nan=99.0)) if "mag" in ref.colnames else \
        np.arange(len(src))
    try:
        tf, _ = astroalign.find_transform(src[order][:N_PATTERN], base_xy[:N_PATTERN])
    except Exception as e:  # astroalign raises MaxIterError or ValueError
        raise InputError(f"field reference: tonight's stars do not match its pattern ({e})") from None
    return tf(src)


def _assign_roles(ref: Table, xy: np.ndarray, base_xy: np.ndarray, max_dis: float, method: str) -> Mapped:
    out = Mapped([], [], [], [], method)
    keys = {"target": out.ind_tgt, "comparison": out.ind_ref, "check": out.ind_chk}
    for role in ROLES:
        for i in np.flatnonzero(np.asarray(ref["role"]) == role):
            d = np.hypot(base_xy[:, 0] - xy[i, 0], base_xy[:, 1] - xy[i, 1]) if len(base_xy) else np.array([np.inf])
            j = int(np.argmin(d))
            if d[j] <= max_dis:
                keys[role].append(len(out.starxy))
                out.starxy.append([float(base_xy[j, 0]), float(base_xy[j, 1])])
            elif role == "target":          # measured where it should be (it may be faint or in eclipse)
                keys[role].append(len(out.starxy))
                out.starxy.append([float(xy[i, 0]), float(xy[i, 1])])
            else:
                out.lost.append((role, float(ref["x"][i]), float(ref["y"][i]),
                                 f"not found within {max_dis:g} px of ({xy[i, 0]:.1f}, {xy[i, 1]:.1f})"))
    for role, x, y, why in out.lost:
        log.warning("field reference: %s at (%.1f, %.1f) dropped tonight: %s", role, x, y, why)
    return out
