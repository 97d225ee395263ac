"""Step k, the ``select`` stage: which stars are the targets, comparisons and checks of a group.

In order, the first that applies:

1. ``K``: the last pick of this group (``pick_{obj}_{band}.ecsv``);
2. ``starxy`` (and ``ind_*``) given in the config for the object, unless ``k`` is asked for;
3. the field's reference (:mod:`qlcp.core.field`), written by another night, unless
   ``k`` is asked for or ``refresh_field`` is set: the same stars in the same roles;
4. known targets (:mod:`qlcp.core.targets`, by sky position through the base frame's WCS):
   they are the targets, and comparisons and checks are picked for them;
5. the automatic pick of the manual (the most variable stars are targets).

Whatever chose the stars (2, 4 or 5), a field with no reference of another night
(or ``refresh_field``) gets one from tonight's choice; a rerun of the night that
wrote a reference chooses as it did the first time.

A group may end with **no target** (the selection's ``no_target`` says why): no
target configured and the automatic pick found no variable star; a configured
target (named like the object) that is not on the frames or cannot be placed (no
celestial WCS), which no automatic pick replaces; ``starxy`` targets off the frame.
Its comparisons and checks are still chosen (and measured: step d writes their
light curves), and no field reference is written from it.  A field reference that
cannot be read, or whose targets disagree with the configured ones, is refused
(one line naming the file; ``refresh_field`` rebuilds it), never silently rebuilt.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from astropy.table import Table

from . import field as field_mod
from . import offset as off_mod
from . import pick as pick_mod
from .astrometry import angular_sep
from .catalogue import FLAG_BORDER, FLAG_INVALID, FLAG_SATURATED, read_frame_catalogue
from .errors import InputError
from .io import read_header
from .products import product_path
from .targets import all_targets, norm_name, sky_to_pixel, targets_for

log = logging.getLogger("qlcp.selection")


def selection_for(red, cfg, obj: str, band: str, cat_files, offsets: str) -> dict:
    """The group's stars: ``{"starxy", "ind_tgt", "ind_ref", "ind_chk", "source", ...}`` (see the module);
    ``no_target`` (why) when the group has none."""
    starxy = cfg.for_object("starxy", obj)
    if "K" in cfg.steps:
        return _no_target_why(_from_pick(pick_mod.read_pick(red, obj, band), "picked"), cfg)
    off = off_mod.read_offsets(red, obj, band)
    base = _BaseFrame(off, product_path(red, "wcs", obj, band))
    ref_path = field_mod.reference_path(red, cfg, obj)
    rebuild = cfg.refresh_field or cfg.pick_forced
    if ref_path.is_file() and not cfg.refresh_field:
        _check_reference_file(ref_path)             # a damaged reference is refused, never rebuilt silently
    other = field_mod.reference_of_other_night(red, cfg, obj)
    if starxy and not cfg.pick_forced:
        sel = _given(cfg, obj, band, starxy, base)
    elif other is not None and not rebuild:
        ref = field_mod.read_reference(other)
        _check_reference_targets(ref, other, own_targets(cfg, obj), obj, band)
        try:
            return _from_reference(other, ref, base, cfg)
        except InputError as e:              # another field of the same name: say so, go on
            log.warning("%s %s: field reference not used: %s", obj, band, e)
            sel = _pick(red, cfg, obj, band, cat_files, off, base)
            sel["field_error"] = str(e)
            return _no_target_why(sel, cfg)
    else:
        sel = _pick(red, cfg, obj, band, cat_files, off, base)
    _no_target_why(sel, cfg)
    if sel["ind_tgt"] and not sel.get("targets_missing") and (other is None or cfg.refresh_field):
        _write_reference(ref_path, sel, base, obj, band, red)
    return sel


def own_targets(cfg, obj: str) -> list:
    """The configured targets (``targets``, ``target_catalog``) named like ``obj`` (name or alias)."""
    if not (cfg.targets or cfg.target_catalog):
        return []
    return [t for t in all_targets(cfg) if norm_name(obj) in t.names()]


def _no_target_why(sel: dict, cfg) -> dict:
    """``sel`` with ``no_target`` saying why when it has no target (the automatic pick's case unless
    already said)."""
    if not sel.get("ind_tgt") and not sel.get("no_target"):
        sel["no_target"] = ("no target configured and the automatic pick found no variable star "
                            f"(night std > pick_var_std {cfg.pick_var_std:g} mag in the central region); give "
                            "targets (name, ra, dec) or starxy")
    return sel


def _check_reference_file(path: Path) -> None:
    """Refuse a field reference that cannot be read (the file is kept as it is)."""
    try:
        field_mod.read_reference(path)
    except InputError as e:
        raise InputError(f"{e}; the file is kept: fix or remove it, or run with --refresh-field to rebuild "
                         "it from tonight") from None


#: a field reference's target agrees with a configured one within this distance (arcsec)
TARGET_AGREE_ARCSEC = 10.0


def _check_reference_targets(ref: Table, path: Path, own: list, obj: str, band: str) -> None:
    """Refuse a field reference whose targets are not the configured targets of ``obj``: by sky
    position when the reference has one, else by the target names it was made for."""
    if not own:
        return
    rows = ref[np.asarray(ref["role"]) == "target"]
    ra = np.asarray(rows["ra"], float) if "ra" in rows.colnames else np.full(len(rows), np.nan)
    dec = np.asarray(rows["dec"], float) if "dec" in rows.colnames else np.full(len(rows), np.nan)
    sky = np.isfinite(ra) & np.isfinite(dec)
    names = {norm_name(n) for n in (ref.meta.get("targets") or [])}
    for t in own:
        if sky.any():
            d = angular_sep(t.ra, t.dec, ra[sky], dec[sky])      # arcsec
            if d.min() <= TARGET_AGREE_ARCSEC:
                continue
            theirs = ", ".join(f"at {_radec_str(a, b)}" for a, b in zip(ra[sky], dec[sky]))
            what = f"its target {theirs} is {d.min():.0f}\" from it"
        else:
            if t.names() & names:
                continue
            what = (f"it was made for target(s) {', '.join(ref.meta.get('targets'))}" if names else
                    f"its target was {ref.meta.get('source') or 'chosen'} without a sky position")
        raise InputError(f"{obj} {band}: field reference {path} (night {ref.meta.get('night', '?')}) disagrees "
                         f"with the configured target {t.name} at {_radec_str(t.ra, t.dec)}: {what}; run with "
                         "--refresh-field to rebuild it from tonight")


def _radec_str(ra: float, dec: float) -> str:
    from astropy import units as u
    from astropy.coordinates import Angle

    return (f"{Angle(ra, u.deg).to_string(unit=u.hourangle, sep=':', precision=2, pad=True)} "
            f"{Angle(dec, u.deg).to_string(unit=u.deg, sep=':', precision=1, alwayssign=True, pad=True)}")


def _given(cfg, obj: str, band: str, starxy, base: "_BaseFrame") -> dict:
    """Step 2: ``starxy`` and ``ind_*`` of the config, indexes as given.  Stars off the base frame are
    named; a comparison or check there is rejected later, a target there is no target (with none
    left the group has no target)."""
    xy = [list(map(float, p)) for p in starxy]
    tgt, ref, chk = (cfg.for_object(k, obj) for k in ("ind_tgt", "ind_ref", "ind_chk"))
    sel = {"starxy": xy, "ind_tgt": tgt, "ind_ref": ref, "ind_chk": chk, "source": "given"}
    ny, nx = base.shape
    off = [i for i, (x, y) in enumerate(xy) if not (0 <= x <= nx - 1 and 0 <= y <= ny - 1)]
    if not off:
        return sel
    as_list = (lambda v, default: default if v is None else [int(v)] if isinstance(v, (int, np.integer))
               else [int(i) for i in v])
    tgt_l = as_list(tgt, [0])
    chk_l = as_list(chk, [])
    ref_l = as_list(ref, [i for i in range(len(xy)) if i not in tgt_l + chk_l])
    bad = [i for i in tgt_l + ref_l + chk_l if not 0 <= i < len(xy)]
    if bad:                                   # the differential step names the index out of range
        return sel
    lost = []
    for i in off:
        role = "target" if i in tgt_l else "check" if i in chk_l else "comparison"
        lost.append(f"{role} starxy[{i}] ({xy[i][0]:g}, {xy[i][1]:g})")
    msg = f"{', '.join(lost)} off the frame ({nx} x {ny} px)"
    # indexes stay those the observer gave (the stars table's `index` is the number to give back):
    # a comparison or check off the base frame stays in the list and is rejected by the differential
    # step with its reason; a target off it is no target
    log.warning("%s %s: %s", obj, band, msg)
    sel = {**sel, "ind_tgt": [i for i in tgt_l if i not in off], "ind_ref": ref_l, "ind_chk": chk_l,
           "lost": [[m] for m in lost]}
    if not sel["ind_tgt"]:
        sel["no_target"] = f"{msg}: give starxy on the finding chart's pixels (0-based) of the base frame"
    return sel


def _from_pick(p, source: str, **extra) -> dict:
    return {"starxy": [list(map(float, xy)) for xy in p.starxy], "ind_tgt": list(p.ind_tgt),
            "ind_ref": list(p.ind_ref), "ind_chk": list(p.ind_chk), "source": source, **extra}


def _pick(red, cfg, obj, band, cat_files, off: Table, base: "_BaseFrame") -> dict:
    """Steps 4 and 5: the known targets on the frame with comparisons for them, else the automatic pick.

    A configured target named like ``obj`` that is not on the frame, or cannot be placed (no
    celestial WCS), is said by name and not replaced by an automatic pick: the group has no
    target (``no_target``), and comparisons and checks are chosen as for a target of median
    brightness."""
    own = own_targets(cfg, obj)
    targets = targets_for(all_targets(cfg), obj, base.wcs, base.shape) if base.wcs is not None else []
    missing = [t for t in own if t not in targets]
    if not targets and (cfg.targets or cfg.target_catalog) and not own:
        log.warning("%s %s: no known target on the frame%s", obj, band,
                    "" if base.wcs is not None else " (no celestial WCS for the base frame)")
    why = "; ".join(_not_placed(t, base) for t in missing)
    if why:
        log.error("%s %s: %s", obj, band, why)
    if missing and not targets:
        sel = pick_mod.pick_stars(cat_files, off, cfg, base.shape, no_targets=True)
        pick_mod.write_pick(sel, red, obj, band)
        return _from_pick(sel, "targets", targets=[], targets_missing=[t.name for t in missing], no_target=why)
    xy = sky_to_pixel(base.wcs, targets) if targets else None
    sel = pick_mod.pick_stars(cat_files, off, cfg, base.shape, targets_xy=xy)
    pick_mod.write_pick(sel, red, obj, band)
    if targets:
        extra = {"targets_missing": [t.name for t in missing], "targets_missing_why": why} if missing else {}
        return _from_pick(sel, "targets", targets=[t.name for t in targets], **extra)
    if not sel.ind_tgt:
        log.warning("%s %s: automatic pick found no variable star; give targets or starxy/ind_tgt", obj, band)
    return _from_pick(sel, "picked")


def _not_placed(t, base: "_BaseFrame") -> str:
    """Why target ``t`` is not measured: off the frame (by how much) or no celestial WCS to place it."""
    where = f"target {t.name} at {_radec_str(t.ra, t.dec)}"
    if base.wcs is None:
        return (f"{where} cannot be placed: the base frame {base.name} has no celestial WCS"
                f"{f' ({base.wcs_why})' if base.wcs_why else ''}; install astrometry.net with index files for "
                "the field's scale, or give starxy on the finding chart")
    (x, y), = sky_to_pixel(base.wcs, [t])
    ny, nx = base.shape
    if not (np.isfinite(x) and np.isfinite(y)):
        return f"{where} is not on the frames (it does not project onto the base frame)"
    dx, dy = max(-x, x - (nx - 1), 0.0), max(-y, y - (ny - 1), 0.0)
    if dx or dy:
        return f"{where} is not on the frames (nearest edge {np.hypot(dx, dy):.0f} px; pixel {x:.0f}, {y:.0f})"
    return f"{where} is too near the edge of the frames (pixel {x:.0f}, {y:.0f} of {nx} x {ny})"


def _from_reference(path: Path, ref: Table, base: "_BaseFrame", cfg) -> dict:
    """Step 3: the field reference (read from ``path``) on tonight's base frame."""
    m = field_mod.map_reference(ref, base.wcs, base.xy, cfg.match_max_dis)
    log.info("field reference %s matched by %s: %d target(s), %d comparison(s), %d check(s), %d lost",
             path.name, m.method, len(m.ind_tgt), len(m.ind_ref), len(m.ind_chk), len(m.lost))
    return {"starxy": m.starxy, "ind_tgt": m.ind_tgt, "ind_ref": m.ind_ref, "ind_chk": m.ind_chk,
            "source": "field", "field_reference": str(path), "field_match": m.method,
            "lost": [list(x) for x in m.lost], "targets": ref.meta.get("targets") or []}


