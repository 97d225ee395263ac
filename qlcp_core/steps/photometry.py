"""Stage p (photometry of a group's corrected frames) and the fused i+p (each frame measured from
memory as soon as it is corrected)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .. import photometry as phot_mod
from ..config import Config
from ..correct import bf_path, correction_key
from ..errors import InputError
from ..photometry import reference_of
from ..io import fingerprint_record
from ..logs import step_tag
from ..parallel import pmap
from ..products import cat_path
from ..provenance import fits_key, step_key
from .context import RunContext
from .correct import chunk_jobs, correct_chunk, merge_corrected

log = logging.getLogger("qlcp.steps")


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

    ``ref``: the group's reference frame (corrected; :mod:`qlcp.core.photometry.forced`): measured
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
    """The group's :class:`~qlcp.core.photometry.forced.StarSet` from its corrected reference frame ``ref``;
    None (every source of every frame) with ``frame_catalogues: full`` or without the frame.
    The reference's own catalogue is written here when the work mode asks for it (measured once)."""
    if cfg.frame_catalogues == "full" or not ref or not Path(ref).is_file():
        return None
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
        res = correct_chunk(args[:10], written=measure)
    t_i = time.perf_counter() - t0 - t_p
    for bf in (str(p) for p in (bf_path(red, obj, band, f) for f in files) if p.is_file()):
        if bf not in phot:
            measure(bf, None)
    return {**res, "photometry": list(phot.values()), "seconds": {"i": t_i, "p": t_p}}


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
                first = [correct_chunk(job)]
        elif not (ref.is_file() and fits_key(ref) == correction_key(cfg, coord, bias, flat, dark)):
            with step_tag("i"):                     # another chunk's frame: only made when not current
                correct_chunk(job)
        stars = _reference(cfg, ref, obj, fingerprints)
        if first and first[0]["outputs"]:
            with step_tag("p"):
                phot = [_photometry_one((str(ref), cfg, fingerprints, stars))]
    else:
        stars = None
    jobs = chunk_jobs(red, cfg, obj, band, files, bias, flat, dark, fingerprints, coord)
    parts = pmap(_correct_measure_chunk, [(*j, stars) for j in jobs], cfg.workers, progress,
                 f"correct+measure {obj} {band}")
    with step_tag("i"):
        res = merge_corrected(obj, band, first + parts)
    phot += [s for p in parts for s in p["photometry"]]
    with step_tag("p"):
        _log_photometry(phot)
    return res, phot, {k: sum(p["seconds"][k] for p in parts) for k in ("i", "p")}


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
