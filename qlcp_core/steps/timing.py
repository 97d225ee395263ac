"""Stage t: times of a group's minima and transits (:mod:`qlcp.core.event_timing`)."""

from __future__ import annotations

from ..event_timing import run_timing as time_group
from .context import RunContext, declared_input


def run_timing(ctx: RunContext, u: dict, prev: dict) -> dict:
    """Stage t: times of the group's minima and transits, from its light curve and star selection."""
    paths = time_group(ctx.red, u["obj"], u["band"], cfg=ctx.cfg, lightcurve=declared_input(u, prev, "lightcurve"),
                       selection=u["selection"])
    out = {k: str(v) for k, v in paths.items() if v}
    return {**out, "outputs": list(out.values())}
