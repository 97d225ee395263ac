"""Stage k: a group's target, comparison and check stars (:mod:`qlcp.core.selection`)."""

from __future__ import annotations

from ..io import write_json
from ..products import product_path
from ..selection import selection_for
from .context import RunContext


def run_select(ctx: RunContext, u: dict, prev: dict) -> dict:
    """Stage k: the group's stars, written as ``select_{obj}_{band}.json`` for the catalogue stage."""
    sel = selection_for(ctx.red, ctx.cfg, u["obj"], u["band"], u["frame_catalogue"], u["offsets"])
    path = str(write_json(product_path(ctx.red, "selection", u["obj"], u["band"]), sel))
    return {"selection": sel, "outputs": [path]}
