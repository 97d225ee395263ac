"""One function per pipeline step, on files: the entry points both drivers use.

The plain driver (:mod:`qlcp.core.pipeline`, ``qlcp run --no-prefect``) calls
them in sequence; the Prefect tasks (``tasks/``) wrap each of them, so the two
produce identical files.  Every function takes the output root ``red``, the
:class:`~qlcp.core.config.Config` and plain paths, writes its products under
``red`` only, and returns small JSON-ready values (paths as strings, counts).
The science is in the stage modules named after each step.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from astropy.table import Table

from . import bias as bias_mod
from . import catalogue as cat_mod
from . import dark as dark_mod
from . import differential as diff_mod
from . import flat as flat_mod
from . import offset as off_mod
from . import photometry as phot_mod
from . import selection as selection_mod
from ._version import __version__
from .codehash import stage_code
from .config import Config
from .correct import bf_path, correct_frames, correction_key, group_dir, log_corrected
from .errors import InputError, MissingInputError, one_line
from .io import file_fingerprint, fingerprint_record, read_image, write_json, read_table_fast
from .logs import step_tag
from .parallel import default_workers, pmap
from .products import product_path
from .provenance import fits_key, step_key

log = logging.getLogger("qlcp.steps")



def preload_plotting(cfg: Config) -> None:
    """Import matplotlib and the plotting module in a background thread when the run will
    plot (steps d, g): ~0.6 s that then overlaps the frame-level steps, where this process
    mostly waits for its workers, instead of delaying the light curve at the end."""
    if any(s in cfg.steps for s in "dg"):
        import importlib
        import threading

        threading.Thread(target=importlib.import_module, args=(f"{__package__}.plotting",),
                         name="qlcp-preload-plotting", daemon=True).start()


def _s(p) -> str | None:
    return None if p is None else str(p)


# ------------------------------------------------------------------ b, f
def bias_step(red, cfg: Config, files, progress=None) -> str | None:
    """Step b: master bias from ``files``; returns the bias the correction will use."""
    bias_mod.make_master_bias([Path(f) for f in files], red, cfg, progress)
    return _s(bias_mod.select_bias(red, cfg))


def dark_step(red, cfg: Config, files, bias, progress=None) -> str | None:
    """Darks (beyond the original): master dark per second when tonight has darks."""
    if files and not cfg.use_dark:
        dark_mod.make_master_dark([Path(f) for f in files], red, cfg, Path(bias) if bias else None, progress)
    return _s(dark_mod.select_dark(red, cfg))


def flat_step(red, cfg: Config, band: str, files, bias=None, dark=None, progress=None) -> str | None:
    """Step f for one band; returns the flat the correction will use (use/tonight/alt)."""
    if not cfg.flat_for("use_flat", band):
        flat_mod.make_master_flat([Path(f) for f in files], band, red, cfg, Path(bias) if bias else None,
                                  Path(dark) if dark else None, progress)
    return _s(flat_mod.select_flat(red, cfg, band))


# ---------------------------------------------------------------------- i
def _correct_chunk(args, written=None) -> dict:
    """One job of step i (``args`` from :func:`_chunk_jobs`); ``written`` as in :func:`correct_frames`."""
    files, obj, band, red, cfg, bias, flat, dark, fingerprints, coord_file = args
    res = correct_frames([Path(f) for f in files], obj, band, red, cfg, Path(bias) if bias else None,
                         Path(flat) if flat else None, Path(dark) if dark else None, fingerprint=fingerprints,
                         coord_file=Path(coord_file) if coord_file else None, summary_level=logging.DEBUG,
                         written=written)
    return {"outputs": list(res.outputs), "rejected": [list(r) for r in res.rejected],
            "fingerprints": res.fingerprints, "done": res.n_done, "kept": res.n_kept, "degraded": res.degraded}


def _chunk_jobs(red, cfg: Config, obj: str, band: str, files, bias, flat, dark, fingerprints, coord_file) -> list:
    """The jobs of steps i (and i+p) for a group's frames: guided chunks, each with the
    masters and the coordinate frame (``coord_file``, default the first of ``files``)."""
    files = [str(f) for f in files]
    coord_file = str(coord_file) if coord_file else (files[0] if files else None)
    return [(c, obj, band, str(red), cfg, bias, flat, dark, fingerprints, coord_file)
            for c in _guided_chunks(files, cfg.workers or default_workers())]


def _merge_corrected(obj: str, band: str, parts: list[dict]) -> dict:
    """One group's correction result from its chunks', with the group's summary line."""
    res = {"outputs": sorted({o for p in parts for o in p["outputs"]}),
           "rejected": list({r[0]: r for p in parts for r in p["rejected"]}.values()),
           "fingerprints": {k: v for p in parts for k, v in p["fingerprints"].items()},
           "degraded": list(dict.fromkeys(d for p in parts for d in p.get("degraded", [])))}
    log_corrected(obj, band, sum(p["done"] for p in parts), sum(p["kept"] for p in parts), len(res["rejected"]))
    return res


