"""Stage o: the offset of each of a group's frames against its base frame."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .. import offset as off_mod
from ..config import Config
from ..errors import MissingInputError
from ..offset import TRANSFORM_CARDS
from ..io import read_table_fast
from ..parallel import pmap
from ..products import cat_path, catalogue_files
from ..provenance import step_key
from .context import RunContext

log = logging.getLogger("qlcp.steps")


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
        # step p's transform from its reference: step o checks, not searches
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


def run_offsets(ctx: RunContext, u: dict, prev: dict) -> dict:
    path = offset_step(ctx.red, ctx.cfg, u["obj"], u["band"], u["corrected"])
    return {"offsets": path, "outputs": [path]}
