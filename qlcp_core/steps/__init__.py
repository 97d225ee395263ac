"""The stage runners: one module per family of stages, each importing only the science its stages run.

Every stage of :data:`qlcp.core.stages.STAGES` (and every fused block) names its
runner, ``run(ctx, unit, prev) -> dict``: ``ctx`` a :class:`RunContext` (output
root, the stage's config view, progress, logging), ``unit`` the fields the stage
declares (files and values, nothing else), ``prev`` the results of the earlier
stages of its block (a product an earlier stage of the block writes is read from
there).  The result is JSON-ready, with ``outputs`` (paths written).  Both drivers
run a unit through :func:`run_block`: the plain driver (:mod:`qlcp.core.pipeline`)
in turn, the Prefect tasks (``qlcp.tasks``) one task per unit.

=====================  ==================================================
module                 stages
=====================  ==================================================
``calibration``        l (listing), b (bias, dark), f (flat)
``correct``            i
``photometry``         p, and i+p fused (``correct-photometry``)
``offsets``            o
``astrometry``         w
``select``             k
``lightcurve``         c, d, g
``timing``             t
=====================  ==================================================
"""

from .context import RunContext, declared_input, preload_plotting, run_block

__all__ = ["RunContext", "declared_input", "preload_plotting", "run_block"]