def correct_step(red, cfg: Config, obj: str, band: str, files, bias=None, flat=None, dark=None,
                 progress=None, fingerprints: bool = False, coord_file=None) -> dict:
    """Step i for (a chunk of) one group: ``{"outputs": [...], "rejected": [[file, reason], ...]}``.

    Frames are split in chunks over ``cfg.workers`` processes (times are
    vectorised per chunk; results do not depend on the split).  ``fingerprints``
    adds ``{path: [size, mtime_ns, sha256]}`` of the frames written, hashed by
    the workers (for content-keyed caches).  ``coord_file``: the frame whose header
    gives the target coordinate for HJD/BJD/airmass (the group's first frame; default
    the first of ``files``), the same for every chunk however a group is split.
    """
    parts = pmap(_correct_chunk, _chunk_jobs(red, cfg, obj, band, files, bias, flat, dark, fingerprints, coord_file),
                 cfg.workers, progress, f"correct {obj} {band}")
    return _merge_corrected(obj, band, parts)


def corrected_files(red, obj: str, band: str, raw_files=None) -> list[str]:
    """The group's corrected frames: those of ``raw_files`` that exist, else all on disk, sorted."""
    if raw_files is not None:
        return [str(p) for p in (bf_path(red, obj, band, f) for f in raw_files) if p.is_file()]
    return sorted(str(p) for p in group_dir(red, obj, band).glob("*.bf.fits"))


# ---------------------------------------------------------------------- o
def offset_step(red, cfg: Config, obj: str, band: str, bf_files) -> str:
    """Step o: offsets of the group's frames against the base image -> offset ecsv path."""
    if not bf_files:
        raise MissingInputError(f"{obj} {band}: no corrected frames for step o (run step i first)")
    ecsv, _ = off_mod.offset_paths(red, obj, band)
    key = step_key(cfg, "offsets", *bf_files, *catalogue_files(bf_files))   # star lists come from the catalogues
    if ecsv.is_file() and not cfg.mode.should_write(ecsv, aggregate=True, current=_ecsv_key(ecsv) == key):
        return str(ecsv)
    table = off_mod.compute_offsets([Path(f) for f in bf_files], cfg, cfg.base_img, star_lists=catalogue_stars,
                                    map_fn=functools.partial(pmap, workers=cfg.workers))
    table.meta["qlcpkey"] = key
    ecsv, _ = off_mod.write_offsets(table, red, obj, band)
    n_ok = int(np.sum(table["ok"]))
    log.info("%s %s: offsets of %d frames, %d aligned", obj, band, len(table), n_ok)
    return str(ecsv)


#: flags that disqualify a source as an alignment star (border, saturated, blended, bad flux, cosmic)
_ALIGN_BAD_FLAGS = 1 | 2 | 4 | 8 | 16


