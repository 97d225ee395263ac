"""Stages c (the night catalogue of the chosen stars), d (differential light curves) and g (the
finding chart): the group's light curve, run as one ``lightcurve`` unit when more than one of them runs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from astropy.table import Table

from .. import astrometry as ast
from .. import catalogue as cat_mod
from .. import differential as diff_mod
from .. import offset as off_mod
from .._version import __version__
from ..catalogue import _offset_lookup
from ..config import Config
from ..errors import InputError, MissingInputError
from ..io import file_fingerprint, raw_stem, read_header, read_image
from ..products import product_path
from .context import RunContext, declared_input

log = logging.getLogger("qlcp.steps")


def step_w_wcs(wcs_file):
    """The celestial WCS step w wrote (``wcs_{obj}_{band}.fits``); None without one."""
    if not wcs_file or not Path(wcs_file).is_file():
        return None
    return ast.read_wcs_product(wcs_file).wcs


def star_radec(w, starxy) -> tuple[list, list] | None:
    """RA, Dec (degrees) of base-frame positions ``starxy`` under the WCS ``w``; None without one."""
    if w is None or not len(starxy):
        return None
    xy = np.asarray(starxy, dtype=float).reshape(-1, 2)
    ra, dec = w.all_pix2world(xy[:, 0], xy[:, 1], 0)
    return [round(float(v), 7) for v in ra], [round(float(v), 7) for v in dec]


def _frame_radec(table: Table, off: Table, w) -> None:
    """Columns ``ra``, ``dec`` (deg, frames x stars) of the night catalogue: each measured position through
    its frame's WCS (the base frame's composed with the frame's transform, :func:`qlcp.core.offset.frame_to_base`)."""
    offs = _offset_lookup(off)
    x, y = np.asarray(table["x"], float), np.asarray(table["y"], float)
    ra, dec = np.full(x.shape, np.nan), np.full(x.shape, np.nan)
    for f, name in enumerate(table["file"]):
        row = offs.get(raw_stem(str(name)))
        ok = np.isfinite(x[f]) & np.isfinite(y[f])
        if row is None or not ok.any():
            continue
        b = off_mod.frame_to_base(row, np.column_stack([x[f][ok], y[f][ok]]))
        ra[f, ok], dec[f, ok] = w.all_pix2world(b[:, 0], b[:, 1], 0)
    table["ra"], table["dec"] = ra, dec
    table["ra"].unit = table["dec"].unit = "deg"
    table["ra"].description = "RA of the measured position (frame WCS: base WCS and the frame's transform)"
    table["dec"].description = "Dec of the measured position (frame WCS: base WCS and the frame's transform)"


def catalogue_step(red, cfg: Config, obj: str, band: str, cat_files, selection: dict, wcs) -> str:
    """Step c: the night catalogue of the selected stars -> ``cata_{obj}_{band}.fits`` (``wcs``: step w's
    product, for the stars' RA, Dec)."""
    if not selection["starxy"]:
        raise InputError(f"{obj} {band}: no stars to catalogue (no starxy given and none picked)")
    off = off_mod.read_offsets(red, obj, band)
    table = cat_mod.build_catalogue(cat_files, off, selection["starxy"], cfg, base_file=off.meta.get("base"))
    for k in ("ind_tgt", "ind_ref", "ind_chk", "source", "targets", "no_target"):
        if k in selection or k.startswith("ind_") or k == "source":
            table.meta[k] = selection.get(k)
    w = step_w_wcs(wcs)
    radec = star_radec(w, selection["starxy"])
    if radec is not None:                       # the stars' sky positions, kept in the catalogue's meta
        table.meta["star_ra"], table.meta["star_dec"] = radec
        _frame_radec(table, off, w)
    out = cat_mod.catalogue_path(red, obj, band)
    cat_mod.write_catalogue(table, out)
    return str(out)


def provenance(red, cfg: Config, bf_example: str | None, masters=None) -> dict:
    """Code version (information) and the fingerprint of the code of the stage writing the light
    curve (``cfg``: its view), config hashes, masters used (with their sha256; ``masters``: the
    night's ``masters.json``), photometry settings."""
    prov = {"qlcp_version": __version__, "qlcp_code": cfg.declared("differential")[1], "config_hash": cfg.hash(),
            "apertures": list(cfg.aper),
            "sky_annulus": list(cfg.sky_annulus) if cfg.sky_annulus else "auto"}
    if bf_example and Path(bf_example).is_file():
        h = read_header(bf_example)
        prov["gain"], prov["rdnoise"] = float(h.get("GAIN", np.nan)), float(h.get("RDNOISE", np.nan))
        used = _masters_used(masters)
        for k, name in (("BIASFILE", "bias"), ("FLATFILE", "flat"), ("DARKFILE", "dark")):
            f = str(h.get(k, "none"))
            p = next((Path(m["path"]) for m in used.values() if m.get("path") and Path(m["path"]).name == f),
                     Path(red) / f)
            prov[name] = f
            if f != "none" and p.is_file():
                prov[f"{name}_sha256"] = file_fingerprint(p)
                prov[f"{name}_path"] = str(p)
                prov[f"{name}_source"] = next((m["source"] for m in used.values() if m.get("path") == str(p)),
                                              "tonight")
    return prov


def _masters_used(masters) -> dict:
    p = Path(masters) if masters else None
    try:
        return json.loads(p.read_text()) if p is not None and p.is_file() else {}
    except (OSError, ValueError):
        return {}


