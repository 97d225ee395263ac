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
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from astropy.table import Table

from . import field as field_mod
from . import offset as off_mod
from . import pick as pick_mod
from .catalogue import FLAG_BORDER, FLAG_INVALID, FLAG_SATURATED, read_frame_catalogue
from .errors import InputError
from .io import read_header
from .products import product_path
from .targets import all_targets, sky_to_pixel, targets_for

log = logging.getLogger("qlcp.selection")


def selection_for(red, cfg, obj: str, band: str, cat_files, offsets: str) -> dict:
    """The group's stars: ``{"starxy", "ind_tgt", "ind_ref", "ind_chk", "source", ...}`` (see the module)."""
    starxy = cfg.for_object("starxy", obj)
    if "K" in cfg.steps:
        return _from_pick(pick_mod.read_pick(red, obj, band), "picked")
    off = off_mod.read_offsets(red, obj, band)
    base = _BaseFrame(off, product_path(red, "wcs", obj, band))
    ref_path = field_mod.reference_path(red, cfg, obj)
    other = field_mod.reference_of_other_night(red, cfg, obj)
    if starxy and not cfg.pick_forced:
        sel = {"starxy": [list(map(float, p)) for p in starxy], "ind_tgt": cfg.for_object("ind_tgt", obj),
               "ind_ref": cfg.for_object("ind_ref", obj), "ind_chk": cfg.for_object("ind_chk", obj),
               "source": "given"}
    elif other is not None and not cfg.refresh_field and not cfg.pick_forced:
        try:
            return _from_reference(other, base, cfg)
        except InputError as e:              # another field of the same name, or a damaged file: say so, go on
            log.warning("%s %s: field reference not used: %s", obj, band, e)
            sel = _pick(red, cfg, obj, band, cat_files, off, base)
            sel["field_error"] = str(e)
            return sel
    else:
        sel = _pick(red, cfg, obj, band, cat_files, off, base)
    if sel["ind_tgt"] is not None and (other is None or cfg.refresh_field):
        _write_reference(ref_path, sel, base, obj, band, red)
    return sel


def _from_pick(p, source: str, **extra) -> dict:
    return {"starxy": [list(map(float, xy)) for xy in p.starxy], "ind_tgt": list(p.ind_tgt),
            "ind_ref": list(p.ind_ref), "ind_chk": list(p.ind_chk), "source": source, **extra}


def _pick(red, cfg, obj, band, cat_files, off: Table, base: "_BaseFrame") -> dict:
    """Steps 4 and 5: the known targets on the frame with comparisons for them, else the automatic pick."""
    targets = targets_for(all_targets(cfg), obj, base.wcs, base.shape) if base.wcs is not None else []
    if not targets and (cfg.targets or cfg.target_catalog):
        log.warning("%s %s: no known target on the frame%s", obj, band,
                    "" if base.wcs is not None else " (no celestial WCS for the base frame)")
    xy = sky_to_pixel(base.wcs, targets) if targets else None
    sel = pick_mod.pick_stars(cat_files, off, cfg, base.shape, targets_xy=xy)
    pick_mod.write_pick(sel, red, obj, band)
    if targets:
        return _from_pick(sel, "targets", targets=[t.name for t in targets])
    if not sel.ind_tgt:
        log.warning("%s %s: automatic pick found no variable star; give targets or starxy/ind_tgt", obj, band)
    return _from_pick(sel, "picked")


def _from_reference(path: Path, base: "_BaseFrame", cfg) -> dict:
    """Step 3: the field reference on tonight's base frame."""
    ref = field_mod.read_reference(path)
    m = field_mod.map_reference(ref, base.wcs, base.xy, cfg.match_max_dis)
    log.info("field reference %s matched by %s: %d target(s), %d comparison(s), %d check(s), %d lost",
             path.name, m.method, len(m.ind_tgt), len(m.ind_ref), len(m.ind_chk), len(m.lost))
    return {"starxy": m.starxy, "ind_tgt": m.ind_tgt, "ind_ref": m.ind_ref, "ind_chk": m.ind_chk,
            "source": "field", "field_reference": str(path), "field_match": m.method,
            "lost": [list(x) for x in m.lost]}


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
