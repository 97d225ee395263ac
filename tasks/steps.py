"""Prefect tasks: one per block of the stage graph, each a thin wrapper of :func:`qlcp.core.steps.run_block`.

No science here, and no list of steps: the tasks are made from
:mod:`qlcp.core.stages` (one task per lone stage and per fused block, named as
the graph says).  Every task is cached on the content of the files its block
declares, the values it declares, the config keys it declares and the
fingerprint of its code (:mod:`qlcp.tasks.common`), retried on transient I/O errors only, and
logs through Prefect.  Parameters and results are plain JSON values.
"""

from __future__ import annotations

from prefect import task

from qlcp.core import steps as core
from qlcp.core.runtime import configure_run
from qlcp.core.stages import FUSIONS, STAGES, plan

from .common import config_of, register_fingerprints, task_log, task_options, task_progress


def block_of(cfg, name: str):
    """The block ``name`` of the plan of ``cfg.steps``."""
    for b in plan(cfg.steps):
        if b.name == name:
            return b
    raise KeyError(f"block {name!r} is not in the plan of steps {cfg.steps!r}")


def _run_stage_block(red_dir: str, cfg: dict, block: str, unit: dict) -> dict:
    """Run one unit of a block of the graph (the body of every QLCP task)."""
    configure_run()                     # idempotent; a Dask worker process has not made it yet
    c = config_of(cfg)
    b = block_of(c, block)
    ctx = core.RunContext(red_dir, c, progress=task_progress(red_dir, b, unit), fingerprints=True,
                          log=lambda letters: task_log(red_dir, letters, c))
    res = core.run_block(b, c, ctx, unit)
    prints = dict(res.pop("fingerprints", None) or {})
    for s in res.get("frames", []):
        if s.get("fingerprint"):
            prints[s["file"]] = s.pop("fingerprint")
    register_fingerprints(prints)
    return res


def _names() -> list[str]:
    """Task names of every lone stage and fused block the graph can plan."""
    lone = [b.task_name for s in STAGES for b in plan(s.letter if s.enabled_by != "*" else "l")
            if b.stages == (s,)]
    return list(dict.fromkeys(lone + [f[3] for f in FUSIONS]))


#: task name -> the Prefect task running a block of that name
TASKS = {name: task(name=name, **task_options(name))(_run_stage_block) for name in _names()}


def task_for(block):
    return TASKS[block.task_name]