def differential_step(red, cfg: Config, obj: str, band: str, cata: str, night: str = "", masters=None,
                      corrected=()) -> dict:
    """Step d: light curves, star report, original-style text files and the light-curve plots.

    ``cata``: the night catalogue (step c's); ``masters``: the night's ``masters.json``; ``corrected``:
    the group's corrected frames, the first of which (by name) gives the provenance's gain, read noise
    and masters, and the gain's source (``GAINSRC``) for the error model."""
    table = cat_mod.read_catalogue(cata)
    m = table.meta
    given = m.get("source") == "given"
    lc, stars = diff_mod.differential(table, m.get("ind_tgt"), m.get("ind_ref"), m.get("ind_chk"), cfg,
                                      source=m.get("source"))
    if m.get("star_ra") is not None and len(m["star_ra"]) == len(stars):
        stars["ra"], stars["dec"] = np.asarray(m["star_ra"], float), np.asarray(m["star_dec"], float)
        stars["ra"].unit = stars["dec"].unit = "deg"
    bf0 = min((str(f) for f in corrected), default=None)
    lc.meta.update(object=obj, band=band, night=night)
    names = [str(n) for n in (m.get("targets") or [])][:len(lc.meta.get("ind_tgt", []))]
    if names:
        lc.meta["targets"] = names                  # the configured names of targets T0, T1, ...
    if m.get("no_target") and not lc.meta.get("ind_tgt"):
        lc.meta["no_target"] = str(m["no_target"])
    files = diff_mod.write_lightcurve(lc, stars, red, obj, band, provenance(red, cfg, bf0, masters),
                                      gain_source=diff_mod.corrected_gain_source(bf0))
    from .. import plotting          # matplotlib: imported only when plotting

    png, pdf = product_path(red, "lc_png", obj, band), product_path(red, "lc_pdf", obj, band)
    title = f"{obj} {band} {night}".strip() + (f"   target {', '.join(names)}" if names else
                                                "   NO TARGET" if lc.meta.get("no_target") else "")
    plotting.plot_lightcurve(lc, stars, png, pdf, title=title)
    log.info("%s %s: light curve of %d target(s)%s, %d check(s) (%s stars)", obj, band,
             len(lc.meta.get("ind_tgt", [])), f" ({', '.join(names)})" if names else "",
             len(lc.meta.get("ind_chk", [])), "given" if given else "picked")
    return {"lc": str(files[0]), "stars": str(product_path(red, "stars", obj, band)), "png": str(png),
            "pdf": str(pdf), "noise": lc.meta.get("noise", [])}


# ---------------------------------------------------------------------- g
def graph_step(red, cfg: Config, obj: str, band: str, stars_path, wcs, selection) -> str:
    """Step g: finding chart of the base image with the chosen stars marked (``stars_path``: step d's
    star table, ``wcs``: step w's product, ``selection``: step k's)."""
    stars_path = Path(stars_path)
    if not stars_path.is_file():
        raise MissingInputError(f"{stars_path}: no star list for the chart (run step d first)")
    stars = Table.read(stars_path, format="ascii.ecsv")
    off = off_mod.read_offsets(red, obj, band)
    image, _ = read_image(off.meta["base_bf"])
    from .. import plotting          # matplotlib: imported only when plotting

    out = product_path(red, "chart", obj, band)
    names = _selection_targets(selection)
    plotting.plot_chart(image, stars, out, title=f"{obj} {band}: base {off.meta.get('base', '')}"
                        + (f"   target {', '.join(names)}" if names else ""),
                        wcs=step_w_wcs(wcs), target_names=names)
    return str(out)


def _selection_targets(selection) -> list[str]:
    """The configured names of the group's targets T0, T1, ... (step k's ``selection``), [] when unknown."""
    p = Path(selection) if selection else None
    try:
        names = json.loads(p.read_text()).get("targets") if p is not None and p.is_file() else None
    except (OSError, ValueError, AttributeError):
        return []
    return [str(n) for n in names] if isinstance(names, list) else []


def run_catalogue(ctx: RunContext, u: dict, prev: dict) -> dict:
    sel = json.loads(Path(u["selection"]).read_text()) if Path(u["selection"]).is_file() else None
    if sel is None:
        raise MissingInputError(f"{u['selection']}: no star selection (run step k)")
    path = catalogue_step(ctx.red, ctx.cfg, u["obj"], u["band"], u["frame_catalogue"], sel, u["wcs"])
    return {"night_catalogue": path, "outputs": [path]}


def run_differential(ctx: RunContext, u: dict, prev: dict) -> dict:
    o, b = u["obj"], u["band"]
    res = differential_step(ctx.red, ctx.cfg, o, b, declared_input(u, prev, "night_catalogue"), u["night"],
                            u["masters"], u["corrected"])
    return {"lightcurve": res["lc"], "stars": res["stars"], "lc_png": res["png"], "lc_pdf": res["pdf"],
            "noise": res["noise"], "outputs": [res["lc"], res["stars"], res["png"]]}


def run_chart(ctx: RunContext, u: dict, prev: dict) -> dict:
    path = graph_step(ctx.red, ctx.cfg, u["obj"], u["band"], declared_input(u, prev, "stars"), u["wcs"],
                      u["selection"])
    return {"chart": path, "outputs": [path]}