def _write_reference(path: Path, sel: dict, base: "_BaseFrame", obj: str, band: str, red) -> None:
    ind = {k: (sel[k] if isinstance(sel[k], list) else [sel[k]]) if sel[k] is not None else []
           for k in ("ind_tgt", "ind_ref", "ind_chk")}
    if not ind["ind_tgt"]:
        return
    if not ind["ind_ref"] and sel["source"] == "given":          # the given list's other stars compare
        ind["ind_ref"] = [i for i in range(len(sel["starxy"])) if i not in ind["ind_tgt"] + ind["ind_chk"]]
    try:
        field_mod.write_reference(path, {"starxy": sel["starxy"], **ind}, base.xy, base.mag, base.wcs,
                                  {"object": obj, "band": band, "night": Path(red).name, "base_frame": base.name,
                                   "source": sel["source"], "targets": sel.get("targets")})
    except OSError as e:            # an unwritable field directory costs the night nothing but the reference
        log.warning("%s %s: field reference %s not written (%s)", obj, band, path, e)
        sel["field_error"] = f"not written: {e}"
        return
    sel["field_reference"] = str(path)


class _BaseFrame:
    """The group's base frame: shape, celestial WCS (if any) and good stars, brightest first."""

    def __init__(self, off: Table, wcs_product: Path):
        bf = off.meta.get("base_bf")
        if not bf or not Path(bf).is_file():
            raise InputError(f"offset table: base image {bf!r} not found")
        self.name = Path(bf).name
        h = read_header(bf)
        self.shape = (int(h["NAXIS2"]), int(h["NAXIS1"]))
        self.wcs = base_wcs(bf, h, wcs_product)
        self.wcs_why = _wcs_why(wcs_product) if self.wcs is None else ""
        self.xy, self.mag = _good_stars(bf)