def catalogue_stars(bf: str | Path, n_max: int = 60):
    """Alignment stars of a frame from its photometry catalogue: (xy, flux, header) or None.

    Used by step o when step p has run (the driver runs p first when both are
    asked for): aligning then costs a table read, not an image search; the header
    carries JD, RAWFILE and, of a tracked frame, its reference PHOTREF and transform
    (``PHOTM00`` .. ``PHOTM12``), which step o checks instead of searching.  Only
    a catalogue made from this very corrected frame (same provenance key) counts.
    """
    from astropy.io import fits

    cp = cat_path(bf)
    if not cp.is_file():
        return None
    try:
        d, hdr = read_table_fast(cp)
        if hdr.get("BFFILE") != Path(bf).name:
            return None
        good = (d["Flags"] & _ALIGN_BAD_FLAGS) == 0
        flux = np.asarray(d["FluxAUTO"], dtype=float)
        good &= np.isfinite(flux) & (flux > 0)
        ix = np.flatnonzero(good)
        ix = ix[np.argsort(-flux[ix], kind="stable")][:n_max]
        xy = np.column_stack([np.asarray(d["X"], float)[ix], np.asarray(d["Y"], float)[ix]])
        from .forced import TRANSFORM_CARDS     # step p's transform from its reference: step o checks, not searches

        header = fits.Header({k: hdr[k] for k in ("JD", "RAWFILE", "PHOTREF", *TRANSFORM_CARDS) if k in hdr})
        return xy, flux[ix], header
    except Exception as e:  # unreadable catalogue: fall back to the image
        log.debug("%s: %s", cp, e)
        return None


def _ecsv_key(path: Path) -> str | None:
    try:
        return Table.read(path, format="ascii.ecsv").meta.get("qlcpkey")
    except Exception:
        return None


# ---------------------------------------------------------------------- p
def cat_path(bf: str | Path) -> Path:
    """The photometry catalogue of a corrected frame."""
    return product_path(None, "frame_catalogue", frame=bf)


def _photometry_one(args, data=None) -> dict:
    bf, cfg, fingerprints, stars = args
    cp = cat_path(bf)
    if stars is not None and Path(bf).name == Path(stars.ref).name:
        if stars.made is not None:      # measured (and written) with the set
            return {**stars.made, "bf": str(bf)}
        stars = None                    # the reference itself: every source, as it was chosen from
    key = step_key(cfg, "photometry", bf, *([stars.ref] if stars is not None else []))
    if not cfg.mode.should_write(cp, current=(not cp.exists() or fits_key(cp) == key)):
        return {"file": str(cp), "bf": str(bf), "kept": True}
    try:
        stats = phot_mod.photometry_file(bf, cp, cfg, key=key, data=data, stars=stars)
    except InputError as e:
        return {"file": None, "bf": str(bf), "error": str(e)}
    return _plain_stats(stats) | {"bf": str(bf)} | (
        {"fingerprint": fingerprint_record(cp, derived=key)} if fingerprints else {})


def _plain_stats(stats: dict) -> dict:
    """A frame's photometry stats as JSON values (scalars only, floats as float)."""
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v)
            for k, v in stats.items() if isinstance(v, (str, int, float, np.floating))}


def photometry_step(red, cfg: Config, bf_files, progress=None, fingerprints: bool = False, ref=None,
                    obj: str = "") -> list[dict]:
    """Step p on (a chunk of) frames, over ``cfg.workers`` processes: one ``.cat.fits`` each.

    ``ref``: the group's reference frame (corrected; :mod:`qlcp.core.forced`): measured
    in full, and the other frames only at its chosen stars (``frame_catalogues: stars``).
    A frame whose catalogue exists and was made with the same settings from
    the same corrected frame is kept (EXIST_APPEND); an unreadable frame is
    reported with its reason and the others go on.  Returns per-frame stats.
    """
    stars = _reference(cfg, ref, obj, fingerprints)
    out = pmap(_photometry_one, [(str(b), cfg, fingerprints, stars) for b in bf_files], cfg.workers, progress,
               "photometry")
    _log_photometry(out)
    return out


def _log_photometry(out: list[dict]) -> None:
    for s in out:
        if s.get("error"):
            log.error("%s", s["error"])
    made = [s for s in out if s.get("NSTARS") is not None]
    if made:
        fw = [s["FWHM"] for s in made if np.isfinite(s.get("FWHM", np.nan))]
        log.info("photometry of %d frames: %d-%d sources, median FWHM %.2f px%s", len(made),
                 min(s["NSTARS"] for s in made), max(s["NSTARS"] for s in made),
                 float(np.median(fw)) if fw else float("nan"),
                 f"; {len(out) - len(made)} kept or failed" if len(out) != len(made) else "")


