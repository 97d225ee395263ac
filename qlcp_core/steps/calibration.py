"""Stages l (the night's listing), b (master bias, master dark) and f (master flats)."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

from .. import bias as bias_mod
from .. import calib_library as L
from .. import dark as dark_mod
from .. import flat as flat_mod
from ..listing import list_night, read_night
from ..products import product_path
from .context import RunContext, as_path

log = logging.getLogger("qlcp.steps")


def run_list(ctx: RunContext, u: dict, prev: dict) -> dict:
    """Stage l: the night's classification as plain lists (written to ``lst/`` when ``l`` is asked for)."""
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
        dark_mod.make_master_dark([Path(f) for f in u["dark_files"]], ctx.red, ctx.cfg, as_path(u["bias"]),
                                  ctx.progress)
    return _master_result(ctx, "dark", None, u["dark_files"] if not ctx.cfg.use_dark else [])


def run_flat(ctx: RunContext, u: dict, prev: dict) -> dict:
    b = u["band"]
    if not ctx.cfg.flat_for("use_flat", b):
        flat_mod.make_master_flat([Path(f) for f in u["flat_files"]], b, ctx.red, ctx.cfg, as_path(u["bias"]),
                                  as_path(u["dark"]), ctx.progress)
    return _master_result(ctx, "flat", b, u["flat_files"] if not ctx.cfg.flat_for("use_flat", b) else [])
