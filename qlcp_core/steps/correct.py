"""Stage i: bias, dark and flat correction of a group's frames, in guided chunks over the workers."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import Config
from ..correct import correct_frames, log_corrected
from ..parallel import default_workers, pmap
from .context import RunContext

def correct_chunk(args, written=None) -> dict:
    """One job of step i (``args`` from :func:`chunk_jobs`); ``written`` as in :func:`correct_frames`."""
    files, obj, band, red, cfg, bias, flat, dark, fingerprints, coord_file = args
    res = correct_frames([Path(f) for f in files], obj, band, red, cfg, Path(bias) if bias else None,
                         Path(flat) if flat else None, Path(dark) if dark else None, fingerprint=fingerprints,
                         coord_file=Path(coord_file) if coord_file else None, summary_level=logging.DEBUG,
                         written=written)
    return {"outputs": list(res.outputs), "rejected": [list(r) for r in res.rejected],
            "fingerprints": res.fingerprints, "done": res.n_done, "kept": res.n_kept, "degraded": res.degraded}


def chunk_jobs(red, cfg: Config, obj: str, band: str, files, bias, flat, dark, fingerprints, coord_file) -> list:
    """The jobs of steps i (and i+p) for a group's frames: guided chunks, each with the
    masters and the coordinate frame (``coord_file``, default the first of ``files``)."""
    files = [str(f) for f in files]
    coord_file = str(coord_file) if coord_file else (files[0] if files else None)
    return [(c, obj, band, str(red), cfg, bias, flat, dark, fingerprints, coord_file)
            for c in _guided_chunks(files, cfg.workers or default_workers())]


def merge_corrected(obj: str, band: str, parts: list[dict]) -> dict:
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
    parts = pmap(correct_chunk, chunk_jobs(red, cfg, obj, band, files, bias, flat, dark, fingerprints, coord_file),
                 cfg.workers, progress, f"correct {obj} {band}")
    return merge_corrected(obj, band, parts)


def _guided_chunks(items: list, workers: int, first: int = 40, last: int = 2) -> list[list]:
    """Chunks shrinking as the work runs out (guided scheduling): few jobs, and the
    workers finish together.  Depends only on ``len(items)`` and ``workers``."""
    chunks, i, n = [], 0, len(items)
    while i < n:
        size = max(last, min(first, -(-(n - i) // (3 * workers))))
        chunks.append(items[i:i + size])
        i += size
    return chunks


def run_correct(ctx: RunContext, u: dict, prev: dict) -> dict:
    return correct_step(ctx.red, ctx.cfg, u["obj"], u["band"], u["files"], u["bias"], u["flat"], u["dark"],
                        ctx.progress, ctx.fingerprints, u["coord_file"])