def _reference(cfg: Config, ref, obj: str, fingerprints: bool = False):
    """The group's :class:`~qlcp.core.forced.StarSet` from its corrected reference frame ``ref``;
    None (every source of every frame) with ``frame_catalogues: full`` or without the frame.
    The reference's own catalogue is written here when the work mode asks for it (measured once)."""
    if cfg.frame_catalogues == "full" or not ref or not Path(ref).is_file():
        return None
    from .forced import reference_of

    cp, key = cat_path(ref), step_key(cfg, "photometry", ref)
    write = (cp, key) if cfg.mode.should_write(cp, current=(not cp.exists() or fits_key(cp) == key)) else None
    with step_tag("p"):
        stars = reference_of(ref, cfg, obj, write=write)
    if stars is not None and stars.made is not None:
        stars.made = _plain_stats(stars.made) | (
            {"fingerprint": fingerprint_record(cp, derived=key)} if fingerprints else {})
    return stars


# -------------------------------------------------------------------- i + p
def _correct_measure_chunk(args) -> dict:
    """Correct a chunk of frames, measuring each as soon as it is written (from memory);
    frames kept from before are measured from their files."""
    files, obj, band, red, cfg, _bias, _flat, _dark, fingerprints, _coord, stars = args
    phot, t_p = {}, 0.0

    def measure(bf, data):
        nonlocal t_p
        t = time.perf_counter()
        with step_tag("p"):
            phot[str(bf)] = _photometry_one((str(bf), cfg, fingerprints, stars), data)
        t_p += time.perf_counter() - t

    t0 = time.perf_counter()
    with step_tag("i"):
        res = _correct_chunk(args[:10], written=measure)
    t_i = time.perf_counter() - t0 - t_p
    for bf in (str(p) for p in (bf_path(red, obj, band, f) for f in files) if p.is_file()):
        if bf not in phot:
            measure(bf, None)
    return {**res, "photometry": list(phot.values()), "seconds": {"i": t_i, "p": t_p}}