def base_wcs(bf, header=None, product: Path | None = None):
    """The celestial WCS of a group's corrected base frame: step w's (its ``product``,
    ``wcs_{obj}_{band}.fits``; None when it found none or rejected the header's), else, when step w
    has not run, the frame's own header WCS if it passes :func:`qlcp.core.astrometry.header_wcs`'s
    checks."""
    from .astrometry import header_wcs, read_wcs_product

    if product is not None and product.is_file():
        try:
            return read_wcs_product(product).wcs
        except Exception as e:  # a damaged product: as if step w had not run
            log.warning("%s: unreadable (%s); using the base frame's header WCS", product, e)
    try:
        return header_wcs(header if header is not None else read_header(bf))
    except Exception as e:  # no or a bad header WCS: pixel coordinates only
        log.debug("%s: no usable header WCS (%s)", bf, e)
        return None


def _wcs_why(product: Path | None) -> str:
    """Step w's reason for having no WCS (its product's ``WCSWHY``), else ''."""
    if product is None or not Path(product).is_file():
        return ""
    try:
        from .astrometry import read_wcs_product

        return read_wcs_product(product).reason.strip("; ")
    except Exception:  # a damaged product: no reason to give
        return ""


def _good_stars(bf) -> tuple[np.ndarray, np.ndarray]:
    cp = product_path(None, "frame_catalogue", frame=bf)
    if not Path(cp).is_file():
        return np.empty((0, 2)), np.empty(0)
    t = read_frame_catalogue(cp)
    fl = np.asarray(t["Flags"], np.int64)
    mag = np.asarray(t["MagAUTO"], float)
    ok = np.isfinite(mag) & ((fl & (FLAG_BORDER | FLAG_INVALID | FLAG_SATURATED)) == 0)
    ix = np.flatnonzero(ok)[np.argsort(mag[ok], kind="stable")]
    return np.column_stack([np.asarray(t["X"], float)[ix], np.asarray(t["Y"], float)[ix]]), mag[ix]
