"""Stage w: the sky coordinates (WCS) of a group's base frame."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from astropy.table import Table

from .. import astrometry as ast
from .. import offset as off_mod
from ..config import Config
from ..errors import MissingInputError, one_line
from ..field import field_dir
from ..io import read_header, read_image, read_table_fast, write_text
from ..products import cat_path, product_path
from ..provenance import fits_key, step_key
from ..targets import all_targets, norm_name
from ..timing import target_coord
from .context import RunContext

log = logging.getLogger("qlcp.steps")


def astrometry_step(red, cfg: Config, obj: str, band: str, offsets) -> str:
    """Step w: the WCS of the group's base frame (``base_bf`` of the offsets table ``offsets``, step o's)
    -> ``wcs_{obj}_{band}.fits``.

    The base frame's header WCS when it passes the checks (and agrees with a
    solution of its detected stars when index files fit the field), else a
    solution by astrometry.net of step p's catalogue of it, given every hint the
    night has (:func:`astrometry_hints`), else none: the night then goes on in
    pixel coordinates and the product says why.  A failed solve is remembered
    beside the field references (``--refresh`` retries).  When configured
    targets cannot be placed and no ``starxy`` is given, the product's advice
    (``WCSHELP``) says what to do, and a numbered finding chart of the base
    frame's brightest stars is written for it (``chart_numbered_{obj}_{band}.png``
    and ``.txt``).
    """
    off = off_mod.read_offsets(red, obj, band)
    base = off.meta.get("base_bf")
    cat = cat_path(base) if base else None
    if not base or not Path(base).is_file() or not cat.is_file():
        raise MissingInputError(f"{obj} {band}: base frame {base!r} or its catalogue missing (run steps i, p, o)")
    out = product_path(red, "wcs", obj, band)
    indexes = ast.index_files(cfg.astrometry_index)
    key = step_key(cfg, "astrometry", offsets, base, cat, *indexes)
    if out.is_file() and not cfg.mode.should_write(out, current=fits_key(out) == key):
        return str(out)
    header = read_header(base)
    targets = all_targets(cfg)
    hints = astrometry_hints(header, cfg, obj, targets)
    try:
        rows, _ = read_table_fast(cat)
    except ValueError:                          # a layout the fast reader does not handle
        rows = Table.read(cat, hdu=1)
    stars = ast.usable_stars(rows)
    shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    memory = ast.SolveMemory(field_dir(red, cfg) / f"{norm_name(obj) or 'FIELD'}.solve-failed.json", Path(red).name)
    res = ast.base_wcs(header, stars, shape, red, cfg.astrometry_index, cfg.pixel_scale, timeout=cfg.solve_timeout,
                       hints=hints, blind_timeout=cfg.solve_blind_timeout, memory=memory, field_name=norm_name(obj),
                       refresh=cfg.mode.exist == "EXIST_OVER")
    if res.wcs is None and targets and not cfg.for_object("starxy", obj):
        res.advice = _placement_advice(red, obj, band, base, header, shape, stars, cfg, targets, res)
    ast.write_wcs_product(res, out, base, key)
    (log.info if res.wcs is not None else log.warning)("%s %s: WCS %s: %s", obj, band, res.source, res.reason)
    if res.advice:
        log.warning("%s %s: %s", obj, band, res.advice)
    return str(out)


def astrometry_hints(header, cfg: Config, obj: str, targets: list):
    """Step w's hints, best first: the object's configured target(s) (matched by name), the header's
    RA/DEC (or OBJCTRA/OBJCTDEC), then the other configured targets; a header WCS must agree with the
    first two (:class:`qlcp.core.astrometry.Hints`)."""
    own = [t for t in targets if norm_name(obj) in t.names()]
    pointing_header = header.copy()
    for k in ("CTYPE1", "CTYPE2"):              # the header's own pointing keywords, not its WCS
        pointing_header.remove(k, ignore_missing=True)
    try:
        coord = target_coord(pointing_header, cfg)
    except Exception as e:                       # an unreadable pointing is no hint
        log.debug("%s: header RA/DEC not used (%s)", obj, e)
        coord = None
    positions = [(f"target {t.name}", t.ra, t.dec) for t in own]
    known = [(f"target {t.name}", t.ra, t.dec, 0.0) for t in own]
    if coord is not None:
        positions.append(("the header's RA/DEC", float(coord.ra.deg), float(coord.dec.deg)))
        known.append(("the header's RA/DEC", float(coord.ra.deg), float(coord.dec.deg), 10.0))
    positions += [(f"target {t.name}", t.ra, t.dec) for t in targets if t not in own]
    return ast.Hints(positions, known)


#: stars numbered on the chart written when a target cannot be placed
N_NUMBERED = 30


def _placement_advice(red, obj, band, base, header, shape, stars, cfg: Config, targets, res) -> str:
    """Why the target(s) cannot be placed and what to do (one line); writes the numbered finding chart."""
    own = [t.name for t in targets if norm_name(obj) in t.names()] or [t.name for t in targets][:3]
    scale = ast.scale_hint_of(header, cfg.pixel_scale)
    why = ("astrometry.net (solve-field) is not installed" if ast.solve_field_path() is None
           else res.reason.split("; ", 1)[-1].removesuffix(": pixel coordinates only"))
    chart, table = _numbered_chart(red, obj, band, base, stars, own)
    todo = ast.index_advice(shape, scale)
    if ast.solve_field_path() is not None and ast.indexes_for_field(ast.index_files(cfg.astrometry_index), shape,
                                                                    scale) and not res.info.get("no_index_for_scale"):
        todo += " (the index files there did not solve it: check pixel_scale and the targets' coordinates)"
    return (f"target {', '.join(own)} cannot be placed: no WCS for the base frame ({one_line(why, 200)}). "
            f"To place it: {todo}; or give starxy once (the target's position first, then comparison stars') "
            f"from the numbered finding chart {chart.name} (positions in {table.name})")


def _numbered_chart(red, obj, band, base, stars, names) -> tuple[Path, Path]:
    """The base frame with its brightest clean stars numbered 0, 1, ... and a table of their positions."""
    from .. import plotting     # matplotlib: imported only when plotting

    x, y, flux = (np.asarray(a)[:N_NUMBERED] for a in stars)
    png, txt = product_path(red, "numbered_chart", obj, band), product_path(red, "numbered_chart_txt", obj, band)
    image, _ = read_image(base)
    plotting.plot_numbered_chart(image, x, y, png, title=f"{obj} {band}: base {Path(base).name}: where is "
                                 f"{', '.join(names)}?")
    mag = -2.5 * np.log10(np.clip(flux, 1e-30, None))
    lines = [f"# numbered stars of {png.name}: base frame {Path(base).name}, 0-based pixels, instrumental mag",
             "# give starxy once in the config: the target's position first (ind_tgt: [0]), then comparison",
             f"# stars', e.g. for target N and comparisons A, B:  starxy: {{{obj}: [[x_N, y_N], [x_A, y_A], "
             "[x_B, y_B]]}",
             "# n        x        y     mag"]
    lines += [f"{i:3d} {xi:8.2f} {yi:8.2f} {mi:7.3f}" for i, (xi, yi, mi) in enumerate(zip(x, y, mag))]
    write_text(txt, "\n".join(lines) + "\n")
    return png, txt


def run_astrometry(ctx: RunContext, u: dict, prev: dict) -> dict:
    """Stage w; ``placement``: without a WCS for configured targets, what to do (the product's WCSHELP)."""
    path = astrometry_step(ctx.red, ctx.cfg, u["obj"], u["band"], u["offsets"])
    res = ast.read_wcs_product(path)
    out = {"wcs": path, "outputs": [path]}
    if res.advice:
        charts = [str(product_path(ctx.red, k, u["obj"], u["band"])) for k in ("numbered_chart", "numbered_chart_txt")]
        out.update(placement=res.advice, outputs=[path, *(c for c in charts if Path(c).is_file())])
    return out