def _guided_chunks(items: list, workers: int, first: int = 40, last: int = 2) -> list[list]:
    """Chunks shrinking as the work runs out (guided scheduling): few jobs, and the
    workers finish together.  Depends only on ``len(items)`` and ``workers``."""
    chunks, i, n = [], 0, len(items)
    while i < n:
        size = max(last, min(first, -(-(n - i) // (3 * workers))))
        chunks.append(items[i:i + size])
        i += size
    return chunks


def correct_photometry_step(red, cfg: Config, obj: str, band: str, files, bias=None, flat=None, dark=None,
                            progress=None, fingerprints: bool = False,
                            coord_file=None) -> tuple[dict, list[dict], dict]:
    """Steps i and p of (a chunk of) one group in one pass: each job corrects a few
    frames and measures each one from the pixels just written (no barrier between
    the steps, no second read).

    The files are those :func:`correct_step` then :func:`photometry_step` would
    write, with the same content.  ``fingerprints`` and ``coord_file`` as in
    those.  Returns the correction result (``outputs``, ``rejected``,
    ``fingerprints``), the per-frame photometry stats (with ``fingerprint``), and
    the seconds the workers spent in each step (``{"i": .., "p": ..}``).
    """
    files = [str(f) for f in files]
    coord = str(coord_file) if coord_file else (files[0] if files else None)  # the group's reference
    first, phot = [], []
    if coord and cfg.frame_catalogues != "full":      # corrected and measured before the others
        job = ([coord], obj, band, str(red), cfg, bias, flat, dark, fingerprints, coord)
        ref = bf_path(red, obj, band, coord)
        if coord in files:                          # this call's frame: corrected here, not again by a job
            files = [f for f in files if f != coord]
            with step_tag("i"):
                first = [_correct_chunk(job)]
        elif not (ref.is_file() and fits_key(ref) == correction_key(cfg, coord, bias, flat, dark)):
            with step_tag("i"):                     # another chunk's frame: only made when not current
                _correct_chunk(job)
        stars = _reference(cfg, ref, obj, fingerprints)
        if first and first[0]["outputs"]:
            with step_tag("p"):
                phot = [_photometry_one((str(ref), cfg, fingerprints, stars))]
    else:
        stars = None
    jobs = _chunk_jobs(red, cfg, obj, band, files, bias, flat, dark, fingerprints, coord)
    parts = pmap(_correct_measure_chunk, [(*j, stars) for j in jobs], cfg.workers, progress,
                 f"correct+measure {obj} {band}")
    with step_tag("i"):
        res = _merge_corrected(obj, band, first + parts)
    phot += [s for p in parts for s in p["photometry"]]
    with step_tag("p"):
        _log_photometry(phot)
    return res, phot, {k: sum(p["seconds"][k] for p in parts) for k in ("i", "p")}


def catalogue_files(bf_files) -> list[str]:
    return [str(cat_path(b)) for b in bf_files if cat_path(b).is_file()]


# ---------------------------------------------------------------------- w
def astrometry_step(red, cfg: Config, obj: str, band: str) -> str:
    """Step w: the WCS of the group's base frame (offsets table's ``base_bf``) -> ``wcs_{obj}_{band}.fits``.

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
    from . import astrometry as ast
    from .field import field_dir
    from .io import read_header
    from .targets import all_targets, norm_name

    off = off_mod.read_offsets(red, obj, band)
    base = off.meta.get("base_bf")
    cat = cat_path(base) if base else None
    if not base or not Path(base).is_file() or not cat.is_file():
        raise MissingInputError(f"{obj} {band}: base frame {base!r} or its catalogue missing (run steps i, p, o)")
    out = product_path(red, "wcs", obj, band)
    indexes = ast.index_files(cfg.astrometry_index)
    key = step_key(cfg, "astrometry", product_path(red, "offsets", obj, band), base, cat, *indexes)
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
    from . import astrometry as ast
    from .targets import norm_name
    from .timing import target_coord

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
    from . import astrometry as ast
    from .targets import norm_name

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
    from . import plotting

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
    from .io import write_text

    write_text(txt, "\n".join(lines) + "\n")
    return png, txt


def step_w_wcs(wcs_file):
    """The celestial WCS step w wrote (``wcs_{obj}_{band}.fits``); None without one."""
    from . import astrometry as ast

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
    from .catalogue import _offset_lookup
    from .io import raw_stem

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


# ---------------------------------------------------------------- k, c
selection_for = selection_mod.selection_for


catalogue_path = cat_mod.catalogue_path


def catalogue_step(red, cfg: Config, obj: str, band: str, cat_files, offsets: str, selection: dict) -> str:
    """Step c: the night catalogue of the selected stars -> ``cata_{obj}_{band}.fits``."""
    if not selection["starxy"]:
        raise InputError(f"{obj} {band}: no stars to catalogue (no starxy given and none picked)")
    off = off_mod.read_offsets(red, obj, band)
    table = cat_mod.build_catalogue(cat_files, off, selection["starxy"], cfg, base_file=off.meta.get("base"))
    for k in ("ind_tgt", "ind_ref", "ind_chk", "source", "targets", "no_target"):
        if k in selection or k.startswith("ind_") or k == "source":
            table.meta[k] = selection.get(k)
    w = step_w_wcs(product_path(red, "wcs", obj, band))
    radec = star_radec(w, selection["starxy"])
    if radec is not None:                       # the stars' sky positions, kept in the catalogue's meta
        table.meta["star_ra"], table.meta["star_dec"] = radec
        _frame_radec(table, off, w)
    out = catalogue_path(red, obj, band)
    cat_mod.write_catalogue(table, out)
    return str(out)


# ---------------------------------------------------------------------- d
def provenance(red, cfg: Config, bf_example: str | None) -> dict:
    """Code version (information) and the fingerprint of the code of the stage writing the light curve
    (:func:`qlcp.core.codehash.stage_code`), config hashes, masters used (with their sha256), photometry
    settings."""
    prov = {"qlcp_version": __version__, "qlcp_code": stage_code("differential"), "config_hash": cfg.hash(),
            "apertures": list(cfg.aper),
            "sky_annulus": list(cfg.sky_annulus) if cfg.sky_annulus else "auto"}
    if bf_example and Path(bf_example).is_file():
        from .io import read_header

        h = read_header(bf_example)
        prov["gain"], prov["rdnoise"] = float(h.get("GAIN", np.nan)), float(h.get("RDNOISE", np.nan))
        used = _masters_used(red)
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


def _masters_used(red) -> dict:
    p = product_path(red, "masters")
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except (OSError, ValueError):
        return {}


def differential_step(red, cfg: Config, obj: str, band: str, cata: str, night: str = "") -> dict:
    """Step d: light curves, star report, original-style text files and the light-curve plots."""
    table = cat_mod.read_catalogue(cata)
    m = table.meta
    given = m.get("source") == "given"
    lc, stars = diff_mod.differential(table, m.get("ind_tgt"), m.get("ind_ref"), m.get("ind_chk"), cfg,
                                      source=m.get("source"))
    if m.get("star_ra") is not None and len(m["star_ra"]) == len(stars):
        stars["ra"], stars["dec"] = np.asarray(m["star_ra"], float), np.asarray(m["star_dec"], float)
        stars["ra"].unit = stars["dec"].unit = "deg"
    bf0 = next(iter(sorted(group_dir(red, obj, band).glob("*.bf.fits"))), None)
    lc.meta.update(object=obj, band=band, night=night)
    names = [str(n) for n in (m.get("targets") or [])][:len(lc.meta.get("ind_tgt", []))]
    if names:
        lc.meta["targets"] = names                  # the configured names of targets T0, T1, ...
    if m.get("no_target") and not lc.meta.get("ind_tgt"):
        lc.meta["no_target"] = str(m["no_target"])
    files = diff_mod.write_lightcurve(lc, stars, red, obj, band, provenance(red, cfg, _s(bf0)))
    from . import plotting          # matplotlib: imported only when plotting

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
def graph_step(red, cfg: Config, obj: str, band: str) -> str:
    """Step g: finding chart of the base image with the chosen stars marked."""
    stars_path = product_path(red, "stars", obj, band)
    if not stars_path.is_file():
        raise MissingInputError(f"{stars_path}: no star list for the chart (run step d first)")
    stars = Table.read(stars_path, format="ascii.ecsv")
    off = off_mod.read_offsets(red, obj, band)
    image, _ = read_image(off.meta["base_bf"])
    from . import plotting

    out = product_path(red, "chart", obj, band)
    names = _selection_targets(red, obj, band)
    plotting.plot_chart(image, stars, out, title=f"{obj} {band}: base {off.meta.get('base', '')}"
                        + (f"   target {', '.join(names)}" if names else ""),
                        wcs=step_w_wcs(product_path(red, "wcs", obj, band)), target_names=names)
    return str(out)


def _selection_targets(red, obj: str, band: str) -> list[str]:
    """The configured names of the group's targets T0, T1, ... (step k's selection), [] when unknown."""
    p = product_path(red, "selection", obj, band)
    try:
        names = json.loads(p.read_text()).get("targets") if p.is_file() else None
    except (OSError, ValueError, AttributeError):
        return []
    return [str(n) for n in names] if isinstance(names, list) else []


# ============================================================ stage runners
# One ``run_{name}`` per stage of :data:`qlcp.core.stages.STAGES` (and per fused block):
# ``run(ctx, unit, prev) -> dict``, where ``unit`` holds the fields the stage declares,
# ``prev`` the results of the earlier stages of its block, and the result is JSON-ready
# with ``outputs`` (paths written).  Both drivers call them through :func:`run_block`.


@dataclass
class RunContext:
    """What every stage runner gets besides its unit: the output root, the stage's config view,
    a progress factory, whether to return the fingerprints of the frames written (for content
    caches), and ``log(letters)``: a context manager logging to each step's file."""

    red: str
    cfg: Any
    progress: Any = None
    fingerprints: bool = False
    log: Callable = field(default=lambda letters: contextlib.nullcontext())


def run_list(ctx: RunContext, u: dict, prev: dict) -> dict:
    """Stage l: the night's classification as plain lists (written to ``lst/`` when ``l`` is asked for)."""
    from .listing import list_night, read_night

    c, red = ctx.cfg, Path(ctx.red)
    if "l" in c.steps or not product_path(red, "night_list").is_file():
        night = list_night(u["raw_dir"], red, c, write="l" in c.steps, progress=ctx.progress)
    else:
        night = read_night(red, u["raw_dir"])
    groups = night.selected_groups(c.obj, c.band)      # a selection matching nothing: exit 2, naming what exists
    return {"summary": night.summary(), "bias": [str(p) for p in night.bias], "dark": [str(p) for p in night.dark],
            "flats": {b: [str(p) for p in night.flat(b)] for b in sorted({b for _, b in groups})},
            "groups": [[o, b, [str(p) for p in night.science(o, b)]] for o, b in groups],
            "rejected": [[str(r["file"]), str(r["reason"])] for r in night.rejected],
            "outputs": [str(product_path(red, "night_list"))] if "l" in c.steps else []}


def _master_result(ctx: RunContext, kind: str, band: str | None, inputs: list) -> dict:
    """Tonight's master of ``kind``, registered in the calibration library (with its QC) when it was
    made from tonight's frames; which master the night uses is the walk's choice."""
    made = product_path(ctx.red, kind, band=band)
    out = {"kind": kind, "band": band, "made": str(made) if made.is_file() else None,
           "outputs": [str(made)] if made.is_file() else []}
    if made.is_file() and inputs and ctx.cfg.calib_library:
        from . import calib_library as L

        lib = L.library_dir(ctx.red, ctx.cfg)
        try:
            e = L.register(lib, made, kind, band, list(inputs), Path(ctx.red).name, ctx.cfg)
        except L.LibraryError as err:               # a corrupt index: tonight's masters, no library, degraded
            log.error("%s", err)
            out["library_error"] = str(err)
        except (OSError, sqlite3.Error) as err:     # the library is a help; an unwritable one costs no night
            log.warning("calibration library %s: %s not registered (%s)", lib, made.name, err)
        else:
            qc = json.loads(e.qc or "{}")
            out["library"] = {"id": e.id, "status": e.status, "qc": e.qc, "epoch": e.epoch, "camera": e.camera,
                              **({"new_epoch": qc["new_epoch"]} if qc.get("new_epoch") else {})}
    return out


def run_bias(ctx: RunContext, u: dict, prev: dict) -> dict:
    rejected: list = []
    bias_mod.make_master_bias([Path(f) for f in u["bias_files"]], ctx.red, ctx.cfg, ctx.progress, rejected)
    gone = {r[0] for r in rejected}
    used = [f for f in u["bias_files"] if str(f) not in gone] if not ctx.cfg.use_bias else []
    return {**_master_result(ctx, "bias", None, used), "rejected": rejected}


def run_dark(ctx: RunContext, u: dict, prev: dict) -> dict:
    if u["dark_files"] and not ctx.cfg.use_dark:
        dark_mod.make_master_dark([Path(f) for f in u["dark_files"]], ctx.red, ctx.cfg, _p(u["bias"]),
                                  ctx.progress)
    return _master_result(ctx, "dark", None, u["dark_files"] if not ctx.cfg.use_dark else [])


def run_flat(ctx: RunContext, u: dict, prev: dict) -> dict:
    b = u["band"]
    if not ctx.cfg.flat_for("use_flat", b):
        flat_mod.make_master_flat([Path(f) for f in u["flat_files"]], b, ctx.red, ctx.cfg, _p(u["bias"]),
                                  _p(u["dark"]), ctx.progress)
    return _master_result(ctx, "flat", b, u["flat_files"] if not ctx.cfg.flat_for("use_flat", b) else [])


def _p(v) -> Path | None:
    return Path(v) if v else None


def run_correct(ctx: RunContext, u: dict, prev: dict) -> dict:
    return correct_step(ctx.red, ctx.cfg, u["obj"], u["band"], u["files"], u["bias"], u["flat"], u["dark"],
                        ctx.progress, ctx.fingerprints, u["coord_file"])


def run_photometry(ctx: RunContext, u: dict, prev: dict) -> dict:
    ref = bf_path(ctx.red, u["obj"], u["band"], u["coord_file"]) if u.get("coord_file") else None
    stats = photometry_step(ctx.red, ctx.cfg, u["corrected"], ctx.progress, ctx.fingerprints, ref, u["obj"])
    return {"frames": stats, "outputs": [s["file"] for s in stats if s.get("file")]}


def run_correct_photometry(ctx: RunContext, u: dict, prev: dict) -> dict:
    res, stats, busy = correct_photometry_step(ctx.red, ctx.cfg, u["obj"], u["band"], u["files"], u["bias"],
                                               u["flat"], u["dark"], ctx.progress, ctx.fingerprints,
                                               u["coord_file"])
    return {**res, "frames": stats, "busy": busy,
            "outputs": res["outputs"] + [s["file"] for s in stats if s.get("file")]}


def run_offsets(ctx: RunContext, u: dict, prev: dict) -> dict:
    path = offset_step(ctx.red, ctx.cfg, u["obj"], u["band"], u["corrected"])
    return {"offsets": path, "outputs": [path]}


def run_astrometry(ctx: RunContext, u: dict, prev: dict) -> dict:
    """Stage w; ``placement``: without a WCS for configured targets, what to do (the product's WCSHELP)."""
    from .astrometry import read_wcs_product

    path = astrometry_step(ctx.red, ctx.cfg, u["obj"], u["band"])
    res = read_wcs_product(path)
    out = {"wcs": path, "outputs": [path]}
    if res.advice:
        charts = [str(product_path(ctx.red, k, u["obj"], u["band"])) for k in ("numbered_chart", "numbered_chart_txt")]
        out.update(placement=res.advice, outputs=[path, *(c for c in charts if Path(c).is_file())])
    return out


def run_select(ctx: RunContext, u: dict, prev: dict) -> dict:
    """Stage k: the group's stars, written as ``select_{obj}_{band}.json`` for the catalogue stage."""
    sel = selection_for(ctx.red, ctx.cfg, u["obj"], u["band"], u["frame_catalogue"],
                        str(product_path(ctx.red, "offsets", u["obj"], u["band"])))
    path = str(write_json(product_path(ctx.red, "selection", u["obj"], u["band"]), sel))
    return {"selection": sel, "outputs": [path]}


def run_catalogue(ctx: RunContext, u: dict, prev: dict) -> dict:
    sel = json.loads(Path(u["selection"]).read_text()) if Path(u["selection"]).is_file() else None
    if sel is None:
        raise MissingInputError(f"{u['selection']}: no star selection (run step k)")
    path = catalogue_step(ctx.red, ctx.cfg, u["obj"], u["band"], u["frame_catalogue"],
                          str(product_path(ctx.red, "offsets", u["obj"], u["band"])), sel)
    return {"night_catalogue": path, "outputs": [path]}


def run_differential(ctx: RunContext, u: dict, prev: dict) -> dict:
    o, b = u["obj"], u["band"]
    res = differential_step(ctx.red, ctx.cfg, o, b, str(product_path(ctx.red, "night_catalogue", o, b)),
                            u.get("night", ""))
    return {"lightcurve": res["lc"], "stars": res["stars"], "lc_png": res["png"], "lc_pdf": res["pdf"],
            "noise": res["noise"], "outputs": [res["lc"], res["stars"], res["png"]]}


def run_timing(ctx: RunContext, u: dict, prev: dict) -> dict:
    """Stage t: times of the group's minima and transits (:mod:`qlcp.core.event_timing`)."""
    from .event_timing import run_timing as time_group

    paths = time_group(ctx.red, u["obj"], u["band"], cfg=ctx.cfg)
    out = {k: str(v) for k, v in paths.items() if v}
    return {**out, "outputs": list(out.values())}


def run_chart(ctx: RunContext, u: dict, prev: dict) -> dict:
    path = graph_step(ctx.red, ctx.cfg, u["obj"], u["band"])
    return {"chart": path, "outputs": [path]}


def run_block(block, cfg, ctx: RunContext, unit: dict) -> dict:
    """Run one unit of a :class:`~qlcp.core.stages.Block`: its fused runner, or its stages in
    turn, each with its own config view and step log.  Returns the merged results, with
    ``seconds`` per step letter (for a fused block, split as its workers spent them)."""
    from .stages import view

    if block.fused:
        ctx = replace(ctx, cfg=view(cfg, block))
        t0 = time.perf_counter()
        with ctx.log("".join(s.letter for s in block.stages)):
            res = globals()[f"run_{block.fused}"](ctx, unit, {})
        busy = res.pop("busy", None) or {s.letter: 1.0 for s in block.stages}
        wall, total = time.perf_counter() - t0, sum(busy.values()) or 1.0
        return {**res, "seconds": {k: wall * v / total for k, v in busy.items()}}
    out: dict = {"outputs": [], "seconds": {}}
    prev: dict = {}
    for s in block.stages:
        t0 = time.perf_counter()
        with ctx.log(s.letter):
            prev[s.name] = res = globals()[f"run_{s.name}"](replace(ctx, cfg=view(cfg, s)), unit, prev)
        out["seconds"][s.letter] = out["seconds"].get(s.letter, 0.0) + time.perf_counter() - t0
        out["outputs"] += res.get("outputs", [])
        out.update({k: v for k, v in res.items() if k != "outputs"})
    return out
